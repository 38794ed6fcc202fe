"""Meta-tests of the model-level conformance harness (``conformance/model``): a clean port
passes against the float64 oracle and transformers' own float64 model through a prefill
and 32 cached steps; planted bugs (RoPE offset off by one at decode, a cache appended
twice, a wrong eps in the port, a width-dependent matmul standing in for a kernel bug) are
caught and named by step, layer, op and cause (port / mlx-backend); the bound, the tie rule, the quantized
checkpoint layout and the command's report behave as documented."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from conformance.cli import main
from conformance.model.bounds import check_point, greedy_flip_is_tie
from conformance.model.checkpoints import BUILDERS, build_tiny, derive
from conformance.model.harness import run_config
from conformance.model.mutants import MUTANTS, OP_MUTANTS

DENSE_MUTANTS = [m for m in MUTANTS if m != "router_picks_last"]
"""Every planted numerical bug a dense model can carry (the router's needs a mixture of
experts: test_wrong_expert_choice_with_a_margin_fails)."""

EXPECTED_OPS = {
    # RoPE at the wrong position: the port's LayerRoPE, on the twin's inputs, is wrong.
    "rope_offset_off_by_one": ("self_attn.q_rope", "port"),
    # The cache hands attention one key too many: a wiring departure between ops.
    "cache_appended_twice": ("self_attn.sdpa", "port"),
}
"""The op (without ``layer i``) and cause attribution must give for each dense mutant."""


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("llama")
    checkpoint = build_tiny("llama", root / "ckpt")
    return checkpoint, derive(checkpoint, root / "float32", "float32")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("model_type", sorted(BUILDERS))
def test_port_conforms_with_transformers_anchor(model_type: str, dtype: str, tmp_path: Path) -> None:
    checkpoint = build_tiny(model_type, tmp_path / "ckpt")
    derived = derive(checkpoint, tmp_path / dtype, dtype)
    r = run_config(checkpoint, derived, model_type=model_type, dtype=dtype, quant=None, steps=32,
                   prompt_len=8, progress=False)
    assert r["departure"] is None, r["departure"]
    assert r["tokens"]["agree"] == 33 and not r["tokens"]["flips"]
    anchor = next(a for a in r["anchors"] if a["name"] == "transformers-float64")
    assert anchor["required"] and anchor["passed"] and anchor["steps_checked"] == 33, anchor
    assert r["passed"]
    # Every layer of every step was judged: (embed + layers + logits) x (prefill + 32 steps).
    assert len(r["points"]) == 33 * (r["layers"] + 2)
    if dtype == "float64":
        # MLX really computed in float64 at float32-sized error (its fast norms and RoPE round
        # to float32 inside), not at bfloat16's or worse: well inside the bound.
        assert max(p["ratio"] for p in r["points"]) < 1.0
        assert max(p["rel_err"] for p in r["points"]) < 1e-5


@pytest.mark.parametrize("layer", [None, 1])
@pytest.mark.parametrize("mutant", DENSE_MUTANTS)
def test_planted_bug_is_named_by_step_and_layer(llama: tuple[Path, Path], mutant: str, layer: int | None) -> None:
    checkpoint, derived = llama
    r = run_config(checkpoint, derived, model_type="llama", dtype="float32", quant=None, steps=3,
                   prompt_len=8, mutant=MUTANTS[mutant](layer), anchors=False, progress=False)
    assert not r["passed"]
    # Both bugs act on decode only: the prefill (step 0) conforms, the first cached step
    # departs at the layer the bug was planted in (all layers: the first one).
    assert r["departure"]["step"] == 1, r["departure"]
    assert r["departure"]["point"] == f"layer {0 if layer is None else layer}", r["departure"]
    assert all(p["passed"] for p in r["points"] if p["step"] == 0)
    op, cause = EXPECTED_OPS[mutant]
    assert r["departure"]["op"] == f"layer {0 if layer is None else layer} {op}", r["departure"]
    assert r["departure"]["cause"] == cause, r["departure"]
    # Every op before the named one conformed on identical inputs.
    checks = r["departure"]["op_checks"]
    assert checks[-1]["op"] == r["departure"]["op"] and all(c["port_ok"] for c in checks[:-1])
    # The op-calibrated rule (bounds.calibrated_factor) still fails the planted bug.
    calibrated = r["departure"]["calibrated"]
    assert not calibrated["passed"] and calibrated["worst_ratio"] > 10, calibrated


def test_attribution_releases_every_side_it_builds(llama: tuple[Path, Path],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Attribution's three models (oracle, twin, MLX) are each released before the
    configuration goes on: an MLX model left to the garbage collector kept MLX's buffer
    cache full (4.7 GiB on a 1B in float32), under the next side's peak."""
    import conformance.model.sides as sides

    released: list[str] = []
    original = sides.release

    def recording(side: object) -> None:
        released.append(str(getattr(side, "name", type(side).__name__)))
        original(side)

    # attribute() imports release from sides when it runs; the harness holds its own name.
    monkeypatch.setattr(sides, "release", recording)
    checkpoint, derived = llama
    r = run_config(checkpoint, derived, model_type="llama", dtype="float32", quant=None, steps=1,
                   prompt_len=8, mutant=MUTANTS["rope_offset_off_by_one"](None), anchors=False, progress=False)
    assert r["departure"]["op"] is not None, r["departure"]
    assert released == ["twin-float64", "twin-float32", "mlx"], released


