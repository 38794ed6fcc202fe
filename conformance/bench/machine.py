"""The machine a benchmark ran on: back end, devices, versions, BLAS, threads, and its
measured roofline (memory bandwidth and float32 GEMM throughput, per library).

Roofline measurements (:func:`measure_roofline`):

* **bandwidth**: ``y = x + 1`` over a float32 vector far larger than any cache
  (256 MiB; the smoke run uses 1 MiB): it reads and writes every element once, so
  bytes = 2 x size. MLX evaluates it with ``mx.eval``; PyTorch writes into a preallocated
  output (``torch.add(x, 1, out=y)``) so that neither library pays fresh page faults
  (MLX's buffer cache reuses its output buffer the same way).
* **GEMM**: a square float32 ``a @ b`` (2N^3 FLOPs), N doubling from 256 while one call
  takes under 0.1 s (up to 8192); the best throughput over the sizes tried counts.

Peaks use each measurement's FASTEST sample, not its median: a peak is what the machine
can do, and another process stealing a core only ever slows a sample down. The
machine's peak is the better of the two libraries for each resource: an op's
roofline share (:mod:`conformance.bench.costs`) is measured against what THIS machine
demonstrably reaches, whichever library reached it. bfloat16 ops are compared with the
float32 GEMM peak too (a CPU without bfloat16 matrix units has no faster one).
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
from typing import Any

from conformance.bench.timing import Budget, measure

BANDWIDTH_ELEMENTS = 64 * 1024 * 1024
TINY_BANDWIDTH_ELEMENTS = 256 * 1024


def backend_name() -> str:
    """``"cpu"``, ``"metal"`` or ``"cuda"``: where MLX's default device computes now."""
    from conformance.execute import backend_name as _backend

    return _backend()


def select_device(device: str) -> str:
    """Make MLX compute on ``device`` (``"cpu"``, ``"gpu"`` or ``"auto"``, MLX's default:
    Metal on Apple silicon, CUDA where ``mlx[cuda13]`` is installed, the CPU otherwise);
    return the back end name."""
    import mlx.core as mx

    if device == "cpu":
        mx.set_default_device(mx.cpu)
    elif device == "gpu":
        if not (mx.metal.is_available() or mx.cuda.is_available()):
            raise ValueError("[bench] --device gpu: MLX has no GPU back end here (no Metal, no CUDA).")
        mx.set_default_device(mx.gpu)
    return backend_name()


def torch_device_for(backend: str) -> str:
    """The PyTorch device that matches MLX's back end, when this PyTorch build has it."""
    import torch

    if backend == "cuda" and torch.cuda.is_available():
        return "cuda"
    if backend == "metal" and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``, ``sysctl`` on macOS), or the architecture."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                             text=True, check=False, timeout=5).stdout.strip()
        if out:
            return out
    return platform.processor() or platform.machine()


def cpu_cores() -> int:
    """CPUs this process may run on (the affinity mask, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def memory_bytes() -> int | None:
    """Physical memory in bytes, or None when unknown."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def gpu_name(backend: str) -> str:
    """The GPU's name for a GPU back end ('' on the CPU)."""
    if backend == "cpu":
        return ""
    import mlx.core as mx

    with contextlib.suppress(Exception):
        info = mx.device_info()
        name = info.get("device_name") or info.get("name")
        if name:
            return str(name)
    return backend


def _slug(text: str) -> str:
    text = re.sub(r"\((r|tm|c)\)", "", text.lower())
    text = re.sub(r"\b(cpu|processor|\d+-core|with radeon graphics)\b", "", text)
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "unknown"


def machine_slug(backend: str) -> str:
    """Directory name for this machine's baselines: ``<backend>-<device>``, e.g.
    ``cpu-amd-epyc-2c`` (CPU model and core count) or ``cuda-nvidia-h100-80gb-hbm3``."""
    if backend == "cpu":
        return f"cpu-{_slug(cpu_model())}-{cpu_cores()}c"
    return f"{backend}-{_slug(gpu_name(backend))}"


def torch_blas() -> str:
    """Which BLAS this PyTorch build uses (``BLAS_INFO`` of ``torch.__config__.show()``)."""
    import torch

    match = re.search(r"BLAS_INFO=([^,\s]+)", torch.__config__.show())
    return match.group(1) if match else "unknown"


def _commit() -> str:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=False, timeout=10).stdout.strip()
        if out:
            return out
    return "unknown"


