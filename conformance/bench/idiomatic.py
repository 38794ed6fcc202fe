"""What each benchmark cell is compared with: the fastest faithful raw MLX formulation of
the same computation (``mlx_raw``), and the op a PyTorch user would call instead
(``torch``). Both take the record's arrays (MLX or PyTorch, already converted) and
parameters and return the result (the caller evaluates / synchronizes).

PyTorch, per record (the name is stored in each benchmark's ``extra_info["paired_with"]``):

* ``F.linear``, ``F.scaled_dot_product_attention``, ``F.rms_norm``, ``F.layer_norm``,
  ``F.embedding``, ``torch.matmul`` (per-head projection), ``torch.repeat_interleave``,
  ``Tensor.masked_fill`` (the causal mask);
* quantized products (affine 4-bit, group 64): PyTorch's own weight-only int4 kernel,
  ``torch.ops.aten._weight_int4pack_mm_for_cpu`` on the CPU and
  ``torch.ops.aten._weight_int4pack_mm`` on CUDA (bfloat16 activations only), with MLX's
  codes repacked so both compute the same product (checked once when the cell is built:
  a mismatch or a missing kernel falls back, and says why). PyTorch has no kernel for
  the micro-scaled formats (mxfp4, nvfp4, mxfp8) nor for float32 activations on CUDA:
  there the pairing is ``F.linear`` on the dequantized dense weight (what a user without a
  low-bit kernel would run), named as such;
* RoPE and ``quantize`` have no PyTorch op: no ``torch`` pairing (reason recorded).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import mlx.core as mx
import numpy as np
import torch
import torch.nn.functional as F

Call = Callable[[Mapping[str, Any], Mapping[str, Any]], Any]


@dataclass(frozen=True)
class Pairing:
    """A callable and the name a report shows for it (``reason`` says why, where it matters)."""

    name: str
    call: Call
    reason: str = ""


# ---- raw MLX -----------------------------------------------------------------------

def _mx_linear(a, p):
    if "bias" in a:
        return mx.addmm(a["bias"], a["x"], a["weight"].T)
    return a["x"] @ a["weight"].T


def _mx_rms(a, p):
    return mx.fast.rms_norm(a["x"], a.get("weight"), p["eps"])


def _mx_ln(a, p):
    return mx.fast.layer_norm(a["x"], a.get("weight"), a.get("bias"), p["eps"])


def _mx_composed_ln(a, p):
    # nn.LayerNorm's computation (plain ops in x's dtype; mx.fast.layer_norm keeps float32
    # statistics for half inputs, so it is not the same computation).
    x, eps = a["x"], p["eps"] or 1e-5
    mean = mx.mean(x, axis=-1, keepdims=True)
    centered = x - mean
    variance = mx.mean(centered * centered, axis=-1, keepdims=True)
    out = centered * mx.rsqrt(variance + mx.array(eps, dtype=mx.float32).astype(variance.dtype)) * a["weight"]
    return out + a["bias"] if "bias" in a else out


@mx.compile
def _mx_checked_gather(weight: mx.array, indices: mx.array, high: mx.array) -> tuple[mx.array, mx.array]:
    safe = mx.clip(indices, 0, high)
    return weight[safe], mx.any(safe != indices)


def _mx_embedding(a, p):
    # The same computation as the layer's safe default: a gather of clamped indices and
    # an out-of-range flag, evaluated together, the flag read on the host.
    w, idx = a["weight"], a["indices"]
    high = mx.array(w.shape[0] - 1, dtype=idx.dtype)
    out, bad = _mx_checked_gather(w, idx, high)
    mx.eval(out, bad)
    if bad.item():
        raise IndexError("[bench] out-of-range index in a benchmark input.")
    return out


def _mx_sdpa(a, p):
    mask = a.get("mask", p.get("mask"))
    return mx.fast.scaled_dot_product_attention(a["q"], a["k"], a["v"], scale=p["scale"], mask=mask)


def _mx_rope(a, p):
    offset = a["offset"] if "offset" in a else p["offset"]
    return mx.fast.rope(a["x"], p["dims"], traditional=p["mode"] == "interleaved", base=p["base"],
                        scale=p["scale"], offset=offset)


def _fmt(p):
    return {"group_size": p["group_size"], "bits": p["bits"], "mode": p["mode"]}


def _mx_qmm(a, p):
    y = mx.quantized_matmul(a["x"], a["wq"], a["scales"], a.get("qbiases"), transpose=True, **_fmt(p))
    return y + a["bias"] if "bias" in a else y


RAW_MLX: dict[str, Pairing] = {
    "nn.linear": Pairing("mx.addmm / x @ W.T", _mx_linear),
    "nn.multi_linear": Pairing("x @ swapaxes(W)", lambda a, p: a["x"] @ mx.swapaxes(a["weight"], -1, -2)),
    "fast.rms_norm": Pairing("mx.fast.rms_norm", _mx_rms),
    "nn.rms_norm": Pairing("mx.fast.rms_norm", _mx_rms),
    "fast.layer_norm": Pairing("mx.fast.layer_norm", _mx_ln),
    "nn.layer_norm": Pairing("mean/centre/variance/rsqrt in x's dtype (plain mx ops)", _mx_composed_ln,
                             "nn.LayerNorm computes in x's dtype; mx.fast.layer_norm would not be the same computation"),
    "nn.embedding": Pairing("compiled clamp + flag + gather, one mx.eval", _mx_embedding,
                            "the layer's safe default is a checked lookup; mx.take alone is in the overhead group"),
    "nn.repeat_kv": Pairing("mx.repeat", lambda a, p: mx.repeat(a["x"], p["repeats"], axis=1)),
    "fast.scaled_dot_product_attention": Pairing("mx.fast.scaled_dot_product_attention", _mx_sdpa),
    "fast.rope": Pairing("mx.fast.rope", _mx_rope),
    "quantization.quantized_matmul": Pairing("mx.quantized_matmul", _mx_qmm),
    "nn.quantized_linear": Pairing("mx.quantized_matmul", _mx_qmm),
    "quantization.quantize": Pairing("mx.quantize", lambda a, p: mx.quantize(a["weight"], **_fmt(p))),
}
"""Record name -> the raw MLX call the layer wraps (records not listed: ``nn.causal_mask``
is itself a two-op composition with no single raw call)."""


# ---- idiomatic PyTorch -------------------------------------------------------------

def _rms_norm(a, p):
    x = a["x"]
    return F.rms_norm(x, (x.shape[-1],), a.get("weight"), p.get("eps") or 1e-5)


def _layer_norm(a, p):
    x = a["x"]
    return F.layer_norm(x, (x.shape[-1],), a.get("weight"), a.get("bias"), p.get("eps") or 1e-5)


def _sdpa(a, p):
    q, k, v = a["q"], a["k"], a["v"]
    mask = a.get("mask", p.get("mask"))
    lq, lk = q.shape[-2], k.shape[-2]
    kw: dict[str, Any] = {"scale": p["scale"], "enable_gqa": q.shape[1] != k.shape[1]}
    if mask == "causal" and lq == lk:
        kw["is_causal"] = True
    elif mask == "causal":  # MLX's bottom-right alignment needs an explicit mask in PyTorch
        kw["attn_mask"] = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq)
    elif mask is not None:
        kw["attn_mask"] = mask
    return F.scaled_dot_product_attention(q, k, v, **kw)


def _causal_mask(a, p):
    s = a["scores"]
    lq, lk = s.shape[-2:]
    keep = torch.ones(lq, lk, dtype=torch.bool, device=s.device).tril(p["offset"] or 0)
    return s.masked_fill(~keep, -1e9)


TORCH_OPS: dict[str, Pairing] = {
    "nn.linear": Pairing("F.linear", lambda a, p: F.linear(a["x"], a["weight"], a.get("bias"))),
    "nn.multi_linear": Pairing("torch.matmul", lambda a, p: torch.matmul(a["x"], a["weight"].transpose(-1, -2))),
    "fast.rms_norm": Pairing("F.rms_norm", _rms_norm),
    "nn.rms_norm": Pairing("F.rms_norm", _rms_norm),
    "fast.layer_norm": Pairing("F.layer_norm", _layer_norm),
    "nn.layer_norm": Pairing("F.layer_norm", _layer_norm),
    "nn.embedding": Pairing("F.embedding", lambda a, p: F.embedding(a["indices"], a["weight"])),
    "nn.repeat_kv": Pairing("torch.repeat_interleave",
                            lambda a, p: torch.repeat_interleave(a["x"], p["repeats"], dim=1)),
    "nn.causal_mask": Pairing("Tensor.masked_fill", _causal_mask),
    "fast.scaled_dot_product_attention": Pairing("F.scaled_dot_product_attention", _sdpa),
}
"""Record name -> the PyTorch op a user would call (quantized records: :func:`quantized_pairing`)."""

NO_TORCH_OP = {
    "fast.rope": "PyTorch has no RoPE op",
    "quantization.quantize": "PyTorch has no op producing MLX's packed formats",
}
QUANTIZED = ("quantization.quantized_matmul", "nn.quantized_linear")


def _int4_codes(wq: np.ndarray) -> np.ndarray:
    """MLX's affine 4-bit packing (8 codes per uint32, lowest nibble first) -> ``[N, K]`` int32."""
    w = wq.astype(np.uint32)
    return np.stack([(w >> (4 * j)) & 15 for j in range(8)], axis=-1).reshape(w.shape[0], -1).astype(np.int32)


