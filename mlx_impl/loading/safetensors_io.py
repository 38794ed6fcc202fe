"""Reading and writing ``.safetensors`` files through the libraries made for it.

Reading (:func:`load_safetensors`): the ``safetensors`` package (its Rust parser, through
``safe_open``) validates each file's header and offsets before anything is read: header
length within the file and under 100 MB, UTF-8 JSON, known dtypes, each tensor exactly
``prod(shape) * itemsize`` bytes, no overlap, no byte of the data section left unowned
(``mx.load`` accepts overlapping tensors; the library refuses them). The project adds two
rules of its own (:mod:`mlx_impl.loading.header_check`): no repeated tensor names, only
dtypes MLX can hold. Then ``mx.load`` reads the bytes (every dtype MLX has, bfloat16
included); the only dtype it cannot read, ``F64``, comes through the library's
framework-free ``deserialize`` instead. No pickle is ever involved: a pickle renamed
``.safetensors`` is refused as a header whose length runs past the end of the file.

Writing (:func:`save_safetensors`): the library's ``serialize_file`` writes the file (it
pads the header to 8 bytes, as the format recommends) from the arrays' own memory, into a
temporary file in the destination directory that is fsynced and then moved over the
destination with :func:`os.replace`: a reader sees the old file or the whole new one.

Only the framework-free parts of ``safetensors`` are used (never ``safetensors.torch``), so
this never imports torch.
"""

import contextlib
import os
import tempfile
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import mlx.core as mx
import numpy as np
import safetensors

from mlx_impl._errors import type_error, value_error
from mlx_impl.loading.errors import Problems
from mlx_impl.loading.header_check import METADATA_KEY, SAFETENSORS_DTYPES, check_header
from mlx_impl.loading.layer_rules import dtype_name

__all__ = ["PathLike", "as_path_list", "load_safetensors", "read_files", "save_safetensors"]

PathLike = str | os.PathLike[str]

# MLX dtype -> the library's name for it in a TensorSpec (written as BOOL, U8, ..., BF16).
# uint8 is written as U8, never as an F8 type: float8 codes loaded as uint8 keep their label.
_SPEC_DTYPE: dict[mx.Dtype, str] = {
    mx.bool_: "bool",
    mx.uint8: "uint8",
    mx.int8: "int8",
    mx.uint16: "uint16",
    mx.int16: "int16",
    mx.uint32: "uint32",
    mx.int32: "int32",
    mx.uint64: "uint64",
    mx.int64: "int64",
    mx.float16: "float16",
    mx.bfloat16: "bfloat16",
    mx.float32: "float32",
    mx.float64: "float64",
    mx.complex64: "complex64",
}

# Safetensors dtypes mx.load 0.32.4 refuses ("[safetensor] unsupported dtype F64") although
# MLX holds them: files with one are read through the library's deserialize instead.
_NOT_READ_BY_MX_LOAD = frozenset({"F64"})


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


def _file_identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _from_bytes(data: bytes, dtype: mx.Dtype, shape: Sequence[int]) -> mx.array:
    """Little-endian bytes (safetensors' order, and that of every platform MLX runs on) into
    a new ``mx.array`` of ``dtype`` and ``shape``; ``mx.array`` copies."""
    raw = mx.array(np.frombuffer(data, dtype=np.uint8))
    arr = raw if dtype == mx.uint8 else raw.view(dtype)
    return arr.reshape(list(shape))


