"""Name the op, and the cause, where a model configuration leaves its bound.

After :func:`conformance.model.harness._judge_trace` finds a departure at (step s, point
p), :func:`attribute` replays steps ``0..s`` on MLX and the twin (the teacher-forced tokens,
the oracle's experts), recording every op of step s (``mlx_impl.models.points``, the same
names on both sides), and walks the ops of layers ``0..l`` (and the final norm and head
for a departure at the logits) in order. For each op:

1. **Wiring.** MLX's own inputs to the op must have the twin's shapes and the same
   discrete values (RoPE offset, mask, experts); a float input that leaves the model rule
   (:func:`conformance.model.bounds.check_point`) while every op output before it in the
   step was inside is a departure BETWEEN ops (a cache, a reshape, a mask): ``"port"``.
2. **The op on identical inputs.** The twin's captured inputs (already rounded to the
   dtype the model rounds them to: they are the twin's own tensors) go to three calls:
   the port's op (the ``mlx_impl.models`` module, e.g. ``layers[10].mlp.down_proj``), the
   twin's op in the test dtype, and the twin's op in float64. That is judged with the
   op's OWN registry record (its :class:`~conformance.tolerance.Tolerance`, magnitude and
   :func:`conformance.judge.judge`). Where a record covers the op, the record's call
   (``mlx_impl``'s public op, as the op-level suite runs it) is judged on the same
   inputs too.

The first op that fails is named (``departure["op"]``, e.g. ``"layer 10 mlp.down_proj"``)
with ``departure["cause"]``:

* ``"mlx-backend"``: the record's own call fails on these inputs: a matching
  :class:`~conformance.record.ExpectedDivergence` is named in ``cause_detail``; otherwise
  the inputs are written to ``capture_dir`` and ``departure["repro"]`` is the command that
  prints a standalone MLX + NumPy reproducer (``python -m conformance repro --inputs F``);
* ``"port"``: the record's call conforms (or no record covers the recipe) but the port's
  op, or the wiring between ops, does not: a bug of ``mlx_impl.models`` (or the twin) to fix;
* ``"bound"``: every op conforms on its inputs, but the composition leaves the model
  bound. ``cause_detail`` then names the ops whose MLX error on identical inputs exceeds
  the model rule's premise (MLX within 2x the twin at every op) while conforming to their
  own record (an accumulation allowance, an elementwise-versus-normwise difference), and
  the structure of the departing row (how much of its error sits in its few largest
  channels: :func:`conformance.model.bounds.participation`).

Every op's outcome is in ``departure["op_checks"]`` (name, record, the op's model-rule
ratio on identical inputs, whether record and port conform).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from conformance.model.bounds import check_point, participation
from conformance.tolerance import ROUNDED, Tolerance, for_case

Replay = Callable[[Any, str, dict[str, Any]], Any]


def _sig(value: float) -> float:
    return float(f"{value:.4g}")


# ---- where an op lives in each side's model -------------------------------------------------

def _owner(model: Any, op: str) -> tuple[Any, str]:
    """The layer (or the model) holding ``op`` and the op's name inside it."""
    if op.startswith("layer "):
        _, index, name = op.split(" ", 2)
        return model.layers[int(index)], name
    return model, op


