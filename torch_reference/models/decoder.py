"""The decoder-only transformer: the twin of ``mlx_impl.models.decoder``.

Same architectures, same checkpoint names, same order of operations; every op is a
``torch_reference`` op called with the model's ``precision`` (``"native"``: MLX's rounding
points in the weights' dtype; ``"float64"``: the oracle, float64 throughout).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from torch_reference import nn
from torch_reference.fast import scaled_dot_product_attention
from torch_reference.fast.norms import rms_norm
from torch_reference.models.cache import KVCache
from torch_reference.models.checkpoint import QuantizedEmbedding, Weights
from torch_reference.models.config import SLIDING, ModelArgs
from torch_reference.models.moe import MixtureOfExperts
from torch_reference.models.points import Points, record_point
from torch_reference.models.rope import LayerRoPE


class Float32RMSNorm(torch.nn.Module):
    """``RMSNorm(x) * (shift + w)`` with the weight multiply in float32 (float64 for the
    oracle), rounded once to x's dtype: Gemma's ``(1 + w)`` (``shift=1``) and GPT-OSS's
    (``shift=0``) norms. Shape: ``x: [..., D] -> [..., D]``."""

    def __init__(self, weight: torch.Tensor, eps: float, shift: float) -> None:
        super().__init__()
        self.weight: torch.Tensor
        self.register_buffer("weight", weight)
        self.eps = eps
        self.shift = shift

    def forward(self, x: torch.Tensor, *, precision: str = "native") -> torch.Tensor:
        if precision == "float64":
            w64 = self.shift + self.weight.to(torch.float64)
            return rms_norm(x, w64, self.eps, precision=precision)
        w = self.shift + self.weight.to(torch.float32)
        return rms_norm(x, w, self.eps, precision=precision).to(x.dtype)


def _norm(w: Weights, key: str, args: ModelArgs) -> torch.nn.Module:
    weight = w.take(f"{key}.weight")
    if args.is_gemma:
        return Float32RMSNorm(weight, args.rms_norm_eps, 1.0)
    if args.model_type == "gpt_oss":
        return Float32RMSNorm(weight, args.rms_norm_eps, 0.0)
    return nn.RMSNorm(weight, eps=args.rms_norm_eps)


def attention_mask(
    q_start: int, length: int, key_positions: torch.Tensor, window: int | None
) -> str | torch.Tensor | None:
    """``None`` / ``"causal"`` / boolean ``[length, Lk]``: key ``j`` visible to query ``i``
    iff ``j <= i`` and, with a window W, ``j > i - W`` (queries ``q_start ..``)."""
    if window is None:
        return "causal" if length > 1 else None
    q = torch.arange(q_start, q_start + length, device=key_positions.device)[:, None]
    k = key_positions[None, :]
    return (k <= q) & (k > q - window)


class Attention(torch.nn.Module):
    """Self-attention of one layer: ``x: [B, L, H] -> [B, L, H]``, updating ``cache``."""

    def __init__(self, w: Weights, p: str, args: ModelArgs, layer_type: str) -> None:
        super().__init__()
        self.args = args
        self.q_proj = w.linear(f"{p}.q_proj")
        self.k_proj = w.linear(f"{p}.k_proj")
        self.v_proj = w.linear(f"{p}.v_proj")
        self.o_proj = w.linear(f"{p}.o_proj")
        self.q_norm = _norm(w, f"{p}.q_norm", args) if w.has(f"{p}.q_norm.weight") else None
        self.k_norm = _norm(w, f"{p}.k_norm", args) if w.has(f"{p}.k_norm.weight") else None
        self.rope = LayerRoPE(args.rope[layer_type])
        self.window = args.sliding_window if layer_type == SLIDING else None
        # GPT-OSS: a learned per-head logit joining each softmax row (attention sinks).
        self.sinks = w.take(f"{p}.sinks") if w.has(f"{p}.sinks") else None

    def forward(self, x: torch.Tensor, cache: KVCache | None, precision: str,
                points: Points | None = None) -> torch.Tensor:
        a, pr = self.args, precision
        b, length, _ = x.shape
        q, k, v = self.q_proj(x, precision=pr), self.k_proj(x, precision=pr), self.v_proj(x, precision=pr)
        if points is not None:
            record_point(points, "self_attn.q_proj", q, x=x)
            record_point(points, "self_attn.k_proj", k, x=x)
            record_point(points, "self_attn.v_proj", v, x=x)
        q = q.reshape(b, length, a.num_attention_heads, a.head_dim)
        k = k.reshape(b, length, a.num_key_value_heads, a.head_dim)
        v = v.reshape(b, length, a.num_key_value_heads, a.head_dim)
        if self.q_norm is not None:
            q_in, q = q, self.q_norm(q, precision=pr)
            if points is not None:
                record_point(points, "self_attn.q_norm", q, x=q_in)
        if self.k_norm is not None:
            k_in, k = k, self.k_norm(k, precision=pr)
            if points is not None:
                record_point(points, "self_attn.k_norm", k, x=k_in)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        offset = 0 if cache is None else cache.offset
        q_in, k_in = q, k
        q = self.rope(q, offset, pr)
        k = self.rope(k, offset, pr)
        if points is not None:
            record_point(points, "self_attn.q_rope", q, x=q_in, offset=offset)
            record_point(points, "self_attn.k_rope", k, x=k_in, offset=offset)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
            key_pos = cache.key_positions(k.shape[2])
            cache.trim()
        else:
            key_pos = torch.arange(length, device=x.device)
        mask = attention_mask(offset, length, key_pos, self.window)
        out = scaled_dot_product_attention(q, k, v, scale=a.attention_scale, mask=mask,
                                           sinks=self.sinks, precision=pr)
        if points is not None:
            record_point(points, "self_attn.sdpa", out, q=q, k=k, v=v, mask=mask)
        out = out.transpose(1, 2).reshape(b, length, a.num_attention_heads * a.head_dim)
        y = self.o_proj(out, precision=pr)
        if points is not None:
            record_point(points, "self_attn.o_proj", y, x=out)
        return y


class MLP(torch.nn.Module):
    """Gated MLP ``down(act(gate(x)) * up(x))``; GLM-4's gate and up are one fused weight."""

    def __init__(self, w: Weights, p: str, args: ModelArgs) -> None:
        super().__init__()
        self.fused = w.has(f"{p}.gate_up_proj.weight")
        if self.fused:
            self.gate_up_proj = w.linear(f"{p}.gate_up_proj")
        else:
            self.gate_proj = w.linear(f"{p}.gate_proj")
            self.up_proj = w.linear(f"{p}.up_proj")
        self.down_proj = w.linear(f"{p}.down_proj")
        self.gelu = args.is_gemma

    def activate(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """``act(gate) * up`` in the inputs' dtype (the gated product the down projection reads)."""
        act = F.gelu(gate, approximate="tanh") if self.gelu else F.silu(gate)
        return act * up

    def forward(self, x: torch.Tensor, precision: str, points: Points | None = None) -> torch.Tensor:
        if self.fused:
            gate_up = self.gate_up_proj(x, precision=precision)
            if points is not None:
                record_point(points, "mlp.gate_up_proj", gate_up, x=x)
            gate, up = gate_up.chunk(2, dim=-1)
        else:
            gate = self.gate_proj(x, precision=precision)
            up = self.up_proj(x, precision=precision)
            if points is not None:
                record_point(points, "mlp.gate_proj", gate, x=x)
                record_point(points, "mlp.up_proj", up, x=x)
        h = self.activate(gate, up)
        y = self.down_proj(h, precision=precision)
        if points is not None:
            record_point(points, "mlp.act", h, gate=gate, up=up)
            record_point(points, "mlp.down_proj", y, x=h)
        return y


_NORMS = {
    "llama": (None, "post_attention_layernorm", None),
    "qwen3": (None, "post_attention_layernorm", None),
    "gemma3_text": (
        "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm",
    ),
    "glm4": ("post_self_attn_layernorm", "post_attention_layernorm", "post_mlp_layernorm"),
    "gpt_oss": (None, "post_attention_layernorm", None),
}


class DecoderLayer(torch.nn.Module):
    """``x + post(attn(norm(x)))`` then ``+ post(mlp(pre(x)))``: ``[B, L, H] -> [B, L, H]``."""

    def __init__(self, w: Weights, p: str, args: ModelArgs, layer_type: str) -> None:
        super().__init__()
        self.layer_type = layer_type
        self.self_attn = Attention(w, f"{p}.self_attn", args, layer_type)
        self.mlp: torch.nn.Module = (
            MixtureOfExperts(w, f"{p}.mlp", args) if args.num_local_experts else MLP(w, f"{p}.mlp", args)
        )
        post_attn, pre_mlp, post_mlp = _NORMS[args.model_type]
        self.input_layernorm = _norm(w, f"{p}.input_layernorm", args)
        self.post_attn_norm = _norm(w, f"{p}.{post_attn}", args) if post_attn else None
        self.pre_mlp_norm = _norm(w, f"{p}.{pre_mlp}", args)
        self.post_mlp_norm = _norm(w, f"{p}.{post_mlp}", args) if post_mlp else None

    def forward(self, x: torch.Tensor, cache: KVCache | None, precision: str,
                points: Points | None = None) -> torch.Tensor:
        if points is not None:
            return self._recorded(x, cache, precision, points)
        pr = precision
        h = self.self_attn(self.input_layernorm(x, precision=pr), cache, pr)
        if self.post_attn_norm is not None:
            h = self.post_attn_norm(h, precision=pr)
        x = x + h
        h = self.mlp(self.pre_mlp_norm(x, precision=pr), pr)
        if self.post_mlp_norm is not None:
            h = self.post_mlp_norm(h, precision=pr)
        return x + h

    def _recorded(self, x: torch.Tensor, cache: KVCache | None, pr: str, points: Points) -> torch.Tensor:
        """``forward`` recording every op (see :data:`Points`)."""
        n = record_point(points, "input_layernorm", self.input_layernorm(x, precision=pr), x=x)
        h = self.self_attn(n, cache, pr, points)
        if self.post_attn_norm is not None:
            h = record_point(points, "post_attn_norm", self.post_attn_norm(h, precision=pr), x=h)
        x = record_point(points, "attn_residual", x + h, x=x, h=h)
        n = record_point(points, "pre_mlp_norm", self.pre_mlp_norm(x, precision=pr), x=x)
        h = self.mlp(n, pr, points)
        if self.post_mlp_norm is not None:
            h = record_point(points, "post_mlp_norm", self.post_mlp_norm(h, precision=pr), x=h)
        return record_point(points, "mlp_residual", x + h, x=x, h=h)


class Model(torch.nn.Module):
    """A causal LM: ``model(tokens [B, L] int, cache=None, hidden_states=None) -> logits
    [B, L, vocab]`` computed with ``model.precision``. Build it with
    :func:`torch_reference.models.load`."""

    def __init__(self, args: ModelArgs, w: Weights, precision: str) -> None:
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.precision = precision
        self.embed_tokens = w.embedding("model.embed_tokens")
        # The dtype the embedding rows have natively (Gemma rounds sqrt(hidden) to it).
        embed = self.embed_tokens
        self.embed_dtype: torch.dtype = (
            embed.dtype if isinstance(embed, QuantizedEmbedding) else embed.weight.dtype  # type: ignore[assignment]
        )
        self.layers = torch.nn.ModuleList(
            DecoderLayer(w, f"model.layers.{i}", args, t) for i, t in enumerate(args.layer_types)
        )
        self.norm = _norm(w, "model.norm", args)
        self.lm_head: torch.nn.Module
        if w.has("lm_head.weight") or not args.tie_word_embeddings:
            # Untied: the head must be there (linear() names it when it is not).
            self.lm_head = w.linear("lm_head")
        elif isinstance(self.embed_tokens, QuantizedEmbedding):
            self.lm_head = self.embed_tokens.as_linear()
        else:
            self.lm_head = nn.Linear(self.embed_tokens.weight.detach())  # type: ignore[operator]
        w.check_all_used()

    @torch.no_grad()
    def forward(
        self,
        tokens: torch.Tensor,
        cache: list[KVCache] | None = None,
        hidden_states: list[torch.Tensor] | None = None,
        points: Points | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, L, vocab]`` of ``tokens: [B, L]``; with ``cache`` (from
        :func:`make_cache`) the tokens continue the cached sequence. A ``hidden_states``
        list receives the residual stream ``[B, L, H]`` after the (scaled) embedding and
        after each layer (``num_layers + 1`` entries). A ``points`` dict receives every
        op's output and inputs (:data:`~torch_reference.models.points.Points`)."""
        if tokens.ndim != 2:
            raise ValueError(f"[Model] tokens must be [B, L] but got shape {tuple(tokens.shape)}.")
        if cache is not None and len(cache) != len(self.layers):
            raise ValueError(
                f"[Model] cache must have {len(self.layers)} entries but has {len(cache)}."
            )
        pr = self.precision
        h = self.embed_tokens(tokens, precision=pr)
        if self.args.is_gemma:
            # sqrt(hidden) rounded to the weights' dtype first, as transformers does.
            normalizer = torch.tensor(
                math.sqrt(self.args.hidden_size), dtype=self.embed_dtype, device=h.device
            )
            h = h * normalizer.to(h.dtype)
        if hidden_states is not None:
            hidden_states.append(h)
        for i, layer in enumerate(self.layers):
            if points is None:
                h = layer(h, None if cache is None else cache[i], pr)
            else:
                inner: Points = {}
                h = layer(h, None if cache is None else cache[i], pr, inner)
                points.update({f"layer {i} {k}": v for k, v in inner.items()})
            if hidden_states is not None:
                hidden_states.append(h)
        if points is None:
            logits = self.lm_head(self.norm(h, precision=pr), precision=pr)
        else:
            n = record_point(points, "norm", self.norm(h, precision=pr), x=h)
            logits = record_point(points, "lm_head", self.lm_head(n, precision=pr), x=n)
        cap = self.args.final_logit_softcapping
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits
