"""The decoder-only transformer of ``llama``, ``qwen3``, ``gemma3_text`` and ``glm4``.

One code path with the architectures' differences as data (what each reads from the
checkpoint and ``config.json``):

* ``llama``: rotate-half RoPE (Llama 3 scaling), GQA, SwiGLU, pre-norms.
* ``qwen3``: + per-head RMSNorm of q and k over ``head_dim`` before RoPE.
* ``gemma3_text``: embeddings times ``sqrt(hidden)`` rounded to the weights' dtype;
  ``(1 + w)`` norms computed in float32; norms before AND after attention and MLP;
  GELU-tanh MLP; scale ``query_pre_attn_scalar ** -0.5``; sliding-window layers with their
  own RoPE base; final-logit tanh softcapping when configured. ``attn_logit_softcapping``
  is ignored, as transformers 5.24's ``Gemma3Attention`` ignores it (it never passes it
  to the attention function; real Gemma 3 configs leave it unset).
* ``glm4``: partial interleaved RoPE, fused ``gate_up_proj`` (gate first), q/k/v biases,
  sandwich norms ``post_self_attn_layernorm`` / ``post_mlp_layernorm``.
* ``gpt_oss``: attention sinks, q/k/v/o biases, YaRN RoPE, alternating sliding and full
  layers, a mixture of experts (:mod:`.moe`), norms weighting in float32.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn

from mlx_impl import nn
from mlx_impl.fast import scaled_dot_product_attention
from mlx_impl.models.cache import KVCache
from mlx_impl.models.checkpoint import Weights
from mlx_impl.models.config import SLIDING, ModelArgs
from mlx_impl.models.moe import MixtureOfExperts
from mlx_impl.models.points import Points, record_point
from mlx_impl.models.rope import LayerRoPE


class Float32RMSNorm(mlx.nn.Module):
    """``RMSNorm(x) * (shift + w)`` with the normalisation and the weight multiply in
    float32, one rounding to x's dtype at the end: Gemma's ``(1 + w)`` norm (``shift=1``,
    transformers' ``Gemma3RMSNorm``) and GPT-OSS's (``shift=0``, ``GptOssRMSNorm``).

    Shape: ``x: [..., D] -> [..., D]``.
    """

    def __init__(self, weight: mx.array, eps: float, shift: float) -> None:
        super().__init__()
        # Float32 weight: mx.fast.rms_norm then promotes to float32 and rounds the
        # normalised value nowhere before the multiply.
        self.norm = nn.RMSNorm(shift + weight.astype(mx.float32), eps=eps)

    def __call__(self, x: mx.array) -> mx.array:
        return self.norm(x).astype(x.dtype)


def _norm(w: Weights, key: str, args: ModelArgs) -> mlx.nn.Module:
    weight = w.take(f"{key}.weight")
    if args.is_gemma:
        return Float32RMSNorm(weight, args.rms_norm_eps, 1.0)
    if args.model_type == "gpt_oss":
        return Float32RMSNorm(weight, args.rms_norm_eps, 0.0)
    return nn.RMSNorm(weight, eps=args.rms_norm_eps)


def attention_mask(
    q_start: int, length: int, key_positions: mx.array, window: int | None
) -> str | mx.array | None:
    """Which keys each query sees: ``key <= query`` and, with a window W, ``key > query - W``.

    Queries are at ``q_start .. q_start + length - 1``; ``key_positions: [Lk]``. Returns
    ``None`` (all visible), ``"causal"`` (bottom-right: all keys cached, none dropped) or a
    boolean ``[length, Lk]`` mask.
    """
    if window is None:
        return "causal" if length > 1 else None
    q = mx.arange(q_start, q_start + length)[:, None]
    k = key_positions[None, :]
    return (k <= q) & (k > q - window)


class Attention(mlx.nn.Module):
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

    def __call__(self, x: mx.array, cache: KVCache | None, points: Points | None = None) -> mx.array:
        if points is not None:
            return self._recorded(x, cache, points)
        a = self.args
        b, length, _ = x.shape
        q = self.q_proj(x).reshape(b, length, a.num_attention_heads, a.head_dim)
        k = self.k_proj(x).reshape(b, length, a.num_key_value_heads, a.head_dim)
        v = self.v_proj(x).reshape(b, length, a.num_key_value_heads, a.head_dim)
        if self.q_norm is not None:
            q = self.q_norm(q)
        if self.k_norm is not None:
            k = self.k_norm(k)
        q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))
        offset = 0 if cache is None else cache.offset
        q = self.rope(q, offset)
        k = self.rope(k, offset)
        k, v, mask = self._cached(q, k, v, cache, offset)
        out = scaled_dot_product_attention(
            q, k, v, scale=a.attention_scale, mask=mask, sinks=self.sinks
        )
        out = out.transpose(0, 2, 1, 3).reshape(b, length, a.num_attention_heads * a.head_dim)
        return self.o_proj(out)

    def _cached(self, q: mx.array, k: mx.array, v: mx.array, cache: KVCache | None,
                offset: int) -> tuple[mx.array, mx.array, str | mx.array | None]:
        """The keys and values attended (the cache's, updated) and the mask."""
        length = q.shape[2]
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
            key_pos = cache.key_positions(k.shape[2])
            cache.trim()
        else:
            key_pos = mx.arange(length)
        return k, v, attention_mask(offset, length, key_pos, self.window)

    def _recorded(self, x: mx.array, cache: KVCache | None, points: Points) -> mx.array:
        """``__call__`` with every op's output and inputs recorded in ``points`` (same
        arithmetic; a separate path so the plain call pays nothing)."""
        a = self.args
        b, length, _ = x.shape
        q = record_point(points, "self_attn.q_proj", self.q_proj(x), x=x)
        k = record_point(points, "self_attn.k_proj", self.k_proj(x), x=x)
        v = record_point(points, "self_attn.v_proj", self.v_proj(x), x=x)
        q = q.reshape(b, length, a.num_attention_heads, a.head_dim)
        k = k.reshape(b, length, a.num_key_value_heads, a.head_dim)
        v = v.reshape(b, length, a.num_key_value_heads, a.head_dim)
        if self.q_norm is not None:
            q = record_point(points, "self_attn.q_norm", self.q_norm(q), x=q)
        if self.k_norm is not None:
            k = record_point(points, "self_attn.k_norm", self.k_norm(k), x=k)
        q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))
        offset = 0 if cache is None else cache.offset
        q = record_point(points, "self_attn.q_rope", self.rope(q, offset), x=q, offset=offset)
        k = record_point(points, "self_attn.k_rope", self.rope(k, offset), x=k, offset=offset)
        k, v, mask = self._cached(q, k, v, cache, offset)
        out = scaled_dot_product_attention(
            q, k, v, scale=a.attention_scale, mask=mask, sinks=self.sinks
        )
        record_point(points, "self_attn.sdpa", out, q=q, k=k, v=v, mask=mask)
        out = out.transpose(0, 2, 1, 3).reshape(b, length, a.num_attention_heads * a.head_dim)
        return record_point(points, "self_attn.o_proj", self.o_proj(out), x=out)


