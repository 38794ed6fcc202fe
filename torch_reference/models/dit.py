"""The PyTorch twin of ``mlx_impl.models.dit``: a Flux 2 double-stream block
(diffusers ``Flux2TransformerBlock``) built from ``torch_reference``'s layers.

Same structure, names and conventions as the MLX module (read its docstring): modulated
LayerNorm with shift/scale/gate, per-head q/k RMSNorm, joint text + image attention with
Flux 2's RoPE over the axes ``(t, h, w, l)`` (1-D along the text, 2-D over the image grid,
interleaved pairs), SwiGLU MLPs. Every call takes ``precision="native"`` (the weights'
dtype, MLX's rounding points) or ``"float64"`` (the oracle: the same rounded weights and
inputs, computed in float64).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from torch_reference import fast, nn
from torch_reference._errors import value_error
from torch_reference._precision import check_precision, to_working
from torch_reference.quantization import dequantize

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
    """Shape and constants of one block; see ``mlx_impl.models.dit.Flux2BlockConfig``."""

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


def _projection(weights: Mapping[str, torch.Tensor], name: str,
                quantization: tuple[int, int, str] | None) -> nn.Linear | nn.QuantizedLinear:
    """``Linear`` from ``name.weight`` (+ ``name.bias``), quantized when asked."""
    layer = nn.Linear(weights[f"{name}.weight"], weights.get(f"{name}.bias"))
    if quantization is None:
        return layer
    group_size, bits, mode = quantization
    return layer.to_quantized(group_size=group_size, bits=bits, mode=mode)


def _quantized_float64(layer: nn.QuantizedLinear, x: torch.Tensor) -> torch.Tensor:
    """``x @ W.T (+ bias)`` in float64 with ``W`` the exact value of the stored codes.

    ``QuantizedLinear`` takes only a float32/float16/bfloat16 ``x`` (its float64 precision
    widens a native input); inside a float64 forward ``x`` is already float64.
    Shape: ``x: [..., in] -> [..., out]``.
    """
    w = dequantize(layer.weight, layer.scales, layer.biases, layer.group_size, layer.bits, layer.mode,
                   precision="float64")
    y = x.to(torch.float64) @ w.T
    return y if layer.bias is None else y + layer.bias.to(torch.float64)


def _silu(x: torch.Tensor) -> torch.Tensor:
    """``x * sigmoid(x)``, each op rounded in x's dtype (as the MLX block writes it)."""
    return x * torch.sigmoid(x)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float,
             precision: str) -> torch.Tensor:
    """Modulated LayerNorm ``LN(x) * (1 + scale) + shift``.

    Shape: ``x: [B, L, dim]``, ``shift, scale: [B, 1, dim]`` -> ``[B, L, dim]``.
    """
    return fast.layer_norm(x, None, None, eps, precision=precision) * (1 + scale) + shift


def flux2_rope(x: torch.Tensor, text_len: int, grid: tuple[int, int], axes_dim: Sequence[int],
               theta: float, precision: str) -> torch.Tensor:
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
    t_chunks = [text[..., bounds[i]:bounds[i + 1]] for i in range(4)]
    t_chunks[3] = fast.rope(t_chunks[3], axes_dim[3], traditional=True, base=theta, precision=precision)
    grid_x = image.reshape(b, heads, height, width, head_dim)
    i_chunks = [grid_x[..., bounds[i]:bounds[i + 1]] for i in range(4)]
    along_h = i_chunks[1].transpose(2, 3)
    i_chunks[1] = fast.rope(along_h, axes_dim[1], traditional=True, base=theta,
                            precision=precision).transpose(2, 3)
    i_chunks[2] = fast.rope(i_chunks[2], axes_dim[2], traditional=True, base=theta, precision=precision)
    image_out = torch.cat(i_chunks, dim=-1).reshape(b, heads, height * width, head_dim)
    return torch.cat([torch.cat(t_chunks, dim=-1), image_out], dim=2)


