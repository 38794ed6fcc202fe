"""Explain a safetensors header, one line per problem; and the project's own two header rules.

The ``safetensors`` package decides whether a file is well formed
(:mod:`mlx_impl.loading.safetensors_io` opens every file with it before MLX reads a byte),
but it stops at the first problem and names it tersely ("invalid offset for tensor `y`").
The project's :class:`~mlx_impl.loading.errors.WeightLoadError` lists every problem at once,
so when the library refuses a file, :func:`check_header` says what is wrong with each
entry: it reads the 8-byte length and the JSON header (never a tensor byte) and checks them
against the format's rules. It never accepts a file on its own: a file the library refuses
is refused even when this module finds nothing to add (the library's own message is then
the problem line).

Two rules are the project's own, checked on every file, also on those the library accepts:

* a tensor name may appear only once in a header (JSON parsers keep the last of repeated
  keys silently; the library does too, so which tensor is meant would be a guess);
* every dtype must be one MLX can hold (see :data:`SAFETENSORS_DTYPES`).
"""

import itertools
import json
import math
import os
import struct
from dataclasses import dataclass
from typing import Any

import mlx.core as mx

__all__ = ["MAX_HEADER_BYTES", "METADATA_KEY", "SAFETENSORS_DTYPES", "HeaderCheck", "check_header"]

# name -> (bits per element, MLX dtype it loads as, or None when MLX cannot hold it).
# Measured against mx.load on mlx 0.32.4: F8_E4M3 and F8_E8M0 load as their raw uint8
# codes (MLX has no float8; mxfp8/nvfp4 scales are such codes); F8_E5M2, the FNUZ variants,
# F4 and the F6 types are rejected by mx.load ("[safetensor] unsupported dtype"), and so here.
# F64 is not read by mx.load but is by the library; safetensors_io reads it that way.
SAFETENSORS_DTYPES: dict[str, tuple[int, mx.Dtype | None]] = {
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
    "F8_E4M3": (8, mx.uint8),
    "F8_E8M0": (8, mx.uint8),
    "F8_E5M2": (8, None),
    "F8_E4M3FNUZ": (8, None),
    "F8_E5M2FNUZ": (8, None),
    "F6_E2M3": (6, None),
    "F6_E3M2": (6, None),
    "F4": (4, None),
}

# The safetensors specification caps the header at 100 MB (the library enforces the same).
MAX_HEADER_BYTES = 100 * 1024 * 1024
METADATA_KEY = "__metadata__"


@dataclass(frozen=True)
class HeaderCheck:
    """What :func:`check_header` found: problem lines and the dtype name of each tensor."""

    problems: list[str]
    dtypes: dict[str, str]


@dataclass(frozen=True)
class _Span:
    name: str
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


