"""Sub-layer points of any candidate: the named modules inside each decoder layer.

For this project's port the sides record points inside every layer themselves
(``mlx_impl.models.points``, used by :mod:`conformance.model.attribution`). Any other
candidate (mlx-lm, a user's port) is not edited: inside each of its decoder layers every
named submodule (``self_attn``, ``self_attn.q_proj``, ``input_layernorm``, ``mlp.down_proj``
...; whatever it has) gets its class swapped for a subclass whose ``__call__`` records the
call's first input and its output (:func:`tap_mlx_layers`; ``isinstance`` checks, attributes
and parameters stay the candidate's own). On the torch sides (transformers' oracle, peer
and float32 probe, or the twin) forward hooks on the modules with the same dotted names
record the same (:func:`hook_torch_layers`). mlx-lm mirrors transformers' module names (it
loads their weights), so the names line up; a name on one side only is skipped, and the
result says so once (:func:`judge_subpoints`). The twin and ``mlx_impl`` call three of
their norms by role (``post_attn_norm``, ``pre_mlp_norm``, ``post_mlp_norm``); they are
renamed to the checkpoint's names (:func:`own_aliases`).

Each call's output (and input) must be ``[B, L, ...]`` for the step's tokens ``[B, L]``;
it is kept as ``[B * L, D]`` rows (one per token, trailing axes flattened: a decode step
keeps only its one token's row, as the layer capture does), float32 where the side's
value is narrower than float64 (exact), float64 for float64 values; an array recorded
twice in a step (a norm's output as each projection's input) is stored once. An output
of another layout is not a point (noted). Memory: about (sum of the recorded widths) x
tokens x 4 bytes per side (8 for the float64 oracle); Llama-3.1-8B-shaped, ~78k values
a token a layer once shared arrays are counted once, 32 layers, a 16-token prefill and 32
steps: ~0.5 GB per narrow side, ~1 GB for the oracle (``subpoints=False`` records none).

Judging: every (step, layer, op) with the layer points' rule
(:func:`conformance.model.bounds.check_point`: ``||cand - oracle|| <= 2 ||peer - oracle||
+ 2 ulp sqrt(D)`` per token row). Sub-points NAME a departure; they do not decide the
verdict. Where a configuration departs at (step S, layer L), the op named is the first
sub-point, in the candidate's execution order (the order its wrapped modules return), of
layers 0..L at step S whose output departs (a departure at the logits: of every layer and
the head, the final norm and ``lm_head``, :data:`HEAD_OPS`); where that op's input already departs, the
change happened before it, in code the candidate does not expose as a module, and the op
named is the innermost exposed module around it (``self_attn`` for a RoPE applied between
``v_proj`` and ``o_proj``; the layer's own code for a residual add). Why sub-points do not
fail a configuration by themselves: the same module name on two libraries need not compute
the same quantity (where a scale is folded in, which layout a norm sees), so a sub-point is
evidence for where a departure starts, not a specification; and whatever a sub-point's
error does to the model shows at the layer outputs and logits, which are all judged. A
sub-point that departs inside a conforming layer, before any departure, is counted
(``inside_conforming``) and listed, not failed.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from conformance.model.bounds import check_point

_TAPPED = "_conformance_subpoint_tap"
"""Set on the subclasses :func:`tap_mlx_layers` makes (a module is never tapped twice)."""


@dataclass
class Call:
    """One recorded module call: layer index, op name (dotted inside the layer; ``#k``
    for its k-th call in the same step), the counter at entry and at return, and the
    output (and first input, or None) as ``[B * L, D]`` rows."""

    layer: int
    op: str
    enter: int
    exit: int
    out: np.ndarray
    inp: np.ndarray | None


class RowStore:
    """Where a trace's rows live: anonymous memory maps of ``CHUNK`` bytes, filled in order.

    Why not NumPy's own arrays: the rows are thousands of small arrays that live for the
    whole judgement, allocated between the sides' large transient ones (the float64
    oracle's widened weight matrices, which glibc's raised mmap threshold puts on the
    heap). From malloc's heap they pin it, so the freed large blocks cannot be returned
    and the heap grows. Measured on SmolLM2-135M (mlx-lm, float32, prefill 16 + 8 steps,
    ~105 MB of rows over the three sides): peak 1.63 GB without sub-points, 1.64 GB with
    them, 2.33 GB with the rows in NumPy's arrays (and 2.1-2.4 GB while the step's
    activations were also held to its end: :meth:`SubTrace._converted` keeps only weak
    references). Memory maps stay off the heap, and their untouched tail costs nothing."""

    CHUNK = 16 * 2**20

    def __init__(self) -> None:
        self._chunks: list[Any] = []
        self._free = 0
        self._buffer: Any = None

    def put(self, rows: np.ndarray) -> np.ndarray:
        """A copy of the C-contiguous ``rows`` in the store (read-only view)."""
        import mmap

        size = rows.nbytes
        if self._buffer is None or size > self._free:
            self._buffer = mmap.mmap(-1, max(self.CHUNK, size))
            self._chunks.append(self._buffer)
            self._free = len(self._buffer)
        start = len(self._buffer) - self._free
        # 8-byte alignment for float64 rows.
        pad = (-start) % 8
        if size + pad > self._free:
            self._buffer = mmap.mmap(-1, max(self.CHUNK, size))
            self._chunks.append(self._buffer)
            self._free, start, pad = len(self._buffer), 0, 0
        start += pad
        out = np.frombuffer(self._buffer, dtype=rows.dtype, count=rows.size, offset=start).reshape(rows.shape)
        out[...] = rows
        self._free -= size + pad
        out.flags.writeable = False
        return out


def _rows(value: np.ndarray, tokens: tuple[int, ...], store: RowStore | None = None) -> np.ndarray | None:
    """``value [B, L, ...]`` as ``[B * L, D]`` (float32 unless it is float64; in ``store``
    where given), or None for another layout."""
    if value.ndim < 2 or tuple(value.shape[:2]) != tokens or not np.issubdtype(value.dtype, np.floating):
        return None
    rows = np.ascontiguousarray(value.reshape(tokens[0] * tokens[1], -1))
    rows = rows if rows.dtype == np.float64 else rows.astype(np.float32, copy=False)
    return rows if store is None else store.put(rows)


@dataclass
class SubTrace:
    """One side's sub-layer calls, per step (:meth:`begin` / :meth:`end` around each).

    ``to_np``: the side's array -> NumPy (exact); ``deferred``: keep the side's arrays
    until :meth:`end` (MLX: convert after the step evaluated, never inside the forward);
    torch tensors are copied at once (a later in-place op cannot change the record).
    ``steps[s]``: ``{(layer, op): Call}``; ``unshaped``: ops whose output was not
    ``[B, L, ...]``; ``failed``: why capture stopped (then no step is trusted)."""

    to_np: Callable[[Any], np.ndarray]
    deferred: bool = False
    steps: list[dict[tuple[int, str], Call]] = field(default_factory=list)
    unshaped: set[str] = field(default_factory=set)
    failed: str | None = None
    _tokens: tuple[int, ...] = ()
    _counter: int = 0
    _pending: list[tuple[int, str, int, int, Any, Any]] = field(default_factory=list)
    _seen: dict[tuple[int, int], tuple[Callable[[], Any], np.ndarray]] = field(default_factory=dict)
    _rowstore: RowStore = field(default_factory=RowStore)

    def begin(self, tokens: tuple[int, ...]) -> None:
        """A new step on tokens of shape ``[B, L]``."""
        self._tokens, self._counter, self._pending, self._seen = tuple(tokens), 0, [], {}
        self.steps.append({})

    def enter(self) -> int:
        """The counter at a module's entry."""
        self._counter += 1
        return self._counter

    def record(self, layer: int, op: str, enter: int, out: Any, inp: Any) -> None:
        """A module of ``layer`` named ``op`` returned ``out`` on input ``inp`` (None if none)."""
        if not self.steps or self.failed:
            return
        self._counter += 1
        entry = (layer, op, enter, self._counter, out, inp)
        if self.deferred:
            self._pending.append(entry)
        else:
            self._store(entry)

    def _store(self, entry: tuple[int, str, int, int, Any, Any]) -> None:
        layer, op, enter, exit_, out, inp = entry
        step = self.steps[-1]
        n = sum(1 for (lay, name) in step if lay == layer and name.split("#")[0] == op)
        name = op if n == 0 else f"{op}#{n + 1}"
        rows = self._converted(out)
        if rows is None:
            self.unshaped.add(op)
            return
        in_rows = None if inp is None else self._converted(inp)
        step[(layer, name)] = Call(layer, name, enter, exit_, rows, in_rows)

    def _converted(self, value: Any) -> np.ndarray | None:
        """``value``'s rows, converted once per step: the same array recorded again (the
        norm's output as q/k/v_proj's input, o_proj's output as self_attn's) shares them.
        Kept by weak reference: a dead one never matches."""
        # Another layout is not read at all, nor kept: a module inside a layer may return
        # something large (the twin widens each weight matrix to float64 in a submodule).
        if tuple(getattr(value, "shape", ()))[:2] != self._tokens:
            return None
        # A torch tensor changed in place since (its _version moved) is converted again.
        key = (id(value), getattr(value, "_version", 0))
        hit = self._seen.get(key)
        if hit is not None and hit[0]() is value:
            return hit[1]
        rows = _rows(self.to_np(value), self._tokens, self._rowstore)
        if rows is not None:
            # A weak reference: holding the side's activations to the step's end would pin
            # malloc's heap under the float64 oracle's widened weights (RowStore says how
            # much); a dead one cannot match a new array reusing its id.
            self._seen[key] = (weakref.ref(value), rows)
        return rows

    def end(self) -> None:
        """The step is over: convert what was deferred (an array the candidate made inside
        a compiled function cannot be read: capture stops, and the result says why)."""
        pending, self._pending = self._pending, []
        try:
            if not self.failed:
                for entry in pending:
                    self._store(entry)
        except Exception as exc:  # a tracer from mx.compile, an exotic output type
            self.failed = f"{type(exc).__name__}: {exc}"
        self._seen = {}  # the step's arrays go (their rows stay in steps)


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, (tuple, list)) and value else value


