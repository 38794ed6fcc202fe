"""Quantization helpers over MLX's ``mx.quantize`` / ``mx.dequantize`` /
``mx.quantized_matmul``, with every input checked BEFORE MLX sees it.

Modes and the combinations MLX 0.32.4 accepts (measured, see
:data:`SUPPORTED_QUANTIZATION`):

* ``affine``: group 32, 64 or 128 with bits 1, 2, 3, 4, 5, 6 or 8. Scales and
  zero-point biases in the weight's dtype, ``w ~ q * scale + bias``.
* ``nvfp4``: group 16, bits 4. FP4 E2M1 elements, E4M3 uint8 scale codes, optional
  float32 global scale.
* ``mxfp4`` / ``mxfp8``: group 32, bits 4 / 8. E2M1 / E4M3FN elements, E8M0 uint8
  scale codes ``2^(s - 127)``.

Packed weights are uint32: each row is one little-endian, LSB-first bit stream
(``torch_reference.quantization`` documents the exact bit layout and reproduces it).
Checks are cheap (shapes, dtypes, Python values) and never synchronise the device, with
one exception: :func:`quantize` (an offline, once-per-weight operation) evaluates a
reduction over the weight to refuse values ``mx.quantize`` would silently corrupt
(non-finite weights; mxfp4 / mxfp8 groups whose E8M0 scale code would wrap).
This module never imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx

from mlx_impl._errors import type_error, value_error

__all__ = [
    "AFFINE_BITS",
    "AFFINE_GROUP_SIZES",
    "FP_MODES",
    "QUANTIZATION_LABELS",
    "QUANT_MODES",
    "SUPPORTED_QUANTIZATION",
    "check_quantizable",
    "check_quantization",
    "check_quantized",
    "dequantize",
    "quantization_for_label",
    "quantize",
    "quantized_matmul",
]

QUANT_MODES: tuple[str, ...] = ("affine", "nvfp4", "mxfp4", "mxfp8")
"""Every quantization mode MLX 0.32.4 knows."""

AFFINE_GROUP_SIZES: tuple[int, ...] = (32, 64, 128)
AFFINE_BITS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8)
FP_MODES: tuple[str, ...] = ("nvfp4", "mxfp4", "mxfp8")

SUPPORTED_QUANTIZATION: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "affine": (AFFINE_GROUP_SIZES, AFFINE_BITS),
    "nvfp4": ((16,), (4,)),
    "mxfp4": ((32,), (4,)),
    "mxfp8": ((32,), (8,)),
}
"""``mode -> (allowed group sizes, allowed bits)``, every combination of which
``mx.quantize`` 0.32.4 accepts (measured: affine takes any of its groups with any of
its bits; group 16 is nvfp4-only; bits 7 are rejected)."""

QUANTIZATION_LABELS: dict[str, tuple[int, int, str]] = {
    "NVFP4": (16, 4, "nvfp4"),
    "FP4": (32, 4, "affine"),
    "Q4": (32, 4, "affine"),
    "INT4": (32, 4, "affine"),
    "MXFP8": (32, 8, "mxfp8"),
    "FP8": (64, 8, "affine"),
    "Q8": (64, 8, "affine"),
    "INT8": (64, 8, "affine"),
}
"""Ollama's checkpoint quantization labels -> ``(group_size, bits, mode)``."""

# float64 is excluded: mx.quantize accepts it at graph time and then fails in eval_cpu.
_FLOAT_DTYPES = (mx.float32, mx.float16, mx.bfloat16)
_DTYPE_NAMES = {mx.float32: "float32", mx.float16: "float16", mx.bfloat16: "bfloat16"}

# Largest magnitude of the mx element formats (E2M1, E4M3FN): the "maxval" of the scale.
_MX_MAXVAL = {"mxfp4": 6.0, "mxfp8": 448.0}
# mx.quantize stores the E8M0 code (s + 127) mod 256, s = ceil(log2(r)), r = amax / maxval
# rounded to the weight's dtype, without clipping: r <= 2^-128 gives s <= -128 and wraps
# (measured on mlx 0.32.4 CPU; r in (2^-128, 2^-127] gives s = -127, code 0, which is fine).
_MX_WRAP_RATIO = 2.0**-128