@pytest.mark.parametrize("layer", [None, 2])
@pytest.mark.parametrize("mutant", sorted(OP_MUTANTS))
def test_planted_op_bug_is_attributed_to_its_op_and_cause(llama: tuple[Path, Path], mutant: str,
                                                          layer: int | None, tmp_path: Path) -> None:
    import subprocess
    import sys

    from conformance.repro import captured_reproducer

    checkpoint, derived = llama
    factory, op, cause = OP_MUTANTS[mutant]
    r = run_config(checkpoint, derived, model_type="llama", dtype="float32", quant=None, steps=1,
                   prompt_len=8, mutant=factory(layer), anchors=False, progress=False, capture_dir=tmp_path)
    dep = r["departure"]
    # A kernel bug bites wherever the op runs (the first down projection); the port's eps bug
    # where it was planted.
    where = 0 if layer is None or cause == "mlx-backend" else layer
    assert (dep["step"], dep["point"]) == (0, f"layer {where}"), dep
    assert dep["op"] == f"layer {where} {op}" and dep["cause"] == cause, dep
    assert not dep["calibrated"]["passed"] and not r["passed"], dep["calibrated"]
    if cause == "port":
        assert "own call conforms" in dep["cause_detail"] and dep["repro"] is None, dep
        return
    # A new divergence: the inputs are captured and the reproducer runs on them (the planted
    # bug is a patch of this process, so the standalone script shows MLX conforming there).
    assert dep["repro"].startswith("python -m conformance repro --inputs "), dep
    path = dep["repro"].split("--inputs ", 1)[1]
    script = captured_reproducer(path)
    assert "mx.matmul" in script
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    assert "max |MLX - float64|" in out.stdout, out.stdout


def test_recording_points_changes_nothing_and_names_agree(tmp_path: Path) -> None:
    from conformance.model.sides import MlxSide, TwinSide

    for model_type in ("qwen3", "gpt_oss"):
        checkpoint = build_tiny(model_type, tmp_path / model_type)
        derived = derive(checkpoint, tmp_path / f"{model_type}-f32", "float32")
        plain_m, rec_m = MlxSide(derived), MlxSide(derived)
        plain_t, rec_t = TwinSide(derived, "native", "t"), TwinSide(derived, "native", "t")
        for tokens in (np.arange(6)[None], np.array([[5]])):
            pm: dict[str, object] = {}
            pt: dict[str, object] = {}
            assert np.array_equal(plain_m.step(tokens)[0], rec_m.step(tokens, pm)[0])
            assert np.array_equal(plain_t.step(tokens)[0], rec_t.step(tokens, pt)[0])
            assert list(pm) == list(pt)
            assert "layer 0 self_attn.q_norm" in pm or model_type != "qwen3"
            assert "layer 3 mlp.router" in pm or model_type != "gpt_oss"


