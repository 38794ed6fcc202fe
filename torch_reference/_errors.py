"""Error construction in MLX's bracketed style: ``[Layer] what was expected, what was given.``"""

from __future__ import annotations


def value_error(where: str, message: str) -> ValueError:
    """Return ``ValueError("[where] message")``; callers ``raise`` it where the mistake is made."""
    return ValueError(f"[{where}] {message}")


def type_error(where: str, message: str) -> TypeError:
    """Return ``TypeError("[where] message")``."""
    return TypeError(f"[{where}] {message}")


def index_error(where: str, message: str) -> IndexError:
    """Return ``IndexError("[where] message")``."""
    return IndexError(f"[{where}] {message}")
