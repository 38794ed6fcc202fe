"""MLX's Linux CPU back end: its buffer-cache limit, an optimized BLAS for its matmuls, and
what a report should record about both.

Two settings decide how fast MLX runs on a Linux CPU, and neither is right by default
(measured on mlx 0.32.4, ``mlx[cpu]`` wheel, x86_64 Linux, 2 cores):

* **Buffer cache.** MLX's allocator keeps freed buffers for reuse only up to its cache
  limit, 32 MiB by default on the CPU back end (the docstring of ``mx.set_cache_limit``
  says "defaults to the memory limit"; on this back end it does not). Every buffer larger
  than that goes back to the OS when freed, so the next op on a tensor of that size pays
  fresh page faults. :func:`tune_cpu` raises the limit.
* **BLAS.** ``mlx/lib/libmlx.so`` takes ``cblas_sgemm``, ``cblas_dgemm`` and ``cblas_cgemm``
  from ``mlx_cpu.libs/libblas-<hash>.so.3.10.0``, the unoptimized reference (netlib) BLAS
  that the wheel bundles, found through libmlx's RPATH. Debian's ``update-alternatives``
  for ``libblas.so.3`` therefore changes nothing. Every MLX float32 matmul, and the CPU
  ``scaled_dot_product_attention`` built on it, runs at netlib speed (a few GFLOP/s).

How the BLAS is replaced (:func:`use_optimized_blas`): libmlx calls those three functions
through its global offset table (GOT): one pointer slot per function, filled by the dynamic
linker when Python loads ``mlx.core``. This module finds the slots from libmlx's ELF
relocation table, loads an optimized LP64 BLAS privately (``RTLD_LOCAL``) and writes that
library's functions into the slots. The default provider is PyPI's ``scipy-openblas32``
(OpenBLAS with 32-bit integers, no other dependency, about 8 MB): its symbols carry a
``scipy_`` prefix, so ``LD_PRELOAD`` cannot use it, but a GOT slot takes any address.
Consequences, each checked by the tests:

* It works at any time in the process, before or after MLX ran anything, with no
  environment variable, re-exec or launcher.
* Only libmlx changes. PyTorch, NumPy and anything else keep their own BLAS (an
  ``LD_PRELOAD`` of an unprefixed OpenBLAS or MKL would also replace PyTorch's ``sgemm_``:
  measured, torch and MLX then return bit-identical products).
* The ABI matches: MLX is compiled against netlib's ``cblas.h`` and passes 32-bit ``int``
  sizes (LP64), as does ``scipy-openblas32``. An ILP64 build is refused (its symbols end
  in ``64_``, or its config names ``USE64BITINT``), and an exact integer-valued matmul in
  float32, float64 and complex64 checks every rebound slot before it stays.
* Without the package nothing changes: :func:`use_optimized_blas` returns a status with
  ``active=False`` and the reason.

:func:`optimized_blas_env` is the other route, for a child process that runs MLX code
which never calls into this module: it gives ``LD_PRELOAD`` for an unprefixed LP64 BLAS
found on the machine (Debian's ``libopenblas0-pthread``, PyPI's ``mkl``).

The environment variable ``MLX_IMPL_CPU_BLAS`` overrides the provider: ``off`` (also
``0``, ``none``, ``netlib``) keeps MLX's netlib BLAS; a path names a library to use instead
of ``scipy-openblas32`` (symbols plain or ``scipy_``-prefixed).

Command line: ``python -m mlx_impl.cpu_backend [--tune] [--env]`` prints
:func:`cpu_backend_info` as JSON, and the ways to enable the optimized BLAS.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import functools
import glob
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import struct
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import mlx.core as mx
import numpy as np

from mlx_impl._errors import type_error, value_error

__all__ = [
    "BLAS_ENV_VAR",
    "BlasEnv",
    "BlasStatus",
    "CpuBackendInfo",
    "blas_status",
    "cpu_backend_info",
    "default_cache_limit",
    "optimized_blas_env",
    "restore_default_blas",
    "tune_cpu",
    "use_optimized_blas",
]

BLAS_ENV_VAR = "MLX_IMPL_CPU_BLAS"
"""Environment variable naming the BLAS to use: ``off``/``0``/``none``/``netlib``, or a path."""

# The BLAS functions libmlx.so imports (``nm -D --undefined-only libmlx.so`` on 0.32.4).
# Its LAPACK imports (sgetrf_, ssyevd_, ...) stay on the bundled netlib LAPACK: only the
# linalg ops use them, and netlib LAPACK keeps calling its own netlib BLAS consistently.
_BLAS_SYMBOLS = ("cblas_sgemm", "cblas_dgemm", "cblas_cgemm")
_OFF_VALUES = frozenset({"0", "off", "none", "netlib", "false", "no"})
_GIB = 1 << 30
# OpenBLAS worker threads busy-wait 2**28 cycles (~0.1 s) after each call by default. Next
# to PyTorch's OpenMP threads on few cores that spinning starves whichever library runs
# next: on 2 cores, alternating MLX and torch 64x512x512 matmuls took 8.0 ms per pair
# instead of 0.5 ms. 2**4 cycles (OpenBLAS's minimum) makes idle workers sleep at once;
# MLX-only loops measured no slower. OpenBLAS reads it when the library loads, so it is
# set around that dlopen only, and never over a value the user set.
_TIMEOUT_VAR = "OPENBLAS_THREAD_TIMEOUT"
_THREAD_TIMEOUT = "4"

# ELF e_machine -> (name, JUMP_SLOT type, GLOB_DAT type): the two relocation kinds that
# fill a GOT pointer slot. Any other kind naming a BLAS symbol means a copy of its address
# lives elsewhere, and rebinding is refused.
_ELF_MACHINES = {62: ("x86_64", 7, 6), 183: ("aarch64", 1026, 1025)}
_SHT_RELA = 4
_SHT_DYNSYM = 11
_RTLD_DI_LINKMAP = 2
_PROT_READ, _PROT_WRITE, _PROT_EXEC = 1, 2, 4


class _Unsupported(Exception):
    """Rebinding cannot be done here; the message says why (shown to users as a reason)."""


# --------------------------------------------------------------------------------------
# Public result types
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BlasStatus:
    """Which BLAS MLX's matmuls call in this process, read from libmlx's live GOT slot.

    Attributes:
        active: True when ``cblas_sgemm`` of libmlx resolves to a library other than the
            netlib BLAS bundled in the mlx wheel.
        provider: ``"scipy-openblas32 <version>"``, ``"netlib (bundled with mlx)"``, a path
            given by the user, or ``"unknown"``.
        library: the file that libmlx's ``cblas_sgemm`` points into now (``None`` when it
            cannot be read, e.g. not Linux).
        reason: how it was enabled, or why the optimized BLAS is not in use.
        config: the OpenBLAS build string (``openblas_get_config``) when known.
        threads: the BLAS library's thread count when known.
    """

    active: bool
    provider: str
    library: str | None
    reason: str
    config: str | None = None
    threads: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain-JSON form for reports."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class BlasEnv:
    """Environment for a child process whose MLX should use an optimized BLAS.

    Attributes:
        env: variables to ADD to the child's environment (``LD_PRELOAD`` and, for MKL,
            ``MKL_INTERFACE_LAYER=LP64``); ``None`` when no suitable library was found.
        library: the library ``LD_PRELOAD`` names, or ``None``.
        reason: what was found, or why nothing fits.
    """

    env: dict[str, str] | None
    library: str | None
    reason: str


@dataclasses.dataclass(frozen=True)
class CpuBackendInfo:
    """What a benchmark or conformance report should record about MLX's CPU back end.

    Attributes:
        mlx_version: ``mx.__version__``.
        default_device: e.g. ``"Device(cpu, 0)"``.
        device_info: ``mx.device_info()`` (architecture and CPU name on the CPU back end).
        cache_limit: MLX's buffer-cache limit in bytes (32 MiB unless tuned).
        memory_limit: ``mx.get_memory_limit()`` in bytes.
        cache_memory, active_memory, peak_memory: MLX's allocator counters in bytes.
        physical_memory: RAM in bytes (cgroup limit if lower).
        cpu_count: CPUs this process may run on.
        blas: :class:`BlasStatus` of libmlx's ``cblas_sgemm``.
        mapped_blas_libraries: BLAS/LAPACK/OpenMP files mapped into this process
            (``/proc/self/maps``); netlib stays mapped after rebinding, so this list alone
            does not say which one MLX calls: ``blas.library`` does.
        thread_env: the thread-count variables that BLAS and OpenMP libraries read.
        platform: ``platform.platform()``; python: the Python version.
    """

    mlx_version: str
    default_device: str
    device_info: dict[str, Any]
    cache_limit: int
    memory_limit: int
    cache_memory: int
    active_memory: int
    peak_memory: int
    physical_memory: int | None
    cpu_count: int
    blas: BlasStatus
    mapped_blas_libraries: list[str]
    thread_env: dict[str, str]
    platform: str
    python: str

    def as_dict(self) -> dict[str, Any]:
        """Plain-JSON form for reports."""
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------
# Cache limit
# --------------------------------------------------------------------------------------


def _physical_memory() -> int | None:
    """RAM in bytes, lowered to the cgroup v2 memory limit when one is set."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    with contextlib.suppress(OSError, ValueError), open("/sys/fs/cgroup/memory.max") as f:
        text = f.read().strip()
        if text != "max":
            total = min(total, int(text))
    return int(total)


