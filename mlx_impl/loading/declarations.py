"""Declaring a model: :func:`weight` on dataclass fields, and what each annotation is filled from.

:func:`weight` records a field's checkpoint path (Ollama's ``weight:"path[,optional]"``
struct tag); :func:`fields_of` resolves a declared dataclass's annotations into the
:data:`Kind` the loader fills each field with (a raw array, a known layer, ``Linear`` or
``QuantizedLinear`` by the checkpoint's keys, a nested model, a list of those).
"""

# NOTE: this module deliberately does NOT use ``from __future__ import annotations``: the
# docstring examples define dataclasses that doctest compiles with the testing module's
# future flags, and postponed annotations of those would not resolve.

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Union

import mlx.core as mx

from mlx_impl import nn
from mlx_impl._errors import type_error, value_error
from mlx_impl.loading.layer_rules import LAYERS, QUANTIZED_MARKER, LayerSpec

FIELD_KEY = "mlx_impl.weight"


@dataclasses.dataclass(frozen=True)
class WeightSpec:
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
            or not all(d is None or (is_json_int(d) and d >= 0) for d in shape)
        ):
            raise type_error(
                "weight", f"shape must be a sequence of ints >= 0 or None but got {shape!r}."
            )
        declared = tuple(shape)
    spec = WeightSpec(path, bool(optional), declared, dtype, dict(layer_kwargs))
    metadata = {FIELD_KEY: spec}
    if optional:
        return dataclasses.field(default=None, kw_only=True, metadata=metadata)
    return dataclasses.field(kw_only=True, metadata=metadata)



def is_json_int(value: object) -> bool:
    """Integers only: ``bool`` is an ``int`` subclass in Python but not a size."""
    return isinstance(value, int) and not isinstance(value, bool)




@dataclasses.dataclass(frozen=True)
class RawArray:
    """An ``mx.array`` field."""


@dataclasses.dataclass(frozen=True)
class KnownLayer:
    """A layer of a known class."""

    spec: LayerSpec


@dataclasses.dataclass(frozen=True)
class AnyLinear:
    """``LinearLayer``: ``QuantizedLinear`` if ``.scales`` exists, else ``Linear``."""


@dataclasses.dataclass(frozen=True)
class NestedModel:
    """Another declared dataclass."""

    cls: type


@dataclasses.dataclass(frozen=True)
class ListOf:
    """``list[X]``."""

    item: "Kind"


Kind = RawArray | KnownLayer | AnyLinear | NestedModel | ListOf


def _kind_of(tp: Any, where: str) -> tuple[Kind, bool]:
    """Map an annotation to what fills it; the bool says whether it admits ``None``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        rest = [a for a in args if a is not type(None)]
        admits_none = len(rest) != len(args)
        if set(rest) == {nn.Linear, nn.QuantizedLinear}:
            return AnyLinear(), admits_none
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
        return ListOf(item_kind), False
    if tp is mx.array:
        return RawArray(), False
    if tp is nn.LinearLayer:
        return AnyLinear(), False
    if tp is nn.QuantizedLinear:
        # Declared quantized: always QuantizedLinear (a missing .scales is reported).
        return KnownLayer(QUANTIZED_MARKER), False
    if isinstance(tp, type) and tp in LAYERS:
        return KnownLayer(LAYERS[tp]), False
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return NestedModel(tp), False
    raise type_error(
        "load_weights",
        f"{where}: cannot fill a field of type {tp!r}; use mx.array, a layer class "
        f"({', '.join(s.label for s in LAYERS.values())}, QuantizedLinear), LinearLayer, "
        "a dataclass declared with weight(...), list[...] of those, or X | None.",
    )



@dataclasses.dataclass(frozen=True)
class FieldPlan:
    name: str
    spec: WeightSpec
    kind: Kind
    admits_none: bool


@functools.lru_cache(maxsize=256)
def fields_of(cls: type) -> tuple[FieldPlan, ...]:
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
        spec = f.metadata.get(FIELD_KEY)
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
        base = kind.item if isinstance(kind, ListOf) else kind
        if spec.kwargs and not isinstance(base, (KnownLayer, AnyLinear)):
            raise type_error(
                "load_weights",
                f"{where}: constructor arguments {sorted(spec.kwargs)} only apply to layers.",
            )
        if spec.dtype is not None and not isinstance(base, RawArray):
            raise type_error("load_weights", f"{where}: dtype= only applies to mx.array fields.")
        if spec.shape is not None and isinstance(base, NestedModel):
            raise type_error("load_weights", f"{where}: shape= does not apply to a nested model.")
        plans.append(FieldPlan(f.name, spec, kind, admits_none))
    return tuple(plans)

