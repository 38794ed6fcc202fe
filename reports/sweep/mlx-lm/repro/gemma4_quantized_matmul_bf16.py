"""MLX's CPU quantized matmul in bfloat16 (affine, 4 bits, group 64) rounds every product
and every partial sum to bfloat16: its error against the exact product of the same
dequantized weight is several times a correctly rounded result's and 2x or more what a
float32-accumulating matmul (MLX's own dense matmul, PyTorch's bfloat16 linear) makes on
the same inputs. This is what takes mlx-lm's Gemma 4 at bfloat16+affine4 out of the
sweep's 2x bound (step 9, layer 0; sweep_triage.py finding `quantized-matmul-bf16-accumulation`).

Inputs: captured from the sweep's tiny gemma4_text at decode step 9 (layer 0's
self_attn.q_proj and mlp.down_proj; the activation row is transformers' bfloat16 input
to that op, the weight mlx-lm's packed codes), stored as bfloat16 bit patterns in
gemma4_quantized_matmul_bf16_inputs.npz.

Needs only mlx and numpy:

    python gemma4_quantized_matmul_bf16.py   # verified with mlx 0.32.4 on x86-64 Linux (CPU)
"""

import platform
from pathlib import Path

import mlx.core as mx
import numpy as np

INPUTS = Path(__file__).with_name("gemma4_quantized_matmul_bf16_inputs.npz")


def bf16(bits: np.ndarray) -> mx.array:
    return mx.array(bits).view(mx.bfloat16)


def f64(a: mx.array) -> np.ndarray:
    return np.array(a.astype(mx.float32), dtype=np.float64)


def round_bf16(v: np.ndarray) -> np.ndarray:
    """float64 -> nearest bfloat16 (ties to even) -> float64, through float32 (exact here:
    every value below is a bfloat16 product or sum, well inside float32's range)."""
    return f64(mx.array(np.asarray(v, dtype=np.float32)).astype(mx.bfloat16))


def sequential_bf16(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """sum_k x_k w_nk in order, each product and each partial sum rounded to bfloat16."""
    out = np.zeros(w.shape[0])
    for k in range(w.shape[1]):
        out = round_bf16(out + round_bf16(x[k] * w[:, k]))
    return out


def check(quantized_matmul=mx.quantized_matmul) -> None:
    """Print each captured op's error and assert the finding (on x86-64) for the kernel
    ``quantized_matmul`` (MLX's own unless another is planted to test this check)."""
    data = np.load(INPUTS)
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    for op in ("q_proj", "down_proj"):
        x, wq = bf16(data[f"{op}.x"]), mx.array(data[f"{op}.wq"])
        scales, biases = bf16(data[f"{op}.scales"]), bf16(data[f"{op}.biases"])
        with mx.stream(mx.cpu):
            got = f64(quantized_matmul(x, wq, scales, biases, transpose=True, group_size=64, bits=4))[0]
            w = mx.dequantize(wq, scales, biases, group_size=64, bits=4)  # bfloat16, the kernel's own weight
            dense = f64(x @ w.T)[0]
        xs, ws = f64(x)[0], f64(w)
        exact = ws @ xs  # float64 (each bfloat16 x bfloat16 product is exact in it)
        err = {name: float(np.linalg.norm(v - exact)) for name, v in
               (("quantized_matmul", got), ("dense matmul", dense), ("correctly rounded", round_bf16(exact)))}
        print(f"{op} (K={xs.size}, N={ws.shape[0]}): ||y - x @ dequantize(w).T|| " +
              ", ".join(f"{k} {v:.3g}" for k, v in err.items()) +
              f"; quantized_matmul / correctly rounded = {err['quantized_matmul'] / err['correctly rounded']:.1f}x")
        if not x86:
            print("  not asserted: measured on x86-64, where MLX's CPU kernel accumulates bfloat16 in bfloat16 "
                  "(SEMANTICS.md says Apple's NEON path accumulates in float32)")
            continue
        emulated = sequential_bf16(xs, ws)
        print(f"  quantized_matmul == products and running sum each rounded to bfloat16: "
              f"{np.array_equal(got, emulated)}")
        assert np.array_equal(got, emulated), "MLX's CPU bfloat16 quantized matmul no longer sums in bfloat16"
        assert err["quantized_matmul"] > 2 * err["dense matmul"], "quantized_matmul now as accurate as a dense matmul"
        assert err["dense matmul"] < 1.5 * err["correctly rounded"]


if __name__ == "__main__":
    check()