def default_cache_limit() -> int:
    """The cache limit :func:`tune_cpu` uses by default: ``min(8 GiB, physical memory / 3)``.

    The cache only holds buffers MLX has freed, so the limit caps memory that is idle, not
    memory in use. A third of RAM leaves room for the live tensors next to the cached ones;
    8 GiB holds many buffers of the largest sizes this project benchmarks (a 64M-float
    operand is 256 MiB). Falls back to 1 GiB if RAM is unknown.
    """
    ram = _physical_memory()
    return 1 * _GIB if ram is None else min(8 * _GIB, ram // 3)


def _read_cache_limit() -> int:
    # MLX has no getter: set_cache_limit returns the previous value. Raising the limit
    # frees nothing, and setting the old value back restores the state exactly.
    previous = int(mx.set_cache_limit(1 << 62))
    mx.set_cache_limit(previous)
    return previous


def _on_cpu() -> bool:
    return bool(mx.default_device().type == mx.DeviceType.cpu)


# --------------------------------------------------------------------------------------
# ELF and dynamic-linker helpers (Linux, glibc)
# --------------------------------------------------------------------------------------


class _LinkMap(ctypes.Structure):
    # The public head of glibc's ``struct link_map`` (<link.h>): l_addr is the load bias.
    _fields_ = [("l_addr", ctypes.c_size_t), ("l_name", ctypes.c_char_p)]


class _DlInfo(ctypes.Structure):
    _fields_ = [
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    ]


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    for name, restype, argtypes in (
        ("dladdr", ctypes.c_int, [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]),
        ("mprotect", ctypes.c_int, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]),
    ):
        fn = getattr(libc, name)
        fn.restype, fn.argtypes = restype, argtypes
    return libc


