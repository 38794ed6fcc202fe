"""A user's own small MLX port of the Llama family (Llama, Mistral), written directly on
``mlx.core`` / ``mlx.nn`` in mlx-lm's convention and knowing nothing of this project:
the worked example of ``python -m conformance model CHECKPOINT --candidate
tests.user_port_example.my_port:load`` (README, "Judging your own port").

``load(path) -> (model, cache)``: ``model(tokens [B, L] mx.array, cache=cache) -> logits
[B, L, V]``, its decoder layers at ``model.layers`` (the harness taps them there).

Two planted bugs for the tests (each a loader of its own, the model otherwise the same):

* ``load_rope_bug``: at cached decode steps (one new token), RoPE rotates at position
  ``offset + 1`` (every layer): departs at step 1, ``layer 0``;
* ``load_eps_bug``: layer 2's attention norm uses ``eps = 1e-5`` instead of the
  config's ``rms_norm_eps``: departs at step 0 (the prefill), ``layer 2``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn


class KVCache:
    """One layer's keys and values ``[B, kv_heads, T, head_dim]``, grown per step (the
    interface of mlx-lm's ``KVCache``: ``offset``, ``update_and_fetch``, so the model also
    runs on the cache ``mlx_lm.models.cache.make_prompt_cache`` makes)."""

    def __init__(self) -> None:
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset = 0

    def update_and_fetch(self, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        """Append ``k, v: [B, kv_heads, L, head_dim]``; all keys and values so far."""
        self.keys = k if self.keys is None else mx.concatenate([self.keys, k], axis=2)
        self.values = v if self.values is None else mx.concatenate([self.values, v], axis=2)
        self.offset += k.shape[2]
        return self.keys, self.values


class Attention(nn.Module):
    def __init__(self, cfg: dict[str, Any], rope_bug: bool) -> None:
        super().__init__()
        self.heads, self.kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.head_dim = cfg.get("head_dim") or cfg["hidden_size"] // self.heads
        hidden, bias = cfg["hidden_size"], bool(cfg.get("attention_bias", False))
        self.q_proj = nn.Linear(hidden, self.heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, hidden, bias=bias)
        rope = cfg.get("rope_parameters") or {}
        self.theta = float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
        self.rope_bug = rope_bug

    def __call__(self, x: mx.array, cache: Any) -> mx.array:
        b, n, _ = x.shape
        q = self.q_proj(x).reshape(b, n, self.heads, self.head_dim).transpose(0, 2, 1, 3)
        k = self.k_proj(x).reshape(b, n, self.kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(b, n, self.kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        offset = cache.offset + (1 if self.rope_bug and n == 1 else 0)
        q = mx.fast.rope(q, self.head_dim, traditional=False, base=self.theta, scale=1.0, offset=offset)
        k = mx.fast.rope(k, self.head_dim, traditional=False, base=self.theta, scale=1.0, offset=offset)
        k, v = cache.update_and_fetch(k, v)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.head_dim ** -0.5,
                                                   mask="causal" if n > 1 else None)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(b, n, -1))


class MLP(nn.Module):
    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: dict[str, Any], rope_bug: bool, eps: float) -> None:
        super().__init__()
        self.self_attn = Attention(cfg, rope_bug)
        self.mlp = MLP(cfg["hidden_size"], cfg["intermediate_size"])
        self.input_layernorm = nn.RMSNorm(cfg["hidden_size"], eps=eps)
        self.post_attention_layernorm = nn.RMSNorm(cfg["hidden_size"], eps=cfg["rms_norm_eps"])

    def __call__(self, x: mx.array, cache: Any) -> mx.array:
        h = x + self.self_attn(self.input_layernorm(x), cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaModel(nn.Module):
    def __init__(self, cfg: dict[str, Any], rope_bug: bool, eps_bug_layer: int | None) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.layers = [DecoderLayer(cfg, rope_bug, 1e-5 if i == eps_bug_layer else cfg["rms_norm_eps"])
                       for i in range(cfg["num_hidden_layers"])]
        self.norm = nn.RMSNorm(cfg["hidden_size"], eps=cfg["rms_norm_eps"])


class Model(nn.Module):
    """``model(tokens [B, L], cache) -> logits [B, L, V]``; ``model.layers`` is the list."""

    def __init__(self, cfg: dict[str, Any], rope_bug: bool = False, eps_bug_layer: int | None = None) -> None:
        super().__init__()
        self.model = LlamaModel(cfg, rope_bug, eps_bug_layer)
        self.tied = bool(cfg.get("tie_word_embeddings", False))
        if not self.tied:
            self.lm_head = nn.Linear(cfg["hidden_size"], cfg["vocab_size"], bias=False)

    @property
    def layers(self) -> list[DecoderLayer]:
        return self.model.layers

    def __call__(self, tokens: mx.array, cache: list[Any]) -> mx.array:
        h = self.model.embed_tokens(tokens)
        for layer, c in zip(self.model.layers, cache, strict=True):
            h = layer(h, c)
        h = self.model.norm(h)
        return self.model.embed_tokens.as_linear(h) if self.tied else self.lm_head(h)


def _load(path: Path, **bugs: Any) -> tuple[Model, list[KVCache]]:
    cfg = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    model = Model(cfg, **bugs)
    quant = cfg.get("quantization")
    if quant is not None:  # MLX's own layout: packed weights with scales (and biases)
        nn.quantize(model, quant["group_size"], quant["bits"], mode=quant.get("mode", "affine"))
    weights: dict[str, mx.array] = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        weights.update(mx.load(str(f)))  # type: ignore[arg-type]
    model.load_weights(list(weights.items()))
    mx.eval(model.parameters())
    return model, [KVCache() for _ in range(cfg["num_hidden_layers"])]


def load(path: Path) -> tuple[Model, list[KVCache]]:
    """The port: ``(model, cache)`` for the checkpoint at ``path``."""
    return _load(path)


def load_rope_bug(path: Path) -> tuple[Model, list[KVCache]]:
    """The port with RoPE one position ahead at cached decode steps."""
    return _load(path, rope_bug=True)


def load_eps_bug(path: Path) -> tuple[Model, list[KVCache]]:
    """The port with layer 2's attention norm at eps 1e-5."""
    return _load(path, eps_bug_layer=2)


def build_tiny_mistral(directory: Path, seed: int = 0) -> Path:
    """A tiny random Mistral checkpoint written by transformers (an architecture this
    project's twin does not implement: transformers is then the oracle). Every 1-D weight
    is perturbed so no norm is a constant (a norm read from the wrong layer shows)."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    cfg = MistralConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                        rms_norm_eps=1e-6, sliding_window=None, tie_word_embeddings=False)
    from conformance.model.checkpoints import save_perturbed  # the test's checkpoint, not the port

    return save_perturbed(MistralForCausalLM(cfg).to(torch.float32), directory, seed)