def test_calibrated_rule_scales_the_twin_reference_by_the_measured_op_ratio() -> None:
    from conformance.model.bounds import calibrated_factor

    assert calibrated_factor([]) == 1.0 and calibrated_factor([0.5, 0.9]) == 1.0
    assert calibrated_factor([1.2, 3.5, float("inf")]) == 3.5  # a failing op's inf is never a factor
    rng = np.random.default_rng(1)
    oracle = rng.standard_normal((1, 4, 64))
    peer = oracle + 1e-6 * rng.standard_normal(oracle.shape)
    side = oracle + 3 * (peer - oracle)  # 3x the twin: outside 2x, inside 2 x rho for rho = 2
    assert not check_point(side, peer, oracle, "float32").passed
    assert check_point(side, peer, oracle, "float32", peer_factor=2 * calibrated_factor([2.0])).passed
    assert "4 x ||twin" in check_point(oracle + 9 * (peer - oracle), peer, oracle, "float32", peer_factor=4.0).message


def test_participation_counts_the_channels_carrying_an_error() -> None:
    from conformance.model.bounds import participation

    assert participation(np.ones(64)) == pytest.approx(64)
    spike = np.full(64, 1e-3)
    spike[7] = 1.0
    assert participation(spike) < 1.01


def test_check_point_passes_the_twin_and_fails_three_times_its_error() -> None:
    rng = np.random.default_rng(0)
    oracle = rng.standard_normal((1, 4, 64))
    peer = oracle + 1e-6 * rng.standard_normal(oracle.shape)
    assert check_point(peer, peer, oracle, "float32").passed
    worse = oracle + 3 * (peer - oracle)
    check = check_point(worse, peer, oracle, "float32")
    assert not check.passed and check.kind == "value" and "Row (0," in check.message
    nan = peer.copy()
    nan[0, 1, 3] = np.nan
    assert check_point(nan, peer, oracle, "float32").kind == "nonfinite"


def test_greedy_flip_is_a_tie_only_inside_twice_the_bound() -> None:
    row = np.array([0.0, 1.0, 0.99, -3.0])
    assert greedy_flip_is_tie(row, 2, bound=0.006)
    assert not greedy_flip_is_tie(row, 2, bound=0.004)
    assert not greedy_flip_is_tie(row, 0, bound=0.1)