def _dlinfo() -> Any:
    # glibc >= 2.34 has dlinfo in libc; older ones in libdl.
    for lib in (None, "libdl.so.2"):
        with contextlib.suppress(OSError, AttributeError):
            fn = ctypes.CDLL(lib).dlinfo
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
            return fn
    raise _Unsupported("dlinfo is not available (not glibc?)")


def _maps() -> list[tuple[int, int, str, str]]:
    """``/proc/self/maps`` as (start, end, permissions, path) rows."""
    rows = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            start, end = (int(v, 16) for v in parts[0].split("-"))
            rows.append((start, end, parts[1], parts[5].strip() if len(parts) > 5 else ""))
    return rows


def _mapped_file(basename: str) -> str | None:
    for _, _, _, path in _maps():
        if os.path.basename(path) == basename:
            return path
    return None


def _library_of(address: int) -> str | None:
    """The file whose mapping holds ``address`` (dladdr), or None."""
    info = _DlInfo()
    if address and _libc().dladdr(ctypes.c_void_p(address), ctypes.byref(info)) and info.dli_fname:
        return os.path.realpath(info.dli_fname.decode())
    return None


def _read_section_table(f: Any) -> tuple[int, list[tuple[int, ...]]]:
    ident = f.read(64)
    if len(ident) < 64 or ident[:4] != b"\x7fELF":
        raise _Unsupported("not an ELF file")
    if ident[4] != 2 or ident[5] != 1:
        raise _Unsupported("not a 64-bit little-endian ELF file")
    (machine,) = struct.unpack_from("<H", ident, 18)
    (shoff,) = struct.unpack_from("<Q", ident, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", ident, 0x3A)
    if machine not in _ELF_MACHINES:
        raise _Unsupported(f"ELF machine {machine} is not x86_64 or aarch64")
    f.seek(shoff)
    table = f.read(shentsize * shnum)
    # (name, type, flags, addr, offset, size, link, info, addralign, entsize)
    return machine, [struct.unpack_from("<IIQQQQIIQQ", table, i * shentsize) for i in range(shnum)]


@functools.lru_cache(maxsize=4)
def _got_slots(path: str, names: tuple[str, ...]) -> dict[str, list[int]]:
    """Offsets (from the load bias) of the GOT slots through which ``path`` calls ``names``.

    Reads the dynamic symbol table and every RELA section of the ELF file. Raises
    ``_Unsupported`` if a name is not imported, or is also relocated by a kind other than
    JUMP_SLOT/GLOB_DAT (a copy of its address elsewhere would keep calling netlib).
    """
    with open(path, "rb") as f:
        machine, sections = _read_section_table(f)
        _, jump_slot, glob_dat = _ELF_MACHINES[machine]
        wanted: dict[int, dict[int, str]] = {}  # dynsym section index -> {symbol index: name}
        for index, sec in enumerate(sections):
            if sec[1] != _SHT_DYNSYM:
                continue
            f.seek(sections[sec[6]][4])
            strtab = f.read(sections[sec[6]][5])
            f.seek(sec[4])
            symbols = f.read(sec[5])
            found: dict[int, str] = {}
            for i, (st_name,) in enumerate(struct.iter_unpack("<I20x", symbols)):
                end = strtab.find(b"\0", st_name)
                name = strtab[st_name:end].decode(errors="replace")
                if name in names:
                    found[i] = name
            wanted[index] = found
        slots: dict[str, list[int]] = {name: [] for name in names}
        for sec in sections:
            if sec[1] != _SHT_RELA or sec[6] not in wanted or not wanted[sec[6]]:
                continue
            f.seek(sec[4])
            for r_offset, r_info, _ in struct.iter_unpack("<QQq", f.read(sec[5])):
                symbol = wanted[sec[6]].get(r_info >> 32)
                if symbol is None:
                    continue
                if (r_info & 0xFFFFFFFF) not in (jump_slot, glob_dat):
                    raise _Unsupported(
                        f"{os.path.basename(path)} relocates {symbol} with type "
                        f"{r_info & 0xFFFFFFFF}, not through a GOT slot"
                    )
                slots[symbol].append(r_offset)
    missing = [name for name, offsets in slots.items() if not offsets]
    if missing:
        raise _Unsupported(f"{os.path.basename(path)} does not import {', '.join(missing)}")
    return slots


def _libmlx() -> tuple[str, int]:
    """Path and load bias of the libmlx.so this process runs."""
    if sys.platform != "linux":
        raise _Unsupported(f"only the Linux CPU wheel needs this (platform {sys.platform})")
    path = _mapped_file("libmlx.so")
    if path is None:
        raise _Unsupported("libmlx.so is not mapped in this process")
    try:
        handle = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_NOW)._handle
    except OSError as exc:
        raise _Unsupported(f"cannot get a handle to {path}: {exc}") from exc
    link_map = ctypes.POINTER(_LinkMap)()
    if _dlinfo()(handle, _RTLD_DI_LINKMAP, ctypes.byref(link_map)) != 0:
        raise _Unsupported("dlinfo(RTLD_DI_LINKMAP) failed for libmlx.so")
    return path, int(link_map.contents.l_addr)


