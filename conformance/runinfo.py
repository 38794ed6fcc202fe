"""What a conformance run records about itself: versions, back end, device, platform,
commit, profile, MLX's float32 matmul precision (and how it was set) and what the back end
supports. ``conformance.cli`` puts :func:`run_header` at the top of every report.
"""

from __future__ import annotations

import datetime
import os
import platform
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from conformance.tolerance import TF32_BACKENDS, TF32_ENV, tf32_enabled

COMMIT_ENV = "CONFORMANCE_COMMIT"
"""Overrides the recorded commit (for a copy of the project outside its own checkout)."""

ROOT = Path(__file__).resolve().parent.parent


def exit_text(code: int | None) -> str:
    """How a child process ended, for a report: ``killed by SIGSEGV`` (a negative return
    code is the signal), else ``exit status N``."""
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def project_commit(root: Path = ROOT, env: Mapping[str, str] | None = None) -> str:
    """The short commit of the project directory: ``$CONFORMANCE_COMMIT`` if set; else the
    HEAD of the git repository whose top level IS ``root`` (a copy of the project inside
    another checkout must not report that checkout's commit); else ``"unknown"``."""
    environ: Mapping[str, str] = os.environ if env is None else env
    if environ.get(COMMIT_ENV):
        return environ[COMMIT_ENV]

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                  check=False, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    top = git("rev-parse", "--show-toplevel")
    if not top or Path(top).resolve() != Path(root).resolve():
        return "unknown"
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{commit}-dirty" if dirty and commit != "unknown" else commit


def matmul_precision(backend: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """MLX's float32 matmul precision on ``backend`` and how it was set.

    ``MLX_ENABLE_TF32`` defaults to on in MLX on CUDA and on M5-class Apple GPUs, where
    float32 matmuls then round their inputs to TF32 (10-bit mantissa); MLX's CPU back end
    always computes float32 matmuls in float32."""
    environ: Mapping[str, str] = os.environ if env is None else env
    value = environ.get(TF32_ENV)
    if backend not in TF32_BACKENDS:
        return {"variable": TF32_ENV, "value": value, "how_set": "not applicable on this back end",
                "float32_matmul": "float32", "default": "float32"}
    on = tf32_enabled(backend, environ)
    return {
        "variable": TF32_ENV,
        "value": value,
        "how_set": "environment variable" if value is not None else "MLX's default (unset means on)",
        "float32_matmul": "tf32" if on else "float32",
        "default": "tf32" if backend == "cuda" else "tf32 on M5-class GPUs, float32 before",
    }


def supports(backend: str) -> dict[str, Any]:
    """What the back end supports, as the strategies and mlx_impl's guards assume it."""
    return {
        "float64": backend == "cpu",
        "affine_1bit": backend != "cuda",
        "note": ("float64 arrays exist only on MLX's CPU back end; 1-bit affine quantization is "
                 "refused on CUDA (mlx_impl raises before MLX sees it)"),
    }


def run_header(profile: str) -> dict[str, Any]:
    """Versions, back end, device, platform, commit, profile, matmul precision of this run."""
    import hypothesis
    import mlx.core as mx
    import numpy
    import torch

    from conformance.execute import backend_name
    from mlx_impl import cpu_backend

    backend = backend_name()
    return {
        "mlx": getattr(mx, "__version__", "unknown"),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "hypothesis": hypothesis.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "backend": backend,
        "device": str(mx.default_device()),
        "commit": project_commit(),
        "profile": profile,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_backend": cpu_backend.cpu_backend_info(),
        "matmul_precision": matmul_precision(backend),
        "supports": supports(backend),
    }