def _input(args: tuple[Any, ...], kwargs: dict[str, Any], kind: type) -> Any:
    """The call's first array argument (positional, else ``hidden_states``, else the first
    array keyword), or None."""
    if args and isinstance(args[0], kind):
        return args[0]
    if isinstance(kwargs.get("hidden_states"), kind):
        return kwargs["hidden_states"]
    return next((v for v in kwargs.values() if isinstance(v, kind)), None)


def own_aliases(model_type: str) -> dict[str, str]:
    """The twin's and ``mlx_impl``'s role names of their norms -> the checkpoint's module
    names for ``model_type`` (``pre_mlp_norm`` -> ``post_attention_layernorm`` on Llama)."""
    from torch_reference.models.decoder import _NORMS

    roles = _NORMS.get(model_type, (None, None, None))
    return {role: name for role, name in zip(("post_attn_norm", "pre_mlp_norm", "post_mlp_norm"), roles,
                                            strict=True) if name}


def _renamed(name: str, aliases: dict[str, str] | None) -> str:
    if not aliases:
        return name
    head, _, rest = name.partition(".")
    head = aliases.get(head, head)
    return f"{head}.{rest}" if rest else head


def _unique_modules(layers: list[Any], named: Callable[[Any], list[tuple[str, Any]]]) -> list[tuple[int, str, Any]]:
    """``(layer, dotted name, module)`` for every named submodule that appears once in
    all the layers (a module shared between places could not say where it was called)."""
    seen: dict[int, int] = {}
    found = []
    for i, layer in enumerate(layers):
        for name, module in named(layer):
            if name:
                seen[id(module)] = seen.get(id(module), 0) + 1
                found.append((i, name, module))
    return [(i, name, m) for i, name, m in found if seen[id(m)] == 1]


