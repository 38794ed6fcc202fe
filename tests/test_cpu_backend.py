"""mlx_impl.cpu_backend: cache-limit tuning, BLAS rebinding of libmlx, the report fields and
the LD_PRELOAD helper. Every test leaves MLX's cache limit and BLAS binding as it found them.

The rebinding tests need PyPI's ``scipy-openblas32``; the LD_PRELOAD test needs an
unprefixed LP64 BLAS on the machine (Debian ``libopenblas0-pthread`` or PyPI ``mkl``). They
skip, saying so, where those are absent; the "absent" behaviour is tested on every machine.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_impl import cpu_backend as cb

ROOT = Path(__file__).resolve().parents[1]
LINUX = sys.platform == "linux"
HAS_SCIPY_OPENBLAS32 = importlib.util.find_spec("scipy_openblas32") is not None
NEEDS_LINUX = pytest.mark.skipif(not LINUX, reason="libmlx GOT rebinding is Linux/ELF-only")
NEEDS_OPENBLAS32 = pytest.mark.skipif(
    not (LINUX and HAS_SCIPY_OPENBLAS32),
    reason="scipy-openblas32 is not installed (pip install scipy-openblas32): the rebinding "
    "itself can only be exercised with it; the fallback without it is tested separately",
)


@pytest.fixture(autouse=True)
def _restore_backend_state() -> Iterator[None]:
    """Put back the cache limit and the BLAS binding the session had before each test."""
    limit = cb._read_cache_limit()
    provider = cb._STATE.provider
    yield
    mx.set_cache_limit(limit)
    if provider is None:
        cb.restore_default_blas()
    else:
        cb.use_optimized_blas(provider.path)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env.pop(cb.BLAS_ENV_VAR, None)
    return env


def _run_child(code: str, env: dict[str, str]) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _mapped_paths() -> set[str]:
    with open("/proc/self/maps") as f:
        return {os.path.realpath(line.split()[-1]) for line in f if len(line.split()) >= 6}


def _check_matmul_accuracy(m: int, k: int, n: int) -> None:
    """float32 MLX matmul against the float64 product, within the float32 summation bound."""
    rng = np.random.default_rng(7)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    got = np.array(mx.matmul(mx.array(a), mx.array(b), stream=mx.cpu)).astype(np.float64)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    # |fl(a@b) - a@b| <= gamma_k |a||b| with gamma_k ~ k * eps32 (Higham, Thm 3.5).
    bound = k * np.finfo(np.float32).eps * (np.abs(a).astype(np.float64) @ np.abs(b))
    assert np.all(np.abs(got - exact) <= bound)
    # Typical error is far below the worst-case bound; a garbled call would not be.
    assert np.max(np.abs(got - exact)) < 1e-3


# ---------------------------------------------------------------------------------------
# Report fields and cache limit
# ---------------------------------------------------------------------------------------


def test_info_has_every_field() -> None:
    info = cb.cpu_backend_info()
    expected = {
        "mlx_version",
        "default_device",
        "device_info",
        "cache_limit",
        "memory_limit",
        "cache_memory",
        "active_memory",
        "peak_memory",
        "physical_memory",
        "cpu_count",
        "blas",
        "mapped_blas_libraries",
        "thread_env",
        "platform",
        "python",
    }
    assert set(info) == expected
    assert info["mlx_version"] == getattr(mx, "__version__", None)
    assert set(info["blas"]) == {"active", "provider", "library", "reason", "config", "threads"}
    assert isinstance(info["cache_limit"], int) and info["cache_limit"] >= 0
    assert info["cpu_count"] >= 1
    json.dumps(info)  # reports store it as JSON
    if LINUX:
        # The netlib BLAS the wheel bundles stays mapped whatever MLX calls.
        assert any("libblas" in p for p in info["mapped_blas_libraries"])
        assert info["blas"]["library"] is not None


def test_default_cache_limit_is_a_third_of_ram_at_most_8_gib() -> None:
    ram = cb._physical_memory()
    assert ram is not None and ram > 0
    assert cb.default_cache_limit() == min(8 << 30, ram // 3)


def test_tune_sets_the_cache_limit_and_it_reads_back() -> None:
    if mx.default_device().type != mx.DeviceType.cpu:
        pytest.skip("tune_cpu acts only when the default device is the CPU")
    info = cb.tune_cpu(123_456_789, blas=False)
    assert info.cache_limit == 123_456_789
    assert mx.set_cache_limit(123_456_789) == 123_456_789  # MLX's own read-back
    assert cb.tune_cpu(blas=False).cache_limit == cb.default_cache_limit()
    assert cb.tune_cpu(0, blas=False).cache_limit == 0


def test_reading_the_cache_limit_changes_nothing() -> None:
    mx.set_cache_limit(77_777_777)
    assert cb._read_cache_limit() == 77_777_777
    assert cb._read_cache_limit() == 77_777_777


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"cache_limit_bytes": -1}, ValueError),
        ({"cache_limit_bytes": 1.5}, TypeError),
        ({"cache_limit_bytes": True}, TypeError),
        ({"blas_threads": 0}, ValueError),
        ({"blas_threads": "2"}, ValueError),
    ],
)
def test_tune_rejects_bad_arguments(kwargs: dict[str, object], error: type[Exception]) -> None:
    before = cb._read_cache_limit()
    with pytest.raises(error, match=r"^\[tune_cpu\]"):
        cb.tune_cpu(**kwargs)  # type: ignore[arg-type]
    assert cb._read_cache_limit() == before


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"threads": 0}, ValueError), ({"threads": 2.0}, TypeError), ({"library": 3}, TypeError)],
)
def test_use_optimized_blas_rejects_bad_arguments(
    kwargs: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error, match=r"^\[use_optimized_blas\]"):
        cb.use_optimized_blas(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# Rebinding: what works everywhere
# ---------------------------------------------------------------------------------------


@NEEDS_LINUX
def test_libmlx_imports_the_three_gemms_through_got_slots() -> None:
    path, bias = cb._libmlx()
    slots = cb._got_slots(path, cb._BLAS_SYMBOLS)
    assert set(slots) == set(cb._BLAS_SYMBOLS)
    for offsets in slots.values():
        assert offsets
        for offset in offsets:
            target = cb.ctypes.c_void_p.from_address(bias + offset).value
            assert target is not None and cb._library_of(target) is not None


def test_elf_parser_rejects_a_non_elf_file(tmp_path: Path) -> None:
    fake = tmp_path / "libfake.so"
    fake.write_bytes(b"not an ELF file at all" * 4)
    with pytest.raises(cb._Unsupported, match="not an ELF file"):
        cb._got_slots(str(fake), ("cblas_sgemm",))


@NEEDS_LINUX
def test_off_keeps_netlib_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cb.BLAS_ENV_VAR, "off")
    status = cb.use_optimized_blas()
    assert not status.active
    assert "disabled" in status.reason
    assert status.library is not None and "mlx_cpu.libs" in status.library
    _check_matmul_accuracy(16, 40, 8)


@NEEDS_LINUX
def test_without_scipy_openblas32_nothing_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    # As on a machine where the package is not installed (find_spec finds nothing).
    monkeypatch.delenv(cb.BLAS_ENV_VAR, raising=False)
    monkeypatch.setattr(cb, "_scipy_openblas32", lambda: None)
    cb.restore_default_blas()
    status = cb.use_optimized_blas()
    assert not status.active
    assert "pip install scipy-openblas32" in status.reason
    assert "mlx_cpu.libs" in (status.library or "")
    info = cb.tune_cpu(blas=True)  # tune_cpu does not fail either
    assert not info.blas.active
    _check_matmul_accuracy(16, 40, 8)


@NEEDS_LINUX
def test_missing_library_changes_nothing() -> None:
    cb.restore_default_blas()  # an earlier test module may have left OpenBLAS bound
    before = cb.blas_status().library
    status = cb.use_optimized_blas("/nonexistent/libblas.so.3")
    assert not status.active
    assert "/nonexistent/libblas.so.3" in status.reason
    assert cb.blas_status().library == before
    _check_matmul_accuracy(16, 40, 8)


@NEEDS_LINUX
def test_an_ilp64_blas_is_refused() -> None:
    # NumPy's wheel bundles an ILP64 OpenBLAS (symbols scipy_cblas_sgemm64_): a real one.
    numpy_libs = glob.glob(
        os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs", "*openblas64*")
    )
    if not numpy_libs:
        pytest.skip("this numpy wheel bundles no ILP64 OpenBLAS to test the guard with")
    cb.restore_default_blas()
    status = cb.use_optimized_blas(numpy_libs[0])
    assert not status.active
    assert "LP64" in status.reason
    assert "mlx_cpu.libs" in (status.library or "")


# ---------------------------------------------------------------------------------------
# Rebinding: with scipy-openblas32 installed
# ---------------------------------------------------------------------------------------


@NEEDS_OPENBLAS32
def test_rebinding_points_mlx_at_openblas_and_keeps_numerics() -> None:
    import scipy_openblas32

    expected = os.path.realpath(
        os.path.join(scipy_openblas32.get_lib_dir(), scipy_openblas32.get_library(fullname=True))
    )
    status = cb.use_optimized_blas()
    assert status.active, status.reason
    assert status.library == expected
    assert status.config is not None and "USE64BITINT" not in status.config
    assert expected in _mapped_paths()
    _check_matmul_accuracy(64, 300, 48)
    # Idempotent, and the thread count is applied.
    assert cb.use_optimized_blas(threads=1).threads == 1
    assert cb.blas_status().library == expected
    # Restoring goes back to the wheel's netlib, which also agrees within the bound.
    restored = cb.restore_default_blas()
    assert not restored.active and "mlx_cpu.libs" in (restored.library or "")
    _check_matmul_accuracy(64, 300, 48)


@NEEDS_OPENBLAS32
def test_tune_cpu_in_a_child_process_maps_and_uses_openblas() -> None:
    code = (
        "import json, os, mlx.core as mx\n"
        "from mlx_impl.cpu_backend import tune_cpu\n"
        "info = tune_cpu().as_dict()\n"
        "maps = {os.path.realpath(l.split()[-1]) for l in open('/proc/self/maps') "
        "if len(l.split()) >= 6}\n"
        "y = mx.matmul(mx.ones((3, 5)), mx.full((5, 2), 2.0))\n"
        "print(json.dumps({'blas': info['blas'], 'cache': info['cache_limit'], "
        "'mapped': info['blas']['library'] in maps, 'y': y.tolist()}))\n"
    )
    out = _run_child(code, _child_env())
    blas = out["blas"]
    assert isinstance(blas, dict) and blas["active"], blas
    assert "scipy_openblas" in str(blas["library"])
    assert out["mapped"] is True
    assert out["cache"] == cb.default_cache_limit()
    assert out["y"] == [[10.0, 10.0]] * 3


@NEEDS_OPENBLAS32
def test_idle_openblas_workers_sleep_instead_of_spinning() -> None:
    # OpenBLAS's default makes its idle workers busy-wait ~0.1 s after each call, which
    # starves PyTorch's threads when the two alternate on few cores; cpu_backend loads it
    # with OPENBLAS_THREAD_TIMEOUT=4. Measured as CPU time burnt while the process sleeps.
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("OpenBLAS starts no worker threads on one CPU")
    code = (
        "import json, resource, time, mlx.core as mx\n"
        "from mlx_impl.cpu_backend import tune_cpu\n"
        "assert tune_cpu().blas.active\n"
        "a, b = mx.random.normal((512, 1024)), mx.random.normal((1024, 1024))\n"
        "burnt = []\n"
        "for _ in range(5):\n"
        "    mx.eval(a @ b)\n"
        "    t = resource.getrusage(resource.RUSAGE_SELF).ru_utime\n"
        "    time.sleep(0.05)\n"
        "    burnt.append(resource.getrusage(resource.RUSAGE_SELF).ru_utime - t)\n"
        "print(json.dumps({'burnt': sorted(burnt)}))\n"
    )
    env = _child_env()
    env.pop("OPENBLAS_THREAD_TIMEOUT", None)
    burnt = _run_child(code, env)["burnt"]
    assert isinstance(burnt, list)
    assert burnt[2] < 0.004, f"CPU seconds burnt per 50 ms idle: {burnt}"


# ---------------------------------------------------------------------------------------
# LD_PRELOAD helper and command line
# ---------------------------------------------------------------------------------------


def test_env_helper_contract() -> None:
    routed = cb.optimized_blas_env()
    if routed.env is None:
        assert routed.library is None
        assert "no unprefixed LP64 BLAS" in routed.reason or not LINUX
    else:
        assert routed.library is not None and os.path.isfile(routed.library)
        assert routed.env["LD_PRELOAD"].split()[0] == routed.library


def test_env_helper_names_a_missing_library() -> None:
    routed = cb.optimized_blas_env("/nonexistent/libopenblas.so.0")
    assert routed.env is None
    assert "/nonexistent/libopenblas.so.0" in routed.reason


def test_env_helper_refuses_a_prefixed_library() -> None:
    if not HAS_SCIPY_OPENBLAS32:
        pytest.skip("needs scipy-openblas32 as an example of a prefixed (unpreloadable) BLAS")
    import scipy_openblas32

    path = os.path.join(scipy_openblas32.get_lib_dir(), scipy_openblas32.get_library(fullname=True))
    routed = cb.optimized_blas_env(path)
    assert routed.env is None
    assert "no plain cblas_sgemm" in routed.reason


def test_child_launched_with_the_env_maps_the_preloaded_blas() -> None:
    routed = cb.optimized_blas_env()
    if routed.env is None:
        pytest.skip(f"no unprefixed LP64 BLAS on this machine: {routed.reason}")
    code = (
        "import json, os, mlx.core as mx\n"
        "from mlx_impl.cpu_backend import blas_status\n"
        "maps = {os.path.realpath(l.split()[-1]) for l in open('/proc/self/maps') "
        "if len(l.split()) >= 6}\n"
        "y = mx.matmul(mx.ones((3, 5)), mx.full((5, 2), 2.0))\n"
        "print(json.dumps({'maps': sorted(maps), 'blas': blas_status().as_dict(), "
        "'y': y.tolist()}))\n"
    )
    out = _run_child(code, {**_child_env(), **routed.env})
    assert routed.library in out["maps"]  # type: ignore[operator]
    blas = out["blas"]
    assert isinstance(blas, dict) and blas["library"] == routed.library
    assert out["y"] == [[10.0, 10.0]] * 3


def test_command_line_prints_the_info() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mlx_impl.cpu_backend"],
        env=_child_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    head, _, tail = done.stdout.partition("\n\n")
    assert "cache_limit" in json.loads(head)
    assert "tune_cpu()" in tail
    env_mode = subprocess.run(
        [sys.executable, "-m", "mlx_impl.cpu_backend", "--env"],
        env=_child_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    routed = cb.optimized_blas_env()
    assert env_mode.returncode == (0 if routed.env is not None else 1)
    assert ("export LD_PRELOAD=" in env_mode.stdout) == (routed.env is not None)