def _attr(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


_KINDS = {
    "attn_residual": "add", "mlp_residual": "add", "mlp.act": "act", "mlp.experts": "experts",
    "self_attn.q_rope": "rope", "self_attn.k_rope": "rope", "self_attn.sdpa": "sdpa",
}


def op_kind(name: str) -> str:
    """``norm``, ``linear``, ``rope``, ``sdpa``, ``act``, ``add`` or ``experts`` for an op name
    (without its ``layer i`` prefix)."""
    if name in _KINDS:
        return _KINDS[name]
    if name.endswith("_proj") or name in ("lm_head", "mlp.router"):
        return "linear"
    if name.endswith("norm"):
        return "norm"
    raise ValueError(f"[attribution] unknown op {name!r}.")


def _mlx_replay(model: Any, op: str, inputs: dict[str, Any]) -> Any:
    """The port's op (``mlx_impl.models``) on ``inputs`` (MLX arrays)."""
    import mlx.core as mx

    from mlx_impl.fast import scaled_dot_product_attention

    owner, name = _owner(model, op)
    kind = op_kind(name)
    if kind in ("norm", "linear"):
        return _attr(owner, name)(inputs["x"])
    if kind == "rope":
        return owner.self_attn.rope(inputs["x"], inputs["offset"])
    if kind == "sdpa":
        attn = owner.self_attn
        return scaled_dot_product_attention(inputs["q"], inputs["k"], inputs["v"], scale=attn.args.attention_scale,
                                            mask=inputs["mask"], sinks=attn.sinks)
    if kind == "act":
        return owner.mlp.activate(inputs["gate"], inputs["up"])
    if kind == "add":
        return inputs["x"] + inputs["h"]
    return owner.mlp.combine(inputs["x"], inputs["logits"], inputs["experts"].astype(mx.uint32))


def _twin_replay(model: Any, op: str, inputs: dict[str, Any], precision: str) -> Any:
    """The twin's op on ``inputs`` (tensors) in ``precision`` (``native`` or ``float64``)."""
    import torch

    from torch_reference.fast import scaled_dot_product_attention

    owner, name = _owner(model, op)
    kind = op_kind(name)
    wide = precision == "float64"

    def w(t: Any) -> Any:
        return t.to(torch.float64) if wide and isinstance(t, torch.Tensor) and t.is_floating_point() else t

    with torch.no_grad():
        if kind in ("norm", "linear"):
            return _attr(owner, name)(inputs["x"], precision=precision)
        if kind == "rope":
            return owner.self_attn.rope(inputs["x"], inputs["offset"], precision)
        if kind == "sdpa":
            attn = owner.self_attn
            return scaled_dot_product_attention(inputs["q"], inputs["k"], inputs["v"],
                                                scale=attn.args.attention_scale, mask=inputs["mask"],
                                                sinks=attn.sinks, precision=precision)
        if kind == "act":
            return owner.mlp.activate(w(inputs["gate"]), w(inputs["up"]))
        if kind == "add":
            return w(inputs["x"]) + w(inputs["h"])
        return owner.mlp.combine(w(inputs["x"]), inputs["logits"], inputs["experts"], precision)


# ---- the op's registry record ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RecordCase:
    """The registry record an op is an instance of, and the op's case in that record's terms.
    ``exact_call``: the record's call IS the port's op (judging one judges the other)."""

    record: str
    arrays: dict[str, np.ndarray]
    params: dict[str, Any]
    exact_call: bool


def record_case(mlx_model: Any, op: str, inputs: dict[str, np.ndarray], scalars: dict[str, Any]) -> RecordCase | None:
    """The record covering ``op`` with its arrays (NumPy, exact) from the port's module and
    the captured ``inputs``; None where no record computes the port's recipe (a float32
    weighted norm of half inputs, Llama 3 / YaRN frequencies, attention sinks, the experts,
    the gated product, the residual add)."""
    from conformance.dtypes import mlx_to_numpy
    from mlx_impl import nn

    owner, name = _owner(mlx_model, op)
    kind = op_kind(name)
    if kind == "linear":
        layer = _attr(owner, name)
        if isinstance(layer, nn.QuantizedLinear):
            arrays = {"x": inputs["x"], "wq": mlx_to_numpy(layer.weight), "scales": mlx_to_numpy(layer.scales)}
            if layer.biases is not None:
                arrays["qbiases"] = mlx_to_numpy(layer.biases)
            if layer.bias is not None:
                arrays["bias"] = mlx_to_numpy(layer.bias)
            params = {"group_size": layer.group_size, "bits": layer.bits, "mode": layer.mode, "via": "constructor"}
            return RecordCase("nn.quantized_linear", arrays, params, True)
        if isinstance(layer, nn.Linear):
            arrays = {"x": inputs["x"], "weight": mlx_to_numpy(layer.weight)}
            if layer.bias is not None:
                arrays["bias"] = mlx_to_numpy(layer.bias)
            return RecordCase("nn.linear", arrays, {}, True)
        return None
    if kind == "norm":
        layer = _attr(owner, name)
        if isinstance(layer, nn.RMSNorm):
            return RecordCase("nn.rms_norm", {"x": inputs["x"], "weight": mlx_to_numpy(layer.weight)},
                              {"stored_eps": float(layer.eps), "eps": 0.0}, True)
        return None
    if kind == "rope":
        spec = owner.self_attn.rope.spec
        if spec.rope_type in ("llama3", "yarn") or spec.attention_factor != 1.0:
            return None
        return RecordCase("fast.rope", {"x": inputs["x"]},
                          {"dims": spec.dims, "base": spec.theta, "scale": spec.position_scale,
                           "offset": int(scalars["offset"]), "form": "function",
                           "mode": "interleaved" if spec.traditional else "rotate_half"}, False)
    if kind == "sdpa":
        if owner.self_attn.sinks is not None:
            return None
        arrays = {k: inputs[k] for k in ("q", "k", "v")}
        sdpa_params: dict[str, Any] = {"scale": owner.self_attn.args.attention_scale}
        if "mask" in inputs:
            arrays["mask"] = inputs["mask"]
        else:
            sdpa_params["mask"] = scalars.get("mask")
        return RecordCase("fast.scaled_dot_product_attention", arrays, sdpa_params, False)
    return None


def _fallback_tolerance(kind: str) -> tuple[str | None, Tolerance | None]:
    """For an op no record computes: the record whose tolerance states its numerics (the
    weighted norm: fast.rms_norm's; scaled RoPE: fast.rope's), ROUNDED for the elementwise
    gated product and add, None (the model rule) for the experts' composite."""
    if kind == "norm":
        return "fast.rms_norm", None
    if kind == "rope":
        return "fast.rope", None
    if kind in ("act", "add"):
        return None, ROUNDED
    return None, None


def _fallback_params(mlx_model: Any, op: str, arrays: dict[str, np.ndarray], scalars: dict[str, Any],
                     fallback: str | None) -> dict[str, Any]:
    """The fallback record's params (and its weight array, added to ``arrays``) for its magnitude."""
    from conformance.dtypes import mlx_to_numpy

    owner, name = _owner(mlx_model, op)
    if fallback == "fast.rms_norm":
        layer = _attr(owner, name)
        inner = getattr(layer, "norm", layer)  # Float32RMSNorm wraps an nn.RMSNorm of (shift + w)
        arrays["weight"] = mlx_to_numpy(inner.weight)
        return {"eps": float(inner.eps)}
    if fallback == "fast.rope":
        spec = owner.self_attn.rope.spec
        # The magnitude's angles from the unscaled base: an upper bound of scaled frequencies.
        return {"dims": spec.dims, "base": spec.theta, "scale": 1.0, "offset": int(scalars["offset"]),
                "mode": "interleaved" if spec.traditional else "rotate_half"}
    return {}


# ---- conversions ---------------------------------------------------------------------------

def _split_inputs(inputs: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The twin's captured inputs as exact NumPy arrays (tensors) and plain values (offset,
    a mask given as a string or None)."""
    import torch

    from conformance.dtypes import torch_to_numpy

    arrays, scalars = {}, {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor):
            arrays[k] = torch_to_numpy(v)
        else:
            scalars[k] = v
    return arrays, scalars


def _tensor_dtypes(inputs: dict[str, Any]) -> dict[str, str]:
    from conformance.dtypes import dtype_name

    return {k: dtype_name(v) for k, v in inputs.items() if hasattr(v, "dtype")}


def _to_mlx_inputs(arrays: dict[str, np.ndarray], scalars: dict[str, Any], dtypes: dict[str, str]) -> dict[str, Any]:
    from conformance.dtypes import MODEL_FORMATS, to_mlx

    out: dict[str, Any] = dict(scalars)
    for k, v in arrays.items():
        dt = dtypes[k]
        out[k] = to_mlx(v, dt if dt in MODEL_FORMATS else None)
    return out


def _np(a: Any) -> np.ndarray:
    import torch

    from conformance.dtypes import mlx_to_numpy, torch_to_numpy

    if isinstance(a, torch.Tensor):
        return torch_to_numpy(a).astype(np.float64)
    return mlx_to_numpy(a).astype(np.float64)


# ---- one op --------------------------------------------------------------------------------

@dataclasses.dataclass
class OpCheck:
    """One op's outcome on the twin's inputs. ``ratio``: MLX's (the port's) row error over
    the model rule ``2 ||twin - oracle|| + 2 ulp sqrt(D)`` (> 1: the op alone breaks the
    premise of the model bound). ``record_ok`` None: no record computes this recipe."""

    op: str
    record: str | None
    port_ok: bool
    record_ok: bool | None
    ratio: float
    message: str = ""
    divergence: str | None = None
    wiring: str | None = None
    case: RecordCase | None = None
    norm_ratio: float = 1.0
    """``||MLX - float64|| / ||twin - float64||`` over the whole output (Frobenius): how many
    times the twin's local error MLX's op makes on the same inputs."""
    half_accumulation: bool = False
    """The record's tolerance admits MLX's half-precision accumulation on this back end
    (``accumulates_in_input_dtype``: the x86 CPU quantized matmul in float16/bfloat16)."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, short."""
        out: dict[str, Any] = {"op": self.op, "record": self.record, "port_ok": self.port_ok,
                               "record_ok": self.record_ok, "ratio": _sig(self.ratio),
                               "norm_ratio": _sig(self.norm_ratio)}
        if self.wiring:
            out["wiring"] = self.wiring
        if self.half_accumulation:
            out["half_accumulation"] = True
        return out


