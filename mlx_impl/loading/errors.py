"""The one error of weight loading: :class:`WeightLoadError` lists every problem at once.

:class:`Problems` collects problem lines by kind while a load runs and turns them into that
error at the end, so a caller sees everything wrong with a checkpoint in one message.
"""

from collections.abc import Sequence
from typing import Any

__all__ = ["Problems", "WeightLoadError", "describe_files"]


class WeightLoadError(ValueError):
    """One error that lists every problem met while loading weights.

    A subclass of :class:`ValueError`. ``str(error)`` is a bracketed headline naming the
    model (or ``load_safetensors``) and the file(s), followed by one line per problem.

    Attributes:
        problems: every problem, one human-readable line each, in the order found.
        missing: checkpoint keys the model needed and did not find.
        unexpected: checkpoint keys under the prefix that no field consumed (strict mode).
        mismatched: lines about tensors with a wrong shape or dtype.
        files: the files involved (empty when loading from a mapping).
    """

    def __init__(
        self,
        message: str,
        *,
        problems: Sequence[str] = (),
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        mismatched: Sequence[str] = (),
        files: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.problems = list(problems)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)
        self.files = list(files)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Keep the attributes across pickling (multiprocessing, pytest-xdist).
        lists = (self.problems, self.missing, self.unexpected, self.mismatched, self.files)
        return _rebuild_weight_load_error, (str(self), *lists)


def _rebuild_weight_load_error(
    message: str,
    problems: list[str],
    missing: list[str],
    unexpected: list[str],
    mismatched: list[str],
    files: list[str],
) -> WeightLoadError:
    return WeightLoadError(
        message,
        problems=problems,
        missing=missing,
        unexpected=unexpected,
        mismatched=mismatched,
        files=files,
    )


def describe_files(files: Sequence[str]) -> str:
    """``a.safetensors`` / ``a.safetensors, b.safetensors`` / ``a mapping``."""
    return ", ".join(files) if files else "a mapping of arrays"


class Problems:
    """Collects problems by kind, then turns them into one :class:`WeightLoadError`."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.missing: list[str] = []
        self.unexpected: list[str] = []
        self.mismatched: list[str] = []

    def __bool__(self) -> bool:
        return bool(self.lines)

    def add(self, line: str) -> None:
        self.lines.append(line)

    def add_missing(self, key: str, line: str) -> None:
        self.missing.append(key)
        self.lines.append(line)

    def add_unexpected(self, key: str, line: str) -> None:
        self.unexpected.append(key)
        self.lines.append(line)

    def add_mismatch(self, line: str) -> None:
        self.mismatched.append(line)
        self.lines.append(line)

    def error(self, where: str, subject: str, files: Sequence[str]) -> WeightLoadError:
        n = len(self.lines)
        head = (
            f"[{where}] Cannot load {subject} from {describe_files(files)}: "
            f"{n} problem{'s' if n != 1 else ''}:"
        )
        body = "\n".join(f"  - {line}" for line in self.lines)
        return WeightLoadError(
            f"{head}\n{body}",
            problems=self.lines,
            missing=self.missing,
            unexpected=self.unexpected,
            mismatched=self.mismatched,
            files=files,
        )



# Shown as ``mlx_impl.loading.WeightLoadError``, where users import it from.
WeightLoadError.__module__ = "mlx_impl.loading"
