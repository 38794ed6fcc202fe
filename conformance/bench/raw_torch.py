"""The idiomatic PyTorch op for each record, where PyTorch has one: what a PyTorch user
would write (``F.linear``, ``F.rms_norm``, ``F.scaled_dot_product_attention``...), timed
beside ``torch_reference`` for context. ``torch_reference`` reproduces MLX's rounding
points and conventions (a bottom-right causal mask, rounding the normalised value before
the weight multiply) and may cost more than the plain op; RoPE and the quantized ops have
no PyTorch op and are not listed. Each function takes the record's PyTorch arrays and
parameters; results are not compared here (the conformance suite does that).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

RawCall = Callable[[Mapping[str, torch.Tensor], Mapping[str, Any]], Any]


def _rms_norm(a, p):
    x = a["x"]
    eps = p.get("eps") or p.get("stored_eps") or 1e-5
    return F.rms_norm(x, (x.shape[-1],), a.get("weight"), eps)


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


RAW_TORCH: dict[str, tuple[str, RawCall]] = {
    "nn.linear": ("F.linear", lambda a, p: F.linear(a["x"], a["weight"], a.get("bias"))),
    "nn.multi_linear": ("torch.matmul", lambda a, p: torch.matmul(a["x"], a["weight"].transpose(-1, -2))),
    "fast.rms_norm": ("F.rms_norm", _rms_norm),
    "nn.rms_norm": ("F.rms_norm", _rms_norm),
    "fast.layer_norm": ("F.layer_norm", _layer_norm),
    "nn.layer_norm": ("F.layer_norm", _layer_norm),
    "nn.embedding": ("F.embedding", lambda a, p: F.embedding(a["indices"], a["weight"])),
    "nn.repeat_kv": ("torch.repeat_interleave", lambda a, p: torch.repeat_interleave(a["x"], p["repeats"], dim=1)),
    "nn.causal_mask": ("Tensor.masked_fill", _causal_mask),
    "fast.scaled_dot_product_attention": ("F.scaled_dot_product_attention", _sdpa),
}
"""Record name -> (the PyTorch op's name, a call of it)."""
