"""Checkpoints for model conformance: tiny random models written by transformers itself,
and the per-dtype / quantized variants of any checkpoint that the comparison loads.

* :func:`build_tiny` writes a small random model of one architecture with transformers'
  own class (``LlamaForCausalLM(config).save_pretrained(dir, safe_serialization=True)``),
  after perturbing every 1-D parameter (a norm initialised to a constant hides a loader
  that reads q_norm for k_norm, or drops a bias).
* :func:`derive` writes the checkpoint the comparison runs: every floating weight rounded
  to the test dtype and stored in it, or, for a quantized mode, every linear and embedding
  weight whose input width is a multiple of the group size quantized with
  ``mlx_impl.quantization.quantize`` and stored as MLX checkpoints ship them
  (``.weight`` packed uint32, ``.scales``, ``.biases`` for affine, ``"quantization"`` in
  ``config.json``), the rest kept in the base dtype. All three sides (MLX, the twin, the
  float64 oracle) then load the very same file.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from conformance.dtypes import MODEL_FORMATS

QUANT_MODES: dict[str, tuple[int, int, str]] = {
    "affine4": (64, 4, "affine"),
    "affine8": (64, 8, "affine"),
    "mxfp4": (32, 4, "mxfp4"),
    "nvfp4": (16, 4, "nvfp4"),
    "mxfp8": (32, 8, "mxfp8"),
}
"""The quantized modes a checkpoint can carry: name -> (group_size, bits, mode), the
group sizes mlx-lm uses by default for each mode."""

_TORCH_DTYPES = {name: f.torch_dtype for name, f in MODEL_FORMATS.items()}


def quantization_label(config: dict[str, Any]) -> str | None:
    """The quantized mode of an already-quantized checkpoint from its ``config.json``
    (``"quantization"``, or ``"quantization_config"``, as mlx-lm's converter writes them),
    e.g. ``affine4-g64``; with per-layer overrides (a layer path mapping to its own
    ``{"group_size", "bits"}``, or ``false`` for a layer left dense) ``affine4-g64 (3 layers
    differ)``. ``None`` for a dense checkpoint."""
    q = config.get("quantization") or config.get("quantization_config")
    if q is None:
        return None
    if not isinstance(q, dict):
        raise ValueError(f"[quantization_label] config.json's quantization is {q!r}, not a mapping.")
    if "bits" not in q:
        # Another library's scheme (e.g. transformers' {"quant_method": "gguf"}): named as it names itself.
        return str(q.get("quant_method", "quantized (unknown scheme)"))
    mode = str(q.get("mode", "affine"))
    # The names of QUANT_MODES: affine4, affine8; mxfp4, nvfp4, mxfp8 carry their bits already.
    label = f"{mode if mode[-1].isdigit() else mode + str(q['bits'])}-g{q.get('group_size', '?')}"
    overrides = [k for k, v in q.items() if isinstance(v, (dict, bool))]
    return label + (f" ({len(overrides)} layers differ)" if overrides else "")

# The tiny configs: 4 layers (enough for the depth curves to show growth), GQA (4 query heads over 2 kv heads), small vocab. Each names
# what its architecture must exercise (llama3 rope scaling, Gemma 3's sliding window that a
# prompt longer than the window crosses, GLM-4's partial rotary and attention bias).
_COMMON: dict[str, Any] = {
    "vocab_size": 96, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
}


def _llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**_COMMON, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    return LlamaForCausalLM(cfg)


def _qwen3() -> Any:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    return Qwen3ForCausalLM(Qwen3Config(**{**_COMMON, "tie_word_embeddings": True}))


def _gemma3() -> Any:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(**_COMMON, sliding_window=4, query_pre_attn_scalar=24,
                           layer_types=["sliding_attention", "full_attention"] * 2)
    return Gemma3ForCausalLM(cfg)


def _glm4() -> Any:
    from transformers import Glm4Config, Glm4ForCausalLM

    cfg = Glm4Config(**{**_COMMON, "partial_rotary_factor": 0.5, "attention_bias": True, "pad_token_id": 0})
    return Glm4ForCausalLM(cfg)


def _gpt_oss() -> Any:
    from transformers import GptOssConfig, GptOssForCausalLM

    # 4 experts, 2 per token; YaRN with a short original context so its ramp matters;
    # sliding (window 4) and full layers alternating, as transformers defaults.
    cfg = GptOssConfig(**_COMMON, num_local_experts=4, num_experts_per_tok=2, sliding_window=4,
                       rope_parameters={"rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0,
                                        "beta_slow": 1.0, "truncate": False,
                                        "original_max_position_embeddings": 64, "rope_theta": 150000.0})
    return GptOssForCausalLM(cfg)


BUILDERS: dict[str, Callable[[], Any]] = {
    "llama": _llama, "qwen3": _qwen3, "gemma3_text": _gemma3, "glm4": _glm4, "gpt_oss": _gpt_oss,
}
"""Tiny random transformers models by ``model_type``."""


def save_perturbed(model: Any, directory: Path, seed: int) -> Path:
    """Perturb every 1-D parameter of the transformers ``model`` (``+ 0.2 N(0, 1) + 0.05``,
    drawn with ``seed + 1``: a norm initialised to a constant hides a loader that reads
    q_norm for k_norm, or drops a bias) and save it into ``directory`` as safetensors."""
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.2 * torch.randn(p.shape, generator=gen) + 0.05)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def build_tiny(model_type: str, directory: Path, seed: int = 0) -> Path:
    """Write a tiny random ``model_type`` checkpoint (float32) with transformers into
    ``directory`` and return it. Weights ~ N(0, 0.02) as transformers initialises them;
    every 1-D parameter is then perturbed (``1 + 0.2 N(0, 1)`` scaled by its own mean
    magnitude, plus a shift) so no norm or bias is a constant."""
    if model_type not in BUILDERS:
        raise ValueError(f"[build_tiny] unknown model_type {model_type!r}; known: {sorted(BUILDERS)}.")
    from transformers.utils import logging

    logging.disable_progress_bar()
    torch.manual_seed(seed)
    save_perturbed(BUILDERS[model_type]().to(torch.float32), directory, seed)
    if model_type == "gemma3_text":
        # mlx-lm's Gemma 3 reads the older sliding_window_pattern, not layer_types; this
        # one gives the same layers (every second one full), so mlx-lm can anchor it too.
        cfg_path = directory / "config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        cfg["sliding_window_pattern"] = 2
        cfg_path.write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    return directory


def _stored_tensors(checkpoint: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of ``checkpoint``'s ``*.safetensors``, read one at a time (a whole 1B
    checkpoint is never held at once)."""
    for f in sorted(checkpoint.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            for name in h.keys():  # noqa: SIM118 (safe_open is not a Mapping)
                yield name, h.get_tensor(name)


SHARD_BYTES = 1 << 30
"""A derived checkpoint is written in shards of about this size, so that deriving holds one
shard, not the model (conformance/model/memory.py)."""


class _ShardWriter:
    """Writes tensors into ``model-0000i-of-0000n.safetensors`` shards of about
    :data:`SHARD_BYTES` (one shard: ``model.safetensors``), with transformers' index file."""

    def __init__(self, out: Path) -> None:
        self.out, self.pending, self.size, self.shards = out, dict[str, torch.Tensor](), 0, list[list[str]]()

    def add(self, name: str, t: torch.Tensor) -> None:
        self.pending[name] = t
        self.size += t.numel() * t.element_size()
        if self.size >= SHARD_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        save_file(self.pending, str(self.out / f"shard-{len(self.shards)}.tmp"), metadata={"format": "pt"})
        self.shards.append(list(self.pending))
        self.pending, self.size = {}, 0

    def close(self) -> None:
        self.flush()
        n = len(self.shards)
        names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        for i, name in enumerate(names):
            (self.out / f"shard-{i}.tmp").rename(self.out / name)
        if n > 1:
            weight_map = {t: name for name, keys in zip(names, self.shards, strict=True) for t in keys}
            (self.out / "model.safetensors.index.json").write_text(
                json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2), encoding="utf-8")


def _quantizable(name: str, t: torch.Tensor, group_size: int) -> bool:
    """mlx-lm's rule: linear and embedding weights whose last dim is a multiple of the group."""
    return name.endswith(".weight") and t.ndim == 2 and t.shape[-1] % group_size == 0


def derive(checkpoint: Path, out: Path, dtype: str, quant: str | None = None) -> Path:
    """Write ``checkpoint`` rounded to ``dtype`` (and quantized as ``quant``) into ``out``.

    Args:
        checkpoint: a Hugging Face-layout directory (``config.json``, ``*.safetensors``).
        out: directory to (re)create.
        dtype: ``float32``, ``float64`` (dense only), ``bfloat16`` or ``float16``: the
            stored dtype of every floating tensor (and the affine scales and biases).
        quant: a key of :data:`QUANT_MODES`, or None.

    Returns: ``out``.
    """
    if dtype not in _TORCH_DTYPES:
        raise ValueError(f"[derive] dtype must be one of {tuple(_TORCH_DTYPES)} but got {dtype!r}.")
    if quant is not None and quant not in QUANT_MODES:
        raise ValueError(f"[derive] quant must be one of {tuple(QUANT_MODES)} but got {quant!r}.")
    if quant is not None and dtype == "float64":
        raise ValueError("[derive] quantized layers take no float64 (MLX's quantized matmuls do not); "
                         "quantize with a float32 or half dtype.")

    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    target = _TORCH_DTYPES[dtype]
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    writer = _ShardWriter(out)
    for name, t in _stored_tensors(checkpoint):
        if not t.is_floating_point():
            writer.add(name, t)
            continue
        rounded = t.to(target)
        if quant is not None and _quantizable(name, rounded, QUANT_MODES[quant][0]):
            group_size, bits, mode = QUANT_MODES[quant]
            stem = name.removesuffix(".weight")
            wq, scales, biases = _quantize_by_rows(rounded, dtype, group_size, bits, mode)
            writer.add(f"{stem}.weight", torch.from_numpy(wq))
            writer.add(f"{stem}.scales", scales)
            if biases is not None:
                writer.add(f"{stem}.biases", biases)
        else:
            writer.add(name, rounded.contiguous())
    writer.close()
    config["torch_dtype"] = dtype
    config["dtype"] = dtype
    if quant is not None:
        group_size, bits, mode = QUANT_MODES[quant]
        config["quantization"] = {"group_size": group_size, "bits": bits, "mode": mode}
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return out


QUANTIZE_BLOCK_ELEMENTS = 1 << 24
"""Weight elements quantized in one call by :func:`derive` (a block of whole rows)."""


def _quantize_by_rows(weight: torch.Tensor, dtype: str, group_size: int, bits: int,
                      mode: str) -> tuple[np.ndarray, torch.Tensor, torch.Tensor | None]:
    """``mlx_impl.quantization.quantize`` of ``weight [..., out, in]`` (in ``dtype``) a block
    of rows at a time: codes (uint32, NumPy), scales and biases (torch; None for fp modes).

    Groups lie within a row, so blocks of rows give exactly the whole weight's codes. In one
    call, a 128k-row tied embedding's quantization took ~10 GB of float32 temporaries
    (measured: a Llama-3.2-1B's mxfp4 derive peaked at 12 GiB), and MLX keeps freed
    buffers in its cache up to its limit (raised by ``mlx_impl.cpu_backend.tune_cpu``), so
    the cache is emptied after each block."""
    import mlx.core as mx

    from mlx_impl.quantization import quantize

    mlx_dtype = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}[dtype]
    target = _TORCH_DTYPES[dtype]
    rows2d = weight.reshape(-1, weight.shape[-1])
    step = max(1, QUANTIZE_BLOCK_ELEMENTS // max(1, rows2d.shape[-1]))
    codes, scale_parts, bias_parts = [], [], []
    for start in range(0, rows2d.shape[0], step):
        block = mx.array(rows2d[start:start + step].to(torch.float32).numpy()).astype(mlx_dtype)
        wq, scales, biases = quantize(block, group_size, bits, mode)
        codes.append(np.array(wq))
        scale_parts.append(_mlx_to_torch(scales, target))
        if biases is not None:
            bias_parts.append(_mlx_to_torch(biases, target))
        del block, wq, scales, biases
        mx.clear_cache()
    lead = tuple(weight.shape[:-1])
    wq_all = np.concatenate(codes).reshape(*lead, -1)
    scales_all = torch.cat(scale_parts).reshape(*lead, -1)
    biases_all = torch.cat(bias_parts).reshape(*lead, -1) if bias_parts else None
    return wq_all, scales_all, biases_all


def _mlx_to_torch(a: Any, float_dtype: torch.dtype) -> torch.Tensor:
    """An MLX array as a torch tensor: uint8 codes kept, floats exact in ``float_dtype``."""
    import mlx.core as mx

    if a.dtype == mx.uint8:
        return torch.from_numpy(np.array(a))
    return torch.from_numpy(np.array(a.astype(mx.float32))).to(float_dtype)
