"""A quantized checkpoint laid out as mlx-lm itself lays it out, and transformers-layout
dense copies carrying exactly the values mlx-lm computes with.

mlx-lm decides what it quantizes after its ``sanitize`` (experts stacked into
``switch_mlp``, DeepSeek's ``kv_b_proj`` split, Falcon-H1's multipliers folded in) with
its own predicate (``quantize_model``: a module with ``to_quantized`` whose input width is
a multiple of the group, then the model's ``quant_predicate``: MoE routers kept dense or at
8 bits, Granite's o_proj / down_proj / lm_head at 8 bits). No per-tensor rule on
transformers' names can reproduce that, so for the mlx-lm candidate:

* :func:`quantize_with_mlx_lm` runs mlx-lm's own conversion (``mlx_lm.convert``'s steps:
  ``load_model`` (sanitize), the dtype cast, ``quantize_model`` with the model's predicate,
  ``save_model`` / ``save_config``) on the dense checkpoint ``derive`` wrote;
* :func:`trace_sources` finds where every element of each quantized mlx-lm weight came
  from in the transformers checkpoint: mlx-lm's ``sanitize`` is run on arrays holding each
  element's own index (float64: exact to 2^53) and on ones (the factor it multiplies by);
* :func:`reference_copy` writes the dense transformers checkpoint the oracle (float64:
  the exact value ``q * scale + bias`` of every code) or the peer (the codes dequantized
  in the activation dtype with MLX's rounding points) loads: the dense weights, with every
  element mlx-lm quantized replaced by its dequantized value, at its transformers place.
  Before anything is written the placement is proved: mlx-lm's ``sanitize`` of the
  placed values gives back mlx-lm's dequantized weights bit for bit
  (:func:`check_placement`), so the oracle sees what the candidate computes with.

Why not hand mlx-lm a "fake-quantized" dense checkpoint (weights already on the grid) and
let it quantize again: re-quantizing on-grid bfloat16 weights is not bit-exact (measured
on a [4096, 256] bfloat16 weight, affine 4-bit, group 64: 85% of the group scales and 87%
of the dequantized values come back; ``scale = (max - min) / 15`` is recomputed from the
rounded extremes). So mlx-lm quantizes the test-dtype weights itself, as its converter
does, and the oracle takes the values of mlx-lm's own codes.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conformance.model.checkpoints import QUANT_MODES

_TORCH = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dense_tensors(dense: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(dense.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return tensors


def quantize_with_mlx_lm(dense: Path, out: Path, quant: str) -> Path:
    """mlx-lm's own quantized conversion of the dense transformers checkpoint ``dense``
    (``derive(..., quant=None)``: weights rounded to the test dtype) into ``out``, as
    ``mlx_lm.convert --quantize`` writes it (its sanitized parameter names, its per-layer
    overrides in ``config.json``'s ``quantization``).

    Args:
        dense: a dense Hugging Face-layout checkpoint mlx-lm can load.
        out: directory to (re)create.
        quant: a key of :data:`conformance.model.checkpoints.QUANT_MODES`.

    Returns: ``out``. Raises ValueError for an unknown ``quant``; mlx-lm's own errors
    (it cannot load ``dense``) pass through.
    """
    if quant not in QUANT_MODES:
        raise ValueError(f"[mlx-lm layout] quant must be one of {tuple(QUANT_MODES)} but got {quant!r}.")
    import mlx.core as mx
    from mlx.utils import tree_map_with_path
    from mlx_lm.utils import load_model, quantize_model, save_config, save_model

    group_size, bits, mode = QUANT_MODES[quant]
    model, config = load_model(Path(dense), lazy=True)
    dtype = config.get("torch_dtype") or config.get("dtype")
    if dtype in ("float16", "bfloat16", "float32"):
        # convert's cast (a no-op on derive's output, every tensor already in dtype, but
        # a model's cast_predicate is honoured as convert honours it).
        target = getattr(mx, dtype)
        keep = getattr(model, "cast_predicate", lambda _: True)
        model.update(tree_map_with_path(
            lambda k, v: v.astype(target) if keep(k) and mx.issubdtype(v.dtype, mx.floating) else v,
            model.parameters()))
    with contextlib.redirect_stdout(io.StringIO()):  # quantize_model prints bits per weight
        model, qconfig = quantize_model(model, config, group_size, bits, mode=mode)
    if out.exists():
        shutil.rmtree(out)
    save_model(out, model)
    save_config(qconfig, out / "config.json")
    return out


@dataclass(frozen=True)
class QuantizedWeight:
    """One weight mlx-lm quantized: its module ``path``, its own ``group_size``, ``bits``
    and ``mode``."""

    path: str
    group_size: int
    bits: int
    mode: str


def quantized_weights(mlx_ck: Path) -> list[QuantizedWeight]:
    """Every quantized weight of mlx-lm's checkpoint ``mlx_ck`` (a ``.scales`` beside a
    ``.weight``), with the group size, bits and mode ``config.json`` gives its path."""
    from safetensors import safe_open

    config = json.loads((mlx_ck / "config.json").read_text(encoding="utf-8"))
    q = config["quantization"]
    names: set[str] = set()
    for f in sorted(mlx_ck.glob("*.safetensors")):
        with safe_open(str(f), "np") as h:
            names.update(h.keys())
    out = []
    for name in sorted(names):
        if name.endswith(".scales") and name.removesuffix(".scales") + ".weight" in names:
            path = name.removesuffix(".scales")
            own = q.get(path) if isinstance(q.get(path), dict) else {}
            out.append(QuantizedWeight(path, int(own.get("group_size", q["group_size"])),
                                       int(own.get("bits", q["bits"])), str(own.get("mode", q.get("mode", "affine")))))
    return out


class Sources:
    """Where each element of mlx-lm's sanitized weights comes from in the transformers
    checkpoint: ``locate(key) -> (names, flat)``: for every element of the sanitized
    ``key`` (C order), the index into ``names`` of its transformers tensor and its flat
    index there. Built by :func:`trace_sources`."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], ids: dict[str, Any], factors: dict[str, Any]) -> None:
        self.names = sorted(shapes)
        sizes = [int(np.prod(shapes[n])) for n in self.names]
        self.offsets = np.cumsum([0, *sizes])
        self._ids, self._factors = ids, factors

    def locate(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(tensor index [n], flat index [n])`` for the ``n`` elements of sanitized ``key``.

        Raises ValueError where mlx-lm's sanitize does more than move, stack, split or
        concatenate elements (an element that is not one source element times 1)."""
        if key not in self._ids:
            raise ValueError(f"[mlx-lm layout] mlx-lm's sanitize produces no {key!r} from the transformers "
                             "checkpoint; its quantized value cannot be placed in transformers' layout.")
        ids = np.asarray(self._ids[key]).reshape(-1)
        factor = np.asarray(self._factors[key]).reshape(-1)
        if not np.all(factor == 1.0) or not np.all(ids == np.round(ids)):
            raise ValueError(f"[mlx-lm layout] mlx-lm's sanitize computes {key!r} (scales or mixes its source "
                             "elements, e.g. folds in a multiplier); no transformers weight holds its quantized "
                             "values exactly.")
        flat_all = ids.astype(np.int64) - 1  # ids start at 1 so that a created zero is no element
        if flat_all.min() < 0 or flat_all.max() >= self.offsets[-1]:
            raise ValueError(f"[mlx-lm layout] {key!r} holds elements that come from no transformers tensor.")
        tensor = np.searchsorted(self.offsets, flat_all, side="right") - 1
        return tensor, flat_all - self.offsets[tensor]


def fresh_model(dense: Path) -> Any:
    """A new mlx-lm model for ``dense``'s ``config.json``, its weights not loaded: some
    models' ``sanitize`` changes the model itself (Gemma 3 pops its untied ``lm_head``), so
    each sanitize call gets its own instance."""
    from mlx_lm.utils import _get_classes, load_config

    config = load_config(Path(dense))
    model_class, args_class = _get_classes(config=config)
    return model_class(args_class.from_dict(config))


def trace_sources(dense: Path, model: Any = None) -> Sources:
    """Run ``model.sanitize`` (an mlx-lm model built for ``dense``'s config, by default
    :func:`fresh_model`; each call gets a fresh one unless ``model`` is given) on arrays
    whose every element is its own global index + 1, and on ones, both float64 (an index is
    exact up to 2^53; a factor sanitize multiplies by shows in the ones' trace). Lazy: an
    array is computed only when :meth:`Sources.locate` asks for it."""
    import mlx.core as mx
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for f in sorted(dense.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            for name in h.keys():  # noqa: SIM118 (safe_open is not a Mapping)
                shapes[name] = tuple(h.get_slice(name).get_shape())
    names = sorted(shapes)
    offsets = np.cumsum([0, *(int(np.prod(shapes[n])) for n in names)])
    with mx.stream(mx.cpu):  # float64 lives on the CPU only
        ids = {n: (mx.arange(int(offsets[i + 1] - offsets[i]), dtype=mx.float64) + float(offsets[i] + 1))
               .reshape(shapes[n]) for i, n in enumerate(names)}
        ones = {n: mx.ones(shapes[n], dtype=mx.float64) for n in names}
        def sanitize(weights: dict[str, Any]) -> dict[str, Any]:
            m = fresh_model(dense) if model is None else model
            return dict(m.sanitize(weights)) if hasattr(m, "sanitize") else weights

        traced, factors = sanitize(ids), sanitize(ones)
    return Sources(shapes, traced, factors)


def _mlx_tensors(mlx_ck: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(mlx_ck.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return tensors


def _placements(dense: Path, mlx_ck: Path) -> Iterator[tuple[QuantizedWeight, np.ndarray, np.ndarray, dict[str, torch.Tensor], list[str]]]:
    """Per quantized weight: (its description, source tensor index, source flat index,
    mlx-lm's tensors, the transformers names)."""
    sources = trace_sources(dense)
    tensors = _mlx_tensors(mlx_ck)
    for qw in quantized_weights(mlx_ck):
        tensor, flat = sources.locate(f"{qw.path}.weight")
        yield qw, tensor, flat, tensors, sources.names


def _dequantized(qw: QuantizedWeight, tensors: dict[str, torch.Tensor], precision: str,
                 act: torch.dtype) -> torch.Tensor:
    from torch_reference.quantization import dequantize

    return dequantize(tensors[f"{qw.path}.weight"], tensors[f"{qw.path}.scales"],
                      tensors.get(f"{qw.path}.biases"), group_size=qw.group_size, bits=qw.bits, mode=qw.mode,
                      dtype=None if precision == "float64" else act, precision=precision,
                      global_scale=tensors.get(f"{qw.path}.global_scale"))


def place(dense: Path, mlx_ck: Path, precision: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The transformers tensors of ``dense`` with every element mlx-lm quantized in
    ``mlx_ck`` replaced by its dequantized value (``precision`` ``"float64"``: exact, every
    floating tensor float64; ``"native"``: in the activation dtype with MLX's rounding
    points, every floating tensor in it), and the transformers names that received any.

    Raises ValueError where an element's source cannot be found, or one transformers
    element would receive two different values."""
    if precision not in ("float64", "native"):
        raise ValueError(f"[mlx-lm layout] precision must be 'float64' or 'native' but got {precision!r}.")
    config = json.loads((mlx_ck / "config.json").read_text(encoding="utf-8"))
    act = _TORCH[str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")]
    target = torch.float64 if precision == "float64" else act
    out = {k: (v.to(target) if v.is_floating_point() else v) for k, v in _dense_tensors(dense).items()}
    written: dict[str, np.ndarray] = {}
    touched: set[str] = set()
    for qw, tensor, flat, tensors, names in _placements(dense, mlx_ck):
        values = _dequantized(qw, tensors, precision, act).to(target).reshape(-1)
        for t in np.unique(tensor):
            name = names[int(t)]
            sel = np.nonzero(tensor == t)[0]
            dest = out[name].reshape(-1)
            idx = torch.from_numpy(flat[sel])
            vals = values[torch.from_numpy(sel)]
            seen = written.setdefault(name, np.zeros(dest.numel(), dtype=bool))
            again = torch.from_numpy(seen[flat[sel]])
            if bool(again.any()) and not torch.equal(dest[idx][again], vals[again]):
                raise ValueError(f"[mlx-lm layout] elements of {name!r} feed two quantized mlx-lm weights with "
                                 f"different dequantized values ({qw.path} among them).")
            dest[idx] = vals
            seen[flat[sel]] = True
            touched.add(name)
    return out, sorted(touched)


def check_placement(dense: Path, mlx_ck: Path) -> int:
    """Prove the placement: mlx-lm's ``sanitize`` of the placed (float32 dequantized)
    transformers tensors gives, for every quantized weight, mlx-lm's own dequantized
    weight bit for bit. Returns the number of quantized weights checked.

    Raises ValueError naming the first weight that differs."""
    import mlx.core as mx

    config = json.loads((mlx_ck / "config.json").read_text(encoding="utf-8"))
    act = _TORCH[str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")]
    placed, _ = place(dense, mlx_ck, "native")
    model = fresh_model(dense)
    sanitize = getattr(model, "sanitize", lambda w: w)
    back = sanitize({k: mx.array(v.to(torch.float32).numpy()) if v.is_floating_point() else mx.array(v.numpy())
                     for k, v in placed.items()})
    tensors = _mlx_tensors(mlx_ck)
    checked = 0
    for qw in quantized_weights(mlx_ck):
        want = _dequantized(qw, tensors, "native", act).to(torch.float32).numpy()
        got = np.array(back[f"{qw.path}.weight"].astype(mx.float32))
        if got.shape != want.shape or not np.array_equal(got, want):
            raise ValueError(f"[mlx-lm layout] {qw.path}: mlx-lm's sanitize of the transformers-layout values "
                             "does not give back mlx-lm's dequantized weight; the oracle would see other values "
                             "than the candidate computes with.")
        checked += 1
    return checked


def reference_copy(dense: Path, mlx_ck: Path, out: Path, precision: str) -> Path:
    """A dense transformers checkpoint in ``out`` for the oracle (``precision="float64"``)
    or the peer (``"native"``): :func:`place`'s tensors, ``dense``'s ``config.json``
    (``dtype`` float64 for the oracle). Shape: every tensor as in ``dense``."""
    from safetensors.torch import save_file

    tensors, _ = place(dense, mlx_ck, precision)
    config = json.loads((dense / "config.json").read_text(encoding="utf-8"))
    if precision == "float64":
        config["dtype"] = config["torch_dtype"] = "float64"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return out


@dataclass(frozen=True)
class MlxLmQuantized:
    """mlx-lm's own quantized conversion (``converted``: what the candidate loads) of the
    dense transformers checkpoint ``dense`` (the test dtype; the oracle's and peer's
    copies are made from both by :func:`reference_copy`)."""

    dense: Path
    converted: Path


def prepare(checkpoint: Path, derived: Path, work: Path, dtype: str, quant: str, *, twin: bool) -> MlxLmQuantized:
    """Make the mlx-lm candidate's quantized checkpoint of ``checkpoint`` (``derive`` to
    ``dtype`` dense, then :func:`quantize_with_mlx_lm`) under ``work`` and prove the
    oracle's placement (:func:`check_placement`). ``twin``: the twin oracle reads
    ``derived`` (``derive``'s layout, transformers' names); then every value it holds must
    equal the placed mlx-lm values, or ValueError says which tensor differs.

    Raises CandidateLoadError when mlx-lm cannot load or quantize the dense checkpoint."""
    from conformance.model.checkpoints import derive
    from conformance.model.errors import CandidateLoadError

    dense = derive(checkpoint, work / f"{derived.name}-mlx-lm-source", dtype)
    try:
        converted = quantize_with_mlx_lm(dense, work / f"{derived.name}-mlx-lm", quant)
    except Exception as exc:  # mlx-lm failing on the checkpoint is the candidate's failure
        raise CandidateLoadError(f"[candidate] mlx-lm failed to load {dense.name} for its own {quant} conversion: "
                                 f"{type(exc).__name__}: {exc}") from exc
    check_placement(dense, converted)
    if twin:
        from conformance.model.hf_sides import dense_copy

        theirs = _dense_tensors(dense_copy(derived, work / f"{derived.name}-twin-check", "native"))
        ours, _ = place(dense, converted, "native")
        for name, t in ours.items():
            if name in theirs and not torch.equal(theirs[name].to(t.dtype), t):
                raise ValueError(f"[mlx-lm layout] {name}: derive's quantized layout (what the twin oracle reads) "
                                 "differs from mlx-lm's own conversion; the twin cannot judge mlx-lm here.")
    return MlxLmQuantized(dense, converted)
