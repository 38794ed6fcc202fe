"""The layers' plans (mlx_impl._fast_path.PLAN): a fast path answers from the plan of the
last checked call only while the layer is unchanged and the input has the same shape and
dtype. Every way of changing a layer (an attribute, ``update``, ``load_weights``,
``set_dtype``) must give what a freshly built layer gives, and no plan may keep a replaced
array alive."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from typing import Any

import mlx.core as mx
import numpy as np
import pytest

import mlx_impl
from mlx_impl._fast_path import PLAN, FastPathModule


def _normal(shape: tuple[int, ...], seed: int) -> mx.array:
    return mx.random.normal(shape, key=mx.random.key(seed))


def _qlinear(seed: int) -> Any:
    return mlx_impl.nn.QuantizedLinear.from_float(_normal((8, 128), seed), _normal((8,), seed + 1), 64, 4, "affine")


# name -> (make a layer from a seed, make an input, the array attribute to replace)
LAYERS: dict[str, tuple[Callable[[int], Any], Callable[[], mx.array], str]] = {
    "QuantizedLinear": (_qlinear, lambda: _normal((2, 128), 9), "scales"),
    "MultiLinear": (lambda s: mlx_impl.nn.MultiLinear(_normal((2, 4, 3), s)), lambda: _normal((1, 2, 5, 3), 9), "weight"),
    "nn.LayerNorm": (lambda s: mlx_impl.nn.LayerNorm(_normal((6,), s), _normal((6,), s + 1)), lambda: _normal((3, 6), 9),
                     "bias"),
    "Embedding": (lambda s: mlx_impl.nn.Embedding(_normal((7, 3), s)), lambda: mx.array([[6, 0, 2]]), "weight"),
}


def _same(a: mx.array, b: mx.array) -> bool:
    return a.dtype == b.dtype and np.array_equal(np.array(a.astype(mx.float32)), np.array(b.astype(mx.float32)))


@pytest.mark.parametrize("how", ["attribute", "update", "load_weights"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_a_replaced_array_is_used_and_not_kept(name: str, how: str) -> None:
    make, make_x, attr = LAYERS[name]
    layer, other, x = make(0), make(10), make_x()
    assert isinstance(layer, FastPathModule)
    layer(x)
    assert PLAN in layer  # the call made a plan
    old = weakref.ref(layer[attr])
    new = other[attr]
    if how == "attribute":
        setattr(layer, attr, new)
    elif how == "update":
        layer.update({attr: new})
    else:
        layer.load_weights([(attr, new)], strict=False)
    assert PLAN not in layer
    gc.collect()
    assert old() is None  # nothing holds the replaced array
    fresh = make(0)
    setattr(fresh, attr, new)
    assert _same(layer(x), fresh(x))


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_set_dtype_and_new_inputs_replan(name: str) -> None:
    make, make_x, _ = LAYERS[name]
    layer, x = make(0), make_x()
    layer(x)
    inputs = [x] if name == "Embedding" else [x, x.astype(mx.bfloat16), x[:1]]
    layer.set_dtype(mx.bfloat16)
    fresh = make(0)
    fresh.set_dtype(mx.bfloat16)
    for xi in inputs:
        assert _same(layer(xi), fresh(xi)), xi.shape


def test_rope_configuration_set_later_is_used() -> None:
    # RoPE's plan is its configuration: a base set after a call must be the one used.
    x = _normal((1, 2, 3, 8), 1)
    layer = mlx_impl.fast.RoPE(8, base=10000.0)
    layer(x, offset=5)
    layer.base = 500.0
    assert _same(layer(x, offset=5), mlx_impl.fast.RoPE(8, base=500.0)(x, offset=5))


def test_quantized_linear_bits_set_later_is_used() -> None:
    # A configuration attribute is not identity-tested per call: setting one must drop the
    # plan (here the new bits no longer fit x's width, so the layer must refuse x).
    layer = _qlinear(0)
    x = _normal((2, 128), 9)
    layer(x)
    layer.bits = 8
    with pytest.raises(ValueError, match=r"^\[QuantizedLinear\] input last dim must equal in_features 64"):
        layer(x)
