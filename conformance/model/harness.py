"""Model-level conformance of one checkpoint in one dtype (or quantized mode).

Three answers from the same weights and tokens: MLX (``mlx_impl.models``) in the test
dtype, the twin (``torch_reference.models``) in the test dtype, and the twin in float64
(the oracle). The oracle decodes greedily: a prefill of ``prompt_len`` random tokens (or a
text prompt's, ``prompt_ids``), then ``steps`` cached single-token steps, each feeding the
oracle's argmax. The other sides
replay exactly those tokens through their own caches (teacher forcing), so every step is
compared on the same input. At every (step, point), with points the embedding output,
each decoder layer's output and the logits, MLX is judged against the oracle with the
twin as reference (:mod:`conformance.model.bounds`); the first point that leaves the
bound is the departure. Greedy agreement counts the steps whose MLX argmax equals the
oracle's; a flip inside the oracle's top-2 margin (``<= 2 x`` the bound) is a tie, not a
failure. In float32 and float64 without quantization, transformers' own float64 model is
the external anchor (its logits at every step); mlx-lm, where it implements the
architecture, is judged like MLX at every step. A float64 configuration (CPU back end)
also replays the twin in float32 on the same weights, the precision probe of
:mod:`conformance.model.bounds`. A mixture-of-experts model's routing is judged per
(step, MoE layer, token) (:func:`_routing`): a different choice of experts must be a tie,
and the sides continue with the oracle's experts there so the trace stays comparable.
Where the trace departs, :mod:`conformance.model.attribution` names the op and the cause
(``departure["op"]``, ``["cause"]``, ``["cause_detail"]``, ``["repro"]``, ``["op_checks"]``),
and ``departure["calibrated"]`` judges the trace again with the op-calibrated rule
(:func:`conformance.model.bounds.calibrated_factor`); a departure attributed to the bound
that this rule admits does not fail the configuration.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from conformance.model.bounds import check_point, greedy_flip_is_tie, routing_flip_is_tie
from conformance.model.checkpoints import derive
from conformance.model.memory import peak_rss_bytes
from conformance.model.sides import (
    MlxLmSide,
    MlxSide,
    Side,
    TransformersSide,
    TwinSide,
    mlx_lm_supports,
    moe_layers,
    release,
)

Mutant = Callable[[], contextlib.AbstractContextManager[Any]]
"""A context manager factory planting a bug in the MLX side while it runs (meta-tests)."""


def point_name(index: int, n_hidden: int) -> str:
    """Name of hidden-state ``index`` (``embed``, ``layer 0`` ...) or ``logits`` past the end
    (a logits-only comparison, ``n_hidden == 0``, has only ``logits``)."""
    if index >= n_hidden:
        return "logits"
    if index == 0:
        return "embed"
    return f"layer {index - 1}"


def _log(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)


def _oracle_tokens(oracle: Side, prompt: np.ndarray, steps: int, progress: bool,
                   label: str) -> tuple[list[np.ndarray], list[tuple[np.ndarray, list[np.ndarray]]]]:
    """Greedy decode with the oracle; returns the per-step inputs and its outputs."""
    inputs = [prompt]
    outputs = []
    for s in range(steps + 1):
        out = oracle.step(inputs[s])
        outputs.append(out)
        if s < steps:
            inputs.append(np.argmax(out[0][:, -1:, :], axis=-1).astype(np.int64))
        _log(progress, f"  [{label}] oracle step {s}/{steps}")
    return inputs, outputs


def _replay(side: Side, inputs: list[np.ndarray], progress: bool,
            label: str) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    outputs = []
    for s, tokens in enumerate(inputs):
        outputs.append(side.step(tokens))
        _log(progress, f"  [{label}] {side.name} step {s}/{len(inputs) - 1}")
    return outputs


def _sig(value: float) -> float:
    return float(f"{value:.4g}")


def _judge_trace(side_out: list[tuple[np.ndarray, list[np.ndarray]]],
                 peer_out: list[tuple[np.ndarray, list[np.ndarray]]],
                 oracle_out: list[tuple[np.ndarray, list[np.ndarray]]], dtype: str,
                 with_hidden: bool, probe_out: list[tuple[np.ndarray, list[np.ndarray]]] | None = None,
                 ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Every (step, point) judged; returns the points and the first departure.
    ``probe_out``: the twin in float32 (float64 configurations; see bounds.py)."""
    points: list[dict[str, Any]] = []
    departure = None
    probes = _per_step(probe_out, len(oracle_out))
    for s, ((lg, hs), (plg, phs), (olg, ohs), pr) in enumerate(zip(side_out, peer_out, oracle_out, probes,
                                                                     strict=True)):
        if with_hidden and len(hs) != len(ohs):
            raise ValueError(f"[model conformance] step {s}: {len(hs)} hidden states but the oracle "
                             f"gave {len(ohs)}.")
        pairs = [*zip(hs, phs, ohs, strict=True)] if with_hidden else []
        pairs.append((lg, plg, olg))
        probe_pts: list[np.ndarray | None] = [None] * len(pairs)
        if pr is not None:
            probe_pts = [*pr[1], pr[0]] if with_hidden else [pr[0]]
        for i, ((a, p, o), q) in enumerate(zip(pairs, probe_pts, strict=True)):
            index = i if with_hidden else len(ohs)
            check = check_point(a, p, o, dtype, q)
            # 4 significant digits: the report plots and compares these, and a long run
            # on a deep model has (layers + 2) x (steps + 1) points per configuration.
            entry = {"step": s, "point": point_name(index, len(ohs)), "index": index,
                     "rel_err": _sig(check.rel_err), "peer_rel_err": _sig(check.peer_rel_err),
                     "ratio": _sig(check.ratio), "passed": check.passed}
            if not check.passed:
                entry["message"] = check.message
                if departure is None:
                    departure = {"step": s, "point": entry["point"], "kind": check.kind,
                                 "message": check.message}
            points.append(entry)
    return points, departure


