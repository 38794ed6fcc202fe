"""Sub-layer points of any candidate (``conformance/model/subpoints.py``): the named modules
inside each decoder layer recorded on the candidate (without editing it) and on the oracle's
library, judged with the layer rule, and the op a departure starts at named.

* mlx-lm on a tiny Llama, against the twin (``auto``) and against transformers: conforms
  with every sub-point inside the bound; with one projection's weights 1% off in layer 1,
  the departure is named at that projection;
* a user's port whose layer code (not a module) is wrong is named at the layer's code
  between the two exposed modules around it, or as code after the last exposed module;
* the naming rule itself on hand-made traces (an earlier layer's op named first, an op
  whose input already departs named by its enclosing module), and the rendering in the
  model report and the sweep's cell;
* the taps leave the candidate's modules what they were (``isinstance``, parameters).

The planted bugs of the user-port example (RoPE offset, norm eps) are named in
``tests/test_model_candidates.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conformance.model import judge
from conformance.model.checkpoints import build_tiny
from conformance.model.report import verdict
from conformance.model.subpoints import SubTrace, name_op, tap_mlx_layers
from conformance.model.sweep_report import cell_text
from tests.user_port_example import my_port

LLAMA_OPS = ["input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "self_attn", "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "mlp"]
"""mlx-lm's Llama layer's modules that transformers and the twin share, in mlx-lm's call order."""


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama in the pre-5 config format with plain RoPE (mlx-lm 0.32.2 reads only
    the older keys: tests/test_models_mlx_lm.py says why)."""
    ck = build_tiny("llama", tmp_path_factory.mktemp("llama") / "ck")
    cfg = json.loads((ck / "config.json").read_text())
    cfg["rope_theta"] = cfg.pop("rope_parameters")["rope_theta"]
    cfg["rope_scaling"] = None
    (ck / "config.json").write_text(json.dumps(cfg))
    return ck


@pytest.fixture(scope="module")
def mistral(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return my_port.build_tiny_mistral(tmp_path_factory.mktemp("mistral") / "ck")


def _up_proj_off(path: Path) -> Any:
    """mlx-lm's model with layer 1's ``mlp.up_proj`` weights 1% too large (a planted bug
    inside one projection)."""
    from mlx_lm.utils import load_model

    model, _ = load_model(Path(path))
    proj = model.model.layers[1].mlp.up_proj
    proj.weight = proj.weight * 1.01
    return model


@pytest.mark.parametrize("oracle", ["auto", "transformers"])
def test_mlx_lm_conforms_at_every_sub_point(llama: Path, oracle: str) -> None:
    r = judge(llama, candidate="mlx-lm", oracle=oracle, steps=2)
    assert r["passed"] and r["oracle"] == ("twin" if oracle == "auto" else "transformers")
    sub = r["subpoints"]
    assert sub["ops"] == LLAMA_OPS
    # Every shared op of both layers at every step judged, really compared, all inside.
    # ... and the head's two (the final norm, the output projection), layer None.
    assert {p["op"] for p in sub["points"] if p["layer"] is None} == {"model.norm", "lm_head"}
    assert sub["head_ops"] == ["model.norm", "lm_head"]
    assert sub["checked"] == 3 * (r["layers"] * len(LLAMA_OPS) + 2) and sub["departing"] == 0
    assert sub["failed"] is None
    assert 0 < sub["worst_ratio"] <= 1
    # mlx-lm's RoPE module sees [B, heads, L, D] (not a token row); transformers' MLP has an
    # activation module the twin and mlx-lm do not: both skipped and said once.
    assert sub["unshaped"] == ["self_attn.rope"]
    assert sub["only_oracle"] == ([] if oracle == "auto" else ["mlp.act_fn"])


@pytest.mark.parametrize("oracle", ["auto", "transformers"])
def test_a_projection_bug_is_named_at_that_projection(llama: Path, oracle: str) -> None:
    r = judge(llama, candidate=_up_proj_off, oracle=oracle, steps=2)
    d = r["departure"]
    assert not r["passed"] and (d["step"], d["point"]) == (0, "layer 1")
    assert (d["op"], d["op_layer"]) == ("mlp.up_proj", 1), d
    # A sharp step: the op far outside, its input and the layer's earlier ops inside.
    assert d["op_ratio"] > 100 and "its input 0." in d["op_detail"], d
    assert "the layer's earlier ops at most 0." in d["op_detail"]
    # Every op before it in layer 1 (and all of layer 0) conforms at step 0.
    at = LLAMA_OPS.index("mlp.up_proj")
    before = [p for p in r["subpoints"]["points"] if p["step"] == 0
              and (p["layer"] == 0 or (p["layer"] == 1 and LLAMA_OPS.index(p["op"]) < at))]
    assert len(before) == len(LLAMA_OPS) + at and all(p["passed"] for p in before)
    assert verdict(r).startswith("departs at step 0, layer 1, op mlp.up_proj (its output departs")


def _layer_code_bug(where: str) -> Any:
    """The user's port with layer 1's own code wrong (not a module): the attention's
    residual added 1% too strongly (``attn``), or the MLP's (``mlp``)."""

    def load(path: Path) -> Any:
        model, cache = my_port.load(path)
        layer = model.model.layers[1]
        cls = type(layer)

        def call(self: Any, x: Any, c: Any) -> Any:
            h = x + (1.01 if where == "attn" else 1.0) * self.self_attn(self.input_layernorm(x), c)
            return h + (1.01 if where == "mlp" else 1.0) * self.mlp(self.post_attention_layernorm(h))

        layer.__class__ = type("BuggyLayer", (cls,), {"__call__": call})
        return model, cache

    return load


