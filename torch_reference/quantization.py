"""A from-scratch PyTorch twin of MLX 0.32.4's ``quantize`` / ``dequantize`` /
``quantized_matmul`` that reproduces MLX's stored formats BIT FOR BIT.

The formats (SEMANTICS.md, re-measured on mlx 0.32.4, CPU):

* ``affine`` (bits 1, 2, 3, 4, 5, 6, 8; group 32, 64, 128): per group a scale and a
  bias in the weight's dtype, codes ``q`` in ``[0, 2^bits - 1]`` with
  ``w ~ q * scale + bias``. All quantization math is float32 with
  round-half-to-even; ``bits == 1`` uses ``scale = max(max - min, 1e-7)``,
  ``bias = min``; otherwise the bias is the larger-magnitude extreme (the
  "edge") and the scale is negated when that edge is the maximum.
* ``nvfp4`` (group 16): FP4 E2M1 elements and one E4M3 scale per group of
  ``amax / 6``, optionally re-scaled by a float32 global scale.
* ``mxfp4`` (group 32) and ``mxfp8`` (group 32): E2M1 or E4M3FN elements and one
  E8M0 scale ``2^(s - 127)`` per group, ``s = ceil(log2(amax / maxval))``.

Packing: every row of codes is one little-endian, LSB-first bit stream cut into
uint32 words; element ``i`` occupies bits ``[i*bits, (i+1)*bits)``, so 3-, 5- and
6-bit codes straddle words. Packed weights are returned as ``torch.uint32`` (the
arithmetic runs in int64 because PyTorch implements few ops on uint32); fp-mode
scales are ``torch.uint8`` codes; affine scales and biases keep the weight's dtype.

``quantize`` and ``dequantize`` equal MLX's bit for bit (NaN payloads aside). Like
``mlx_impl.quantization.quantize``, ``quantize`` refuses what ``mx.quantize`` silently
corrupts: non-finite weights, and mxfp4 / mxfp8 groups whose E8M0 scale code would wrap;
the private ``_fp_quantize`` still reproduces MLX's raw wrap bit for bit. Every function takes ``precision="native"`` (MLX's rounding points) or
``"float64"`` (the oracle: exact float64 values of the same stored codes, scales and
biases). ``quantized_matmul``'s native result is ``x @ dequantize(W).T``; MLX's fused
CPU kernel sums in another order (tests/test_quantized_linear.py pins it down).
This module never imports MLX.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from torch_reference._errors import type_error, value_error
from torch_reference._precision import check_precision

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

_QUANTIZABLE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# E2M1 magnitudes by code (bit 3 is the sign); MLX's FP4 table in code order.
_FP4_VALUES = (
    0.0,
    0.5,
    1.0,
    1.5,
    2.0,
    3.0,
    4.0,
    6.0,
    -0.0,
    -0.5,
    -1.0,
    -1.5,
    -2.0,
    -3.0,
    -4.0,
    -6.0,
)
# Largest magnitude of each element format: the "maxval" the block scale maps amax to.
_FP_MAXVAL = {4: 6.0, 8: 448.0}
# nvfp4 global-scale encoding constant: 448 (E4M3 max) * 6 (E2M1 max).
_NVFP4_GLOBAL = 448.0 * 6.0
# mx.quantize stores the E8M0 code (s + 127) mod 256, s = ceil(log2(r)), r = amax / maxval
# rounded to the weight's dtype, without clipping: r <= 2^-128 gives s <= -128 and wraps
# (measured on mlx 0.32.4 CPU; r in (2^-128, 2^-127] gives s = -127, code 0, which is fine).
_MX_WRAP_RATIO = 2.0**-128
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


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


def _check_scales_dtype(where: str, mode: str, scales: torch.Tensor) -> None:
    if mode == "affine":
        if scales.dtype not in _QUANTIZABLE_DTYPES:
            raise type_error(
                where,
                f"affine scales must be float32, float16 or bfloat16 but got {scales.dtype}.",
            )
    elif scales.dtype != torch.uint8:
        raise type_error(where, f"{mode} scales must be uint8 codes but got {scales.dtype}.")


def _check_device_support(where: str, bits: int, mode: str, t: object) -> None:
    """Refuse what MLX's back end of the tensor's device lacks, as ``mlx_impl`` does there:
    1-bit affine on CUDA (MLX 0.32.4's CUDA quantized matmul refuses it and its dequantize
    gives wrong values), so that a CUDA run's reference refuses the same inputs."""
    if mode == "affine" and bits == 1 and isinstance(t, torch.Tensor) and t.device.type == "cuda":
        raise value_error(
            where, "1-bit affine quantization is not supported on MLX's CUDA back end; "
            "use bits 2, 3, 4, 5, 6 or 8 (or run on the CPU or Metal)."
        )