HEAD_OPS = {"model.norm": ("model.norm", "norm", "language_model.model.norm", "model.language_model.norm"),
            "lm_head": ("lm_head", "language_model.lm_head")}
"""The modules after the last decoder layer, by op name: the paths (from the model) where
mlx-lm, transformers, the twin and ``mlx_impl`` keep the final norm and the output head.
They are recorded as the "head" (layer index = the number of layers), so a departure at
the logits is named too. A tied head that the model computes with a method
(``embed_tokens.as_linear``) is no module call: no ``lm_head`` point there."""


def find_head(model: Any) -> list[tuple[str, Any]]:
    """``(op, module)`` of :data:`HEAD_OPS` that ``model`` has (the first path that
    resolves, for each op)."""
    found = []
    for op, paths in HEAD_OPS.items():
        for path in paths:
            target: Any = model
            try:
                for part in path.split("."):
                    target = getattr(target, part)
            except AttributeError:
                continue
            if hasattr(target, "named_modules"):  # an MLX or torch module, not an array
                found.append((op, target))
                break
    return found


def tap_mlx_layers(layers: list[Any], trace: SubTrace, aliases: dict[str, str] | None = None,
                   head: list[tuple[str, Any]] | None = None) -> int:
    """Record every named submodule of each MLX decoder layer in ``layers`` into
    ``trace`` (and the ``head`` modules, :func:`find_head`, as layer ``len(layers)``): each
    module's class is swapped for a subclass whose ``__call__`` records (nothing else of
    the module changes). Returns the number of modules tapped."""
    import mlx.core as mx

    count = 0
    entries = _unique_modules(layers, lambda layer: layer.named_modules())
    entries += [(len(layers), op, module) for op, module in head or []]
    for layer_index, name, module in entries:
        cls = type(module)
        if getattr(cls, _TAPPED, False):
            continue
        op = name if layer_index == len(layers) else _renamed(name, aliases)

        def call(self: Any, *args: Any, _cls: Any = cls, _layer: int = layer_index, _op: str = op,
                 **kwargs: Any) -> Any:
            enter = trace.enter()
            out = _cls.__call__(self, *args, **kwargs)
            first = _first(out)
            if isinstance(first, mx.array):
                trace.record(_layer, _op, enter, first, _input(args, kwargs, mx.array))
            return out

        module.__class__ = type(cls.__name__, (cls,), {"__call__": call, _TAPPED: True,
                                                        "__module__": cls.__module__})
        count += 1
    return count