def _slot_addresses() -> dict[str, list[int]]:
    path, bias = _libmlx()
    return {
        name: [bias + offset for offset in offsets]
        for name, offsets in _got_slots(path, _BLAS_SYMBOLS).items()
    }


def _write_pointers(values: Mapping[int, int]) -> None:
    """Store pointer ``value`` at each ``address``, lifting a read-only (RELRO) page briefly."""
    page = os.sysconf("SC_PAGE_SIZE")
    rows = _maps()
    libc = _libc()
    for address, value in values.items():
        perms = next((p for start, end, p, _ in rows if start <= address < end), None)
        if perms is None:
            raise _Unsupported(f"GOT slot {address:#x} is not mapped")
        base = address - address % page
        if "w" not in perms and libc.mprotect(base, page, _PROT_READ | _PROT_WRITE) != 0:
            raise _Unsupported(f"mprotect failed (errno {ctypes.get_errno()})")
        # An aligned 8-byte store is atomic: a concurrent caller sees the old or the new one.
        ctypes.c_void_p.from_address(address).value = value
        if "w" not in perms:
            prot = _PROT_READ | (_PROT_EXEC if "x" in perms else 0)
            libc.mprotect(base, page, prot)


# --------------------------------------------------------------------------------------
# Providers
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Provider:
    name: str
    path: str
    prefix: str  # "scipy_" for scipy-openblas32, "" for a plain BLAS


@dataclasses.dataclass
class _State:
    original: dict[int, int] = dataclasses.field(default_factory=dict)  # slot -> netlib fn
    provider: _Provider | None = None
    handles: list[ctypes.CDLL] = dataclasses.field(default_factory=list)  # keep libs loaded
    note: str = ""  # appended to the active status's reason


_STATE = _State()


def _scipy_openblas32() -> _Provider | None:
    # Found without importing it: its __init__ loads the library at once, and OpenBLAS
    # reads OPENBLAS_THREAD_TIMEOUT only when it loads (see _THREAD_TIMEOUT).
    spec = importlib.util.find_spec("scipy_openblas32")
    if spec is None or not spec.submodule_search_locations:
        return None
    for directory in spec.submodule_search_locations:
        libraries = sorted(glob.glob(os.path.join(directory, "lib", "libscipy_openblas*.so*")))
        if libraries:
            try:
                version = importlib.metadata.version("scipy-openblas32")
            except importlib.metadata.PackageNotFoundError:
                version = "?"
            return _Provider(f"scipy-openblas32 {version}", libraries[0], "scipy_")
    return None