def _calibrated(departure: dict[str, Any], side_out: list[tuple[np.ndarray, list[np.ndarray]]],
                peer_out: list[tuple[np.ndarray, list[np.ndarray]]],
                oracle_out: list[tuple[np.ndarray, list[np.ndarray]]], dtype: str,
                probe_out: list[tuple[np.ndarray, list[np.ndarray]]] | None) -> dict[str, Any]:
    """The whole trace judged again with the op-calibrated rule
    (:func:`conformance.model.bounds.calibrated_factor`): rho from the ops that conform
    on identical inputs (attribution's ``op_checks``; a failing op or wiring gives none)."""
    from conformance.model.bounds import CALIBRATED_RULE, calibrated_factor

    conforming = [c for c in departure.get("op_checks", []) if c["port_ok"] and c["record_ok"] is not False]
    rho = calibrated_factor([c["norm_ratio"] for c in conforming])
    # The op rho comes from: an infinite ratio (the twin exact, as the float64 twin is) gives
    # no factor (calibrated_factor), so it cannot be the one named either.
    finite = [c for c in conforming if np.isfinite(c["norm_ratio"])]
    rho_op = max(finite, key=lambda c: c["norm_ratio"])["op"] if finite else None
    worst, first = 0.0, None
    probes = _per_step(probe_out, len(oracle_out))
    for s, ((lg, hs), (plg, phs), (olg, ohs), pr) in enumerate(zip(side_out, peer_out, oracle_out, probes,
                                                                     strict=True)):
        probe_pts: list[Any] = [None] * (len(hs) + 1) if pr is None else [*pr[1], pr[0]]
        for i, ((a, p, o), q) in enumerate(zip([*zip(hs, phs, ohs, strict=True), (lg, plg, olg)], probe_pts,
                                               strict=True)):
            check = check_point(a, p, o, dtype, q, peer_factor=2.0 * rho)
            worst = max(worst, check.ratio)
            if not check.passed and first is None:
                first = {"step": s, "point": point_name(i, len(ohs)), "ratio": _sig(check.ratio)}
    return {"rule": CALIBRATED_RULE, "rho": _sig(rho), "rho_op": rho_op, "worst_ratio": _sig(worst),
            "passed": first is None, "departure": first}


