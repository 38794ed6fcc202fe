"""The sweep's triage: why each architecture that does not conform does not.

Every departure and every configuration that cannot be built or loaded is explained by one
entry of :data:`TRIAGE`, of one kind:

* ``mlx-lm bug``: mlx-lm computes something else than the architecture defines; a
  standalone reproducer (mlx-lm, transformers, torch, numpy only) sits in ``repro``;
* ``transformers quirk``: transformers' own class or config is the odd one out;
* ``convention``: the two libraries agree to differ (or a checkpoint layout mlx-lm does
  not read); pinned by the named ``test``;
* ``MLX back-end limit``: MLX itself (not mlx-lm) lacks the kernel on this back end;
* ``harness gap``: the sweep or the judge cannot yet pose the question (to close);
* ``out of scope``: not a checkpoint the sweep can write (say why).

An entry matches a configuration by architecture, status and (optionally) a substring of
its reason. The report lists every entry with the configurations it explains, and every
outcome no entry explains as ``untriaged``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

KINDS = ("mlx-lm bug", "transformers quirk", "convention", "MLX back-end limit", "harness gap", "out of scope")


@dataclass(frozen=True)
class Finding:
    """One triaged reason."""

    id: str
    kind: str
    archs: tuple[str, ...]
    """Architectures it applies to (empty: any)."""
    statuses: tuple[str, ...]
    summary: str
    match: str = ""
    """A substring of the configuration's reason (empty: any)."""
    configs: tuple[str, ...] = ()
    """Configuration labels it applies to (empty: all)."""
    repro: str = ""
    test: str = ""
    versions: str = ""
    detail: str = ""
    legacy_key: str = ""
    """A transformers-4 key the sweep adds to configs to work around this finding: the
    architectures whose configs got it are listed as affected (they reach a verdict
    only thanks to the key)."""

    def matches(self, result: dict[str, Any]) -> bool:
        """Whether this finding explains ``result`` (a sweep configuration)."""
        return ((not self.archs or result["arch"] in self.archs) and result["status"] in self.statuses
                and (not self.configs or result["label"] in self.configs)
                and self.match in (result.get("reason") or ""))


_REPRO = "reports/sweep/mlx-lm/repro/"
_PINS = "tests/test_sweep_findings.py::"

