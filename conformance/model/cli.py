"""``python -m conformance model``: run a checkpoint (or the tiny built ones) through the
model conformance and write the report.

    python -m conformance model CHECKPOINT_DIR [--dtype float32,float64,bfloat16,float16]
        [--steps 32] [--prompt-len 16] [--quantize affine4,mxfp4,...|all]
        [--quant-dtype float32] [--out DIR] [--no-anchors] [--mutant NAME]
    python -m conformance model --tiny [llama,qwen3,...|all] [--dit] ...

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
from pathlib import Path
from typing import Any

from conformance.model.isolated import Task, run_isolated
from conformance.results import write_json_atomic
from conformance.runinfo import ROOT

DTYPES = ("float32", "float64", "bfloat16", "float16")
NO_FLOAT64 = "float64 not run: MLX's {backend} back end has no float64 (MLX computes float64 on its CPU back end only)"


def add_parser(sub: Any) -> None:
    """Register the ``model`` subcommand on ``python -m conformance``'s subparsers."""
    p = sub.add_parser("model", help="model-level conformance of a checkpoint (or --tiny built ones)")
    p.add_argument("checkpoint", nargs="?", help="Hugging Face-layout checkpoint directory")
    p.add_argument("--tiny", default=None, help="instead: tiny transformers-built models, comma list or 'all'")
    p.add_argument("--dtype", default=",".join(DTYPES), help="comma list of test dtypes")
    p.add_argument("--steps", type=int, default=32, help="cached decode steps after the prefill")
    p.add_argument("--prompt-len", type=int, default=16, help="prefill length (random token ids)")
    p.add_argument("--quantize", default="", help="comma list of quantized modes, or 'all'")
    p.add_argument("--quant-dtype", default="bfloat16", help="dtype of activations and scales for --quantize")
    p.add_argument("--out", default=None, help="report directory (default reports/models/<name>/)")
    p.add_argument("--no-anchors", action="store_true", help="skip transformers and mlx-lm")
    p.add_argument("--dit", action="store_true", help="also run the Flux 2 DiT blocks against diffusers")
    p.add_argument("--mutant", default=None, help="plant a bug in the MLX side (self-check); see mutants.py")
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
            "commit": project_commit(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _split(text: str, known: tuple[str, ...] | list[str], what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if items == ["all"]:
        return list(known)
    unknown = [t for t in items if t not in known]
    if unknown:
        raise SystemExit(f"[conformance model] unknown {what} {unknown}; known: {list(known)}")
    return items


def plan(args: argparse.Namespace, work: Path, dtypes: list[str], quants: list[str]) -> list[Task]:
    """Every configuration the arguments ask for, in report order. ``--tiny`` checkpoints are
    written into ``work`` here (once each)."""
    from conformance.model.checkpoints import BUILDERS, build_tiny

    tasks: list[Task] = []
    if args.tiny is not None:
        for arch in _split(args.tiny, tuple(BUILDERS), "architecture"):
            ck = build_tiny(arch, work / f"tiny-{arch}", seed=args.seed)
            tasks += _model_tasks(ck, f"tiny-{arch}", dtypes, quants, args.quant_dtype)
    else:
        ck = Path(args.checkpoint).resolve()
        config = json.loads((ck / "config.json").read_text(encoding="utf-8"))
        if ("quantization" in config or "quantization_config" in config) and quants:
            raise SystemExit(f"[conformance model] {ck} is already quantized; --quantize does not apply.")
        tasks += _model_tasks(ck, ck.name, dtypes, quants, args.quant_dtype)
    if args.dit:
        for block in ("double", "single"):
            tasks += [Task("dit", f"dit-{block}", dt, None, block=block) for dt in dtypes]
            tasks += [Task("dit", f"dit-{block}", args.quant_dtype, q, block=block) for q in quants]
    return tasks


def _model_tasks(checkpoint: Path, name: str, dtypes: list[str], quants: list[str],
                 quant_dtype: str) -> list[Task]:
    return ([Task("model", name, dt, None, checkpoint=str(checkpoint)) for dt in dtypes]
            + [Task("model", name, quant_dtype, q, checkpoint=str(checkpoint)) for q in quants])


def execute(task: Task, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Run one configuration in this process; its JSON-ready result."""
    if task.kind == "dit":
        from conformance.model.dit_check import DitCase, run_dit

        return run_dit(DitCase(block=task.block or "double"), task.dtype, task.quant)
    from conformance.model.checkpoints import derive
    from conformance.model.harness import run_config
    from conformance.model.mutants import ALL_MUTANTS

    checkpoint = Path(task.checkpoint or "")
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    prequantized = "quantization" in config or "quantization_config" in config
    print(f"[conformance model] {task.label}: prefill {args.prompt_len} + {args.steps} steps",
          file=sys.stderr, flush=True)
    derived = derive(checkpoint, work / f"{task.name}-{task.dtype}-{task.quant or 'dense'}", task.dtype, task.quant)
    r = run_config(checkpoint, derived, model_type=config.get("model_type", "?"), dtype=task.dtype,
                   quant=task.quant, steps=args.steps, prompt_len=args.prompt_len, seed=args.seed,
                   mutant=ALL_MUTANTS[args.mutant](None) if args.mutant else None,
                   anchors=not args.no_anchors and not prequantized, progress=args.progress == "steps",
                   capture_dir=Path(args.capture_dir) if getattr(args, "capture_dir", None) else None)
    r["name"] = task.name
    r["checkpoint"] = str(checkpoint)
    return r


def _child_args(args: argparse.Namespace) -> list[str]:
    """The options a ``--task`` child needs to run its configuration as the parent would."""
    out = ["--steps", str(args.steps), "--prompt-len", str(args.prompt_len), "--seed", str(args.seed),
           "--progress", args.progress]
    out += ["--no-anchors"] if args.no_anchors else []
    out += ["--no-tune"] if args.no_tune else []
    out += ["--mutant", args.mutant] if args.mutant else []
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
    from conformance.model.report import SCHEMA, write_model_report
    from mlx_impl.cpu_backend import tune_cpu

    if not args.no_tune:
        tune_cpu()
    if args.mutant:
        from conformance.model.mutants import ALL_MUTANTS

        _split(args.mutant, tuple(ALL_MUTANTS), "mutant")
    if args.task:
        return _run_task_file(args)
    dtypes = _split(args.dtype, DTYPES, "dtype")
    quants = _split(args.quantize, tuple(QUANT_MODES), "quantized mode")
    if (args.checkpoint is None) == (args.tiny is None):
        raise SystemExit("[conformance model] give a CHECKPOINT_DIR or --tiny, not both or neither.")
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
        tasks = plan(args, work, dtypes, quants)
        if args.jobs is not None:
            results = run_isolated(tasks, jobs=args.jobs, timeout=args.config_timeout, work=work / "tasks",
                                   child_args=_child_args(args))
        else:
            results = [execute(t, args, work) for t in tasks]
    report: dict[str, Any] = {"schema": SCHEMA, "run": run_header(), "notes": notes, "mutant": args.mutant,
                              "results": [r for t, r in zip(tasks, results, strict=True) if t.kind == "model"],
                              "dit": [r for t, r in zip(tasks, results, strict=True) if t.kind == "dit"]}
    notes += _anchor_notes(report["results"])
    write_model_report(report, out)
    passed = sum(r["passed"] for r in results)
    print(f"[conformance model] {passed}/{len(results)} configurations conform. Report: {out / 'report.html'}",
          flush=True)
    return 0 if passed == len(results) else 1


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
