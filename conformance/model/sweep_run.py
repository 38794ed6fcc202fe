"""One sweep configuration: build the architecture's tiny checkpoint (once per sweep), judge
the candidate on it, and classify the outcome into the result the report reads.

The pytest test ``tests/sweep/test_sweep.py`` calls :func:`run_configuration` once per
(architecture, dtype, quantized mode); ``python -m conformance sweep`` runs that pytest
under pytest-xdist and pytest-timeout and builds the report from the result files. Every
result file is written twice: ``status: "running"`` before anything can hang or crash,
then the outcome, so a configuration whose worker died is still found (a ``crash``; a
``timeout`` when pytest-timeout's timer recorded it first, see tests/sweep/conftest.py).

Statuses: ``conforms`` / ``departs`` (a verdict); ``not-built`` (transformers cannot build
the tiny config), ``oracle-load-error`` (transformers cannot load or run it),
``candidate-load-error`` (the candidate cannot); ``error`` (anything else, i.e. the
harness itself failed: a gap to close); ``crash``, ``timeout`` (set by the report from a
``running`` file).
"""

from __future__ import annotations

import importlib
import json
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conformance.results import write_json_atomic

ENV_RESULTS = "CONFORMANCE_SWEEP_RESULTS"
ENV_WORK = "CONFORMANCE_SWEEP_WORK"
ENV_CANDIDATE = "CONFORMANCE_SWEEP_CANDIDATE"
ENV_ARCHS = "CONFORMANCE_SWEEP_ARCHS"
ENV_STEPS = "CONFORMANCE_SWEEP_STEPS"
ENV_JUDGE = "CONFORMANCE_SWEEP_JUDGE"
"""``module:function`` replacing :func:`conformance.model.judge` (the plumbing tests plant
a fake judge that departs, crashes or hangs)."""

CONFIGURATIONS: tuple[tuple[str, str | None], ...] = (
    ("float32", None), ("bfloat16", None), ("bfloat16", "affine4"))
"""(dtype, quantized mode) per architecture: dense float32 and bfloat16, and 4-bit affine
with bfloat16 activations and scales, as mlx-lm ships quantized models."""

PROMPT_LEN = 8
"""Prefill length: longer than every tiny sliding window (4, sweep_configs.SIZES)."""
STEPS = 16
"""Cached single-token decode steps after the prefill."""
VERDICTS = ("conforms", "departs")
NO_VERDICT = ("not-built", "oracle-load-error", "candidate-load-error", "error", "crash", "timeout")


@dataclass(frozen=True)
class Configuration:
    """One sweep cell."""

    arch: str
    dtype: str
    quant: str | None

    @property
    def label(self) -> str:
        """``bfloat16+affine4`` / ``float32``."""
        return self.dtype + (f"+{self.quant}" if self.quant else "")

    @property
    def test_id(self) -> str:
        """The pytest id: ``llama-bfloat16+affine4``."""
        return f"{self.arch}-{self.label}"

    @property
    def filename(self) -> str:
        return f"{self.arch}--{self.dtype}--{self.quant or 'dense'}.json"


def result_path(results: Path, cfg: Configuration) -> Path:
    """Where ``cfg``'s result file lives in the results folder."""
    return results / cfg.filename


def checkpoint_for(arch: str, work: Path, seed: int = 0) -> tuple[Path, list[str]]:
    """The architecture's tiny checkpoint under ``work/checkpoints/<arch>``, built on first
    use (into a private folder, then renamed: two xdist workers may race; both build the
    same seeded model and the loser's copy is dropped). Returns it and the
    transformers-4 keys added to its config (:func:`conformance.model.sweep_configs.legacy_keys`)."""
    import shutil

    from conformance.model.sweep_configs import build_checkpoint

    final = work / "checkpoints" / arch
    if not (final / "config.json").exists():
        tmp = work / "checkpoints" / f".{arch}.{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        build_checkpoint(arch, tmp, seed=seed)
        try:
            tmp.rename(final)
        except OSError:  # another worker renamed its copy first
            shutil.rmtree(tmp, ignore_errors=True)
    config = json.loads((final / "config.json").read_text(encoding="utf-8"))
    return final, list(config.get("_sweep_legacy_keys", []))


def _judge_function() -> Callable[..., dict[str, Any]]:
    spec = os.environ.get(ENV_JUDGE)
    if spec:
        module, _, name = spec.partition(":")
        fn: Callable[..., dict[str, Any]] = getattr(importlib.import_module(module), name)
        return fn
    judge: Callable[..., dict[str, Any]] = importlib.import_module("conformance.model").judge
    return judge


