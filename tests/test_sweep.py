"""The architecture sweep's plumbing: discovery, the config shrink (a loadable model), the
result classification, the report and merge (crash and timeout rows, a departure named
where it happened), the triage matching, and one real pytest-xdist run with a fake judge
that departs, crashes its worker and hangs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conformance.model import sweep_cli, sweep_configs, sweep_report, sweep_triage
from conformance.model.sweep_discovery import discover
from conformance.model.sweep_run import Configuration, result_path, run_configuration

ROOT = Path(__file__).resolve().parent.parent


def test_discovery_finds_shared_text_architectures() -> None:
    d = discover()
    types = {a.model_type for a in d.architectures}
    assert {"llama", "qwen2", "qwen3", "phi3", "gemma3_text"} <= types
    # mistral is served by mlx-lm's llama module (its MODEL_REMAPPING)
    assert next(a for a in d.architectures if a.model_type == "mistral").mlx_lm_module == "llama"
    excluded = {e["model_type"]: e["reason"] for e in d.excluded}
    assert "gemma3" in excluded and "multimodal" in excluded["gemma3"]
    assert "gemma3" not in types
    assert d.versions["mlx-lm"] != "not installed" and d.versions["transformers"] != "not installed"
    assert len(d.architectures) >= 50


def test_discovery_rejects_unknown_arch() -> None:
    with pytest.raises(SystemExit, match="unknown or unsupported"):
        discover(["llama", "no_such_arch"])
    assert [a.model_type for a in discover(["qwen2"]).architectures] == ["qwen2"]


def test_shrink_per_layer_keeps_every_kind() -> None:
    pattern = ["sliding_attention"] * 5 + ["full_attention"]
    assert sweep_configs._shrink_per_layer(pattern * 4, 2) == ["sliding_attention", "full_attention"]
    assert sweep_configs._shrink_per_layer(["a", "a", "b", "c"], 4) == ["a", "b", "c", "a"]


def test_tiny_config_sizes_and_window() -> None:
    cfg = sweep_configs.tiny_config("gemma3_text")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.head_dim, cfg.vocab_size) == (64, 2, 16, 160)
    assert sorted(set(cfg.layer_types)) == ["full_attention", "sliding_attention"]
    assert cfg.sliding_window < 8  # shorter than the sweep's prompt
    moe = sweep_configs.tiny_config("qwen3_moe")
    assert (moe.num_experts, moe.num_experts_per_tok) == (4, 2)
    # expert widths a multiple of the affine group: every expert projection quantizes
    assert moe.moe_intermediate_size % 64 == 0
    mla = sweep_configs.tiny_config("deepseek_v3")
    assert mla.num_key_value_heads == mla.num_attention_heads and mla.kv_lora_rank == 16


def test_build_checkpoint_loads_in_both_libraries(tmp_path: Path) -> None:
    import mlx.core as mx
    import torch
    from mlx_lm.utils import load_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    ck = sweep_configs.build_checkpoint("qwen2", tmp_path / "qwen2")
    config = json.loads((ck / "config.json").read_text())
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"]
    assert "rope_theta" in config["_sweep_legacy_keys"]
    weights = load_file(str(ck / "model.safetensors"))
    for name, t in weights.items():
        if t.ndim == 1:  # every norm weight and bias perturbed, none constant
            assert t.std() > 0, name
    ids = np.array([[1, 5, 9, 2, 7, 3, 11, 4]])
    tf = AutoModelForCausalLM.from_pretrained(ck, dtype=torch.float64)
    ref = tf(torch.from_numpy(ids)).logits[0, -1].detach().numpy()
    model, _ = load_model(ck)
    got = np.array(model(mx.array(ids.astype(np.int32)))[0, -1].astype(mx.float32))
    # float32 against float64 through two layers of width 64: agreement to ~1e-6 relative
    # shows both libraries read the same weights and config.
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-4


def test_legacy_keys_spell_transformers4_names() -> None:
    written = {"model_type": "gemma3_text", "hidden_size": 64, "num_attention_heads": 4,
               "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                   "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}},
               "layer_types": ["sliding_attention", "full_attention"] * 2}
    added = sweep_configs.legacy_keys(object(), written)
    # no "rope_scaling": null next to per-layer-type RoPE (finding rope-scaling-null)
    assert added == {"rope_theta": 1e6, "rope_local_base_freq": 1e4, "head_dim": 16,
                     "sliding_window_pattern": 2}
    llama3 = {"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}, "head_dim": 16}
    got = sweep_configs.legacy_keys(object(), llama3)
    assert got["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0, "type": "llama3"}
    plain = sweep_configs.legacy_keys(object(), {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}})
    assert plain["rope_scaling"] is None  # transformers 4's explicit null
    assert "head_dim" not in got  # never one the config has


def _result(arch: str, label: str, status: str, reason: str | None = None, **extra: object) -> dict:
    dtype, _, quant = label.partition("+")
    return {"arch": arch, "dtype": dtype, "quant": quant or None, "label": label, "status": status,
            "reason": reason, "verdict": extra.get("verdict"), "legacy_keys": []}


def _report(results: list[dict], source: str = "") -> dict:
    discovery = {"architectures": [], "excluded": [], "versions": {"mlx-lm": "x", "transformers": "y"}}
    return sweep_report.build_report(results, candidate="mlx-lm", run={"seconds": 1, "jobs": 1},
                                     discovery=discovery, triage=sweep_triage.triage(results), source=source)


def test_collect_results_running_is_a_crash(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps(_result("llama", "float32", "running")))
    (tmp_path / "b.json").write_text(json.dumps(_result("llama", "bfloat16", "timeout", "no result within 5 s")))
    got = sweep_report.collect_results(tmp_path)
    assert [r["status"] for r in got] == ["crash", "timeout"]
    assert "worker died" in got[0]["reason"]


def test_report_names_the_departure_and_no_verdict_rows(tmp_path: Path) -> None:
    dep = {"departure": {"step": 5, "point": "layer 1", "kind": "bound", "message": "x"},
           "tokens": {"agree": 17, "steps": 17}}
    results = [_result("llama", "float32", "conforms", verdict={"tokens": {"agree": 17, "steps": 17}}),
               _result("qwen2", "float32", "departs", "step 5, layer 1", verdict=dep),
               _result("phi3", "float32", "crash", "worker died"),
               _result("glm", "float32", "timeout", "no result within 5 s"),
               _result("toy_arch", "float32", "candidate-load-error", "ValueError: Missing 14 parameters")]
    report = _report(results)
    s = report["summary"]
    assert (s["architectures"], s["verdicts"], s["conforming"], s["departing"]) == (5, 2, 1, 1)
    assert s["no_verdict"] == {"candidate-load-error": 1, "crash": 1, "timeout": 1}
    sweep_report.write_sweep_report(report, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "| qwen2 | departs | departs at step 5, layer 1 |" in md
    assert "crashed (worker died)" in md and "timed out" in md and "Missing 14 parameters" in md
    page = (tmp_path / "report.html").read_text()
    assert "<table>" in page and "departs at step 5, layer 1" in page and "<pre>" not in page
    assert json.loads((tmp_path / "sweep.json").read_text())["summary"] == s
    # every non-conforming row without a finding is listed as untriaged, and fails the exit status
    assert len(report["triage"]["untriaged"]) == 4
    assert sweep_cli.exit_status(report) == 1


def test_triage_explains_matching_rows() -> None:
    f = sweep_triage.Finding(id="x", kind="mlx-lm bug", archs=("qwen2",), statuses=("departs",),
                             summary="s", match="layer 1")
    results = [_result("qwen2", "float32", "departs", "step 5, layer 1"),
               _result("qwen2", "bfloat16", "departs", "step 0, embed")]
    t = sweep_triage.triage(results, [f])
    assert t["findings"][0]["configurations"] == ["qwen2 float32"]
    assert [u["label"] for u in t["untriaged"]] == ["bfloat16"]
    report = _report([_result("qwen2", "float32", "departs", "step 5, layer 1")])
    report["triage"] = sweep_triage.triage(report["configurations"], [f])
    assert sweep_cli.exit_status(report) == 0 and sweep_cli.exit_status(report, strict=True) == 1


def test_merge_keeps_each_machine_and_later_shard(tmp_path: Path) -> None:
    a = _report([_result("llama", "float32", "conforms")], source="cpu")
    b = _report([_result("llama", "float32", "departs", "step 1, logits")], source="cuda")
    c = _report([_result("llama", "float32", "crash", "worker died")], source="cpu")
    merged = sweep_report.merge_sweeps([a, b, c])
    got = {(r["source"], r["label"]): r["status"] for r in merged["configurations"]}
    assert got == {("cpu", "float32"): "crash", ("cuda", "float32"): "departs"}
    for i, rep in enumerate((a, b)):
        sweep_report.write_sweep_report(rep, tmp_path / str(i))
    from conformance.cli import main

    assert main(["merge", str(tmp_path / "0"), str(tmp_path / "1"), "--out", str(tmp_path / "m")]) == 0
    md = (tmp_path / "m" / "report.md").read_text()
    assert "float32 [cpu]" in md and "float32 [cuda]" in md
    with pytest.raises(SystemExit, match="only sweep reports"):
        main(["merge", str(tmp_path / "0"), str(tmp_path / "0" / "report.md"), "--out", str(tmp_path / "x")])


def test_run_configuration_classifies_a_build_failure(tmp_path: Path) -> None:
    cfg = Configuration("no_such_arch", "float32", None)
    r = run_configuration(cfg, results=tmp_path, work=tmp_path, candidate="mlx-lm")
    assert r["status"] == "not-built" and "no config" in r["reason"]
    assert json.loads(result_path(tmp_path, cfg).read_text())["status"] == "not-built"


def test_smoke_archs_match_noxfile() -> None:
    text = (ROOT / "noxfile.py").read_text()
    assert f'SWEEP_SMOKE_ARCHS = "{",".join(sweep_cli.SMOKE_ARCHS)}"' in text


def test_sweep_end_to_end_with_fake_judge(tmp_path: Path) -> None:
    """The real pytest-xdist + pytest-timeout run: qwen2 departs (bfloat16), hangs
    (float32: timeout) and kills its worker (affine4: crash); llama conforms dense and
    cannot load quantized. Every row lands in the report with its own outcome."""
    env = {**os.environ, "CONFORMANCE_SWEEP_JUDGE": "tests.sweep_fake.fake_judge:judge"}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "conformance", "sweep", "--arch", "llama,qwen2", "--timeout", "8",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "sweep.json").read_text())
    got = {(r["arch"], r["label"]): r["status"] for r in report["configurations"]}
    assert got == {("llama", "float32"): "conforms", ("llama", "bfloat16"): "conforms",
                   ("llama", "bfloat16+affine4"): "candidate-load-error",
                   ("qwen2", "float32"): "timeout", ("qwen2", "bfloat16"): "departs",
                   ("qwen2", "bfloat16+affine4"): "crash"}
    assert "departs at step 3, layer 1" in (out / "report.md").read_text()


def test_summary_keeps_the_departure_as_judged() -> None:
    # A logits-only comparison names its one point "logits" where it is judged
    # (harness.point_name); the summary reports the departure as it is, renaming nothing.
    from conformance.model.sweep_run import _summary

    for point in ("logits", "embed", "layer 1"):
        v = {"passed": False, "hidden_states": point != "logits",
             "tokens": {"agree": 17, "steps": 17, "ties": 0, "flips": []},
             "departure": {"step": 0, "point": point, "kind": "value", "message": "m"}}
        assert _summary(v)["departure"]["point"] == point