def test_derive_writes_mlx_quantized_layout(llama: tuple[Path, Path], tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    checkpoint, _ = llama
    affine = load_file(str(derive(checkpoint, tmp_path / "a", "bfloat16", "affine4") / "model.safetensors"))
    assert affine["model.layers.0.self_attn.q_proj.weight"].dtype == torch.uint32
    assert affine["model.layers.0.self_attn.q_proj.scales"].dtype == torch.bfloat16
    assert "model.layers.0.self_attn.q_proj.biases" in affine
    fp = derive(checkpoint, tmp_path / "f", "bfloat16", "mxfp4")
    tensors = load_file(str(fp / "model.safetensors"))
    assert tensors["model.layers.0.mlp.down_proj.scales"].dtype == torch.uint8
    assert "model.layers.0.mlp.down_proj.biases" not in tensors
    assert json.loads((fp / "config.json").read_text())["quantization"] == {
        "group_size": 32, "bits": 4, "mode": "mxfp4"}


def test_command_writes_report_and_names_a_planted_bug(llama: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, _ = llama
    common = ["model", str(checkpoint), "--dtype", "float32", "--steps", "2", "--prompt-len", "6",
              "--no-anchors", "--progress", "configs", "--no-tune"]
    assert main([*common, "--out", str(tmp_path / "ok")]) == 0
    html = (tmp_path / "ok" / "report.html").read_text()
    assert "<svg" in html and "relative error vs depth" in html
    assert json.loads((tmp_path / "ok" / "model.json").read_text())["results"][0]["passed"]
    assert main([*common, "--mutant", "rope_offset_off_by_one", "--out", str(tmp_path / "bad")]) == 1
    assert "FAIL | step 1, layer 0" in (tmp_path / "bad" / "report.md").read_text()


@pytest.mark.parametrize("mutant", DENSE_MUTANTS)
def test_planted_bug_is_caught_in_float64(llama: tuple[Path, Path], mutant: str, tmp_path: Path) -> None:
    checkpoint, _ = llama
    derived = derive(checkpoint, tmp_path / "float64", "float64")
    r = run_config(checkpoint, derived, model_type="llama", dtype="float64", quant=None, steps=3,
                   prompt_len=8, mutant=MUTANTS[mutant](1), anchors=False, progress=False)
    assert not r["passed"]
    assert r["departure"]["step"] == 1 and r["departure"]["point"] == "layer 1", r["departure"]
    assert "twin32" in r["departure"]["message"]
    worst = max(p["ratio"] for p in r["points"])
    assert worst > 100, worst  # an O(1) bug against a float32-sized bound


def test_check_point_float64_is_judged_against_the_float32_probe() -> None:
    rng = np.random.default_rng(0)
    oracle = rng.standard_normal((1, 4, 64))
    probe = oracle + 1e-5 * rng.standard_normal(oracle.shape)  # well above the float32 floor
    # The twin in float64 equal to the oracle does not collapse the bound...
    honest = oracle + 1e-6 * rng.standard_normal(oracle.shape)
    assert check_point(honest, oracle, oracle, "float64", probe).passed
    assert not check_point(honest, oracle, oracle, "float64").passed
    # ...and 3x the float32 probe's error fails.
    check = check_point(oracle + 3 * (probe - oracle), oracle, oracle, "float64", probe)
    assert not check.passed and "twin32" in check.message


@pytest.fixture(scope="module")
def gpt_oss_mxfp4(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("gpt_oss")
    checkpoint = build_tiny("gpt_oss", root / "ckpt")
    return checkpoint, derive(checkpoint, root / "bfloat16-mxfp4", "bfloat16", "mxfp4")


def test_gpt_oss_routing_ties_are_admitted(gpt_oss_mxfp4: tuple[Path, Path]) -> None:
    # The configuration once excluded: MLX's bfloat16 router ranks near-equal experts the
    # other way at some tokens; each is a tie its own (conforming) router-input error and
    # router rounding explain, and the trace continues with the oracle's experts there.
    checkpoint, derived = gpt_oss_mxfp4
    r = run_config(checkpoint, derived, model_type="gpt_oss", dtype="bfloat16", quant="mxfp4", steps=32,
                   prompt_len=8, anchors=False, progress=False)
    routing = r["routing"]
    assert routing["ties"] > 0 and not routing["flips"] and routing["departure"] is None, routing
    assert r["departure"] is None and r["passed"], r["departure"]


def test_wrong_expert_choice_with_a_margin_fails(gpt_oss_mxfp4: tuple[Path, Path]) -> None:
    checkpoint, derived = gpt_oss_mxfp4
    r = run_config(checkpoint, derived, model_type="gpt_oss", dtype="bfloat16", quant="mxfp4", steps=3,
                   prompt_len=8, mutant=MUTANTS["router_picks_last"](None), anchors=False, progress=False)
    assert not r["passed"]
    flips = r["routing"]["flips"]
    assert flips and flips[0]["step"] == 0, flips[:1]
    # The router input itself conforms: the failure is the choice, named by step, layer, token.
    assert r["routing"]["departure"] is None


def test_routing_flip_is_a_tie_only_inside_the_margin_the_input_error_allows() -> None:
    from conformance.model.bounds import routing_flip_is_tie

    weight = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    bias = np.zeros(3)
    x_oracle = np.array([1.0, 0.99])  # logits 1.0, 0.99, 0: experts 0 and 1 nearly tie
    logits = weight @ x_oracle + bias
    peer = (logits, x_oracle)  # a twin that rounds exactly
    near = x_oracle + np.array([-0.006, 0.006])  # ||dx|| ~ 0.0085, ||w0 - w1|| dx ~ 0.012 > 0.01
    assert routing_flip_is_tie(logits, np.array([0]), np.array([1]), (weight, bias), near, x_oracle,
                               *peer, "float32")
    tiny = x_oracle + np.array([-0.001, 0.001])  # too small an input error to swap them
    assert not routing_flip_is_tie(logits, np.array([0]), np.array([1]), (weight, bias), tiny, x_oracle,
                                   *peer, "float32")
    # Expert 2 (margin 1.0) is never a tie at that input error.
    assert not routing_flip_is_tie(logits, np.array([0]), np.array([2]), (weight, bias), near, x_oracle,
                                   *peer, "float32")
    assert routing_flip_is_tie(logits, np.array([0, 1]), np.array([1, 0]), (weight, bias), tiny, x_oracle,
                               *peer, "float32")


def test_float64_is_not_run_on_a_gpu_back_end_and_the_report_says_why(
        llama: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import conformance.execute

    # Only the back end's name is faked (no GPU is touched: nothing runs but the report).
    monkeypatch.setattr(conformance.execute, "backend_name", lambda: "cuda")
    checkpoint, _ = llama
    assert main(["model", str(checkpoint), "--dtype", "float64", "--steps", "1", "--prompt-len", "4",
                 "--no-anchors", "--progress", "configs", "--no-tune", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "model.json").read_text())
    assert report["results"] == []
    assert any("float64 not run" in n and "cuda" in n for n in report["notes"]), report["notes"]
    assert "float64 not run" in (tmp_path / "report.md").read_text()


def test_model_report_shows_the_routing_context() -> None:
    # The routing column shows what the JSON carries: the twin's own departures from the
    # oracle's experts and the router inputs' worst ratio, beside MLX's ties and flips.
    from conformance.model.report import _routing

    g = {"rows": 160, "ties": 17, "flips": [], "twin_departures": 3, "worst_input_ratio": 0.42, "departure": None}
    assert _routing({"routing": g}) == "17 ties / 160 token-layers (twin: 3 departures); router input ratio 0.42"
    g.update(flips=[{}], departure={"step": 2})
    assert _routing({"routing": g}).endswith("1 FLIPS (twin: 3 departures); router input ratio 0.42; "
                                             "router input departs at step 2")


def test_conforming_ops_over_the_premise_through_half_accumulation_are_named_as_the_backend() -> None:
    from conformance.model.attribution import OpCheck, known_backend

    checks = [OpCheck("layer 0 self_attn.q_proj", "nn.quantized_linear", True, True, 0.5, norm_ratio=3.0,
                      half_accumulation=True),
              OpCheck("layer 0 input_layernorm", "nn.rms_norm", True, True, 0.3, norm_ratio=9.0),
              OpCheck("layer 1 mlp.down_proj", "nn.quantized_linear", True, True, 0.7, norm_ratio=12.0,
                      half_accumulation=True)]
    named = known_backend(checks, "bfloat16")
    assert named is not None and named["cause"] == "mlx-backend" and named["op"] == "layer 1 mlp.down_proj"
    assert "2 quantized matmuls" in named["cause_detail"] and len(named["op_checks"]) == 3
    # Within the premise, or without the allowance (an rms_norm at 9x): not the back end's.
    assert known_backend([dataclasses.replace(checks[0], norm_ratio=1.5), checks[1]], "bfloat16") is None


def test_a_coarser_but_conforming_norm_is_attributed_to_the_bound_and_admitted(llama: tuple[Path, Path]) -> None:
    from conformance.model.mutants import norm_coarser

    checkpoint, derived = llama
    r = run_config(checkpoint, derived, model_type="llama", dtype="float32", quant=None, steps=1,
                   prompt_len=8, mutant=norm_coarser(), anchors=False, progress=False)
    dep = r["departure"]
    # The 2x rule departs; every op conforms to its own record (the norm's gamma_D admits a
    # statistic 24 u off), so the cause is the bound, named at a norm of the departing layer...
    assert dep is not None and dep["cause"] == "bound", dep
    assert dep["op"].startswith(dep["point"]) and dep["op"].endswith("norm"), dep
    assert all(c["port_ok"] and c["record_ok"] is not False for c in dep["op_checks"])
    # ...and the op-calibrated rule, rho measured at that norm (well above 2), admits it.
    calibrated = dep["calibrated"]
    assert calibrated["passed"] and calibrated["rho"] > 2 and calibrated["rho_op"].endswith("norm"), calibrated
    assert r["passed"]


def test_a_failing_attribution_leaves_the_verdict_and_says_why(llama: tuple[Path, Path],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import conformance.model.attribution

    def broken(*args: object, **kwargs: object) -> dict[str, object]:
        raise RuntimeError("planted")

    monkeypatch.setattr(conformance.model.attribution, "attribute", broken)
    checkpoint, derived = llama
    r = run_config(checkpoint, derived, model_type="llama", dtype="float32", quant=None, steps=1, prompt_len=8,
                   mutant=MUTANTS["rope_offset_off_by_one"](None), anchors=False, progress=False)
    dep = r["departure"]
    assert not r["passed"] and dep["cause"] == "unattributed" and "planted" in dep["cause_detail"], dep
    assert not dep["calibrated"]["passed"]
