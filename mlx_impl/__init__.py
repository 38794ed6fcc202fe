"""MLX implementations of the layers and fast ops of Ollama's MLX back ends.

Python API fixed by SPEC.md part D; ``torch_reference`` mirrors every public name.
This package never imports torch.
"""

from mlx_impl import fast, nn, quantization
from mlx_impl.loading import WeightLoadError, load_safetensors, load_weights, weight

__all__ = ["WeightLoadError", "fast", "load_safetensors", "load_weights", "nn", "quantization", "weight"]
__version__ = "0.1.0"