def _tokens(side_out: list[tuple[np.ndarray, list[np.ndarray]]],
            peer_out: list[tuple[np.ndarray, list[np.ndarray]]],
            oracle_out: list[tuple[np.ndarray, list[np.ndarray]]], dtype: str,
            probe_out: list[tuple[np.ndarray, list[np.ndarray]]] | None = None) -> dict[str, Any]:
    """Greedy agreement at the last position of every step (batch row 0)."""
    oracle_ids, side_ids, agree, ties, flips = [], [], 0, 0, []
    probes = _per_step(probe_out, len(oracle_out))
    for s, ((lg, _), (plg, _), (olg, _), pr) in enumerate(zip(side_out, peer_out, oracle_out, probes,
                                                               strict=True)):
        o_row, m_row = olg[0, -1], lg[0, -1]
        o_id, m_id = int(np.argmax(o_row)), int(np.argmax(m_row))
        oracle_ids.append(o_id)
        side_ids.append(m_id)
        if o_id == m_id:
            agree += 1
            continue
        q_row = None if pr is None else pr[0][0, -1][None]
        bound = float(check_point(m_row[None], plg[0, -1][None], o_row[None], dtype, q_row).bound_row[0])
        if greedy_flip_is_tie(o_row, m_id, bound):
            ties += 1
        else:
            flips.append({"step": s, "oracle": o_id, "side": m_id,
                          "margin": float(o_row[o_id] - o_row[m_id]), "bound": bound})
    return {"oracle": oracle_ids, "side": side_ids, "agree": agree, "ties": ties, "flips": flips,
            "steps": len(oracle_ids)}


Routing = list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]]
"""One side's routers: per step, per MoE layer, (router input [N, H], router logits
[N, E], own top-k [N, k])."""


def _per_step(probe: list[Any] | None, steps: int) -> list[Any]:
    """The float32 probe's outputs per step (float64 configurations), or ``None`` per step."""
    return probe if probe is not None else [None] * steps


