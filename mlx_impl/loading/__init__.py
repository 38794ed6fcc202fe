"""Weight loading: fill declared models from safetensors checkpoints (Ollama's ``weight`` tags).

Ollama's Go loader fills model structs from safetensors by struct tags
``weight:"path[,optional]"``: each field's path suffix is appended to a dotted prefix,
nested structs recurse, slices are filled from ``.0``, ``.1``, ... and one error lists every
missing weight at once. This package is the Python take on it:

* :func:`weight` declares a field of a :func:`dataclasses.dataclass` model: its checkpoint
  path suffix, whether it may be missing, extra constructor arguments for its layer
  (:mod:`~mlx_impl.loading.declarations`).
* :func:`load_weights` builds a NEW model of a declared type from a mapping of arrays or from
  ``.safetensors`` files (:mod:`~mlx_impl.loading.declared`, with the per-layer rules of
  :mod:`~mlx_impl.loading.layer_rules`). Every problem (missing, unexpected, mis-shaped or
  mistyped tensors, a quantized checkpoint without a quantization) is collected first and
  raised as ONE :class:`WeightLoadError` (:mod:`~mlx_impl.loading.errors`); no model object
  exists until everything checked out, so a half-filled model is never handed out.
* :func:`load_safetensors` and :func:`save_safetensors` (:mod:`~mlx_impl.loading.safetensors_io`)
  go through the libraries made for the format: the ``safetensors`` package validates every
  header and offset before a byte is read (and writes files), ``mx.load`` reads the bytes;
  writes are atomic. No pickle is ever involved, so a pickle renamed ``.safetensors`` is
  rejected as a malformed header, never executed.
"""

from mlx_impl.loading.declarations import weight
from mlx_impl.loading.declared import Quantization, load_weights
from mlx_impl.loading.errors import WeightLoadError
from mlx_impl.loading.safetensors_io import PathLike, load_safetensors, save_safetensors

__all__ = [
    "PathLike",
    "Quantization",
    "WeightLoadError",
    "load_safetensors",
    "load_weights",
    "save_safetensors",
    "weight",
]

# doctest.testmod(mlx_impl.loading) runs the examples of the public functions, which live
# in the submodules (doctest only looks at objects defined in the module it is given).
__test__ = {
    "weight": weight,
    "load_weights": load_weights,
    "load_safetensors": load_safetensors,
    "save_safetensors": save_safetensors,
}
