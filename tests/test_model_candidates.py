"""Candidates judged by the model conformance (``conformance.model.judge``, ``--candidate``):

* a user's own MLX port defined outside the project (tests/user_port_example/my_port.py)
  conforms against transformers' float64 oracle on an architecture the twin does not
  implement (Mistral), and each of its planted bugs departs at the (step, point) where
  it was planted;
* its per-layer points come from taps on ``model.layers``; without layers the candidate
  is judged on logits only and the result says so;
* every way a candidate can be wrong (a bad spec, a loader that fails or returns the wrong
  thing, a model that crashes) and an oracle transformers cannot build raise the named
  errors with the reason;
* ``mlx_impl`` (the default) gives exactly the verdict ``run_config`` gives;
* ``--candidate mlx-lm`` runs from the CLI on a tiny Llama.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from conformance.cli import main
from conformance.model import CandidateLoadError, OracleLoadError, judge
from conformance.model.checkpoints import build_tiny, derive
from conformance.model.harness import run_config
from tests.user_port_example import my_port

PORT = "tests.user_port_example.my_port"
STEPS = 5
LAYERS = 4
POINTS = {"embed", *(f"layer {i}" for i in range(LAYERS)), "logits"}


@pytest.fixture(scope="module")
def mistral(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return my_port.build_tiny_mistral(tmp_path_factory.mktemp("mistral") / "ck")


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny("llama", tmp_path_factory.mktemp("llama") / "ck")


def test_user_port_conforms_against_transformers(mistral: Path) -> None:
    r = judge(mistral, candidate=f"{PORT}:load", steps=STEPS)
    # transformers' MLP has an activation module the port computes inline: skipped, said once.
    assert (r["candidate"], r["oracle"], r["hidden_states"], r["notes"]) == (
        f"{PORT}:load", "transformers", True, ["sub-layer points skipped (on the oracle only: mlp.act_fn)"])
    assert r["passed"] and r["departure"] is None, r["departure"]
    assert r["tokens"]["agree"] == STEPS + 1 and r["tokens"]["steps"] == STEPS + 1 and not r["tokens"]["flips"]
    # Every point of every step judged, and really compared (float32 rounding is not zero).
    assert len(r["points"]) == (STEPS + 1) * len(POINTS) and {p["point"] for p in r["points"]} == POINTS
    assert 0 < max(p["rel_err"] for p in r["points"]) < 1e-5
    json.dumps(r)  # JSON-ready


def test_user_port_conforms_quantized(mistral: Path) -> None:
    """affine4 with bfloat16 activations: the port loads MLX's quantized layout, the
    oracle a float64 copy of the codes' exact values, the peer the codes in bfloat16."""
    r = judge(mistral, candidate=f"{PORT}:load", dtype="bfloat16", quant="affine4", steps=2)
    assert r["oracle"] == "transformers" and r["passed"], r["departure"]
    # The sub-layer taps run on the quantized layers too (class-swapped QuantizedLinear).
    assert r["subpoints"]["checked"] == 3 * (LAYERS * 11 + 2) and r["subpoints"]["failed"] is None


@pytest.mark.parametrize(("loader", "step", "point", "op"), [
    # RoPE a position ahead from the first cached step, every layer: inside self_attn, in
    # code the port does not expose as a module (o_proj's input already departs).
    ("load_rope_bug", 1, "layer 0", "self_attn"),
    # layer 2's attention norm eps 1e-5 (config: 1e-6), from the prefill: the norm itself.
    ("load_eps_bug", 0, "layer 2", "input_layernorm"),
])
def test_planted_bug_departs_where_planted(mistral: Path, loader: str, step: int, point: str, op: str) -> None:
    r = judge(mistral, candidate=f"{PORT}:{loader}", steps=2)
    assert not r["passed"]
    assert (r["departure"]["step"], r["departure"]["point"], r["departure"]["kind"]) == (step, point, "value")
    # The op inside the layer (conformance/model/subpoints.py), named in the same layer.
    assert (r["departure"]["op"], r["departure"]["op_layer"]) == (op, int(point.split()[1])), r["departure"]
    # Far outside the bound, not a marginal call.
    worst = max(p["ratio"] for p in r["points"] if (p["step"], p["point"]) == (step, point))
    assert worst > 100