def test_layer_code_between_modules_is_named(mistral: Path) -> None:
    r = judge(mistral, candidate=_layer_code_bug("attn"), steps=1)
    d = r["departure"]
    assert (d["step"], d["point"], d["op_layer"]) == (0, "layer 1", 1)
    assert d["op"] == "layer code between self_attn and post_attention_layernorm", d
    assert "post_attention_layernorm's input already departs" in d["op_detail"]


def test_layer_code_after_the_last_module_is_said(mistral: Path) -> None:
    r = judge(mistral, candidate=_layer_code_bug("mlp"), steps=1)
    d = r["departure"]
    assert (d["step"], d["point"], d["op"]) == (0, "layer 1", None)
    assert d["op_detail"].endswith("after its last exposed module (mlp)"), d
    # Every exposed op up to layer 1 conforms at the prefill (later layers carry the change).
    assert all(p["passed"] for p in r["subpoints"]["points"]
               if p["step"] == 0 and p["layer"] is not None and p["layer"] <= 1)


def _final_norm_eps(path: Path) -> Any:
    """The user's port with the final norm's eps 1e-2 (config: 1e-6)."""
    import mlx.nn as nn

    model, cache = my_port.load(path)
    weight = model.model.norm.weight
    model.model.norm = nn.RMSNorm(weight.shape[0], eps=1e-2)
    model.model.norm.weight = weight
    return model, cache


def test_a_head_bug_is_named_at_the_logits(mistral: Path) -> None:
    r = judge(mistral, candidate=_final_norm_eps, steps=1)
    d = r["departure"]
    assert (d["step"], d["point"], d["op"], d["op_layer"]) == (0, "logits", "model.norm", None), d
    assert verdict(r).startswith("departs at step 0, logits, op model.norm (its output departs")


def test_no_subpoints_names_no_op(mistral: Path) -> None:
    r = judge(mistral, candidate=f"{my_port.__name__}:load_eps_bug", steps=0, subpoints=False)
    assert "subpoints" not in r and "op" not in r["departure"] and (r["departure"]["point"]) == "layer 2"


