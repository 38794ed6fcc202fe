"""Read ``.safetensors`` files into torch tensors: the twin of ``mlx_impl.load_safetensors``.

Uses the ``safetensors`` package's own reader (``safe_open(..., framework="pt")``), so the
twin reads checkpoints through a parser independent of ``mlx_impl``'s. Dtypes map as
MLX's do: every dtype loads as its torch equivalent, except the float8 types, which load as
their raw ``uint8`` codes (MLX has no float8; ``mxfp8``/``nvfp4`` scales are such codes and
the twin's quantization takes them as ``uint8``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from safetensors import SafetensorError, safe_open

from torch_reference._errors import value_error

__all__ = ["load_safetensors"]

PathLike = str | os.PathLike[str]

_FLOAT8 = tuple(
    getattr(torch, name)
    for name in ("float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu")
    if hasattr(torch, name)
)


def load_safetensors(paths: PathLike | Sequence[PathLike]) -> dict[str, torch.Tensor]:
    """Read one or several ``.safetensors`` files into one ``{name: tensor}`` dict (CPU).

    Args:
        paths: a path, or a sequence of paths (the shards of one checkpoint).

    Shape:
        Each tensor as stored.

    Raises:
        ValueError: a name that appears in more than one file, or a file the
            ``safetensors`` package cannot parse (its message is kept).
    """
    files = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    out: dict[str, torch.Tensor] = {}
    where: dict[str, str] = {}
    for file in files:
        name = os.fspath(file)
        try:
            with safe_open(name, framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open is not a Mapping)
                    if key in out:
                        raise value_error(
                            "load_safetensors",
                            f"tensor {key!r} is in both {where[key]} and {name}.",
                        )
                    t = f.get_tensor(key)
                    if t.dtype in _FLOAT8:
                        t = t.view(torch.uint8)
                    out[key] = t
                    where[key] = name
        except (OSError, SafetensorError) as exc:
            raise value_error("load_safetensors", f"cannot read {name}: {exc}") from exc
    return out
