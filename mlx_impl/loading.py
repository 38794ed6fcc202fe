"""Weight loading: fill declared models from safetensors checkpoints (Ollama's ``weight`` tags).

Ollama's Go loader fills model structs from safetensors by struct tags
``weight:"path[,optional]"``: each field's path suffix is appended to a dotted prefix,
nested structs recurse, slices are filled from ``.0``, ``.1``, ... and one error lists every
missing weight at once. This module is the Python take on it:

* :func:`weight` declares a field of a :func:`dataclasses.dataclass` model: its checkpoint
  path suffix, whether it may be missing, extra constructor arguments for its layer.
* :func:`load_weights` builds a NEW model of a declared type from a mapping of arrays or from
  ``.safetensors`` files. Every problem (missing, unexpected, mis-shaped or mistyped
  tensors, a quantized checkpoint without a quantization) is collected first and raised as
  ONE :class:`WeightLoadError`; no model object exists until everything checked out, so a
  half-filled model is never handed out.
* :func:`load_safetensors` reads ``.safetensors`` files with its own header parser. Every
  header field is validated BEFORE any byte is interpreted (MLX's own loader accepts
  overlapping tensors, for one); tensor bytes are then copied into ``mx.array`` objects. No
  pickle is ever involved, so a pickle renamed ``.safetensors`` is rejected as a malformed
  header, never executed.
* :func:`save_safetensors` writes the format atomically (temp file, fsync, ``os.replace``).

Safetensors dtypes and what they load as (measured against ``mx.load`` on mlx 0.32.4, which
maps them the same way): ``BOOL U8 I8 U16 I16 U32 I32 U64 I64 F16 BF16 F32 F64 C64`` load
as the same MLX dtype; ``F8_E4M3`` and ``F8_E8M0`` load as their raw ``uint8`` codes (MLX has
no float8 dtype; ``mxfp8``/``nvfp4`` scales are such codes); ``F8_E5M2``, the ``FNUZ``
variants, ``F4`` and the ``F6`` types are known but rejected (MLX cannot hold them).
"""

import contextlib
import dataclasses
import functools
import itertools
import json
import math
import os
import struct
import tempfile
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, Union

import mlx.core as mx
import numpy as np

from mlx_impl import fast as _fast
from mlx_impl import nn as _nn
from mlx_impl._errors import type_error, value_error

# NOTE: this module deliberately does NOT use ``from __future__ import annotations``: the
# docstring examples define dataclasses that doctest compiles with this module's future
# flags, and postponed annotations of those would be resolved in this module's namespace.

__all__ = [
    "WeightLoadError",
    "load_safetensors",
    "load_weights",
    "save_safetensors",
    "weight",
]

T = TypeVar("T")

PathLike = str | os.PathLike[str]
Quantization = tuple[int, int, str] | str | None

# ---------------------------------------------------------------------------------------
# The error
# ---------------------------------------------------------------------------------------


class WeightLoadError(ValueError):
    """One error that lists every problem met while loading weights.

    A subclass of :class:`ValueError`. ``str(error)`` is a bracketed headline naming the
    model (or ``load_safetensors``) and the file(s), followed by one line per problem.

    Attributes:
        problems: every problem, one human-readable line each, in the order found.
        missing: checkpoint keys the model needed and did not find.
        unexpected: checkpoint keys under the prefix that no field consumed (strict mode).
        mismatched: lines about tensors with a wrong shape or dtype.
        files: the files involved (empty when loading from a mapping).
    """

    def __init__(
        self,
        message: str,
        *,
        problems: Sequence[str] = (),
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        mismatched: Sequence[str] = (),
        files: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.problems = list(problems)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)
        self.files = list(files)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Keep the attributes across pickling (multiprocessing, pytest-xdist).
        lists = (self.problems, self.missing, self.unexpected, self.mismatched, self.files)
        return _rebuild_weight_load_error, (str(self), *lists)


def _rebuild_weight_load_error(
    message: str,
    problems: list[str],
    missing: list[str],
    unexpected: list[str],
    mismatched: list[str],
    files: list[str],
) -> WeightLoadError:
    return WeightLoadError(
        message,
        problems=problems,
        missing=missing,
        unexpected=unexpected,
        mismatched=mismatched,
        files=files,
    )


def _describe_files(files: Sequence[str]) -> str:
    """``a.safetensors`` / ``a.safetensors, b.safetensors`` / ``a mapping``."""
    return ", ".join(files) if files else "a mapping of arrays"


class _Problems:
    """Collects problems by kind, then turns them into one :class:`WeightLoadError`."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.missing: list[str] = []
        self.unexpected: list[str] = []
        self.mismatched: list[str] = []

    def __bool__(self) -> bool:
        return bool(self.lines)

    def add(self, line: str) -> None:
        self.lines.append(line)

    def add_missing(self, key: str, line: str) -> None:
        self.missing.append(key)
        self.lines.append(line)

    def add_unexpected(self, key: str, line: str) -> None:
        self.unexpected.append(key)
        self.lines.append(line)

    def add_mismatch(self, line: str) -> None:
        self.mismatched.append(line)
        self.lines.append(line)

    def error(self, where: str, subject: str, files: Sequence[str]) -> WeightLoadError:
        n = len(self.lines)
        head = (
            f"[{where}] Cannot load {subject} from {_describe_files(files)}: "
            f"{n} problem{'s' if n != 1 else ''}:"
        )
        body = "\n".join(f"  - {line}" for line in self.lines)
        return WeightLoadError(
            f"{head}\n{body}",
            problems=self.lines,
            missing=self.missing,
            unexpected=self.unexpected,
            mismatched=self.mismatched,
            files=files,
        )


# ---------------------------------------------------------------------------------------
# safetensors: dtypes
# ---------------------------------------------------------------------------------------

# name -> (bits per element, MLX dtype it loads as, or None when MLX cannot hold it).
_ST_DTYPES: dict[str, tuple[int, mx.Dtype | None]] = {
    "BOOL": (8, mx.bool_),
    "U8": (8, mx.uint8),
    "I8": (8, mx.int8),
    "U16": (16, mx.uint16),
    "I16": (16, mx.int16),
    "U32": (32, mx.uint32),
    "I32": (32, mx.int32),
    "U64": (64, mx.uint64),
    "I64": (64, mx.int64),
    "F16": (16, mx.float16),
    "BF16": (16, mx.bfloat16),
    "F32": (32, mx.float32),
    "F64": (64, mx.float64),
    "C64": (64, mx.complex64),
    # MLX has no float8: mx.load hands these out as their raw uint8 codes; so do we.
    "F8_E4M3": (8, mx.uint8),
    "F8_E8M0": (8, mx.uint8),
    # Known to the format, not representable in MLX 0.32 (mx.load rejects them too).
    "F8_E5M2": (8, None),
    "F8_E4M3FNUZ": (8, None),
    "F8_E5M2FNUZ": (8, None),
    "F6_E2M3": (6, None),
    "F6_E3M2": (6, None),
    "F4": (4, None),
}

# MLX dtype -> name written by save_safetensors (uint8 is written as U8, never as F8).
_MX_TO_ST: dict[mx.Dtype, str] = {
    mx.bool_: "BOOL",
    mx.uint8: "U8",
    mx.int8: "I8",
    mx.uint16: "U16",
    mx.int16: "I16",
    mx.uint32: "U32",
    mx.int32: "I32",
    mx.uint64: "U64",
    mx.int64: "I64",
    mx.float16: "F16",
    mx.bfloat16: "BF16",
    mx.float32: "F32",
    mx.float64: "F64",
    mx.complex64: "C64",
}

# The safetensors specification caps the header at 100 MB; a larger length field is
# corruption (or not a safetensors file at all), and reading it would waste memory.
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_METADATA_KEY = "__metadata__"


# ---------------------------------------------------------------------------------------
# safetensors: reading
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One validated header entry; offsets are relative to the start of the data section."""

    name: str
    dtype: mx.Dtype
    shape: tuple[int, ...]
    begin: int
    end: int


