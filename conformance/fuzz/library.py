"""The two libraries under test, seen by the fuzz: converting neutral inputs, calling an
entry point and judging the outcome against the contract (see :mod:`conformance.fuzz`).

:func:`mlx_backend` names where MLX computes (``"cpu"``, ``"cuda"``, ``"metal"``, or
``"gpu"`` for a GPU back end this version does not name) and :func:`has_float64` says
whether that back end has float64: only the CPU does (MLX's GPU back ends, CUDA and Metal
alike, raise "float64 is not supported on the GPU"), so there float64 inputs are not drawn
(:mod:`conformance.fuzz.inputs`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from conformance.fuzz.inputs import ALL_DTYPES, FLOAT_DTYPES, Arr, DType, Foreign, drawable
from conformance.record import FuzzArgs, FuzzEntry

DOCUMENTED_ERRORS = (ValueError, TypeError, IndexError)
FLOAT64_BACKENDS = ("cpu",)
"""MLX back ends with float64 arithmetic (not ``cuda``, not ``metal``)."""


def mlx_backend() -> str:
    """``"cpu"``, ``"cuda"`` or ``"metal"``: where MLX's default device computes, asked of
    MLX itself (``mx.cuda`` exists only in builds that have it)."""
    import mlx.core as mx

    if mx.default_device().type == mx.DeviceType.cpu:
        return "cpu"
    cuda = getattr(mx, "cuda", None)
    if cuda is not None and cuda.is_available():
        return "cuda"
    metal = getattr(mx, "metal", None)
    if metal is not None and metal.is_available():
        return "metal"
    return "gpu"


def has_float64(backend: str) -> bool:
    """Whether MLX's ``backend`` computes in float64."""
    return backend in FLOAT64_BACKENDS


class Library:
    """One library under test: conversion of neutral inputs and the contract checks."""

    def __init__(self, name: str) -> None:
        self.name = name
        if name == "mlx":
            import mlx.core as mx

            import mlx_impl

            self.module: ModuleType = mlx_impl
            self.kw: dict[str, Any] = {}
            self._mx = mx
            self._dtypes: dict[str, Any] = {
                d: getattr(mx, "bool_" if d == "bool" else d) for d in ALL_DTYPES
            }
        else:
            import torch

            import torch_reference

            self.module = torch_reference
            self.kw = {"precision": "native"}
            self._torch = torch
            self._dtypes = {d: getattr(torch, d) for d in ALL_DTYPES}

    def convert(self, value: Any) -> Any:
        """Neutral -> library: ``Arr`` to an array, ``DType`` to a dtype, the rest as is."""
        if isinstance(value, Arr):
            if self.name == "mlx":
                return self._mx.array(value.data).astype(self._dtypes[value.dtype])
            # np.array, not np.ascontiguousarray: the latter turns a 0-D array into 1-D.
            data = self._torch.from_numpy(np.array(value.data, order="C"))
            return data.to(self._dtypes[value.dtype])
        if isinstance(value, DType):
            return self._dtypes[drawable(value.name)]
        if isinstance(value, Foreign):
            return value.data
        return value

    def is_array(self, value: Any) -> bool:
        """Whether ``value`` is this library's array type."""
        if self.name == "mlx":
            return isinstance(value, self._mx.array)
        return isinstance(value, self._torch.Tensor)

    def dtype_name(self, value: Any) -> str:
        """An array's dtype as a plain name (``"float32"``, ``"bool"``)."""
        text = str(value.dtype)
        return text.removeprefix("mlx.core.").removeprefix("torch.").replace("bool_", "bool")

    def is_floating(self, value: Any) -> bool:
        """Whether an array has a floating dtype."""
        return self.dtype_name(value) in (*FLOAT_DTYPES, "float64")

    def materialise(self, outputs: Sequence[Any]) -> None:
        """Force the computation (MLX is lazy: most kernel failures surface here)."""
        if self.name == "mlx":
            self._mx.eval(*[o for o in outputs if self.is_array(o)])


@dataclass
class Outcome:
    """What one library did with one input."""

    status: str  # "accepted", "refused" or "violation"
    exc_type: str = ""
    detail: str = ""
    shapes: tuple[Any, ...] = ()
    dtypes: tuple[str, ...] = ()
    kind: str = ""


_BRACKET = re.compile(r"^\[([^\]\n]+)\]\s")


def run_one(entry: FuzzEntry, lib: Library, args: FuzzArgs) -> Outcome:
    """Call ``entry`` on ``lib`` and judge the result against the contract."""
    converted = {k: lib.convert(v) for k, v in args.items()}
    stage = "call"
    try:
        out = entry.call(lib.module, converted, dict(lib.kw))
        outputs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        stage = "eval"
        lib.materialise(outputs)
    except DOCUMENTED_ERRORS as exc:
        msg = str(exc)
        if stage == "eval":
            return Outcome(
                "violation",
                type(exc).__name__,
                msg[:400],
                kind="raised while evaluating (not validated)",
            )
        m = _BRACKET.match(msg)
        if m is None:
            return Outcome("violation", type(exc).__name__, msg[:400], kind="message not bracketed")
        if m.group(1) not in entry.where:
            return Outcome(
                "violation",
                type(exc).__name__,
                msg[:400],
                kind=f"bracket names {m.group(1)!r}, not {'/'.join(entry.where)}",
            )
        return Outcome("refused", type(exc).__name__, msg[:200])
    except Exception as exc:
        return Outcome(
            "violation",
            type(exc).__name__,
            str(exc)[:400],
            kind=f"undocumented exception ({stage})",
        )
    try:
        expected = entry.expect(args)
    except Exception as exc:  # the input makes no sense, yet the call succeeded
        return Outcome(
            "violation",
            "",
            f"{type(exc).__name__}: {exc}",
            kind="accepted an input with no defined result",
        )
    got_shapes = tuple(
        tuple(int(d) for d in o.shape) if lib.is_array(o) else repr(o)[:40] for o in outputs
    )
    got_dtypes = tuple(lib.dtype_name(o) if lib.is_array(o) else type(o).__name__ for o in outputs)
    problems = []
    if len(outputs) != len(expected):
        problems.append(f"{len(outputs)} outputs, expected {len(expected)}")
    for i, (o, want) in enumerate(zip(outputs, expected, strict=False)):
        if want.dtype is None:
            if o is not None:
                problems.append(f"output {i} should be None but is {got_dtypes[i]}")
            continue
        if not lib.is_array(o):
            problems.append(f"output {i} is a {type(o).__name__}, not an array")
            continue
        if got_shapes[i] != want.shape:
            problems.append(f"output {i} has shape {got_shapes[i]}, expected {want.shape}")
        if want.dtype == "floating" and not lib.is_floating(o):
            problems.append(f"output {i} has dtype {got_dtypes[i]}, expected a floating dtype")
        elif want.dtype not in ("floating", None) and got_dtypes[i] != want.dtype:
            problems.append(f"output {i} has dtype {got_dtypes[i]}, expected {want.dtype}")
    if problems:
        return Outcome(
            "violation", "", "; ".join(problems), got_shapes, got_dtypes, kind="wrong result"
        )
    return Outcome("accepted", shapes=got_shapes, dtypes=got_dtypes)