class _NoLayers:
    """A candidate whose layers are nowhere the taps look (a model wrapped by the user)."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def __call__(self, tokens: Any, cache: Any = None) -> Any:
        return self._model(tokens, cache=cache)


@pytest.mark.parametrize(("loader", "passes"), [(my_port.load, True), (my_port.load_rope_bug, False)])
def test_logits_only_without_layers(mistral: Path, loader: Any, passes: bool) -> None:
    def hidden(path: Path) -> Any:
        model, cache = loader(path)
        return _NoLayers(model), cache

    r = judge(mistral, candidate=hidden, steps=2)
    assert r["hidden_states"] is False
    assert any(n.startswith("logits only: no decoder layers at model.layers or model.model.layers")
               for n in r["notes"]), r["notes"]
    assert {p["point"] for p in r["points"]} == {"logits"} and len(r["points"]) == 3
    assert r["passed"] is passes
    if not passes:
        assert (r["departure"]["step"], r["departure"]["point"]) == (1, "logits")


class _StaleLayers(_NoLayers):
    """Layers at ``.layers`` that the forward pass never calls (a copy of the real ones)."""

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.layers = list(model.layers)


def test_logits_only_when_the_found_layers_are_not_called(mistral: Path) -> None:
    def stale(path: Path) -> Any:
        model, cache = my_port.load(path)
        return _StaleLayers(model), cache

    r = judge(mistral, candidate=stale, steps=2)
    assert r["hidden_states"] is False and r["passed"]
    assert "logits only: the forward pass called 0 of the 4 layers found at model.layers" in r["notes"]
    assert {p["point"] for p in r["points"]} == {"logits"}


def test_mlx_lm_layers_behind_a_property(tmp_path: Path) -> None:
    """mlx-lm's Qwen2 answers ``model.layers`` with a slice of ``model.model.layers`` (a
    copy): the taps must go on the stored list, or no layer would be seen. Qwen2 has no
    twin, so this is also mlx-lm against transformers' float64 oracle."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False)
    ck = tmp_path / "qwen2"
    Qwen2ForCausalLM(cfg).save_pretrained(ck)
    config = json.loads((ck / "config.json").read_text())
    config["rope_theta"] = config.pop("rope_parameters")["rope_theta"]  # mlx-lm reads the older keys
    (ck / "config.json").write_text(json.dumps(config))
    r = judge(ck, candidate="mlx-lm", steps=2)
    assert (r["oracle"], r["hidden_states"], r["notes"]) == ("transformers", True, [
        "sub-layer points skipped (on the oracle only: mlp.act_fn; not [B, L, ...]: self_attn.rope)"])
    assert {p["point"] for p in r["points"]} == {"embed", "layer 0", "layer 1", "logits"}
    # The sub-layer taps sit inside the stored layers too (every layer's points judged).
    assert {p["layer"] for p in r["subpoints"]["points"]} == {0, 1, None} and r["subpoints"]["departing"] == 0
    assert r["passed"], r["departure"]


def test_callable_candidate_without_cache_gets_mlx_lm_cache(mistral: Path) -> None:
    def model_only(path: Path) -> Any:
        return my_port.load(path)[0]

    r = judge(mistral, candidate=model_only, steps=2)
    assert r["passed"] and r["hidden_states"], r["departure"]
    assert r["candidate"].endswith("model_only")


@pytest.mark.parametrize(("spec", "why"), [
    ("my_port", "no colon found"),
    ("no_such_package.port:load", "cannot import module 'no_such_package.port'"),
    (f"{PORT}:lode", "has no attribute 'lode'"),
    (f"{PORT}:__doc__", "not a callable"),
    (":load", "both the module and the function"),
])
def test_bad_spec_is_refused(mistral: Path, spec: str, why: str) -> None:
    with pytest.raises(CandidateLoadError, match=why.replace("(", r"\(")):
        judge(mistral, candidate=spec, steps=1)


def _raise_on_load(path: Path) -> Any:
    raise FileNotFoundError("weights.npz")


class _Crashes:
    def __call__(self, tokens: Any, cache: Any = None) -> Any:
        raise IndexError("my kernel")


@pytest.mark.parametrize(("loader", "why"), [
    (_raise_on_load, "failed to load .*FileNotFoundError: weights.npz"),
    (lambda path: None, "returned NoneType, not a callable model"),
    (lambda path: (1, 2, 3), "returned a tuple of 3 items"),
    (lambda path: (my_port.load(path)[0], "cache"), "returned a cache of type str"),
    (lambda path: (_Crashes(), []), "crashed on tokens of shape \\(1, 8\\): IndexError: my kernel"),
])
def test_candidate_failures_are_named(mistral: Path, loader: Any, why: str) -> None:
    with pytest.raises(CandidateLoadError, match=why):
        judge(mistral, candidate=loader, steps=1)


def test_mlx_impl_on_an_architecture_it_lacks(mistral: Path) -> None:
    """The default candidate on an architecture without a twin (nor an mlx_impl port):
    a CandidateLoadError, raised before the oracle decodes."""
    with pytest.raises(CandidateLoadError, match=r"mlx_impl cannot load .*mistral"):
        judge(mistral, steps=1)


