"""The Python API of the model conformance: :func:`judge` one candidate on one checkpoint.

    from conformance.model import judge, CandidateLoadError, OracleLoadError

    result = judge("path/to/checkpoint", candidate="my_port.model:load", dtype="float32")
    result["passed"], result["departure"], result["tokens"]["agree"]

The oracle is the project's twin in float64 where ``torch_reference.models`` implements
the architecture (the twin in the test dtype the peer), transformers' own model in float64
elsewhere (:mod:`conformance.model.hf_sides`; transformers in the test dtype the peer).
The rule is the same everywhere (:func:`conformance.model.bounds.check_point`):
per token row, ``||cand - oracle|| <= 2 ||peer - oracle|| + 2 ulp sqrt(D)`` at every
(step, point), the oracle decoding greedily and the others replaying its tokens.
``python -m conformance model CHECKPOINT --candidate SPEC`` runs the same code
(:func:`judge_derived`).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from conformance.model.candidates import Candidate, CandidateSide, Loader, resolve_candidate
from conformance.model.checkpoints import QUANT_MODES, derive
from conformance.model.errors import CandidateLoadError
from conformance.model.harness import (
    Mutant,
    _judge_trace,
    _oracle_tokens,
    _replay,
    _run_anchors,
    _tokens,
    choose_prompt,
    conclude,
    run_config,
)
from conformance.model.mlx_lm_layout import MlxLmQuantized
from conformance.model.sides import MlxSide, Side, TwinSide, release

ORACLES = ("auto", "twin", "transformers")
"""``auto``: the twin where it implements the architecture, else transformers."""

DTYPES = ("float32", "float64", "bfloat16", "float16")


def twin_supports(model_type: str) -> bool:
    """Whether the project's twin (``torch_reference.models``) implements ``model_type``."""
    from torch_reference.models import SUPPORTED_MODEL_TYPES

    return model_type in SUPPORTED_MODEL_TYPES


def choose_oracle(model_type: str, oracle: str) -> str:
    """``"twin"`` or ``"transformers"`` for ``model_type`` and the requested ``oracle``
    (one of :data:`ORACLES`). Raises ValueError for an unknown name, or ``twin`` on an
    architecture the twin does not implement."""
    if oracle not in ORACLES:
        raise ValueError(f"[judge] oracle must be one of {ORACLES} but got {oracle!r}.")
    if oracle == "auto":
        return "twin" if twin_supports(model_type) else "transformers"
    if oracle == "twin" and not twin_supports(model_type):
        from torch_reference.models import SUPPORTED_MODEL_TYPES

        raise ValueError(f"[judge] the twin implements {SUPPORTED_MODEL_TYPES}, not {model_type!r}; "
                         "use oracle='transformers' (or 'auto').")
    return oracle