def _judge_op(record_name: str | None, tolerance: Tolerance | None, arrays: dict[str, np.ndarray],
              params: dict[str, Any], m: np.ndarray, t: np.ndarray, o: np.ndarray, dtype: str) -> tuple[bool, str]:
    """``m`` (MLX) against ``o`` with ``t`` as the peer, under the record's tolerance (or
    ``tolerance``; neither: the model rule)."""
    from conformance.dtypes import FORMATS
    from conformance.execute import backend_name
    from conformance.judge import judge
    from conformance.registry import REGISTRY

    if dtype not in FORMATS or (record_name is None and tolerance is None):
        # Float64 has no op-level cell (MLX's fast kernels round to float32 inside: bounds.py),
        # and a composite with no record: the model rule, float32's floor for float64.
        check = check_point(m, t, o, dtype if dtype in FORMATS else "float32")
        return check.passed, check.message
    magnitude, terms = None, None
    if record_name is not None:
        record = REGISTRY[record_name]
        tol = for_case(record.tolerance(backend_name(), dtype), params)
        if tol.accumulation_terms is not None and record.magnitude is not None:
            wide = {k: v.astype(np.float64) if np.issubdtype(v.dtype, np.floating) else v for k, v in arrays.items()}
            try:
                magnitude = np.broadcast_to(record.magnitude(wide, params), o.shape)
                terms = tol.accumulation_terms(arrays, params)
            except (KeyError, ValueError):
                magnitude, terms = None, None
    else:
        assert tolerance is not None
        tol = tolerance
    verdict = judge(m, t, o, mlx_dtype=dtype, peer_dtype=dtype, tolerance=tol, magnitude=magnitude,
                    accumulation_terms=terms)
    return verdict.passed, _evidence(verdict)


