"""How much memory a model configuration needs, checked before it starts.

The sides of a configuration run one after another, and each releases its weights before
the next loads (:func:`conformance.model.harness.run_config`), so the peak is the largest
PHASE, not the sum of the sides:

* derive: one tensor of the original at a time, rounded, into a shard of at most
  ``SHARD_BYTES`` (:func:`conformance.model.checkpoints.derive`);
* the oracle (the twin with every op in float64): the derived weights as stored, plus the
  float64 transient of what it widens per call: a matrix a block of at most
  ``FLOAT64_BLOCK_ELEMENTS`` (128 MiB in float64) at a time, an embedding only the rows
  it looks up, a stacked (3-D, experts) tensor whole; three of them for a quantized one
  (codes, scales and the dequantized product);
* the peer (the twin in the test dtype): the derived weights, plus a float32 copy of the
  largest matrix (half-precision products accumulate in float32), or for a quantized one
  the dequantization of a block of rows, as the oracle's;
* MLX, mlx-lm: the derived weights each, plus one transient of the largest matrix;
* transformers' float64 anchor, streamed (:mod:`conformance.model.streaming`): two
  float64 copies of the largest tensor.

On top: :data:`BASE_BYTES` (the interpreter with torch, MLX and transformers imported,
measured) and the outputs every side keeps (hidden states and logits of every step, in
float64). The estimate is deliberately simple; ``tests/test_model_memory.py`` holds it to
measured peaks.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

BASE_BYTES = 1_200_000_000
"""The process before any weights: Python with torch, MLX, transformers and mlx-lm
imported, their allocators and the harness (measured ~0.3 GB after imports, ~1 GB once
each library has run a model; rounded up)."""

_DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "F8_E4M3": 1, "F8_E5M2": 1}
_TEST_BYTES = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class CheckpointSize:
    """A checkpoint's floating tensors, read from the safetensors headers (no tensor data).

    ``params``: floating elements; ``stored_bytes``: their bytes on disk; ``largest``:
    elements of the largest floating tensor; ``quantized``: the checkpoint has ``.scales``;
    ``largest_stacked``: elements of the largest floating tensor of three or more dims
    (stacked experts, which the oracle widens whole)."""

    params: int
    stored_bytes: int
    largest: int
    quantized: bool
    largest_stacked: int = 0


def _header(path: Path) -> dict[str, dict[str, object]]:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header: dict[str, dict[str, object]] = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return header


def checkpoint_size(checkpoint: Path) -> CheckpointSize:
    """The sizes of ``checkpoint``'s ``*.safetensors`` (headers only).

    Raises:
        ValueError: no safetensors file.
    """
    files = sorted(Path(checkpoint).glob("*.safetensors"))
    if not files:
        raise ValueError(f"[memory] {checkpoint} has no *.safetensors file.")
    params = stored = largest = stacked = 0
    quantized = False
    for f in files:
        for name, info in _header(f).items():
            quantized |= name.endswith(".scales")
            n = 1
            for d in info["shape"]:  # type: ignore[attr-defined]
                n *= int(d)
            width = _DTYPE_BYTES.get(str(info["dtype"]))
            if width is None:  # packed codes (U32, U8): count their bytes, not elements
                offsets: list[int] = list(info["data_offsets"])  # type: ignore[call-overload]
                stored += int(offsets[1]) - int(offsets[0])
                continue
            params += n
            stored += n * width
            largest = max(largest, n)
            if len(info["shape"]) >= 3:  # type: ignore[arg-type]
                stacked = max(stacked, n)
    return CheckpointSize(params, stored, largest, quantized, stacked)


@dataclass(frozen=True)
class Estimate:
    """The estimated peak of one configuration: ``total`` bytes and each phase's share
    (the peak is the largest phase plus ``base`` and ``outputs``)."""

    total: int
    phases: dict[str, int] = field(default_factory=dict)
    base: int = BASE_BYTES
    outputs: int = 0

    def describe(self) -> str:
        """One line: the total and the phases in GB."""
        parts = ", ".join(f"{k} {v / 1e9:.2f}" for k, v in self.phases.items())
        return (f"{self.total / 1e9:.2f} GB (largest phase of: {parts}; plus process {self.base / 1e9:.2f}"
                f" and outputs {self.outputs / 1e9:.2f})")


def quantized_bytes(params: int, bits: int, group_size: int, scale_bytes: int, affine: bool) -> int:
    """Bytes of ``params`` weights quantized at ``bits`` with one scale (and for affine one
    bias) of ``scale_bytes`` per ``group_size`` weights."""
    per_group = scale_bytes * (2 if affine else 1)
    return params * bits // 8 + (params // group_size) * per_group


def estimate(original: CheckpointSize, config: dict[str, object], dtype: str, quant: str | None, *,
             steps: int, prompt_len: int, transformers_anchor: bool, mlx_lm_anchor: bool) -> Estimate:
    """The peak memory of one configuration of :func:`conformance.model.harness.run_config`.

    Args:
        original: the checkpoint's sizes (:func:`checkpoint_size`).
        config: its ``config.json``.
        dtype, quant: the configuration (``quant`` a key of ``QUANT_MODES`` or None).
        steps, prompt_len: the decode (outputs kept per step).
        transformers_anchor, mlx_lm_anchor: whether those anchors run.
    """
    from conformance.model.checkpoints import QUANT_MODES, SHARD_BYTES
    from torch_reference.nn.linear import FLOAT64_BLOCK_ELEMENTS

    width = _TEST_BYTES[dtype]
    if original.quantized or quant is None:
        derived = original.stored_bytes if original.quantized else original.params * width
    else:
        group_size, bits, mode = QUANT_MODES[quant]
        derived = quantized_bytes(original.params, bits, group_size, width, mode == "affine")
    big = original.largest
    # A matrix's rows the twin widens or dequantizes at once; the oracle widens a stacked tensor whole.
    block = min(big, FLOAT64_BLOCK_ELEMENTS)
    widened = max(block, original.largest_stacked)
    quantized = quant is not None or original.quantized
    phases = {
        # One stored tensor, its rounded copy and the shard being filled.
        "derive": SHARD_BYTES + big * (8 + width),
        # The weights as stored; each product widens (dequantizes: codes unpacked, scales
        # broadcast, the float64 product) a block of its matrix's rows to float64.
        "oracle": derived + widened * 8 * (3 if quantized else 1),
        "peer": derived + (block * 8 * 3 if quantized else big * 4),
        "MLX": derived + big * width,
    }
    if dtype == "float64":
        phases["probe"] = original.params * 4 + big * 4
    if transformers_anchor:
        phases["transformers float64 (streamed)"] = 2 * big * 8
    if mlx_lm_anchor:
        phases["mlx-lm"] = derived + big * width
    hidden = int(str(config.get("hidden_size", 0)) or 0)
    layers = int(str(config.get("num_hidden_layers", 0)) or 0)
    vocab = int(str(config.get("vocab_size", 0)) or 0)
    tokens = prompt_len + steps
    # Kept by each of up to 5 sides, float64: every step's hidden states and logits.
    outputs = 5 * tokens * ((layers + 1) * hidden + vocab) * 8
    return Estimate(BASE_BYTES + max(phases.values()) + outputs, phases, BASE_BYTES, outputs)


def available_bytes() -> int:
    """Memory this process may use now: ``MemAvailable`` on Linux, else physical memory."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far, and its finished children's."""
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale
    return int(max(own, children))