def machine_info(backend: str, torch_device: str, mlx_tuning: dict[str, Any]) -> dict[str, Any]:
    """Everything a reader needs to judge a baseline: hardware, versions, BLAS, threads."""
    import datetime

    import mlx.core as mx
    import numpy
    import torch

    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": _commit(),
        "backend": backend,
        "mlx_device": str(mx.default_device()),
        "torch_device": torch_device,
        "cpu_model": cpu_model(),
        "cpu_cores": cpu_cores(),
        "memory_bytes": memory_bytes(),
        "gpu": gpu_name(backend),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "mlx": str(getattr(mx, "__version__", "unknown")),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_blas": torch_blas(),
        "mlx_cpu_backend": mlx_tuning,
    }
    if torch_device == "cuda":
        info["torch_gpu"] = torch.cuda.get_device_name()
    return info


def _sync_for(torch_device: str):
    import torch

    if torch_device == "cuda":
        return torch.cuda.synchronize
    if torch_device == "mps":
        return torch.mps.synchronize
    return lambda: None


def _mlx_add_one(n: int, budget: Budget) -> float:
    """Fastest seconds of ``mx.eval(x + 1)`` over ``n`` float32 elements."""
    import mlx.core as mx

    x = mx.zeros((n,), dtype=mx.float32)
    mx.eval(x)
    return measure(lambda: mx.eval(x + 1.0), budget).min_s


def _torch_add_one(n: int, torch_device: str, budget: Budget) -> float:
    """Fastest seconds of ``torch.add(x, 1, out=y)`` over ``n`` float32 elements."""
    import torch

    sync = _sync_for(torch_device)
    x = torch.zeros(n, dtype=torch.float32, device=torch_device)
    y = torch.empty_like(x)

    def run() -> None:
        torch.add(x, 1.0, out=y)
        sync()

    return measure(run, budget).min_s


def measure_roofline(torch_device: str, *, tiny: bool = False, budget: Budget | None = None) -> dict[str, Any]:
    """Bandwidth (bytes/s) and float32 GEMM throughput (FLOP/s) of MLX and of PyTorch on
    the benchmarked devices, and the machine's peak (the better library); see the module
    docstring."""
    import mlx.core as mx
    import torch

    budget = budget or Budget(target_s=0.3, min_samples=5, cap_s=1.0)
    sync = _sync_for(torch_device)
    n = TINY_BANDWIDTH_ELEMENTS if tiny else BANDWIDTH_ELEMENTS
    result: dict[str, Any] = {"bandwidth_elements": n}

    mlx_bw = 2 * 4 * n / _mlx_add_one(n, budget)
    torch_bw = 2 * 4 * n / _torch_add_one(n, torch_device, budget)

    def gemm_peak(run_for_size) -> tuple[float, int]:
        best, best_n, size = 0.0, 0, 128 if tiny else 256
        while True:
            timing = measure(run_for_size(size), budget)
            rate = 2.0 * size**3 / timing.min_s
            if rate > best:
                best, best_n = rate, size
            if tiny or timing.median_s >= 0.1 or size >= 8192:
                return best, best_n
            size *= 2

    def mlx_gemm(size):
        a = mx.random.normal((size, size), key=mx.random.key(0))
        b = mx.random.normal((size, size), key=mx.random.key(1))
        mx.eval(a, b)
        return lambda: mx.eval(a @ b)

    def torch_gemm(size):
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=gen).to(torch_device)
        b = torch.randn(size, size, generator=gen).to(torch_device)
        out = torch.empty(size, size, device=torch_device)

        def run() -> None:
            torch.matmul(a, b, out=out)
            sync()
        return run

    with torch.inference_mode():
        mlx_flops, mlx_n = gemm_peak(mlx_gemm)
        torch_flops, torch_n = gemm_peak(torch_gemm)
    result["mlx"] = {"bandwidth_Bps": mlx_bw, "gemm_flops": mlx_flops, "gemm_n": mlx_n}
    result["torch"] = {"bandwidth_Bps": torch_bw, "gemm_flops": torch_flops, "gemm_n": torch_n}
    result["peak"] = {"bandwidth_Bps": max(mlx_bw, torch_bw), "gemm_flops": max(mlx_flops, torch_flops)}
    return result


def roofline_share(flops: float, nbytes: float, seconds: float, peak: dict[str, float]) -> float | None:
    """Lower-bound time from the peaks over the measured time (1.0 = at the roofline)."""
    if seconds <= 0:
        return None
    bound = max(flops / peak["gemm_flops"] if peak.get("gemm_flops") else 0.0,
                nbytes / peak["bandwidth_Bps"] if peak.get("bandwidth_Bps") else 0.0)
    return bound / seconds if bound > 0 else None
