"""Records from outside the project: a user's own package contributes ``OpRecord`` s.

A module contributes records by defining ``RECORDS``, a tuple of
:class:`~conformance.record.OpRecord`. Such modules are found two ways:

* the entry-point group :data:`ENTRY_POINT_GROUP` (``mlx_conformance.records``) of any
  installed distribution, each entry point naming a module, e.g. in the user's
  ``pyproject.toml``::

      [project.entry-points."mlx_conformance.records"]
      my_layers = "my_layers.conformance_records"

* the environment variable :data:`RECORDS_ENV` (``CONFORMANCE_RECORDS``): module names
  separated by commas; ``python -m conformance run --records MODULE`` adds to it, and the
  nox sessions pass it through. The per-record pytest subprocesses of a run inherit it, so
  they see the same registry.

:func:`plugin_records` imports them all and checks them: every name unique (a user record
may not shadow a built-in one, nor two plugins share a name) and every entry an
``OpRecord``. ``conformance.registry.REGISTRY`` is built-ins plus these, so user records
get the same conformance cells, judge, error cases, mutants, benchmarks and report.

A record's ``call(lib, arrays, params, kw)`` runs with ``lib`` = ``mlx_impl`` or
``torch_reference``; a user's record calls its own code instead, which
:func:`library_call` writes as two functions, one per library.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from conformance.record import Call, OpRecord

ENTRY_POINT_GROUP = "mlx_conformance.records"
RECORDS_ENV = "CONFORMANCE_RECORDS"

__all__ = [
    "ENTRY_POINT_GROUP",
    "RECORDS_ENV",
    "PluginError",
    "PluginSource",
    "add_record_modules",
    "env_modules",
    "library_call",
    "plugin_records",
]


class PluginError(ValueError):
    """A records module that cannot be used: not importable, no ``RECORDS``, a name clash."""


@dataclass(frozen=True)
class PluginSource:
    """Where a records module came from: ``"entry point <name> (<dist>)"`` or the env var."""

    module: str
    origin: str


def env_modules(environ: Mapping[str, str] | None = None) -> list[str]:
    """The module names listed in :data:`RECORDS_ENV` (comma-separated, blanks ignored)."""
    raw = (os.environ if environ is None else environ).get(RECORDS_ENV, "")
    return [name.strip() for name in raw.split(",") if name.strip()]


def _sources(environ: Mapping[str, str] | None = None) -> list[PluginSource]:
    """Entry points first (sorted by name, for a stable registry order), then the env var;
    a module named both ways is loaded once."""
    found: list[PluginSource] = []
    for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = getattr(ep, "dist", None)
        owner = f" ({dist.name})" if dist is not None else ""
        found.append(PluginSource(ep.value, f"entry point {ep.name!r}{owner}"))
    found += [PluginSource(m, f"${RECORDS_ENV}") for m in env_modules(environ)]
    seen: set[str] = set()
    unique = []
    for source in found:
        if source.module not in seen:
            seen.add(source.module)
            unique.append(source)
    return unique


def _records_of(source: PluginSource) -> tuple[OpRecord, ...]:
    if ":" in source.module:
        raise PluginError(
            f"[conformance] records module {source.module!r} from {source.origin} must name a "
            "module (which defines RECORDS), not an object."
        )
    try:
        module: ModuleType = importlib.import_module(source.module)
    except ImportError as exc:
        raise PluginError(
            f"[conformance] cannot import records module {source.module!r} from "
            f"{source.origin}: {exc}. Is its package installed or on PYTHONPATH?"
        ) from exc
    records = getattr(module, "RECORDS", None)
    if not isinstance(records, (tuple, list)):
        raise PluginError(
            f"[conformance] records module {source.module!r} from {source.origin} must define "
            f"RECORDS, a tuple of OpRecord, but has {type(records).__name__}."
        )
    bad = [r for r in records if not isinstance(r, OpRecord)]
    if bad:
        raise PluginError(
            f"[conformance] RECORDS of {source.module!r} must hold OpRecord instances but has "
            f"{type(bad[0]).__name__}."
        )
    return tuple(records)


def plugin_records(
    builtin: Iterable[str], environ: Mapping[str, str] | None = None
) -> dict[str, OpRecord]:
    """Every record contributed from outside, by name, checked against ``builtin`` names.

    Args:
        builtin: the names of the project's own records.
        environ: where to read :data:`RECORDS_ENV` (default ``os.environ``).

    Returns:
        ``{record name: record}`` in discovery order (entry points by name, then the env var).

    Raises:
        PluginError: a module that cannot be imported, lacks ``RECORDS`` or holds something
            else, or a record name that is a built-in's or another plugin's.
    """
    taken = {name: "the built-in registry" for name in builtin}
    out: dict[str, OpRecord] = {}
    for source in _sources(environ):
        for record in _records_of(source):
            if record.name in taken:
                raise PluginError(
                    f"[conformance] record {record.name!r} from {source.module!r} "
                    f"({source.origin}) clashes with the record of that name from "
                    f"{taken[record.name]}; give it a name of its own (e.g. 'user.{record.name}')."
                )
            taken[record.name] = f"{source.module!r} ({source.origin})"
            out[record.name] = record
    return out


def add_record_modules(modules: Iterable[str]) -> None:
    """Add records modules for this process and the subprocesses it starts.

    Extends :data:`RECORDS_ENV` in ``os.environ`` (inherited by subprocesses) and, when
    ``conformance.registry`` is already imported, adds their records to its ``REGISTRY``.

    Raises:
        PluginError: as :func:`plugin_records`.
    """
    wanted = [m for m in modules if m not in env_modules()]
    if not wanted:
        return
    os.environ[RECORDS_ENV] = ",".join([*env_modules(), *wanted])
    registry = sys.modules.get("conformance.registry")
    if registry is not None:
        registry.reload_plugins()


def library_call(
    mlx: Callable[[Mapping[str, Any], Mapping[str, Any]], Any],
    torch: Callable[[Mapping[str, Any], Mapping[str, Any], Mapping[str, Any]], Any],
) -> Call:
    """A record ``call`` from one function per library.

    Args:
        mlx: ``mlx(arrays, params)``: the user's MLX code (``arrays`` hold ``mx.array``).
        torch: ``torch(arrays, params, kw)``: the user's PyTorch reference (``arrays`` hold
            ``torch.Tensor``; ``kw["precision"]`` is ``"native"`` or ``"float64"``).

    Returns:
        ``call(lib, arrays, params, kw)`` that runs ``mlx`` when the harness passes
        ``mlx_impl`` and ``torch`` when it passes ``torch_reference``.
    """

    def call(lib: ModuleType, arrays: Mapping[str, Any], params: Mapping[str, Any],
             kw: Mapping[str, Any]) -> Any:
        if lib.__name__ == "mlx_impl":
            return mlx(arrays, params)
        return torch(arrays, params, kw)

    return call