def _is_int(value: object) -> bool:
    """JSON integers only: ``bool`` is an ``int`` subclass in Python but not a JSON number."""
    return isinstance(value, int) and not isinstance(value, bool)


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads`` hook: Python's json keeps the LAST of repeated keys silently."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r} in a JSON object")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    """``json.loads`` hook: NaN/Infinity are not JSON, whatever Python's parser allows."""
    raise ValueError(f"{name} is not valid JSON")


def _parse_header(
    file: str, header: bytes, data_size: int, problems: _Problems
) -> tuple[list[_Entry], dict[str, str]]:
    """Validate a header completely; report every bad entry, return the good ones.

    Returns ``(entries, metadata)``; the caller must not read data when problems were added.
    """
    try:
        text = header.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.add(f"{file}: header is not valid UTF-8 ({exc.reason} at byte {exc.start}).")
        return [], {}
    try:
        parsed = json.loads(
            text, object_pairs_hook=_reject_duplicate_keys, parse_constant=_reject_constant
        )
    except (ValueError, RecursionError) as exc:
        problems.add(f"{file}: header is not valid JSON ({exc}).")
        return [], {}
    if not isinstance(parsed, dict):
        problems.add(f"{file}: header must be a JSON object but is a {type(parsed).__name__}.")
        return [], {}

    metadata: dict[str, str] = {}
    raw_meta = parsed.pop(_METADATA_KEY, None)
    if raw_meta is not None:
        if not isinstance(raw_meta, dict) or not all(isinstance(v, str) for v in raw_meta.values()):
            problems.add(f"{file}: {_METADATA_KEY} must map strings to strings.")
        else:
            metadata = dict(raw_meta)

    entries: list[_Entry] = []
    for name, info in parsed.items():
        where = f"{file}: tensor {name!r}"
        if not isinstance(info, dict):
            problems.add(f"{where}: entry must be an object but is {type(info).__name__}.")
            continue
        absent = [k for k in ("dtype", "shape", "data_offsets") if k not in info]
        if absent:
            problems.add(f"{where}: entry lacks {', '.join(absent)}.")
            continue
        dtype_name, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        ok = True
        bits: int | None = None
        mx_dtype: mx.Dtype | None = None
        if not isinstance(dtype_name, str) or dtype_name not in _ST_DTYPES:
            problems.add(f"{where}: unknown dtype {dtype_name!r}; known: {', '.join(_ST_DTYPES)}.")
            ok = False
        else:
            bits, mx_dtype = _ST_DTYPES[dtype_name]
            if mx_dtype is None:
                problems.add(f"{where}: dtype {dtype_name} has no MLX equivalent.")
                ok = False
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            problems.add(
                f"{where}: shape must be a list of non-negative integers but is {shape!r}."
            )
            ok = False
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_int(o) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            problems.add(
                f"{where}: data_offsets must be [begin, end] with 0 <= begin <= end "
                f"but is {offsets!r}."
            )
            ok = False
        elif offsets[1] > data_size:
            problems.add(
                f"{where}: data_offsets {offsets} run past the end of the data section "
                f"({data_size} bytes); the file may be truncated."
            )
            ok = False
        if not ok or bits is None or mx_dtype is None:
            continue
        expected_bits = math.prod(shape) * bits
        length = offsets[1] - offsets[0]
        if expected_bits != length * 8:
            problems.add(
                f"{where}: shape {shape} of {dtype_name} needs {expected_bits / 8:g} bytes but "
                f"data_offsets {offsets} span {length}."
            )
            continue
        entries.append(_Entry(name, mx_dtype, tuple(shape), offsets[0], offsets[1]))

    # Overlap: sort by start; an empty tensor occupies no bytes and overlaps nothing.
    spans = sorted((e for e in entries if e.end > e.begin), key=lambda e: (e.begin, e.end))
    for prev, cur in itertools.pairwise(spans):
        if cur.begin < prev.end:
            problems.add(
                f"{file}: tensors {prev.name!r} [{prev.begin}, {prev.end}) and "
                f"{cur.name!r} [{cur.begin}, {cur.end}) overlap."
            )
    return entries, metadata


def _bytes_to_array(buf: bytes, dtype: mx.Dtype, shape: tuple[int, ...]) -> mx.array:
    """Copy little-endian bytes into a new ``mx.array`` (safetensors is little-endian and so
    is every platform MLX runs on). ``mx.array`` copies, so ``buf`` may be freed after."""
    raw = mx.array(np.frombuffer(buf, dtype=np.uint8))
    if dtype == mx.uint8:
        arr = raw
    elif dtype == mx.bool_:
        # A byte other than 0/1 is not a valid bool; normalise rather than keep a bad byte.
        arr = raw != 0
    else:
        arr = raw.view(dtype)
    return arr.reshape(shape)


def _read_one(file: str, problems: _Problems) -> tuple[dict[str, mx.array], dict[str, str]]:
    """Read one file; on any problem, add it and return what is safe (possibly nothing)."""
    try:
        with open(file, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                problems.add(
                    f"{file}: file is {size} bytes, too short for the 8-byte header length."
                )
                return {}, {}
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > size - 8:
                problems.add(
                    f"{file}: header length {header_len} runs past the end of the file "
                    f"({size - 8} bytes follow the length field); not a safetensors file, "
                    "or truncated."
                )
                return {}, {}
            if header_len < 2 or header_len > _MAX_HEADER_BYTES:
                problems.add(
                    f"{file}: header length {header_len} is outside [2, {_MAX_HEADER_BYTES}]."
                )
                return {}, {}
            header = f.read(header_len)
            data_start = 8 + header_len
            local = _Problems()
            entries, metadata = _parse_header(file, header, size - data_start, local)
            if local:
                problems.lines.extend(local.lines)
                return {}, {}
            arrays: dict[str, mx.array] = {}
            for entry in sorted(entries, key=lambda e: e.begin):
                f.seek(data_start + entry.begin)
                buf = f.read(entry.end - entry.begin)
                if len(buf) != entry.end - entry.begin:
                    # The file shrank between the size check and this read.
                    problems.add(f"{file}: tensor {entry.name!r}: short read; file changed?")
                    return {}, {}
                arrays[entry.name] = _bytes_to_array(buf, entry.dtype, entry.shape)
            return arrays, metadata
    except OSError as exc:
        problems.add(f"{file}: cannot read ({exc.strerror or exc}).")
        return {}, {}


def _as_path_list(paths: PathLike | Sequence[PathLike], where: str) -> list[str]:
    """Normalise one path or a sequence of paths to a list of ``str``."""
    if isinstance(paths, (str, os.PathLike)):
        items: Iterable[Any] = [paths]
    elif isinstance(paths, Sequence):
        items = paths
    else:
        raise type_error(
            where, f"paths must be a path or a sequence of paths but got {type(paths).__name__}."
        )
    out = []
    for p in items:
        if not isinstance(p, (str, os.PathLike)):
            raise type_error(where, f"each path must be str or os.PathLike but got {p!r}.")
        out.append(os.fspath(p))
    if not out:
        raise value_error(where, "no files given.")
    return out


def _read_files(files: Sequence[str], where: str) -> tuple[dict[str, mx.array], dict[str, str]]:
    """Read several files into one mapping; return it and ``key -> file`` it came from.

    Every file is read even after an earlier one failed, so one error reports all of them.
    """
    problems = _Problems()
    arrays: dict[str, mx.array] = {}
    sources: dict[str, str] = {}
    for file in files:
        found, _ = _read_one(file, problems)
        for key, arr in found.items():
            if key in sources:
                problems.add(f"tensor {key!r} appears in both {sources[key]} and {file}.")
                continue
            arrays[key] = arr
            sources[key] = file
    if problems:
        raise problems.error(where, "safetensors", files)
    return arrays, sources


def load_safetensors(paths: PathLike | Sequence[PathLike]) -> dict[str, mx.array]:
    """Read one or several ``.safetensors`` files into one ``{name: mx.array}`` dict.

    Each file is validated before any tensor byte is interpreted: the 8-byte little-endian
    header length must lie within the file, the header must be a UTF-8 JSON object without
    repeated keys, each entry's dtype must be known (see the module docstring for how each
    maps to MLX), its shape a list of non-negative integers, its ``data_offsets`` within the
    data section and exactly ``prod(shape) * itemsize`` bytes long, and no two tensors may
    overlap. Across files a name may appear only once. Tensors are copied into memory; no
    pickle is ever used.

    Args:
        paths: a path, or a sequence of paths (for example the shards of one checkpoint).

    Returns:
        ``{name: array}`` with every tensor of every file, in the dtypes and shapes stored.

    Shape:
        As stored; a ``[]`` shape gives a 0-d array.

    Raises:
        WeightLoadError: every problem of every file in one error, each line naming its
            file and tensor (a repeated name names both files).
        TypeError: ``paths`` is not a path or a sequence of paths.
        ValueError: an empty sequence.

    Example:
        >>> import os, tempfile
        >>> import mlx.core as mx
        >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
        >>> save_safetensors(path, {"w": mx.array([[1.0, 2.0]], dtype=mx.bfloat16)})
        >>> load_safetensors(path)["w"]
        array([[1, 2]], dtype=bfloat16)
    """
    files = _as_path_list(paths, "load_safetensors")
    arrays, _ = _read_files(files, "load_safetensors")
    return arrays


# ---------------------------------------------------------------------------------------
# safetensors: writing
# ---------------------------------------------------------------------------------------


def _process_umask() -> int:
    """The umask, read without changing it (``os.umask`` would race with other threads)."""
    with (
        contextlib.suppress(OSError, ValueError),
        open("/proc/self/status", encoding="ascii", errors="replace") as f,
    ):
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def _array_bytes(arr: mx.array) -> bytes:
    """The array's elements in row-major order as little-endian bytes."""
    flat = arr.reshape(-1)
    if flat.dtype != mx.uint8:
        flat = flat.view(mx.uint8)
    return np.array(flat).tobytes()


