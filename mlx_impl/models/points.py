"""Named points inside the model, recorded on request (model conformance attributes a
departure to one op with them: ``conformance.model.attribution``)."""

from __future__ import annotations

import mlx.core as mx

Points = dict[str, tuple[mx.array, dict[str, object]]]
"""A recorder of named points (``Model(..., points={})``): op name -> (output, the op's
inputs by argument name). Names inside a layer are ``input_layernorm``,
``self_attn.{q,k,v,o}_proj``, ``self_attn.{q,k}_norm``, ``self_attn.{q,k}_rope``,
``self_attn.sdpa``, ``post_attn_norm``, ``attn_residual``, ``pre_mlp_norm``,
``mlp.{gate,up,gate_up,down}_proj``, ``mlp.act``, ``mlp.router``, ``mlp.experts``,
``post_mlp_norm``, ``mlp_residual`` (those the architecture has), prefixed ``layer {i} ``;
then ``norm`` and ``lm_head``. ``torch_reference.models`` records the same names."""


def record_point(points: Points, name: str, out: mx.array, **inputs: object) -> mx.array:
    """Store ``out`` and its op's ``inputs`` under ``name``; returns ``out``."""
    points[name] = (out, inputs)
    return out
