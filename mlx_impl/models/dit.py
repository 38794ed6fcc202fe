"""A Flux 2 double-stream diffusion-transformer block, built from this project's layers.

The block is diffusers' ``Flux2TransformerBlock`` (diffusers 0.42.1,
``models/transformers/transformer_flux2.py``), read for the facts and rebuilt here:

* two streams, image tokens ``[B, Li, dim]`` and text tokens ``[B, Lt, dim]``, each with
  its own projections, norms and MLP;
* modulated LayerNorm: ``LN(x) * (1 + scale) + shift`` with a LayerNorm without weight or
  bias (``fast.layer_norm(x, None, None, eps)``), and gated residuals ``x + gate * f(.)``;
  the six modulation vectors per stream (shift/scale/gate for attention, then for the MLP)
  come in as ``mod [B, 6 * dim]``, as diffusers' block takes ``temb_mod_img`` /
  ``temb_mod_txt``;
* joint attention: per-head RMSNorm of q and k (``nn.RMSNorm`` over ``head_dim``), text
  tokens first then image tokens in one sequence, RoPE, one ``fast.scaled_dot_product_attention``
  without a mask, then the output split back into the streams (``to_add_out`` for text,
  ``to_out.0`` for image);
* RoPE over Flux 2's four position axes ``(t, h, w, l)``: head_dim splits into
  ``axes_dim`` chunks, each rotated with interleaved pairs (``traditional=True``) at
  ``base=theta``. Text token ``l`` sits at ``(0, 0, 0, l)``, image token ``(h, w)`` of an
  ``H x W`` latent grid at ``(0, h, w, 0)``. A zero position is the identity, so text
  rotates only its ``l`` chunk (a 1-D RoPE along the text) and image tokens only their
  ``h`` and ``w`` chunks: a 2-D RoPE, applied with ``fast.rope`` along each grid axis;
* SwiGLU MLP: ``linear_out(silu(a) * b)`` with ``[a, b] = linear_in(x)`` split in halves.

``MultiLinear`` does not fit this block: every projection is a full ``dim -> dim`` matrix
shared by all heads, not a per-head weight. Each projection may be quantized (any mode of
``mlx_impl.quantization``) as an MLX checkpoint would ship it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn

from mlx_impl import fast, nn
from mlx_impl._errors import value_error

PROJECTIONS = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    "ff.linear_in", "ff.linear_out", "ff_context.linear_in", "ff_context.linear_out",
)
"""The block's projections, by their diffusers state_dict names (``.weight``, optional ``.bias``)."""

QK_NORMS = ("attn.norm_q", "attn.norm_k", "attn.norm_added_q", "attn.norm_added_k")
"""The per-head q/k RMSNorm weights, by their diffusers names."""


@dataclass(frozen=True)
class Flux2BlockConfig:
    """Shape and constants of one block (diffusers' constructor arguments).

    Args:
        dim: model width; ``num_heads * head_dim`` (diffusers builds it so).
        num_heads, head_dim: attention heads and their width.
        axes_dim: RoPE chunk widths for the axes ``(t, h, w, l)``; they sum to head_dim,
            each even.
        theta: RoPE base (Flux 2 uses 2000).
        eps: LayerNorm and q/k RMSNorm eps (diffusers' block default 1e-6).
    """

    dim: int
    num_heads: int
    head_dim: int
    axes_dim: tuple[int, int, int, int]
    theta: float = 2000.0
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.num_heads * self.head_dim != self.dim:
            raise value_error("Flux2BlockConfig", f"num_heads * head_dim must equal dim {self.dim} "
                              f"but got {self.num_heads} * {self.head_dim}.")
        if len(self.axes_dim) != 4 or sum(self.axes_dim) != self.head_dim or any(a % 2 for a in self.axes_dim):
            raise value_error("Flux2BlockConfig", f"axes_dim must be 4 even widths summing to head_dim "
                              f"{self.head_dim} but got {self.axes_dim}.")