def save_safetensors(
    path: PathLike,
    arrays: Mapping[str, mx.array],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``arrays`` to ``path`` in the safetensors format, atomically.

    The file is written to a temporary file in the same directory, flushed and fsynced,
    then moved over ``path`` with :func:`os.replace`; a reader sees the old file or the
    complete new one, never a partial one. Tensors are laid out in sorted name order; the
    header is padded with spaces to a multiple of 8 bytes, as the format recommends.
    ``uint8`` arrays are written as ``U8`` (float8 codes loaded as ``uint8`` are not
    relabelled). Readable by :func:`load_safetensors`, ``mx.load`` and the ``safetensors``
    package.

    Args:
        path: destination file.
        arrays: ``{name: mx.array}``; names must be strings other than ``__metadata__``.
        metadata: optional ``{str: str}`` stored under ``__metadata__``.

    Shape:
        Any; stored as given (0-d arrays keep shape ``[]``).

    Raises:
        TypeError: a non-string name or metadata entry, a non-array value.
        ValueError: a dtype the format cannot store, the reserved name ``__metadata__``.
        OSError: the file could not be written (the destination is left untouched).

    Example:
        >>> import os, tempfile
        >>> import mlx.core as mx
        >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
        >>> save_safetensors(path, {"b": mx.array([1, 2], dtype=mx.uint32)}, {"format": "mlx"})
        >>> load_safetensors(path)["b"].tolist()
        [1, 2]
    """
    where = "save_safetensors"
    if not isinstance(arrays, Mapping):
        raise type_error(where, f"arrays must be a mapping but got {type(arrays).__name__}.")
    for name, arr in arrays.items():
        if not isinstance(name, str):
            raise type_error(where, f"tensor names must be str but got {name!r}.")
        if name == _METADATA_KEY:
            raise value_error(where, f"{_METADATA_KEY!r} is reserved for metadata.")
        if not isinstance(arr, mx.array):
            raise type_error(where, f"{name!r} must be an mx.array but got {type(arr).__name__}.")
        if arr.dtype not in _MX_TO_ST:
            raise value_error(
                where, f"{name!r} has dtype {_dt(arr.dtype)}, which safetensors cannot store."
            )
    header: dict[str, Any] = {}
    if metadata is not None:
        if not isinstance(metadata, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise type_error(where, f"metadata must map str to str but got {metadata!r}.")
        header[_METADATA_KEY] = dict(metadata)
    names = sorted(arrays)
    offset = 0
    for name in names:
        arr = arrays[name]
        header[name] = {
            "dtype": _MX_TO_ST[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        offset += arr.nbytes
    encoded = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)

    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=directory)
    try:
        # mkstemp creates the file 0600; give it the mode a plain open() would have.
        os.chmod(tmp, 0o666 & ~_process_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(encoded)))
            f.write(encoded)
            for name in names:
                f.write(_array_bytes(arrays[name]))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # Persist the rename itself; not every platform lets a directory be opened and synced.
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# ---------------------------------------------------------------------------------------
# Declarations
# ---------------------------------------------------------------------------------------

_FIELD_KEY = "mlx_impl.weight"


@dataclasses.dataclass(frozen=True)
class _WeightSpec:
    """What :func:`weight` records in a field's metadata."""

    path: str
    optional: bool
    shape: tuple[int | None, ...] | None
    dtype: Any  # an mx.Dtype or a category such as mx.floating, or None
    kwargs: Mapping[str, Any]


def weight(
    path: str,
    *,
    optional: bool = False,
    shape: Sequence[int | None] | None = None,
    dtype: Any = None,
    **layer_kwargs: Any,
) -> Any:
    """Declare a model field filled from the checkpoint key(s) at ``<prefix>.<path>``.

    The Python take on Ollama's ``weight:"path[,optional]"`` struct tag; use it as the
    default of a field of a :func:`dataclasses.dataclass` and give the field a type:

    * ``mx.array``: the one key ``<prefix>.<path>``.
    * a layer class (``Linear``, ``RMSNorm``, ``Embedding``, ...): ``<prefix>.<path>.weight``
      plus the layer's other tensors (``.bias``; ``.scales``/``.biases`` when quantized).
    * ``LinearLayer`` (or ``Linear | QuantizedLinear``): a ``QuantizedLinear`` when
      ``<prefix>.<path>.scales`` exists, else a ``Linear``.
    * another such dataclass: its own fields, under the prefix ``<prefix>.<path>``.
    * ``list[X]``: ``<path>.0``, ``<path>.1``, ... while keys exist; empty is missing.
    * ``X | None``: ``None`` when nothing lies at or under ``<prefix>.<path>``.

    Args:
        path: dotted path suffix, e.g. ``"self_attn.q_proj"`` (non-empty, no empty parts).
        optional: the weight may be missing: the field is then ``None`` (``[]`` for a list
            not annotated ``| None``). Same effect as annotating ``X | None``.
        shape: declared shape checked at load time; ``None`` entries match any size. For a
            layer it is the shape of its ``weight``, for a quantized linear layer the
            unpacked ``[out, in]``.
        dtype: for an ``mx.array`` field: the required dtype, or a category such as
            ``mx.floating`` (checked with ``mx.issubdtype``).
        **layer_kwargs: extra keyword arguments for the layer constructor, e.g.
            ``eps=1e-6`` for ``RMSNorm``; for ``list[Layer]`` they go to every element.

    Returns:
        A :func:`dataclasses.field` (keyword-only; ``default=None`` when optional).

    Shape:
        Whatever the declared layer takes (``[out, in]`` for a linear weight).

    Raises:
        ValueError: an empty or malformed ``path``.
        TypeError: ``shape`` not a sequence of ints/None.

    Example:
        >>> from dataclasses import dataclass
        >>> from mlx_impl.nn import RMSNorm
        >>> @dataclass
        ... class Final:
        ...     norm: RMSNorm = weight("norm", eps=1e-6)
        >>> import mlx.core as mx
        >>> load_weights(Final, {"norm.weight": mx.ones((4,))}).norm.eps
        1e-06
    """
    if not isinstance(path, str) or not path or any(not part for part in path.split(".")):
        raise value_error(
            "weight", f"path must be a non-empty dotted name without empty parts but got {path!r}."
        )
    declared: tuple[int | None, ...] | None = None
    if shape is not None:
        if (
            isinstance(shape, (str, bytes))
            or not isinstance(shape, Sequence)
            or not all(d is None or (_is_int(d) and d >= 0) for d in shape)
        ):
            raise type_error(
                "weight", f"shape must be a sequence of ints >= 0 or None but got {shape!r}."
            )
        declared = tuple(shape)
    spec = _WeightSpec(path, bool(optional), declared, dtype, dict(layer_kwargs))
    metadata = {_FIELD_KEY: spec}
    if optional:
        return dataclasses.field(default=None, kw_only=True, metadata=metadata)
    return dataclasses.field(kw_only=True, metadata=metadata)


# ---------------------------------------------------------------------------------------
# Layer descriptions: which tensors each layer class takes and how they must relate
# ---------------------------------------------------------------------------------------

_Describe = Callable[[str], str]


def _dt(dtype: Any) -> str:
    """``float32`` rather than ``mlx.core.float32`` in messages."""
    return str(dtype).removeprefix("mlx.core.")


def _floating(arr: mx.array) -> bool:
    return mx.issubdtype(arr.dtype, mx.floating)


def _expect_ndim(
    label: str, name: str, key: str, arr: mx.array, ndim: int, describe: _Describe, out: list[str]
) -> bool:
    if arr.ndim != ndim:
        out.append(f"{describe(key)}: {label} {name} must be {ndim}-D but has shape {arr.shape}.")
        return False
    return True


def _expect_floating(
    label: str, name: str, key: str, arr: mx.array, describe: _Describe, out: list[str]
) -> bool:
    if not _floating(arr):
        out.append(
            f"{describe(key)}: {label} {name} must have a floating dtype but has {_dt(arr.dtype)}."
        )
        return False
    return True


@dataclasses.dataclass(frozen=True)
class _LayerSpec:
    """How to fill one layer class: its tensor arguments and their consistency rules.

    ``check(describe, tensors, keys, out)`` appends one line per problem to ``out``;
    ``tensors`` holds the present tensors by argument name, ``keys`` their checkpoint keys.
    """

    label: str
    cls: type
    required: tuple[str, ...]
    optional: tuple[str, ...]
    check: Callable[[_Describe, dict[str, mx.array], dict[str, str], list[str]], None]


def _check_vector_norm(label: str) -> Callable[..., None]:
    """RMSNorm / LayerNorm: ``weight [D]`` (and ``bias [D]``), floating."""

    def check(
        describe: _Describe, t: dict[str, mx.array], keys: dict[str, str], out: list[str]
    ) -> None:
        w = t["weight"]
        good = _expect_ndim(label, "weight", keys["weight"], w, 1, describe, out)
        _expect_floating(label, "weight", keys["weight"], w, describe, out)
        b = t.get("bias")
        if b is not None:
            _expect_floating(label, "bias", keys["bias"], b, describe, out)
            if good and b.shape != w.shape:
                out.append(
                    f"{describe(keys['bias'])}: {label} bias must have the weight's shape "
                    f"{w.shape} but has {b.shape}."
                )

    return check


def _check_matrix(label: str, ndim: int) -> Callable[..., None]:
    """Embedding (2-D), MultiLinear (3-D): one floating weight of a fixed rank."""

    def check(
        describe: _Describe, t: dict[str, mx.array], keys: dict[str, str], out: list[str]
    ) -> None:
        w = t["weight"]
        _expect_ndim(label, "weight", keys["weight"], w, ndim, describe, out)
        _expect_floating(label, "weight", keys["weight"], w, describe, out)

    return check


def _check_linear(
    describe: _Describe, t: dict[str, mx.array], keys: dict[str, str], out: list[str]
) -> None:
    """Linear: ``weight [out, in]``, ``bias [out]``, floating."""
    w = t["weight"]
    good = _expect_ndim("Linear", "weight", keys["weight"], w, 2, describe, out)
    _expect_floating("Linear", "weight", keys["weight"], w, describe, out)
    b = t.get("bias")
    if b is not None:
        _expect_floating("Linear", "bias", keys["bias"], b, describe, out)
        if good and b.shape != (w.shape[0],):
            out.append(
                f"{describe(keys['bias'])}: Linear bias must have shape ({w.shape[0]},) "
                f"(one per weight row; weight {w.shape}) but has {b.shape}."
            )


def _check_quantized(
    group_size: int, bits: int, mode: str
) -> Callable[[_Describe, dict[str, mx.array], dict[str, str], list[str]], None]:
    """QuantizedLinear: packed ``weight [out, in*bits/32]`` uint32, ``scales [out, in/group]``
    (floating for affine, uint8 codes for the fp modes), affine ``biases`` like ``scales``,
    layer ``bias [out]``."""
    label = f"QuantizedLinear ({mode}, {bits}-bit, group {group_size})"

    def check(
        describe: _Describe, t: dict[str, mx.array], keys: dict[str, str], out: list[str]
    ) -> None:
        w, s = t["weight"], t["scales"]
        wk, sk = keys["weight"], keys["scales"]
        if w.dtype != mx.uint32:
            out.append(
                f"{describe(wk)}: {label} weight must be packed uint32 but has {_dt(w.dtype)}."
            )
        if not _expect_ndim(label, "weight", wk, w, 2, describe, out):
            return
        rows, packed = w.shape
        if (packed * 32) % bits:
            out.append(
                f"{describe(wk)}: {label} packed weight width {packed} words is not a whole "
                f"number of {bits}-bit values."
            )
            return
        in_features = packed * 32 // bits
        if in_features % group_size:
            out.append(
                f"{describe(wk)}: {label} input size {in_features} (from packed width {packed}) "
                f"is not a multiple of the group size {group_size}."
            )
            return
        want = (rows, in_features // group_size)
        if s.shape != want:
            out.append(
                f"{describe(sk)}: {label} scales must have shape {want} for weight {w.shape} "
                f"but has {s.shape}."
            )
        if mode == "affine":
            _expect_floating(label, "scales", sk, s, describe, out)
        elif s.dtype != mx.uint8:
            out.append(
                f"{describe(sk)}: {label} scales must be uint8 codes but have {_dt(s.dtype)}."
            )
        qb = t.get("biases")
        if qb is not None:
            bk = keys["biases"]
            if mode != "affine":
                out.append(f"{describe(bk)}: mode {mode} stores no biases, but they are present.")
            else:
                if qb.shape != want:
                    out.append(
                        f"{describe(bk)}: {label} biases must have the scales' shape {want} "
                        f"but has {qb.shape}."
                    )
                if qb.dtype != s.dtype:
                    out.append(
                        f"{describe(bk)}: {label} biases must have the scales' dtype "
                        f"{_dt(s.dtype)} but have {_dt(qb.dtype)}."
                    )
        b = t.get("bias")
        if b is not None:
            _expect_floating(label, "bias", keys["bias"], b, describe, out)
            if b.shape != (rows,):
                out.append(
                    f"{describe(keys['bias'])}: {label} bias must have shape ({rows},) but "
                    f"has {b.shape}."
                )

    return check


_LAYERS: dict[type, _LayerSpec] = {
    spec.cls: spec
    for spec in (
        _LayerSpec("Linear", _nn.Linear, ("weight",), ("bias",), _check_linear),
        _LayerSpec("RMSNorm", _nn.RMSNorm, ("weight",), (), _check_vector_norm("RMSNorm")),
        _LayerSpec(
            "LayerNorm", _nn.LayerNorm, ("weight",), ("bias",), _check_vector_norm("LayerNorm")
        ),
        _LayerSpec("Embedding", _nn.Embedding, ("weight",), (), _check_matrix("Embedding", 2)),
        _LayerSpec(
            "MultiLinear", _nn.MultiLinear, ("weight",), (), _check_matrix("MultiLinear", 3)
        ),
        _LayerSpec(
            "fast.RMSNorm", _fast.RMSNorm, ("weight",), (), _check_vector_norm("fast.RMSNorm")
        ),
        _LayerSpec(
            "fast.LayerNorm",
            _fast.LayerNorm,
            ("weight",),
            ("bias",),
            _check_vector_norm("fast.LayerNorm"),
        ),
    )
}


# ---------------------------------------------------------------------------------------
# Type analysis of declared models
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Raw:
    """An ``mx.array`` field."""


@dataclasses.dataclass(frozen=True)
class _Layer:
    """A layer of a known class."""

    spec: _LayerSpec


@dataclasses.dataclass(frozen=True)
class _AnyLinear:
    """``LinearLayer``: ``QuantizedLinear`` if ``.scales`` exists, else ``Linear``."""


@dataclasses.dataclass(frozen=True)
class _Nested:
    """Another declared dataclass."""

    cls: type


@dataclasses.dataclass(frozen=True)
class _List:
    """``list[X]``."""

    item: "_Kind"


_Kind = _Raw | _Layer | _AnyLinear | _Nested | _List


def _kind_of(tp: Any, where: str) -> tuple[_Kind, bool]:
    """Map an annotation to what fills it; the bool says whether it admits ``None``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        rest = [a for a in args if a is not type(None)]
        admits_none = len(rest) != len(args)
        if set(rest) == {_nn.Linear, _nn.QuantizedLinear}:
            return _AnyLinear(), admits_none
        if len(rest) != 1:
            raise type_error(
                "load_weights",
                f"{where}: a union may only be 'X | None' or 'Linear | QuantizedLinear' but got {tp!r}.",
            )
        kind, _ = _kind_of(rest[0], where)
        return kind, admits_none
    if origin is list:
        (item,) = typing.get_args(tp) or (None,)
        if item is None:
            raise type_error(
                "load_weights", f"{where}: a list must name its item type, e.g. list[Block]."
            )
        item_kind, item_none = _kind_of(item, where)
        if item_none:
            raise type_error("load_weights", f"{where}: list items cannot be optional ({tp!r}).")
        return _List(item_kind), False
    if tp is mx.array:
        return _Raw(), False
    if tp is _nn.LinearLayer:
        return _AnyLinear(), False
    if tp is _nn.QuantizedLinear:
        # Declared quantized: always QuantizedLinear (a missing .scales is reported).
        return _Layer(_QUANTIZED_MARKER), False
    if isinstance(tp, type) and tp in _LAYERS:
        return _Layer(_LAYERS[tp]), False
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _Nested(tp), False
    raise type_error(
        "load_weights",
        f"{where}: cannot fill a field of type {tp!r}; use mx.array, a layer class "
        f"({', '.join(s.label for s in _LAYERS.values())}, QuantizedLinear), LinearLayer, "
        "a dataclass declared with weight(...), list[...] of those, or X | None.",
    )


# Placeholder spec for an explicitly declared QuantizedLinear; its real rules depend on the
# quantization given to load_weights, so the loader special-cases it.
def _checked_elsewhere(
    describe: _Describe, t: dict[str, mx.array], keys: dict[str, str], out: list[str]
) -> None:
    """Placeholder: QuantizedLinear is checked by ``_check_quantized`` at load time."""


_QUANTIZED_MARKER = _LayerSpec(
    "QuantizedLinear",
    _nn.QuantizedLinear,
    ("weight", "scales"),
    ("biases", "bias"),
    _checked_elsewhere,
)


@dataclasses.dataclass(frozen=True)
class _FieldPlan:
    name: str
    spec: _WeightSpec
    kind: _Kind
    admits_none: bool


@functools.lru_cache(maxsize=256)
def _fields_of(cls: type) -> tuple[_FieldPlan, ...]:
    """The weight-declared fields of a dataclass, with their resolved annotation kinds."""
    try:
        hints = typing.get_type_hints(cls)
    except NameError as exc:
        raise type_error(
            "load_weights",
            f"cannot resolve the annotations of {cls.__qualname__} ({exc}); define the "
            "model at module level or import the names its annotations use.",
        ) from exc
    plans = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(_FIELD_KEY)
        where = f"{cls.__qualname__}.{f.name}"
        if spec is None:
            if (
                f.init
                and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING
            ):
                raise type_error(
                    "load_weights",
                    f"{where} has neither a weight(...) declaration nor a default.",
                )
            continue
        if not f.init:
            raise type_error(
                "load_weights", f"{where}: a weight(...) field must be an __init__ field."
            )
        kind, admits_none = _kind_of(hints[f.name], where)
        base = kind.item if isinstance(kind, _List) else kind
        if spec.kwargs and not isinstance(base, (_Layer, _AnyLinear)):
            raise type_error(
                "load_weights",
                f"{where}: constructor arguments {sorted(spec.kwargs)} only apply to layers.",
            )
        if spec.dtype is not None and not isinstance(base, _Raw):
            raise type_error("load_weights", f"{where}: dtype= only applies to mx.array fields.")
        if spec.shape is not None and isinstance(base, _Nested):
            raise type_error("load_weights", f"{where}: shape= does not apply to a nested model.")
        plans.append(_FieldPlan(f.name, spec, kind, admits_none))
    return tuple(plans)


# ---------------------------------------------------------------------------------------
# The loader
# ---------------------------------------------------------------------------------------

_Builder = Callable[[], Any]

_QUANT_MODES = {
    "affine": None,  # checked below
    "nvfp4": (16, 4),
    "mxfp4": (32, 4),
    "mxfp8": (32, 8),
}


def _resolve_quantization(quantization: Quantization) -> tuple[int, int, str] | None:
    """``None``, an Ollama label (``"Q4"``, ``"NVFP4"``, ...) or ``(group_size, bits, mode)``."""
    where = "load_weights"
    if quantization is None:
        return None
    if isinstance(quantization, str):
        from mlx_impl.quantization import quantization_for_label

        resolved: Any = quantization_for_label(quantization)
        if all(hasattr(resolved, a) for a in ("group_size", "bits", "mode")):
            resolved = (resolved.group_size, resolved.bits, resolved.mode)
        quantization = tuple(resolved)
    if not isinstance(quantization, tuple) or len(quantization) != 3:
        raise type_error(
            where,
            f"quantization must be None, a label such as 'Q4', or (group_size, bits, mode) "
            f"but got {quantization!r}.",
        )
    group_size, bits, mode = quantization
    if not (_is_int(group_size) and _is_int(bits) and isinstance(mode, str)):
        raise type_error(where, f"quantization must be (int, int, str) but got {quantization!r}.")
    if mode not in _QUANT_MODES:
        raise value_error(
            where, f"quantization mode must be one of {sorted(_QUANT_MODES)} but got {mode!r}."
        )
    fixed = _QUANT_MODES[mode]
    if fixed is not None and (group_size, bits) != fixed:
        raise value_error(
            where,
            f"mode {mode} needs group_size {fixed[0]} and bits {fixed[1]} but got "
            f"group_size {group_size}, bits {bits}.",
        )
    if mode == "affine" and (group_size not in (32, 64, 128) or bits not in (1, 2, 3, 4, 5, 6, 8)):
        raise value_error(
            where,
            "affine quantization needs group_size in (32, 64, 128) and bits in "
            f"(1, 2, 3, 4, 5, 6, 8) but got group_size {group_size}, bits {bits}.",
        )
    return group_size, bits, mode


class _Loader:
    """Phase 1 (plan): walk the declaration, take tensors, record problems, return builders.
    Phase 2 (build) runs the builders only when phase 1 found nothing wrong."""

    def __init__(
        self,
        arrays: Mapping[str, Any],
        sources: Mapping[str, str],
        quantization: tuple[int, int, str] | None,
    ) -> None:
        self.arrays = arrays
        self.sources = sources
        self.quantization = quantization
        self.problems = _Problems()
        self.consumed: set[str] = set()
        self.quantized_without_config: list[str] = []
        # Every dotted prefix of every key -> its next components: O(1) "anything under p?".
        self.children: dict[str, set[str]] = {}
        for key in arrays:
            parts = key.split(".")
            for i in range(1, len(parts)):
                self.children.setdefault(".".join(parts[:i]), set()).add(parts[i])

    def describe(self, key: str) -> str:
        source = self.sources.get(key)
        return f"{key!r} (in {source})" if source else repr(key)

    def present(self, path: str) -> bool:
        return path in self.arrays or path in self.children

    def take(self, key: str) -> mx.array | None:
        """The array at ``key`` (marking it consumed), or ``None``; non-arrays are reported."""
        if key not in self.arrays:
            return None
        self.consumed.add(key)
        value = self.arrays[key]
        if not isinstance(value, mx.array):
            self.problems.add_mismatch(
                f"{self.describe(key)}: expected an mx.array but got {type(value).__name__}."
            )
            return None
        return value

    def missing(self, key: str) -> None:
        self.problems.add_missing(key, f"missing {key!r}")

    # -- fields ------------------------------------------------------------------------

    def plan_model(self, cls: type, prefix: str) -> _Builder:
        builders = {}
        for plan in _fields_of(cls):
            full = f"{prefix}.{plan.spec.path}" if prefix else plan.spec.path
            builders[plan.name] = self.plan_field(plan, full)

        def build() -> Any:
            return cls(**{name: b() for name, b in builders.items()})

        return build

    def plan_field(self, plan: _FieldPlan, full: str) -> _Builder:
        optional = plan.spec.optional or plan.admits_none
        if optional and not self.present(full):
            empty: Any = [] if isinstance(plan.kind, _List) and not plan.admits_none else None
            return lambda: empty
        if isinstance(plan.kind, _List):
            return self.plan_list(plan.kind.item, plan.spec, full)
        return self.plan_one(plan.kind, plan.spec, full)

    def plan_list(self, item: _Kind, spec: _WeightSpec, full: str) -> _Builder:
        builders: list[_Builder] = []
        while self.present(f"{full}.{len(builders)}"):
            builders.append(self.plan_one(item, spec, f"{full}.{len(builders)}"))
        if not builders:
            # Plan element 0 anyway: its missing keys are the most useful report.
            self.plan_one(item, spec, f"{full}.0")
        count = len(builders)
        beyond = sorted(
            int(c)
            for c in self.children.get(full, ())
            if c.isascii() and c.isdigit() and int(c) > count
        )
        if beyond:
            self.problems.add_missing(
                f"{full}.{count}",
                f"list {full!r} stops at index {count} (nothing at {full + '.' + str(count)!r}) "
                f"but entries {beyond} exist",
            )
            for key in self.arrays:
                if any(key.startswith(f"{full}.{i}.") or key == f"{full}.{i}" for i in beyond):
                    self.consumed.add(key)
        return lambda: [b() for b in builders]

    def plan_one(self, kind: _Kind, spec: _WeightSpec, full: str) -> _Builder:
        if isinstance(kind, _Nested):
            return self.plan_model(kind.cls, full)
        if isinstance(kind, _Raw):
            return self.plan_raw(spec, full)
        if isinstance(kind, _AnyLinear):
            if self.present(f"{full}.scales"):
                return self.plan_quantized(spec, full)
            return self.plan_layer(_LAYERS[_nn.Linear], spec, full)
        assert isinstance(kind, _Layer)
        if kind.spec is _QUANTIZED_MARKER:
            return self.plan_quantized(spec, full)
        return self.plan_layer(kind.spec, spec, full)

    def plan_raw(self, spec: _WeightSpec, full: str) -> _Builder:
        arr = self.take(full)
        if arr is None:
            if full not in self.arrays:
                self.missing(full)
            return lambda: None
        self.check_declared_shape(full, arr.shape, spec, "")
        if spec.dtype is not None:
            ok = (
                arr.dtype == spec.dtype
                if isinstance(spec.dtype, mx.Dtype)
                else mx.issubdtype(arr.dtype, spec.dtype)
            )
            if not ok:
                self.problems.add_mismatch(
                    f"{self.describe(full)}: expected dtype {_dt(spec.dtype)} but has {_dt(arr.dtype)}."
                )
        return lambda: arr

    def check_declared_shape(
        self, key: str, actual: tuple[int, ...], spec: _WeightSpec, what: str
    ) -> None:
        want = spec.shape
        if want is None:
            return
        if len(want) != len(actual) or any(
            w is not None and w != a for w, a in zip(want, actual, strict=True)
        ):
            shown = tuple("*" if w is None else w for w in want)
            self.problems.add_mismatch(
                f"{self.describe(key)}: declared shape {shown}{what} but has {actual}."
            )

    def gather(
        self, required: Sequence[str], optional: Sequence[str], full: str
    ) -> tuple[dict[str, mx.array], dict[str, str], bool]:
        """Take ``full.<name>`` for each tensor argument; report missing required ones."""
        tensors: dict[str, mx.array] = {}
        keys: dict[str, str] = {}
        complete = True
        for name in (*required, *optional):
            key = f"{full}.{name}"
            keys[name] = key
            arr = self.take(key)
            if arr is not None:
                tensors[name] = arr
            elif name in required:
                complete = False
                if key not in self.arrays:
                    self.missing(key)
        return tensors, keys, complete

    def plan_layer(self, layer: _LayerSpec, spec: _WeightSpec, full: str) -> _Builder:
        tensors, keys, complete = self.gather(layer.required, layer.optional, full)
        if not complete:
            return lambda: None
        found: list[str] = []
        layer.check(self.describe, tensors, keys, found)
        for line in found:
            self.problems.add_mismatch(line)
        self.check_declared_shape(keys["weight"], tensors["weight"].shape, spec, "")
        args = {name: tensors.get(name) for name in (*layer.required, *layer.optional)}
        return self.constructor(layer.label, layer.cls, args, dict(spec.kwargs), full)

    def plan_quantized(self, spec: _WeightSpec, full: str) -> _Builder:
        if self.quantization is None:
            # Reported once for all layers by load_weights; still consume the keys.
            self.quantized_without_config.append(full)
            self.gather((), ("weight", "scales", "biases", "bias"), full)
            return lambda: None
        group_size, bits, mode = self.quantization
        required = ("weight", "scales", "biases") if mode == "affine" else ("weight", "scales")
        optional = ("bias",) if mode == "affine" else ("biases", "bias")
        tensors, keys, complete = self.gather(required, optional, full)
        if not complete:
            return lambda: None
        found: list[str] = []
        _check_quantized(group_size, bits, mode)(self.describe, tensors, keys, found)
        for line in found:
            self.problems.add_mismatch(line)
        w = tensors["weight"]
        if spec.shape is not None and w.ndim == 2:
            logical = (w.shape[0], w.shape[1] * 32 // bits)
            self.check_declared_shape(keys["weight"], logical, spec, " (unpacked [out, in])")
        args = {
            "weight": w,
            "scales": tensors["scales"],
            "biases": tensors.get("biases"),
            "bias": tensors.get("bias"),
            "group_size": group_size,
            "bits": bits,
            "mode": mode,
        }
        return self.constructor(
            "QuantizedLinear", _nn.QuantizedLinear, args, dict(spec.kwargs), full
        )

    def constructor(
        self, label: str, cls: type, args: dict[str, Any], kwargs: dict[str, Any], full: str
    ) -> _Builder:
        def build() -> Any:
            # The checks above mirror the layers' own; anything a constructor still rejects
            # (an argument rule this module does not know) joins the one error.
            try:
                return cls(**args, **kwargs)
            except (ValueError, TypeError, IndexError) as exc:
                self.problems.add_mismatch(f"{full!r}: {label} rejected its weights: {exc}")
                return None

        return build


def load_weights(
    model_type: type[T],
    weights: Mapping[str, mx.array] | PathLike | Sequence[PathLike],
    *,
    prefix: str = "",
    quantization: Quantization = None,
    strict: bool = True,
) -> T:
    """Build a NEW ``model_type`` filled from ``weights``, or raise ONE error listing all problems.

    ``model_type`` is a :func:`dataclasses.dataclass` whose fields are declared with
    :func:`weight` (see it for what each annotation is filled from). Each field's key is
    ``<prefix>.<path>``; nested dataclasses and list items extend the prefix.

    Checks, all collected before anything is built: every required key is present; with
    ``strict``, every key under ``prefix`` was used by some field; every tensor has the
    dtype and rank its layer needs and the layers' tensors agree (``Linear`` bias length =
    weight rows, norm weights 1-D, ``Embedding`` 2-D, ``MultiLinear`` 3-D,
    ``QuantizedLinear`` packed ``uint32`` weight with ``scales``/``biases`` of shape
    ``[out, in / group_size]``); declared ``shape=``/``dtype=`` hold; quantized layers
    (a ``.scales`` key) come with a ``quantization``. Layers are constructed only when all
    of that holds, and the model object only when every layer was built, so a failed load
    leaves no half-filled model anywhere.

    Args:
        model_type: the declared dataclass to build.
        weights: ``{key: mx.array}``, or a ``.safetensors`` path or a sequence of paths
            (shards), read with :func:`load_safetensors`.
        prefix: dotted prefix of every key, e.g. ``"model"`` or ``"text_encoder"``; keys
            outside it are ignored even when ``strict``.
        quantization: ``None``, an Ollama label (``"Q4"``, ``"Q8"``, ``"NVFP4"``,
            ``"MXFP8"``, ... resolved by ``mlx_impl.quantization.quantization_for_label``), or
            ``(group_size, bits, mode)``. Required when the checkpoint has quantized layers.
        strict: report keys under ``prefix`` that no field used.

    Returns:
        A new ``model_type`` instance. Arrays are the checkpoint's own (no copies, no casts).

    Shape:
        Per layer as stored: ``Linear`` ``weight: [out, in]``, ``bias: [out]``;
        ``QuantizedLinear`` ``weight: [out, in*bits/32]`` uint32, ``scales``/``biases``:
        ``[out, in/group_size]``; norms ``weight: [D]``; ``Embedding`` ``weight: [V, D]``;
        ``MultiLinear`` ``weight: [heads, out, in]``.

    Dtypes:
        Kept as stored; nothing is promoted or cast. Floating layer weights must have a
        floating dtype (float16, bfloat16, float32, float64).

    Raises:
        WeightLoadError: (a ``ValueError``) every missing, unexpected, mis-shaped or mistyped
            tensor, gaps in lists, quantized layers without ``quantization`` - in one error
            naming the file(s); also unreadable or malformed files.
        TypeError: ``model_type`` is not a declared dataclass, or a field's annotation
            cannot be filled.
        ValueError: an invalid ``quantization``.

    Example:
        >>> from dataclasses import dataclass
        >>> import mlx.core as mx
        >>> from mlx_impl import load_weights, weight
        >>> from mlx_impl.nn import LinearLayer, RMSNorm
        >>> @dataclass
        ... class Block:
        ...     norm: RMSNorm = weight("input_layernorm", eps=1e-6)
        ...     proj: LinearLayer = weight("proj")
        >>> @dataclass
        ... class Model:
        ...     blocks: list[Block] = weight("layers")
        >>> ckpt = {
        ...     f"model.layers.{i}.{name}": value
        ...     for i in range(2)
        ...     for name, value in [
        ...         ("input_layernorm.weight", mx.ones((4,))),
        ...         ("proj.weight", mx.zeros((3, 4))),
        ...         ("proj.bias", mx.ones((3,))),
        ...     ]
        ... }
        >>> m = load_weights(Model, ckpt, prefix="model")
        >>> len(m.blocks), type(m.blocks[1].proj).__name__, m.blocks[0].proj.output_dim
        (2, 'Linear', 3)
        >>> del ckpt["model.layers.1.proj.bias"]  # optional: fine
        >>> del ckpt["model.layers.0.proj.weight"]
        >>> ckpt["model.layers.0.norm.weight"] = mx.ones((4,))
        >>> ckpt["model.layers.1.input_layernorm.weight"] = mx.ones((5, 1))
        >>> load_weights(Model, ckpt, prefix="model")
        Traceback (most recent call last):
        ...
        mlx_impl.loading.WeightLoadError: [load_weights] Cannot load Model from a mapping of arrays: 3 problems:
          - missing 'model.layers.0.proj.weight'
          - 'model.layers.1.input_layernorm.weight': RMSNorm weight must be 1-D but has shape (5, 1).
          - unexpected 'model.layers.0.norm.weight'
    """
    where = "load_weights"
    if not (isinstance(model_type, type) and dataclasses.is_dataclass(model_type)):
        raise type_error(where, f"model_type must be a dataclass type but got {model_type!r}.")
    if not isinstance(prefix, str) or (prefix and any(not p for p in prefix.split("."))):
        raise value_error(where, f"prefix must be '' or a dotted name but got {prefix!r}.")
    quant = _resolve_quantization(quantization)

    files: list[str] = []
    if isinstance(weights, Mapping):
        arrays: Mapping[str, Any] = weights
        sources: Mapping[str, str] = {}
        bad_keys = [k for k in weights if not isinstance(k, str)]
        if bad_keys:
            raise type_error(where, f"weight names must be str but got {bad_keys[:5]!r}.")
    else:
        files = _as_path_list(weights, where)
        arrays, sources = _read_files(files, where)

    loader = _Loader(arrays, sources, quant)
    build = loader.plan_model(model_type, prefix)
    problems = loader.problems
    if loader.quantized_without_config:
        names = loader.quantized_without_config
        shown = ", ".join(repr(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")
        problems.add(
            f"{len(names)} quantized layer(s) ({shown}: they have '.scales') but "
            "quantization=None; pass the checkpoint's label (e.g. quantization='Q4') or "
            "(group_size, bits, mode)."
        )
    if strict:
        under = f"{prefix}." if prefix else ""
        for key in arrays:
            if key.startswith(under) and key not in loader.consumed:
                problems.add_unexpected(key, f"unexpected {loader.describe(key)}")
    if problems:
        raise problems.error(where, model_type.__qualname__, files)
    model = build()
    if problems:  # a layer constructor rejected something the checks above do not cover
        raise problems.error(where, model_type.__qualname__, files)
    return typing.cast(T, model)
