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
against the raw call: calling a module instance ~1-1.5 % (a plain function call ~0),
``x.dtype in FLOATING_DTYPES`` ~1.5 %, ``x.size`` ~0.7 %, an attribute read on the module
~1 %, a ``try`` nothing. These are many times what the same lines cost in a tight loop
(``x.dtype`` ~60 ns there, ~0.8 us here): after each evaluation the host's caches are cold
for the Python and nanobind paths the raw call does not take. Tried and not kept (each
within 0.5 %, the estimator's resolution): one ``==`` against a cached dtype in place of
the tuple, and the dtype and size tests after the kernel call instead of before it.

What a fast path reads per call is therefore kept as PRIVATE ITEMS of the module's dict,
each read with one dict subscript: settings (``"_eps"``, ``"_index_policy"``) set through
a :class:`CheckedItem` that checks the value (``layer.eps = -1`` raises as the constructor
does), and plans (:data:`PLAN`: the last checked call's answer, valid while the arrays it
was made for are still the module's and the input has the same shape and dtype), which
any attribute assignment drops (:class:`FastPathModule`). ``parameters()``,
``update()``, ``load_weights()``, ``set_dtype()`` and ``mx.compile(inputs=module.state)``
leave such items alone (tests/test_norms.py, tests/test_fast_path.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.nn

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

FAST_PATH_ERRORS = (AttributeError, LookupError, TypeError, ValueError)
"""What a layer's fast path turns into "take the checked path": a non-array input has no
``dtype`` (AttributeError) or is refused by nanobind (TypeError), a scalar has no last
dim (IndexError), a configuration attribute replaced by an array is no longer in the
instance dict (KeyError), and MLX's graph construction refuses a rank or a last dim it
cannot take (ValueError)."""


class CheckedItem:
    """A layer setting its fast path reads per call (``nn.RMSNorm.eps``), kept as the private
    item ``"_<name>"`` of the module's dict and checked by ``check`` whenever it is set. The
    class must derive from :class:`FastPathModule`, so that an array, a dict or a list
    assigned to it is checked too (``mlx.nn.Module.__setattr__`` would store those as items
    of their own, past the check)."""

    def __init__(self, check: Callable[[object], object]) -> None:
        self.check = check
        self.item = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.item = "_" + name

    def __get__(self, module: mlx.nn.Module | None, owner: type | None = None) -> Any:
        return self if module is None else module[self.item]

    def __set__(self, module: mlx.nn.Module, value: object) -> None:
        module[self.item] = self.check(value)


PLAN = "_plan"
"""The private item holding a layer's plan: what its last checked call found out (the
arrays it used, the input's shape and dtype, derived constants), so that a call with the
same arrays (an identity test) and an input of the same shape and dtype needs none of the
reads and checks again. Decode repeats one shape; a new shape or dtype takes the checked
path, which makes a new plan."""


class FastPathModule(mlx.nn.Module):
    """An ``mlx.nn.Module`` whose fast path reads private items (see the module docstring).

    A :class:`CheckedItem` setting is always set through its check, whatever the value's
    type. ANY attribute assignment or item change drops the layer's :data:`PLAN`: a new
    configuration must not meet an old plan, and a replaced array must not be kept alive by
    one (``update()``, ``load_weights()`` and ``set_dtype()`` replace arrays as dict items,
    past ``__setattr__``; a model reloaded in place would otherwise hold its old weights
    until each layer's next call). The fast paths still test the identity of the arrays
    they use, against a change made past both hooks (``dict.__setitem__``)."""

    def __setattr__(self, key: str, value: Any) -> None:
        self.pop(PLAN, None)
        if isinstance(getattr(type(self), key, None), CheckedItem):
            object.__setattr__(self, key, value)  # the descriptor's __set__: the check
        else:
            super().__setattr__(key, value)

    def __setitem__(self, key: str, value: Any) -> None:
        if key != PLAN:
            self.pop(PLAN, None)
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.pop(PLAN, None)
        super().__delitem__(key)
