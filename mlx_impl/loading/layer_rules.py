"""Which tensors each layer class of ``mlx_impl`` takes from a checkpoint, and how they relate.

:data:`LAYERS` maps a layer class to a :class:`LayerSpec`: its required and optional tensor
arguments and a check that appends one line per problem (wrong rank, integer weights, a bias
of the wrong length, a quantized layer's scales that do not fit its packed weight). The
declared-model loader (:mod:`mlx_impl.loading.declared`) runs these checks before it
constructs anything, so every problem joins the one :class:`WeightLoadError`.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import mlx.core as mx

from mlx_impl import fast, nn

Describe = Callable[[str], str]


def dtype_name(dtype: Any) -> str:
    """``float32`` rather than ``mlx.core.float32`` in messages."""
    return str(dtype).removeprefix("mlx.core.")


def _floating(arr: mx.array) -> bool:
    return mx.issubdtype(arr.dtype, mx.floating)


def _expect_ndim(
    label: str, name: str, key: str, arr: mx.array, ndim: int, describe: Describe, out: list[str]
) -> bool:
    if arr.ndim != ndim:
        out.append(f"{describe(key)}: {label} {name} must be {ndim}-D but has shape {arr.shape}.")
        return False
    return True


def _expect_floating(
    label: str, name: str, key: str, arr: mx.array, describe: Describe, out: list[str]
) -> bool:
    if not _floating(arr):
        out.append(
            f"{describe(key)}: {label} {name} must have a floating dtype but has {dtype_name(arr.dtype)}."
        )
        return False
    return True


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """How to fill one layer class: its tensor arguments and their consistency rules.

    ``check(describe, tensors, keys, out)`` appends one line per problem to ``out``;
    ``tensors`` holds the present tensors by argument name, ``keys`` their checkpoint keys.
    """

    label: str
    cls: type
    required: tuple[str, ...]
    optional: tuple[str, ...]
    check: Callable[[Describe, dict[str, mx.array], dict[str, str], list[str]], None]


def _check_vector_norm(label: str) -> Callable[..., None]:
    """RMSNorm / LayerNorm: ``weight [D]`` (and ``bias [D]``), floating."""

    def check(
        describe: Describe, t: dict[str, mx.array], keys: dict[str, str], out: list[str]
    ) -> None:
        w = t["weight"]
        good = _expect_ndim(label, "weight", keys["weight"], w, 1, describe, out)
        _expect_floating(label, "weight", keys["weight"], w, describe, out)
        b = t.get("bias")
        if b is not None:
            _expect_floating(label, "bias", keys["bias"], b, describe, out)
            if good and b.shape != w.shape:
                out.append(
                    f"{describe(keys['bias'])}: {label} bias must have the weight's shape "
                    f"{w.shape} but has {b.shape}."
                )

    return check


def _check_matrix(label: str, ndim: int) -> Callable[..., None]:
    """Embedding (2-D), MultiLinear (3-D): one floating weight of a fixed rank."""

    def check(
        describe: Describe, t: dict[str, mx.array], keys: dict[str, str], out: list[str]
    ) -> None:
        w = t["weight"]
        _expect_ndim(label, "weight", keys["weight"], w, ndim, describe, out)
        _expect_floating(label, "weight", keys["weight"], w, describe, out)

    return check


def _check_linear(
    describe: Describe, t: dict[str, mx.array], keys: dict[str, str], out: list[str]
) -> None:
    """Linear: ``weight [out, in]``, ``bias [out]``, floating."""
    w = t["weight"]
    good = _expect_ndim("Linear", "weight", keys["weight"], w, 2, describe, out)
    _expect_floating("Linear", "weight", keys["weight"], w, describe, out)
    b = t.get("bias")
    if b is not None:
        _expect_floating("Linear", "bias", keys["bias"], b, describe, out)
        if good and b.shape != (w.shape[0],):
            out.append(
                f"{describe(keys['bias'])}: Linear bias must have shape ({w.shape[0]},) "
                f"(one per weight row; weight {w.shape}) but has {b.shape}."
            )


def check_quantized(
    group_size: int, bits: int, mode: str
) -> Callable[[Describe, dict[str, mx.array], dict[str, str], list[str]], None]:
    """QuantizedLinear: packed ``weight [out, in*bits/32]`` uint32, ``scales [out, in/group]``
    (floating for affine, uint8 codes for the fp modes), affine ``biases`` like ``scales``,
    layer ``bias [out]``."""
    label = f"QuantizedLinear ({mode}, {bits}-bit, group {group_size})"

    def check(
        describe: Describe, t: dict[str, mx.array], keys: dict[str, str], out: list[str]
    ) -> None:
        w, s = t["weight"], t["scales"]
        wk, sk = keys["weight"], keys["scales"]
        if w.dtype != mx.uint32:
            out.append(
                f"{describe(wk)}: {label} weight must be packed uint32 but has {dtype_name(w.dtype)}."
            )
        if not _expect_ndim(label, "weight", wk, w, 2, describe, out):
            return
        rows, packed = w.shape
        if (packed * 32) % bits:
            out.append(
                f"{describe(wk)}: {label} packed weight width {packed} words is not a whole "
                f"number of {bits}-bit values."
            )
            return
        in_features = packed * 32 // bits
        if in_features % group_size:
            out.append(
                f"{describe(wk)}: {label} input size {in_features} (from packed width {packed}) "
                f"is not a multiple of the group size {group_size}."
            )
            return
        want = (rows, in_features // group_size)
        if s.shape != want:
            out.append(
                f"{describe(sk)}: {label} scales must have shape {want} for weight {w.shape} "
                f"but has {s.shape}."
            )
        if mode == "affine":
            _expect_floating(label, "scales", sk, s, describe, out)
        elif s.dtype != mx.uint8:
            out.append(
                f"{describe(sk)}: {label} scales must be uint8 codes but have {dtype_name(s.dtype)}."
            )
        qb = t.get("biases")
        if qb is not None:
            bk = keys["biases"]
            if mode != "affine":
                out.append(f"{describe(bk)}: mode {mode} stores no biases, but they are present.")
            else:
                if qb.shape != want:
                    out.append(
                        f"{describe(bk)}: {label} biases must have the scales' shape {want} "
                        f"but has {qb.shape}."
                    )
                if qb.dtype != s.dtype:
                    out.append(
                        f"{describe(bk)}: {label} biases must have the scales' dtype "
                        f"{dtype_name(s.dtype)} but have {dtype_name(qb.dtype)}."
                    )
        b = t.get("bias")
        if b is not None:
            _expect_floating(label, "bias", keys["bias"], b, describe, out)
            if b.shape != (rows,):
                out.append(
                    f"{describe(keys['bias'])}: {label} bias must have shape ({rows},) but "
                    f"has {b.shape}."
                )

    return check


LAYERS: dict[type, LayerSpec] = {
    spec.cls: spec
    for spec in (
        LayerSpec("Linear", nn.Linear, ("weight",), ("bias",), _check_linear),
        LayerSpec("RMSNorm", nn.RMSNorm, ("weight",), (), _check_vector_norm("RMSNorm")),
        LayerSpec(
            "LayerNorm", nn.LayerNorm, ("weight",), ("bias",), _check_vector_norm("LayerNorm")
        ),
        LayerSpec("Embedding", nn.Embedding, ("weight",), (), _check_matrix("Embedding", 2)),
        LayerSpec(
            "MultiLinear", nn.MultiLinear, ("weight",), (), _check_matrix("MultiLinear", 3)
        ),
        LayerSpec(
            "fast.RMSNorm", fast.RMSNorm, ("weight",), (), _check_vector_norm("fast.RMSNorm")
        ),
        LayerSpec(
            "fast.LayerNorm",
            fast.LayerNorm,
            ("weight",),
            ("bias",),
            _check_vector_norm("fast.LayerNorm"),
        ),
    )
}



# Placeholder spec for an explicitly declared QuantizedLinear; its real rules depend on the
# quantization given to load_weights, so the loader special-cases it.
def _checked_elsewhere(
    describe: Describe, t: dict[str, mx.array], keys: dict[str, str], out: list[str]
) -> None:
    """Placeholder: QuantizedLinear is checked by ``check_quantized`` at load time."""


QUANTIZED_MARKER = LayerSpec(
    "QuantizedLinear",
    nn.QuantizedLinear,
    ("weight", "scales"),
    ("biases", "bias"),
    _checked_elsewhere,
)