class Flux2DoubleBlock(torch.nn.Module):
    """Flux 2 double-stream block, the twin of ``mlx_impl.models.dit.Flux2DoubleBlock``.

    Args:
        weights: diffusers' ``state_dict`` names to tensors of the block's dtype.
        config: :class:`Flux2BlockConfig`.
        quantization: ``(group_size, bits, mode)`` to quantize every projection, or None.

    Shape:
        ``image: [B, H * W, dim]``, ``text: [B, Lt, dim]``, ``mod_image, mod_text:
        [B, 6 * dim]``, ``grid = (H, W)`` -> ``(text_out, image_out)``.
    """

    def __init__(self, weights: Mapping[str, torch.Tensor], config: Flux2BlockConfig,
                 quantization: tuple[int, int, str] | None = None) -> None:
        super().__init__()
        missing = [n for n in PROJECTIONS if f"{n}.weight" not in weights]
        missing += [n for n in QK_NORMS if f"{n}.weight" not in weights]
        if missing:
            raise value_error("Flux2DoubleBlock", f"missing weights {missing}.")
        self.config = config
        self.proj = torch.nn.ModuleDict({n.replace(".", "_"): _projection(weights, n, quantization)
                                         for n in PROJECTIONS})
        self.qk_norm = torch.nn.ModuleDict({n.replace(".", "_"): nn.RMSNorm(weights[f"{n}.weight"],
                                                                            eps=config.eps)
                                            for n in QK_NORMS})

    def _p(self, name: str, x: torch.Tensor, precision: str) -> torch.Tensor:
        layer = self.proj[name.replace(".", "_")]
        if precision == "float64" and isinstance(layer, nn.QuantizedLinear):
            return _quantized_float64(layer, x)
        return layer(x, precision=precision)

    def _n(self, name: str, x: torch.Tensor, precision: str) -> torch.Tensor:
        return self.qk_norm[name.replace(".", "_")](x, precision=precision)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, L, dim] -> [B, heads, L, head_dim]``."""
        b, length, _ = x.shape
        return x.reshape(b, length, self.config.num_heads, self.config.head_dim).transpose(1, 2)

    def _mlp(self, prefix: str, x: torch.Tensor, precision: str) -> torch.Tensor:
        hidden = self._p(f"{prefix}.linear_in", x, precision)
        half = hidden.shape[-1] // 2
        return self._p(f"{prefix}.linear_out", _silu(hidden[..., :half]) * hidden[..., half:], precision)

    def forward(self, image: torch.Tensor, text: torch.Tensor, mod_image: torch.Tensor,
                mod_text: torch.Tensor, grid: tuple[int, int], *,
                precision: str = "native") -> tuple[torch.Tensor, torch.Tensor]:
        """Run the block; see the class docstring for shapes."""
        check_precision("Flux2DoubleBlock", precision)
        cfg = self.config
        if image.shape[1] != grid[0] * grid[1]:
            raise value_error("Flux2DoubleBlock", f"image must have H * W = {grid[0] * grid[1]} "
                              f"tokens but got {image.shape[1]}.")
        for name, mod in (("mod_image", mod_image), ("mod_text", mod_text)):
            if mod.ndim != 2 or mod.shape[-1] != 6 * cfg.dim:
                raise value_error("Flux2DoubleBlock",
                                  f"{name} must be [B, {6 * cfg.dim}] but got {tuple(mod.shape)}.")
        widened = [to_working(t, precision) for t in (image, text, mod_image, mod_text)]
        image, text, mod_image, mod_text = (t for t in widened if t is not None)
        m_img = torch.chunk(mod_image[:, None, :], 6, dim=-1)
        m_txt = torch.chunk(mod_text[:, None, :], 6, dim=-1)
        norm_img = modulate(image, m_img[0], m_img[1], cfg.eps, precision)
        norm_txt = modulate(text, m_txt[0], m_txt[1], cfg.eps, precision)

        def qkv(x: torch.Tensor, q: str, k: str, v: str, nq: str, nk: str) -> tuple[torch.Tensor, ...]:
            return (self._n(nq, self._heads(self._p(q, x, precision)), precision),
                    self._n(nk, self._heads(self._p(k, x, precision)), precision),
                    self._heads(self._p(v, x, precision)))

        qi, ki, vi = qkv(norm_img, "attn.to_q", "attn.to_k", "attn.to_v", "attn.norm_q", "attn.norm_k")
        qt, kt, vt = qkv(norm_txt, "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
                         "attn.norm_added_q", "attn.norm_added_k")
        text_len = text.shape[1]
        q = flux2_rope(torch.cat([qt, qi], dim=2), text_len, grid, cfg.axes_dim, cfg.theta, precision)
        k = flux2_rope(torch.cat([kt, ki], dim=2), text_len, grid, cfg.axes_dim, cfg.theta, precision)
        v = torch.cat([vt, vi], dim=2)
        attn = fast.scaled_dot_product_attention(q, k, v, scale=cfg.head_dim ** -0.5, precision=precision)
        b, _, length, _ = attn.shape
        attn = attn.transpose(1, 2).reshape(b, length, cfg.dim)
        attn_txt = self._p("attn.to_add_out", attn[:, :text_len], precision)
        attn_img = self._p("attn.to_out.0", attn[:, text_len:], precision)

        image = image + m_img[2] * attn_img
        image = image + m_img[5] * self._mlp("ff", modulate(image, m_img[3], m_img[4], cfg.eps, precision),
                                             precision)
        text = text + m_txt[2] * attn_txt
        text = text + m_txt[5] * self._mlp("ff_context",
                                           modulate(text, m_txt[3], m_txt[4], cfg.eps, precision), precision)
        if text.dtype == torch.float16:
            text = text.clip(-65504, 65504)
        return text, image


SINGLE_WEIGHTS = ("attn.to_qkv_mlp_proj", "attn.to_out", "attn.norm_q", "attn.norm_k")
"""The single-stream block's weights, by their diffusers names."""