def check_quantized(
    where: str,
    wq: torch.Tensor,
    scales: torch.Tensor,
    biases: torch.Tensor | None,
    group_size: int,
    bits: int,
    mode: str,
) -> int:
    """Validate a packed ``(wq, scales, biases)`` triple; return the unpacked last dim.

    Checks: the mode/group/bits combination; ``wq`` is uint32, at least 2-D and not
    empty; ``scales`` has ``wq``'s shape except its last
    dim, which is ``wq.shape[-1] * 32 / bits / group_size``; affine needs ``biases`` of
    the scales' shape and dtype and floating scales; fp modes need uint8 scales and
    ``biases is None``.

    Shape:
        wq: ``[..., N, K * bits / 32]``; scales, biases: ``[..., N, K / group_size]``.
    """
    check_quantization(where, group_size, bits, mode)
    _check_device_support(where, bits, mode, wq)
    if not isinstance(wq, torch.Tensor) or not isinstance(scales, torch.Tensor):
        raise type_error(where, "the packed weight and the scales must be tensors.")
    if wq.dtype != torch.uint32:
        raise type_error(
            where,
            f"the packed weight must be uint32 (view int32 words with .view(torch.uint32)) but got {wq.dtype}.",
        )
    if wq.ndim < 2:
        raise value_error(
            where, f"the packed weight must be at least 2-D but got shape {tuple(wq.shape)}."
        )
    _check_scales_dtype(where, mode, scales)
    if mode == "affine":
        if biases is None:
            raise value_error(where, "affine quantization needs biases but got None.")
        if not isinstance(biases, torch.Tensor):
            raise type_error(where, f"biases must be a tensor but got {type(biases).__name__}.")
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


def _check_global_scale(where: str, mode: str, global_scale: torch.Tensor | None) -> None:
    if global_scale is None:
        return
    if mode != "nvfp4":
        raise value_error(
            where, f"global_scale is only supported for mode 'nvfp4' but got {mode!r}."
        )
    if not isinstance(global_scale, torch.Tensor):
        raise type_error(
            where, f"global_scale must be a tensor but got {type(global_scale).__name__}."
        )
    if global_scale.numel() != 1 or global_scale.dtype != torch.float32:
        raise value_error(
            where,
            f"global_scale must be one float32 value but got shape {tuple(global_scale.shape)} "
            f"and dtype {global_scale.dtype}.",
        )


def _check_nvfp4_dequantizable(where: str, mode: str, wq: torch.Tensor) -> None:
    """nvfp4 only: the weight's element count (``wq.numel() * 8``) must be a multiple of
    32, as ``mx.dequantize`` 0.32.4's CPU unpacker needs (it fails with an internal
    ``[reshape]`` error otherwise; ``mlx_impl.quantization`` refuses the same inputs).
    ``quantize`` refuses the same counts; ``quantized_matmul`` is not affected."""
    if mode != "nvfp4":
        return
    count = wq.numel() * 32 // 4
    if count % 32 != 0:
        raise value_error(
            where,
            f"nvfp4 needs the weight's element count to be a multiple of 32 (MLX's CPU "
            f"unpacker) but packed shape {tuple(wq.shape)} holds {count} elements.",
        )


def _check_transpose(where: str, transpose: object) -> None:
    # 0, 1, None or a tensor would be truth-tested (a tensor of several values raises
    # RuntimeError): only a real bool says which layout is meant, as in mlx_impl.
    if not isinstance(transpose, bool):
        raise type_error(where, f"transpose must be a bool but got {transpose!r}.")