def _projection(weights: Mapping[str, mx.array], name: str,
                quantization: tuple[int, int, str] | None) -> nn.Linear | nn.QuantizedLinear:
    """``Linear`` from ``name.weight`` (+ ``name.bias``), quantized when asked."""
    layer = nn.Linear(weights[f"{name}.weight"], weights.get(f"{name}.bias"))
    if quantization is None:
        return layer
    group_size, bits, mode = quantization
    return layer.to_quantized(group_size=group_size, bits=bits, mode=mode)


def _silu(x: mx.array) -> mx.array:
    """``x * sigmoid(x)`` in x's dtype (diffusers' ``nn.SiLU``)."""
    return x * mx.sigmoid(x)


def modulate(x: mx.array, shift: mx.array, scale: mx.array, eps: float) -> mx.array:
    """Modulated LayerNorm ``LN(x) * (1 + scale) + shift``.

    Shape: ``x: [B, L, dim]``, ``shift, scale: [B, 1, dim]`` -> ``[B, L, dim]``.
    """
    return fast.layer_norm(x, None, None, eps) * (1 + scale) + shift


def flux2_rope(x: mx.array, text_len: int, grid: tuple[int, int], axes_dim: Sequence[int],
               theta: float) -> mx.array:
    """Flux 2 RoPE of queries or keys laid out text first, then the image grid row-major.

    Shape: ``x: [B, heads, text_len + H * W, head_dim] -> same``.
    """
    b, heads, length, head_dim = x.shape
    height, width = grid
    if length != text_len + height * width:
        raise value_error("flux2_rope", f"sequence length must be text_len + H * W = "
                          f"{text_len + height * width} but got {length}.")
    bounds = [0]
    for a in axes_dim:
        bounds.append(bounds[-1] + a)
    text, image = x[:, :, :text_len], x[:, :, text_len:]
    # Text: positions (0, 0, 0, l); only the l chunk turns.
    t_chunks = [text[..., bounds[i]:bounds[i + 1]] for i in range(4)]
    t_chunks[3] = fast.rope(t_chunks[3], axes_dim[3], traditional=True, base=theta)
    # Image: positions (0, h, w, 0) on an H x W grid.
    grid_x = image.reshape(b, heads, height, width, head_dim)
    i_chunks = [grid_x[..., bounds[i]:bounds[i + 1]] for i in range(4)]
    along_h = i_chunks[1].transpose(0, 1, 3, 2, 4)  # the h axis next to the feature axis
    i_chunks[1] = fast.rope(along_h, axes_dim[1], traditional=True, base=theta).transpose(0, 1, 3, 2, 4)
    i_chunks[2] = fast.rope(i_chunks[2], axes_dim[2], traditional=True, base=theta)
    image_out = mx.concatenate(i_chunks, axis=-1).reshape(b, heads, height * width, head_dim)
    return mx.concatenate([mx.concatenate(t_chunks, axis=-1), image_out], axis=2)