def _read_tensors(file: str, dtypes: Mapping[str, str]) -> dict[str, mx.array]:
    """The tensors of a file the library accepted, evaluated (read into memory now)."""
    arrays: dict[str, mx.array]
    if _NOT_READ_BY_MX_LOAD.isdisjoint(dtypes.values()):
        loaded = mx.load(file, format="safetensors")
        assert isinstance(loaded, dict)
        arrays = loaded
    else:
        with open(file, "rb") as f:
            content = f.read()
        arrays = {}
        for name, info in safetensors.deserialize(content):
            mx_dtype = SAFETENSORS_DTYPES[info["dtype"]][1]
            assert mx_dtype is not None  # check_header refused the others
            arrays[name] = _from_bytes(info["data"], mx_dtype, info["shape"])
    for name, arr in arrays.items():
        if arr.dtype == mx.bool_:
            # A stored byte other than 0/1 is not a valid bool: normalise rather than keep it.
            arrays[name] = arr.view(mx.uint8) != 0
    mx.eval(list(arrays.values()))
    return arrays


def _read_one(file: str, problems: Problems) -> dict[str, mx.array]:
    """Read one file; on any problem, add it and return nothing."""
    try:
        before = os.stat(file)
        try:
            with safetensors.safe_open(file, framework="numpy"):
                refusal = None
        except safetensors.SafetensorError as exc:
            refusal = str(exc)
        header = check_header(file)
    except OSError as exc:
        problems.add(f"{file}: cannot read ({exc.strerror or exc}).")
        return {}
    if refusal is not None or header.problems:
        # check_header explains a refusal entry by entry; when it has nothing to add, the
        # library's own verdict is the problem.
        problems.lines.extend(
            header.problems or [f"{file}: refused by the safetensors library: {refusal}."]
        )
        return {}
    try:
        arrays = _read_tensors(file, header.dtypes)
        after = os.stat(file)
    except (OSError, RuntimeError, ValueError) as exc:
        problems.add(f"{file}: cannot read its tensors ({exc}).")
        return {}
    if _file_identity(after) != _file_identity(before) or arrays.keys() != header.dtypes.keys():
        problems.add(f"{file}: the file changed while it was being read.")
        return {}
    return arrays


def as_path_list(paths: PathLike | Sequence[PathLike], where: str) -> list[str]:
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


def read_files(files: Sequence[str], where: str) -> tuple[dict[str, mx.array], dict[str, str]]:
    """Read several files into one mapping; return it and ``key -> file`` it came from.

    Every file is read even after an earlier one failed, so one error reports all of them.
    """
    problems = Problems()
    arrays: dict[str, mx.array] = {}
    sources: dict[str, str] = {}
    for file in files:
        for key, arr in _read_one(file, problems).items():
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

    Each file is validated before any tensor byte is read: by the ``safetensors`` library
    (header length within the file, UTF-8 JSON, known dtypes, ``data_offsets`` exactly
    ``prod(shape) * itemsize`` bytes long, no overlap, the data section exactly covered)
    and by the project's rules (no repeated name in a header, a dtype MLX can hold: see
    :mod:`mlx_impl.loading.header_check` for how each maps to MLX). Across files a name may
    appear only once. ``mx.load`` then reads the tensors into memory; no pickle is ever used.

    Args:
        paths: a path, or a sequence of paths (for example the shards of one checkpoint).

    Returns:
        ``{name: array}`` with every tensor of every file, in the dtypes and shapes stored,
        already evaluated.

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
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = os.path.join(folder, "w.safetensors")
        ...     save_safetensors(path, {"w": mx.array([[1.0, 2.0]], dtype=mx.bfloat16)})
        ...     load_safetensors(path)["w"]
        array([[1, 2]], dtype=bfloat16)
    """
    files = as_path_list(paths, "load_safetensors")
    arrays, _ = read_files(files, "load_safetensors")
    return arrays


# ---------------------------------------------------------------------------------------
# Writing
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


def _tensor_specs(
    arrays: Mapping[str, mx.array],
) -> tuple[dict[str, safetensors.TensorSpec], list[Any]]:
    """The library's description of each array (dtype, shape, address of its row-major
    bytes), and the buffers that must stay alive until the file is written."""
    specs: dict[str, safetensors.TensorSpec] = {}
    alive: list[Any] = []
    for name, arr in arrays.items():
        # Row-major and materialised, viewed as bytes (any dtype, bfloat16 included).
        flat = mx.contiguous(arr).reshape(-1).view(mx.uint8)
        mx.eval(flat)
        # mx.array exports the buffer protocol (zero copy); its stubs do not say so.
        data = np.frombuffer(memoryview(typing.cast(Any, flat)), dtype=np.uint8)
        alive += [flat, data]
        specs[name] = safetensors.TensorSpec(
            dtype=_SPEC_DTYPE[arr.dtype],
            shape=list(arr.shape),
            data_ptr=data.ctypes.data if data.size else 0,
            data_len=data.size,
        )
    return specs, alive


def _write_file(
    specs: dict[str, safetensors.TensorSpec], file: str, metadata: dict[str, str] | None
) -> None:
    """Write the file with the library's serializer (a seam the atomicity test breaks)."""
    safetensors.serialize_file(specs, file, metadata)


