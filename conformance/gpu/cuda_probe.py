"""Device probes for issue 8 after the fixes (run by conformance/gpu/cuda_check.sh): which quantized
matmul modes accumulate float16 in float16 on this back end, what mlx_impl's guarded empty
sizes return, and the output of every standalone reproducer."""

from __future__ import annotations

import subprocess
import sys
import tempfile

import mlx.core as mx
import numpy as np

from conformance.repro import GUARDED_BUGS, divergences, reproducer


def half_accumulation() -> None:
    """x = 400, w = +6 then -6 per half of K = 64: the exact sum is 0, a float16 running sum
    reaches 76800 (> 65504) and overflows; a float32 accumulator stays finite."""
    for mode, group, bits in (("affine", 32, 4), ("nvfp4", 16, 4), ("mxfp4", 32, 4), ("mxfp8", 32, 8)):
        for dtype in (mx.float16, mx.bfloat16):
            x = mx.full((1, 64), 400.0, dtype)
            w = mx.array(np.concatenate([np.full((1, 32), 6.0), np.full((1, 32), -6.0)], 1).astype(np.float32))
            packed = mx.quantize(w.astype(dtype), group_size=group, bits=bits, mode=mode, stream=mx.cpu)
            b = packed[2] if len(packed) > 2 else None
            y = mx.quantized_matmul(x, packed[0], packed[1], b, transpose=True, group_size=group, bits=bits,
                                    mode=mode)
            y3 = mx.quantized_matmul(mx.broadcast_to(x, (3, 64)), packed[0], packed[1], b, transpose=True,
                                     group_size=group, bits=bits, mode=mode)
            print(f"half_acc {mode} {dtype}: M=1 {np.array(y.astype(mx.float32)).ravel()} "
                  f"M=3 {np.array(y3.astype(mx.float32)).ravel()} (exact 0)")


def crashes() -> None:
    probes = {
        "linear_5_0_4": "from mlx_impl import nn; print(nn.Linear(mx.ones((3,4)), mx.ones(3))(mx.ones((5,0,4))).shape)",
        "rms_norm_d0": "from mlx_impl import fast; print(fast.rms_norm(mx.ones((2,0)), None, 1e-5).shape)",
        "layer_norm_d0": "from mlx_impl import fast; print(fast.layer_norm(mx.ones((2,0)), None, None, 1e-5).shape)",
        "nn_rms_rows0": "from mlx_impl import nn; print(nn.RMSNorm(mx.ones((4,)))(mx.ones((0,4))).shape)",
        "rope_t0": "from mlx_impl import fast; print(fast.RoPE(8)(mx.ones((1,2,0,8))).shape)",
        "qmm_1bit": "from mlx_impl import quantization as q; q.quantize(mx.ones((4,64)), group_size=64, bits=1)",
        "nn_ln_f16_big": "from mlx_impl import nn; import numpy as np; x=mx.array(np.array([[-53344.,-48160.,54240.]],np.float32)).astype(mx.float16); print(np.array(nn.LayerNorm(mx.ones((3,)))(x).astype(mx.float32)))",
    }
    for name, code in probes.items():
        p = subprocess.run([sys.executable, "-c", "import mlx.core as mx\n" + code], capture_output=True,
                           text=True, timeout=60)
        tail = (p.stdout.strip().splitlines() or p.stderr.strip().splitlines() or [""])[-1]
        print(f"crash {name}: rc={p.returncode} {tail[:160]}")


def reproducers() -> None:
    for name in sorted([*divergences(), *GUARDED_BUGS]):
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fh:
            fh.write(reproducer(name))
        p = subprocess.run([sys.executable, fh.name], capture_output=True, text=True, timeout=120)
        lines = " | ".join(p.stdout.strip().splitlines()[1:])
        print(f"repro {name}: rc={p.returncode} {lines[:600]} {p.stderr.strip()[-200:]}")


if __name__ == "__main__":
    print("mlx", getattr(mx, "__version__", "unknown"), mx.default_device())
    for step in (half_accumulation, crashes, reproducers):
        try:
            step()
        except Exception as exc:  # one broken probe must not cost the call
            print(f"{step.__name__} failed: {exc!r}")