def router_weights(model: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each MoE layer's router ``(W [E, H], c [E])`` as the float64 oracle applies it (the
    exact value of a quantized router's codes): ``router(I) - router(0)`` and ``router(0)``
    in float64, exact (one nonzero term per dot product)."""
    import torch

    found = []
    h = model.args.hidden_size
    for moe in moe_layers(model):
        with torch.no_grad():
            zero = moe.router(torch.zeros(1, h, dtype=torch.float64), precision="float64")
            eye = moe.router(torch.eye(h, dtype=torch.float64), precision="float64")
        found.append(((eye - zero).T.numpy().copy(), zero[0].numpy().copy()))
    return found


def _routing(side: Routing, peer: Routing, oracle: Routing, weights: list[tuple[np.ndarray, np.ndarray]],
             dtype: str, probe: Routing | None = None) -> dict[str, Any] | None:
    """The routers of a mixture-of-experts model judged at every (step, MoE layer, token).

    The router input (the normalised residual stream, ``[N, H]``) is a point like any
    other (MLX against the oracle, the twin as reference, :func:`check_point`). A token
    whose top-k experts differ from the oracle's must be a tie
    (:func:`conformance.model.bounds.routing_flip_is_tie`, with the margin MLX's own input
    error allows: Cauchy-Schwarz on the router's rows, see there); anything else is a
    flip and fails. The sides continued with the oracle's experts at such rows
    (:class:`conformance.model.sides.RouterLog`), so the hidden states stay comparable
    and are judged as usual. None for a model without routers.

    Returns ``rows`` (token-layers), ``ties``, ``flips``, ``twin_departures`` (token-layers
    where the TWIN's experts differ from the oracle's: how often the reference itself sits
    on a tie, context for MLX's ties), ``worst_input_ratio`` (the router inputs' worst
    ratio to the bound), ``departure`` and ``passed``."""
    if not oracle or not any(oracle):
        return None
    ties, twin_departures, rows, worst, flips = 0, 0, 0, 0.0, []
    departure = None
    probes = _per_step(probe, len(oracle))
    for s, (ms, ps, os_, qs) in enumerate(zip(side, peer, oracle, probes, strict=True)):
        for layer, ((mx_, ml, me), (px, pl, pe), (ox, ol, oe), router) in enumerate(
                zip(ms, ps, os_, weights, strict=True)):
            check = check_point(mx_, px, ox, dtype, None if qs is None else qs[layer][0])
            worst = max(worst, check.ratio)
            if not check.passed and departure is None:
                departure = {"step": s, "point": f"router input {layer}", "kind": check.kind,
                             "message": check.message}
            for r in range(ol.shape[0]):
                rows += 1
                twin_departures += int(not np.array_equal(pe[r], oe[r]))
                if np.array_equal(me[r], oe[r]):
                    continue
                if routing_flip_is_tie(ol[r], oe[r], me[r], router, mx_[r], ox[r], pl[r], px[r], dtype):
                    ties += 1
                else:
                    flips.append({"step": s, "layer": layer, "row": r, "oracle": oe[r].tolist(),
                                  "side": me[r].tolist(), "oracle_logits": [_sig(v) for v in ol[r]],
                                  "side_logits": [_sig(v) for v in ml[r]]})
    return {"rows": rows, "ties": ties, "twin_departures": twin_departures, "flips": flips, "worst_input_ratio": _sig(worst),
            "departure": departure, "passed": departure is None and not flips}


@contextlib.contextmanager
def _maybe(mutant: Mutant | None) -> Iterator[None]:
    if mutant is None:
        yield
    else:
        with mutant():
            yield


def choose_prompt(checkpoint: Path, seed: int, prompt_len: int, prompt_ids: np.ndarray | None) -> np.ndarray:
    """The prefill ``[1, L]`` int64: ``prompt_ids`` (a tokenized text prompt) checked to be
    ``[1, L]`` ids inside the checkpoint's vocabulary, else ``prompt_len`` ids drawn with ``seed``."""
    import json

    vocab = int(json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))["vocab_size"])
    if prompt_ids is None:
        return np.random.default_rng(seed).integers(0, vocab, size=(1, prompt_len)).astype(np.int64)
    if (prompt_ids.ndim != 2 or prompt_ids.shape[0] != 1 or prompt_ids.size == 0
            or not 0 <= prompt_ids.min() <= prompt_ids.max() < vocab):
        raise ValueError(f"[model conformance] prompt_ids must be [1, L] ids below {vocab}, got shape "
                         f"{prompt_ids.shape}.")
    return prompt_ids.astype(np.int64)


