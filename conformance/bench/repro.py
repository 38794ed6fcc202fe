"""Standalone reproducers for the report's "MLX itself far from PyTorch" list: a script
that needs only ``mlx``, ``torch`` and NumPy (no project code), times the raw MLX op and
the PyTorch op at the cell's shape and dtype, and prints both medians, so a user can send
it upstream as it is. (On Linux, MLX's float32 CPU matmuls then run on the netlib BLAS its
wheel ships, as any user's would; the benchmark itself swaps in OpenBLAS, see
``mlx_impl.cpu_backend``.)

The shapes and parameters come from the benchmark's ``extra_info["shape"]`` (e.g.
``x[1, 4096], weight[4096, 4096]; eps=1e-05``), so the report can be rendered from any
stored baseline.
"""

from __future__ import annotations

import ast
import re
from typing import Any

_ARRAY = re.compile(r"(\w+)\[([\d, ]*)\]")

# record -> (MLX expression, PyTorch expression)
_CALLS: dict[str, tuple[str, str]] = {
    "nn.linear": ("mx.addmm(bias, x, weight.T)", "F.linear(x, weight, bias)"),
    "nn.multi_linear": ("x @ mx.swapaxes(weight, -1, -2)", "torch.matmul(x, weight.transpose(-1, -2))"),
    "fast.rms_norm": ("mx.fast.rms_norm(x, weight, 1e-5)", "F.rms_norm(x, (x.shape[-1],), weight, 1e-5)"),
    "nn.rms_norm": ("mx.fast.rms_norm(x, weight, 1e-5)", "F.rms_norm(x, (x.shape[-1],), weight, 1e-5)"),
    "fast.layer_norm": ("mx.fast.layer_norm(x, weight, bias, 1e-5)",
                        "F.layer_norm(x, (x.shape[-1],), weight, bias, 1e-5)"),
    "nn.layer_norm": ("mx.fast.layer_norm(x, weight, bias, 1e-5)",
                      "F.layer_norm(x, (x.shape[-1],), weight, bias, 1e-5)"),
    "nn.embedding": ("mx.take(weight, indices, axis=0)", "F.embedding(indices, weight)"),
    "fast.scaled_dot_product_attention": (
        "mx.fast.scaled_dot_product_attention(q, k, v, scale={scale}, mask={mlx_mask})",
        "F.scaled_dot_product_attention(q, k, v, scale={scale}, is_causal={causal}, enable_gqa=True)"),
    "quantization.quantized_matmul": (
        "mx.quantized_matmul(x, wq, scales, qbiases, transpose=True, group_size={group_size}, bits={bits}, "
        "mode={mode!r})", "F.linear(x, weight)"),
    "nn.quantized_linear": (
        "mx.quantized_matmul(x, wq, scales, qbiases, transpose=True, group_size={group_size}, bits={bits}, "
        "mode={mode!r})", "F.linear(x, weight)"),
}
_SKIP_ARRAYS = {"wq", "scales", "qbiases", "mask"}


def parse_shape(text: str) -> tuple[dict[str, list[int]], dict[str, Any]]:
    """``"x[1, 4096], weight[8]; eps=1e-05, mode='affine'"`` -> arrays' shapes and parameters."""
    arrays_part, _, params_part = text.partition("; ")
    shapes = {m.group(1): [int(d) for d in m.group(2).split(",") if d.strip()] for m in _ARRAY.finditer(arrays_part)}
    params: dict[str, Any] = {}
    for item in re.split(r", (?=\w+=)", params_part) if params_part else []:
        key, _, value = item.partition("=")
        try:
            params[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            params[key] = value
    return shapes, params


def reproducer(op: str, dtype: str, shape_text: str) -> str | None:
    """A standalone script for ``op`` at ``shape_text`` in ``dtype``, or None for ops without one."""
    if op not in _CALLS:
        return None
    shapes, params = parse_shape(shape_text)
    fmt = {"scale": params.get("scale"), "causal": params.get("mask") == "causal",
           "mlx_mask": repr(params.get("mask")) if params.get("mask") else None,
           "group_size": params.get("group_size"), "bits": params.get("bits"), "mode": params.get("mode")}
    mlx_call, torch_call = (c.format(**fmt) for c in _CALLS[op])
    lines = ["import time", "import mlx.core as mx", "import numpy as np", "import torch",
             "import torch.nn.functional as F", "",
             "def median_s(fn, n=20):",
             "    fn()  # first call: compilation and allocation",
             "    times = []",
             "    for _ in range(n):",
             "        t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)",
             "    return sorted(times)[n // 2]", "",
             "rng = np.random.default_rng(0)"]
    mx_names, t_names = [], []
    for name, shape in shapes.items():
        if name in _SKIP_ARRAYS:
            continue
        if name == "indices":
            lines.append(f"{name}_np = rng.integers(0, {shapes['weight'][0]}, size={tuple(shape)}).astype(np.int32)")
            lines.append(f"mx_{name}, t_{name} = mx.array({name}_np), torch.from_numpy({name}_np).long()")
        else:
            lines.append(f"{name}_np = rng.standard_normal({tuple(shape)}).astype(np.float32)")
            lines.append(f"mx_{name} = mx.array({name}_np).astype(mx.{dtype}); "
                         f"t_{name} = torch.from_numpy({name}_np).to(torch.{dtype})")
        mx_names.append(name)
        t_names.append(name)
    if op in ("quantization.quantized_matmul", "nn.quantized_linear"):
        lines.append("# PyTorch side: F.linear on the dense weight (the benchmark's affine 4-bit cells pair "
                     "PyTorch's int4 weight-only kernel instead)")
        lines.append(f"mx_wq, mx_scales, *mx_qb = mx.quantize(mx_weight, group_size={fmt['group_size']}, "
                     f"bits={fmt['bits']}, mode={fmt['mode']!r})")
        lines.append("mx_qbiases = mx_qb[0] if mx_qb else None")
        mx_names += ["wq", "scales", "qbiases"]
    lines.append(f"mx.eval({', '.join(f'mx_{n}' for n in mx_names if n != 'qbiases')})")
    mlx_expr = re.sub(r"\b(" + "|".join(mx_names) + r")\b", r"mx_\1", mlx_call)
    torch_expr = re.sub(r"\b(" + "|".join(t_names) + r")\b", r"t_\1", torch_call)
    lines += ["with torch.inference_mode():",
              f"    t_s = median_s(lambda: {torch_expr})",
              f"m_s = median_s(lambda: mx.eval({mlx_expr}))",
              f"print(f'{op} {dtype}: MLX {{m_s * 1e3:.3f}} ms, PyTorch {{t_s * 1e3:.3f}} ms, '",
              "      f'ratio {m_s / t_s:.1f}x (mlx ' + mx.__version__ + ', torch ' + torch.__version__ + ')')"]
    return "\n".join(lines)