def judge(checkpoint: str | Path, *, candidate: str | Loader = "mlx_impl", dtype: str = "float32",
          quant: str | None = None, steps: int = 16, prompt_len: int = 8, seed: int = 0,
          anchors: bool = False, progress: bool = False, oracle: str = "auto", prompt: str | None = None,
          chat_template: bool = True, subpoints: bool = True) -> dict[str, Any]:
    """Judge ``candidate`` on ``checkpoint`` in ``dtype`` (and quantized mode ``quant``).

    The checkpoint is rounded to ``dtype`` (and quantized) once, into a temporary folder
    (:func:`conformance.model.checkpoints.derive`); every side loads that copy. For the
    ``"mlx-lm"`` candidate with ``quant``, mlx-lm loads its own conversion of the dense copy
    and transformers its dequantized values (:mod:`conformance.model.mlx_lm_layout`). The oracle
    decodes greedily from a ``seed``-random prompt of ``prompt_len`` token ids (or the text
    ``prompt``, through the checkpoint's tokenizer) for ``steps`` cached single-token steps;
    the candidate and the peer replay its tokens.

    Args:
        checkpoint: a Hugging Face-layout directory (``config.json``, ``*.safetensors``).
        candidate: ``"mlx_impl"`` (this project's port), ``"mlx-lm"``,
            ``"package.module:function"`` or a callable ``path -> model | (model, cache)``;
            the model answers ``model(tokens [B, L] mx.array, cache=cache) -> logits [B, L, V]``.
        dtype: test dtype (``float32``, ``float64`` (CPU), ``bfloat16``, ``float16``); with
            ``quant``, the activation and scale dtype.
        quant: a key of :data:`conformance.model.checkpoints.QUANT_MODES`, or None.
        steps, prompt_len, seed: the decode (as above).
        anchors: also run transformers' float64 model and mlx-lm as external anchors
            (twin oracle and a checkpoint not already quantized only, as the CLI does:
            with transformers as the oracle it is its own anchor).
        progress: a line per side and step on stderr.
        oracle: ``"auto"``, ``"twin"`` or ``"transformers"`` (:func:`choose_oracle`).
        prompt: a text prompt instead of random ids, tokenized by the checkpoint's own
            tokenizer, through its chat template unless ``chat_template`` is False.
        subpoints: record the named modules inside each decoder layer on the candidate
            and the oracle's library (:mod:`conformance.model.subpoints`) and name the op
            where a configuration departs (not for ``mlx_impl`` against the twin, whose
            departures :mod:`conformance.model.attribution` names).

    Returns:
        The JSON-ready result of :func:`conformance.model.harness.run_config` (``passed``,
        ``departure`` = {step, point, kind, message} or None, ``tokens`` = {agree, steps,
        ties, flips, ...}, ``points``, ``layers``, ``routing``, ``anchors`` ...) plus
        ``candidate`` (its spec), ``oracle`` (``"twin"`` or ``"transformers"``),
        ``hidden_states`` (whether per-layer points were judged) and ``notes``; with
        ``subpoints``, ``subpoints`` (:func:`conformance.model.subpoints.judge_subpoints`)
        and, on a departure at a layer, ``departure["op"]``, ``["op_layer"]``,
        ``["op_detail"]`` (:func:`conformance.model.subpoints.name_op`); and, for mlx-lm
        against transformers on a DeepSeek Sparse Attention model, ``indexer`` (its choices of
        keys judged as ties, :func:`conformance.model.dsa_indexer.judge_selections`; None or
        absent elsewhere).

    Raises:
        CandidateLoadError: the candidate cannot be imported, built or loaded, or crashes.
        OracleLoadError: transformers cannot build or load the checkpoint.
        ValueError: an unknown dtype, quantized mode or oracle; non-positive sizes.
    """
    ck = Path(checkpoint).resolve()
    if not (ck / "config.json").is_file():
        raise ValueError(f"[judge] {ck} has no config.json: not a Hugging Face-layout checkpoint.")
    if dtype not in DTYPES:
        raise ValueError(f"[judge] dtype must be one of {DTYPES} but got {dtype!r}.")
    if quant is not None and quant not in QUANT_MODES:
        raise ValueError(f"[judge] quant must be None or one of {tuple(QUANT_MODES)} but got {quant!r}.")
    if steps < 0 or prompt_len < 1:
        raise ValueError(f"[judge] steps must be >= 0 and prompt_len >= 1 but got {steps}, {prompt_len}.")
    config = json.loads((ck / "config.json").read_text(encoding="utf-8"))
    prequantized = "quantization" in config or "quantization_config" in config
    if prequantized and quant is not None:
        raise ValueError(f"[judge] {ck} is already quantized; quant does not apply.")
    resolved = resolve_candidate(candidate)
    with tempfile.TemporaryDirectory(prefix="judge-") as tmp:
        work = Path(tmp)
        derived = derive(ck, work / f"{ck.name}-{dtype}-{quant or 'dense'}", dtype, quant)
        ids = None
        if prompt is not None:
            from conformance.model.prompts import has_chat_template, tokenize_prompt

            ids = tokenize_prompt(ck, prompt, chat_template and has_chat_template(ck))
        return judge_derived(ck, derived, work, model_type=str(config.get("model_type", "?")),
                             candidate=resolved, oracle=oracle, dtype=dtype, quant=quant, steps=steps,
                             prompt_len=prompt_len, seed=seed, anchors=anchors and not prequantized,
                             progress=progress, prompt_ids=ids, subpoints=subpoints)


