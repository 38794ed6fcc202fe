"""An independent PyTorch twin of ``mlx_impl``: the same names and signatures over
``torch.Tensor``, reproducing MLX's conventions on purpose (SEMANTICS.md).

Every call also takes ``precision="native" | "float64"``: ``"native"`` computes in the
input dtype with MLX's rounding points, ``"float64"`` is the oracle. Never imports MLX.
"""

from torch_reference import fast, nn, quantization
from torch_reference._precision import PRECISIONS, Precision

__all__ = [
    "PRECISIONS",
    "Precision",
    "fast",
    "nn",
    "quantization",
]
__version__ = "0.1.0"
