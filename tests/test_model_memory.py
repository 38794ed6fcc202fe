"""Memory of the model comparison: transformers' float64 anchor streamed one module at a
time (bit-identical to the whole model), the per-configuration estimate, and the CLI's
refusal to start a run that cannot fit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conformance.model.checkpoints import build_tiny, derive
from conformance.model.memory import checkpoint_size, estimate, quantized_bytes
from conformance.model.streaming import Float64Tensors, streamed_transformers
from conformance.runinfo import ROOT

ARCHS = ("llama", "qwen3", "gemma3_text", "glm4", "gpt_oss")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {a: build_tiny(a, root / a) for a in ARCHS}


def _decode(model: torch.nn.Module) -> list[torch.Tensor]:
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    out = []
    with torch.no_grad():
        for ids in ([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3]], [[7]], [[11]]):  # prefill past Gemma's window, 2 steps
            out.append(model(input_ids=torch.tensor(ids), cache=cache, use_cache=True).logits)
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_streamed_transformers_is_bit_identical(tiny: dict[str, Path], arch: str) -> None:
    """The streamed float64 model computes exactly what from_pretrained(dtype=float64) does,
    in the prefill and in cached steps (tied heads, MoE experts and sliding windows included)."""
    from transformers import AutoModelForCausalLM

    whole = AutoModelForCausalLM.from_pretrained(str(tiny[arch]), dtype=torch.float64,
                                                 attn_implementation="eager", experts_implementation="eager")
    streamed = streamed_transformers(tiny[arch])
    for a, b in zip(_decode(whole), _decode(streamed), strict=True):
        assert a.dtype == b.dtype == torch.float64
        assert torch.equal(a, b)
    # No parameter stays resident between forwards: they live on the meta device.
    assert {p.device.type for p in streamed.parameters()} == {"meta"}


def test_streamed_weights_are_the_checkpoint_widened(tiny: dict[str, Path]) -> None:
    """Each tensor comes back as the stored one in float64; a tied head reads the embedding."""
    ck = tiny["qwen3"]  # tie_word_embeddings, no lm_head.weight stored
    stored = load_file(str(ck / "model.safetensors"))
    assert "lm_head.weight" not in stored
    tensors = Float64Tensors(ck, tied=True)
    assert "lm_head.weight" in tensors and len(tensors) == len(stored) + 1
    assert torch.equal(tensors["lm_head.weight"], stored["model.embed_tokens.weight"].double())
    name = "model.layers.0.self_attn.q_proj.weight"
    assert tensors[name].dtype == torch.float64 and torch.equal(tensors[name], stored[name].double())
    with pytest.raises(KeyError):
        tensors["model.layers.9.mlp.up_proj.weight"]
    assert "lm_head.weight" not in Float64Tensors(ck, tied=False)


def test_streaming_refuses_a_checkpoint_that_lacks_a_parameter(tiny: dict[str, Path], tmp_path: Path) -> None:
    """A weight stored under another name (a renaming load) is refused by name, not streamed as zeros."""
    src = tiny["llama"]
    tensors = load_file(str(src / "model.safetensors"))
    tensors["renamed.q_proj.weight"] = tensors.pop("model.layers.1.self_attn.q_proj.weight")
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((src / "config.json").read_text())
    with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.q_proj\.weight"):
        streamed_transformers(tmp_path)
    with pytest.raises(ValueError, match=r"no \*\.safetensors"):
        Float64Tensors(tmp_path / "missing", tied=False)


def test_checkpoint_size_reads_the_headers(tiny: dict[str, Path], tmp_path: Path) -> None:
    """Parameters, stored bytes and the largest tensor, from headers alone; packed codes count as bytes."""
    ck = tiny["llama"]
    stored = load_file(str(ck / "model.safetensors"))
    size = checkpoint_size(ck)
    assert size.params == sum(t.numel() for t in stored.values())
    assert size.stored_bytes == sum(t.numel() * t.element_size() for t in stored.values())
    assert size.largest == max(t.numel() for t in stored.values())
    assert not size.quantized
    q = checkpoint_size(derive(ck, tmp_path / "q", "bfloat16", "affine4"))
    assert q.quantized and q.stored_bytes < size.stored_bytes / 4


def test_estimate_is_the_largest_phase_not_the_sum() -> None:
    """Sides run one after another: the peak is the largest phase plus the process and outputs;
    quantized weights shrink every phase but the original's read."""
    from conformance.model.memory import CheckpointSize

    one_b = CheckpointSize(params=1_235_814_400, stored_bytes=2_471_628_800, largest=262_668_288, quantized=False)
    config = {"hidden_size": 2048, "num_hidden_layers": 16, "vocab_size": 128256}
    dense = estimate(one_b, config, "bfloat16", None, steps=1, prompt_len=16, transformers_anchor=False,
                     mlx_lm_anchor=True)
    assert dense.total == dense.base + max(dense.phases.values()) + dense.outputs
    assert dense.total < sum(dense.phases.values())
    f32 = estimate(one_b, config, "float32", None, steps=32, prompt_len=16, transformers_anchor=True,
                   mlx_lm_anchor=True)
    assert f32.phases["transformers float64 (streamed)"] == 2 * one_b.largest * 8
    # Measured peaks (CPU, prefill 16, README "Memory"): bfloat16 + 1 step, VmHWM 3.71 GiB;
    # float32 + 32 steps with both anchors and its attribution, VmHWM 6.02 GiB. The estimate
    # is above each and not far above (it refuses runs, so it must not be wild).
    for e, measured in ((dense, 3.98e9), (f32, 6.46e9)):
        assert measured <= e.total <= 1.3 * measured, e.describe()
    q4 = estimate(one_b, config, "bfloat16", "affine4", steps=8, prompt_len=16, transformers_anchor=False,
                  mlx_lm_anchor=True)
    assert q4.phases["MLX"] < dense.phases["MLX"] / 2
    assert quantized_bytes(64 * 10, 4, 64, 2, True) == 320 + 10 * 4