def judge_derived(checkpoint: Path, derived: Path, work: Path, *, model_type: str, candidate: Candidate,
                  oracle: str, dtype: str, quant: str | None, steps: int, prompt_len: int, seed: int = 0,
                  anchors: bool = False, progress: bool = False, mutant: Mutant | None = None,
                  prompt_ids: np.ndarray | None = None, capture_dir: Path | None = None,
                  subpoints: bool = True) -> dict[str, Any]:
    """:func:`judge` on a checkpoint already derived (``derived``, from ``checkpoint``);
    temporary copies go under ``work``. ``mutant`` plants a bug in ``mlx_impl`` (twin
    oracle only); ``prompt_ids`` ``[1, L]`` prefill instead of random ids; ``capture_dir``
    receives a new MLX divergence's captured inputs (mlx_impl against the twin, where a
    departure is attributed to its op). The CLI's entry; the result as :func:`judge` describes it."""
    kind = choose_oracle(model_type, oracle)
    mlx_lm = None
    if candidate.name == "mlx-lm" and quant is not None:
        # mlx-lm judged on its own quantized layout (conformance/model/mlx_lm_layout.py).
        from conformance.model.mlx_lm_layout import prepare

        mlx_lm = prepare(checkpoint, derived, work, dtype, quant, twin=kind == "twin")
    if candidate.loader is None and kind == "twin":
        # This project's port against its twin: exactly today's comparison.
        result = run_config(checkpoint, derived, model_type=model_type, dtype=dtype, quant=quant, steps=steps,
                            prompt_len=prompt_len, seed=seed, mutant=mutant, anchors=anchors, progress=progress,
                            prompt_ids=prompt_ids, capture_dir=capture_dir)
        result.update(candidate=candidate.name, oracle=kind, hidden_states=True, notes=[])
        return result
    if mutant is not None:
        raise ValueError("[judge] a mutant plants a bug in mlx_impl against the twin; it does not apply to "
                         f"candidate {candidate.name!r} with the {kind} oracle.")
    return _judge_generic(checkpoint, derived, work, model_type=model_type, candidate=candidate, kind=kind,
                          dtype=dtype, quant=quant, steps=steps, prompt_len=prompt_len, seed=seed,
                          anchors=anchors, progress=progress, prompt_ids=prompt_ids, mlx_lm=mlx_lm,
                          subpoints=subpoints)