def _batch_shape(where: str, x: torch.Tensor, wq: torch.Tensor) -> tuple[int, ...]:
    """The broadcast batch shape of ``x [..., M, K]`` and ``wq [..., N, K']``.

    A batched packed weight (``wq.ndim > 2``) needs ``x`` of at least its rank and
    broadcastable batch dims, as ``mlx_impl.quantization`` requires: MLX 0.32.4 silently
    drops the weight's batch for a lower-rank ``x`` (PyTorch's matmul would broadcast).
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


def _check_weight_values(where: str, w: torch.Tensor, group_size: int, mode: str) -> None:
    """Refuse weights whose quantization ``mx.quantize`` 0.32.4 silently corrupts
    (the same checks, order and messages as ``mlx_impl.quantization``).

    * Any mode: every element must be finite (inf / NaN give dtype-dependent scale codes,
      e.g. mx scale code 128 for float32 but 0 for float16 / bfloat16).
    * mxfp4 / mxfp8: every group's ``r = amax / maxval`` (rounded to ``w``'s dtype, as in
      :func:`_fp_quantize`) must be 0 or above ``2^-128``; otherwise the stored E8M0 code
      ``(ceil(log2 r) + 127) mod 256`` wraps. All-zero groups (and groups whose ``r``
      underflows to 0) are fine: code 127, dequantized to 0. float16 never wraps.

    Reads every element once (one reduction): acceptable for an offline, once-per-weight
    ``quantize``.
    """
    finite = torch.isfinite(w)
    if not bool(finite.all()):
        pos = tuple(int(i) for i in torch.nonzero(~finite)[0])
        value = float(w[pos].item())
        raise value_error(
            where,
            f"mode {mode!r}: the weight must be finite (mx.quantize turns inf / NaN into "
            f"dtype-dependent garbage codes) but element {pos} is {value}.",
        )
    if mode not in ("mxfp4", "mxfp8"):
        return
    bits = 4 if mode == "mxfp4" else 8
    lead, k = w.shape[:-1], w.shape[-1]
    ratio = _mx_ratio(w.reshape(*lead, k // group_size, group_size), bits).squeeze(-1)
    wraps = (ratio > 0) & (ratio.to(torch.float64) <= _MX_WRAP_RATIO)
    if not bool(wraps.any()):
        return
    first = tuple(int(i) for i in torch.nonzero(wraps)[0])
    row_idx, group = first[:-1], first[-1]
    row: object = row_idx[0] if len(row_idx) == 1 else row_idx
    amax = float(w[row_idx][group * group_size : (group + 1) * group_size].abs().max().item())
    r = float(ratio[first].item())
    raise value_error(
        where,
        f"mode {mode!r}: row {row}, group {group} (elements {group * group_size}.."
        f"{(group + 1) * group_size - 1}) has amax {amax:.9g}, so amax / {_FP_MAXVAL[bits]:g} "
        f"= {r:.9g} in {_DTYPE_NAMES[w.dtype]}, at or below the threshold 2^-128 "
        f"(~2.94e-39): its E8M0 scale exponent ceil(log2(amax / maxval)) is below -127 and "
        f"mx.quantize's uint8 scale code would wrap (dequantizing to inf or garbage). "
        f"Groups must be all zero or have amax / maxval > 2^-128.",
    )


def _mx_ratio(g: torch.Tensor, bits: int) -> torch.Tensor:
    """``amax / maxval`` per group ``[..., G, 1]`` of ``g [..., G, group]``, rounded to
    ``g``'s dtype (MLX divides in the weight's dtype)."""
    maxval = torch.tensor(_FP_MAXVAL[bits], dtype=g.dtype, device=g.device)
    return g.abs().amax(dim=-1, keepdim=True) / maxval


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


# --------------------------------------------------------------------------- packing


def _pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes ``[..., K]`` (``0 <= c < 2^bits``) into uint32 ``[..., K*bits/32]``.

    Each row is one LSB-first bit stream: code ``i`` lands at stream bits
    ``[i*bits, (i+1)*bits)``; stream bit ``j`` is bit ``j % 32`` of word ``j // 32``.
    Power-of-two widths fill whole words; 3, 5 and 6 bits work block by block
    (32 codes fill exactly ``bits`` words; codes straddle word boundaries).
    """
    c = codes.to(torch.int64)
    k = c.shape[-1]
    if 32 % bits == 0:  # 1, 2, 4, 8 bits: whole codes per word (nvfp4 rows hold K=16)
        per_word = 32 // bits
        shifts = torch.arange(per_word, dtype=torch.int64, device=c.device) * bits
        grouped = c.reshape(*c.shape[:-1], k // per_word, per_word)
        return (grouped << shifts).sum(dim=-1).to(torch.uint32)
    blocks = c.reshape(*c.shape[:-1], k // 32, 32)
    words = torch.zeros(*c.shape[:-1], k // 32, bits, dtype=torch.int64, device=c.device)
    for i in range(32):
        offset = i * bits
        word, shift = divmod(offset, 32)
        code = blocks[..., i]
        words[..., word] |= (code << shift) & 0xFFFFFFFF
        if shift + bits > 32:  # the code straddles into the next word
            words[..., word + 1] |= code >> (32 - shift)
    return words.reshape(*c.shape[:-1], k * bits // 32).to(torch.uint32)


def _unpack(wq: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`_pack`: uint32 ``[..., W]`` -> int64 codes ``[..., W*32/bits]``."""
    w = wq.to(torch.int64)  # uint32 -> int64 is exact; PyTorch has no uint32 shifts
    n = w.shape[-1]
    mask = (1 << bits) - 1
    if 32 % bits == 0:
        shifts = torch.arange(32 // bits, dtype=torch.int64, device=w.device) * bits
        per_word = (w.unsqueeze(-1) >> shifts) & mask
        return per_word.reshape(*w.shape[:-1], n * 32 // bits)
    words = w.reshape(*w.shape[:-1], n // bits, bits)
    codes = []
    for i in range(32):
        word, shift = divmod(i * bits, 32)
        c = words[..., word] >> shift
        if shift + bits > 32:
            c = c | (words[..., word + 1] << (32 - shift))
        codes.append(c & mask)
    return torch.stack(codes, dim=-1).reshape(*w.shape[:-1], n * 32 // bits)


# --------------------------------------------------------------------------- formats


def _e4m3_table() -> torch.Tensor:
    """The 127 non-negative finite E4M3FN values, in code order (float32, exact)."""
    vals = []
    for code in range(127):
        e, m = code >> 3, code & 7
        vals.append(m * 2.0**-9 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7))
    return torch.tensor(vals, dtype=torch.float32)


_E4M3 = _e4m3_table()
# Midpoints between neighbouring codes; exact in float32 (few significant bits).
_E4M3_MID = (_E4M3[:-1] + _E4M3[1:]) / 2


def _to_e4m3(x: torch.Tensor) -> torch.Tensor:
    """Encode floats as E4M3FN uint8 codes the way MLX's ``to_fp8`` does.

    The value is widened to float32 and rounded to the nearest E4M3 value, ties to
    the even code; magnitudes from 464 up (and inf, and NaN) saturate to 448 (code
    0x7E): MLX never emits the NaN code 0x7F. The sign bit is copied (so -0.0 and
    negative values that round to zero give 0x80).
    """
    f = x.to(torch.float32)
    a = f.abs()
    mids = _E4M3_MID.to(a.device)
    code = torch.searchsorted(mids, a, side="left")  # number of midpoints below a
    tie = (code < 126) & (a == mids[code.clamp(max=125)])
    code = torch.where(tie & (code % 2 == 1), code + 1, code)
    code = torch.where(torch.isnan(f) | (a >= 464.0), torch.full_like(code, 126), code)
    return (code | torch.signbit(f).to(torch.int64) << 7).to(torch.uint8)


def _from_e4m3(codes: torch.Tensor) -> torch.Tensor:
    """Decode E4M3FN uint8 codes to float32 (exact; code 0x7F/0xFF decode to NaN)."""
    c = codes.to(torch.int64)
    mag = _E4M3.to(c.device)[(c & 127).clamp(max=126)]
    mag = torch.where((c & 127) == 127, torch.full_like(mag, float("nan")), mag)
    return torch.where((c & 128) != 0, -mag, mag)


def _to_fp4(v: torch.Tensor) -> torch.Tensor:
    """E2M1 codes of ``v`` as MLX computes them: ``argmin |v - table|`` over its 16-entry
    table (+0, +0.5, ..., +6, -0, ..., -6), distances rounded to ``v``'s dtype, the FIRST
    minimum winning.

    So ties go to the smaller magnitude (1.75 -> 1.5, 3.5 -> 3, 5 -> 4) and negative
    values that round to zero give code 0 (+0), not 8. Equivalent form used here (the
    table is sign-symmetric, so ``|-a - (-m)|`` rounds exactly like ``|a - m|``): the
    first-minimum magnitude code of ``|v|`` over the 8 magnitudes, plus the sign bit 8
    for ``v < 0`` unless that code is 0. NaN and +/-inf give code 0. Works in chunks
    so that the ``[n, 8]`` distance matrix stays small.
    """
    flat = v.reshape(-1)
    mags = torch.tensor(_FP4_VALUES[:8], dtype=v.dtype, device=v.device)
    out = torch.empty(flat.shape, dtype=torch.int64, device=v.device)
    chunk = 1 << 20
    for start in range(0, flat.numel(), chunk):
        part = flat[start : start + chunk]
        dist = (part.abs().unsqueeze(-1) - mags).abs()
        # An element is NaN when its group's scale decodes to 0 (0 / 0): every distance
        # is NaN and MLX stores code 0 (measured). As +inf, argmin gives 0 too.
        dist = torch.nan_to_num(dist, nan=float("inf"))
        code = torch.argmin(dist, dim=-1)
        out[start : start + chunk] = torch.where((part < 0) & (code > 0), code | 8, code)
    return out.reshape(v.shape)


# --------------------------------------------------------------------------- quantize


def quantize(
    w: torch.Tensor,
    group_size: int = 64,
    bits: int = 4,
    mode: str = "affine",
    *,
    global_scale: torch.Tensor | None = None,
    precision: str = "native",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Quantize ``w`` along its last axis into MLX's packed format, bit for bit.

    affine (``bits >= 2``), per group of ``group_size`` values, all float32::

        scale = max((max - min) / (2^bits - 1), 1e-7)
        edge  = min if |min| > |max| else max   (scale negated when edge is max)
        q0    = rint(edge / scale)
        if q0 != 0: scale = edge / q0; bias = edge   else: bias = 0
        q     = clip(rint((w - bias) / scale), 0, 2^bits - 1)

    ``bits == 1``: ``scale = max(max - min, 1e-7)``, ``bias = min``. Scales and biases
    are then rounded to ``w``'s dtype.

    nvfp4: ``scale = e4m3(R(amax / 6))`` (``R`` = rounding to ``w``'s dtype; with a
    global scale ``g``, the float32 value ``R(amax / 6) * (2688 / g)`` is encoded
    instead); elements ``e2m1(float32(R(w / scale)))`` (times ``2688 / g`` with ``g``).
    mxfp4 / mxfp8: ``s = ceil(log2(R(amax / maxval)))`` exactly (``s = 0`` when
    ``R(amax / maxval) == 0``), stored as ``s + 127``; elements
    ``e2m1`` / ``e4m3(R(w / R(2^s)))``, the E2M1 distances computed in ``w``'s dtype.
    E2M1 picks the nearest value, ties to the smaller magnitude; E4M3 rounds to
    nearest even and saturates at 448.

    Bit-exact with ``mx.quantize`` on every weight it accepts. Refused (ValueError),
    as by ``mlx_impl.quantization.quantize``, because MLX would silently store garbage:

    * non-finite weights, any mode (MLX's codes then depend on implementation-defined
      float-to-int conversions: an infinite float32 mx group stores code 128, a float16
      or bfloat16 one code 0);
    * mxfp4 / mxfp8 groups with ``0 < R(amax / maxval) <= 2^-128``: ``s <= -128`` and
      MLX stores ``(s + 127) mod 256`` unclipped (e.g. code 255 = ``2^128`` = inf for a
      float32 mxfp4 group of amax ``2^-126``). Exact boundaries (measured on mlx
      0.32.4): float32 mxfp4 refuses amax in ``[2^-147, 0x1.800006p-126]``, mxfp8
      ``[0x1.c2p-142, 0x1.c00006p-120]``; bfloat16 mxfp4 ``[2^-131, 0x1.86p-126]``,
      mxfp8 ``[0x1.c2p-126, 0x1.c6p-120]``. Smaller nonzero amax underflow
      ``amax / maxval`` to 0 (code 127, dequantized to 0: allowed), as do all-zero groups;
      float16 weights never wrap (their smallest subnormal is ``2^-24``).

    The private ``_fp_quantize`` keeps reproducing MLX's raw wrap bit for bit.

    Cost: the checks read every element once (one reduction); quantizing is offline and
    happens once per weight, so that is acceptable.

    Args:
        w: the float weight (float32, float16 or bfloat16).
        group_size, bits, mode: see :data:`SUPPORTED_QUANTIZATION`.
        global_scale: nvfp4 only: a one-element float32 tensor.
        precision: accepted for API symmetry; the stored format is the same either
            way (it is discrete: the oracle dequantizes these same codes exactly).

    Returns:
        ``(wq, scales, biases)``: ``wq`` uint32; ``scales`` in ``w``'s dtype for affine,
        uint8 codes otherwise; ``biases`` in ``w``'s dtype for affine, ``None`` otherwise.

    Shape:
        w: ``[..., N, K]`` -> wq: ``[..., N, K * bits / 32]``,
        scales / biases: ``[..., N, K / group_size]``.

    Raises:
        TypeError: ``w`` not a float32 / float16 / bfloat16 tensor, or ints expected.
        ValueError: an unsupported ``(group_size, bits, mode)`` or ``precision``; a
            weight shape ``mx.quantize`` cannot take; a bad ``global_scale``; a non-finite
            element (the message gives its position); an mx group whose scale code would
            wrap (the message names the first row and group, its amax and the threshold).
    """
    where = "quantize"
    check_precision(where, precision)
    check_quantization(where, group_size, bits, mode)
    _check_device_support(where, bits, mode, w)
    if not isinstance(w, torch.Tensor):
        raise type_error(where, f"w must be a torch.Tensor but got {type(w).__name__}.")
    if w.dtype not in _QUANTIZABLE_DTYPES:
        raise type_error(
            where,
            f"w must be float32, float16 or bfloat16 (MLX 0.32.4 cannot quantize others) but got {w.dtype}.",
        )
    check_quantizable(where, w.shape, group_size, mode)
    _check_global_scale(where, mode, global_scale)
    w = w.detach()
    _check_weight_values(where, w, group_size, mode)
    if mode == "affine":
        return _affine_quantize(w, group_size, bits)
    wq, scales = _fp_quantize(w, group_size, bits, mode, global_scale)
    return wq, scales, None


def _affine_quantize(
    w: torch.Tensor, group_size: int, bits: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lead, k = w.shape[:-1], w.shape[-1]
    g = w.to(torch.float32).reshape(*lead, k // group_size, group_size)
    w_max = g.amax(dim=-1, keepdim=True)
    w_min = g.amin(dim=-1, keepdim=True)
    n_bins = torch.tensor(float(2**bits - 1), dtype=torch.float32, device=w.device)
    eps = torch.tensor(1e-7, dtype=torch.float32, device=w.device)
    if bits == 1:
        scale = torch.maximum(w_max - w_min, eps)
        bias = w_min
    else:
        mask = w_min.abs() > w_max.abs()
        scale = torch.maximum((w_max - w_min) / n_bins, eps)
        scale = torch.where(mask, scale, -scale)
        edge = torch.where(mask, w_min, w_max)
        q0 = torch.round(edge / scale)  # torch.round rounds half to even, like rint
        nonzero = q0 != 0
        scale = torch.where(nonzero, edge / q0, scale)
        bias = torch.where(nonzero, edge, torch.zeros_like(edge))
    q = torch.round((g - bias) / scale).clamp(0, 2**bits - 1)
    codes = q.to(torch.int64).reshape(*lead, k)
    return (
        _pack(codes, bits),
        scale.squeeze(-1).to(w.dtype),
        bias.squeeze(-1).to(w.dtype),
    )


def _fp_quantize(
    w: torch.Tensor,
    group_size: int,
    bits: int,
    mode: str,
    global_scale: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    lead, k = w.shape[:-1], w.shape[-1]
    g = w.reshape(*lead, k // group_size, group_size)
    # amax / maxval is rounded to the weight dtype, as MLX divides in that dtype.
    ratio = _mx_ratio(g, bits)
    if mode == "nvfp4":
        if global_scale is None:
            scale_codes = _to_e4m3(ratio)
            # MLX multiplies by a float32 encode factor of 1.0 here, so the E2M1
            # rounding (the argmin over distances) runs in float32, not w's dtype.
            elems = (g / _from_e4m3(scale_codes).to(w.dtype)).to(torch.float32)
        else:
            # float32 from here on: the encode factor is a float32 array in MLX.
            encode = _NVFP4_GLOBAL / global_scale.reshape(()).to(torch.float32)
            scale_codes = _to_e4m3(ratio.to(torch.float32) * encode)
            elems = (g / _from_e4m3(scale_codes).to(w.dtype)).to(torch.float32) * encode
    else:
        exps = _e8m0_exponent(ratio)
        scale_codes = ((exps + 127) & 0xFF).to(torch.uint8)  # wraps like MLX's uint8 cast
        # The elements are divided by the unwrapped 2^e, rounded to w's dtype.
        elems = g / torch.pow(2.0, exps.to(torch.float64)).to(w.dtype)
    codes = _to_fp4(elems) if bits == 4 else _to_e4m3(elems).to(torch.int64)
    return _pack(codes.reshape(*lead, k), bits), scale_codes.reshape(*lead, k // group_size)


def _e8m0_exponent(ratio: torch.Tensor) -> torch.Tensor:
    """``ceil(log2(ratio))`` exactly (int64), 0 for ``ratio == 0``.

    Not clipped: a ratio at or below ``2^-128`` (tiny float32 / bfloat16 groups) gives
    an exponent below -127 whose stored code ``(e + 127) mod 256`` wraps around, as in
    MLX 0.32.4's raw ``mx.quantize`` (``quantize`` refuses such groups; this low-level
    emulation is kept so the tests can pin MLX's raw behaviour). An infinite ratio gives
    -127 (MLX's result for float16 / bfloat16; ``quantize`` refuses non-finite weights).
    """
    r = ratio.to(torch.float64)
    mant, exp = torch.frexp(r)  # r = mant * 2^exp, mant in [0.5, 1): exact
    # ceil(log2 r) = exp - 1 when r is a power of two (mant == 0.5), else exp.
    e = torch.where(mant == 0.5, exp - 1, exp).to(torch.int64)
    e = torch.where(torch.isinf(r), torch.full_like(e, -127), e)
    return torch.where(r == 0, torch.zeros_like(e), e)


# --------------------------------------------------------------------------- dequantize


def dequantize(
    wq: torch.Tensor,
    scales: torch.Tensor,
    biases: torch.Tensor | None = None,
    group_size: int = 64,
    bits: int = 4,
    mode: str = "affine",
    dtype: torch.dtype | None = None,
    *,
    global_scale: torch.Tensor | None = None,
    precision: str = "native",
) -> torch.Tensor:
    """Expand a packed weight back to floats, with MLX's rounding points.

    native, affine: ``R(R(q * scale) + bias)`` with ``R`` = rounding to the scales'
    dtype (two roundings, no FMA), then cast to ``dtype`` if given (so float32 output
    from bfloat16 scales is the bfloat16 result widened).
    native, fp modes: ``R(R(value) * R(scale))`` with ``R`` = rounding to ``dtype``,
    which defaults to bfloat16; with an nvfp4 ``global_scale`` ``g`` the scale is
    ``R(scale) * (g / 2688)`` in float32 and the result is float32 whatever ``dtype``.
    float64: the exact value ``q * scale + bias`` (or ``value * scale``) of the same
    stored codes, scales and biases, as float64 (``dtype`` is then ignored).

    Args:
        wq: packed uint32 weight.
        scales, biases: as returned by :func:`quantize` (biases only for affine).
        group_size, bits, mode: the quantization the triple was made with.
        dtype: output dtype (float32, float16 or bfloat16); ``None`` = the scales'
            dtype for affine, bfloat16 for fp modes.
        global_scale: nvfp4 only, the float32 global scale used at quantize time.
        precision: ``"native"`` or ``"float64"``.

    Shape:
        wq: ``[..., N, K * bits / 32]``, scales / biases: ``[..., N, K / group_size]``
        -> ``[..., N, K]``.

    Raises:
        TypeError: wrong tensor dtypes, ``group_size`` / ``bits`` not ints, ``mode`` not
            a str, ``dtype`` not float32 / float16 / bfloat16 / ``None``.
        ValueError: an unsupported format or ``precision``, inconsistent shapes (see
            :func:`check_quantized`), a bad ``global_scale``, or an nvfp4 weight whose
            element count is not a multiple of 32 (``mx.dequantize`` 0.32.4's CPU
            unpacker fails on it; :func:`quantize` never produces one).
    """
    where = "dequantize"
    check_precision(where, precision)
    k = check_quantized(where, wq, scales, biases, group_size, bits, mode)
    _check_nvfp4_dequantizable(where, mode, wq)
    _check_global_scale(where, mode, global_scale)
    # isinstance first: ``in`` on an array-like dtype would compare elementwise and raise.
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype in _QUANTIZABLE_DTYPES):
        raise type_error(
            where, f"dtype must be float32, float16, bfloat16 or None but got {dtype!r}."
        )
    return _dequantize(
        wq, scales, biases, k, group_size, bits, mode, dtype, global_scale, precision
    )


def _dequantize(
    wq: torch.Tensor,
    scales: torch.Tensor,
    biases: torch.Tensor | None,
    k: int,
    group_size: int,
    bits: int,
    mode: str,
    dtype: torch.dtype | None,
    global_scale: torch.Tensor | None,
    precision: str,
) -> torch.Tensor:
    """:func:`dequantize` on checked inputs (``k`` = the unpacked last dim). Also used by
    :func:`quantized_matmul`, which accepts nvfp4 weights of any whole number of groups
    (MLX's fused kernel handles them; only ``mx.dequantize``'s CPU unpacker does not)."""
    lead = wq.shape[:-1]
    codes = _unpack(wq, bits).reshape(*lead, k // group_size, group_size)
    values, scale = _decode(codes, scales, mode, bits)
    if precision == "float64":
        if mode == "affine":
            assert biases is not None
            out = values * scale.to(torch.float64) + biases.to(torch.float64).unsqueeze(-1)
        else:
            if global_scale is not None:
                scale = scale * (global_scale.to(torch.float64).reshape(()) / _NVFP4_GLOBAL)
            out = values * scale
        return out.reshape(*lead, k)
    if mode == "affine":
        assert biases is not None
        # q * scale and + bias are two separately rounded ops in the scales' dtype.
        out = values.to(scales.dtype) * scale.to(scales.dtype)
        out = out + biases.unsqueeze(-1)
        out_dtype = scales.dtype if dtype is None else dtype
        return out.reshape(*lead, k).to(out_dtype)
    out_dtype = torch.bfloat16 if dtype is None else dtype
    s = scale.to(out_dtype)
    if global_scale is not None:
        s = s.to(torch.float32) * (global_scale.to(torch.float32).reshape(()) / _NVFP4_GLOBAL)
    out = values.to(out_dtype) * s
    return out.reshape(*lead, k)


def _decode(
    codes: torch.Tensor, scales: torch.Tensor, mode: str, bits: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact float64 element values ``[..., G, group]`` and scales ``[..., G, 1]``."""
    if mode == "affine":
        return codes.to(torch.float64), scales.unsqueeze(-1)
    if bits == 4:
        values = torch.tensor(_FP4_VALUES, dtype=torch.float64, device=codes.device)[codes]
    else:
        values = _from_e4m3(codes).to(torch.float64)
    s = scales.to(torch.int64).unsqueeze(-1)
    if mode == "nvfp4":
        scale = _from_e4m3(s).to(torch.float64)
    else:
        scale = torch.pow(2.0, (s - 127).to(torch.float64))
    return values, scale


# --------------------------------------------------------------------------- matmul


def quantized_matmul(
    x: torch.Tensor,
    wq: torch.Tensor,
    scales: torch.Tensor,
    biases: torch.Tensor | None = None,
    transpose: bool = True,
    group_size: int = 64,
    bits: int = 4,
    mode: str = "affine",
    *,
    precision: str = "native",
) -> torch.Tensor:
    """``x @ W.T`` (or ``x @ W`` with ``transpose=False``) for a quantized ``W``.

    The reference for MLX's fused kernel is ``x @ dequantize(W).T``:

    native: the output dtype is the promotion of ``x`` and the scales for affine
    (MLX casts scales and biases to it, then dequantizes in it) and ``x``'s dtype for
    fp modes; ``W`` is dequantized in that dtype (MLX's rounding points), then
    multiplied with float32 accumulation and one final rounding, as MLX's own
    ``x @ dequantize(W).T``. MLX's fused x86 CPU kernel instead accumulates
    float16 / bfloat16 in the input dtype, rounding every step, so half-precision
    results differ from this reference by far more than an ulp (tests give a
    Higham-style bound); float32 agrees to summation-order differences.
    float64: ``x`` and the exact dequantized ``W`` in float64.

    Args:
        x: activations, floating.
        wq, scales, biases, group_size, bits, mode: the packed weight (see
            :func:`quantize`).
        transpose: a Python bool; ``True`` multiplies by ``W.T`` (weights stored
            ``[out, in]``).
        precision: ``"native"`` or ``"float64"``.

    Shape:
        transpose: x ``[..., K]``, wq ``[N, K * bits / 32]`` -> ``[..., N]``;
        otherwise x ``[..., K]``, wq ``[K, N * bits / 32]`` -> ``[..., N]``.
        A batched weight ``wq [B..., N, K * bits / 32]`` needs ``x [..., M, K]`` of at
        least its rank with broadcastable batch dims -> ``[broadcast batch..., M, N]``.
        An empty ``x`` gives an empty result of that shape and dtype (as
        ``mlx_impl.quantization.quantized_matmul``, which never hands it to MLX's kernel).

    Raises:
        TypeError: ``transpose`` not a bool, ``group_size`` / ``bits`` not ints (bools
            refused), ``mode`` not a str, or wrong tensor dtypes.
        ValueError: an unsupported format or ``precision``, inconsistent packed shapes,
            ``x``'s last dim not the weight's input dim, or a batched weight whose batch
            ``x`` lacks or does not broadcast with.
    """
    where = "quantized_matmul"
    check_precision(where, precision)
    _check_transpose(where, transpose)
    w_cols = check_quantized(where, wq, scales, biases, group_size, bits, mode)
    if not isinstance(x, torch.Tensor) or x.dtype not in _QUANTIZABLE_DTYPES:
        raise type_error(
            where,
            f"x must be a float32, float16 or bfloat16 tensor but got {getattr(x, 'dtype', type(x).__name__)}.",
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
    _batch_shape(where, x, wq)
    if precision == "float64":
        w = _dequantize(wq, scales, biases, w_cols, group_size, bits, mode, None, None, "float64")
        xf = x.to(torch.float64)
    else:
        if mode == "affine":
            assert biases is not None
            out_dtype = torch.promote_types(x.dtype, scales.dtype)
            w = _dequantize(
                wq,
                scales.to(out_dtype),
                biases.to(out_dtype),
                w_cols,
                group_size,
                bits,
                mode,
                None,
                None,
                "native",
            )
        else:
            out_dtype = x.dtype
            w = _dequantize(
                wq, scales, None, w_cols, group_size, bits, mode, out_dtype, None, "native"
            )
        xf = x.to(out_dtype)
    w_t = w.transpose(-1, -2) if transpose else w
    if xf.dtype in (torch.float16, torch.bfloat16):
        # Accumulate in float32 and round once, like MLX's own `x @ dequantize(w).T`
        # on the CPU (and PyTorch's CPU half matmul, made explicit here).
        return (xf.to(torch.float32) @ w_t.to(torch.float32)).to(xf.dtype)
    return xf @ w_t
