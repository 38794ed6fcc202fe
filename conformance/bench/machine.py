"""The machine a benchmark ran on (back end, devices, versions, BLAS, threads, the float32
matmul precision) and the roofline peak benchmarks.

Roofline peaks (:func:`peak_cases`, timed by pytest-benchmark beside the ops, group
``roofline/<resource>/<dtype>``) are measured PER DTYPE AND PRECISION, in the same process
and precision setting as the ops they bound:

* **bandwidth**: ``y = x + 1`` over a vector of the dtype at several sizes (the largest far
  beyond any cache); bytes = 2 x size. MLX evaluates it; PyTorch writes into a
  preallocated output so neither pays fresh page faults.
* **GEMM**: a square ``a @ b`` in the dtype (2N^3 FLOPs) at several N. On CUDA the float32
  GEMM runs in the process's precision: TF32 when ``MLX_ENABLE_TF32`` is unset or 1 (MLX's
  default; PyTorch's ``allow_tf32`` is set to match), full float32 when it is 0.

The report's peak for a resource and dtype is the best of every size and both libraries,
from each benchmark's FASTEST round (a peak is what the machine can do). An op's roofline
share is ``max(flops / peak_flops, bytes / peak_bandwidth) / median``; with the peak taken
in the op's own dtype and precision and over cache-sized inputs too, a share above 100 %
means the cost model or the peak is wrong, and the report prints it unclipped.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
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
        "float32_precision": float32_precision(backend),
    }
    if torch_device == "cuda":
        info["torch_gpu"] = torch.cuda.get_device_name()
    return info


def float32_precision(backend: str) -> str:
    """``"tf32"`` when MLX's CUDA back end runs float32 matmuls in TF32 (``MLX_ENABLE_TF32``
    unset or not 0: MLX reads it once at start-up), else ``"float32"``."""
    if backend == "cuda" and os.environ.get("MLX_ENABLE_TF32", "1") != "0":
        return "tf32"
    return "float32"


def match_torch_precision(precision: str) -> None:
    """Make PyTorch's CUDA float32 matmuls (and cuDNN's) run in ``precision``."""
    import torch

    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


@dataclass(frozen=True)
class PeakCase:
    """One roofline measurement: ``resource`` (``gemm`` or ``bandwidth``) in ``dtype`` on
    ``lib`` (``mlx`` or ``torch``) at ``size`` (GEMM N, or vector elements)."""

    resource: str
    dtype: str
    lib: str
    size: int

    @property
    def work(self) -> float:
        """FLOPs (GEMM) or bytes moved (bandwidth) by one call."""
        if self.resource == "gemm":
            return 2.0 * self.size**3
        return 2.0 * _WIDTH[self.dtype] * self.size

    @property
    def id(self) -> str:
        """Test id: ``gemm-float32-mlx-512``."""
        return f"{self.resource}-{self.dtype}-{self.lib}-{self.size}"


_WIDTH = {"float32": 4, "bfloat16": 2, "float16": 2}

PEAK_SIZES: dict[str, dict[str, Any]] = {
    # MLX's CPU back end has no bfloat16 BLAS: a 1024^3 bfloat16 GEMM takes seconds there.
    "cpu": {"gemm": {"float32": (256, 512, 1024), "bfloat16": (128, 256, 512)},
            "bandwidth": (1 << 18, 1 << 21, 1 << 24)},
    "gpu": {"gemm": {"float32": (1024, 4096, 8192), "bfloat16": (1024, 4096, 8192)},
            "bandwidth": (1 << 22, 1 << 26, 1 << 28)},
    "tiny": {"gemm": {"float32": (32,), "bfloat16": (32,)}, "bandwidth": (1 << 10,)},
}


def peak_cases(kind: str, dtypes: tuple[str, ...] = ("float32", "bfloat16")) -> list[PeakCase]:
    """Every roofline measurement for ``kind`` (``cpu``, ``gpu`` or ``tiny``)."""
    sizes = PEAK_SIZES[kind]
    cases = []
    for dtype in dtypes:
        for lib in ("mlx", "torch"):
            cases += [PeakCase("gemm", dtype, lib, n) for n in sizes["gemm"][dtype]]
            cases += [PeakCase("bandwidth", dtype, lib, n) for n in sizes["bandwidth"]]
    return cases


def build_peak(case: PeakCase, torch_device: str) -> Callable[[], None]:
    """A callable doing one ``case`` measurement's work and waiting for it."""
    import mlx.core as mx
    import torch

    from conformance.bench.cells import torch_sync
    from conformance.dtypes import FORMATS

    n = case.size
    if case.lib == "mlx":
        dt = FORMATS[case.dtype].mx_dtype
        if case.resource == "gemm":
            a = mx.random.normal((n, n), key=mx.random.key(0)).astype(dt)
            b = mx.random.normal((n, n), key=mx.random.key(1)).astype(dt)
            mx.eval(a, b)
            return lambda: mx.eval(a @ b)
        x = mx.zeros((n,), dtype=dt)
        mx.eval(x)
        return lambda: mx.eval(x + 1)
    tdt = FORMATS[case.dtype].torch_dtype
    sync = torch_sync(torch_device)
    gen = torch.Generator().manual_seed(0)
    if case.resource == "gemm":
        ta = torch.randn(n, n, generator=gen).to(device=torch_device, dtype=tdt)
        tb = torch.randn(n, n, generator=gen).to(device=torch_device, dtype=tdt)
        out = torch.empty(n, n, device=torch_device, dtype=tdt)

        def gemm() -> None:
            with torch.inference_mode():
                torch.matmul(ta, tb, out=out)
            sync()
        return gemm
    tx = torch.zeros(n, dtype=tdt, device=torch_device)
    ty = torch.empty_like(tx)

    def add() -> None:
        with torch.inference_mode():
            torch.add(tx, 1, out=ty)
        sync()
    return add