def _choose_provider(library: str | None) -> _Provider | str:
    """The provider to use, or the reason there is none."""
    choice = library if library is not None else os.environ.get(BLAS_ENV_VAR, "").strip()
    if choice.lower() in _OFF_VALUES:
        return f"disabled ({BLAS_ENV_VAR}={choice}); MLX keeps its bundled netlib BLAS"
    if choice:
        if not os.path.isfile(choice):
            return f"{choice} (from {'library=' if library else BLAS_ENV_VAR}) is not a file"
        return _Provider(choice, os.path.realpath(choice), "?")
    found = _scipy_openblas32()
    if found is None:
        return (
            "scipy-openblas32 is not installed (pip install scipy-openblas32); "
            "MLX keeps its bundled netlib BLAS"
        )
    return found


@contextlib.contextmanager
def _env_default(key: str, value: str) -> Iterator[None]:
    """Set ``key`` only while the block runs, and only if the user has not set it."""
    if key in os.environ:
        yield
        return
    os.environ[key] = value
    try:
        yield
    finally:
        os.environ.pop(key, None)


def _load(provider: _Provider) -> tuple[ctypes.CDLL, str, _Provider]:
    """Load ``provider`` privately; return it with the symbol prefix its BLAS functions use."""
    # RTLD_LOCAL: the library's symbols stay out of the global scope, so nothing else in
    # the process (torch, numpy, later extensions) binds to it.
    try:
        ctypes.CDLL(provider.path, mode=os.RTLD_NOLOAD | os.RTLD_NOW)
        _STATE.note = (
            f"; {os.path.basename(provider.path)} was loaded before, so "
            f"{_TIMEOUT_VAR}={os.environ.get(_TIMEOUT_VAR, 'its default')} applies"
        )
    except OSError:
        _STATE.note = ""
    with _env_default(_TIMEOUT_VAR, _THREAD_TIMEOUT):
        lib = ctypes.CDLL(provider.path, mode=os.RTLD_LOCAL | os.RTLD_NOW)
    prefixes = [provider.prefix] if provider.prefix != "?" else ["", "scipy_"]
    for prefix in prefixes:
        if hasattr(lib, prefix + "cblas_sgemm"):
            break
    else:
        raise _Unsupported(
            f"{provider.path} exports no cblas_sgemm (an ILP64 build names it "
            "cblas_sgemm64_; MLX passes 32-bit ints and needs an LP64 BLAS)"
        )
    config = _openblas_config(lib, prefix)
    if config is not None and "USE64BITINT" in config:
        raise _Unsupported(f"{provider.path} is an ILP64 build ({config}); MLX needs LP64")
    if hasattr(lib, "MKL_Set_Interface_Layer"):
        lib.MKL_Set_Interface_Layer(0)  # MKL_INTERFACE_LP64, before any BLAS call
    return lib, prefix, dataclasses.replace(provider, prefix=prefix)


def _openblas_config(lib: ctypes.CDLL, prefix: str) -> str | None:
    fn = getattr(lib, prefix + "openblas_get_config", None)
    if fn is None:
        return None
    fn.restype = ctypes.c_char_p
    value = fn()
    return value.decode() if value else None


def _blas_threads(lib: ctypes.CDLL, prefix: str, set_to: int | None = None) -> int | None:
    setter = getattr(lib, prefix + "openblas_set_num_threads", None) or getattr(
        lib, "MKL_Set_Num_Threads", None
    )
    getter = getattr(lib, prefix + "openblas_get_num_threads", None) or getattr(
        lib, "MKL_Get_Max_Threads", None
    )
    if set_to is not None and setter is not None:
        setter(ctypes.c_int(set_to))
    return int(getter()) if getter is not None else None


def _self_check() -> str | None:
    """Exact integer-valued products through sgemm, dgemm and cgemm; None when all agree."""
    a = np.arange(-6, 9, dtype=np.int64).reshape(3, 5)
    b = (np.arange(20, dtype=np.int64).reshape(5, 4) % 7) - 3
    expected = a @ b  # small integers: exact in float32 whatever the summation order
    for dtype, np_dtype in ((mx.float32, np.float32), (mx.float64, np.float64)):
        got = mx.matmul(
            mx.array(a.astype(np_dtype), dtype=dtype),
            mx.array(b.astype(np_dtype), dtype=dtype),
            stream=mx.cpu,
        )
        if not np.array_equal(np.array(got), expected):
            return f"{dtype} matmul gave {np.array(got).tolist()}, expected {expected.tolist()}"
    ac = mx.array((a + 1j * a[::-1]).astype(np.complex64))
    bc = mx.array((b - 2j * b).astype(np.complex64))
    got_c = np.array(mx.matmul(ac, bc, stream=mx.cpu))
    expected_c = (a + 1j * a[::-1]) @ (b - 2j * b)
    if not np.array_equal(got_c, expected_c):
        return f"complex64 matmul gave {got_c.tolist()}, expected {expected_c.tolist()}"
    return None


# --------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------