TRIAGE: list[Finding] = [
    Finding(
        id="rope-parameters", kind="mlx-lm bug", archs=(), statuses=(), legacy_key="rope_theta",
        summary="mlx-lm 0.32.2 ignores transformers 5's `rope_parameters`: configs written by transformers "
                ">= 5 (5.25 here) keep rope_theta and the scaling (rope_type, factor, ...) only inside "
                "`rope_parameters`; mlx-lm reads only top-level `rope_theta`/`rope_scaling`, so it runs "
                "theta 10000 with no scaling where ModelArgs has a default (llama, qwen2, ...) and fails "
                "to load where rope_theta is required (granite, helium, ernie4_5, ...).",
        detail="The sweep writes the transformers-4 spellings too (same values; sweep_configs.legacy_keys), "
               "so the rest of each architecture is judged; the affected architectures are those listed.",
        repro=_REPRO + "rope_parameters.py", test=_PINS + "test_reproducers_still_reproduce",
        versions="mlx-lm 0.32.2, transformers 5.25.0"),
    Finding(
        id="mistral-sliding-window", kind="mlx-lm bug", archs=("mistral",), statuses=("departs",),
        summary="mlx-lm serves model_type mistral with its llama module, which applies a sliding window only "
                "to layers `layer_types` marks sliding; transformers' Mistral applies `sliding_window` to "
                "every layer (Mistral-7B-v0.1: 4096). Prompts longer than the window differ from the prefill.",
        repro=_REPRO + "mistral_sliding_window.py", test=_PINS + "test_reproducers_still_reproduce",
        versions="mlx-lm 0.32.2, transformers 5.25.0"),
    Finding(
        id="gemma2-sliding-window", kind="mlx-lm bug", archs=("gemma2",), statuses=("departs",),
        summary="mlx-lm's gemma2 has no sliding window at all (never reads sliding_window or layer_types; a "
                "plain KVCache per layer): its sliding layers attend to every earlier token.",
        repro=_REPRO + "gemma2_sliding_window.py", test=_PINS + "test_reproducers_still_reproduce",
        versions="mlx-lm 0.32.2, transformers 5.25.0"),
    Finding(
        id="glm-partial-rotary", kind="mlx-lm bug", archs=("glm",), statuses=("departs",),
        summary="mlx-lm's glm rotates the whole head (nn.RoPE(dims=head_dim)) and ignores "
                "partial_rotary_factor (0.5 in transformers' GlmConfig and GLM-4's configs).",
        repro=_REPRO + "glm_partial_rotary.py", test=_PINS + "test_reproducers_still_reproduce",
        versions="mlx-lm 0.32.2, transformers 5.25.0"),
    Finding(
        id="gelu-variant", kind="mlx-lm bug", archs=("starcoder2", "gpt_bigcode", "gpt_neox", "gemma"), statuses=("departs",),
        configs=("float32",),
        summary="mlx-lm hard-codes the GELU and ignores hidden_act: starcoder2, gpt_bigcode and gemma run the "
                "exact GELU where the config says (and transformers runs) gelu_pytorch_tanh, gpt_neox the tanh approximation where it says gelu "
                "(~2e-4 relative on the logits; only float32 resolves it, bfloat16's own rounding is larger).",
        repro=_REPRO + "gelu_variant.py", test=_PINS + "test_reproducers_still_reproduce",
        versions="mlx-lm 0.32.2, transformers 5.25.0"),
    Finding(
        id="gathermm-bfloat16-cpu", kind="MLX back-end limit", archs=(), statuses=("candidate-load-error",),
        match="[GatherMM::eval] Currently only supports float32",
        summary="MLX 0.32.4's CPU back end has gather_mm (mlx-lm's SwitchGLU experts) in float32 only: every "
                "mixture-of-experts model fails in bfloat16 on the CPU (not on Metal/CUDA).",
        test=_PINS + "test_gather_mm_bfloat16_cpu_unsupported"),
    Finding(
        id="quantized-matmul-bf16-accumulation", kind="MLX back-end limit",
        archs=("gemma4_text", "ernie4_5_moe", "nemotron_h"),
        statuses=("departs",), configs=("bfloat16+affine4",),
        summary="MLX 0.32.4's CPU quantized matmul (affine, 4 bits, group 64: mlx-lm's QuantizedLinear and the "
                "tied QuantizedEmbedding.as_linear) rounds every bfloat16 product and every partial sum to "
                "bfloat16 (bit-identical to that sequential sum). gemma4_text: on transformers' own bfloat16 inputs at step 9 "
                "every quantized linear of layer 0 makes 1.6-2.8x the bfloat16 peer's error against the float64 "
                "product (first past 2x: self_attn.q_proj 2.1x; worst mlp.down_proj 2.75x; 5-7x a correctly "
                "rounded result on its own dequantized weight), where the model rule assumes at most 2x; the "
                "layer-0 row leaves the bound by 1.13x. With that op alone replaced by dequantize + dense matmul "
                "(float32 accumulation) the configuration conforms (worst 0.59).",
        detail="Not mlx-lm's: its quantized embedding lookups are bit-identical to the peer's, mlx-lm's own "
               "conversion (mlx_lm.convert) gives identical numbers, and mlx-lm on a dense bfloat16 copy of the "
               "same dequantized weights conforms (0.72). The op registry's quantized_matmul record admits this "
               "accumulation (accumulates_in_input_dtype: Higham's gamma_K bound; SEMANTICS.md; its overflow form "
               "is the divergence cpu_half_accumulator_overflow); the model rule has no such allowance. The same "
               "checkpoint with float32 activations (not a sweep configuration) departs at step 5, layer 1 for "
               "another reason, the bound's: there the quantized matmul matched MLX's dense matmul (bit for bit on this machine) "
               "on the dequantized weights, mlx-lm on a dense float32 copy departs at the same point, and every "
               "linear stays within 0.95-1.8x the peer's error on identical inputs at that step; MLX's error over the peer's at "
               "the layer rows has median 1.4 over the 17 steps and a tail (2.7x at that row, where the peer's "
               "own error is at its median). The same kernel takes ernie4_5_moe (1.70x at step 0, layer 1) and "
               "nemotron_h (2.47x at step 0, layer 0) out of the bound in bfloat16+affine4: mlx-lm on the same "
               "dequantized bfloat16 weights with nn.Linear in place of nn.QuantizedLinear conforms (0.32, 0.29; "
               "test_quantized_matmul_bfloat16_cpu_accumulates_in_bfloat16 pins the kernel: 9e-3 relative error "
               "at K=64 where x @ dequantize(w).T has 1.7e-3; in float32 as accurate as the dense one). nemotron_h also departs in "
               "float32+affine4 (not a sweep configuration: 1.73x at step 0, layer 0, identically with nn.Linear) "
               "while dense float32 on its unquantized weights conforms (0.51): a float32-level difference in its "
               "Mamba-2 layer that the on-grid weights expose; not settled. ernie4_5_moe float32+affine4 conforms.",
        repro=_REPRO + "gemma4_quantized_matmul_bf16.py",
        test=_PINS + "test_gemma4_affine4_departure_is_the_bf16_quantized_matmul",
        versions="mlx 0.32.4 (CPU, x86-64), mlx-lm 0.32.2, transformers 5.25.0"),
    Finding(
        id="quantized-layout", kind="harness gap", archs=(), statuses=(),
        summary="Closed: derive() quantized every 2-D weight whose width is a multiple of the group, in transformers' "
                "layout, which mlx-lm could not load for 13 MoE affine4 configurations (the router `mlp.gate` it "
                "keeps dense or at 8 bits, per-expert `.scales` its sanitize does not stack, Falcon-H1's weights "
                "its sanitize multiplies). The mlx-lm candidate now loads mlx-lm's own conversion of the dense "
                "checkpoint (its sanitize, quantize_model with the model's quant_predicate, save_model), and the "
                "transformers oracle and peer its dequantized values, traced back to transformers' layout through "
                "sanitize and proved by a round trip (conformance/model/mlx_lm_layout.py).",
        test="tests/test_mlx_lm_layout.py"),
    Finding(
        id="config-keys", kind="convention", archs=(), statuses=("candidate-load-error",),
        match="ModelArgs.__init__() missing",
        summary="mlx-lm's ModelArgs require config keys that transformers' own config class does not write "
                "(mlx-lm follows the published, often remote-code, configs: apertus qk_norm/post_norm, "
                "minimax rotary_dim, mamba2 intermediate_size, lfm2 block_dim, ...).",
        test=_PINS + "test_mlx_lm_requires_keys_transformers_does_not_write"),
    Finding(
        id="rope-scaling-required", kind="convention", archs=("deepseek_v2", "minicpm3"),
        statuses=("candidate-load-error",), match="'NoneType' object has no attribute 'get'",
        summary="mlx-lm's deepseek_v2 and minicpm3 require a rope_scaling dict (every published checkpoint has "
                "YaRN / LongRoPE); transformers' default config has none (rope_scaling null).",
        test=_PINS + "test_mlx_lm_requires_rope_scaling"),
    Finding(
        id="layer-type-names", kind="convention", archs=("granitemoehybrid", "jamba", "exaone4"),
        statuses=("candidate-load-error",),
        summary="transformers 5 writes per-layer kinds in its own vocabulary (layer_types 'linear_attention', "
                "an int sliding_window_pattern); mlx-lm reads the published spellings ('mamba'/'attention' "
                "block types, EXAONE 4's 'LLLG' pattern string).",
        test=_PINS + "test_weight_or_layout_mismatch_still_fails"),
    Finding(
        id="checkpoint-layout", kind="convention",
        archs=("gpt2", "nanochat", "olmo_hybrid", "llama4_text", "llama4", "gpt_oss", "qwen3_next", "phimoe"),
        statuses=("candidate-load-error",), match="parameters",
        summary="transformers 5 saves these models in its own tensor layout (fused expert tensors "
                "`experts.gate_up_proj`, `transformer.` prefixes, renamed norms); mlx-lm's sanitize reads the "
                "published checkpoints' layout, so the parameter names do not meet.",
        test=_PINS + "test_weight_or_layout_mismatch_still_fails"),
    Finding(
        id="bitnet-packed", kind="out of scope", archs=("bitnet",), statuses=("candidate-load-error",),
        summary="mlx-lm's bitnet reads only packed ternary checkpoints (weight_scale per projection); "
                "transformers' BitNetForCausalLM writes unpacked float weights."),
    Finding(
        id="text-model-type", kind="convention", archs=("qwen3_5", "qwen3_5_moe"),
        statuses=("candidate-load-error",), match="not supported",
        summary="transformers' causal LM for Qwen 3.5 is the text model and saves model_type qwen3_5_text; "
                "mlx-lm serves only the composite (vision + text) checkpoint, model_type qwen3_5."),
    Finding(
        id="olmo-needs-ai2-olmo", kind="out of scope", archs=("olmo",), statuses=("candidate-load-error",),
        summary="mlx-lm's olmo module imports the ai2-olmo package and exits the process without it "
                "(SystemExit at import); not installed here."),
    Finding(
        id="rope-scaling-null", kind="transformers quirk", archs=("laguna", "mellum"),
        statuses=("oracle-load-error",), match="'NoneType' object is not subscriptable",
        summary="transformers 5.25 replaces a per-layer-type `rope_parameters` ({'full_attention': ..., "
                "'sliding_attention': ...}) with None when config.json also has \"rope_scaling\": null, and the "
                "model then fails to build (TypeError: 'NoneType' object is not subscriptable). The sweep writes "
                "no rope_scaling next to per-layer-type rope_parameters (sweep_configs.legacy_keys).",
        test=_PINS + "test_rope_scaling_null_drops_per_layer_rope_parameters", versions="transformers 5.25.0"),
    Finding(
        id="recurrent-gemma-norm-eps", kind="mlx-lm bug", archs=("recurrent_gemma",), statuses=("departs",),
        configs=("float32",),
        summary="mlx-lm's recurrent_gemma builds every block's temporal_pre_norm and channel_pre_norm with "
                "eps 1e-5 (its RMSNorm default) and ignores config.rms_norm_eps (1e-6); only the final norm "
                "reads it (~2e-5 relative on the logits).",
        repro=_REPRO + "recurrent_gemma_norm_eps.py", test=_PINS + "test_reproducers_still_reproduce",
        versions="mlx-lm 0.32.2, transformers 5.25.0"),
    Finding(
        id="glm4-moe-lite-latent-norm-eps", kind="transformers quirk", archs=("glm4_moe_lite",),
        statuses=("departs",), configs=("float32",),
        summary="transformers' Glm4MoeLite builds its MLA latent norms (q_a_layernorm, kv_a_layernorm) with "
                "the DeepSeek-V3 default eps 1e-6 and ignores config.rms_norm_eps (1e-5, as GLM-4.7-Flash's "
                "config has it); mlx-lm uses config.rms_norm_eps. Setting transformers' eps to 1e-5 makes the "
                "two agree to 2e-7.",
        test=_PINS + "test_glm4_moe_lite_latent_norm_eps", versions="transformers 5.25.0, mlx-lm 0.32.2"),
    Finding(
        id="dsa-indexer-ties", kind="harness gap", archs=("deepseek_v32", "glm_moe_dsa"), statuses=(),
        summary="Closed: the DSA indexer's top-k choice of keys is judged like a routing tie "
                "(conformance/model/dsa_indexer.py). Every side attends to the float64 oracle's keys where its "
                "own differ, and each side's own choice must be a tie on the oracle's index scores: a key b only "
                "the side keeps for a key a only the oracle keeps needs s_o[a] - s_o[b] <= 2 x the model rule's "
                "bound on that score row (2 ||peer - oracle|| + 2 ulp sqrt(T)). deepseek_v32 bfloat16+affine4 "
                "departed at step 10, layer 0 (9.2x) on a near tie: the oracle's 4th to 6th scores 0.00159, "
                "0.00153, 0.00146 (keys 15, 2, 11), transformers' bfloat16 peer's score row up to 4.8e-4 from "
                "the oracle's, mlx-lm's 4.2e-4 (0.88x), and mlx-lm keeps key 11 for 15. Judged so it conforms "
                "(worst 0.42; 3 ties in 48 query-layers, all at steps 10-12 of layer 0; transformers' own peer "
                "departs from the oracle's choice in 3 of the 48); float32 has no differing choice.",
        detail="Not mlx-lm's recipe: mlx-lm scores in bfloat16 where transformers casts q, k and the head weights "
               "to float32, but mlx-lm patched to score in float32 makes the same choices with the same error "
               "(4.18e-4 at that row) and departs identically without the tie rule: the error is its bfloat16 q, k "
               "and weights (the inputs the peer rounds too). Planted indexer bugs are flips in bfloat16+affine4 and "
               "float32: the first k keys (40 of 48 query-layers), keys shifted by one (42), no ReLU (12; 24 in "
               "float32), unweighted heads (37), no RoPE (22) (the first three in tests/test_dsa_indexer.py). glm_moe_dsa never reaches the indexer in "
               "the sweep: mlx-lm needs topk_method, scoring_func and moe_layer_freq (finding config-keys); with "
               "those three keys added (noaux_tc, sigmoid, 1) it conforms in float32 and bfloat16+affine4 with "
               "its indexer judged (0 ties; the peer departs once).",
        test="tests/test_dsa_indexer.py", versions="mlx-lm 0.32.2, transformers 5.25.0"),
    Finding(
        # statuses=(): it makes no configuration depart (the indexer's keys only select, the
        # layers conform), so it matches no outcome; it shows in the report's sub-layer section.
        id="deepseek-v32-indexer-k-norm-eps", kind="mlx-lm bug", archs=("deepseek_v32",), statuses=(),
        summary="mlx-lm's deepseek_v32 builds the DSA indexer's key norm as nn.LayerNorm(index_head_dim), MLX's "
                "default eps 1e-5; transformers' DeepseekV32Indexer and DeepSeek's own inference code "
                "(deepseek-ai/DeepSeek-V3.2-Exp inference/model.py: its LayerNorm defaults to eps 1e-6) use 1e-6. "
                "Shows only as a sub-layer point: in float32 `self_attn.indexer.k_norm` is ~530x over the model "
                "rule at step 0 in layers 0 and 1 while those layers conform (the normalized keys only score "
                "the indexer's top-k choice, which does not change here); no configuration departs.",
        detail="Measured with the sweep's sub-layer capture (deepseek_v32 float32, 1 decode step): k_norm 531x "
               "and 530x the bound at step 0 in layers 0 and 1 (its input within 0.25x), 144x and 168x at step 1. "
               "With mlx-lm's Indexer patched to nn.LayerNorm(head_dim, eps=1e-6) no sub-layer point departs.",
        repro=_REPRO + "deepseek_v32_indexer_k_norm_eps.py", test=_PINS + "test_reproducers_still_reproduce",
        versions="mlx-lm 0.32.2, transformers 5.25.0"),
    Finding(
        id="dbrx-attn-rope-theta", kind="transformers quirk", archs=("dbrx",), statuses=("not-built",),
        summary="transformers 5.25's DbrxAttentionConfig has no rope_theta default, yet DbrxAttention reads "
                "attn_config.rope_theta: a DbrxConfig whose attn_config lacks it (the default one) cannot be built "
                "(AttributeError). Its RoPE reads the top-level rope_parameters instead. The sweep writes the "
                "published value (500000) into both (sweep_configs.OVERRIDES), so DBRX is built and judged.",
        test=_PINS + "test_dbrx_attention_config_has_no_rope_theta", versions="transformers 5.25.0"),
]
"""One entry per finding."""