# --------------------------------------------------------------------------- checks


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_quantization(where: str, group_size: int, bits: int, mode: str) -> None:
    """Raise unless ``(group_size, bits, mode)`` is a combination MLX 0.32.4 accepts.

    Allowed: ``affine`` with group 32, 64 or 128 and bits 1, 2, 3, 4, 5, 6 or 8;
    ``nvfp4`` (16, 4); ``mxfp4`` (32, 4); ``mxfp8`` (32, 8).

    Raises:
        TypeError: ``group_size`` or ``bits`` is not an int, or ``mode`` not a str.
        ValueError: an unknown mode or an unsupported group size / bit width,
            naming the allowed values.
    """
    if not isinstance(mode, str):
        raise type_error(where, f"mode must be a str, one of {QUANT_MODES}, but got {mode!r}.")
    if mode not in SUPPORTED_QUANTIZATION:
        raise value_error(where, f"mode must be one of {QUANT_MODES} but got {mode!r}.")
    if not _is_int(group_size) or not _is_int(bits):
        raise type_error(
            where, f"group_size and bits must be ints but got {group_size!r} and {bits!r}."
        )
    groups, widths = SUPPORTED_QUANTIZATION[mode]
    if group_size not in groups:
        raise value_error(
            where, f"mode {mode!r} supports group_size in {groups} but got {group_size}."
        )
    if bits not in widths:
        raise value_error(where, f"mode {mode!r} supports bits in {widths} but got {bits}.")
    if mode == "affine" and bits == 1 and _on_cuda():
        # MLX 0.32.4 on CUDA: mx.quantized_matmul refuses 1-bit, and mx.dequantize of 1-bit
        # codes returns wrong values silently (measured on an H200: -2e36 for 8.4).
        raise value_error(
            where, "1-bit affine quantization is not supported on MLX's CUDA back end; "
            "use bits 2, 3, 4, 5, 6 or 8 (or run on the CPU or Metal)."
        )


def _on_cuda() -> bool:
    """True when MLX's default device is a CUDA GPU (a GPU that is not Metal)."""
    return mx.default_device().type == mx.DeviceType.gpu and not mx.metal.is_available()


def check_quantizable(
    where: str, weight_shape: Sequence[int], group_size: int, mode: str = "affine"
) -> None:
    """Raise ``ValueError`` unless a weight of ``weight_shape`` can be quantized.

    Requirements (those of ``mx.quantize`` 0.32.4, checked before MLX sees them):
    at least 2-D; not empty (MLX fails on empty weights in the fp modes, and its
    dequantize fails on zero rows); the last dim divisible by ``group_size``. For ``nvfp4`` the
    TOTAL element count must also be a multiple of 32: MLX's CPU nvfp4 packer
    reshapes the codes to ``(-1, 4, 8)`` and fails otherwise (e.g. on ``(1, 16)``
    or ``(3, 16)``; ``(2, 16)`` works).
    """
    shape = tuple(int(d) for d in weight_shape)
    if len(shape) < 2:
        raise value_error(
            where, f"the weight to quantize must be at least 2-D but got shape {shape}."
        )
    if 0 in shape:
        # MLX 0.32.4 fails on empty weights in several modes (argmin / reshape errors).
        raise value_error(where, f"the weight to quantize must not be empty but got shape {shape}.")
    if shape[-1] % group_size != 0:
        raise value_error(
            where,
            f"the weight's last dim must be divisible by group_size {group_size} but got shape {shape}.",
        )
    if mode == "nvfp4":
        size = 1
        for d in shape:
            size *= d
        if size % 32 != 0:
            raise value_error(
                where,
                f"nvfp4 needs the weight's element count to be a multiple of 32 (MLX's CPU packer) but shape {shape} has {size}.",
            )


def _check_scales_dtype(where: str, mode: str, scales: mx.array) -> None:
    if mode == "affine":
        if scales.dtype not in _FLOAT_DTYPES:
            raise type_error(
                where,
                f"affine scales must be float32, float16 or bfloat16 but got {scales.dtype}.",
            )
    elif scales.dtype != mx.uint8:
        raise type_error(where, f"{mode} scales must be uint8 codes but got {scales.dtype}.")