def _summary(verdict: dict[str, Any]) -> dict[str, Any]:
    """The judge's result without its per-point trace (the report needs the verdict)."""
    keep = ("passed", "departure", "oracle", "hidden_states", "notes", "seconds", "layers", "routing")
    out: dict[str, Any] = {k: verdict.get(k) for k in keep if k in verdict}
    tokens = verdict.get("tokens") or {}
    flips = tokens.get("flips", [])
    out["tokens"] = {"agree": tokens.get("agree"), "steps": tokens.get("steps"), "ties": tokens.get("ties"),
                     "flips": len(flips) if isinstance(flips, list) else flips,
                     "first_flip": flips[0] if isinstance(flips, list) and flips else None}
    r = out.get("routing")
    if isinstance(r, dict):
        out["routing"] = {**{k: r.get(k) for k in ("rows", "ties", "passed", "departure")},
                          "flips": len(r.get("flips") or [])}
    idx = verdict.get("indexer")
    if isinstance(idx, dict):
        out["indexer"] = {**{k: idx.get(k) for k in ("rows", "ties", "twin_departures", "passed")},
                          "flips": len(idx.get("flips") or []), "first_flip": (idx.get("flips") or [None])[0]}
    points = verdict.get("points") or []
    if points:
        out["worst_ratio"] = max(p.get("ratio", 0.0) for p in points)
    sub = verdict.get("subpoints")
    if isinstance(sub, dict):  # the sub-layer points' summary, without their trace
        out["subpoints"] = {k: v for k, v in sub.items() if k != "points"}
    return out


def _classify_error(exc: BaseException) -> str:
    """By class name, so a fake judge (tests) classifies like the real one."""
    names = {c.__name__ for c in type(exc).__mro__}
    if "CandidateLoadError" in names:
        return "candidate-load-error"
    if "OracleLoadError" in names:
        return "oracle-load-error"
    return "error"


def run_configuration(cfg: Configuration, *, results: Path, work: Path, candidate: str,
                      steps: int = STEPS, prompt_len: int = PROMPT_LEN, nodeid: str = "") -> dict[str, Any]:
    """Build, judge and classify one configuration; its result is written to
    :func:`result_path` (and returned).

    Returns: ``{"arch", "dtype", "quant", "label", "candidate", "status", "reason",
    "verdict" (the judge's summary or None), "legacy_keys", "seconds", "nodeid"}``.
    """
    started = time.time()
    base: dict[str, Any] = {"arch": cfg.arch, "dtype": cfg.dtype, "quant": cfg.quant, "label": cfg.label,
                            "candidate": candidate, "nodeid": nodeid, "started": round(started, 3),
                            "status": "running", "reason": None, "verdict": None, "legacy_keys": []}
    path = result_path(results, cfg)
    write_json_atomic(path, base)
    result = dict(base)
    try:
        checkpoint, result["legacy_keys"] = checkpoint_for(cfg.arch, work)
    except Exception as exc:
        result.update(status="not-built", reason=_reason(exc))
    else:
        judge = _judge_function()
        try:
            verdict = judge(checkpoint, candidate=candidate, dtype=cfg.dtype, quant=cfg.quant, steps=steps,
                            prompt_len=prompt_len, seed=0, anchors=False, progress=False)
        except Exception as exc:
            status = _classify_error(exc)
            result.update(status=status, reason=_reason(exc, full=status == "error"))
        except SystemExit as exc:
            # A library that exits the process on import (mlx-lm's olmo module without the
            # ai2-olmo package): that side cannot load the checkpoint.
            side = "candidate" if _raised_in(exc, "mlx_lm") else "oracle" if _raised_in(exc, "transformers") else ""
            status = f"{side}-load-error" if side else "error"
            result.update(status=status, reason=_reason(exc, full=True))
        else:
            result["verdict"] = _summary(verdict)
            result["status"] = "conforms" if verdict.get("passed") else "departs"
            if not verdict.get("passed"):
                result["reason"] = departure_text(result["verdict"])
    result["seconds"] = round(time.time() - started, 2)
    write_json_atomic(path, result)
    return result


def departure_text(verdict: dict[str, Any]) -> str:
    """``step 0, layer 1, op OP (kind) [op detail]: message`` of a departing verdict, or its first
    token flip."""
    dep = verdict.get("departure")
    if dep:
        from conformance.model.report import op_text

        kind = f" ({dep['kind']})" if dep.get("kind") else ""
        detail = f" [{' '.join(str(dep['op_detail']).split())}]" if dep.get("op_detail") else ""
        return f"step {dep.get('step')}, {dep.get('point')}{op_text(dep)}{kind}{detail}: {dep.get('message', '')}".strip()
    tok = verdict.get("tokens") or {}
    flip = tok.get("first_flip")
    if flip:
        return f"greedy token flips outside a tie, first at step {flip.get('step')}"
    routing = verdict.get("routing") or {}
    if routing.get("flips"):
        return f"{routing['flips']} expert choices differ outside a tie"
    indexer = verdict.get("indexer") or {}
    if indexer.get("flips"):
        return f"{indexer['flips']} DSA indexer choices of keys differ outside a tie, first {indexer['first_flip']}"
    return "did not pass (no departure named by the judge)"


def _raised_in(exc: BaseException, package: str) -> bool:
    """Whether ``exc`` was raised from inside ``package`` (its innermost frame's file)."""
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and f"/{package}/" in frames[-1].filename.replace("\\", "/")


def _reason(exc: BaseException, full: bool = False) -> str:
    import re
    import tempfile

    # The judge's temporary folders change every run; the report would differ for nothing.
    text = re.sub(re.escape(tempfile.gettempdir()) + r"/judge-[^/\s]+/", "", f"{type(exc).__name__}: {exc}")
    if full:
        text += "\n" + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-6:])
    return text[:4000]