def _netlib_like(path: str | None) -> bool:
    return path is not None and os.path.basename(path).startswith("libblas-") and ("mlx" in path)


def blas_status() -> BlasStatus:
    """Read which library libmlx's ``cblas_sgemm`` slot points into now.

    Returns:
        :class:`BlasStatus`; never raises (an unreadable state is reported in ``reason``).
    """
    try:
        slots = _slot_addresses()
    except (_Unsupported, OSError) as exc:
        return BlasStatus(False, "unknown", None, str(exc))
    address = ctypes.c_void_p.from_address(slots["cblas_sgemm"][0]).value or 0
    library = _library_of(address)
    provider = _STATE.provider
    if provider is not None and library == os.path.realpath(provider.path):
        lib = _STATE.handles[-1]
        return BlasStatus(
            True,
            provider.name,
            library,
            "libmlx's cblas_sgemm/dgemm/cgemm GOT slots rebound by use_optimized_blas()"
            + _STATE.note,
            _openblas_config(lib, provider.prefix),
            _blas_threads(lib, provider.prefix),
        )
    if _netlib_like(library):
        return BlasStatus(False, "netlib (bundled with mlx)", library, "not rebound")
    if library is not None and library.endswith("libmlx.so"):
        return BlasStatus(False, "unknown", library, "slot not yet bound (lazy binding)")
    # Something else, e.g. an LD_PRELOADed BLAS resolved by the dynamic linker.
    return BlasStatus(
        library is not None,
        library or "unknown",
        library,
        "resolved by the dynamic linker (LD_PRELOAD or an RTLD_GLOBAL library)",
    )


def use_optimized_blas(library: str | None = None, *, threads: int | None = None) -> BlasStatus:
    """Make MLX's CPU matmuls call an optimized BLAS, in this process only.

    Rebinds libmlx's GOT slots for ``cblas_sgemm``, ``cblas_dgemm`` and ``cblas_cgemm`` (see
    the module docstring), checks them with exact integer-valued matmuls, and returns the
    resulting status. Idempotent; safe before or after MLX has computed anything; leaves
    every other library's BLAS alone. Never raises for a missing or unusable library: the
    status then has ``active=False`` and says why, and MLX keeps netlib.

    Numerics: float32 results change only within float32 summation error (a different
    summation order; on a 512x4096x4096 product OpenBLAS's largest error relative to
    ``|a| @ |b|`` was 5.7e-8, netlib's 3.6e-7). float16/bfloat16 matmuls do not call these
    functions (measured: their speed and results are unchanged).

    Args:
        library: path of an LP64 BLAS exporting ``cblas_sgemm`` or ``scipy_cblas_sgemm``;
            ``"off"`` keeps netlib. Default: ``$MLX_IMPL_CPU_BLAS``, else the
            ``scipy-openblas32`` package.
        threads: BLAS thread count to set (OpenBLAS and MKL); default: the library's own
            choice (all CPUs this process may use, or ``$OPENBLAS_NUM_THREADS``).

    Returns:
        :class:`BlasStatus` read back from the slot after the change.

    Raises:
        TypeError, ValueError: ``library`` not a str or ``threads`` not a positive int.
    """
    if library is not None and not isinstance(library, str):
        raise type_error("use_optimized_blas", f"library must be a str path but got {library!r}.")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)):
        raise type_error("use_optimized_blas", f"threads must be an int but got {threads!r}.")
    if threads is not None and threads < 1:
        raise value_error("use_optimized_blas", f"threads must be >= 1 but got {threads}.")
    provider = _choose_provider(library)
    if isinstance(provider, str):
        restore_default_blas()
        return dataclasses.replace(blas_status(), reason=provider)
    try:
        slots = _slot_addresses()
        lib, prefix, provider = _load(provider)
        targets = {}
        for name, addresses in slots.items():
            function = ctypes.cast(getattr(lib, prefix + name), ctypes.c_void_p).value
            for address in addresses:
                current = ctypes.c_void_p.from_address(address).value or 0
                _STATE.original.setdefault(address, current)
                targets[address] = function or 0
        mx.synchronize()  # no MLX op is in flight while the slots change
        _write_pointers(targets)
    except (_Unsupported, OSError) as exc:
        # A failure part-way (one slot's page refused mprotect) must not leave MLX half
        # rebound: put back every slot recorded so far.
        with contextlib.suppress(_Unsupported, OSError):
            restore_default_blas()
        return dataclasses.replace(blas_status(), reason=f"not rebound: {exc}")
    _STATE.handles.append(lib)
    _STATE.provider = provider
    _blas_threads(lib, prefix, threads)
    problem = _self_check()
    if problem is not None:
        restore_default_blas()
        return dataclasses.replace(blas_status(), reason=f"self-check failed, restored: {problem}")
    return blas_status()