def quantized_pairing(arrays: Mapping[str, np.ndarray], t_arrays: Mapping[str, torch.Tensor],
                      params: Mapping[str, Any], device: str) -> tuple[Pairing, dict[str, torch.Tensor]]:
    """PyTorch's weight-only low-bit kernel for this quantized input where the device has
    one (checked against the dense product once), else ``F.linear`` on the dequantized
    weight; returns the pairing and the extra PyTorch arrays it reads."""
    x = t_arrays["x"]
    dense_w = t_arrays["dense_weight"]
    dense = Pairing("F.linear on the dequantized weight", lambda a, p: F.linear(a["x"], a["dense_weight"],
                                                                              a.get("bias")))
    if params["mode"] != "affine" or params["bits"] != 4:
        return replace(dense, reason=f"PyTorch has no {params['mode']} low-bit matmul kernel"), {}
    group = params["group_size"]
    scales, biases = t_arrays["scales"], t_arrays["qbiases"]
    # PyTorch's int4 dequantization is (q - 8) * scale + zero; MLX's is q * scale + bias.
    zeros = biases + 8 * scales
    sz = torch.stack([scales, zeros], dim=-1).transpose(0, 1).contiguous()
    codes = torch.from_numpy(_int4_codes(arrays["wq"]))
    try:
        if device == "cpu":
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 2)
            name = "torch.ops.aten._weight_int4pack_mm_for_cpu"

            def kernel(a, p):
                y = torch.ops.aten._weight_int4pack_mm_for_cpu(a["x"], a["int4_packed"], group, a["int4_sz"])
                return y + a["bias"] if "bias" in a else y
        elif device == "cuda" and x.dtype == torch.bfloat16:
            u8 = ((codes[:, ::2] << 4) | codes[:, 1::2]).to(torch.uint8).to(device)
            packed = torch.ops.aten._convert_weight_to_int4pack(u8, 8)
            name = "torch.ops.aten._weight_int4pack_mm"

            def kernel(a, p):
                y = torch.ops.aten._weight_int4pack_mm(a["x"], a["int4_packed"], group, a["int4_sz"])
                return y + a["bias"] if "bias" in a else y
        else:
            return replace(dense, reason=f"PyTorch's int4 kernel does not take {x.dtype} on {device}"), {}
        extra = {"int4_packed": packed.to(device), "int4_sz": sz.to(device)}
        got = kernel({**t_arrays, **extra}, params).float()
        want = F.linear(x, dense_w, t_arrays.get("bias")).float()
        # Same codes, different summation order and dtype rounding: agree to a few ulp of
        # the output dtype relative to the largest output.
        limit = (3e-2 if x.dtype != torch.float32 else 1e-4) * float(want.abs().max()) + 1e-6
        err = float((got - want).abs().max())
        if err > limit:
            return replace(dense, reason=f"{name} disagreed with the dense product (max error {err:.3g})"), {}
        return Pairing(name, kernel, "PyTorch's weight-only int4 kernel, MLX's codes repacked"), extra
    except (RuntimeError, NotImplementedError) as exc:
        return replace(dense, reason=f"no usable int4 kernel: {type(exc).__name__}: {str(exc)[:120]}"), {}