def run_config(checkpoint: Path, derived: Path, *, model_type: str, dtype: str, quant: str | None,
               steps: int, prompt_len: int, seed: int = 0, mutant: Mutant | None = None,
               anchors: bool = True, progress: bool = True, prompt_ids: np.ndarray | None = None,
               attribute_ops: bool = True, capture_dir: Path | None = None) -> dict[str, Any]:
    """Compare MLX, the twin and the oracle on ``derived`` (``checkpoint`` in ``dtype``/``quant``).

    Args:
        checkpoint: the original checkpoint (transformers' anchor loads it in float64).
        derived: the checkpoint written by :func:`conformance.model.checkpoints.derive`.
        model_type: ``config.json``'s ``model_type``.
        dtype, quant: the test dtype and quantized mode (None: dense).
        steps: cached single-token decode steps after the prefill.
        prompt_len: prefill length; the prompt is ``seed``-random token ids.
        prompt_ids: ``[1, L]`` token ids to prefill instead (a real prompt,
            :mod:`conformance.model.prompts`); ``prompt_len`` is then ``L``.
        mutant: plants a bug in the MLX side (meta-tests).
        anchors: also run transformers (float32 dense only) and mlx-lm.
        attribute_ops: where the trace departs, name the op and the cause
            (:func:`conformance.model.attribution.attribute`; adds ``op``, ``cause``,
            ``cause_detail``, ``repro`` and ``op_checks`` to ``departure``).
        capture_dir: where a new MLX divergence's inputs are written (default: beside
            ``derived``, ``<derived>-captured``).

    Returns: a JSON-ready result (see :mod:`conformance.model.report`).
    """
    if dtype == "float64" and quant is not None:  # checked before any replay (derive refuses it too)
        raise ValueError("[model conformance] float64 is a dense test dtype: quantized layers take no float64.")
    label = f"{derived.name}"
    started = time.perf_counter()
    prompt = choose_prompt(checkpoint, seed, prompt_len, prompt_ids)
    prompt_len = prompt.shape[1]
    oracle = TwinSide(derived, "float64", "twin-float64")
    inputs, oracle_out = _oracle_tokens(oracle, prompt, steps, progress, label)
    # Mixture-of-experts: the other sides continue with the oracle's experts where theirs
    # differ (judged as ties or flips by _routing).
    oracle_routing = oracle.routing.steps
    force = [[e for _, _, e in layers] for layers in oracle_routing]
    routers = router_weights(oracle.model)
    # Each side releases its weights before the next loads: the peak is one side's, not
    # the sum (conformance/model/memory.py).
    release(oracle)
    peer = TwinSide(derived, "native", f"twin-{dtype}", force=force)
    peer_out = _replay(peer, inputs, progress, label)
    probe_routing = peer_routing = peer.routing.steps
    release(peer)
    probe_out = None
    if dtype == "float64":
        # The precision probe (bounds.py): the twin in float32 on the same weights (a
        # float32 or narrower checkpoint rounds to float32 exactly, as to float64).
        probe = derive(checkpoint, derived.parent / f"{derived.name}-probe-float32", "float32")
        prober = TwinSide(probe, "native", "twin-float32", force=force)
        probe_out = _replay(prober, inputs, progress, label)
        probe_routing = prober.routing.steps
        release(prober)
    with _maybe(mutant):
        mlx = MlxSide(derived, force=force)
        mlx_out = _replay(mlx, inputs, progress, label)
    mlx_routing = mlx.routing.steps
    release(mlx)
    routing = _routing(mlx_routing, peer_routing, oracle_routing, routers, dtype,
                       probe_routing if probe_out is not None else None)
    points, departure = _judge_trace(mlx_out, peer_out, oracle_out, dtype, with_hidden=True, probe_out=probe_out)
    tokens = _tokens(mlx_out, peer_out, oracle_out, dtype, probe_out)
    if departure is not None and attribute_ops:
        from conformance.model.attribution import attribute

        _log(progress, f"  [{label}] attributing the departure at step {departure['step']}, {departure['point']}")
        try:
            departure.update(attribute(derived, inputs[: int(departure["step"]) + 1], force, dtype, departure,
                                       mutant=mutant,
                                       capture_dir=capture_dir or derived.parent / f"{derived.name}-captured"))
        except Exception as exc:  # the verdict stands without a name; the report says why
            departure.update({"op": None, "cause": "unattributed", "repro": None, "op_checks": [],
                              "cause_detail": f"attribution failed: {type(exc).__name__}: {exc}"})
        departure["calibrated"] = _calibrated(departure, mlx_out, peer_out, oracle_out, dtype, probe_out)
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint), "model_type": model_type, "dtype": dtype, "quant": quant,
        "steps": steps, "prompt_len": prompt_len, "seed": seed,
        "layers": len(oracle_out[0][1]) - 1, "points": points, "departure": departure,
        "tokens": tokens, "anchors": [], "routing": routing,
    }
    if anchors:
        result["anchors"] = _run_anchors(checkpoint, derived, model_type, dtype, quant, inputs,
                                         peer_out, oracle_out, progress, label, probe_out)
    return conclude(result, started, label)


