"""Tiny random checkpoints of any architecture, written by transformers itself, for the sweep.

:func:`tiny_config` takes transformers' own config class for a ``model_type``
(``AutoConfig.for_model``) and shrinks every size it has to a few-kilobyte model
(:data:`SIZES`: hidden 64, 2 layers, 4 heads of 16 over 2 kv heads, vocab 160, MoE of 4
experts with top-2, MLA ranks 16/32 ...). Per-layer lists (``layer_types``,
``mlp_layer_types``, ``no_rope_layers``, ...) are rebuilt for the new depth so that every
kind of layer the full model has is kept (sliding and full attention, linear and full,
dense and sparse MLP), with one more layer per extra kind. A sliding window becomes 4
tokens, shorter than the sweep's 8-token prompt, so the prefill crosses it.
:data:`OVERRIDES` holds what the generic shrink cannot know (composite per-layer schemes,
sizes that must divide each other). :func:`build_checkpoint` instantiates the model with
random weights, perturbs every 1-D parameter (a norm initialised to ones hides a loader
that swaps two norms) and writes it with ``save_pretrained(safe_serialization=True)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SIZES: dict[str, Any] = {
    # width and depth
    "vocab_size": 160, "hidden_size": 64, "n_embd": 64, "d_model": 64,
    "intermediate_size": 128, "n_inner": 128, "ffn_hidden_size": 128,
    "num_hidden_layers": 2, "n_layer": 2, "n_layers": 2, "num_layers": 2,
    "num_attention_heads": 4, "n_head": 4, "n_heads": 4, "num_key_value_heads": 2,
    "head_dim": 16, "max_position_embeddings": 256, "n_positions": 256, "max_seq_len": 256,
    # mixture of experts
    # expert widths a multiple of the affine group (64): every expert projection then
    # quantizes, as in published MoE models (a dense bfloat16 expert needs gather_mm, which
    # MLX's CPU back end has in float32 only, finding gathermm-bfloat16-cpu).
    "moe_intermediate_size": 64, "shared_expert_intermediate_size": 64, "expert_ffn_hidden_size": 64,
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "moe_num_experts": 4,
    "num_experts_per_tok": 2, "num_experts_per_token": 2, "moe_k": 2, "moe_top_k": 2, "moe_topk": 2,
    "n_shared_experts": 1, "num_shared_experts": 1, "moe_num_shared_experts": 1,
    "n_group": 1, "topk_group": 1, "num_expert_group": 1,
    # multi-head latent attention (DeepSeek-like). The DSA indexer sums ReLU'd per-head
    # scores: with 2 heads a quarter of the keys score exactly 0 and the top-k picks among
    # ties (transformers and mlx-lm break them differently); 8 heads make that rare, as
    # DeepSeek-V3.2's 64 do.
    "kv_lora_rank": 16, "q_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 16,
    "v_head_dim": 16, "index_head_dim": 16, "index_n_heads": 8, "index_topk": 4,
    # sliding window shorter than the 8-token prompt
    "sliding_window": 4, "attention_window_size": 4,
    # linear attention / state-space
    "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 16,
    "linear_value_head_dim": 16, "linear_head_dim": 16, "linear_num_heads": 4,
    "state_size": 8, "time_step_rank": 8, "mamba_d_state": 8, "mamba_n_heads": 8, "mamba_d_head": 16,
    "mamba_d_ssm": 128, "mamba_chunk_size": 16, "lru_width": 64, "chunk_size": 16,
    "hidden_size_per_layer_input": 16, "vocab_size_per_layer_input": 160,
}
"""The generic shrink: each key is set where transformers' config for the architecture
has it (and its default is not None)."""

_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "depth": 1, "num_heads": 2,
           "num_attention_heads": 2, "out_hidden_size": 64, "vision_output_dim": 64, "projector_input_dim": 64,
           "projector_output_dim": 64}
"""A composite config's vision tower, shrunk too (it is not built by the causal LM class,
but the config is saved with the checkpoint)."""
_NONE_MEANS_DERIVED = ("num_key_value_heads", "head_dim")
"""Keys whose None default some configs leave for the model to derive (and some models
then fail on): set to the small size wherever the config has the attribute."""
_EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
_PER_LAYER_MAX_KINDS = 4

OVERRIDES: dict[str, dict[str, Any]] = {
    # GPT-2 family spells the widths differently and has no kv heads.
    # (their n_inner stays None, 4 x n_embd, as the published checkpoints have it)
    "gpt2": {"n_embd": 64, "n_head": 4, "n_layer": 2},
    "gpt_bigcode": {"n_embd": 64, "n_head": 4, "n_layer": 2, "multi_query": True,
                    "n_inner": 256},  # StarCoder's configs set n_inner; mlx-lm requires it
    "gptj": {"n_embd": 64, "n_head": 4, "n_layer": 2, "rotary_dim": 8},
    # DBRX keeps its attention and FFN sizes in sub-configs. transformers 5.25's
    # DbrxAttentionConfig has no rope_theta default, yet its attention reads one (a
    # default DbrxConfig cannot be built, finding dbrx-attn-rope-theta); the published
    # config carries it in attn_config (500000), which mlx-lm reads; transformers' RoPE
    # reads the top-level rope_parameters: both get the published value.
    "dbrx": {"d_model": 64, "n_heads": 4, "n_layers": 2,
             "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
             "attn_config": {"kv_n_heads": 2, "clip_qkv": 8.0, "rope_theta": 500000.0},
             "ffn_config": {"ffn_hidden_size": 128, "moe_num_experts": 4, "moe_top_k": 2}},
    # mlx-lm's GPT-NeoX MLP is 4 x hidden (as every Pythia checkpoint has it).
    "gpt_neox": {"intermediate_size": 256},
    # Mamba-1: the inner width is expand x hidden.
    "mamba": {"intermediate_size": 128, "conv_kernel": 4, "expand": 2},
    "falcon_mamba": {"intermediate_size": 128, "conv_kernel": 4, "expand": 2},
    # Mamba-2: heads x head_dim must equal expand x hidden; groups divide heads.
    "mamba2": {"num_heads": 8, "head_dim": 16, "expand": 2, "n_groups": 1, "chunk_size": 16},
    # Phi-3.5-MoE (the published model) has biased attention and lm_head.
    "phimoe": {"attention_bias": True, "lm_head_bias": True},
    # dots.llm1 leaves its expert counts unset (None) by default.
    "dots1": {"n_routed_experts": 4, "num_experts_per_tok": 2, "n_shared_experts": 1},
    # LFM2-MoE leaves layer_types unset: one short-conv and one attention layer.
    "lfm2_moe": {"layer_types": ["conv", "full_attention"], "num_dense_layers": 1},
    # DeepSeek-V2 leaves top-k unset (None) by default.
    "deepseek_v2": {"num_experts_per_tok": 2},
    # Gemma 4: the global layers' wider heads (per_layer_config) shrunk to 32 for the
    # full-attention layer of the two.
    "gemma4_text": {"per_layer_config": {"01": {"head_dim": 32}}},
    # ERNIE 4.5 MoE: the sparse layers are a [start, end] range with an interval.
    "ernie4_5_moe": {"moe_layer_start_index": 1, "moe_layer_end_index": 1, "moe_layer_interval": 1},
    # Recurrent Gemma: one recurrent and one local-attention block.
    "recurrent_gemma": {"block_types": ["recurrent", "attention"], "num_key_value_heads": 1},
}
"""Per-architecture settings the generic shrink cannot derive (applied after it)."""


def _shrink_per_layer(values: list[Any], layers: int) -> list[Any]:
    """A per-layer list for ``layers`` layers keeping every distinct value of ``values``
    (first appearance order), then continuing ``values``' own order."""
    distinct: list[Any] = []
    for v in values:
        if v not in distinct:
            distinct.append(v)
    out = distinct[:layers]
    i = 0
    while len(out) < layers:
        out.append(values[i % len(values)])
        i += 1
    return out