def test_cli_refuses_a_run_that_cannot_fit(tiny: dict[str, Path], tmp_path: Path) -> None:
    """Over the limit, the CLI says so with its estimate before any side runs, and writes nothing."""
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "conformance", "model", str(tiny["llama"]), "--dtype", "float32",
                           "--steps", "1", "--prompt-len", "2", "--memory-limit", "0.01", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode != 0
    assert "needs about" in proc.stderr and "nothing was run" in proc.stderr
    assert "llama float32" in proc.stderr
    assert " step " not in proc.stderr  # no side stepped
    assert not out.exists()


def test_report_records_the_estimate_and_the_peak(tiny: dict[str, Path], tmp_path: Path) -> None:
    """A run that fits reports its estimate and measured peak, and the estimate covers the peak."""
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "conformance", "model", str(tiny["llama"]), "--dtype", "float32",
                           "--steps", "2", "--prompt-len", "4", "--out", str(out), "--progress", "configs"],
                          cwd=ROOT, capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "model.json").read_text())
    memory = report["run"]["memory"]
    assert report["run"]["peak_rss_mb"] > 0
    (estimated,) = memory["estimated_gb"].values()
    assert report["run"]["peak_rss_mb"] * 2**20 <= estimated * 1e9
    assert np.isfinite(report["results"][0]["peak_rss_mb"])


