"""What the layers' per-call fast paths are made of (decode-size calls, where each ~100 ns
of Python counts).

How a fast path is written (``RMSNorm``, ``LayerNorm``, ``RoPE``, ``Embedding``,
``Linear``, ``MultiLinear``, ``QuantizedLinear``; ``scaled_dot_product_attention`` is a
function): one frame where it can be (``QuantizedLinear`` calls the one home of its back-end
guards, ``quantization._quantized_matmul``), no module attribute hook, and
only the tests MLX does not do itself before the kernel is called (a floating dtype where
MLX would promote an integer input, a non-empty input where MLX would hang or crash).
Anything the fast path does not take, or that MLX refuses, goes to the layer's checked
path, which raises the error in the layer's own words, in the original order of the
checks. Measured at decode on the CPU with ``conformance.bench.overhead.paired_ratio``
against the raw call: a Python frame costs ~1 %, ``x.dtype in FLOATING_DTYPES`` ~2 %,
``x.size`` ~0.7 %, a ``try`` nothing.
"""

from __future__ import annotations

item_of = dict.get
"""``item_of(module, "weight")``: a stored array, or ``None``, read as a dict item, with no
attribute lookup on the module at all. ``mlx.nn.Module`` defines ``__getattr__``, so EVERY
attribute read on a layer (even ``self.get``, and a hit in the instance dict) goes
through Python's slow ``__getattr__``-aware hook, which the interpreter cannot specialise:
measured at decode on the CPU (``conformance.bench.overhead.paired_ratio`` against the raw
``mx.fast.rms_norm``), a layer reading ``self.get("weight")`` cost 2.2 % and one reading
``dict.get(self, "weight")`` 1.3 %; ``self.weight`` (``Module.__getattr__``) cost 8 %.
``Module.__setattr__`` keeps an array in the module's items and anything else (a ``None``
bias) in the instance dict, so a ``None`` here means "look further"
(``mlx_impl.fast.norms.module_array``)."""

attribute_of = object.__getattribute__
"""``attribute_of(module, "eps")``: a plain attribute (instance dict or class), read
without the module's ``__getattr__`` hook (see :data:`item_of`); ``AttributeError`` if it
is not there (an array item is not: use :data:`item_of`)."""

FAST_PATH_ERRORS = (AttributeError, LookupError, TypeError, ValueError)
"""What a layer's fast path turns into "take the checked path": a non-array input has no
``dtype`` (AttributeError) or is refused by nanobind (TypeError), a scalar has no last
dim (IndexError), a configuration attribute replaced by an array is no longer in the
instance dict (KeyError), and MLX's graph construction refuses a rank or a last dim it
cannot take (ValueError)."""