def _kinds(values: list[Any]) -> int:
    return len({repr(v) for v in values})


def tiny_config(model_type: str) -> Any:
    """transformers' config of ``model_type`` shrunk to a tiny model (see the module docstring).

    Returns: a ``PretrainedConfig``; ``ValueError`` when transformers has no config for it.
    """
    from transformers import AutoConfig

    try:
        default = AutoConfig.for_model(model_type)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"[sweep] transformers has no config for model_type {model_type!r}: {exc}") from exc
    original_layers = None
    for key in ("num_hidden_layers", "n_layer", "n_layers", "num_layers"):
        if isinstance(default.to_dict().get(key), int):
            original_layers = default.to_dict()[key]
            break
    kwargs: dict[str, Any] = {}
    written_defaults = default.to_dict()
    for key, value in SIZES.items():
        # From the serialised form: a per-layer attribute (Gemma 4's head_dim) raises on
        # plain attribute access.
        current = written_defaults.get(key, getattr(default, key, None) if key not in written_defaults else None)
        if isinstance(current, bool) or (current is None and not (key in _NONE_MEANS_DERIVED
                                                                  and hasattr(default, key))):
            continue
        kwargs[key] = value
    # Per-layer lists: rebuilt for the new depth, every kind of layer kept.
    per_layer = {}
    if original_layers:
        for key, value in default.to_dict().items():
            if isinstance(value, list) and len(value) == original_layers and original_layers > 1:
                per_layer[key] = value
    layers = max([2, *(_kinds(v) for v in per_layer.values())])
    layers = min(layers, _PER_LAYER_MAX_KINDS)
    for key in ("num_hidden_layers", "n_layer", "n_layers", "num_layers"):
        if key in kwargs:
            kwargs[key] = layers
    for key, value in per_layer.items():
        kwargs[key] = _shrink_per_layer(value, layers)
    if "qk_rope_head_dim" in kwargs and "head_dim" in kwargs:
        # MLA configs name the rotary part's width head_dim too.
        kwargs["head_dim"] = kwargs["qk_rope_head_dim"]
    if "kv_lora_rank" in kwargs and "num_key_value_heads" in kwargs:
        # MLA decompresses a key per query head; transformers still repeats kv by
        # heads / kv_heads, so the two must be equal.
        kwargs["num_key_value_heads"] = kwargs.get("num_attention_heads", SIZES["num_attention_heads"])
    if "first_k_dense_replace" in kwargs or getattr(default, "first_k_dense_replace", None) is not None:
        kwargs["first_k_dense_replace"] = 1
    vocab = kwargs.get("vocab_size", SIZES["vocab_size"])
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        tok = getattr(default, key, None)
        if isinstance(tok, int) and tok >= vocab:
            kwargs[key] = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}[key]
        elif isinstance(tok, list):
            kwargs[key] = [t if t < vocab else 2 for t in tok]
    for key, value in OVERRIDES.get(model_type, {}).items():
        sub: Any = getattr(default, key, None)
        if isinstance(value, dict) and hasattr(sub, "to_dict"):
            # A sub-config (DBRX's attn_config): its defaults with the override on top.
            kwargs[key] = {**sub.to_dict(), **value}
        else:
            kwargs[key] = value
    if any(k in kwargs for k in _EXPERT_KEYS):
        # A router never sees fewer experts than it picks.
        for key in ("num_experts_per_tok", "num_experts_per_token", "moe_k", "moe_top_k", "moe_topk"):
            if key in kwargs:
                kwargs[key] = 2
    text = getattr(default, "text_config", None)
    if text is not None and getattr(text, "model_type", None):
        # A composite config (Qwen 3.5, Llama 4): the causal LM is its text model.
        kwargs["text_config"] = tiny_config(text.model_type).to_dict()
        vision = getattr(default, "vision_config", None)
        if vision is not None:
            kwargs["vision_config"] = {**vision.to_dict(), **_VISION}
    return AutoConfig.for_model(model_type, **kwargs)