def _pt(step: int, layer: int, op: str, enter: int, exit_: int, passed: bool, input_passed: bool | None = None,
        ratio: float = 0.5) -> dict[str, Any]:
    p: dict[str, Any] = {"step": step, "layer": layer, "op": op, "ratio": ratio if passed else 50.0,
                         "passed": passed, "_enter": enter, "_exit": exit_}
    if input_passed is not None:
        p.update(input_passed=input_passed, input_ratio=0.5 if input_passed else 40.0)
    return p


def test_name_op_rule() -> None:
    # Layer 0 at step 1: norm, then attention (q_proj, o_proj inside), then mlp.
    layer0 = [_pt(1, 0, "input_layernorm", 1, 2, True), _pt(1, 0, "self_attn.q_proj", 4, 5, True),
              _pt(1, 0, "self_attn.o_proj", 6, 7, False, input_passed=False), _pt(1, 0, "self_attn", 3, 8, False),
              _pt(1, 0, "mlp", 9, 10, True)]
    layer1 = [_pt(1, 1, "input_layernorm", 11, 12, False, input_passed=True)]
    sub = {"points": [*layer0, *layer1]}
    # A departure at layer 1 whose first departing sub-point is in layer 0 (a conforming layer).
    named = name_op(sub, 1, 1)
    assert (named["op"], named["op_layer"], named["op_in_layer"]) == ("self_attn", 0, "input_layernorm")
    assert "between self_attn.q_proj and self_attn.o_proj" in named["op_detail"]
    assert named["op_detail"].endswith("; in layer 1 itself: input_layernorm (its output departs (ratio 50; its "
                                       "input 0.5))")
    # Only layer 1's op departing: named itself (input conforms).
    sub = {"points": [*(dict(p, passed=True) for p in layer0), *layer1]}
    assert (name_op(sub, 1, 1)["op"], name_op(sub, 1, 1)["op_layer"]) == ("input_layernorm", 1)
    # Nothing of the departing layer itself departs: said, with its last exposed op.
    quiet = {"points": [*layer0, dict(layer1[0], passed=True)]}
    named = name_op(quiet, 1, 1)
    assert (named["op"], named["op_layer"], named["op_in_layer"]) == ("self_attn", 0, None)
    assert named["op_detail"].endswith("; no exposed op of layer 1 itself departs (the change there is after "
                                       "input_layernorm)")
    # Another step's departures do not name this one.
    assert name_op(sub, 0, 1)["op"] is None
    # The report and the sweep's cell say where.
    d = {"step": 1, "point": "layer 1", "kind": "value", "message": "m", "op": "self_attn", "op_layer": 0,
         "op_detail": "inside self_attn"}
    r = {"passed": False, "departure": d, "tokens": {"flips": []}, "anchors": []}
    assert verdict(r) == "departs at step 1, layer 1, op self_attn in layer 0 (inside self_attn)"
    assert cell_text({"status": "departs", "verdict": {"departure": d}}) == \
        "departs at step 1, layer 1, op self_attn in layer 0"


def test_taps_leave_the_modules_what_they_were() -> None:
    import mlx.core as mx
    import mlx.nn as nn

    layer = nn.Sequential(nn.Linear(4, 4), nn.RMSNorm(4))
    q = nn.QuantizedLinear(64, 8)
    layers = [layer, q]
    before = [np.array(layer.layers[0].weight)]
    trace = SubTrace(lambda a: np.array(a), deferred=True)
    # layer 1 has no named submodules; layer 0 has two.
    assert tap_mlx_layers(layers, trace) == 2
    assert tap_mlx_layers(layers, trace) == 0  # never twice
    assert isinstance(layer.layers[0], nn.Linear) and isinstance(layer.layers[1], nn.RMSNorm)
    assert [k for k, _ in layer.named_modules()] == ["", "layers.1", "layers.0"]
    assert np.array_equal(before[0], np.array(layer.layers[0].weight))
    trace.begin((1, 3))
    y = layer(mx.ones((1, 3, 4)))
    mx.eval(y)
    trace.end()
    calls = trace.steps[0]
    assert sorted(calls) == [(0, "layers.0"), (0, "layers.1")]
    # Rows per token, float32 (exact for a float32 side), in call order.
    assert calls[(0, "layers.1")].out.shape == (3, 4) and calls[(0, "layers.1")].out.dtype == np.float32
    assert calls[(0, "layers.0")].exit < calls[(0, "layers.1")].enter
    assert np.array_equal(calls[(0, "layers.1")].out, np.array(y).reshape(3, 4))
    # The same array recorded twice in a step is stored once.
    assert calls[(0, "layers.1")].inp is calls[(0, "layers.0")].out