def _evidence(verdict: Any) -> str:
    """One line: where the op is worst against its own bound, and by how much."""
    w = verdict.worst
    if verdict.passed or "bound" not in w:
        return _first_line(verdict.message)
    excess = abs(w["mlx"] - w["oracle"]) / max(w["bound"], 1e-300)
    return (f"worst at {w['index']}: MLX {w['mlx']:.7g}, twin {w['peer']:.7g}, float64 {w['oracle']:.7g}, "
            f"|MLX - float64| = {excess:.3g} x the op's own bound {w['bound']:.3g}")


def _run_record(case: RecordCase, dtype: str) -> tuple[bool, str, Any]:
    """The record's own call on MLX, the peer and the oracle (``conformance.execute.run_case``
    with the arrays as captured: no re-derivation of packed weights)."""
    from conformance.execute import run_case
    from conformance.record import Case
    from conformance.registry import REGISTRY

    record = dataclasses.replace(REGISTRY[case.record], derive=None)
    rc = Case(case.arrays, case.params, label="captured from a model")
    result = run_case(record, rc, dtype)
    if result.error:
        return False, result.error, rc
    failed = [v for v in result.verdicts if not v.passed]
    return not failed, _evidence(failed[0]) if failed else "conforms", rc


def _divergence(record_name: str, rc: Any, dtype: str) -> str | None:
    from conformance.execute import backend_name
    from conformance.registry import REGISTRY

    backend = backend_name()
    for d in REGISTRY[record_name].divergences:
        if backend in d.backends and d.applies(rc, dtype, backend):
            return d.name
    return None


