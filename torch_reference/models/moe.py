"""GPT-OSS's mixture of experts: the twin of ``mlx_impl.models.moe`` (see there for the
formula). Each token's chosen experts' matrices are gathered (``W[idx]``) and multiplied;
half inputs accumulate in float32 as MLX's CPU matmuls do; ``precision="float64"``
computes everything in float64. ``routing``: the observer hook of the MLX twin (router
logits and chosen experts to a conformance harness, which may replace the choice).
"""

from __future__ import annotations

from typing import Protocol

import torch

from torch_reference.models.checkpoint import Weights
from torch_reference.models.config import ModelArgs
from torch_reference.models.points import Points, record_point


class RoutingObserver(Protocol):
    """``route(x [N, H], logits [N, E], experts [N, k]) -> experts [N, k]``."""

    def route(self, x: torch.Tensor, logits: torch.Tensor, experts: torch.Tensor) -> torch.Tensor: ...


def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.dtype in (torch.float16, torch.bfloat16):
        return (a.float() @ b.float()).to(a.dtype)
    return a @ b


class MixtureOfExperts(torch.nn.Module):
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

    def forward(self, x: torch.Tensor, precision: str, points: Points | None = None) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        logits = self.router(x2, precision=precision)  # [N, E]
        work = torch.float64 if precision == "float64" else logits.dtype
        xf = x2.to(work)
        _, idx = torch.topk(logits, self.top_k, dim=-1)  # [N, k]
        if self.routing is not None:
            idx = self.routing.route(xf, logits, idx)
        y = self.combine(xf, logits, idx, precision)
        if points is not None:
            record_point(points, "mlp.router", logits, x=x2)
            record_point(points, "mlp.experts", y, x=x2, logits=logits, experts=idx)
        return y.reshape(*shape[:-1], y.shape[-1])

    def combine(self, xf: torch.Tensor, logits: torch.Tensor, idx: torch.Tensor, precision: str) -> torch.Tensor:
        """The chosen experts' weighted sum: ``xf [N, H]``, router ``logits [N, E]``, experts
        ``idx [N, k]`` -> ``[N, H]`` (xf in the working dtype: float64 for the oracle)."""
        work = torch.float64 if precision == "float64" else logits.dtype
        xf = xf.to(work)
        top = torch.gather(logits, -1, idx)
        acc = torch.float64 if precision == "float64" else torch.float32
        weights = torch.softmax(top.to(acc), dim=-1).to(work)
        gate_up = _matmul(xf[:, None, None, :], self.gate_up_proj.to(work)[idx]).squeeze(2)
        gate_up = gate_up + self.gate_up_proj_bias.to(work)[idx]
        gate, up = gate_up[..., 0::2], gate_up[..., 1::2]
        gate = gate.clamp(max=self.limit)
        up = up.clamp(-self.limit, self.limit)
        h = (up + 1) * (gate * torch.sigmoid(gate * self.alpha))
        out = _matmul(h[:, :, None, :], self.down_proj.to(work)[idx]).squeeze(2)
        out = out + self.down_proj_bias.to(work)[idx]
        return (out * weights[..., None]).sum(dim=1)