def conclude(result: dict[str, Any], started: float, label: str, sides: str = "") -> dict[str, Any]:
    """Finish a configuration's ``result`` (from ``run_config`` or the generic judge):
    ``passed`` (no departure, or one attribution explains as the bound and the op-calibrated
    rule admits; no greedy, routing or DSA indexer flip; every required anchor agrees), ``seconds`` since
    ``started``, ``peak_rss_mb``, and the one-line log (``sides``: e.g. ``"mlx-lm vs
    transformers: "``)."""
    departure, tokens, routing = result["departure"], result["tokens"], result["routing"]
    # A departure that attribution explains as the bound (every op conforms on identical
    # inputs, no wiring departs) and that the op-calibrated rule admits is no failure.
    explained = (departure is not None and departure.get("cause") == "bound"
                 and departure["calibrated"]["passed"])
    result["passed"] = ((departure is None or explained) and not tokens["flips"]
                        and (routing is None or routing["passed"])
                        and (result.get("indexer") is None or result["indexer"]["passed"])
                        and all(a["passed"] for a in result["anchors"] if a["required"]))
    result["seconds"] = round(time.perf_counter() - started, 2)
    result["peak_rss_mb"] = round(peak_rss_bytes() / 2**20)
    _log(True, f"  [{label}] {sides}{'PASS' if result['passed'] else 'FAIL'} in {result['seconds']} s; "
         f"tokens {tokens['agree']}/{tokens['steps']} agree"
         + (f"; departs at step {departure['step']}, {departure['point']}" if departure else "")
         + (f", op {departure['op']}" if departure and departure.get("op") else ""))
    return result


def _run_anchors(checkpoint: Path, derived: Path, model_type: str, dtype: str, quant: str | None,
                 inputs: list[np.ndarray], peer_out: list[tuple[np.ndarray, list[np.ndarray]]],
                 oracle_out: list[tuple[np.ndarray, list[np.ndarray]]], progress: bool,
                 label: str, probe_out: list[tuple[np.ndarray, list[np.ndarray]]] | None = None,
                 ) -> list[dict[str, Any]]:
    """transformers float64 (float32 and float64 dense: its weights are the checkpoint's
    own, and the twin in float32 is the reference for a partly-float32 computation, in a
    float64 configuration too: transformers' float64 model keeps its RMSNorm statistics
    and RoPE tables in float32, ~1e-7 relative, so it answers like float32, not float64)
    and mlx-lm (judged like MLX, with the probe in float64)."""
    found = []
    if dtype in ("float32", "float64") and quant is None:
        twin32 = peer_out if dtype == "float32" else probe_out
        if twin32 is None:
            raise ValueError("[model conformance] a float64 configuration needs the float32 probe.")
        anchor = TransformersSide(checkpoint)
        out = _replay(anchor, inputs, progress, label)
        release(anchor)
        pts, dep = _judge_trace(out, twin32, oracle_out, "float32", with_hidden=False)
        found.append(_anchor_entry("transformers-float64", pts, dep, required=True,
                                   rule="|transformers64 - oracle| <= 2 x twin-float32 error + 2 float32 ulp"))
    if mlx_lm_supports(model_type):
        try:
            mlx_lm_side = MlxLmSide(derived)
            out = _replay(mlx_lm_side, inputs, progress, label)
            release(mlx_lm_side)
        except Exception as exc:  # an mlx-lm that cannot run this checkpoint is reported, not fatal
            found.append({"name": "mlx-lm", "passed": False, "required": False,
                          "error": f"{type(exc).__name__}: {exc}"})
        else:
            pts, dep = _judge_trace(out, peer_out, oracle_out, dtype, with_hidden=False, probe_out=probe_out)
            found.append(_anchor_entry("mlx-lm", pts, dep, required=False,
                                       rule=f"|mlx-lm - oracle| <= 2 x twin-{'float32' if probe_out else dtype} error"
                                       + " + 2 ulp"))
    return found


def _anchor_entry(name: str, points: list[dict[str, Any]], departure: dict[str, Any] | None, *,
                  required: bool, rule: str) -> dict[str, Any]:
    return {"name": name, "passed": departure is None, "required": required, "rule": rule,
            "steps_checked": len(points), "worst_rel_err": max(p["rel_err"] for p in points),
            "twin_rel_err": max(p["peer_rel_err"] for p in points),
            "rel_err_by_step": [p["rel_err"] for p in points], "departure": departure}