def twin_replays(twin_model: Any, op: str, inputs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The twin's op on its own captured ``inputs``, in the test dtype and in float64 (the
    peer and the oracle of :func:`check_op`), as float64 NumPy arrays."""
    return (_np(_twin_replay(twin_model, op, inputs, "native")),
            _np(_twin_replay(twin_model, op, inputs, "float64")))


def check_op(mlx_model: Any, op: str, inputs: dict[str, Any], replays: tuple[np.ndarray, np.ndarray],
             dtype: str) -> OpCheck:
    """Replay ``op`` on the twin's captured ``inputs`` (tensors and plain values) on MLX
    (the port's op), and judge it against the twin's own ``replays`` of the op on the same
    inputs (:func:`twin_replays`: test dtype, float64; module docstring)."""
    arrays, scalars = _split_inputs(inputs)
    dtypes = _tensor_dtypes(inputs)
    try:
        m = _np(_mlx_replay(mlx_model, op, _to_mlx_inputs(arrays, scalars, dtypes)))
    except Exception as exc:  # the port's op refusing the twin's valid inputs is itself the finding
        return OpCheck(op, None, False, None, float("inf"), f"the port's op raised {type(exc).__name__}: {exc}")
    t, o = replays
    ratio = check_point(m, t, o, dtype if dtype != "float64" else "float32").ratio
    with np.errstate(invalid="ignore"):
        err_m, err_t = np.linalg.norm(np.nan_to_num(m - o)), np.linalg.norm(np.nan_to_num(t - o))
    norm_ratio = float(err_m / err_t) if err_t > 0 else (1.0 if err_m == 0 else float("inf"))
    _, name = _owner(mlx_model, op)
    case = None if dtype == "float64" else record_case(mlx_model, op, arrays, scalars)
    if case is not None:
        port_ok, message = _judge_op(case.record, None, case.arrays, case.params, m, t, o, dtype)
        record_ok, record_message, rc = _run_record(case, dtype)
        divergence = None if record_ok else _divergence(case.record, rc, dtype)
        return OpCheck(op, case.record, port_ok, record_ok, ratio,
                       message if record_ok else record_message, divergence, case=case,
                       norm_ratio=norm_ratio, half_accumulation=_half_accumulation(case, dtype))
    fallback, tol = _fallback_tolerance(op_kind(name))
    params = _fallback_params(mlx_model, op, arrays, scalars, fallback)
    port_ok, message = _judge_op(fallback, tol, arrays, params, m, t, o, dtype) if dtype != "float64" else \
        _judge_op(None, None, arrays, params, m, t, o, dtype)
    return OpCheck(op, None, port_ok, None, ratio, message, norm_ratio=norm_ratio)


def _half_accumulation(case: RecordCase, dtype: str) -> bool:
    from conformance.execute import backend_name
    from conformance.registry import REGISTRY

    tol = for_case(REGISTRY[case.record].tolerance(backend_name(), dtype), case.params)
    return bool(tol.accumulates_in_input_dtype)


# ---- wiring: MLX's own inputs against the twin's ---------------------------------------------

def wiring(mlx_inputs: dict[str, Any], twin_inputs: dict[str, Any], oracle_inputs: dict[str, Any] | None,
           dtype: str, clean: bool) -> str | None:
    """What is wrong with MLX's own inputs to an op, or None: a shape or discrete value
    (offset, mask, experts) differing from the twin's, or (``clean``: every op output
    before it was inside the model rule) a float input outside the model rule."""
    import torch

    for k, tv in twin_inputs.items():
        mv = mlx_inputs.get(k)
        if not isinstance(tv, torch.Tensor):
            if isinstance(mv, (str, int, float, type(None))) and mv != tv:
                return f"input {k}: MLX {mv!r}, twin {tv!r}"
            continue
        a, b = _np(mv), _np(tv)
        if a.shape != b.shape:
            return f"input {k}: MLX shape {a.shape}, twin {tuple(b.shape)}"
        if not tv.is_floating_point():
            if not np.array_equal(a, b):
                return f"input {k}: MLX's values differ from the twin's"
            continue
        if clean and oracle_inputs is not None and k in oracle_inputs:
            ratio = _frobenius_ratio(a, b, _np(oracle_inputs[k]), dtype)
            if ratio > 1.0:
                return (f"input {k} leaves the model rule in the Frobenius norm (ratio {ratio:.3g}) although every "
                        "op output before it conforms")
    return None


def _frobenius_ratio(side: np.ndarray, peer: np.ndarray, oracle: np.ndarray, dtype: str) -> float:
    """``||side - oracle||_F / (2 ||peer - oracle||_F + 2 ulp(max |oracle|) sqrt(N))``: the model
    rule over the whole tensor. Layout-free (a reshape or transpose of the producer's output
    keeps it), and implied by the producer's row-wise rule (triangle inequality over rows,
    each row's floor at most the tensor's), so an honest hand-over never exceeds 1."""
    from conformance.dtypes import FORMATS, MODEL_FORMATS

    fmt = MODEL_FORMATS[dtype] if dtype != "float64" else FORMATS["float32"]
    with np.errstate(invalid="ignore"):
        err_s = float(np.linalg.norm(np.nan_to_num(side - oracle)))
        err_p = float(np.linalg.norm(np.nan_to_num(peer - oracle)))
    top = float(np.abs(np.nan_to_num(oracle)).max()) if oracle.size else 0.0
    bound = 2.0 * err_p + 2.0 * float(fmt.ulp(np.array([top]))[0]) * np.sqrt(oracle.size)
    return err_s / bound if bound > 0 else (0.0 if err_s == 0 else float("inf"))


# ---- the walk -------------------------------------------------------------------------------

def _layer_of(point: str, n_layers: int) -> int:
    """The last layer index whose ops are walked for a departure at ``point``."""
    if point == "embed":
        return -1
    if point.startswith("layer "):
        return int(point.split()[1])
    return n_layers - 1  # logits, or a router input judged by the routing check: every layer


def _in_scope(op: str, last: int, point: str) -> bool:
    if op.startswith("layer "):
        return int(op.split()[1]) <= last
    return point == "logits"


def record_steps(side: Any, inputs: list[np.ndarray], step: int) -> dict[str, Any]:
    """Replay ``inputs[0..step]`` through ``side`` (a fresh side), recording step ``step``."""
    points: dict[str, Any] = {}
    for s in range(step + 1):
        side.step(inputs[s], points if s == step else None)
    return points


def attribute(derived: Path, inputs: list[np.ndarray], force: list[list[np.ndarray]] | None, dtype: str,
              departure: dict[str, Any], mutant: Any = None, capture_dir: Path | None = None) -> dict[str, Any]:
    """Name the op and the cause of ``departure`` (``{"step", "point", ...}`` from the
    harness); returns the keys to add to it: ``op``, ``cause``, ``cause_detail``, ``repro``
    (or None), ``op_checks``. See the module docstring for the algorithm.

    ``inputs``: the teacher-forced tokens per step; ``force``: the oracle's experts;
    ``mutant``: the MLX side's planted bug (meta-tests), active while MLX builds, runs and
    replays; ``capture_dir``: where a new divergence's inputs are written.
    """
    import contextlib

    from conformance.model.sides import MlxSide, TwinSide, release

    # One model at a time (conformance/model/memory.py): the oracle's points; the twin's
    # points and its replays of every op in scope on its own inputs (test dtype and float64);
    # then MLX, whose ops are replayed on the twin's inputs and judged against those. Only
    # activations cross from one phase to the next, so the peak is one side's weights.
    step = int(departure["step"])
    point = str(departure["point"])
    oracle = TwinSide(derived, "float64", "twin-float64", force=force)
    oracle_pts = record_steps(oracle, inputs, step)
    release(oracle)
    twin = TwinSide(derived, "native", f"twin-{dtype}", force=force)
    twin_pts = record_steps(twin, inputs, step)
    last = _layer_of(point, len(twin.model.layers))
    scope = [op for op in twin_pts if _in_scope(op, last, point)]
    replays = {op: twin_replays(twin.model, op, twin_pts[op][1]) for op in scope}
    release(twin)
    with mutant() if mutant is not None else contextlib.nullcontext():
        mlx = MlxSide(derived, force=force)
        try:
            return _judge_mlx_ops(mlx, inputs, step, scope, twin_pts, oracle_pts, replays, departure, dtype,
                                  capture_dir)
        finally:
            # MLX's buffer cache keeps what this phase freed (4.7 GiB on a 1B in float32,
            # under tune_cpu's raised limit) until it is emptied: the next side (an anchor)
            # would load on top of it.
            release(mlx)


def _judge_mlx_ops(mlx: Any, inputs: list[np.ndarray], step: int, scope: list[str],
                   twin_pts: dict[str, Any], oracle_pts: dict[str, Any],
                   replays: dict[str, tuple[np.ndarray, np.ndarray]], departure: dict[str, Any],
                   dtype: str, capture_dir: Path | None) -> dict[str, Any]:
    """Attribution's last phase: MLX's points of steps ``0..step``, its ops in ``scope``
    checked in order against the twin's inputs (:func:`wiring`, :func:`check_op`), and the
    verdict: the first failing op (``port`` or ``mlx-backend``), else a known back-end
    divergence, else the bound."""
    mlx_pts = record_steps(mlx, inputs, step)
    checks: list[OpCheck] = []
    clean = True
    for op in scope:
        t_out, t_in = twin_pts[op]
        if op not in mlx_pts:
            check = OpCheck(op, None, False, None, float("inf"), "MLX's model ran no such op", wiring="missing")
            checks.append(check)
            return _named(check, "port", f"MLX's model records no {op!r} where the twin's does (an op "
                          "skipped or renamed in the port).", checks)
        m_out, m_in = mlx_pts[op]
        o_out, o_in = oracle_pts[op]
        problem = wiring(m_in, t_in, o_in, dtype, clean)
        if problem is not None:
            check = OpCheck(op, None, False, None, float("inf"), problem, wiring=problem)
            checks.append(check)
            return _named(check, "port", f"{problem}: MLX's model hands this op other inputs than the "
                          "twin's (the departure is between ops: a cache, a reshape, a mask).", checks)
        check = check_op(mlx.model, op, t_in, replays[op], dtype)
        checks.append(check)
        if check.record_ok is False:
            return _backend(check, checks, dtype, capture_dir)
        if not check.port_ok:
            bound_of = f"{check.record}'s" if check.record else "its"
            detail = (f"On the twin's inputs the port's op leaves {bound_of} bound "
                      f"(model-rule ratio {check.ratio:.3g})"
                      + (f" while {check.record}'s own call conforms on the same inputs" if check.record_ok
                         else "; no registry record computes this recipe") + ": a bug of mlx_impl.models "
                      "or of the twin's recipe (rounding point, eps, constant).")
            return _named(check, "port", detail + " " + _first_line(check.message), checks)
        if clean:
            own = check_point(_np(m_out), _np(t_out), _np(o_out), dtype if dtype != "float64" else "float32")
            clean = own.passed
    known = known_backend(checks, dtype, capture_dir)
    if known is not None:
        return known
    return _bound(checks, departure, twin_pts, oracle_pts, mlx_pts, dtype)


PREMISE = 2.0
"""The model rule's premise: MLX's error at every op within 2x the twin's (bounds.py)."""


