"""``ModelArgs``: the architecture read from a Hugging Face ``config.json``.

Pure Python (no array library): ``torch_reference.models.config`` is a copy of this
module, so both libraries read a checkpoint's config the same way. Both config formats
load: transformers 5's ``rope_parameters`` (one dict, or one per layer type for Gemma 3)
and the older top-level ``rope_theta`` / ``rope_scaling`` / ``rope_local_base_freq`` /
``partial_rotary_factor``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "qwen3", "gemma3_text", "glm4", "gpt_oss")
FULL = "full_attention"
SLIDING = "sliding_attention"

# Defaults of transformers 5's config classes for keys an old config may omit.
_DEFAULT_THETA = {"llama": 10000.0, "qwen3": 10000.0, "glm4": 10000.0, "gpt_oss": 150000.0}
_GEMMA3_THETA = {FULL: 1_000_000.0, SLIDING: 10_000.0}
_DEFAULT_EPS = {"llama": 1e-6, "qwen3": 1e-6, "gemma3_text": 1e-6, "glm4": 1e-5, "gpt_oss": 1e-5}


def _error(message: str) -> ValueError:
    return ValueError(f"[models.load] {message}")


@dataclasses.dataclass(frozen=True)
class RopeSpec:
    """One layer type's rotary embedding.

    ``rope_type``: ``default``, ``linear`` (positions divided by ``factor``) or ``llama3``
    (frequency-dependent scaling of the inverse frequencies). ``dims`` rotated features
    (``partial_rotary_factor * head_dim``), paired ``(2i, 2i+1)`` when ``traditional``
    (GLM-4), ``(i, i + dims/2)`` otherwise.
    """

    theta: float
    dims: int
    traditional: bool = False
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    truncate: bool = True
    yarn_attention_factor: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None

    @property
    def attention_factor(self) -> float:
        """Multiplier of cos and sin (YaRN's ``attention_factor``; 1 for the others), as
        transformers' ``_compute_yarn_parameters`` derives it."""
        if self.rope_type != "yarn":
            return 1.0
        if self.yarn_attention_factor is not None:
            return self.yarn_attention_factor

        def get_mscale(scale: float, m: float = 1.0) -> float:
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        if self.mscale and self.mscale_all_dim:
            return get_mscale(self.factor, self.mscale) / get_mscale(self.factor, self.mscale_all_dim)
        return get_mscale(self.factor)

    def _yarn(self) -> list[float]:
        """transformers' YaRN: per frequency a ramp between interpolation (``/ factor``)
        and extrapolation over the correction range of ``beta_fast``/``beta_slow``."""
        d, base, old = self.dims, self.theta, self.original_max_position_embeddings

        def correction_dim(rotations: float) -> float:
            return (d * math.log(old / (rotations * 2 * math.pi))) / (2 * math.log(base))

        low, high = correction_dim(self.beta_fast), correction_dim(self.beta_slow)
        if self.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, d - 1)
        if low == high:
            high += 0.001  # transformers' guard against a zero-width ramp
        out = []
        for i in range(d // 2):
            pos_freq = base ** (2 * i / d)
            ramp = min(max((i - low) / (high - low), 0.0), 1.0)
            extrapolation = 1.0 - ramp
            out.append((1.0 / (self.factor * pos_freq)) * (1 - extrapolation)
                       + (1.0 / pos_freq) * extrapolation)
        return out

    def inv_freq(self) -> list[float]:
        """The ``dims / 2`` inverse frequencies (float64 Python floats), scaling applied.

        ``default``/``linear``: ``theta ** (-2i / dims)`` (``linear`` scales the positions
        instead, see :attr:`position_scale`). ``llama3``: transformers'
        ``_compute_llama3_parameters``: wavelengths longer than
        ``original / low_freq_factor`` are divided by ``factor``, shorter than
        ``original / high_freq_factor`` kept, and the band between interpolated.
        """
        if self.rope_type == "yarn":
            return self._yarn()
        half = self.dims // 2
        base = [self.theta ** (-(2 * i) / self.dims) for i in range(half)]
        if self.rope_type != "llama3":
            return base
        old = float(self.original_max_position_embeddings)
        low_wavelen = old / self.low_freq_factor
        high_wavelen = old / self.high_freq_factor
        out = []
        for f in base:
            wavelen = 2 * math.pi / f
            if wavelen > low_wavelen:
                out.append(f / self.factor)
            elif wavelen < high_wavelen:
                out.append(f)
            else:
                smooth = (old / wavelen - self.low_freq_factor) / (
                    self.high_freq_factor - self.low_freq_factor
                )
                out.append((1 - smooth) * f / self.factor + smooth * f)
        return out

    @property
    def position_scale(self) -> float:
        """Multiplier of the positions: ``1 / factor`` for ``linear``, else 1."""
        return 1.0 / self.factor if self.rope_type == "linear" else 1.0


@dataclasses.dataclass(frozen=True)
class ModelArgs:
    """Everything the decoder needs from ``config.json`` (mlx-lm's ``ModelArgs`` role).

    ``layer_types[i]`` is ``"full_attention"`` or ``"sliding_attention"``;
    ``rope[layer_type]`` its :class:`RopeSpec`. ``quantization`` is
    ``(group_size, bits, mode)`` for an MLX-quantized checkpoint, else ``None``.
    """

    model_type: str
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    tie_word_embeddings: bool
    layer_types: tuple[str, ...]
    rope: Mapping[str, RopeSpec]
    sliding_window: int | None = None
    attention_scale: float = 1.0
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    quantization: tuple[int, int, str] | None = None
    # GPT-OSS: mixture of experts and its clamped SwiGLU.
    num_local_experts: int = 0
    num_experts_per_tok: int = 0
    swiglu_alpha: float = 1.702
    swiglu_limit: float = 7.0

    @property
    def is_gemma(self) -> bool:
        return self.model_type == "gemma3_text"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelArgs:
        """Parse a ``config.json`` dict; raise ``ValueError`` for what cannot be served."""
        model_type = config.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise _error(
                f"model_type must be one of {SUPPORTED_MODEL_TYPES} but got {model_type!r}."
            )
        try:
            hidden = int(config["hidden_size"])
            heads = int(config["num_attention_heads"])
            layers = int(config["num_hidden_layers"])
            inter = int(config["intermediate_size"])
            vocab = int(config["vocab_size"])
        except KeyError as exc:
            raise _error(f"config.json lacks {exc.args[0]!r}.") from None
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or hidden // heads)
        if heads % kv_heads:
            raise _error(
                f"num_attention_heads {heads} must be a multiple of num_key_value_heads {kv_heads}."
            )
        layer_types = _layer_types(config, model_type, layers)
        rope = _rope_specs(config, model_type, head_dim, set(layer_types))
        window = config.get("sliding_window")
        if SLIDING in layer_types and not window:
            raise _error("layer_types has sliding_attention layers but sliding_window is unset.")
        if model_type == "gemma3_text":
            scale = float(config.get("query_pre_attn_scalar", 256)) ** -0.5
        else:
            scale = head_dim**-0.5
        tie = config.get("tie_word_embeddings")
        if tie is None:
            tie = model_type == "gemma3_text"  # transformers' class defaults
        return cls(
            model_type=model_type,
            hidden_size=hidden,
            num_hidden_layers=layers,
            intermediate_size=inter,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            vocab_size=vocab,
            rms_norm_eps=float(config.get("rms_norm_eps", _DEFAULT_EPS[model_type])),
            tie_word_embeddings=bool(tie),
            layer_types=tuple(layer_types),
            rope=rope,
            sliding_window=int(window) if window and SLIDING in layer_types else None,
            attention_scale=scale,
            attn_logit_softcapping=_opt_float(config.get("attn_logit_softcapping")),
            final_logit_softcapping=_opt_float(config.get("final_logit_softcapping")),
            quantization=_quantization(config),
            num_local_experts=int(config.get("num_local_experts", 0)),
            num_experts_per_tok=int(config.get("num_experts_per_tok", 0)),
            swiglu_alpha=float(config.get("swiglu_alpha", 1.702)),
            swiglu_limit=float(config.get("swiglu_limit", 7.0)),
        )


def _opt_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _layer_types(config: Mapping[str, Any], model_type: str, layers: int) -> list[str]:
    types = config.get("layer_types")
    if types is None:
        if model_type == "gpt_oss":
            # transformers' fallback: sliding and full layers alternate, sliding first.
            types = [SLIDING if (i + 1) % 2 else FULL for i in range(layers)]
        elif model_type == "gemma3_text":
            # transformers' fallback: every `sliding_window_pattern`-th layer is global.
            pattern = int(config.get("sliding_window_pattern", 6))
            types = [SLIDING if (i + 1) % pattern else FULL for i in range(layers)]
        else:
            types = [FULL] * layers
    types = list(types)
    if len(types) != layers or any(t not in (FULL, SLIDING) for t in types):
        raise _error(
            f"layer_types must list {layers} entries of {FULL!r}/{SLIDING!r} but got {types!r}."
        )
    return types


def _rope_specs(
    config: Mapping[str, Any], model_type: str, head_dim: int, types: set[str]
) -> dict[str, RopeSpec]:
    params = config.get("rope_parameters")
    per_type: dict[str, dict[str, Any]] = {}
    if isinstance(params, Mapping) and params and all(
        isinstance(v, Mapping) for v in params.values()
    ):
        per_type = {k: dict(v) for k, v in params.items()}  # Gemma 3, transformers 5
    else:
        shared: dict[str, Any] = dict(params) if isinstance(params, Mapping) else {}
        if not shared:
            # The older format: rope_theta / rope_scaling at the top level.
            shared = dict(config.get("rope_scaling") or {})
            if "type" in shared and "rope_type" not in shared:
                shared["rope_type"] = shared.pop("type")
            if "rope_theta" in config:
                shared["rope_theta"] = config["rope_theta"]
        if model_type == "gemma3_text":
            # Old Gemma 3: rope_scaling / rope_theta belong to the global layers; the
            # local ones have rope_local_base_freq and no scaling.
            per_type[FULL] = shared
            per_type[SLIDING] = {"rope_theta": config.get("rope_local_base_freq", _GEMMA3_THETA[SLIDING])}
        else:
            per_type = {t: shared for t in types}
    partial = config.get("partial_rotary_factor")
    out: dict[str, RopeSpec] = {}
    for t in types:
        p = per_type.get(t, {})
        theta = p.get("rope_theta")
        if theta is None:
            theta = _GEMMA3_THETA[t] if model_type == "gemma3_text" else _DEFAULT_THETA[model_type]
        factor_p = p.get("partial_rotary_factor", partial)
        if factor_p is None:
            factor_p = 0.5 if model_type == "glm4" else 1.0
        dims = int(head_dim * float(factor_p))
        rope_type = p.get("rope_type", p.get("type", "default")) or "default"
        if rope_type not in ("default", "linear", "llama3", "yarn"):
            raise _error(
                f"rope_type {rope_type!r} is not supported (default, linear, llama3, yarn)."
            )
        out[t] = RopeSpec(
            theta=float(theta),
            dims=dims,
            traditional=model_type == "glm4",
            rope_type=rope_type,
            factor=float(p.get("factor", 1.0)),
            low_freq_factor=float(p.get("low_freq_factor", 1.0)),
            high_freq_factor=float(p.get("high_freq_factor", 4.0)),
            original_max_position_embeddings=int(p.get("original_max_position_embeddings", 8192)),
            beta_fast=float(p.get("beta_fast") or 32.0),
            beta_slow=float(p.get("beta_slow") or 1.0),
            truncate=bool(p.get("truncate", True)),
            yarn_attention_factor=_opt_float(p.get("attention_factor")),
            mscale=_opt_float(p.get("mscale")),
            mscale_all_dim=_opt_float(p.get("mscale_all_dim")),
        )
    return out


def _quantization(config: Mapping[str, Any]) -> tuple[int, int, str] | None:
    # mlx-lm writes "quantization" (and a copy as "quantization_config"); a
    # "quantization_config" alone is some other tool's format (GPTQ, AWQ, bitsandbytes).
    q = config.get("quantization")
    if not q:
        return None
    if not isinstance(q, Mapping) or "group_size" not in q or "bits" not in q:
        raise _error(f"quantization must give group_size and bits but got {q!r}.")
    per_layer = [k for k, v in q.items() if isinstance(v, Mapping | bool)]
    if per_layer:
        raise _error(
            f"per-layer quantization overrides ({per_layer[:3]}) are not supported; "
            "one (group_size, bits, mode) for every quantized layer."
        )
    return int(q["group_size"]), int(q["bits"]), str(q.get("mode", "affine"))
