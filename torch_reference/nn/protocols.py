"""Structural interfaces of the layer set (Ollama's ``nn.Layer`` and ``nn.LinearLayer``),
PyTorch twin of ``mlx_impl.nn.protocols``.

Ollama's Go code declares two interfaces so that a model can hold either a float
``Linear`` or a ``QuantizedLinear`` in the same field and swap them at load time.
Python expresses the same idea with :class:`typing.Protocol`: any object with the
right members satisfies the protocol, no inheritance needed.

Both protocols are ``runtime_checkable``, so ``isinstance(layer, LinearLayer)`` works.
Such a check is structural and shallow: it only tests that the members EXIST
(``__call__``; ``__call__`` and ``output_dim``), not their signatures or return types.
Every callable is therefore a :class:`Layer`; the check is a guard against plugging
in the wrong kind of object, not a proof of shape compatibility.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Layer(Protocol):
    """Anything called like a layer: ``layer(x, *, precision="native") -> torch.Tensor``
    (Go: ``Forward(x)``).

    Shape:
        Layer-specific; the protocol fixes only the call.

    Example:
        >>> import torch
        >>> from torch_reference.nn import Layer, Linear
        >>> isinstance(Linear(torch.ones(2, 3)), Layer)
        True
    """

    def __call__(self, x: torch.Tensor, *, precision: str = "native") -> torch.Tensor:
        """Apply the layer to ``x``."""
        ...


@runtime_checkable
class LinearLayer(Protocol):
    """A projection ``[..., in] -> [..., output_dim]`` that ``Linear`` and
    ``QuantizedLinear`` both satisfy, so a model can hold either one.

    Members:
        ``__call__(x, *, precision="native")``: ``x: [..., in] -> [..., output_dim]``.
        ``output_dim``: read-only property, the size of the last output axis
        (Go: ``OutputDim()``; ``weight.shape[0]`` for a float ``Linear``).

    Example:
        >>> import torch
        >>> from torch_reference.nn import Linear, LinearLayer
        >>> isinstance(Linear(torch.ones(2, 3)), LinearLayer)
        True
    """

    def __call__(self, x: torch.Tensor, *, precision: str = "native") -> torch.Tensor:
        """Project ``x: [..., in]`` to ``[..., output_dim]``."""
        ...

    @property
    def output_dim(self) -> int:
        """Size of the last axis of the output."""
        ...