def known_backend(checks: list[OpCheck], dtype: str, capture_dir: Path | None = None) -> dict[str, Any] | None:
    """Where every op conforms: the ops that make more than :data:`PREMISE` x the twin's
    error on identical inputs and conform only through their record's allowance for MLX's
    half-precision accumulation (a known back-end behaviour); the worst is named with cause
    ``"mlx-backend"``, its inputs written to ``capture_dir`` with the reproducer command in
    ``repro`` (the accumulation shows on them). None when there are none."""
    known = [c for c in checks if c.half_accumulation and c.norm_ratio > PREMISE]
    if not known:
        return None
    first = known[0]
    worst = max(known, key=lambda c: c.norm_ratio)
    detail = (f"{len(known)} quantized matmuls make more than {PREMISE:g}x the twin's error on the twin's own "
              f"inputs (worst {worst.op}: {worst.norm_ratio:.3g}x, the one named; first {first.op}: "
              f"{first.norm_ratio:.3g}x) and conform to {first.record} only through its allowance for MLX's "
              f"{backend_label()} quantized matmul accumulating {dtype} products in {dtype} (SEMANTICS.md, "
              "quantized_matmul; the twin accumulates in float32; its overflow form is the divergence "
              "cpu_half_accumulator_overflow). Every op conforms to its own record; no port op or wiring departs.")
    out = _named(worst, "mlx-backend", detail, checks)
    out["cause_detail_divergence"] = "half-precision accumulation (accumulates_in_input_dtype)"
    if capture_dir is not None and worst.case is not None:
        out["repro"] = f"python -m conformance repro --inputs {write_capture(capture_dir, worst, dtype)}"
    return out