def triage(results: list[dict[str, Any]], findings: list[Finding] | None = None) -> dict[str, Any]:
    """Match every non-conforming configuration to a finding.

    Returns: ``{"findings": [finding + "configurations": [arch label ...]],
    "untriaged": [{"arch", "label", "status", "reason"}]}``; a finding that explains no
    configuration of this run is kept with an empty list (the report says so)."""
    findings = TRIAGE if findings is None else findings
    by_id: dict[str, list[str]] = {f.id: [] for f in findings}
    untriaged = []
    for f in findings:
        if f.legacy_key:
            by_id[f.id] += sorted({f"{r['arch']} (config key added)" for r in results
                                   if f.legacy_key in (r.get("legacy_keys") or [])})
    for r in results:
        if r["status"] == "conforms":
            continue
        hit = next((f for f in findings if f.matches(r)), None)
        if hit is None:
            untriaged.append({k: r.get(k) for k in ("arch", "label", "status", "reason")})
        else:
            by_id[hit.id].append(f"{r['arch']} {r['label']}")
    return {"findings": [{**asdict(f), "configurations": by_id[f.id]} for f in findings],
            "untriaged": untriaged}


def finding_for(result: dict[str, Any], findings: list[Finding] | None = None) -> Finding | None:
    """The finding that explains ``result``, if any."""
    return next((f for f in (TRIAGE if findings is None else findings) if f.matches(result)), None)