def test_derive_writes_shards_that_every_side_loads(tiny: dict[str, Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """With small shards, derive writes several files and transformers' index, and the twin
    and MLX read the same weights as from one file (their logits equal bit for bit)."""
    import mlx.core as mx

    import conformance.model.checkpoints as checkpoints
    import torch_reference.models as twin
    from conformance.dtypes import mlx_to_numpy
    from mlx_impl import models as port

    one = derive(tiny["llama"], tmp_path / "one", "bfloat16", "affine4")
    monkeypatch.setattr(checkpoints, "SHARD_BYTES", 20_000)
    many = derive(tiny["llama"], tmp_path / "many", "bfloat16", "affine4")
    shards = sorted(p.name for p in many.glob("*.safetensors"))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((many / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(load_file(str(one / "model.safetensors")))
    assert not list(many.glob("*.tmp"))
    ids = [[3, 1, 4, 1, 5]]
    a, b = (twin.load(str(d), precision="float64")(torch.tensor(ids)) for d in (one, many))
    assert torch.equal(a, b)
    c, d = (mlx_to_numpy(port.load(str(p))(mx.array(ids))) for p in (one, many))
    assert np.array_equal(c, d)


def test_derive_quantizes_by_blocks_of_rows_to_the_same_codes(tiny: dict[str, Path], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """derive quantizes a block of rows at a time (memory): the same codes, scales and biases
    as one call per tensor, in every quantized mode (groups lie within a row)."""
    import conformance.model.checkpoints as checkpoints

    for quant in ("affine4", "mxfp4", "nvfp4"):
        whole = derive(tiny["qwen3"], tmp_path / f"{quant}-whole", "bfloat16", quant)
        monkeypatch.setattr(checkpoints, "QUANTIZE_BLOCK_ELEMENTS", 64 * 7)  # 7 rows of width 64 a block
        blocked = derive(tiny["qwen3"], tmp_path / f"{quant}-blocked", "bfloat16", quant)
        monkeypatch.undo()
        a = {k: v for f in sorted(whole.glob("*.safetensors")) for k, v in load_file(str(f)).items()}
        b = {k: v for f in sorted(blocked.glob("*.safetensors")) for k, v in load_file(str(f)).items()}
        assert a.keys() == b.keys() and any(k.endswith(".scales") for k in a)
        for k in a:
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
            assert torch.equal(a[k].view(torch.uint8) if a[k].dtype == torch.uint32 else a[k],
                               b[k].view(torch.uint8) if b[k].dtype == torch.uint32 else b[k]), k


def test_oracle_quantized_projection_in_blocks_is_the_same_product(tiny: dict[str, Path], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The oracle dequantizes a quantized projection a block of rows at a time (memory): its
    float64 logits equal the one-block product to float64 rounding, in every quantized mode."""
    import torch_reference.models as twin
    import torch_reference.models.checkpoint as twin_checkpoint

    ids = torch.tensor([[3, 1, 4, 1, 5, 9]])
    for quant in ("affine4", "mxfp4", "nvfp4"):
        q = derive(tiny["qwen3"], tmp_path / quant, "bfloat16", quant)  # tied head: the largest matrix
        whole = twin.load(str(q), precision="float64")(ids)
        monkeypatch.setattr(twin_checkpoint, "FLOAT64_BLOCK_ELEMENTS", 64 * 5)  # 5 rows a block
        blocked = twin.load(str(q), precision="float64")(ids)
        monkeypatch.undo()
        assert blocked.dtype == torch.float64
        torch.testing.assert_close(blocked, whole, rtol=1e-13, atol=0.0)


def test_twin_quantized_projection_in_blocks_is_the_same_product(tiny: dict[str, Path], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """In the test dtype too, a quantized projection larger than a block is computed a block
    of output rows at a time (whole, the 1B's tied head took 5.5 GiB of transients): the
    same logits, each the same float32-accumulated dot product rounded once to bfloat16."""
    import torch_reference.models as twin
    import torch_reference.models.checkpoint as twin_checkpoint

    ids = torch.tensor([[3, 1, 4, 1, 5, 9]])
    rows_seen: list[int] = []
    original = twin_checkpoint.quantized_matmul

    def recording(x: torch.Tensor, w: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        rows_seen.append(int(w.shape[0]))
        return original(x, w, *args, **kwargs)  # type: ignore[arg-type]

    for quant in ("affine4", "mxfp4", "nvfp4"):
        q = derive(tiny["qwen3"], tmp_path / quant, "bfloat16", quant)  # tied head: the largest matrix
        whole = twin.load(str(q))(ids)
        rows_seen.clear()
        monkeypatch.setattr(twin_checkpoint, "FLOAT64_BLOCK_ELEMENTS", 64 * 5)  # 5 rows a block
        monkeypatch.setattr(twin_checkpoint, "quantized_matmul", recording)
        blocked = twin.load(str(q))(ids)
        monkeypatch.undo()
        assert blocked.dtype == whole.dtype == torch.bfloat16
        assert rows_seen and max(rows_seen) <= 5, rows_seen
        # One bfloat16 rounding apart at most (BLAS may sum a narrower block in another order).
        torch.testing.assert_close(blocked, whole, rtol=2.0**-8, atol=0.0)


def test_oracle_dense_projection_in_blocks_is_the_same_product(tiny: dict[str, Path], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The oracle widens a large dense weight to float64 a block of output rows at a time
    (a whole 128k-row head would be a 2.1 GB transient): same logits to float64 rounding,
    with and without a bias (Llama's bias-free projections, GPT-OSS's biased ones)."""
    import torch_reference.models as twin
    import torch_reference.nn.linear as twin_linear

    ids = torch.tensor([[3, 1, 4, 1, 5, 9]])
    for arch in ("llama", "gpt_oss"):
        whole = twin.load(str(tiny[arch]), precision="float64")(ids)
        monkeypatch.setattr(twin_linear, "FLOAT64_BLOCK_ELEMENTS", 64 * 5)  # 5 rows of width 64 a block
        blocked = twin.load(str(tiny[arch]), precision="float64")(ids)
        monkeypatch.undo()
        assert blocked.dtype == torch.float64
        torch.testing.assert_close(blocked, whole, rtol=1e-13, atol=0.0)


def test_oracle_embedding_widens_only_the_rows_it_looks_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """The float64 lookup takes the rows, then widens them (exact either way): widening the
    table first was a 2.1 GB transient at every decode step of a 128k-vocabulary oracle."""
    import torch_reference.nn.embedding as twin_embedding
    from torch_reference.nn import Embedding

    widened: list[tuple[int, ...]] = []
    original = twin_embedding.to_working

    def recording(t: torch.Tensor | None, precision: str) -> torch.Tensor | None:
        if t is not None:
            widened.append(tuple(t.shape))
        return original(t, precision)

    monkeypatch.setattr(twin_embedding, "to_working", recording)
    table = torch.randn(1000, 16, dtype=torch.bfloat16)
    ids = torch.tensor([[7, 999, 7]])
    rows = Embedding(table)(ids, precision="float64")
    assert rows.dtype == torch.float64 and torch.equal(rows, table.to(torch.float64)[ids])
    assert widened and all(shape[0] <= ids.numel() for shape in widened), widened


def test_the_anchor_streams_only_what_would_not_fit_whole(tiny: dict[str, Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers' float64 anchor loads whole when 8 bytes a parameter stay within
    STREAM_ABOVE_BYTES, and streams otherwise."""
    import conformance.model.streaming as streaming
    from conformance.model.sides import TransformersSide
    from conformance.model.streaming import needs_streaming

    assert not needs_streaming(tiny["llama"]) and not TransformersSide(tiny["llama"]).streamed
    monkeypatch.setattr(streaming, "STREAM_ABOVE_BYTES", 1000)
    assert needs_streaming(tiny["llama"]) and TransformersSide(tiny["llama"]).streamed