class MLP(mlx.nn.Module):
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

    def activate(self, gate: mx.array, up: mx.array) -> mx.array:
        """``act(gate) * up`` (the gated product the down projection reads)."""
        act = mlx.nn.gelu_approx(gate) if self.gelu else mlx.nn.silu(gate)
        return act * up

    def __call__(self, x: mx.array, points: Points | None = None) -> mx.array:
        if self.fused:
            gate_up = self.gate_up_proj(x)
            if points is not None:
                record_point(points, "mlp.gate_up_proj", gate_up, x=x)
            gate, up = mx.split(gate_up, 2, axis=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
            if points is not None:
                record_point(points, "mlp.gate_proj", gate, x=x)
                record_point(points, "mlp.up_proj", up, x=x)
        h = self.activate(gate, up)
        if points is None:
            return self.down_proj(h)
        record_point(points, "mlp.act", h, gate=gate, up=up)
        return record_point(points, "mlp.down_proj", self.down_proj(h), x=h)


# Norm names around attention and MLP, by architecture:
# (after attention, before MLP, after MLP); None = no such norm.
_NORMS = {
    "llama": (None, "post_attention_layernorm", None),
    "qwen3": (None, "post_attention_layernorm", None),
    "gemma3_text": (
        "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm",
    ),
    "glm4": ("post_self_attn_layernorm", "post_attention_layernorm", "post_mlp_layernorm"),
    "gpt_oss": (None, "post_attention_layernorm", None),
}


class DecoderLayer(mlx.nn.Module):
    """``x + post(attn(norm(x)))`` then ``+ post(mlp(pre(x)))``: ``[B, L, H] -> [B, L, H]``."""

    def __init__(self, w: Weights, p: str, args: ModelArgs, layer_type: str) -> None:
        super().__init__()
        self.layer_type = layer_type
        self.self_attn = Attention(w, f"{p}.self_attn", args, layer_type)
        self.mlp = (
            MixtureOfExperts(w, f"{p}.mlp", args) if args.num_local_experts else MLP(w, f"{p}.mlp", args)
        )
        post_attn, pre_mlp, post_mlp = _NORMS[args.model_type]
        self.input_layernorm = _norm(w, f"{p}.input_layernorm", args)
        self.post_attn_norm = _norm(w, f"{p}.{post_attn}", args) if post_attn else None
        self.pre_mlp_norm = _norm(w, f"{p}.{pre_mlp}", args)
        self.post_mlp_norm = _norm(w, f"{p}.{post_mlp}", args) if post_mlp else None

    def __call__(self, x: mx.array, cache: KVCache | None, points: Points | None = None) -> mx.array:
        if points is not None:
            return self._recorded(x, cache, points)
        h = self.self_attn(self.input_layernorm(x), cache)
        if self.post_attn_norm is not None:
            h = self.post_attn_norm(h)
        x = x + h
        h = self.mlp(self.pre_mlp_norm(x))
        if self.post_mlp_norm is not None:
            h = self.post_mlp_norm(h)
        return x + h

    def _recorded(self, x: mx.array, cache: KVCache | None, points: Points) -> mx.array:
        """``__call__`` recording every op (see :data:`Points`)."""
        n = record_point(points, "input_layernorm", self.input_layernorm(x), x=x)
        h = self.self_attn(n, cache, points)
        if self.post_attn_norm is not None:
            h = record_point(points, "post_attn_norm", self.post_attn_norm(h), x=h)
        x = record_point(points, "attn_residual", x + h, x=x, h=h)
        n = record_point(points, "pre_mlp_norm", self.pre_mlp_norm(x), x=x)
        h = self.mlp(n, points)
        if self.post_mlp_norm is not None:
            h = record_point(points, "post_mlp_norm", self.post_mlp_norm(h), x=h)
        return record_point(points, "mlp_residual", x + h, x=x, h=h)


class Model(mlx.nn.Module):
    """A causal LM: ``model(tokens [B, L] int, cache=None, hidden_states=None) -> logits
    [B, L, vocab]``.

    ``model.args`` is the :class:`ModelArgs`, ``model.layers`` the decoder layers. Build it
    with :func:`mlx_impl.models.load`.
    """

    def __init__(self, args: ModelArgs, w: Weights) -> None:
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.embed_tokens = w.embedding("model.embed_tokens")
        self.layers = [
            DecoderLayer(w, f"model.layers.{i}", args, t) for i, t in enumerate(args.layer_types)
        ]
        self.norm = _norm(w, "model.norm", args)
        if w.has("lm_head.weight") or not args.tie_word_embeddings:
            # Untied: the head must be there (linear() names it when it is not).
            self.lm_head = w.linear("lm_head")
        elif isinstance(self.embed_tokens, nn.Embedding):
            self.lm_head = nn.Linear(self.embed_tokens.weight)
        else:
            self.lm_head = self.embed_tokens.as_linear()
        w.check_all_used()

    def __call__(
        self,
        tokens: mx.array,
        cache: list[KVCache] | None = None,
        hidden_states: list[mx.array] | None = None,
        points: Points | None = None,
    ) -> mx.array:
        """Logits ``[B, L, vocab]`` of ``tokens: [B, L]``; with ``cache`` (from
        :func:`make_cache`) the tokens continue the cached sequence. When
        ``hidden_states`` is a list, the residual stream ``[B, L, H]`` after the
        (scaled) embedding and after each layer is appended to it (``num_layers + 1``).
        When ``points`` is a dict, every op's output and inputs are recorded in it
        (:data:`Points`), the same arithmetic as without."""
        if tokens.ndim != 2:
            raise ValueError(f"[Model] tokens must be [B, L] but got shape {tokens.shape}.")
        if cache is not None and len(cache) != len(self.layers):
            raise ValueError(
                f"[Model] cache must have {len(self.layers)} entries but has {len(cache)}."
            )
        h = self.embed_tokens(tokens)
        if self.args.is_gemma:
            # transformers multiplies by sqrt(hidden) cast to the weights' dtype first.
            h = h * mx.array(math.sqrt(self.args.hidden_size), dtype=h.dtype)
        if hidden_states is not None:
            hidden_states.append(h)
        for i, layer in enumerate(self.layers):
            if points is None:
                h = layer(h, None if cache is None else cache[i])
            else:
                inner: Points = {}
                h = layer(h, None if cache is None else cache[i], inner)
                points.update({f"layer {i} {k}": v for k, v in inner.items()})
            if hidden_states is not None:
                hidden_states.append(h)
        if points is None:
            logits = self.lm_head(self.norm(h))
        else:
            n = record_point(points, "norm", self.norm(h), x=h)
            logits = record_point(points, "lm_head", self.lm_head(n), x=n)
        cap = self.args.final_logit_softcapping
        if cap is not None:
            logits = mx.tanh(logits / cap) * cap
        return logits