def backend_label() -> str:
    """The back end's name for messages (``cpu``, ``metal``, ``cuda``)."""
    from conformance.execute import backend_name

    return backend_name()


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _named(check: OpCheck, cause: str, detail: str, checks: list[OpCheck]) -> dict[str, Any]:
    return {"op": check.op, "cause": cause, "cause_detail": detail, "repro": None,
            "op_checks": [c.as_dict() for c in checks]}


def _backend(check: OpCheck, checks: list[OpCheck], dtype: str, capture_dir: Path | None) -> dict[str, Any]:
    if check.divergence is not None:
        detail = (f"{check.record}'s own call fails on the twin's inputs, and the inputs match the known "
                  f"MLX divergence {check.divergence}. {_first_line(check.message)}")
        return {**_named(check, "mlx-backend", detail, checks), "cause_detail_divergence": check.divergence,
                "repro": f"python -m conformance repro {check.divergence}"}
    repro = None
    detail = f"{check.record}'s own call fails on the twin's inputs (a new divergence). {_first_line(check.message)}"
    if capture_dir is not None and check.case is not None:
        path = write_capture(capture_dir, check, dtype)
        repro = f"python -m conformance repro --inputs {path}"
        detail += f" Inputs written to {path}."
    out = _named(check, "mlx-backend", detail, checks)
    out["repro"] = repro
    return out


