"""The fuzz entry points of the quantization records (``conformance/records/quantized.py``
declares them in its records' ``entry_points``): ``quantize``, ``dequantize``,
``quantized_matmul``, ``nn.QuantizedLinear`` and its two other constructors,
``QuantizedLinear.from_float`` and ``Linear.to_quantized``.

A module of its own only for size: valid packed inputs need the format rules (groups, bits,
packed widths) spelled out, and quantized.py is already near 600 lines.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from conformance.fuzz.inputs import (
    ALL_DTYPES,
    FLOAT_DTYPES,
    MAX_QUANT_ELEMENTS,
    DType,
    FuzzEntry,
    FuzzOutput,
    FuzzParam,
    arr,
    dims,
    float_dtypes,
    opt,
    shape_of,
)
from conformance.fuzz.inputs import constant_array as _zeros

QUANT_MODES = ("affine", "nvfp4", "mxfp4", "mxfp8")
FP_FORMATS = {"nvfp4": (16, 4), "mxfp4": (32, 4), "mxfp8": (32, 8)}
GROUPS_PER_ROW = (1, 2, 1, 2, 1, 0)
"""Quantization groups per row: 0 (an empty weight) in 1 draw of 6."""
GROUP_VALUES = (16, 32, 64, 128, 0, -32, 8, 33, 256, 64.0, None, "64", True)
BITS_VALUES = (1, 2, 3, 4, 5, 6, 7, 8, 0, -4, 9, 16, 32, 4.0, None, "4", True)
MODE_VALUES = (*QUANT_MODES, "int4", "AFFINE", "", "fp8", None, 4, "nvfp4 ")

_ARRAY = FuzzParam(array=True)
FORMAT_PARAMS = {
    "group_size": FuzzParam(values=GROUP_VALUES),
    "bits": FuzzParam(values=BITS_VALUES),
    "mode": FuzzParam(values=MODE_VALUES),
}
_PACKED_PARAMS = {"wq": _ARRAY, "scales": _ARRAY, "qbiases": _ARRAY}


@st.composite
def _format(draw: st.DrawFn) -> tuple[int, int, str]:
    mode = draw(st.sampled_from(QUANT_MODES))
    if mode == "affine":
        return draw(st.sampled_from((32, 32, 64, 128))), draw(st.sampled_from((1, 2, 3, 4, 5, 6, 8))), mode
    group, bits = FP_FORMATS[mode]
    return group, bits, mode


def _rows_for(k: int, mode: str, draw: st.DrawFn) -> int:
    most = max(1, MAX_QUANT_ELEMENTS // max(k, 1))
    n = draw(dims(0, min(4, most)))
    if mode == "nvfp4" and draw(st.booleans()):
        n = 2 * (n // 2)  # MLX's CPU nvfp4 packer needs a multiple of 32 elements
    return n


@st.composite
def _packed(draw: st.DrawFn, dt: str, group: int, bits: int, mode: str, rows: int, cols: int) -> dict:
    """Random packed words and scale codes for a ``[rows, cols]`` weight (any bits decode)."""
    wq = draw(arr((rows, cols * bits // 32), "uint32", ("bits",)))
    if mode == "affine":
        scales = draw(arr((rows, cols // group), dt, ("small",)))
        biases = draw(arr((rows, cols // group), dt, ("small",)))
    else:
        scales, biases = draw(arr((rows, cols // group), "uint8", ("bits", "small"))), None
    return {"wq": wq, "scales": scales, "qbiases": biases}


def _format_of(p) -> dict:
    return {"group_size": p["group_size"], "bits": p["bits"], "mode": p["mode"]}


# ---- quantize


@st.composite
def _quantize_valid(draw: st.DrawFn) -> dict:
    group, bits, mode = draw(_format())
    k = group * draw(st.sampled_from(GROUPS_PER_ROW))
    n = _rows_for(k, mode, draw)
    lead = draw(st.sampled_from(((), (), (), (1,), (2,))))
    if math.prod(lead) * n * k > MAX_QUANT_ELEMENTS:
        lead = ()
    gs = None
    if mode == "nvfp4" and draw(st.booleans()):
        gs = draw(arr(draw(st.sampled_from(((), (1,)))), "float32", ("small",)))
    return {"w": draw(arr((*lead, n, k), draw(float_dtypes()))), "group_size": group, "bits": bits,
            "mode": mode, "global_scale": gs}


def _quantize_expect(a) -> list[FuzzOutput]:
    s = shape_of(a["w"])
    k, group, bits = s[-1], int(a["group_size"]), int(a["bits"])
    grouped = (*s[:-1], k // group)
    affine = a["mode"] == "affine"
    return [
        FuzzOutput((*s[:-1], k * bits // 32), "uint32"),
        FuzzOutput(grouped, "floating" if affine else "uint8"),
        FuzzOutput(grouped if affine else None, "floating" if affine else None),
    ]


QUANTIZE_FUZZ = FuzzEntry(
    name="quantization.quantize",
    call=lambda lib, a, kw: lib.quantization.quantize(a["w"], a["group_size"], a["bits"], a["mode"],
                                                       global_scale=a["global_scale"], **kw),
    valid=_quantize_valid(),
    params={"w": _ARRAY, "global_scale": _ARRAY, **FORMAT_PARAMS},
    expect=_quantize_expect,
    where=("quantize",),
    from_case=lambda a, p: {"w": a["weight"], **_format_of(p), "global_scale": None},
)


# ---- dequantize


@st.composite
def _dequantize_valid(draw: st.DrawFn) -> dict:
    group, bits, mode = draw(_format())
    k = group * draw(st.sampled_from(GROUPS_PER_ROW))
    n = _rows_for(k, mode, draw)
    found = draw(_packed(draw(float_dtypes()), group, bits, mode, n, k))
    gs = None
    if mode == "nvfp4" and draw(st.integers(0, 3)) == 0:
        gs = draw(arr((1,), "float32", ("small",)))
    dtype = draw(st.sampled_from((None, None, *(DType(d) for d in FLOAT_DTYPES))))
    return {**found, "group_size": group, "bits": bits, "mode": mode, "dtype": dtype, "global_scale": gs}


def _dequantize_expect(a) -> list[FuzzOutput]:
    s = shape_of(a["wq"])
    return [FuzzOutput((*s[:-1], s[-1] * 32 // int(a["bits"])))]


DEQUANTIZE_FUZZ = FuzzEntry(
    name="quantization.dequantize",
    call=lambda lib, a, kw: lib.quantization.dequantize(
        a["wq"], a["scales"], a["qbiases"], a["group_size"], a["bits"], a["mode"], a["dtype"],
        global_scale=a["global_scale"], **kw),
    valid=_dequantize_valid(),
    params={**_PACKED_PARAMS, "global_scale": _ARRAY, **FORMAT_PARAMS,
            "dtype": FuzzParam(values=(*(DType(d) for d in ALL_DTYPES), "float32", None, 0))},
    expect=_dequantize_expect,
    where=("dequantize",),
    from_case=lambda a, p: {"wq": a["wq"], "scales": a["scales"], "qbiases": a.get("qbiases"), **_format_of(p),
                            "dtype": None, "global_scale": None},
    pinned=(  # nvfp4 with 16 elements (MLX's CPU path wants multiples of 32)
        {"wq": _zeros((1, 2), "uint32"), "scales": _zeros((1, 1), "uint8"), "qbiases": None, "group_size": 16,
         "bits": 4, "mode": "nvfp4", "dtype": None, "global_scale": None},
        # a global scale without a dtype: float32 on MLX's CPU, bfloat16 on its CUDA back end
        {"wq": _zeros((2, 2), "uint32"), "scales": _zeros((2, 1), "uint8"), "qbiases": None, "group_size": 16,
         "bits": 4, "mode": "nvfp4", "dtype": None, "global_scale": _zeros((1,), "float32")},
    ),
)


# ---- quantized_matmul


@st.composite
def _qmm_valid(draw: st.DrawFn) -> dict:
    group, bits, mode = draw(_format())
    dt = draw(float_dtypes())
    transpose = draw(st.sampled_from((True, True, False)))
    grouped = group * draw(st.sampled_from(GROUPS_PER_ROW))  # the unpacked (grouped) axis
    other = _rows_for(grouped, mode, draw)
    found = draw(_packed(dt, group, bits, mode, other, grouped))
    inner = grouped if transpose else other  # x @ W with W [K, N]: the packed rows are K
    lead = draw(st.sampled_from(((), (1,), (2,), (2, 1), (0,))))
    if math.prod(lead) * inner > MAX_QUANT_ELEMENTS:
        lead = (1,)
    x = draw(arr((*lead, inner), draw(st.sampled_from((dt, dt, *FLOAT_DTYPES)))))
    return {"x": x, **found, "transpose": transpose, "group_size": group, "bits": bits, "mode": mode}


def _qmm_expect(a) -> list[FuzzOutput]:
    x, w = shape_of(a["x"]), shape_of(a["wq"])
    n = w[-2] if a["transpose"] else w[-1] * 32 // int(a["bits"])
    batch = tuple(np.broadcast_shapes(x[:-2], w[:-2]))
    return [FuzzOutput((*batch, *x[-2:-1], n))]


def _affine_packed(rows: int, k: int, group: int = 32, bits: int = 4, dt: str = "float32") -> dict:
    """Packed affine weights ``[rows, k]`` in groups of ``group`` (scale 1, bias 0), with
    the ``group_size``/``bits``/``mode`` they were packed for (stated once)."""
    return {"wq": _zeros((rows, k * bits // 32), "uint32"), "scales": _zeros((rows, k // group), dt, 1.0),
            "qbiases": _zeros((rows, k // group), dt), "group_size": group, "bits": bits, "mode": "affine"}




QUANTIZED_MATMUL_FUZZ = FuzzEntry(
    name="quantization.quantized_matmul",
    call=lambda lib, a, kw: lib.quantization.quantized_matmul(
        a["x"], a["wq"], a["scales"], a["qbiases"], a["transpose"], a["group_size"], a["bits"], a["mode"], **kw),
    valid=_qmm_valid(),
    params={"x": _ARRAY, **_PACKED_PARAMS, **FORMAT_PARAMS,
            "transpose": FuzzParam(values=(True, False, None, 0, 1, "yes"))},
    expect=_qmm_expect,
    where=("quantized_matmul",),
    from_case=lambda a, p: {"x": a["x"], "wq": a["wq"], "scales": a["scales"], "qbiases": a.get("qbiases"),
                            "transpose": True, **_format_of(p)},
    pinned=(
        # an array as ``transpose``: MLX's "[convert]" error / torch's RuntimeError
        {"x": _zeros((1, 32), "float32"), **_affine_packed(2, 32), "transpose": _zeros((2,), "uint8")},
        # mx.quantized_matmul 0.32.4 on CPU dies of SIGFPE when M, N or K is 0, in every mode.
        {"x": _zeros((0, 32), "float32"), **_affine_packed(2, 32), "transpose": True},
        {"x": _zeros((2, 32), "float32"), **_affine_packed(0, 32), "transpose": True},
        {"x": _zeros((2, 0), "float32"), "wq": _zeros((3, 0), "uint32"), "scales": _zeros((3, 0), "uint8"),
         "qbiases": None, "transpose": True, "group_size": 32, "bits": 8, "mode": "mxfp8"},
        # float16 x beside bfloat16 affine scales is float32 (the promotion); mlx_impl's
        # float16-through-float32 CUDA path once returned float16 (H200, 2026-11-30).
        {"x": _zeros((64,), "float16", 1.0), **_affine_packed(1, 64, 32, 4, "bfloat16"), "transpose": True},
        # affine 4/8-bit, ONE group per row (K = group 64/128), 16 weight rows, several rows
        # of x: MLX 0.32.4's CUDA qmm_sm90 gives wrong products (H200 model-level run);
        # mlx_impl pads a zero group there, whose result must keep the documented shape.
        {"x": _zeros((2, 3, 64), "bfloat16", 1.0), **_affine_packed(16, 64, 64, 4, "bfloat16"), "transpose": True},
        {"x": _zeros((4, 128), "float32", 1.0), **_affine_packed(16, 128, 128, 8, "float32"), "transpose": True},
    ),
)


# ---- nn.QuantizedLinear and the two ways to build one from a float weight


@st.composite
def _qlinear_valid(draw: st.DrawFn) -> dict:
    found = draw(_qmm_valid())
    found.pop("transpose")
    if found["x"].shape[-1] != found["scales"].shape[-1] * found["group_size"]:
        k = found["scales"].shape[-1] * found["group_size"]
        found["x"] = draw(arr((1, k), found["x"].dtype))
    found["bias"] = draw(opt(arr((found["wq"].shape[0],), draw(float_dtypes()))))
    return found


def _linear_expect(a) -> list[FuzzOutput]:
    return [FuzzOutput((*shape_of(a["x"])[:-1], shape_of(a["weight"])[0]))]


QUANTIZED_LINEAR_FUZZ = FuzzEntry(
    name="nn.QuantizedLinear",
    call=lambda lib, a, kw: lib.nn.QuantizedLinear(
        a["wq"], a["scales"], a["qbiases"], a["bias"], a["group_size"], a["bits"], a["mode"])(a["x"], **kw),
    valid=_qlinear_valid(),
    params={"x": _ARRAY, "bias": _ARRAY, **_PACKED_PARAMS, **FORMAT_PARAMS},
    expect=lambda a: [FuzzOutput((*shape_of(a["x"])[:-1], shape_of(a["wq"])[0]))],
    where=("QuantizedLinear",),
    from_case=lambda a, p: {"x": a["x"], "wq": a["wq"], "scales": a["scales"], "qbiases": a.get("qbiases"),
                            "bias": a.get("bias"), **_format_of(p)},
    pinned=(
        {"x": _zeros((0, 32), "float32"), "wq": _zeros((2, 4), "uint32"), "scales": _zeros((2, 1), "uint8"),
         "qbiases": None, "bias": None, "group_size": 32, "bits": 4, "mode": "mxfp4"},
        # a 1-D x: MLX's CUDA kernel raised "SmallVector out of range" (nvfp4, bfloat16)
        {"x": _zeros((32,), "bfloat16"), "wq": _zeros((4, 4), "uint32"), "scales": _zeros((4, 2), "uint8"),
         "qbiases": None, "bias": None, "group_size": 16, "bits": 4, "mode": "nvfp4"},
        # one affine group per row, several rows of x (MLX 0.32.4's CUDA qmm_sm90 boundary;
        # float16 takes mlx_impl's float32 path on CUDA, then the zero-group guard)
        {"x": _zeros((2, 3, 64), "float16", 1.0), **_affine_packed(16, 64, 64, 4, "float16"),
         "bias": _zeros((16,), "float16")},
    ),
)


@st.composite
def _from_float_valid(draw: st.DrawFn) -> dict:
    group, bits, mode = draw(_format())
    dt = draw(float_dtypes())
    k = group * draw(st.sampled_from(GROUPS_PER_ROW))
    n = _rows_for(k, mode, draw)
    lead = draw(st.sampled_from(((), (1,), (2,))))
    return {"weight": draw(arr((n, k), dt)), "bias": draw(opt(arr((n,), dt))), "group_size": group,
            "bits": bits, "mode": mode, "x": draw(arr((*lead, k), dt))}


def _float_layer_from_case(a, p) -> dict:
    return {"weight": a["weight"], "bias": a.get("bias"), **_format_of(p), "x": a["x"]}


_FROM_FLOAT_PARAMS = {"x": _ARRAY, "weight": _ARRAY, "bias": _ARRAY, **FORMAT_PARAMS}

FROM_FLOAT_FUZZ = FuzzEntry(
    name="nn.QuantizedLinear.from_float",
    call=lambda lib, a, kw: lib.nn.QuantizedLinear.from_float(
        a["weight"], a["bias"], a["group_size"], a["bits"], a["mode"])(a["x"], **kw),
    valid=_from_float_valid(),
    params=_FROM_FLOAT_PARAMS,
    expect=_linear_expect,
    where=("QuantizedLinear", "quantize"),
    from_case=_float_layer_from_case,
)
TO_QUANTIZED_FUZZ = FuzzEntry(
    name="nn.Linear.to_quantized",
    call=lambda lib, a, kw: lib.nn.Linear(a["weight"], a["bias"]).to_quantized(
        a["group_size"], a["bits"], a["mode"])(a["x"], **kw),
    valid=_from_float_valid(),
    params=_FROM_FLOAT_PARAMS,
    expect=_linear_expect,
    where=("Linear", "QuantizedLinear", "quantize"),
    from_case=_float_layer_from_case,
)