def restore_default_blas() -> BlasStatus:
    """Point libmlx's BLAS slots back to what they held before :func:`use_optimized_blas`.

    Returns:
        :class:`BlasStatus` after the change (a no-op when nothing was rebound).
    """
    if _STATE.original:
        mx.synchronize()
        _write_pointers(_STATE.original)
        _STATE.original.clear()
    _STATE.provider = None
    return blas_status()


def tune_cpu(
    cache_limit_bytes: int | None = None,
    *,
    blas: bool = True,
    blas_threads: int | None = None,
) -> CpuBackendInfo:
    """Configure MLX's CPU back end for speed; a no-op unless the default device is the CPU.

    Sets MLX's buffer-cache limit (``mx.set_cache_limit``) and, when ``blas`` is true, calls
    :func:`use_optimized_blas`. Neither changes what MLX computes beyond float32 summation
    order in matmuls; both only change speed.

    Args:
        cache_limit_bytes: cache limit in bytes; default :func:`default_cache_limit`
            (``min(8 GiB, RAM / 3)``). 0 disables MLX's cache.
        blas: rebind MLX's matmuls to an optimized BLAS when one is installed (False
            leaves the current binding as it is).
        blas_threads: BLAS thread count (default: the library's choice).

    Returns:
        :class:`CpuBackendInfo` after the change.

    Raises:
        TypeError, ValueError: a non-int or negative ``cache_limit_bytes``, or a bad
            ``blas_threads``.
    """
    if cache_limit_bytes is not None:
        if isinstance(cache_limit_bytes, bool) or not isinstance(cache_limit_bytes, int):
            raise type_error(
                "tune_cpu", f"cache_limit_bytes must be an int but got {cache_limit_bytes!r}."
            )
        if cache_limit_bytes < 0:
            raise value_error(
                "tune_cpu", f"cache_limit_bytes must be >= 0 but got {cache_limit_bytes}."
            )
    if blas_threads is not None and (
        isinstance(blas_threads, bool) or not isinstance(blas_threads, int) or blas_threads < 1
    ):
        raise value_error("tune_cpu", f"blas_threads must be an int >= 1 but got {blas_threads!r}.")
    if _on_cpu():
        limit = default_cache_limit() if cache_limit_bytes is None else cache_limit_bytes
        mx.set_cache_limit(limit)
        if blas:
            use_optimized_blas(threads=blas_threads)
    return _collect_info()


def _mapped_blas_libraries() -> list[str]:
    keys = ("blas", "lapack", "mkl", "iomp", "gomp", "gfortran")
    if sys.platform != "linux":
        return []
    return sorted({p for *_, p in _maps() if any(k in os.path.basename(p) for k in keys)})


def _collect_info() -> CpuBackendInfo:
    env_keys = (
        "OPENBLAS_NUM_THREADS",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OPENBLAS_CORETYPE",
        "LD_PRELOAD",
        BLAS_ENV_VAR,
    )
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return CpuBackendInfo(
        mlx_version=str(getattr(mx, "__version__", "unknown")),
        default_device=str(mx.default_device()),
        device_info={k: v for k, v in mx.device_info().items()},
        cache_limit=_read_cache_limit(),
        memory_limit=int(mx.get_memory_limit()),
        cache_memory=int(mx.get_cache_memory()),
        active_memory=int(mx.get_active_memory()),
        peak_memory=int(mx.get_peak_memory()),
        physical_memory=_physical_memory(),
        cpu_count=cpus,
        blas=blas_status(),
        mapped_blas_libraries=_mapped_blas_libraries(),
        thread_env={k: os.environ[k] for k in env_keys if k in os.environ},
        platform=platform.platform(),
        python=platform.python_version(),
    )


def cpu_backend_info() -> dict[str, Any]:
    """:class:`CpuBackendInfo` of this process as a plain dict, for reports to record."""
    return _collect_info().as_dict()


# --------------------------------------------------------------------------------------
# LD_PRELOAD route for child processes
# --------------------------------------------------------------------------------------


def _preload_candidates() -> Iterable[str]:
    """Unprefixed BLAS libraries that may be on this machine, most preferred first."""
    override = os.environ.get(BLAS_ENV_VAR, "").strip()
    if override and override.lower() not in _OFF_VALUES:
        yield override
    # Debian/Ubuntu libopenblas0-*: the alternatives link, then the pthread flavour.
    for directory in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64"):
        yield os.path.join(directory, "libopenblas.so.0")
        yield os.path.join(directory, "openblas-pthread", "libopenblas.so.0")
    # PyPI's mkl installs libmkl_rt into <prefix>/lib.
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        for version in ("3", "2"):
            yield os.path.join(prefix, "lib", f"libmkl_rt.so.{version}")