def hook_torch_layers(layers: Any, trace: SubTrace, aliases: dict[str, str] | None = None,
                      head: list[tuple[str, Any]] | None = None) -> int:
    """Forward hooks recording every named submodule of each torch decoder layer in
    ``layers`` (a ModuleList) into ``trace`` (and the ``head`` modules as layer
    ``len(layers)``). Returns the number of modules hooked."""
    import torch

    count = 0
    entries = _unique_modules(list(layers), lambda layer: list(layer.named_modules()))
    entries += [(len(layers), op, module) for op, module in head or []]
    for layer_index, name, module in entries:
        op = name if layer_index == len(layers) else _renamed(name, aliases)
        stack: list[int] = []

        def pre(_module: Any, _args: Any, _stack: list[int] = stack) -> None:
            _stack.append(trace.enter())

        def post(_module: Any, args: Any, kwargs: Any, out: Any, _stack: list[int] = stack, _layer: int = layer_index,
                 _op: str = op) -> None:
            enter = _stack.pop() if _stack else 0
            first = _first(out)
            if isinstance(first, torch.Tensor):
                trace.record(_layer, _op, enter, first, _input(args, kwargs, torch.Tensor))

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post, with_kwargs=True)
        count += 1
    return count


def attach(side: Any, trace: SubTrace) -> None:
    """Bracket each ``side.step`` call with ``trace.begin`` / ``trace.end`` (an instance
    attribute over the method: the side's class is not changed)."""
    inner = side.step

    def step(tokens: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        trace.begin(tuple(tokens.shape))
        out = inner(tokens, *args, **kwargs)
        trace.end()
        return out

    side.step = step


def capture_side(side: Any, model_type: str) -> SubTrace | None:
    """A :class:`SubTrace` recording ``side``'s decoder layers' submodules (transformers'
    :class:`~conformance.model.hf_sides.HFSide`, the twin's ``TwinSide`` or ``mlx_impl``'s
    ``MlxSide``; the candidate's ``CandidateSide`` records its own), attached to its steps;
    None where its layers are not found."""
    from conformance.dtypes import mlx_to_numpy, torch_to_numpy
    from conformance.model.hf_sides import HFSide, hf_layers
    from conformance.model.sides import MlxSide, TwinSide

    if isinstance(side, MlxSide):
        trace = SubTrace(mlx_to_numpy, deferred=True)
        tap_mlx_layers(side.model.layers, trace, own_aliases(model_type), find_head(side.model))
    elif isinstance(side, TwinSide):
        trace = SubTrace(torch_to_numpy)
        hook_torch_layers(side.model.layers, trace, own_aliases(model_type), find_head(side.model))
    elif isinstance(side, HFSide):
        found = hf_layers(side.model)
        if found is None:
            return None
        trace = SubTrace(torch_to_numpy)
        hook_torch_layers(found[1], trace, head=find_head(side.model))
    else:
        return None
    attach(side, trace)
    return trace


def _sig(value: float) -> float:
    return float(f"{value:.4g}")


def _base(op: str) -> str:
    return op.split("#")[0]


def judge_subpoints(cand: SubTrace, peer: SubTrace, oracle: SubTrace, probe: SubTrace | None, dtype: str,
                    layer_passed: Callable[[int, int], bool], head_layer: int | None = None) -> dict[str, Any]:
    """Every (step, layer, op) both the candidate and the oracle's library record,
    judged with :func:`conformance.model.bounds.check_point` (``probe``: the float32
    probe of a float64 configuration). ``head_layer``: the index the head's ops
    (:data:`HEAD_OPS`) were recorded at (the number of layers); in the returned points
    their ``layer`` is None.

    ``layer_passed(step, layer)``: whether that layer point passed, before the
    configuration's first departure (a departing sub-point there is counted in
    ``inside_conforming``; after a departure every point carries its error).

    Returns ``{"ops": [ops in the candidate's execution order, layer 0, step 0],
    "head_ops" (the same after the layers), "head_layer",
    "only_candidate", "only_oracle", "unshaped", "width_differs" (op names), "checked",
    "departing", "inside_conforming", "worst_ratio", "points": [{step, layer, op, ratio,
    passed, input_ratio?}] in execution order, "failed": why capture stopped or None}``.
    """
    failed = next((f"{who}: {t.failed}" for who, t in (("candidate", cand), ("peer", peer), ("oracle", oracle),
                                                      ("probe", probe)) if t is not None and t.failed), None)
    cand_ops = {_base(op) for step in cand.steps for (_, op) in step}
    oracle_ops = {_base(op) for step in oracle.steps for (_, op) in step}
    width_differs: set[str] = set()
    points: list[dict[str, Any]] = []
    probes: list[Any] = probe.steps if probe is not None else [None] * len(oracle.steps)
    n_steps = min(len(cand.steps), len(peer.steps), len(oracle.steps), len(probes))
    for s in range(n_steps if failed is None else 0):
        c_step, p_step, o_step, q_step = cand.steps[s], peer.steps[s], oracle.steps[s], probes[s]
        for key, c in sorted(c_step.items(), key=lambda kv: kv[1].exit):
            o, p = o_step.get(key), p_step.get(key)
            q = None if q_step is None else q_step.get(key)
            if o is None or p is None or (q_step is not None and q is None):
                continue
            if c.out.shape != o.out.shape or p.out.shape != o.out.shape or (q is not None and q.out.shape != o.out.shape):
                width_differs.add(_base(c.op))
                continue
            check = check_point(c.out.astype(np.float64), p.out.astype(np.float64), o.out.astype(np.float64),
                                dtype, None if q is None else q.out.astype(np.float64))
            entry: dict[str, Any] = {"step": s, "layer": c.layer, "op": c.op, "ratio": _sig(check.ratio),
                                     "passed": check.passed}
            if not check.passed:
                entry["message"] = check.message
                in_check = _check_inputs(c, p, o, q, dtype)
                if in_check is not None:
                    entry["input_ratio"] = _sig(in_check.ratio)
                    entry["input_passed"] = in_check.passed
            entry["_enter"], entry["_exit"] = c.enter, c.exit
            points.append(entry)
    def in_order(layer: int | None) -> list[str]:
        calls = sorted((c for (lay, _), c in (cand.steps[0].items() if cand.steps else []) if lay == layer),
                       key=lambda c: c.exit)
        return [c.op for c in calls if _base(c.op) in oracle_ops]

    departing = [p for p in points if not p["passed"]]
    inside = [p for p in departing if layer_passed(p["step"], p["layer"])]
    return {
        "ops": in_order(0), "head_ops": in_order(head_layer) if head_layer is not None else [],
        "head_layer": head_layer,
        # A name one side records in another layout is "unshaped", not missing.
        "only_candidate": sorted(cand_ops - oracle_ops - oracle.unshaped),
        "only_oracle": sorted(oracle_ops - cand_ops - cand.unshaped),
        "unshaped": sorted(cand.unshaped | oracle.unshaped), "width_differs": sorted(width_differs),
        "checked": len(points), "departing": len(departing), "inside_conforming": len(inside),
        "inside_conforming_first": [_public(p, head_layer) for p in inside[:5]],
        "worst_ratio": max((p["ratio"] for p in points), default=0.0),
        "points": points, "failed": failed,
    }


def _check_inputs(c: Call, p: Call, o: Call, q: Call | None, dtype: str) -> Any:
    """The call's input judged like its output, or None where a side recorded none (or
    the widths differ)."""
    if c.inp is None or p.inp is None or o.inp is None or (q is not None and q.inp is None):
        return None
    shapes = {c.inp.shape, p.inp.shape, o.inp.shape} | ({q.inp.shape} if q is not None and q.inp is not None else set())
    if len(shapes) != 1:
        return None
    probe = None if q is None or q.inp is None else q.inp.astype(np.float64)
    return check_point(c.inp.astype(np.float64), p.inp.astype(np.float64), o.inp.astype(np.float64), dtype, probe)


def _public(point: dict[str, Any], head_layer: int | None, message: bool = False) -> dict[str, Any]:
    """A point for the JSON result: the counters dropped, a head op's layer None."""
    out = {k: v for k, v in point.items() if not k.startswith("_") and (message or k != "message")}
    if head_layer is not None and out["layer"] == head_layer:
        out["layer"] = None
    return out


def where(point: dict[str, Any]) -> str:
    """``layer L`` or ``head`` of a public point."""
    return "head" if point.get("layer") is None else f"layer {point['layer']}"


def name_op(sub: dict[str, Any], step: int, layer: int) -> dict[str, Any]:
    """The op to name for a departure at (``step``, ``layer``) from :func:`judge_subpoints`'s
    ``sub`` (``layer``: ``sub["head_layer"]`` for a departure at the logits):
    ``{"op", "op_layer" (None for a head op), "op_detail", "op_ratio"}`` (``op`` None where no exposed
    sub-point of layers 0..``layer`` departs at ``step``: the change is then in code the
    candidate does not expose, after its last exposed module).

    The first departing sub-point ``P`` in execution order is named, unless ``P``'s own input
    already departs: then the change came before ``P`` was called, and the innermost exposed
    module enclosing ``P``'s call (by the entry and return counters) is named, with the last
    conforming sub-point before ``P`` (``self_attn``, between ``self_attn.v_proj`` and
    ``self_attn.o_proj``); with no enclosing module, the layer's own code before ``P``.
    Where ``P`` is in an earlier (conforming) layer, the departing layer's own first op is
    named too (``op_in_layer``, and at the end of the detail), as the ratios alone cannot
    say which of the two the reader should look at first."""
    here = [p for p in sub["points"] if p["step"] == step and p["layer"] <= layer]
    first = next((p for p in here if not p["passed"]), None)
    if first is None:
        last = next((p["op"] for p in reversed(here) if p["layer"] == layer), None)
        where = f" after its last exposed module ({last})" if last else ""
        return {"op": None, "op_layer": layer, "op_ratio": None,
                "op_detail": f"no exposed sub-point departs at step {step} up to layer {layer}: the change is in "
                             f"code the candidate does not expose as a module{where}"}
    head = sub.get("head_layer")
    named = _named(here, first)
    own = next((p for p in here if p["layer"] == layer and not p["passed"]), None)
    there = "the head" if layer == head else f"layer {layer}"
    if first["layer"] < layer and own is not None:
        in_layer = _named(here, own)
        named["op_in_layer"] = in_layer["op"]
        named["op_detail"] += f"; in {there} itself: {in_layer['op']} ({in_layer['op_detail']})"
    elif first["layer"] < layer:
        last = next((p["op"] for p in reversed(here) if p["layer"] == layer), None)
        named["op_in_layer"] = None
        named["op_detail"] += (f"; no exposed op of {there} itself departs"
                               + (f" (the change there is after {last})" if last else ""))
    if named["op_layer"] == head:
        named["op_layer"] = None
    return named


def _named(here: list[dict[str, Any]], first: dict[str, Any]) -> dict[str, Any]:
    """:func:`name_op` for the departing sub-point ``first`` among the step's points ``here``."""
    same = [p for p in here if p["layer"] == first["layer"]]
    if first.get("input_passed", True):
        # The ratios say how sharp the step is: a bug jumps by orders of magnitude, error
        # accumulating to the bound crosses it by a little after ops just inside it.
        earlier = max((p["ratio"] for p in same if p["_exit"] < first["_exit"]), default=None)
        context = [f"its input {first['input_ratio']:.4g}"] if "input_ratio" in first else ["input not compared"]
        if earlier is not None:
            context.append(f"the layer's earlier ops at most {earlier:.4g}")
        return {"op": first["op"], "op_layer": first["layer"], "op_ratio": first["ratio"],
                "op_detail": f"its output departs (ratio {first['ratio']:.4g}; {', '.join(context)})"}
    around = [p for p in same if p["_enter"] < first["_enter"] and p["_exit"] > first["_exit"]]
    enclosing = max(around, key=lambda p: p["_enter"]) if around else None
    lower = enclosing["_enter"] if enclosing else 0
    before = [p for p in same if lower < p["_exit"] < first["_enter"]]
    prev = before[-1]["op"] if before else None
    span = (f"between {prev} and {first['op']}" if prev else f"before {first['op']}")
    if enclosing is not None:
        return {"op": enclosing["op"], "op_layer": first["layer"], "op_ratio": enclosing["ratio"],
                "op_detail": f"inside {enclosing['op']}, {span}, in code not exposed as a module ({first['op']}'s "
                             f"input already departs, ratio {first['input_ratio']:.4g})"}
    return {"op": f"layer code {span}", "op_layer": first["layer"], "op_ratio": first["input_ratio"],
            "op_detail": f"in the layer's own code {span} ({first['op']}'s input already departs, ratio "
                         f"{first['input_ratio']:.4g})"}


def public(sub: dict[str, Any]) -> dict[str, Any]:
    """``sub`` ready for the JSON result (the entry/return counters dropped, the messages
    kept only for departing points)."""
    return {**sub, "points": [_public(p, sub.get("head_layer"), message=True) for p in sub["points"]]}
