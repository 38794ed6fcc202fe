"""Device probe: the H200 run at fc88baa found the Flux 2 DiT blocks far off the oracle
(relative 0.09-0.2, the twin 0.002) in bfloat16 with affine 4- and 8-bit projections only
(mxfp4, nvfp4 and mxfp8 conform; the CPU back end conforms in every mode). Those
projections are quantized at run time by ``mx.quantize(..., stream=mx.cpu)``. This prints,
per mode and DiT projection shape, the relative error of ``mx.quantized_matmul`` on the GPU
against ``x @ dequantize(W).T`` in float64 (NumPy, on the CPU-dequantized codes), with the
codes from: the CPU stream used lazily (as mlx_impl did), the CPU stream evaluated first,
and the GPU's own ``mx.quantize``; whether the GPU's dequantize of the same codes
matches the CPU's, and the CPU stream's own quantized matmul for scale.

    python conformance/gpu/probe_affine_qmm.py
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np


def _codes(w: mx.array, gs: int, bits: int, mode: str, variant: str) -> list[mx.array]:
    if variant == "gpu":
        out = mx.quantize(w, gs, bits, mode)
    else:
        out = mx.quantize(w, gs, bits, mode, stream=mx.cpu)
        if variant == "cpu-eval":
            mx.eval(*out)
    return list(out) + ([None] if len(out) == 2 else [])


def main() -> None:
    print("mlx", getattr(mx, "__version__", "?"), mx.default_device())
    for mode, gs, bits in (("affine", 64, 4), ("affine", 64, 8), ("mxfp4", 32, 4)):
        for m, k, n in ((12, 64, 192), (17, 64, 384), (12, 192, 64), (5, 64, 64), (1, 64, 192)):
            w = mx.random.normal((n, k), key=mx.random.key(1)).astype(mx.bfloat16)
            x = mx.random.normal((1, m, k), key=mx.random.key(2)).astype(mx.bfloat16)
            mx.eval(w, x)
            row = []
            for variant in ("cpu-lazy", "cpu-eval", "gpu"):
                wq, s, b = _codes(w, gs, bits, mode, variant)
                y = mx.quantized_matmul(x, wq, s, b, transpose=True, group_size=gs, bits=bits, mode=mode)
                deq_cpu = mx.dequantize(wq, s, b, gs, bits, mode, dtype=mx.float32, stream=mx.cpu)
                deq_gpu = mx.dequantize(wq, s, b, gs, bits, mode, dtype=mx.float32)
                ref = np.array(x.astype(mx.float32), dtype=np.float64) @ np.array(deq_cpu, dtype=np.float64).T
                got = np.array(y.astype(mx.float32), dtype=np.float64)
                rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
                deq_same = bool(np.array_equal(np.array(deq_cpu), np.array(deq_gpu)))
                row.append(f"{variant}: rel {rel:.2e} deq-equal {deq_same}")
            wq, s, b = _codes(w, gs, bits, mode, "cpu-eval")
            y = mx.quantized_matmul(x, wq, s, b, transpose=True, group_size=gs, bits=bits, mode=mode, stream=mx.cpu)
            deq = np.array(mx.dequantize(wq, s, b, gs, bits, mode, dtype=mx.float32, stream=mx.cpu), dtype=np.float64)
            ref = np.array(x.astype(mx.float32), dtype=np.float64) @ deq.T
            rel = np.linalg.norm(np.array(y.astype(mx.float32), dtype=np.float64) - ref) / np.linalg.norm(ref)
            row.append(f"CPU qmm: rel {rel:.2e}")
            print(f"{mode}{bits} g{gs} x[1,{m},{k}] w[{n},{k}]: " + " | ".join(row), flush=True)


if __name__ == "__main__":
    main()