def write_capture(directory: Path, check: OpCheck, dtype: str) -> Path:
    """Write the op's record case (arrays exact, as float32 or integer) and its metadata to
    ``directory/<op>.npz``, the file ``python -m conformance repro --inputs`` reads."""
    assert check.case is not None
    directory.mkdir(parents=True, exist_ok=True)
    return save_capture(directory / (check.op.replace(" ", "_").replace(".", "-") + ".npz"),
                        check.case.record, check.case.arrays, check.case.params, dtype, check.op)


def save_capture(path: Path, record: str, arrays: dict[str, np.ndarray], params: dict[str, Any], dtype: str,
                 op: str) -> Path:
    """``arrays`` plus ``__meta__`` (JSON: record, params, dtype, op) in one npz."""
    meta = json.dumps({"record": record, "params": params, "dtype": dtype, "op": op}, default=str)
    entries: dict[str, Any] = {"__meta__": np.array(meta), **arrays}
    np.savez_compressed(path, **entries)
    return path


def _bound(checks: list[OpCheck], departure: dict[str, Any], twin_pts: dict[str, Any], oracle_pts: dict[str, Any],
           mlx_pts: dict[str, Any], dtype: str) -> dict[str, Any]:
    """Every op conforms: the composition leaves the bound. Name the op whose MLX error on
    identical inputs is largest against the model rule's premise, and say how concentrated
    the departing point's error is."""
    point = str(departure["point"])
    # The op named: the worst of the departing layer's own ops (the final norm and head for
    # the logits), whose error reaches the point without further mixing; the worst of all
    # is in the detail.
    local = [c for c in checks if (c.op.startswith(f"{point} ") if point != "logits"
                                   else not c.op.startswith("layer "))]
    worst = max(local or checks, key=lambda c: c.norm_ratio) if checks else None
    worst_all = max(checks, key=lambda c: c.norm_ratio) if checks else None
    over = [c for c in checks if c.norm_ratio > PREMISE]
    key = _point_key(str(departure["point"]), twin_pts)
    shape_note = ""
    if key is not None:
        o = _np(oracle_pts[key][0])
        e_m = _np(mlx_pts[key][0]) - o
        e_t = _np(twin_pts[key][0]) - o
        row = int(np.argmax(np.linalg.norm(e_m.reshape(-1, o.shape[-1]), axis=-1)))
        pr_m = participation(e_m.reshape(-1, o.shape[-1])[row])
        pr_t = participation(e_t.reshape(-1, o.shape[-1])[row])
        top = np.argsort(-np.abs(o.reshape(-1, o.shape[-1])[row]))[:3]
        oro = o.reshape(-1, o.shape[-1])[row]
        med = float(np.median(np.abs(oro)))
        shape_note = (f" At {key}, row {row}: the error's effective number of channels (participation ratio) is "
                      f"{pr_m:.3g} for MLX and {pr_t:.3g} for the twin of D = {o.shape[-1]}; the largest "
                      f"activations {', '.join(f'[{int(i)}] {oro[i]:.4g}' for i in top)} against a median |h| "
                      f"of {med:.3g}.")
    if worst is None or worst_all is None:
        detail = "No op was recorded before the departing point."
    else:
        detail = (f"Every op conforms to its own record on the twin's inputs; {len(over)} of {len(checks)} make more "
                  f"than the model rule's premise of {PREMISE:g}x the twin's error there (Frobenius), the largest "
                  f"{worst_all.op} ({worst_all.norm_ratio:.3g}x"
                  + (f", admitted by {worst_all.record}'s own bound" if worst_all.record else "") + "); at "
                  f"{point} itself {worst.op} ({worst.norm_ratio:.3g}x)." + shape_note)
    return {"op": worst.op if worst else None, "cause": "bound", "cause_detail": detail, "repro": None,
            "op_checks": [c.as_dict() for c in checks]}


def _point_key(point: str, pts: dict[str, Any]) -> str | None:
    """The recorded op whose output is the departing point (a layer's last residual add,
    the head for the logits)."""
    if point == "logits":
        return "lm_head" if "lm_head" in pts else None
    if point.startswith("layer "):
        key = f"{point} mlp_residual"
        return key if key in pts else None
    return None
