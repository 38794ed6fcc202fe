"""Conformance of the Flux 2 DiT blocks (double-stream and single-stream) against
diffusers' own blocks.

Random weights come from diffusers' ``Flux2TransformerBlock`` (its ``state_dict``, every
1-D parameter perturbed so the q/k norms are not constant), rounded to the test dtype;
the same rounded weights and inputs go to MLX (``mlx_impl.models.dit``), the twin in the
test dtype and the twin in float64 (the oracle). MLX is judged against the oracle with
the twin as reference (:func:`conformance.model.bounds.check_point`). diffusers' block,
in float64 on the same rounded weights with RoPE tables from its own ``Flux2PosEmbed``,
is the external anchor: it computes the RoPE rotation in float32 (``apply_rotary_emb``
casts to float), so it answers like a float32 computation, judged with the twin in
float32 as reference. In float64 (CPU back end) MLX is judged the same way, against the
twin in float32 as the precision probe (:mod:`conformance.model.bounds`: MLX's float64
fast norms and RoPE round to float32 inside).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np

from conformance.model.bounds import check_point
from conformance.model.checkpoints import QUANT_MODES


@dataclass(frozen=True)
class DitCase:
    """Block shape and input sizes: ``dim = heads * head_dim``; an ``H x W`` image grid
    after ``text_len`` text tokens."""

    dim: int = 64
    heads: int = 2
    head_dim: int = 32
    axes_dim: tuple[int, int, int, int] = (8, 8, 8, 8)
    theta: float = 2000.0
    batch: int = 1
    text_len: int = 5
    grid: tuple[int, int] = (3, 4)
    seed: int = 0
    block: str = "double"
    """``double`` (``Flux2TransformerBlock``) or ``single`` (``Flux2SingleTransformerBlock``)."""


def _diffusers_block(case: DitCase) -> Any:
    from diffusers.models.transformers.transformer_flux2 import (
        Flux2SingleTransformerBlock,
        Flux2TransformerBlock,
    )

    kind = Flux2TransformerBlock if case.block == "double" else Flux2SingleTransformerBlock
    return kind(case.dim, case.heads, case.head_dim, mlp_ratio=3.0, eps=1e-6)


def random_state(case: DitCase) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """diffusers' initial weights (1-D ones perturbed) and the block's inputs
    ``[image [B, H*W, dim], text [B, Lt, dim], mod_image [B, 6 dim], mod_text [B, 6 dim]]``
    (double) or ``[image, text, mod [B, 3 dim]]`` (single)."""
    import torch

    torch.manual_seed(case.seed)
    state = {k: v.detach().numpy().astype(np.float32) for k, v in _diffusers_block(case).state_dict().items()}
    rng = np.random.default_rng(case.seed)
    for k, v in state.items():
        if v.ndim == 1:
            state[k] = (1 + 0.2 * rng.standard_normal(v.shape)).astype(np.float32)
    h, w = case.grid
    inputs = [rng.standard_normal((case.batch, h * w, case.dim)),
              rng.standard_normal((case.batch, case.text_len, case.dim))]
    if case.block == "double":
        inputs += [0.5 * rng.standard_normal((case.batch, 6 * case.dim)) for _ in range(2)]
    else:
        inputs.append(0.5 * rng.standard_normal((case.batch, 3 * case.dim)))
    return state, [a.astype(np.float32) for a in inputs]


def _diffusers_float64(case: DitCase, state: dict[str, np.ndarray], inputs: list[np.ndarray]) -> list[np.ndarray]:
    import torch
    from diffusers.models.transformers.transformer_flux2 import Flux2PosEmbed

    block = _diffusers_block(case).double()
    block.load_state_dict({k: torch.from_numpy(v).double() for k, v in state.items()})
    h, w = case.grid
    one = torch.arange(1)
    # The Flux 2 pipeline's ids: text (0, 0, 0, l), image (0, h, w, 0).
    ids = torch.cat([torch.cartesian_prod(one, one, one, torch.arange(case.text_len)),
                     torch.cartesian_prod(one, torch.arange(h), torch.arange(w), one)])
    rotary = Flux2PosEmbed(int(case.theta), list(case.axes_dim))(ids)
    args = [torch.from_numpy(a).double() for a in inputs]
    with torch.no_grad():
        if case.block == "double":
            text, image = block(*args, image_rotary_emb=rotary)
        else:
            text, image = block(args[0], args[1], args[2], image_rotary_emb=rotary, split_hidden_states=True)
    return [text.numpy(), image.numpy()]


def run_dit(case: DitCase, dtype: str, quant: str | None = None, *,
            mlx_block_factory: Any = None) -> dict[str, Any]:
    """Run the block on all sides in ``dtype`` (projections quantized as ``quant``).

    ``mlx_block_factory``: replaces ``mlx_impl.models.dit.Flux2DoubleBlock`` (meta-tests
    plant a bug this way). Returns per-output checks and the anchor's, JSON-ready.
    """
    import mlx.core as mx
    import torch

    from conformance.dtypes import mlx_to_numpy, round_to, to_mlx, to_torch, torch_to_numpy
    from conformance.execute import backend_name, configure_peer_precision, peer_device
    from mlx_impl.models import dit as mlx_dit
    from torch_reference.models import dit as twin_dit

    if dtype == "float64" and quant is not None:
        raise ValueError("[run_dit] quantized layers take no float64.")
    state, inputs = random_state(case)
    quantization = QUANT_MODES[quant] if quant else None
    rounded = {k: round_to(v, dtype) for k, v in state.items()}
    ins = [round_to(a, dtype) for a in inputs]
    shape = (case.dim, case.heads, case.head_dim, case.axes_dim, case.theta)
    double = case.block == "double"
    factory = mlx_block_factory or (mlx_dit.Flux2DoubleBlock if double else mlx_dit.Flux2SingleBlock)
    twin_kind = twin_dit.Flux2DoubleBlock if double else twin_dit.Flux2SingleBlock
    m_block: Any = factory({k: to_mlx(v, dtype) for k, v in rounded.items()}, mlx_dit.Flux2BlockConfig(*shape),
                      quantization)
    # The peer computes where the op-level one does (CUDA tensors in a CUDA run, float32
    # matmuls at MLX's precision: TF32 where MLX_ENABLE_TF32 is on); the oracle on the CPU.
    backend = backend_name()
    device = peer_device(backend)
    configure_peer_precision(backend)
    t_block: Any = twin_kind({k: to_torch(v, dtype) for k, v in rounded.items()},
                             twin_dit.Flux2BlockConfig(*shape), quantization)
    # Quantized on the CPU once, then moved: the peer and the oracle hold the same codes.
    p_block: Any = copy.deepcopy(t_block).to(device)
    m_out = m_block(*[to_mlx(a, dtype) for a in ins], grid=case.grid)
    mx.eval(*m_out)
    t_ins = [to_torch(a, dtype) for a in ins]
    with torch.no_grad():
        peer = [t.cpu() for t in p_block(*[t.to(device) for t in t_ins], grid=case.grid)]
        oracle = t_block(*t_ins, grid=case.grid, precision="float64")
    result: dict[str, Any] = {"block": case.block, "dtype": dtype, "quant": quant, "outputs": {},
                              "anchor": None}
    peer32 = None
    if quant is None:
        # The twin in float32: the anchor's reference, and in float64 the precision probe
        # (conformance/model/bounds.py: MLX's float64 rounds to float32 inside its fast
        # norms and RoPE, so it answers like a partly-float32 computation).
        f32_block = twin_kind({k: to_torch(v, "float32") for k, v in rounded.items()},
                              twin_dit.Flux2BlockConfig(*shape))
        with torch.no_grad():
            peer32 = [t.numpy().astype(np.float64) for t in
                      f32_block(*[to_torch(a, "float32") for a in ins], grid=case.grid)]
    for i, (name, m, p, o) in enumerate(zip(("text", "image"), m_out, peer, oracle, strict=True)):
        probe = peer32[i] if dtype == "float64" and peer32 is not None else None
        check = check_point(mlx_to_numpy(m).astype(np.float64), torch_to_numpy(p).astype(np.float64),
                            o.numpy(), dtype, probe)
        result["outputs"][name] = {"passed": check.passed, "rel_err": check.rel_err,
                                   "twin_rel_err": check.peer_rel_err, "message": check.message}
    if peer32 is not None:
        # diffusers cannot hold MLX-quantized weights; its dense float64 block on the same
        # rounded weights is the anchor, referenced to the twin in float32.
        anchor = {}
        for name, d, p32, o in zip(("text", "image"), _diffusers_float64(case, rounded, ins), peer32, oracle,
                                   strict=True):
            check = check_point(d, p32, o.numpy(), "float32")
            anchor[name] = {"passed": check.passed, "rel_err": check.rel_err,
                            "twin32_rel_err": check.peer_rel_err, "message": check.message}
        result["anchor"] = anchor
    result["passed"] = all(v["passed"] for v in result["outputs"].values()) and (
        result["anchor"] is None or all(v["passed"] for v in result["anchor"].values()))
    return result