_PROBE = """
import ctypes, json, sys
lib = ctypes.CDLL(sys.argv[1])
ok = hasattr(lib, "cblas_sgemm")
config = None
if hasattr(lib, "openblas_get_config"):
    lib.openblas_get_config.restype = ctypes.c_char_p
    config = lib.openblas_get_config().decode()
print(json.dumps({"cblas_sgemm": ok, "config": config}))
"""


def _probe(path: str) -> tuple[dict[str, Any] | None, str]:
    """Load ``path`` in a throwaway interpreter (its BLAS threads start and end there)."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE, path],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return None, str(exc)
    if done.returncode != 0:
        return None, (done.stderr.strip().splitlines() or ["probe failed"])[-1]
    try:
        return dict(json.loads(done.stdout)), ""
    except ValueError:
        return None, f"unexpected probe output {done.stdout!r}"


def optimized_blas_env(library: str | None = None) -> BlasEnv:
    """Environment additions that make a child process's MLX load an optimized BLAS.

    For a child that runs MLX code which never calls :func:`use_optimized_blas` (a child
    that imports this package can simply call :func:`tune_cpu`). ``LD_PRELOAD`` puts an
    unprefixed LP64 BLAS first in the dynamic linker's global scope, so libmlx's
    ``cblas_sgemm`` binds to it when ``mlx.core`` loads. Each candidate is loaded once in a
    throwaway Python process to prove it resolves its own dependencies (Debian's OpenBLAS
    needs ``libgfortran5``; PyPI's cmeel/ngsolve OpenBLAS wheels need it from the system too).

    Caveat: ``LD_PRELOAD`` is process-wide. PyTorch's own ``sgemm_`` calls bind to the
    preloaded library too (measured: torch and MLX products become bit-identical), which
    makes the reference less independent; prefer :func:`use_optimized_blas` in-process.

    Args:
        library: a specific library to check instead of the search (``$MLX_IMPL_CPU_BLAS``,
            Debian's ``libopenblas.so.0``, PyPI ``mkl``'s ``libmkl_rt``).

    Returns:
        :class:`BlasEnv`; ``env`` is None, with the reason, when nothing suitable is found.
    """
    if sys.platform != "linux":
        return BlasEnv(None, None, f"LD_PRELOAD route is Linux-only (platform {sys.platform})")
    candidates = [library] if library is not None else list(dict.fromkeys(_preload_candidates()))
    rejected = []
    for path in candidates:
        if not os.path.isfile(path):
            if library is not None:
                rejected.append(f"{path}: not a file")
            continue
        real = os.path.realpath(path)
        result, problem = _probe(real)
        if result is None:
            rejected.append(f"{real}: does not load ({problem})")
            continue
        if not result["cblas_sgemm"]:
            rejected.append(f"{real}: exports no plain cblas_sgemm (prefixed or ILP64)")
            continue
        if result["config"] and "USE64BITINT" in result["config"]:
            rejected.append(f"{real}: ILP64 build")
            continue
        env = {"LD_PRELOAD": " ".join(filter(None, [real, os.environ.get("LD_PRELOAD", "")]))}
        if "mkl" in os.path.basename(real):
            env["MKL_INTERFACE_LAYER"] = "LP64"
        return BlasEnv(env, real, f"LD_PRELOAD of {real} ({result['config'] or 'MKL'})")
    detail = "; ".join(rejected) if rejected else "no candidate library on this machine"
    return BlasEnv(
        None,
        None,
        f"no unprefixed LP64 BLAS to preload ({detail}). Install Debian's libopenblas0-pthread "
        "or PyPI's mkl, or call use_optimized_blas() in-process with scipy-openblas32.",
    )


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mlx_impl.cpu_backend``: print the CPU back end's state and how to tune it."""
    parser = argparse.ArgumentParser(
        prog="python -m mlx_impl.cpu_backend", description=main.__doc__
    )
    parser.add_argument("--tune", action="store_true", help="apply tune_cpu() before printing")
    parser.add_argument(
        "--env", action="store_true", help="print only the LD_PRELOAD route as shell exports"
    )
    args = parser.parse_args(argv)
    if args.env:
        routed = optimized_blas_env()
        if routed.env is None:
            print(f"# {routed.reason}")
            return 1
        for key, value in routed.env.items():
            print(f"export {key}={shlex.quote(value)}")
        return 0
    info = tune_cpu() if args.tune else _collect_info()
    print(json.dumps(info.as_dict(), indent=2))
    routed = optimized_blas_env()
    print(
        "\nIn-process (recommended): from mlx_impl.cpu_backend import tune_cpu; tune_cpu()\n"
        "  optimized BLAS provider: "
        + (p.name if isinstance(p := _choose_provider(None), _Provider) else f"none: {p}"),
        file=sys.stdout,
    )
    if routed.env is not None:
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in routed.env.items())
        print(f"Child process: {exports} python your_script.py")
    else:
        print(f"Child process (LD_PRELOAD): unavailable: {routed.reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