def _read_framing(file: str, size: int, problems: list[str]) -> bytes | None:
    """The header bytes, or ``None`` after adding why they cannot be had."""
    if size < 8:
        problems.append(f"{file}: file is {size} bytes, too short for the 8-byte header length.")
        return None
    with open(file, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > size - 8:
            problems.append(
                f"{file}: header length {header_len} runs past the end of the file "
                f"({size - 8} bytes follow the length field); not a safetensors file, "
                "or truncated."
            )
            return None
        if header_len < 2 or header_len > MAX_HEADER_BYTES:
            problems.append(
                f"{file}: header length {header_len} is outside [2, {MAX_HEADER_BYTES}]."
            )
            return None
        return f.read(header_len)


def _decode(file: str, header: bytes, problems: list[str]) -> dict[str, Any] | None:
    """The header as a JSON object, or ``None`` after adding why it is not one."""
    try:
        text = header.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.append(f"{file}: header is not valid UTF-8 ({exc.reason} at byte {exc.start}).")
        return None
    try:
        parsed = json.loads(
            text, object_pairs_hook=_reject_duplicate_keys, parse_constant=_reject_constant
        )
    except (ValueError, RecursionError) as exc:
        problems.append(f"{file}: header is not valid JSON ({exc}).")
        return None
    if not isinstance(parsed, dict):
        problems.append(f"{file}: header must be a JSON object but is a {type(parsed).__name__}.")
        return None
    return parsed


def _check_entry(where: str, info: Any, data_size: int, problems: list[str]) -> _Span | None:
    """One tensor entry; its byte span when it is valid on its own."""
    if not isinstance(info, dict):
        problems.append(f"{where}: entry must be an object but is {type(info).__name__}.")
        return None
    absent = [k for k in ("dtype", "shape", "data_offsets") if k not in info]
    if absent:
        problems.append(f"{where}: entry lacks {', '.join(absent)}.")
        return None
    dtype_name, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    ok = True
    bits: int | None = None
    if not isinstance(dtype_name, str) or dtype_name not in SAFETENSORS_DTYPES:
        known = ", ".join(SAFETENSORS_DTYPES)
        problems.append(f"{where}: unknown dtype {dtype_name!r}; known: {known}.")
        ok = False
    else:
        bits, mx_dtype = SAFETENSORS_DTYPES[dtype_name]
        if mx_dtype is None:
            problems.append(f"{where}: dtype {dtype_name} has no MLX equivalent.")
            ok = False
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        problems.append(f"{where}: shape must be a list of non-negative integers but is {shape!r}.")
        ok = False
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        problems.append(
            f"{where}: data_offsets must be [begin, end] with 0 <= begin <= end but is {offsets!r}."
        )
        ok = False
    elif offsets[1] > data_size:
        problems.append(
            f"{where}: data_offsets {offsets} run past the end of the data section "
            f"({data_size} bytes); the file may be truncated."
        )
        ok = False
    if not ok or bits is None:
        return None
    expected_bits = math.prod(shape) * bits
    length = offsets[1] - offsets[0]
    if expected_bits != length * 8:
        problems.append(
            f"{where}: shape {shape} of {dtype_name} needs {expected_bits / 8:g} bytes but "
            f"data_offsets {offsets} span {length}."
        )
        return None
    return _Span(where, offsets[0], offsets[1])


def _check_layout(
    file: str, spans: list[_Span], data_size: int, problems: list[str], *, coverage: bool
) -> None:
    """No two tensors overlap; with ``coverage``, they also cover the data section exactly
    (the format's rule: no byte belongs to no tensor, which the library enforces)."""
    ordered = sorted((s for s in spans if s.end > s.begin), key=lambda s: (s.begin, s.end))
    found_before = len(problems)
    for prev, cur in itertools.pairwise(ordered):
        if cur.begin < prev.end:
            problems.append(
                f"{file}: tensors {prev.name} [{prev.begin}, {prev.end}) and "
                f"{cur.name} [{cur.begin}, {cur.end}) overlap."
            )
    if len(problems) != found_before or not coverage:
        return
    position = 0
    for span in ordered:
        if span.begin > position:
            problems.append(
                f"{file}: bytes [{position}, {span.begin}) of the data section belong to no "
                f"tensor (before {span.name})."
            )
        position = max(position, span.end)
    if position < data_size:
        problems.append(
            f"{file}: the data section has {data_size - position} bytes after the last tensor "
            "that belong to no tensor."
        )


def check_header(file: str) -> HeaderCheck:
    """Check a file's 8-byte length and JSON header against the format and the project's rules.

    Reads no tensor data. Used to explain, entry by entry, why the ``safetensors`` library
    refused a file, and to apply the project's own rules (repeated names, dtypes MLX cannot
    hold) to every file.

    Args:
        file: path of a ``.safetensors`` file.

    Returns:
        :class:`HeaderCheck`: one line per problem (each starting with ``file``), and
        ``{tensor name: safetensors dtype name}`` of the entries read.

    Raises:
        OSError: the file cannot be read.
    """
    problems: list[str] = []
    size = os.stat(file).st_size
    header = _read_framing(file, size, problems)
    if header is None:
        return HeaderCheck(problems, {})
    parsed = _decode(file, header, problems)
    if parsed is None:
        return HeaderCheck(problems, {})
    raw_meta = parsed.pop(METADATA_KEY, None)
    if raw_meta is not None and (
        not isinstance(raw_meta, dict) or not all(isinstance(v, str) for v in raw_meta.values())
    ):
        problems.append(f"{file}: {METADATA_KEY} must map strings to strings.")
    data_size = size - 8 - len(header)
    spans: list[_Span] = []
    dtypes: dict[str, str] = {}
    for name, info in parsed.items():
        span = _check_entry(f"{file}: tensor {name!r}", info, data_size, problems)
        if span is not None:
            spans.append(_Span(repr(name), span.begin, span.end))
            dtypes[name] = info["dtype"]
    # Coverage is checked only for an otherwise sound header: with invalid entries, which
    # bytes would they own? Overlaps among the valid entries are certain either way.
    _check_layout(file, spans, data_size, problems, coverage=not problems)
    return HeaderCheck(problems, dtypes)