def test_oracle_that_transformers_cannot_build(mistral: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(mistral, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model_type"] = "no_such_architecture"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(OracleLoadError, match=r"transformers cannot build .*'no_such_architecture'"):
        judge(bad, candidate=f"{PORT}:load", steps=1)


@pytest.mark.parametrize(("kwargs", "why"), [
    ({"dtype": "float8"}, "dtype must be one of"),
    ({"quant": "affine3"}, "quant must be None or one of"),
    ({"oracle": "numpy"}, "oracle must be one of"),
    ({"oracle": "twin"}, "the twin implements .* not 'mistral'"),
    ({"steps": -1}, "steps must be >= 0"),
])
def test_bad_arguments(mistral: Path, kwargs: dict[str, Any], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        judge(mistral, candidate=f"{PORT}:load", **kwargs)


def test_an_mlx_quantized_checkpoint_runs_as_is(mistral: Path, tmp_path: Path) -> None:
    """A checkpoint already in MLX's quantized layout: judged as it is (transformers gets
    the dense copies), and quantizing it again is refused."""
    quantized = derive(mistral, tmp_path / "q", "bfloat16", "affine8")
    r = judge(quantized, candidate=f"{PORT}:load", dtype="bfloat16", steps=2, anchors=True)
    assert r["passed"] and r["anchors"] == [], r["departure"]
    with pytest.raises(ValueError, match="already quantized"):
        judge(quantized, candidate=f"{PORT}:load", dtype="bfloat16", quant="affine4")


def test_mlx_impl_default_is_run_configs_verdict(llama: Path, tmp_path: Path) -> None:
    r = judge(llama, steps=3)
    today = run_config(llama, derive(llama, tmp_path / "f32", "float32"), model_type="llama", dtype="float32",
                       quant=None, steps=3, prompt_len=8, anchors=False, progress=False)
    assert (r["candidate"], r["oracle"], r["hidden_states"], r["notes"]) == ("mlx_impl", "twin", True, [])
    for key in ("points", "departure", "tokens", "routing", "layers", "passed"):
        assert r[key] == today[key], key
    assert r["passed"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_mlx_impl_against_the_transformers_oracle(llama: Path, dtype: str) -> None:
    """The same port judged with transformers (made float64) as oracle and peer: the same
    verdict, every point (transformers' float64 model agrees with the twin's to ~1e-16:
    tests/test_model_hf_oracle.py). In float64 the reference is transformers in float32
    (the precision probe of bounds.py), as the twin in float32 is with the twin oracle."""
    r = judge(llama, oracle="transformers", dtype=dtype, steps=3)
    assert r["oracle"] == "transformers" and r["hidden_states"] and r["passed"], r["departure"]
    assert {p["point"] for p in r["points"]} == POINTS


def _default_rope_llama(directory: Path) -> Path:
    """A tiny Llama in the pre-5 config format with plain RoPE (mlx-lm 0.32.2 reads only
    the older keys: tests/test_models_mlx_lm.py says why)."""
    ck = build_tiny("llama", directory)
    cfg = json.loads((ck / "config.json").read_text())
    cfg["rope_theta"] = cfg.pop("rope_parameters")["rope_theta"]
    cfg["rope_scaling"] = None
    (ck / "config.json").write_text(json.dumps(cfg))
    return ck


def test_cli_candidate_mlx_lm_on_tiny_llama(tmp_path: Path) -> None:
    ck = _default_rope_llama(tmp_path / "ck")
    out = tmp_path / "out"
    assert main(["model", str(ck), "--candidate", "mlx-lm", "--dtype", "float32", "--steps", "3",
                 "--prompt-len", "8", "--no-anchors", "--progress", "configs", "--out", str(out)]) == 0
    (r,) = json.loads((out / "model.json").read_text())["results"]
    assert (r["candidate"], r["oracle"], r["hidden_states"], r["passed"]) == ("mlx-lm", "twin", True, True)
    assert len(r["points"]) == 4 * len(POINTS)
    assert "candidate mlx-lm; oracle: twin" in (out / "report.md").read_text()


def test_cli_reports_a_candidate_that_cannot_load(mistral: Path, tmp_path: Path) -> None:
    """float64: MLX's safetensors reader takes no F64, so the user's port cannot load it;
    the configuration is reported as a candidate error, the others still run."""
    out = tmp_path / "out"
    assert main(["model", str(mistral), "--candidate", f"{PORT}:load", "--dtype", "float32,float64",
                 "--steps", "1", "--prompt-len", "4", "--progress", "configs", "--out", str(out)]) == 1
    f32, f64 = json.loads((out / "model.json").read_text())["results"]
    assert f32["passed"] and f32["oracle"] == "transformers"
    assert f64["error"]["status"] == "CANDIDATE ERROR" and "F64" in f64["error"]["detail"]


@pytest.mark.parametrize(("args", "why"), [
    (["--candidate", "nocolon"], "no colon found"),
    (["--candidate", "mlx-lm", "--mutant", "rope_offset_off_by_one"], "--mutant plants a bug in mlx_impl"),
])
def test_cli_refuses_bad_candidate(mistral: Path, args: list[str], why: str) -> None:
    with pytest.raises(SystemExit, match=why):
        main(["model", str(mistral), *args])


def test_point_names_a_logits_only_comparison_as_logits() -> None:
    """With no hidden states (an oracle or candidate without decoder layers) the one point
    judged is the logits; with them, index 0 is the embedding and the last is the logits."""
    from conformance.model.harness import point_name

    assert point_name(0, 0) == "logits"
    assert [point_name(i, 3) for i in range(4)] == ["embed", "layer 0", "layer 1", "logits"]