class Flux2DoubleBlock(mlx.nn.Module):
    """Flux 2 double-stream block (diffusers ``Flux2TransformerBlock``); see the module docstring.

    Args:
        weights: diffusers' ``state_dict`` names (:data:`PROJECTIONS`, :data:`QK_NORMS`)
            to MLX arrays of the block's dtype.
        config: :class:`Flux2BlockConfig`.
        quantization: ``(group_size, bits, mode)`` to quantize every projection, or None.

    Shape:
        ``image: [B, H * W, dim]``, ``text: [B, Lt, dim]``, ``mod_image, mod_text:
        [B, 6 * dim]`` (shift, scale, gate for attention, then for the MLP), ``grid = (H, W)``
        -> ``(text_out [B, Lt, dim], image_out [B, H * W, dim])``, diffusers' order.
    """

    def __init__(self, weights: Mapping[str, mx.array], config: Flux2BlockConfig,
                 quantization: tuple[int, int, str] | None = None) -> None:
        super().__init__()
        missing = [n for n in PROJECTIONS if f"{n}.weight" not in weights]
        missing += [n for n in QK_NORMS if f"{n}.weight" not in weights]
        if missing:
            raise value_error("Flux2DoubleBlock", f"missing weights {missing}.")
        self.config = config
        self.proj = {n: _projection(weights, n, quantization) for n in PROJECTIONS}
        self.qk_norm = {n: nn.RMSNorm(weights[f"{n}.weight"], eps=config.eps) for n in QK_NORMS}

    def _heads(self, x: mx.array) -> mx.array:
        """``[B, L, dim] -> [B, heads, L, head_dim]``."""
        b, length, _ = x.shape
        return x.reshape(b, length, self.config.num_heads, self.config.head_dim).transpose(0, 2, 1, 3)

    def _mlp(self, prefix: str, x: mx.array) -> mx.array:
        hidden = self.proj[f"{prefix}.linear_in"](x)
        half = hidden.shape[-1] // 2
        return self.proj[f"{prefix}.linear_out"](_silu(hidden[..., :half]) * hidden[..., half:])

    def __call__(self, image: mx.array, text: mx.array, mod_image: mx.array, mod_text: mx.array,
                 grid: tuple[int, int]) -> tuple[mx.array, mx.array]:
        """Run the block; see the class docstring for shapes."""
        cfg = self.config
        if image.shape[1] != grid[0] * grid[1]:
            raise value_error("Flux2DoubleBlock", f"image must have H * W = {grid[0] * grid[1]} "
                              f"tokens but got {image.shape[1]}.")
        for name, mod in (("mod_image", mod_image), ("mod_text", mod_text)):
            if mod.ndim != 2 or mod.shape[-1] != 6 * cfg.dim:
                raise value_error("Flux2DoubleBlock", f"{name} must be [B, {6 * cfg.dim}] but got {mod.shape}.")
        # [B, 6 dim] -> six [B, 1, dim] vectors, diffusers' Flux2Modulation.split order.
        m_img = mx.split(mod_image[:, None, :], 6, axis=-1)
        m_txt = mx.split(mod_text[:, None, :], 6, axis=-1)
        norm_img = modulate(image, m_img[0], m_img[1], cfg.eps)
        norm_txt = modulate(text, m_txt[0], m_txt[1], cfg.eps)

        def qkv(x: mx.array, q: str, k: str, v: str, nq: str, nk: str) -> tuple[mx.array, ...]:
            return (self.qk_norm[nq](self._heads(self.proj[q](x))),
                    self.qk_norm[nk](self._heads(self.proj[k](x))),
                    self._heads(self.proj[v](x)))

        qi, ki, vi = qkv(norm_img, "attn.to_q", "attn.to_k", "attn.to_v", "attn.norm_q", "attn.norm_k")
        qt, kt, vt = qkv(norm_txt, "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
                         "attn.norm_added_q", "attn.norm_added_k")
        text_len = text.shape[1]
        q = flux2_rope(mx.concatenate([qt, qi], axis=2), text_len, grid, cfg.axes_dim, cfg.theta)
        k = flux2_rope(mx.concatenate([kt, ki], axis=2), text_len, grid, cfg.axes_dim, cfg.theta)
        v = mx.concatenate([vt, vi], axis=2)
        attn = fast.scaled_dot_product_attention(q, k, v, scale=cfg.head_dim ** -0.5)
        b, _, length, _ = attn.shape
        attn = attn.transpose(0, 2, 1, 3).reshape(b, length, cfg.dim)
        attn_txt = self.proj["attn.to_add_out"](attn[:, :text_len])
        attn_img = self.proj["attn.to_out.0"](attn[:, text_len:])

        image = image + m_img[2] * attn_img
        image = image + m_img[5] * self._mlp("ff", modulate(image, m_img[3], m_img[4], cfg.eps))
        text = text + m_txt[2] * attn_txt
        text = text + m_txt[5] * self._mlp("ff_context", modulate(text, m_txt[3], m_txt[4], cfg.eps))
        if text.dtype == mx.float16:
            # diffusers clips the text stream to float16's finite range (its overflow guard).
            text = mx.clip(text, -65504, 65504)
        return text, image


SINGLE_WEIGHTS = ("attn.to_qkv_mlp_proj", "attn.to_out", "attn.norm_q", "attn.norm_k")
"""The single-stream block's weights, by their diffusers names."""


