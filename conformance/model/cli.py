"""``python -m conformance model``: run a checkpoint (or the tiny built ones) through the
model conformance and write the report.

    python -m conformance model CHECKPOINT_DIR [--dtype float32,float64,bfloat16,float16]
        [--steps 32] [--prompt-len 16] [--quantize affine4,mxfp4,...|all]
        [--quant-dtype float32] [--out DIR] [--no-anchors] [--mutant NAME]
        [--candidate mlx_impl|mlx-lm|package.module:function] [--oracle auto|twin|transformers]
        [--no-subpoints]
    python -m conformance model --tiny [llama,qwen3,...|all] [--dit] ...
    python -m conformance model --fixture smollm2-135m-instruct [--prompt TEXT ...|--prompt-file FILE]
        [--no-chat-template] ...

The report goes to ``reports/models/<checkpoint name>/`` by default (``tiny-<backend>``
for ``--tiny``). Progress (one line per side and step) goes to stderr. Exit status 1 when
any configuration leaves its bound, flips a greedy token outside a tie, or an anchor
that must agree does not.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from conformance.model.isolated import Task, run_isolated
from conformance.model.memory import peak_rss_bytes
from conformance.results import write_json_atomic
from conformance.runinfo import ROOT

DTYPES = ("float32", "float64", "bfloat16", "float16")
NO_FLOAT64 = "float64 not run: MLX's {backend} back end has no float64 (MLX computes float64 on its CPU back end only)"


def add_parser(sub: Any) -> None:
    """Register the ``model`` subcommand on ``python -m conformance``'s subparsers."""
    p = sub.add_parser("model", help="model-level conformance of a checkpoint (or --tiny built ones)")
    p.add_argument("checkpoint", nargs="?", help="Hugging Face-layout checkpoint directory")
    p.add_argument("--tiny", default=None, help="instead: tiny transformers-built models, comma list or 'all'")
    p.add_argument("--fixture", default=None,
                   help="instead: a real checkpoint built on first use into the cache (conformance/model/fixtures.py)")
    p.add_argument("--prompt", action="append", default=None,
                   help="a text prompt (repeatable; each runs every configuration), tokenized by the "
                        "checkpoint's tokenizer, through its chat template if it has one")
    p.add_argument("--prompt-file", default=None, help="prompts: a JSON list of strings or one per line")
    p.add_argument("--no-chat-template", action="store_true", help="tokenize the prompt text as is")
    p.add_argument("--dtype", default=",".join(DTYPES), help="comma list of test dtypes")
    p.add_argument("--steps", type=int, default=32, help="cached decode steps after the prefill")
    p.add_argument("--prompt-len", type=int, default=16, help="prefill length (random token ids; without --prompt)")
    p.add_argument("--quantize", default="", help="comma list of quantized modes, or 'all'")
    p.add_argument("--quant-dtype", default="bfloat16", help="dtype of activations and scales for --quantize")
    p.add_argument("--out", default=None, help="report directory (default reports/models/<name>/)")
    p.add_argument("--no-anchors", action="store_true", help="skip transformers and mlx-lm")
    p.add_argument("--dit", action="store_true", help="also run the Flux 2 DiT blocks against diffusers")
    p.add_argument("--mutant", default=None, help="plant a bug in the MLX side (self-check); see mutants.py")
    p.add_argument("--candidate", default="mlx_impl",
                   help="the MLX port judged: mlx_impl (default), mlx-lm, or package.module:function "
                        "(path -> model or (model, cache), mlx-lm's convention); see conformance/model/candidates.py")
    p.add_argument("--oracle", default="auto", choices=("auto", "twin", "transformers"),
                   help="float64 oracle: the twin where it implements the architecture (auto), else "
                        "transformers' own model made float64 (conformance/model/hf_sides.py)")
    p.add_argument("--no-subpoints", action="store_true",
                   help="a candidate other than mlx_impl-vs-twin: do not record the modules inside each decoder "
                        "layer (the op a departure starts at is then not named; conformance/model/subpoints.py)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-tune", action="store_true",
                   help="keep MLX's CPU back end as shipped (default: mlx_impl.cpu_backend.tune_cpu)")
    p.add_argument("--progress", default="steps", choices=("steps", "configs"),
                   help="print a line per side and step (default) or per configuration")
    p.add_argument("--jobs", type=int, default=None,
                   help="each configuration in its own process, this many at a time (1: one after the "
                        "other), so a crash or hang loses only that configuration "
                        "(conformance/model/isolated.py); without it: all in this process")
    p.add_argument("--config-timeout", type=float, default=900.0,
                   help="with --jobs: seconds before a configuration counts as a hang")
    p.add_argument("--memory-limit", type=float, default=None,
                   help="GB a configuration may use (default: the memory available now); a run whose "
                        "estimate exceeds it stops before it starts (conformance/model/memory.py)")
    p.add_argument("--task", help=argparse.SUPPRESS)
    p.add_argument("--task-out", help=argparse.SUPPRESS)
    # Where attribution writes a new divergence's captured inputs (the report folder's
    # captured/; set by the parent for --jobs children).
    p.add_argument("--capture-dir", help=argparse.SUPPRESS)
    p.set_defaults(func=command_model)