def test_torch_hooks_copy_at_once_and_share_only_unchanged_tensors() -> None:
    """transformers' side: a tensor is copied when its module returns (an in-place op after
    it cannot change the record), and a tensor changed in place since is not taken for the
    copy already made (torch's ``_version``)."""
    import torch

    from conformance.dtypes import torch_to_numpy
    from conformance.model.subpoints import attach, hook_torch_layers

    torch.manual_seed(0)
    layers = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(inplace=True),
                                                       torch.nn.Identity())])
    trace = SubTrace(torch_to_numpy)
    assert hook_torch_layers(layers, trace, {"2": "last"}) == 3

    class Side:
        def step(self, tokens: np.ndarray) -> Any:
            with torch.no_grad():
                return layers[0](torch.randn(*tokens.shape, 4))

    side = Side()
    attach(side, trace)
    side.step(np.zeros((1, 5), dtype=np.int64))
    calls = trace.steps[0]
    assert sorted(op for _, op in calls) == ["0", "1", "last"]  # renamed by the alias
    linear, relu, last = calls[(0, "0")], calls[(0, "1")], calls[(0, "last")]
    assert linear.out.shape == (5, 6) and (linear.out < 0).any()  # the pre-ReLU copy kept
    assert (relu.out >= 0).all() and relu.inp is not linear.out  # changed in place: converted again
    assert last.inp is relu.out and last.out is relu.out  # the same unchanged tensor: stored once
    assert linear.exit < relu.enter < relu.exit < last.enter