class Flux2SingleBlock(mlx.nn.Module):
    """Flux 2 single-stream ("parallel") block (diffusers ``Flux2SingleTransformerBlock``).

    Text and image tokens in ONE stream: a modulated LayerNorm, then one fused projection
    ``to_qkv_mlp_proj`` whose output splits into q, k, v (``3 * dim``) and the SwiGLU MLP's
    input (``2 * mlp_hidden``); attention (per-head q/k RMSNorm, Flux 2 RoPE, no mask) and
    the MLP run side by side and their outputs, concatenated, go through one fused
    ``to_out``; a gated residual closes the block.

    Args:
        weights: diffusers' ``state_dict`` names (:data:`SINGLE_WEIGHTS` + ``.weight``).
        config: :class:`Flux2BlockConfig`.
        quantization: ``(group_size, bits, mode)`` for both projections, or None.

    Shape:
        ``image: [B, H * W, dim]``, ``text: [B, Lt, dim]``, ``mod: [B, 3 * dim]`` (shift,
        scale, gate), ``grid = (H, W)`` -> ``(text_out [B, Lt, dim], image_out [B, H * W, dim])``
        (diffusers' ``split_hidden_states=True``).
    """

    def __init__(self, weights: Mapping[str, mx.array], config: Flux2BlockConfig,
                 quantization: tuple[int, int, str] | None = None) -> None:
        super().__init__()
        missing = [n for n in SINGLE_WEIGHTS if f"{n}.weight" not in weights]
        if missing:
            raise value_error("Flux2SingleBlock", f"missing weights {missing}.")
        self.config = config
        self.qkv_mlp = _projection(weights, "attn.to_qkv_mlp_proj", quantization)
        self.out = _projection(weights, "attn.to_out", quantization)
        self.norm_q = nn.RMSNorm(weights["attn.norm_q.weight"], eps=config.eps)
        self.norm_k = nn.RMSNorm(weights["attn.norm_k.weight"], eps=config.eps)

    def __call__(self, image: mx.array, text: mx.array, mod: mx.array,
                 grid: tuple[int, int]) -> tuple[mx.array, mx.array]:
        """Run the block; see the class docstring for shapes."""
        cfg = self.config
        if image.shape[1] != grid[0] * grid[1]:
            raise value_error("Flux2SingleBlock", f"image must have H * W = {grid[0] * grid[1]} "
                              f"tokens but got {image.shape[1]}.")
        if mod.ndim != 2 or mod.shape[-1] != 3 * cfg.dim:
            raise value_error("Flux2SingleBlock", f"mod must be [B, {3 * cfg.dim}] but got {mod.shape}.")
        text_len = text.shape[1]
        x = mx.concatenate([text, image], axis=1)
        shift, scale, gate = mx.split(mod[:, None, :], 3, axis=-1)
        fused = self.qkv_mlp(modulate(x, shift, scale, cfg.eps))
        b, length, _ = x.shape

        def heads(t: mx.array) -> mx.array:
            return t.reshape(b, length, cfg.num_heads, cfg.head_dim).transpose(0, 2, 1, 3)

        q, k, v = (heads(fused[..., i * cfg.dim:(i + 1) * cfg.dim]) for i in range(3))
        q = flux2_rope(self.norm_q(q), text_len, grid, cfg.axes_dim, cfg.theta)
        k = flux2_rope(self.norm_k(k), text_len, grid, cfg.axes_dim, cfg.theta)
        attn = fast.scaled_dot_product_attention(q, k, v, scale=cfg.head_dim ** -0.5)
        attn = attn.transpose(0, 2, 1, 3).reshape(b, length, cfg.dim)
        mlp_in = fused[..., 3 * cfg.dim:]
        half = mlp_in.shape[-1] // 2
        mlp = _silu(mlp_in[..., :half]) * mlp_in[..., half:]
        x = x + gate * self.out(mx.concatenate([attn, mlp], axis=-1))
        if x.dtype == mx.float16:
            x = mx.clip(x, -65504, 65504)
        return x[:, :text_len], x[:, text_len:]