def _fsync_directory(directory: str) -> None:
    """Persist a rename; not every platform lets a directory be opened and synced."""
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def save_safetensors(
    path: PathLike,
    arrays: Mapping[str, mx.array],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``arrays`` to ``path`` in the safetensors format, atomically.

    The ``safetensors`` library writes a temporary file in the same directory, which is
    fsynced, then moved over ``path`` with :func:`os.replace`; a reader sees the old file
    or the complete new one, never a partial one. The file gets the mode a plain
    ``open()`` would give it (``0o666`` less the umask). The header is padded with spaces
    to a multiple of 8 bytes, as the format recommends; tensors are laid out in the
    library's order. ``uint8`` arrays are written as ``U8`` (float8 codes loaded as
    ``uint8`` are not relabelled). Readable by :func:`load_safetensors`, ``mx.load`` (all
    dtypes but float64, which it does not read) and the ``safetensors`` package.

    Args:
        path: destination file.
        arrays: ``{name: mx.array}``; names must be strings other than ``__metadata__``.
        metadata: optional ``{str: str}`` stored under ``__metadata__``.

    Shape:
        Any; stored as given, row-major (0-d arrays keep shape ``[]``).

    Raises:
        TypeError: a non-string name or metadata entry, a non-array value.
        ValueError: a dtype the format cannot store, the reserved name ``__metadata__``.
        OSError: the file could not be written (the destination is left untouched).

    Example:
        >>> import os, tempfile
        >>> import mlx.core as mx
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = os.path.join(folder, "w.safetensors")
        ...     save_safetensors(path, {"b": mx.array([1, 2], dtype=mx.uint32)}, {"format": "mlx"})
        ...     load_safetensors(path)["b"].tolist()
        [1, 2]
    """
    where = "save_safetensors"
    if not isinstance(arrays, Mapping):
        raise type_error(where, f"arrays must be a mapping but got {type(arrays).__name__}.")
    for name, arr in arrays.items():
        if not isinstance(name, str):
            raise type_error(where, f"tensor names must be str but got {name!r}.")
        if name == METADATA_KEY:
            raise value_error(where, f"{METADATA_KEY!r} is reserved for metadata.")
        if not isinstance(arr, mx.array):
            raise type_error(where, f"{name!r} must be an mx.array but got {type(arr).__name__}.")
        if arr.dtype not in _SPEC_DTYPE:
            raise value_error(
                where, f"{name!r} has dtype {dtype_name(arr.dtype)}, which safetensors cannot store."
            )
    meta: dict[str, str] | None = None
    if metadata is not None:
        if not isinstance(metadata, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise type_error(where, f"metadata must map str to str but got {metadata!r}.")
        meta = dict(metadata)
    specs, alive = _tensor_specs(arrays)

    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=directory)
    try:
        os.close(fd)
        _write_file(specs, tmp, meta)
        # The file is 0600 (mkstemp's, or the library's own when it replaces the file it
        # was given); give it the mode a plain open() would have.
        os.chmod(tmp, 0o666 & ~_process_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        del alive  # the arrays' memory was needed until serialize_file returned
    _fsync_directory(directory)