def _judge_generic(checkpoint: Path, derived: Path, work: Path, *, model_type: str, candidate: Candidate,
                   kind: str, dtype: str, quant: str | None, steps: int, prompt_len: int, seed: int,
                   anchors: bool, progress: bool, prompt_ids: np.ndarray | None = None,
                   mlx_lm: MlxLmQuantized | None = None, subpoints: bool = True) -> dict[str, Any]:
    """Any candidate against either oracle: the flow of ``run_config`` with pluggable sides.
    ``mlx_lm``: the candidate loads mlx-lm's own quantized conversion, the transformers
    oracle and peer its dequantized values in transformers' layout (the twin reads ``derived``,
    proved equal by :func:`conformance.model.mlx_lm_layout.prepare`). With ``subpoints``, each
    side's sub-layer points are recorded and judged, naming the op where the configuration
    departs (:mod:`conformance.model.subpoints`)."""
    from conformance.model.subpoints import capture_side
    if dtype == "float64" and quant is not None:
        raise ValueError("[judge] float64 is a dense test dtype: quantized layers take no float64.")
    label = derived.name
    started = time.perf_counter()
    notes: list[str] = []
    prompt = choose_prompt(checkpoint, seed, prompt_len, prompt_ids)
    prompt_len = prompt.shape[1]
    # The candidate first: one that cannot load fails before the oracle's decode.
    side = _candidate_side(mlx_lm.converted if mlx_lm else derived, candidate, subpoints)
    oracle = _oracle_side(derived, work, kind, notes, mlx_lm)
    traces: dict[str, Any] = {}
    if subpoints:
        traces["candidate"] = getattr(side, "subtrace", None) or capture_side(side, model_type)
        traces["oracle"] = capture_side(oracle, model_type)
    indexers = _dsa_logs(side, oracle)  # DeepSeek Sparse Attention: the oracle's keys for every side
    inputs, oracle_out = _oracle_tokens(oracle, prompt, steps, progress, label)
    if getattr(oracle, "narrow_outputs", None):
        notes.append(f"oracle outputs not float64 ({sorted(oracle.narrow_outputs)}): they resolve only to "  # type: ignore[attr-defined]
                     "that dtype's precision")
    # Mixture-of-experts with the twin: its peer continues with the oracle's experts where
    # its own differ, as in run_config (the candidate cannot be steered: see the note below).
    force = [[e for _, _, e in layers] for layers in oracle.routing.steps] if isinstance(oracle, TwinSide) else None
    oracle_routed = isinstance(oracle, TwinSide) and any(oracle.routing.steps)
    release(oracle)  # each side's weights go before the next loads (conformance/model/memory.py)
    peer, prober = _peer_sides(checkpoint, derived, work, kind, dtype, force, mlx_lm)
    if subpoints:
        traces["peer"] = capture_side(peer, model_type)
        traces["probe"] = capture_side(prober, model_type) if prober is not None else None
    peer_indexer = None
    if indexers is not None:
        from conformance.model.dsa_indexer import install_hf

        side_indexer, oracle_indexer = indexers
        side_indexer.force = oracle_indexer.own
        peer_indexer = install_hf(peer.model, oracle_indexer.own)  # type: ignore[attr-defined]
        if prober is not None:
            install_hf(prober.model, oracle_indexer.own)  # type: ignore[attr-defined]
    peer_out = _replay(peer, inputs, progress, label)
    release(peer)
    probe_out = None
    if prober is not None:
        probe_out = _replay(prober, inputs, progress, label)
        release(prober)
    try:
        side_out = _replay(side, inputs, progress, label)
    except CandidateLoadError:
        raise
    except Exception as exc:  # mlx_impl's own side crashing (a user's candidate raises CandidateLoadError)
        raise CandidateLoadError(f"[candidate] {candidate.name} crashed: {type(exc).__name__}: {exc}") from exc
    notes += getattr(side, "notes", [])  # after the replay: the first step may find the taps unused
    release(side)
    n_oracle = len(oracle_out[0][1])
    with_hidden = bool(side_out[0][1]) and n_oracle > 0
    if not n_oracle:  # the reason, whatever the candidate has
        notes.append("logits only: the oracle's decoder layers were not found")
    elif side_out[0][1] and len(side_out[0][1]) != n_oracle:
        with_hidden = False
        notes.append(f"logits only: the candidate has {len(side_out[0][1]) - 1} decoder layers, the oracle "
                     f"{n_oracle - 1}")
    routing = None  # judged only for mlx_impl against the twin (run_config): others have no router observer
    if oracle_routed:
        notes.append("routing not judged: the candidate has no router observer; a different choice of experts "
                     "shows as a departure at that layer")
    indexer = None
    if indexers is not None and peer_indexer is not None:
        from conformance.model.dsa_indexer import judge_selections

        indexer = judge_selections(indexers[0], peer_indexer, indexers[1], dtype)
        notes.append(f"DSA indexer: {indexer['ties']} ties / {indexer['rows']} query-layers"
                     + (f", {len(indexer['flips'])} FLIPS" if indexer["flips"] else "")
                     + f" (transformers' peer: {indexer['twin_departures']} departures); every side attends "
                     "to the oracle's keys")
    points, departure = _judge_trace(side_out, peer_out, oracle_out, dtype, with_hidden=with_hidden,
                                     probe_out=probe_out)
    tokens = _tokens(side_out, peer_out, oracle_out, dtype, probe_out)
    sub = None
    if subpoints and with_hidden:
        sub = _subpoints(traces, points, departure, dtype, probe_out is not None, notes)
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint), "model_type": model_type, "dtype": dtype, "quant": quant,
        "steps": steps, "prompt_len": prompt_len, "seed": seed,
        "layers": max(n_oracle - 1, 0), "points": points, "departure": departure,
        "tokens": tokens, "anchors": [], "routing": routing, "indexer": indexer,
    }
    if anchors and kind == "twin":
        result["anchors"] = _run_anchors(checkpoint, derived, model_type, dtype, quant, inputs, peer_out,
                                         oracle_out, progress, label, probe_out)
    elif anchors:
        notes.append("anchors not run: transformers is the oracle here")
    result.update(candidate=candidate.name, oracle=kind, hidden_states=with_hidden, notes=notes)
    if sub is not None:
        result["subpoints"] = sub
    return conclude(result, started, label, f"{candidate.name} vs {kind}: ")


