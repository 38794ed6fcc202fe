"""The Layer and LinearLayer protocols: Linear and QuantizedLinear are interchangeable
LinearLayers in both packages; the runtime check is structural (members exist)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import torch

from mlx_impl.nn.embedding import Embedding as MxEmbedding
from mlx_impl.nn.linear import Linear as MxLinear
from mlx_impl.nn.linear import MultiLinear as MxMultiLinear
from mlx_impl.nn.protocols import Layer as MxLayer
from mlx_impl.nn.protocols import LinearLayer as MxLinearLayer
from mlx_impl.nn.quantized import QuantizedLinear as MxQuantizedLinear
from torch_reference.nn.embedding import Embedding as TorchEmbedding
from torch_reference.nn.linear import Linear as TorchLinear
from torch_reference.nn.linear import MultiLinear as TorchMultiLinear
from torch_reference.nn.protocols import Layer as TorchLayer
from torch_reference.nn.protocols import LinearLayer as TorchLinearLayer
from torch_reference.nn.quantized import QuantizedLinear as TorchQuantizedLinear

OUT, IN = 8, 64  # 64 = one affine group at the default group_size


def weights():
    rng = np.random.default_rng(0)
    return rng.standard_normal((OUT, IN)).astype(np.float32), rng.standard_normal(OUT).astype(
        np.float32
    )


def test_mlx_linear_and_quantized_linear_are_linear_layers():
    w, b = weights()
    linear = MxLinear(mx.array(w), mx.array(b))
    quantized = MxQuantizedLinear.from_float(mx.array(w), mx.array(b))
    for layer in (linear, quantized):
        assert isinstance(layer, MxLayer)
        assert isinstance(layer, MxLinearLayer)
        assert layer.output_dim == OUT


def test_torch_linear_and_quantized_linear_are_linear_layers():
    w, b = weights()
    linear = TorchLinear(torch.from_numpy(w), torch.from_numpy(b))
    quantized = TorchQuantizedLinear.from_float(torch.from_numpy(w), torch.from_numpy(b))
    for layer in (linear, quantized):
        assert isinstance(layer, TorchLayer)
        assert isinstance(layer, TorchLinearLayer)
        assert layer.output_dim == OUT


def test_mlx_to_quantized_returns_a_quantized_linear_that_keeps_the_bias():
    w, b = weights()
    q = MxLinear(mx.array(w), mx.array(b)).to_quantized(group_size=64, bits=4, mode="affine")
    assert isinstance(q, MxQuantizedLinear) and isinstance(q, MxLinearLayer)
    assert q.bias is not None and np.array_equal(np.array(q.bias), b)
    assert MxLinear(mx.array(w)).to_quantized().bias is None
    assert q.output_dim == OUT and q(mx.array(np.ones((2, IN), np.float32))).shape == (2, OUT)


def test_torch_to_quantized_returns_a_quantized_linear_that_keeps_the_bias():
    w, b = weights()
    q = TorchLinear(torch.from_numpy(w), torch.from_numpy(b)).to_quantized(
        group_size=64, bits=4, mode="affine"
    )
    assert isinstance(q, TorchQuantizedLinear) and isinstance(q, TorchLinearLayer)
    assert q.bias is not None and np.array_equal(q.bias.detach().numpy(), b)
    assert TorchLinear(torch.from_numpy(w)).to_quantized().bias is None
    assert q.output_dim == OUT and tuple(q(torch.ones(2, IN)).shape) == (2, OUT)


def test_a_model_can_swap_linear_for_quantized_linear():
    """What the protocol is for: code typed against LinearLayer takes either layer."""
    w, b = weights()

    def project(layer: MxLinearLayer, x: mx.array) -> mx.array:
        out = layer(x)
        assert out.shape[-1] == layer.output_dim
        return out

    x = mx.array(np.ones((3, IN), np.float32))
    dense = project(MxLinear(mx.array(w), mx.array(b)), x)
    quant = project(MxLinear(mx.array(w), mx.array(b)).to_quantized(), x)
    assert dense.shape == quant.shape == (3, OUT)


def test_other_layers_are_layers_but_not_linear_layers():
    """MultiLinear and Embedding are called like layers but have no output_dim."""
    mx_layers = [MxMultiLinear(mx.ones((2, 3, 4))), MxEmbedding(mx.ones((5, 2)))]
    torch_layers = [TorchMultiLinear(torch.ones(2, 3, 4)), TorchEmbedding(torch.ones(5, 2))]
    for layer in mx_layers:
        assert isinstance(layer, MxLayer) and not isinstance(layer, MxLinearLayer)
    for t_layer in torch_layers:
        assert isinstance(t_layer, TorchLayer) and not isinstance(t_layer, TorchLinearLayer)


def test_runtime_check_is_structural_and_shallow():
    """isinstance checks only that members exist: any object with __call__ and output_dim
    passes (signatures are not checked), and a non-callable does not."""

    class Duck:
        output_dim = 3

        def __call__(self, x):
            return x

    for layer_protocol, linear_protocol in (
        (MxLayer, MxLinearLayer),
        (TorchLayer, TorchLinearLayer),
    ):
        assert isinstance(Duck(), linear_protocol)
        assert isinstance(len, layer_protocol) and not isinstance(len, linear_protocol)
        assert not isinstance(object(), layer_protocol)
        assert not isinstance(3, linear_protocol)