class Flux2SingleBlock(torch.nn.Module):
    """Flux 2 single-stream block, the twin of ``mlx_impl.models.dit.Flux2SingleBlock``.

    Shape:
        ``image: [B, H * W, dim]``, ``text: [B, Lt, dim]``, ``mod: [B, 3 * dim]``,
        ``grid = (H, W)`` -> ``(text_out, image_out)``.
    """

    def __init__(self, weights: Mapping[str, torch.Tensor], config: Flux2BlockConfig,
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

    def _project(self, layer: torch.nn.Module, x: torch.Tensor, precision: str) -> torch.Tensor:
        if precision == "float64" and isinstance(layer, nn.QuantizedLinear):
            return _quantized_float64(layer, x)
        return layer(x, precision=precision)

    def forward(self, image: torch.Tensor, text: torch.Tensor, mod: torch.Tensor, grid: tuple[int, int], *,
                precision: str = "native") -> tuple[torch.Tensor, torch.Tensor]:
        """Run the block; see the class docstring for shapes."""
        check_precision("Flux2SingleBlock", precision)
        cfg = self.config
        if image.shape[1] != grid[0] * grid[1]:
            raise value_error("Flux2SingleBlock", f"image must have H * W = {grid[0] * grid[1]} "
                              f"tokens but got {image.shape[1]}.")
        if mod.ndim != 2 or mod.shape[-1] != 3 * cfg.dim:
            raise value_error("Flux2SingleBlock", f"mod must be [B, {3 * cfg.dim}] but got {tuple(mod.shape)}.")
        widened = [to_working(t, precision) for t in (image, text, mod)]
        image, text, mod = (t for t in widened if t is not None)
        text_len = text.shape[1]
        x = torch.cat([text, image], dim=1)
        shift, scale, gate = torch.chunk(mod[:, None, :], 3, dim=-1)
        fused = self._project(self.qkv_mlp, modulate(x, shift, scale, cfg.eps, precision), precision)
        b, length, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, length, cfg.num_heads, cfg.head_dim).transpose(1, 2)

        q, k, v = (heads(fused[..., i * cfg.dim:(i + 1) * cfg.dim]) for i in range(3))
        q = flux2_rope(self.norm_q(q, precision=precision), text_len, grid, cfg.axes_dim, cfg.theta, precision)
        k = flux2_rope(self.norm_k(k, precision=precision), text_len, grid, cfg.axes_dim, cfg.theta, precision)
        attn = fast.scaled_dot_product_attention(q, k, v, scale=cfg.head_dim ** -0.5, precision=precision)
        attn = attn.transpose(1, 2).reshape(b, length, cfg.dim)
        mlp_in = fused[..., 3 * cfg.dim:]
        half = mlp_in.shape[-1] // 2
        mlp = _silu(mlp_in[..., :half]) * mlp_in[..., half:]
        x = x + gate * self._project(self.out, torch.cat([attn, mlp], dim=-1), precision)
        if x.dtype == torch.float16:
            x = x.clip(-65504, 65504)
        return x[:, :text_len], x[:, text_len:]