def test_sweep_rows_show_the_op_and_the_inside_conforming_points(tmp_path: Path) -> None:
    from conformance.model import sweep_report, sweep_triage
    from conformance.model.sweep_run import _summary

    inside = {"step": 0, "layer": 1, "op": "self_attn.indexer.k_norm", "ratio": 472.1, "passed": False}
    judged = {"passed": True, "departure": None, "tokens": {"agree": 17, "steps": 17, "ties": 0, "flips": []},
              "points": [{"ratio": 0.5}],
              "subpoints": {"ops": ["input_layernorm"], "checked": 10, "departing": 1, "inside_conforming": 1,
                            "inside_conforming_first": [inside], "points": [inside]}}
    summary = _summary(judged)
    assert summary["subpoints"]["inside_conforming"] == 1 and "points" not in summary["subpoints"]
    dep = {"step": 0, "point": "layer 0", "kind": "value", "message": "m", "op": "self_attn", "op_layer": 0,
           "op_detail": "inside self_attn, between self_attn.v_proj and self_attn.o_proj"}
    results = [{"arch": a, "dtype": "float32", "quant": None, "label": "float32", "status": st, "reason": None,
                "verdict": v, "legacy_keys": []}
               for a, st, v in (("deepseek_v32", "conforms", summary),
                                ("mistral", "departs", {"departure": dep, "tokens": {"agree": 17, "steps": 17}}))]
    discovery = {"architectures": [], "excluded": [], "versions": {}}
    report = sweep_report.build_report(results, candidate="mlx-lm", run={"seconds": 1, "jobs": 1},
                                       discovery=discovery, triage=sweep_triage.triage(results))
    sweep_report.write_sweep_report(report, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "| mistral | departs | departs at step 0, layer 0, op self_attn |" in md
    assert "| deepseek_v32 | float32 | 1 | step 0, layer 1 self_attn.indexer.k_norm (472.1) |" in md
    page = (tmp_path / "report.html").read_text()
    assert "departs at step 0, layer 0, op self_attn" in page and "self_attn.indexer.k_norm (472.1)" in page


def _q_prescaled(path: Path) -> Any:
    """The user's port with layer 0's queries made twice as large by ``q_proj`` and the
    attention scale halved to match (a convention: the layer computes the same, exactly,
    as a power of 2 rescales without rounding)."""
    import mlx.core as mx

    model, cache = my_port.load(path)
    attn = model.model.layers[0].self_attn
    attn.q_proj.weight = attn.q_proj.weight * 2.0
    cls = type(attn)

    def call(self: Any, x: Any, c: Any) -> Any:
        b, n, _ = x.shape
        q = self.q_proj(x).reshape(b, n, self.heads, self.head_dim).transpose(0, 2, 1, 3)
        k = self.k_proj(x).reshape(b, n, self.kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(b, n, self.kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        q = mx.fast.rope(q, self.head_dim, traditional=False, base=self.theta, scale=1.0, offset=c.offset)
        k = mx.fast.rope(k, self.head_dim, traditional=False, base=self.theta, scale=1.0, offset=c.offset)
        k, v = c.update_and_fetch(k, v)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.5 * self.head_dim ** -0.5,
                                                   mask="causal" if n > 1 else None)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(b, n, -1))

    attn.__class__ = type("PrescaledAttention", (cls,), {"__call__": call})
    return model, cache


def test_a_sub_point_departing_inside_a_conforming_layer_is_reported_not_failed(mistral: Path) -> None:
    """The same module name need not compute the same quantity: here ``q_proj`` returns
    twice the oracle's queries and the layer is exact. The configuration conforms; the
    sub-point is counted and noted."""
    r = judge(mistral, candidate=_q_prescaled, steps=2)
    assert r["passed"] and r["departure"] is None
    sub = r["subpoints"]
    bad = [(p["step"], p["layer"], p["op"]) for p in sub["points"] if not p["passed"]]
    assert bad == [(s, 0, "self_attn.q_proj") for s in range(3)]
    assert sub["inside_conforming"] == 3
    assert any(n.startswith("3 sub-layer point(s) depart inside conforming layers before any departure")
               for n in r["notes"]), r["notes"]


def test_row_store_keeps_exact_aligned_read_only_copies() -> None:
    from conformance.model.subpoints import RowStore

    store = RowStore()
    store.CHUNK = 1024  # small chunks: the spill into a new map is exercised
    rng = np.random.default_rng(0)
    kept = []
    for i in range(40):
        rows = rng.standard_normal((3, 1 + i % 7)).astype(np.float32 if i % 2 else np.float64)
        kept.append((rows.copy(), store.put(rows)))
        rows[...] = 0  # the source changing later does not reach the copy
    big = rng.standard_normal((4, 300))  # larger than a chunk: a map of its own
    kept.append((big.copy(), store.put(big)))
    for want, got in kept:
        assert got.dtype == want.dtype and np.array_equal(got, want)
        assert got.ctypes.data % got.dtype.itemsize == 0 and not got.flags.writeable


@pytest.mark.parametrize("flag", [[], ["--no-subpoints"]])
def test_cli_names_the_op_unless_told_not_to(mistral: Path, tmp_path: Path, flag: list[str]) -> None:
    from conformance.cli import main

    out = tmp_path / "out"
    assert main(["model", str(mistral), "--candidate", f"{my_port.__name__}:load_eps_bug", "--dtype", "float32",
                 "--steps", "0", "--prompt-len", "8", "--no-anchors", "--progress", "configs", "--out", str(out),
                 *flag]) == 1
    (r,) = json.loads((out / "model.json").read_text())["results"]
    md = (out / "report.md").read_text()
    assert "| ck float32 | FAIL | step 0, layer 2" in md
    if flag:
        assert "subpoints" not in r and "op input_layernorm" not in md
    else:
        assert r["departure"]["op"] == "input_layernorm" and "| step 0, layer 2, op input_layernorm |" in md