def _dsa_logs(side: Side, oracle: Side) -> tuple[Any, Any] | None:
    """``(candidate's, oracle's)`` DSA indexer logs (:mod:`conformance.model.dsa_indexer`)
    where transformers' oracle has DeepSeek Sparse Attention indexers and the candidate is
    mlx-lm's model with its own; None otherwise (a different choice of keys then shows as a
    departure at that layer, and a note says so)."""
    from conformance.model.dsa_indexer import hf_indexers, install_hf, install_mlx_lm

    model = getattr(oracle, "model", None)
    if not isinstance(side, CandidateSide) or model is None or not hf_indexers(model):
        return None
    side_log = install_mlx_lm(side.model)
    if side_log is None:
        side.notes.append("DSA indexer not judged: the candidate has no mlx-lm indexer (self_attn.indexer); a "
                          "different choice of keys shows as a departure at that layer")
        return None
    return side_log, install_hf(model)


def _dense_for_transformers(derived: Path, out: Path, precision: str, mlx_lm: MlxLmQuantized | None) -> Path:
    """What transformers loads: a dense copy of ``derived``, or of mlx-lm's conversion's
    values placed in transformers' layout."""
    from conformance.model.hf_sides import dense_copy
    from conformance.model.mlx_lm_layout import reference_copy

    if mlx_lm is not None:
        return reference_copy(mlx_lm.dense, mlx_lm.converted, out, precision)
    return dense_copy(derived, out, precision)


def _oracle_side(derived: Path, work: Path, kind: str, notes: list[str], mlx_lm: MlxLmQuantized | None = None) -> Side:
    """The twin in float64, or transformers in float64 on a dense copy of ``derived``
    (of mlx-lm's own conversion with ``mlx_lm``)."""
    if kind == "twin":
        return TwinSide(derived, "float64", "twin-float64")
    from conformance.model.hf_sides import HFSide

    oracle = HFSide(_dense_for_transformers(derived, work / f"{derived.name}-dense-float64", "float64", mlx_lm),
                    "float64", "transformers-float64")
    if oracle.not_float64:
        notes.append(f"oracle not fully float64: {oracle.not_float64} stayed narrower (those points resolve "
                     "only to their own dtype)")
    return oracle