def check_quantized(
    where: str,
    wq: mx.array,
    scales: mx.array,
    biases: mx.array | None,
    group_size: int,
    bits: int,
    mode: str,
) -> int:
    """Validate a packed ``(wq, scales, biases)`` triple; return the unpacked last dim.

    Checks: the mode/group/bits combination; ``wq`` is uint32, at least 2-D and not
    empty;
    ``scales`` has ``wq``'s shape except its last dim, which is
    ``wq.shape[-1] * 32 / bits / group_size``; affine needs ``biases`` of the scales'
    shape and dtype and floating scales; fp modes need uint8 scales and ``biases is None``.

    Shape:
        wq: ``[..., N, K * bits / 32]``; scales, biases: ``[..., N, K / group_size]``.
    """
    check_quantization(where, group_size, bits, mode)
    if not isinstance(wq, mx.array) or not isinstance(scales, mx.array):
        raise type_error(where, "the packed weight and the scales must be mx.arrays.")
    if wq.dtype != mx.uint32:
        raise type_error(where, f"the packed weight must be uint32 but got {wq.dtype}.")
    if wq.ndim < 2:
        raise value_error(
            where, f"the packed weight must be at least 2-D but got shape {tuple(wq.shape)}."
        )
    _check_scales_dtype(where, mode, scales)
    if mode == "affine":
        if biases is None:
            raise value_error(where, "affine quantization needs biases but got None.")
        if not isinstance(biases, mx.array):
            raise type_error(where, f"biases must be an mx.array but got {type(biases).__name__}.")
        if biases.shape != scales.shape or biases.dtype != scales.dtype:
            raise value_error(
                where,
                f"biases must match the scales' shape {tuple(scales.shape)} and dtype {scales.dtype} "
                f"but got {tuple(biases.shape)} and {biases.dtype}.",
            )
    elif biases is not None:
        raise value_error(where, f"mode {mode!r} has no biases; pass biases=None.")
    if 0 in tuple(wq.shape):
        raise value_error(
            where, f"the packed weight must not be empty but got shape {tuple(wq.shape)}."
        )
    k = wq.shape[-1] * 32 // bits
    expected = (*wq.shape[:-1], k // group_size)
    if (wq.shape[-1] * 32) % bits != 0 or k % group_size != 0 or tuple(scales.shape) != expected:
        raise value_error(
            where,
            f"scales must have shape {expected} for a packed weight of shape {tuple(wq.shape)} "
            f"(group_size={group_size}, bits={bits}) but got {tuple(scales.shape)}.",
        )
    return k


def _check_global_scale(where: str, mode: str, global_scale: mx.array | None) -> None:
    if global_scale is None:
        return
    if mode != "nvfp4":
        raise value_error(
            where, f"global_scale is only supported for mode 'nvfp4' but got {mode!r}."
        )
    if not isinstance(global_scale, mx.array):
        raise type_error(
            where, f"global_scale must be an mx.array but got {type(global_scale).__name__}."
        )
    if global_scale.size != 1 or global_scale.dtype != mx.float32:
        raise value_error(
            where,
            f"global_scale must be one float32 value but got shape {tuple(global_scale.shape)} "
            f"and dtype {global_scale.dtype}.",
        )


def _check_nvfp4_dequantizable(where: str, mode: str, wq: mx.array) -> None:
    """nvfp4 only: the weight's element count (``wq.size * 8``) must be a multiple of 32.

    ``mx.dequantize`` 0.32.4 on the CPU reshapes nvfp4 words to ``(-1, 4)`` and fails with
    an internal ``[reshape]`` error otherwise (measured: ``(1, 16)``, ``(3, 16)``, ``(1, 48)``,
    ``(5, 16)`` and batched ``(3, 1, 16)`` weights fail, every multiple of 32 works; with or
    without a global scale, for every output dtype). :func:`quantize` refuses the same
    counts, so nothing it produces is refused here. ``mx.quantized_matmul`` is not
    affected (it computes such weights correctly), so :func:`quantized_matmul` and
    ``QuantizedLinear`` accept them.
    """
    if mode != "nvfp4":
        return
    count = wq.size * 32 // 4
    if count % 32 != 0:
        raise value_error(
            where,
            f"nvfp4 needs the weight's element count to be a multiple of 32 (MLX's CPU "
            f"unpacker) but packed shape {tuple(wq.shape)} holds {count} elements.",
        )


def _check_transpose(where: str, transpose: object) -> None:
    # A NumPy / MLX bool, 0, 1 or None would be truth-tested (an array of several values
    # fails inside MLX's own conversion): only a real bool says which layout is meant.
    if not isinstance(transpose, bool):
        raise type_error(where, f"transpose must be a bool but got {transpose!r}.")


def _batch_shape(where: str, x: mx.array, wq: mx.array) -> tuple[int, ...]:
    """The broadcast batch shape of ``x [..., M, K]`` and ``wq [..., N, K']``.

    A batched packed weight (``wq.ndim > 2``) needs ``x`` of at least its rank:
    ``mx.quantized_matmul`` 0.32.4 silently drops the weight's batch otherwise (an
    ``x [5, 32]`` times ``wq [3, 2, 4]`` gives ``[5, 2]``, not ``[3, 5, 2]``) and fails with
    a ``[broadcast_shapes]`` error when the batch dims do not broadcast.
    """
    w_batch = tuple(wq.shape[:-2])
    if not w_batch:
        return tuple(x.shape[:-2])
    if x.ndim < wq.ndim:
        raise value_error(
            where,
            f"a batched packed weight of shape {tuple(wq.shape)} needs x with at least "
            f"{wq.ndim} dims (MLX ignores the weight's batch otherwise) but got shape "
            f"{tuple(x.shape)}.",
        )
    x_batch = tuple(x.shape[:-2])
    padded = (1,) * (len(x_batch) - len(w_batch)) + w_batch
    out = []
    for a, b in zip(x_batch, padded, strict=True):
        if a != b and 1 not in (a, b):
            raise value_error(
                where,
                f"the batch dims of x {x_batch} and of the packed weight {w_batch} must "
                f"broadcast but got shapes {tuple(x.shape)} and {tuple(wq.shape)}.",
            )
        out.append(b if a == 1 else a)
    return tuple(out)


def _empty_matmul(
    x: mx.array,
    wq: mx.array,
    scales: mx.array,
    transpose: bool,
    bits: int,
    mode: str,
    batch: tuple[int, ...],
) -> mx.array:
    """The result of a quantized matmul whose ``x`` has no rows (``x.size == 0``).

    ``mx.quantized_matmul`` 0.32.4 on the CPU dies with SIGFPE (killing the process) on
    such inputs, in every mode, so callers return this instead of calling it: zeros of
    shape ``[*batch, *x.shape[-2:-1], N]`` in the kernel's output dtype (the promotion of
    ``x`` and the scales for affine, ``x``'s dtype for the fp modes). Builds a graph node
    only; nothing is evaluated.
    """
    n = wq.shape[-2] if transpose else wq.shape[-1] * 32 // bits
    dtype = mx.result_type(x.dtype, scales.dtype) if mode == "affine" else x.dtype
    return mx.zeros((*batch, *x.shape[-2:-1], n), dtype=dtype)


def _unravel(flat: int, shape: Sequence[int]) -> tuple[int, ...]:
    """Row-major index tuple of the ``flat``-th element of an array of ``shape``."""
    out = []
    for d in reversed(tuple(shape)):
        flat, r = divmod(flat, int(d))
        out.append(r)
    return tuple(reversed(out))


def _scalar(a: mx.array) -> float:
    """A one-element array's value as a Python float (exact for every float dtype here)."""
    value = a.item()
    if isinstance(value, complex):  # never: only real arrays reach this
        raise TypeError("expected a real scalar")
    return float(value)


def _first_true(mask: mx.array) -> int:
    """Flat index of the first True in ``mask`` (row-major), computed as a min over
    positions so that it does not depend on how argmax breaks ties."""
    flat = mask.reshape(-1)
    n = flat.size
    pos = mx.arange(n, dtype=mx.int64)
    return int(_scalar(mx.min(mx.where(flat, pos, mx.array(n, dtype=mx.int64)))))


def _check_weight_values(where: str, w: mx.array, group_size: int, mode: str) -> None:
    """Refuse weights whose quantization ``mx.quantize`` 0.32.4 silently corrupts.

    Evaluates a reduction over ``w`` (``mx.eval``), i.e. synchronises the device:
    acceptable for :func:`quantize`, an offline once-per-weight operation.

    * Any mode: every element must be finite (inf / NaN give dtype-dependent scale codes,
      e.g. mx scale code 128 for float32 but 0 for float16 / bfloat16, NaN biases or a
      NaN silently dropped for affine).
    * mxfp4 / mxfp8: every group's ``r = amax / maxval`` (maxval 6 / 448, the division
      rounded to ``w``'s dtype as MLX does) must be 0 or above ``2^-128``; otherwise
      ``ceil(log2 r) <= -128`` and the stored E8M0 code wraps (e.g. 255, which
      dequantizes to ``2^128`` = inf). All-zero groups (and groups whose ``r`` underflows
      to 0) are fine: code 127, dequantized to 0. float16 weights can never wrap.
    """
    finite = mx.isfinite(w)
    all_finite = mx.all(finite)
    wraps: mx.array | None = None
    if mode in _MX_MAXVAL:
        groups = w.reshape(*w.shape[:-1], w.shape[-1] // group_size, group_size)
        ratio = mx.max(mx.abs(groups), axis=-1) / mx.array(_MX_MAXVAL[mode], dtype=w.dtype)
        # float32 holds every float16 / bfloat16 ratio and 2^-128 (a subnormal) exactly.
        small = ratio.astype(mx.float32) <= mx.array(_MX_WRAP_RATIO, dtype=mx.float32)
        wraps = (ratio > 0) & small
        any_wraps = mx.any(wraps)
        mx.eval(all_finite, any_wraps)
    else:
        mx.eval(all_finite)
    if not all_finite.item():
        pos = _unravel(_first_true(mx.logical_not(finite)), w.shape)
        value = _scalar(w[pos])
        raise value_error(
            where,
            f"mode {mode!r}: the weight must be finite (mx.quantize turns inf / NaN into "
            f"dtype-dependent garbage codes) but element {pos} is {value}.",
        )
    if wraps is not None and any_wraps.item():
        n_groups = w.shape[-1] // group_size
        flat = _first_true(wraps)
        row_flat, group = divmod(flat, n_groups)
        row_idx = _unravel(row_flat, w.shape[:-1])
        row: object = row_idx[0] if len(row_idx) == 1 else row_idx
        amax = _scalar(mx.max(mx.abs(w[row_idx][group * group_size : (group + 1) * group_size])))
        r = _scalar(ratio[(*row_idx, group)])
        raise value_error(
            where,
            f"mode {mode!r}: row {row}, group {group} (elements {group * group_size}.."
            f"{(group + 1) * group_size - 1}) has amax {amax:.9g}, so amax / {_MX_MAXVAL[mode]:g} "
            f"= {r:.9g} in {_DTYPE_NAMES[w.dtype]}, at or below the threshold 2^-128 "
            f"(~2.94e-39): its E8M0 scale exponent ceil(log2(amax / maxval)) is below -127 and "
            f"mx.quantize's uint8 scale code would wrap (dequantizing to inf or garbage). "
            f"Groups must be all zero or have amax / maxval > 2^-128.",
        )


def quantization_for_label(label: str) -> tuple[int, int, str]:
    """Map an Ollama checkpoint quantization label to ``(group_size, bits, mode)``.

    Case-insensitive: NVFP4 -> (16, 4, "nvfp4"); FP4, Q4, INT4 -> (32, 4, "affine");
    MXFP8 -> (32, 8, "mxfp8"); FP8, Q8, INT8 -> (64, 8, "affine").

    Raises:
        ValueError: an unknown label, listing the known ones.
    """
    if not isinstance(label, str):
        raise type_error("quantization_for_label", f"label must be a str but got {label!r}.")
    found = QUANTIZATION_LABELS.get(label.strip().upper())
    if found is None:
        raise value_error(
            "quantization_for_label",
            f"unknown quantization label {label!r}; known labels are {tuple(QUANTIZATION_LABELS)}.",
        )
    return found


# --------------------------------------------------------------------------- ops


def quantize(
    w: mx.array,
    group_size: int = 64,
    bits: int = 4,
    mode: str = "affine",
    *,
    global_scale: mx.array | None = None,
) -> tuple[mx.array, mx.array, mx.array | None]:
    """Quantize ``w`` along its last axis with ``mx.quantize``.

    affine: per group ``scale`` and zero-point ``bias`` (float32 math, rounded to
    ``w``'s dtype), codes ``q = clip(rint((w - bias) / scale), 0, 2^bits - 1)``.
    nvfp4 / mxfp4 / mxfp8: one uint8 scale code per group (E4M3 of ``amax / 6`` for
    nvfp4; E8M0 ``ceil(log2(amax / maxval)) + 127`` for the mx modes) and E2M1 / E4M3
    element codes. ``torch_reference.quantization.quantize`` spells out every step.

    Refused before ``mx.quantize`` runs (it would silently store garbage): non-finite
    weights, and mx groups so tiny that ``ceil(log2(amax / maxval)) < -127`` (MLX stores
    ``(s + 127) mod 256`` unclipped, e.g. code 255 = ``2^128`` = inf for a float32 mxfp4
    group of amax ``2^-126``). Exact boundaries (mlx 0.32.4, measured): float32 mxfp4
    refuses amax in ``[2^-147, 0x1.800006p-126]``, mxfp8 ``[0x1.c2p-142, 0x1.c00006p-120]``;
    bfloat16 mxfp4 ``[2^-131, 0x1.86p-126]``, mxfp8 ``[0x1.c2p-126, 0x1.c6p-120]``; smaller
    nonzero amax make ``amax / maxval`` underflow to 0 in the weight's dtype (code 127, the
    group dequantizes to 0, allowed); float16 never wraps. All-zero groups are allowed.

    Args:
        w: the float weight (float32, float16 or bfloat16).
        group_size, bits, mode: see :data:`SUPPORTED_QUANTIZATION`.
        global_scale: nvfp4 only: a one-element float32 array.

    Returns:
        ``(wq, scales, biases)``: ``wq`` uint32; ``scales`` in ``w``'s dtype for affine,
        uint8 codes otherwise; ``biases`` in ``w``'s dtype for affine, ``None`` otherwise
        (``mx.quantize`` itself returns only two arrays for the fp modes).

    Shape:
        w: ``[..., N, K]`` -> wq: ``[..., N, K * bits / 32]``,
        scales / biases: ``[..., N, K / group_size]``.

    Raises:
        TypeError: ``w`` not a float32 / float16 / bfloat16 array, or ints expected.
        ValueError: an unsupported ``(group_size, bits, mode)``; a weight shape
            ``mx.quantize`` cannot take (see :func:`check_quantizable`); a bad
            ``global_scale``; a non-finite element (any mode; the message gives its
            position); for mxfp4 / mxfp8 a group with ``0 < R(amax / maxval) <= 2^-128``
            (``R`` = rounding to ``w``'s dtype), whose E8M0 scale code MLX would wrap
            (the message names the first such row and group, its amax and the threshold).

    Cost:
        The value checks evaluate a reduction over ``w`` (``mx.eval`` and ``.item()``),
        synchronising the device before ``mx.quantize`` runs. That is acceptable because
        quantizing is offline and happens once per weight; the other ops of this module
        never synchronise.
    """
    where = "quantize"
    check_quantization(where, group_size, bits, mode)
    if not isinstance(w, mx.array):
        raise type_error(where, f"w must be an mx.array but got {type(w).__name__}.")
    if w.dtype not in _FLOAT_DTYPES:
        raise type_error(
            where,
            f"w must be float32, float16 or bfloat16 (MLX 0.32.4 cannot quantize others) but got {w.dtype}.",
        )
    check_quantizable(where, w.shape, group_size, mode)
    _check_global_scale(where, mode, global_scale)
    # Offline, once per weight: the one check here that evaluates (synchronises) the weight.
    _check_weight_values(where, w, group_size, mode)
    # On the CPU stream on every back end: one checkpoint, one set of codes. MLX 0.32.4's CUDA
    # quantize differs from its CPU one in representation (-0 codes, an all-zero group's
    # scale byte 0 instead of 127, nonzero codes in all-zero nvfp4 rows) and in affine
    # tie-breaking (half away from zero instead of half to even), values otherwise equal
    # (reports/conformance/cuda-h200-triage/TRIAGE.md); quantizing is offline, so running it on the CPU costs little.
    out = mx.quantize(w, group_size, bits, mode, global_scale=global_scale, stream=mx.cpu)
    if mode == "affine":
        return out[0], out[1], out[2]
    return out[0], out[1], None


def dequantize(
    wq: mx.array,
    scales: mx.array,
    biases: mx.array | None = None,
    group_size: int = 64,
    bits: int = 4,
    mode: str = "affine",
    dtype: mx.Dtype | None = None,
    *,
    global_scale: mx.array | None = None,
) -> mx.array:
    """Expand a packed weight back to floats with ``mx.dequantize``.

    affine: ``R(R(q * scale) + bias)``, ``R`` = rounding to the scales' dtype, then cast
    to ``dtype`` if given. fp modes: ``R(R(value) * R(scale))``, ``R`` = rounding to
    ``dtype``, which defaults to bfloat16; with an nvfp4 ``global_scale`` the result is
    float32 whatever ``dtype`` says (MLX 0.32.4).

    Args:
        wq: packed uint32 weight.
        scales, biases: as returned by :func:`quantize` (biases only for affine).
        group_size, bits, mode: the quantization the triple was made with.
        dtype: output dtype (float32, float16 or bfloat16); ``None`` = the scales'
            dtype for affine, bfloat16 for fp modes.
        global_scale: nvfp4 only, the float32 global scale used at quantize time.

    Shape:
        wq: ``[..., N, K * bits / 32]``, scales / biases: ``[..., N, K / group_size]``
        -> ``[..., N, K]``.

    Raises:
        TypeError: wrong array dtypes, ``group_size`` / ``bits`` not ints, ``mode`` not a
            str, ``dtype`` not float32 / float16 / bfloat16 / ``None``.
        ValueError: an unsupported format, inconsistent shapes (see
            :func:`check_quantized`), a bad ``global_scale``, or an nvfp4 weight whose
            element count is not a multiple of 32 (MLX's CPU nvfp4 unpacker fails on it
            with an internal reshape error; :func:`quantize` never produces one).
    """
    where = "dequantize"
    check_quantized(where, wq, scales, biases, group_size, bits, mode)
    _check_nvfp4_dequantizable(where, mode, wq)
    _check_global_scale(where, mode, global_scale)
    if dtype is not None and dtype not in _FLOAT_DTYPES:
        raise type_error(
            where, f"dtype must be float32, float16, bfloat16 or None but got {dtype!r}."
        )
    if global_scale is not None:
        # The CPU back end returns float32 whatever ``dtype`` says; CUDA honours ``dtype``
        # (bfloat16 by default). One contract on every back end: float32, as documented.
        dtype = mx.float32
    return mx.dequantize(
        wq, scales, biases, group_size, bits, mode, global_scale=global_scale, dtype=dtype
    )


def quantized_matmul(
    x: mx.array,
    wq: mx.array,
    scales: mx.array,
    biases: mx.array | None = None,
    transpose: bool = True,
    group_size: int = 64,
    bits: int = 4,
    mode: str = "affine",
) -> mx.array:
    """``x @ W.T`` (or ``x @ W`` with ``transpose=False``) with ``mx.quantized_matmul``.

    Equals ``x @ dequantize(W).T`` up to the kernel's summation: bit-identical to MLX's
    own ``x @ mx.dequantize(W).T`` for float32 affine; fp modes use a different
    (factored) summation. On the x86 CPU back end float16 / bfloat16 inputs accumulate
    in the input dtype, so their error grows with K (see the tests' bounds).

    Dtypes:
        affine: the promotion of ``x`` and the scales (scales and biases are cast to
        it); fp modes: ``x``'s dtype.

    Args:
        x: activations, float32 / float16 / bfloat16.
        wq, scales, biases, group_size, bits, mode: the packed weight (see
            :func:`quantize`).
        transpose: a Python bool; ``True`` multiplies by ``W.T`` (weights stored
            ``[out, in]``).

    Shape:
        transpose: x ``[..., K]``, wq ``[N, K * bits / 32]`` -> ``[..., N]``;
        otherwise x ``[..., K]``, wq ``[K, N * bits / 32]`` -> ``[..., N]``.
        A batched weight ``wq [B..., N, K * bits / 32]`` needs ``x [..., M, K]`` of at
        least its rank with broadcastable batch dims -> ``[broadcast batch..., M, N]``.
        An empty ``x`` (any zero dim) gives an empty result of that shape and dtype
        without calling ``mx.quantized_matmul`` (MLX 0.32.4's CPU kernel dies with
        SIGFPE on it, in every mode).

    Raises:
        TypeError: ``transpose`` not a bool, ``group_size`` / ``bits`` not ints (bools
            refused), ``mode`` not a str, or wrong array dtypes.
        ValueError: an unsupported format, inconsistent packed shapes, ``x``'s last dim
            not the weight's input dim, or a batched weight whose batch ``x`` lacks or
            does not broadcast with (MLX would silently drop the weight's batch).
    """
    where = "quantized_matmul"
    _check_transpose(where, transpose)
    w_cols = check_quantized(where, wq, scales, biases, group_size, bits, mode)
    if not isinstance(x, mx.array) or x.dtype not in _FLOAT_DTYPES:
        raise type_error(
            where,
            f"x must be a float32, float16 or bfloat16 array but got {getattr(x, 'dtype', type(x).__name__)}.",
        )
    if x.ndim < 1:
        raise value_error(where, "x must be at least 1-D.")
    inner = w_cols if transpose else wq.shape[-2]
    if x.shape[-1] != inner:
        raise value_error(
            where,
            f"x's last dim must equal the weight's input dim {inner} (packed shape "
            f"{tuple(wq.shape)}, bits={bits}, transpose={transpose}) but got {x.shape[-1]}.",
        )
    batch = _batch_shape(where, x, wq)
    if x.size == 0:
        # mx.quantized_matmul 0.32.4 (CPU) dies with SIGFPE on an empty batch: never call it.
        return _empty_matmul(x, wq, scales, transpose, bits, mode, batch)
    return _quantized_matmul(x, wq, scales, biases, transpose, group_size, bits, mode)


def _quantized_matmul(
    x: mx.array, wq: mx.array, scales: mx.array, biases: mx.array | None, transpose: bool,
    group_size: int, bits: int, mode: str,
) -> mx.array:
    """``mx.quantized_matmul``, except float16 on CUDA, which is computed in float32 and
    rounded once: MLX 0.32.4's CUDA kernels round each float16 product to float16 before
    the (float32) sum, so a single product above 65504 turns a finite result into inf or
    NaN (measured on an H200 in nvfp4 and mxfp4: NaN where the float64 result is -47613.66;
    reports/conformance/cuda-h200-triage/TRIAGE.md). The float32 path is not TF32 and its rounding is one rounding of
    a float32 sum, at least as accurate as MLX's float16 path.

    A 1-D ``x`` goes in as one row: MLX 0.32.4's CUDA kernel raises "SmallVector out of
    range" on it (nvfp4, bfloat16; found by the fuzz on an H200). The product is the same.

    The first test is :func:`guard_free`: such an x takes none of the guards."""
    if guard_free(x.shape, x.dtype, group_size):
        return mx.quantized_matmul(x, wq, scales, biases, transpose, group_size, bits, mode)
    if x.ndim == 1:
        return _quantized_matmul(x[None], wq, scales, biases, transpose, group_size, bits, mode)[0]
    if x.dtype == mx.float16 and _on_cuda():
        # Affine scales/biases widen exactly to float32; fp scale codes (uint8) stay as they are.
        wide_scales = scales if scales.dtype == mx.uint8 else scales.astype(mx.float32)
        wide_biases = None if biases is None else biases.astype(mx.float32)
        y = _mlx_quantized_matmul(x.astype(mx.float32), wq, wide_scales, wide_biases, transpose,
                                  group_size, bits, mode)
        # MLX's result dtype: x's for fp modes, the promotion of x and the scales for affine
        # (float32 beside bfloat16 scales; the fuzz found float16 here on an H200).
        # float16 promotes with float16 scales to float16, with bfloat16/float32 to float32.
        keeps_half = scales.dtype in (mx.uint8, mx.float16)
        return y.astype(mx.float16 if keeps_half else mx.float32)
    return _mlx_quantized_matmul(x, wq, scales, biases, transpose, group_size, bits, mode)


def guard_free(shape: tuple[int, ...], dtype: mx.Dtype, group_size: int) -> bool:
    """Whether :func:`_quantized_matmul` of an x of this shape and dtype is
    ``mx.quantized_matmul`` itself, on every back end: rank >= 2 (not the 1-D case), more
    than one group per row (not :func:`_mlx_quantized_matmul`'s case) and not float16 (not
    the CUDA float16 case). ``QuantizedLinear``'s plan for such an x calls MLX directly."""
    return len(shape) > 1 and shape[-1] > group_size and dtype != mx.float16


def _mlx_quantized_matmul(
    x: mx.array, wq: mx.array, scales: mx.array, biases: mx.array | None, transpose: bool,
    group_size: int, bits: int, mode: str,
) -> mx.array:
    """``mx.quantized_matmul``, except affine products with one group per row and more than
    one row on CUDA, which get a second, all-zero group.

    MLX 0.32.4's CUDA back end sends exactly those (4- or 8-bit, ``transpose=True``, ``K``
    a multiple of 64 and at most the group size, several rows) to its Hopper kernel
    (``qmm_sm90``), which returns wrong products: relative error 1.0 against the float64
    product on an H200, for bfloat16 ``x [12, 64]``, ``W [192, 64]``, group 64, where one row
    (the ``qmv`` kernel) or ``K = 192`` (another kernel) are right
    (``python -m conformance repro cuda_affine_single_group_qmm``). Found by the model-level
    run: every tiny model and DiT block with 64-wide affine projections left the bound at
    the prefill's first layer. The extra group (codes, scale and bias 0, ``x`` padded with
    0) adds exact zeros, so the product is unchanged, and ``K`` past the group size takes
    MLX's other kernels."""
    k = x.shape[-1]
    rows = x.size // k if k else 0
    if (mode == "affine" and transpose and bits in (4, 8) and k <= group_size and rows > 1
            and _on_cuda()):
        words = group_size * bits // 32
        x = mx.concatenate([x, mx.zeros((*x.shape[:-1], group_size), x.dtype)], axis=-1)
        wq = mx.concatenate([wq, mx.zeros((*wq.shape[:-1], words), wq.dtype)], axis=-1)
        scales = mx.concatenate([scales, mx.zeros((*scales.shape[:-1], 1), scales.dtype)], axis=-1)
        if biases is not None:
            biases = mx.concatenate([biases, mx.zeros((*biases.shape[:-1], 1), biases.dtype)], axis=-1)
    return mx.quantized_matmul(x, wq, scales, biases, transpose, group_size, bits, mode)