def build_checkpoint(model_type: str, directory: Path, seed: int = 0, legacy: bool = True) -> Path:
    """Write a tiny random float32 ``model_type`` checkpoint with transformers into
    ``directory`` (``config.json`` + ``model.safetensors``) and return it.

    Weights as transformers initialises them (seeded), then every 1-D parameter gets
    ``+ 0.2 N(0, 1) + 0.05`` so no norm weight or bias is a constant. ``legacy``: also
    write the transformers-4 spellings of the config (:func:`legacy_keys`). ``ValueError`` when
    transformers has no config or causal LM class for ``model_type``.
    """
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    from conformance.model.checkpoints import save_perturbed

    logging.disable_progress_bar()
    config = tiny_config(model_type)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).to(torch.float32)
    save_perturbed(model, directory, seed)
    if legacy:
        cfg_path = directory / "config.json"
        written = json.loads(cfg_path.read_text(encoding="utf-8"))
        added = legacy_keys(model.config, written)
        written.update(added)
        written["_sweep_legacy_keys"] = sorted(added)
        cfg_path.write_text(json.dumps(written, indent=2), encoding="utf-8")
    return directory


def _periodic_full_every(layer_types: list[str]) -> int | None:
    """k when every k-th layer (1-based) is full attention and the rest sliding, else None."""
    full = [i for i, t in enumerate(layer_types) if t == "full_attention"]
    if not full or len(full) == len(layer_types) or any(t not in ("full_attention", "sliding_attention") for t in layer_types):
        return None
    k = full[0] + 1
    expected = [i for i in range(len(layer_types)) if (i + 1) % k == 0]
    return k if full == expected else None


