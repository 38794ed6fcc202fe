"""GPT-OSS's mixture of experts: a top-k router and experts with a clamped SwiGLU.

transformers' ``GptOssMLP``: ``logits = router(x)`` (a Linear with bias), the top ``k``
logits are softmaxed into the token's weights, and each chosen expert ``e`` computes
``gate_up = x @ gate_up_proj[e] + gate_up_proj_bias[e]`` (``[H, 2I]``, NOT transposed),
``gate, up = gate_up[..., 0::2], gate_up[..., 1::2]`` (interleaved), ``gate`` clamped
above at ``limit``, ``up`` to ``[-limit, limit]``, ``(up + 1) * gate * sigmoid(alpha *
gate)``, then ``@ down_proj[e] + down_proj_bias[e]`` (``[I, H]``). Experts are picked per
token with ``mx.gather_mm`` (the seeds' ``MultiLinear`` applies every head to every token).
``mx.gather_mm`` on MLX 0.32.4's CPU takes float32 only ("[GatherMM::eval] Currently only
supports float32"): half inputs are widened exactly, multiplied with float32 accumulation
(what MLX's half matmuls do on the CPU) and rounded once to their dtype.

``routing``: an optional observer (None in use) that a conformance harness sets on the
module; each call hands it the router input ``[N, H]``, its logits ``[N, E]`` and the
chosen experts ``[N, k]``, and uses the experts it returns (the harness records both
sides' routers and, where a side picks other experts than the float64 oracle at a
near-tie, continues with the oracle's, as it teacher-forces tokens).
"""

from __future__ import annotations

from typing import Protocol

import mlx.core as mx
import mlx.nn

from mlx_impl.models.checkpoint import Weights
from mlx_impl.models.config import ModelArgs
from mlx_impl.models.points import Points, record_point


class RoutingObserver(Protocol):
    """``route(x [N, H], logits [N, E], experts [N, k]) -> experts [N, k]`` (same dtype):
    the router input, its logits, the chosen experts."""

    def route(self, x: mx.array, logits: mx.array, experts: mx.array) -> mx.array: ...


def _gather_mm(a: mx.array, b: mx.array, idx: mx.array) -> mx.array:
    """``a[n] @ b[idx[n, j]]``: ``a: [N, 1, 1, K]``, ``b: [E, K, M]``, ``idx: [N, k]``
    -> ``[N, k, 1, M]`` in a's dtype (float32 inside)."""
    if a.dtype == mx.float32 and b.dtype == mx.float32:
        return mx.gather_mm(a, b, rhs_indices=idx)
    out = mx.gather_mm(a.astype(mx.float32), b.astype(mx.float32), rhs_indices=idx)
    return out.astype(a.dtype)


class MixtureOfExperts(mlx.nn.Module):
    """``x: [B, L, H] -> [B, L, H]``: the weighted sum of the token's top-k experts."""

    def __init__(self, w: Weights, p: str, args: ModelArgs) -> None:
        super().__init__()
        if w.has(f"{p}.experts.gate_up_proj.scales") or w.has(f"{p}.experts.gate_up_proj_blocks"):
            raise ValueError(
                f"[models.load] {p}.experts: quantized experts are not supported (dense only)."
            )
        self.router = w.linear(f"{p}.router")
        self.gate_up_proj = w.take(f"{p}.experts.gate_up_proj")  # [E, H, 2I]
        self.gate_up_proj_bias = w.take(f"{p}.experts.gate_up_proj_bias")  # [E, 2I]
        self.down_proj = w.take(f"{p}.experts.down_proj")  # [E, I, H]
        self.down_proj_bias = w.take(f"{p}.experts.down_proj_bias")  # [E, H]
        self.top_k = args.num_experts_per_tok
        self.alpha = args.swiglu_alpha
        self.limit = args.swiglu_limit
        self.routing: RoutingObserver | None = None

    def select(self, logits: mx.array) -> mx.array:
        """The top-k experts of each row of ``logits: [N, E]`` -> ``[N, k]`` (any order). A
        method of its own so that a meta-test can plant a wrong choice (``router_picks_last``)."""
        k = self.top_k
        return mx.argpartition(-logits, kth=k - 1, axis=-1)[:, :k]

    def __call__(self, x: mx.array, points: Points | None = None) -> mx.array:
        shape = x.shape
        xf = x.reshape(-1, shape[-1])
        logits = self.router(xf)  # [N, E]
        idx = self.select(logits)  # [N, k], any order
        if self.routing is not None:
            idx = self.routing.route(xf, logits, idx)
        if points is None:
            return self.combine(xf, logits, idx).reshape(shape)
        record_point(points, "mlp.router", logits, x=xf)
        return record_point(points, "mlp.experts", self.combine(xf, logits, idx), x=xf, logits=logits,
                    experts=idx).reshape(shape)

    def combine(self, xf: mx.array, logits: mx.array, idx: mx.array) -> mx.array:
        """The chosen experts' weighted sum: ``xf [N, H]``, router ``logits [N, E]``, experts
        ``idx [N, k]`` -> ``[N, H]``."""
        weights = mx.softmax(mx.take_along_axis(logits, idx, axis=-1), axis=-1, precise=True)
        # [N, 1, 1, H] @ gate_up_proj[idx] -> [N, k, 1, 2I]
        gate_up = _gather_mm(xf[:, None, None, :], self.gate_up_proj, idx)
        gate_up = gate_up.squeeze(2) + self.gate_up_proj_bias[idx]
        gate, up = gate_up[..., 0::2], gate_up[..., 1::2]
        gate = mx.minimum(gate, self.limit)
        up = mx.clip(up, -self.limit, self.limit)
        h = (up + 1) * (gate * mx.sigmoid(gate * self.alpha))  # [N, k, I]
        out = _gather_mm(h[:, :, None, :], self.down_proj, idx).squeeze(2)
        out = out + self.down_proj_bias[idx]  # [N, k, H]
        return (out * weights[..., None].astype(out.dtype)).sum(axis=1)