def _peer_sides(checkpoint: Path, derived: Path, work: Path, kind: str, dtype: str,
                force: list[list[np.ndarray]] | None,
                mlx_lm: MlxLmQuantized | None = None) -> tuple[Side, Side | None]:
    """The peer (the oracle's library in the test dtype) and, in a float64 configuration,
    the float32 precision probe (:mod:`conformance.model.bounds`), else None."""
    probe_ck = derive(checkpoint, work / f"{derived.name}-probe-float32", "float32") if dtype == "float64" else None
    if kind == "twin":
        peer: Side = TwinSide(derived, "native", f"twin-{dtype}", force=force)
        return peer, (TwinSide(probe_ck, "native", "twin-float32", force=force) if probe_ck else None)
    from conformance.model.hf_sides import HFSide

    peer = HFSide(_dense_for_transformers(derived, work / f"{derived.name}-dense-native", "native", mlx_lm),
                  "native", f"transformers-{dtype}")
    return peer, (HFSide(probe_ck, "native", "transformers-float32") if probe_ck else None)


def _subpoints(traces: dict[str, Any], points: list[dict[str, Any]], departure: dict[str, Any] | None,
               dtype: str, with_probe: bool, notes: list[str]) -> dict[str, Any] | None:
    """The sub-layer points judged (:func:`conformance.model.subpoints.judge_subpoints`)
    and, where the trace departs at a layer, the op named into ``departure``; what could
    not be compared goes to ``notes`` once. None where a side recorded none."""
    from conformance.model.subpoints import judge_subpoints, name_op, public, where

    missing = [k for k in ("candidate", "oracle", "peer") if traces.get(k) is None]
    if with_probe and traces.get("probe") is None:
        missing.append("probe")
    if missing:
        notes.append(f"sub-layer points not judged: no decoder layers to record on the {', '.join(missing)} side")
        return None
    passed = {(p["step"], p["point"]): p["passed"] for p in points}
    # After the first departure every later point carries its error: only the points before
    # it can depart "inside a conforming layer" in a meaningful sense.
    first = None if departure is None else next(
        ((p["step"], p["index"]) for p in points if (p["step"], p["point"]) == (departure["step"], departure["point"])),
        None)

    n_layers = sum(1 for p in points if p["step"] == 0 and p["point"].startswith("layer "))

    def clean(step: int, layer: int) -> bool:
        name = "logits" if layer == n_layers else f"layer {layer}"
        return passed.get((step, name), True) and (first is None or (step, layer + 1) < first)

    sub = judge_subpoints(traces["candidate"], traces["peer"], traces["oracle"], traces.get("probe"), dtype, clean,
                          head_layer=n_layers)
    if sub["failed"]:
        notes.append(f"sub-layer points not judged: capture stopped ({sub['failed']})")
    elif not sub["checked"]:
        notes.append("sub-layer points not judged: the candidate and the oracle share no module name inside "
                     "their decoder layers")
    skipped = [f"{what} {', '.join(sub[key])}" for key, what in (
        ("only_candidate", "on the candidate only:"), ("only_oracle", "on the oracle only:"),
        ("unshaped", "not [B, L, ...]:"), ("width_differs", "widths differ:")) if sub[key]]
    if skipped:
        notes.append("sub-layer points skipped (" + "; ".join(skipped) + ")")
    if sub["inside_conforming"]:
        notes.append(f"{sub['inside_conforming']} sub-layer point(s) depart inside conforming layers before any "
                     "departure (reported, not failed: see conformance/model/subpoints.py), first "
                     + ", ".join(f"step {p['step']}, {where(p)} {p['op']}" for p in sub["inside_conforming_first"][:3]))
    if departure is not None and sub["checked"] and departure["point"] != "embed":
        layer = n_layers if departure["point"] == "logits" else int(departure["point"].split()[1])
        departure.update(name_op(sub, int(departure["step"]), layer))
    return public(sub)


def _candidate_side(derived: Path, candidate: Candidate, subpoints: bool = True) -> Side:
    """The candidate's side. ``mlx_impl`` comes here only with the transformers oracle
    (against the twin it is ``run_config``'s), so no expert choices are forced on it."""
    if candidate.loader is not None:
        return CandidateSide(derived, candidate, subpoints)
    try:
        return MlxSide(derived)
    except Exception as exc:  # mlx_impl cannot build this architecture
        raise CandidateLoadError(f"[candidate] mlx_impl cannot load {derived}: {type(exc).__name__}: {exc}") from exc
