"""Model conformance with each configuration in its own process, several at a time.

``python -m conformance model ... --jobs N`` plans the same configurations as a
serial run, writes each one's task as JSON, and runs ``python -X faulthandler -m
conformance model --task TASK.json`` for it, N at a time. So a back end that crashes the
interpreter (a signal in a kernel) or never returns (a hang in a first-use compile)
loses one configuration, named with its exit status or with every thread's Python stack
(faulthandler dumps them on the SIGABRT a timeout sends), and the others still report.

A child writes its result next to its task; the parent merges them into the one report,
in plan order. Results of children that gave none are :func:`failed_result` entries, which
the report prints as CRASH or HANG with the child's last output.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conformance.runinfo import ROOT, exit_text

TAIL_CHARS = 6000
"""How much of a failed child's output (its stack dump included) the report keeps."""


@dataclass(frozen=True)
class Task:
    """One configuration: a model checkpoint in one dtype/quantized mode, or a DiT block."""

    kind: str
    """``model`` or ``dit``."""
    name: str
    dtype: str
    quant: str | None = None
    checkpoint: str | None = None
    block: str | None = None
    prompt: str | None = None
    """A text prompt (``--prompt``); None: random token ids."""

    @property
    def label(self) -> str:
        """``tiny-llama bfloat16+affine4`` / ``dit-double float32``."""
        return f"{self.name} {self.dtype}" + (f"+{self.quant}" if self.quant else "")

    def to_json(self) -> dict[str, Any]:
        """The task as the child reads it."""
        return dict(self.__dict__)


def failed_result(task: Task, status: str, detail: str, seconds: float) -> dict[str, Any]:
    """A result for a configuration whose process crashed (``CRASH``) or overran its
    time (``HANG``): no points, ``passed`` false, the child's last output in ``detail``."""
    base: dict[str, Any] = {"dtype": task.dtype, "quant": task.quant, "passed": False,
                            "error": {"status": status, "detail": detail[-TAIL_CHARS:]},
                            "seconds": round(seconds, 2)}
    if task.kind == "dit":
        return {**base, "block": task.block, "outputs": {}, "anchor": None}
    return {**base, "name": task.name, "checkpoint": task.checkpoint, "points": [], "departure": None,
            "tokens": {"oracle": [], "side": [], "agree": 0, "ties": 0, "flips": [], "steps": 0},
            "anchors": []}


@dataclass
class _Child:
    task: Task
    proc: subprocess.Popen[bytes]
    log: Path
    result: Path
    started: float
    aborted: bool = False


def _start(task: Task, index: int, work: Path, child_args: list[str], env: dict[str, str]) -> _Child:
    task_file = work / f"task-{index:03d}.json"
    task_file.write_text(json.dumps(task.to_json()), encoding="utf-8")
    result = work / f"result-{index:03d}.json"
    log = work / f"log-{index:03d}.txt"
    cmd = [sys.executable, "-X", "faulthandler", "-m", "conformance", "model", "--task", str(task_file),
           "--task-out", str(result), *child_args]
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    return _Child(task, proc, log, result, time.monotonic())


def _finish(child: _Child, timeout: float) -> dict[str, Any]:
    seconds = time.monotonic() - child.started
    if child.result.exists():
        result: dict[str, Any] = json.loads(child.result.read_text(encoding="utf-8"))
        return result
    output = child.log.read_text(encoding="utf-8", errors="replace")
    if child.aborted:
        return failed_result(child.task, "HANG", f"no result after {timeout:.0f} s; the child's output "
                             f"and Python stacks at the timeout:\n{output}", seconds)
    return failed_result(child.task, "CRASH", f"{exit_text(child.proc.returncode)} without a result; the child's "
                         f"output:\n{output}", seconds)


def run_isolated(tasks: list[Task], *, jobs: int, timeout: float, work: Path,
                 child_args: list[str]) -> list[dict[str, Any]]:
    """Run every task in its own process, ``jobs`` at a time; each gets ``timeout`` seconds
    (then SIGABRT, so faulthandler prints its stacks, and SIGKILL 10 s later). Returns the
    results in task order; prints one progress line per finished configuration."""
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # Children share the cores: split the math threads between them.
    threads = str(max(1, (os.cpu_count() or 1) // max(jobs, 1)))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, threads)
    pending = list(enumerate(tasks))
    running: dict[int, _Child] = {}
    results: dict[int, dict[str, Any]] = {}
    while pending or running:
        while pending and len(running) < jobs:
            index, task = pending.pop(0)
            running[index] = _start(task, index, work, child_args, env)
        time.sleep(0.2)
        for index, child in list(running.items()):
            elapsed = time.monotonic() - child.started
            if child.proc.poll() is None:
                if not child.aborted and elapsed > timeout:
                    child.aborted = True
                    child.proc.send_signal(signal.SIGABRT)
                elif child.aborted and elapsed > timeout + 10:
                    child.proc.kill()
                continue
            results[index] = _finish(child, timeout)
            del running[index]
            r = results[index]
            status = r["error"]["status"] if "error" in r else ("PASS" if r["passed"] else "FAIL")
            print(f"[conformance model] [{len(results)}/{len(tasks)}] {child.task.label}: {status} in "
                  f"{elapsed:.1f} s", file=sys.stderr, flush=True)
    return [results[i] for i in range(len(tasks))]
