"""Model-level conformance: whole models (``mlx_impl.models``, or any candidate MLX port)
and the Flux 2 DiT block (``mlx_impl.models.dit``) against a float64 oracle (the twin, or
transformers' own model where the twin has no such architecture), with the originals
(transformers, mlx-lm, diffusers) as anchors. ``python -m conformance model CHECKPOINT_DIR``
runs it; :func:`judge` is the Python API:

    from conformance.model import judge, CandidateLoadError, OracleLoadError

    result = judge(checkpoint, candidate="my_port:load", dtype="float32")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conformance.model.errors import CandidateLoadError, OracleLoadError

if TYPE_CHECKING:
    from conformance.model.api import judge

__all__ = ["CandidateLoadError", "OracleLoadError", "judge"]


def __getattr__(name: str) -> Any:
    # judge imports torch, transformers and MLX: loaded on first use, so that importing a
    # submodule (the CLI's parser, the report) stays light.
    if name == "judge":
        from conformance.model.api import judge

        return judge
    raise AttributeError(f"module 'conformance.model' has no attribute {name!r}")