def legacy_keys(config: Any, written: dict[str, Any]) -> dict[str, Any]:
    """The transformers-4 spellings of what transformers 5 writes elsewhere, for the keys
    ``written`` (the saved ``config.json``) lacks.

    transformers 5 writes RoPE settings only inside ``rope_parameters`` and per-layer
    attention kinds only as ``layer_types``; checkpoints written by transformers 4 (most
    published ones) carry ``rope_theta``, ``rope_scaling``, ``partial_rotary_factor``,
    ``sliding_window_pattern``, a computed ``head_dim`` ..., which is what mlx-lm 0.32
    reads. Adding them (same values; transformers 5 reads either) lets the sweep judge the
    architecture instead of stopping at the config; which keys were added is recorded in
    ``config.json`` (``_sweep_legacy_keys``) and the report, and the plain
    transformers-5 form is a finding of its own (see ``sweep_triage.py``).

    Returns: the keys to add (never one ``written`` has).
    """
    add: dict[str, Any] = {}
    rope = written.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:
        add["rope_theta"] = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default":
            add["rope_scaling"] = {**{k: v for k, v in rope.items() if k != "rope_theta"},
                                   "type": rope["rope_type"]}
        if "partial_rotary_factor" in rope:
            add["partial_rotary_factor"] = rope["partial_rotary_factor"]
    elif isinstance(rope, dict) and isinstance(rope.get("full_attention"), dict):
        # Per-layer-type RoPE (Gemma 3): the global theta and the local one.
        add["rope_theta"] = rope["full_attention"].get("rope_theta")
        if isinstance(rope.get("sliding_attention"), dict):
            add["rope_local_base_freq"] = rope["sliding_attention"].get("rope_theta")
        # No rope_scaling here: transformers 5.25 would rebuild rope_parameters from it
        # (finding rope-scaling-null; Gemma 4's "proportional" RoPE then loses its theta).
    if "head_dim" not in written:
        head_dim = getattr(config, "head_dim", None)
        heads, hidden = written.get("num_attention_heads"), written.get("hidden_size")
        if not isinstance(head_dim, int) and isinstance(heads, int) and isinstance(hidden, int) and heads:
            head_dim = hidden // heads  # transformers' own fallback in the attention layers
        if isinstance(head_dim, int):
            add["head_dim"] = head_dim
    if "num_local_experts" in written and "num_experts" not in written:
        add["num_experts"] = written["num_local_experts"]
    layer_types = written.get("layer_types")
    if isinstance(layer_types, list) and "sliding_window_pattern" not in written:
        k = _periodic_full_every(layer_types)
        if k is not None:
            # EXAONE 4 spells the pattern as a string of Local/Global layers.
            add["sliding_window_pattern"] = ("L" * (k - 1) + "G") if written.get("model_type") == "exaone4" else k
    per_layer = written.get("per_layer_config")
    if isinstance(per_layer, dict):
        # Gemma 4's wider full-attention heads: transformers 5 keeps them per layer,
        # the published config (and mlx-lm) as global_head_dim.
        dims = {v.get("head_dim") for v in per_layer.values() if isinstance(v, dict) and v.get("head_dim")}
        if len(dims) == 1:
            add["global_head_dim"] = dims.pop()
    if written.get("model_type") == "gpt2" and "n_ctx" not in written:
        add["n_ctx"] = written.get("n_positions")
    if written.get("model_type") == "gpt_neox" and "rope_theta" in add:
        add["rotary_emb_base"] = add["rope_theta"]
        add["rotary_pct"] = add.get("partial_rotary_factor", 1.0)
    if isinstance(rope, dict) and "rope_theta" in rope and "rope_scaling" not in add:
        # transformers 4 wrote an explicit null. Not next to a per-layer-type
        # rope_parameters: transformers 5.25 then replaces that with None (laguna, mellum).
        add["rope_scaling"] = None
    return {k: v for k, v in add.items() if k not in written and (v is not None or k == "rope_scaling")}
