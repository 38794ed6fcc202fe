"""The declared-model loader: :func:`load_weights` builds a model declared with ``weight(...)``.

Two phases: the plan walks the declaration, takes each field's tensors from the checkpoint
and records every problem (missing, unexpected, mis-shaped, mistyped, quantized without a
quantization); the build constructs layers and the model only when the plan found nothing,
so a half-filled model is never handed out, and every problem is raised as ONE
:class:`~mlx_impl.loading.errors.WeightLoadError`.
"""

# NOTE: no ``from __future__ import annotations``: see mlx_impl/loading/declarations.py.

import dataclasses
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import mlx.core as mx

from mlx_impl import nn
from mlx_impl._errors import type_error, value_error
from mlx_impl.loading.declarations import (
    AnyLinear,
    FieldPlan,
    Kind,
    KnownLayer,
    ListOf,
    NestedModel,
    RawArray,
    WeightSpec,
    fields_of,
    is_json_int,
)
from mlx_impl.loading.errors import Problems
from mlx_impl.loading.layer_rules import (
    LAYERS,
    QUANTIZED_MARKER,
    LayerSpec,
    check_quantized,
    dtype_name,
)
from mlx_impl.loading.safetensors_io import PathLike, as_path_list, read_files

__all__ = ["Quantization", "load_weights"]

T = TypeVar("T")

Quantization = tuple[int, int, str] | str | None


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
    if not (is_json_int(group_size) and is_json_int(bits) and isinstance(mode, str)):
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
        self.problems = Problems()
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
        for plan in fields_of(cls):
            full = f"{prefix}.{plan.spec.path}" if prefix else plan.spec.path
            builders[plan.name] = self.plan_field(plan, full)

        def build() -> Any:
            return cls(**{name: b() for name, b in builders.items()})

        return build

    def plan_field(self, plan: FieldPlan, full: str) -> _Builder:
        optional = plan.spec.optional or plan.admits_none
        if optional and not self.present(full):
            empty: Any = [] if isinstance(plan.kind, ListOf) and not plan.admits_none else None
            return lambda: empty
        if isinstance(plan.kind, ListOf):
            return self.plan_list(plan.kind.item, plan.spec, full)
        return self.plan_one(plan.kind, plan.spec, full)

    def plan_list(self, item: Kind, spec: WeightSpec, full: str) -> _Builder:
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

    def plan_one(self, kind: Kind, spec: WeightSpec, full: str) -> _Builder:
        if isinstance(kind, NestedModel):
            return self.plan_model(kind.cls, full)
        if isinstance(kind, RawArray):
            return self.plan_raw(spec, full)
        if isinstance(kind, AnyLinear):
            if self.present(f"{full}.scales"):
                return self.plan_quantized(spec, full)
            return self.plan_layer(LAYERS[nn.Linear], spec, full)
        assert isinstance(kind, KnownLayer)
        if kind.spec is QUANTIZED_MARKER:
            return self.plan_quantized(spec, full)
        return self.plan_layer(kind.spec, spec, full)

    def plan_raw(self, spec: WeightSpec, full: str) -> _Builder:
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
                    f"{self.describe(full)}: expected dtype {dtype_name(spec.dtype)} but has {dtype_name(arr.dtype)}."
                )
        return lambda: arr

    def check_declared_shape(
        self, key: str, actual: tuple[int, ...], spec: WeightSpec, what: str
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

    def plan_layer(self, layer: LayerSpec, spec: WeightSpec, full: str) -> _Builder:
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

    def plan_quantized(self, spec: WeightSpec, full: str) -> _Builder:
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
        check_quantized(group_size, bits, mode)(self.describe, tensors, keys, found)
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
            "QuantizedLinear", nn.QuantizedLinear, args, dict(spec.kwargs), full
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
        files = as_path_list(weights, where)
        arrays, sources = read_files(files, where)

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