def run_header() -> dict[str, Any]:
    """Versions, back end and commit of this run."""
    import mlx.core as mx
    import torch
    import transformers

    from conformance.execute import backend_name
    from conformance.runinfo import matmul_precision, project_commit
    from mlx_impl.cpu_backend import cpu_backend_info

    backend = backend_name()
    return {"matmul_precision": matmul_precision(backend), "cpu_backend": cpu_backend_info(),"mlx": getattr(mx, "__version__", "?"), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "backend": backend, "device": str(mx.default_device()),
            "commit": project_commit(), "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def _split(text: str, known: tuple[str, ...] | list[str], what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if items == ["all"]:
        return list(known)
    unknown = [t for t in items if t not in known]
    if unknown:
        raise SystemExit(f"[conformance model] unknown {what} {unknown}; known: {list(known)}")
    return items


def plan(args: argparse.Namespace, work: Path, dtypes: list[str], quants: list[str],
         prompts: list[str] | None = None) -> list[Task]:
    """Every configuration the arguments ask for, in report order (each model configuration
    once per text prompt: ``name pK`` when there are several). ``--tiny`` checkpoints are
    written into ``work`` here (once each)."""
    from conformance.model.checkpoints import BUILDERS, build_tiny

    tasks: list[Task] = []
    if args.tiny is not None:
        for arch in _split(args.tiny, tuple(BUILDERS), "architecture"):
            ck = build_tiny(arch, work / f"tiny-{arch}", seed=args.seed)
            tasks += _model_tasks(ck, f"tiny-{arch}", dtypes, quants, args.quant_dtype, prompts)
    else:
        ck = Path(args.checkpoint).resolve()
        config = json.loads((ck / "config.json").read_text(encoding="utf-8"))
        if ("quantization" in config or "quantization_config" in config) and quants:
            raise SystemExit(f"[conformance model] {ck} is already quantized; --quantize does not apply.")
        tasks += _model_tasks(ck, ck.name, dtypes, quants, args.quant_dtype, prompts)
    if args.dit:
        for block in ("double", "single"):
            tasks += [Task("dit", f"dit-{block}", dt, None, block=block) for dt in dtypes]
            tasks += [Task("dit", f"dit-{block}", args.quant_dtype, q, block=block) for q in quants]
    return tasks


def _model_tasks(checkpoint: Path, name: str, dtypes: list[str], quants: list[str],
                 quant_dtype: str, prompts: list[str] | None = None) -> list[Task]:
    tasks = []
    for k, prompt in enumerate(prompts or [None]):
        label = f"{name} p{k + 1}" if prompts and len(prompts) > 1 else name
        tasks += ([Task("model", label, dt, None, checkpoint=str(checkpoint), prompt=prompt) for dt in dtypes]
                  + [Task("model", label, quant_dtype, q, checkpoint=str(checkpoint), prompt=prompt)
                     for q in quants])
    return tasks


def execute(task: Task, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Run one configuration in this process; its JSON-ready result."""
    if task.kind == "dit":
        from conformance.model.dit_check import DitCase, run_dit

        return run_dit(DitCase(block=task.block or "double"), task.dtype, task.quant)
    from conformance.model.api import judge_derived
    from conformance.model.candidates import resolve_candidate
    from conformance.model.checkpoints import derive, quantization_label
    from conformance.model.errors import CandidateLoadError, OracleLoadError
    from conformance.model.isolated import failed_result
    from conformance.model.mutants import ALL_MUTANTS
    from conformance.model.prompts import decode, has_chat_template, tokenize_prompt

    checkpoint = Path(task.checkpoint or "")
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    prequantized = quantization_label(config)
    chat = not args.no_chat_template and task.prompt is not None and has_chat_template(checkpoint)
    prompt_ids = None if task.prompt is None else tokenize_prompt(checkpoint, task.prompt, chat)
    prefill = args.prompt_len if prompt_ids is None else prompt_ids.shape[1]
    print(f"[conformance model] {task.label}{' ' + prequantized if prequantized else ''}: prefill {prefill} "
          f"+ {args.steps} steps", file=sys.stderr, flush=True)
    weights = task.quant or ("prequantized" if prequantized else "dense")
    derived = derive(checkpoint, work / f"{task.name}-{task.dtype}-{weights}", task.dtype, task.quant)
    started = time.perf_counter()
    try:
        r = judge_derived(checkpoint, derived, work, model_type=config.get("model_type", "?"),
                          candidate=resolve_candidate(args.candidate), oracle=args.oracle, dtype=task.dtype,
                          quant=task.quant, steps=args.steps, prompt_len=args.prompt_len, seed=args.seed,
                          mutant=ALL_MUTANTS[args.mutant](None) if args.mutant else None,
                          anchors=not args.no_anchors and not prequantized, progress=args.progress == "steps",
                          prompt_ids=prompt_ids, subpoints=not getattr(args, "no_subpoints", False),
                          capture_dir=Path(args.capture_dir) if getattr(args, "capture_dir", None) else None)
    except (CandidateLoadError, OracleLoadError) as exc:
        # This configuration cannot be judged; the others still run and the report says why.
        status = "CANDIDATE ERROR" if isinstance(exc, CandidateLoadError) else "ORACLE ERROR"
        print(f"[conformance model] {task.label}: {status}: {exc}", file=sys.stderr, flush=True)
        r = failed_result(task, status, str(exc), time.perf_counter() - started)
        r.update(candidate=args.candidate, oracle=args.oracle, hidden_states=False, notes=[])
    r["name"] = task.name
    r["checkpoint"] = str(checkpoint)
    if "tokens" not in r:  # a CANDIDATE/ORACLE ERROR row: nothing decoded
        return r
    if prequantized:
        # The checkpoint's own quantized mode (it ran as shipped), not "dense".
        r["quant"] = prequantized
        r["quantization"] = config.get("quantization") or config.get("quantization_config")
    if task.prompt is not None:
        # Greedy text: the oracle's own decode, and MLX's argmax at each step of the same
        # (teacher-forced) sequence: where they differ, MLX would have said otherwise.
        r["prompt"] = {"text": task.prompt, "chat_template": chat}
        r["generated"] = {"oracle": decode(checkpoint, r["tokens"]["oracle"]),
                          "mlx": decode(checkpoint, r["tokens"]["side"])}
    return r


def _check_candidate(spec: str) -> None:
    """Refuse a bad ``--candidate`` before any checkpoint is written (SystemExit with why)."""
    from conformance.model.candidates import resolve_candidate
    from conformance.model.errors import CandidateLoadError

    try:
        resolve_candidate(spec)
    except CandidateLoadError as exc:
        raise SystemExit(f"[conformance model] --candidate: {exc}") from exc


def _child_args(args: argparse.Namespace) -> list[str]:
    """The options a ``--task`` child needs to run its configuration as the parent would."""
    out = ["--steps", str(args.steps), "--prompt-len", str(args.prompt_len), "--seed", str(args.seed),
           "--progress", args.progress]
    out += ["--no-anchors"] if args.no_anchors else []
    out += ["--no-tune"] if args.no_tune else []
    out += ["--no-chat-template"] if args.no_chat_template else []
    out += ["--no-subpoints"] if getattr(args, "no_subpoints", False) else []
    out += ["--mutant", args.mutant] if args.mutant else []
    out += ["--candidate", args.candidate, "--oracle", args.oracle]
    out += ["--capture-dir", args.capture_dir] if getattr(args, "capture_dir", None) else []
    return out


def _run_task_file(args: argparse.Namespace) -> int:
    """``--task FILE --task-out FILE``: one configuration, as a child of a ``--jobs`` run."""
    task_file = Path(args.task)
    task = Task(**json.loads(task_file.read_text(encoding="utf-8")))
    # Inside the parent's temporary folder, beside the task: a child killed at its timeout
    # cannot clean up after itself, and a folder of its own in /tmp would be left behind.
    with tempfile.TemporaryDirectory(prefix=f"{task_file.stem}-", dir=task_file.parent) as tmp:
        result = execute(task, args, Path(tmp))
    write_json_atomic(Path(args.task_out), result)
    return 0


def command_model(args: argparse.Namespace) -> int:
    """Entry of ``python -m conformance model``."""
    from conformance.execute import backend_name
    from conformance.model.checkpoints import QUANT_MODES
    from conformance.model.fixtures import fixture_path
    from conformance.model.prompts import read_prompts
    from conformance.model.report import SCHEMA, summary_line, write_model_report
    from mlx_impl.cpu_backend import tune_cpu

    if not args.no_tune:
        tune_cpu()
    if args.mutant:
        from conformance.model.mutants import ALL_MUTANTS

        _split(args.mutant, tuple(ALL_MUTANTS), "mutant")
        if args.candidate != "mlx_impl":
            raise SystemExit(f"[conformance model] --mutant plants a bug in mlx_impl; it does not apply to "
                             f"--candidate {args.candidate}.")
    _check_candidate(args.candidate)
    if args.task:
        return _run_task_file(args)
    dtypes = _split(args.dtype, DTYPES, "dtype")
    quants = _split(args.quantize, tuple(QUANT_MODES), "quantized mode")
    if sum(a is not None for a in (args.checkpoint, args.tiny, args.fixture)) != 1:
        raise SystemExit("[conformance model] give one of CHECKPOINT_DIR, --tiny or --fixture.")
    prompts = read_prompts(args.prompt, args.prompt_file) or None
    if args.fixture is not None:
        args.checkpoint = str(fixture_path(args.fixture))
    if (args.jobs is not None and args.jobs < 1) or args.config_timeout <= 0:
        raise SystemExit("[conformance model] --jobs must be at least 1 and --config-timeout positive.")
    notes: list[str] = []
    if "float64" in dtypes and backend_name() != "cpu":
        dtypes = [d for d in dtypes if d != "float64"]
        notes.append(NO_FLOAT64.format(backend=backend_name()))
    name = f"tiny-{backend_name()}" if args.tiny is not None else Path(args.checkpoint).resolve().name
    out = Path(args.out) if args.out else ROOT / "reports" / "models" / name
    args.capture_dir = args.capture_dir or str(out / "captured")
    with tempfile.TemporaryDirectory(prefix="model-conformance-") as tmp:
        work = Path(tmp)
        tasks = plan(args, work, dtypes, quants, prompts)
        memory = check_memory(tasks, args)
        if args.jobs is not None:
            results = run_isolated(tasks, jobs=args.jobs, timeout=args.config_timeout, work=work / "tasks",
                                   child_args=_child_args(args))
        else:
            results = [execute(t, args, work) for t in tasks]
    report: dict[str, Any] = {"schema": SCHEMA, "run": {**run_header(), "peak_rss_mb": round(peak_rss_bytes() / 2**20, 1),
                                                       "memory": memory}, "notes": notes,
                              "mutant": args.mutant,
                              "results": [r for t, r in zip(tasks, results, strict=True) if t.kind == "model"],
                              "dit": [r for t, r in zip(tasks, results, strict=True) if t.kind == "dit"]}
    notes += _anchor_notes(report["results"]) + _candidate_notes(report["results"])
    write_model_report(report, out)
    passed = sum(r["passed"] for r in results)
    print(f"[conformance model] {summary_line(report)} Report: {out / 'report.html'}", flush=True)
    return 0 if passed == len(results) else 1


def _candidate_notes(results: list[dict[str, Any]]) -> list[str]:
    """The candidates' own notes (logits only, routing not judged ...), once each."""
    seen: dict[str, str] = {}
    for r in results:
        for n in r.get("notes", []):
            seen.setdefault(f"{r.get('candidate', 'mlx_impl')} on {r.get('model_type', r.get('name', '?'))}: {n}", "")
    return list(seen)


def check_memory(tasks: list[Task], args: argparse.Namespace) -> dict[str, Any]:
    """Estimate every model configuration's peak (conformance/model/memory.py) and stop
    before anything runs when one (or, with ``--jobs N``, the N largest together) exceeds
    ``--memory-limit`` or the memory available now. Returns the estimates for the report."""
    from conformance.model.memory import available_bytes, checkpoint_size, estimate
    from conformance.model.sides import mlx_lm_supports

    limit = int(args.memory_limit * 1e9) if args.memory_limit else available_bytes()
    found: dict[str, int] = {}
    lines: list[str] = []
    for t in tasks:
        if t.kind != "model":
            continue
        ck = Path(t.checkpoint or "")
        config = json.loads((ck / "config.json").read_text(encoding="utf-8"))
        size = checkpoint_size(ck)
        anchors = not args.no_anchors and not size.quantized
        e = estimate(size, config, t.dtype, t.quant, steps=args.steps, prompt_len=args.prompt_len,
                     transformers_anchor=anchors and t.dtype in ("float32", "float64") and t.quant is None,
                     mlx_lm_anchor=anchors and mlx_lm_supports(str(config.get("model_type"))))
        label = f"{t.name} {t.dtype}" + (f"+{t.quant}" if t.quant else "")
        found[label] = e.total
        lines.append(f"  {label}: {e.describe()}")
    at_once = sum(sorted(found.values(), reverse=True)[: max(1, args.jobs or 1)])
    if at_once > limit:
        raise SystemExit(
            f"[conformance model] this run needs about {at_once / 1e9:.2f} GB at its peak "
            f"({'--jobs ' + str(args.jobs) + ' at once' if (args.jobs or 1) > 1 else 'one configuration at a time'}) "
            f"but {'--memory-limit is' if args.memory_limit else 'the memory available now is'} "
            f"{limit / 1e9:.2f} GB; nothing was run. Estimates:\n" + "\n".join(lines)
            + "\nRun fewer --jobs, or drop the anchors (--no-anchors), or pass a larger --memory-limit.")
    return {"limit_gb": round(limit / 1e9, 2), "estimated_gb": {k: round(v / 1e9, 2) for k, v in found.items()}}


def _anchor_notes(results: list[dict[str, Any]]) -> list[str]:
    """One line per distinct reason an optional anchor (mlx-lm) could not run or differed."""
    seen: dict[str, str] = {}
    for r in results:
        for a in r["anchors"]:
            if a["required"] or a["passed"]:
                continue
            what = a.get("error") or (f"differs from the oracle beyond the bound (worst relative error "
                                      f"{a['worst_rel_err']:.2g} vs the twin's {a['twin_rel_err']:.2g})")
            seen.setdefault(" ".join(f"{a['name']} on {r['model_type']}: {what}".split())[:400], "")
    return list(seen)


TINY_SUITE = ["--tiny", "all", "--quantize", "all", "--steps", "32", "--prompt-len", "8", "--dit",
              "--progress", "configs"]
"""What ``python -m conformance run`` runs: every architecture's tiny transformers-built
model, dense in every dtype and in every quantized mode (bfloat16 activations, as MLX
checkpoints ship), a prefill of 8 tokens (longer than Gemma 3's window of 4) and 32
cached steps, plus the DiT block."""


def run_tiny_suite(models_root: Path, env: dict[str, str], jobs: int = 1) -> tuple[bool, dict[str, Any]]:
    """Run :data:`TINY_SUITE` in a subprocess (a crash loses only this part) writing the
    model report to ``models_root/tiny-<backend>``; returns (ok, summary for the
    conformance report). On a GPU back end each configuration runs in its own process,
    ``jobs`` at a time (a kernel that crashes or a first-use compile that hangs loses only
    its configuration); on the CPU one process runs them all, since a process per
    configuration would add its imports (about 3 s) 55 times to CI's time."""
    from conformance.execute import backend_name
    from conformance.model.report import config_label, dit_label

    backend = backend_name()
    out = models_root / f"tiny-{backend}"
    isolate = ["--jobs", str(jobs)] if backend != "cpu" else []
    cmd = [sys.executable, "-m", "conformance", "model", *TINY_SUITE, *isolate, "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("[conformance model]") or " PASS in " in line or " FAIL in " in line:
            print(line, flush=True)
    try:
        report = json.loads((out / "model.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return False, {"report": str(out), "error": f"exit {proc.returncode}; {proc.stdout[-1500:]}"}
    results = report["results"] + report["dit"]
    summary = {"report": str(out), "configurations": len(results),
               "passed": sum(r["passed"] for r in results),
               "departures": [{"configuration": dit_label(r) if "block" in r else config_label(r),
                               **(r.get("error") or r.get("departure") or {})}
                              for r in results if not r["passed"]]}
    return proc.returncode == 0, summary
