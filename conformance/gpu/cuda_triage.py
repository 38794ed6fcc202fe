"""Triage of MLX's CUDA back end against the float64 oracle (issue 8), in one process.

Run on a machine with MLX CUDA: ``python conformance/gpu/cuda_triage.py OUTDIR``. Prints compact
findings, writes ``OUTDIR/triage.json`` and ``OUTDIR/failures.pkl`` (the failing conformance
inputs, with their arrays, for building reproducers). Each crash probe runs in a subprocess.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
import warnings

import mlx.core as mx
import numpy as np

warnings.filterwarnings("ignore")
OUT = sys.argv[1] if len(sys.argv) > 1 else "."
FACTS: dict = {}
GPU = mx.gpu if mx.is_available(mx.gpu) else mx.cpu  # CPU only for a local smoke test


def say(key, value):
    FACTS[key] = value
    print(f"{key}: {value}", flush=True)


def f64(a):
    return np.array(a.astype(mx.float32)).astype(np.float64)


def tf32_probe():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 1024)).astype(np.float32)
    w = rng.standard_normal((64, 1024)).astype(np.float32)
    exact = x.astype(np.float64) @ w.astype(np.float64).T
    mag = np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64).T
    for label, dev in (("gpu", GPU), ("cpu", mx.cpu)):
        y = f64(mx.matmul(mx.array(x), mx.array(w).T, stream=dev))
        say(f"tf32.matmul_{label}.max_err_over_mag", float((np.abs(y - exact) / mag).max()))
    # round-to-nearest vs truncation of the inputs to 10 mantissa bits
    def to_tf32(a, mode):
        b = a.view(np.uint32).astype(np.uint64)
        if mode == "rn":
            b = b + 0x1000 + ((b >> 13) & 1) - 1
        return ((b & ~np.uint64(0x1FFF)).astype(np.uint32)).view(np.float32).astype(np.float64)
    y = f64(mx.matmul(mx.array(x), mx.array(w).T, stream=GPU))
    for mode in ("rn", "rz"):
        emul = to_tf32(x, mode) @ to_tf32(w, mode).T
        say(f"tf32.gpu_vs_{mode}_emulation.max_err_over_mag", float((np.abs(y - emul) / mag).max()))
    # float32 quantized matmul: does it run at TF32 too?
    wq, s, b = mx.quantize(mx.array(w), group_size=64, bits=8, mode="affine")
    deq = f64(mx.dequantize(wq, s, b, group_size=64, bits=8, stream=mx.cpu))
    exact_q = x.astype(np.float64) @ deq.T
    magq = np.abs(x).astype(np.float64) @ np.abs(deq).T
    yq = f64(mx.quantized_matmul(mx.array(x), wq, s, b, transpose=True, group_size=64, bits=8, stream=GPU))
    say("tf32.qmm_f32_gpu.max_err_over_mag", float((np.abs(yq - exact_q) / magq).max()))
    # float32 sdpa
    q = rng.standard_normal((1, 4, 64, 64)).astype(np.float32)
    k = rng.standard_normal((1, 4, 64, 64)).astype(np.float32)
    v = rng.standard_normal((1, 4, 64, 64)).astype(np.float32)
    sc = q.astype(np.float64) @ np.swapaxes(k, -1, -2).astype(np.float64) / 8
    p = np.exp(sc - sc.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ex = p @ v.astype(np.float64)
    for label, dev in (("gpu", GPU), ("cpu", mx.cpu)):
        o = f64(mx.fast.scaled_dot_product_attention(mx.array(q), mx.array(k), mx.array(v), scale=0.125,
                                                      stream=dev))
        say(f"tf32.sdpa_{label}.max_rel_to_p_abs_v", float((np.abs(o - ex) / (p @ np.abs(v))).max()))


def unpack_codes(wq, s, b, p):
    """Element codes as float: dequantize with unit scale and zero bias on the CPU."""
    if p["mode"] == "affine":
        one = mx.ones(s.shape, mx.float32)
        return f64(mx.dequantize(wq, one, mx.zeros(s.shape, mx.float32), stream=mx.cpu, **p))
    unit = {"nvfp4": 0x38, "mxfp4": 127, "mxfp8": 127}[p["mode"]]
    return f64(mx.dequantize(wq, mx.full(s.shape, unit, mx.uint8), stream=mx.cpu, dtype=mx.float32, **p))


def scale_values(s, p):
    if p["mode"] == "affine":
        return f64(s)
    if p["mode"] == "nvfp4":
        return f64(mx.dequantize(mx.full((s.shape[0], s.shape[1] * 2), 0x22222222, mx.uint32), s,
                                 stream=mx.cpu, dtype=mx.float32, **p))[:, ::16]  # code 2 = 1.0
    return np.ldexp(1.0, np.array(s).astype(np.int64) - 127)


def quantize_probe():
    from conformance.execute import prepare_inputs
    from conformance.registry import REGISTRY
    rec = REGISTRY["quantization.quantize"]
    for mode in rec.modes:
        for dtype in rec.dtypes:
            stats = {"cases": 0, "cases_differ": 0, "codes_differ": 0, "gpu_closer": 0, "cpu_closer": 0,
                     "tie": 0, "scale_differs": 0, "signzero": 0, "examples": []}
            for _ in range(40):
                case = rec.cases(dtype, mode).example()
                a = prepare_inputs(rec, case, dtype)
                p = {"group_size": case.params["group_size"], "bits": case.params["bits"], "mode": mode}
                w = mx.array(a["weight"]).astype(getattr(mx, dtype))
                out = {}
                for label, dev in (("cpu", mx.cpu), ("gpu", GPU)):
                    r = mx.quantize(w, stream=dev, **p)
                    mx.eval(*r)
                    out[label] = r
                stats["cases"] += 1
                same_pack = np.array_equal(np.array(out["cpu"][0]), np.array(out["gpu"][0]))
                same_scale = np.array_equal(np.array(out["cpu"][1].astype(mx.float32) if mode == "affine"
                                                     else out["cpu"][1]),
                                            np.array(out["gpu"][1].astype(mx.float32) if mode == "affine"
                                                     else out["gpu"][1]))
                if same_pack and same_scale and (mode != "affine" or np.array_equal(
                        np.array(out["cpu"][2].astype(mx.float32)), np.array(out["gpu"][2].astype(mx.float32)))):
                    continue
                stats["cases_differ"] += 1
                if not same_scale:
                    stats["scale_differs"] += 1
                wt = a["weight"].astype(np.float64)
                codes = {k: unpack_codes(v[0], v[1], v[2] if len(v) > 2 else None, p) for k, v in out.items()}
                # reconstruct each side's values with its own scale (and bias)
                vals = {}
                for k, v in out.items():
                    sv = np.repeat(scale_values(v[1], p), p["group_size"], axis=-1)
                    vals[k] = codes[k] * sv + (np.repeat(f64(v[2]), p["group_size"], axis=-1) if mode == "affine" else 0)
                diff = (codes["cpu"] != codes["gpu"]) | (np.signbit(codes["cpu"]) != np.signbit(codes["gpu"]))
                stats["codes_differ"] += int(diff.sum())
                ec, eg = np.abs(vals["cpu"] - wt), np.abs(vals["gpu"] - wt)
                stats["gpu_closer"] += int((diff & (eg < ec)).sum())
                stats["cpu_closer"] += int((diff & (ec < eg)).sum())
                stats["tie"] += int((diff & (ec == eg)).sum())
                stats["signzero"] += int((diff & (codes["cpu"] == codes["gpu"])).sum())
                if len(stats["examples"]) < 3:
                    i = np.argwhere(diff | ~np.isclose(vals["cpu"], vals["gpu"]))[:3].tolist()
                    stats["examples"].append({
                        "params": p, "shape": list(wt.shape), "idx": i,
                        "w": [float(wt[tuple(j)]) for j in i],
                        "cpu_code": [float(codes["cpu"][tuple(j)]) for j in i],
                        "gpu_code": [float(codes["gpu"][tuple(j)]) for j in i],
                        "cpu_val": [float(vals["cpu"][tuple(j)]) for j in i],
                        "gpu_val": [float(vals["gpu"][tuple(j)]) for j in i],
                        "cpu_scale": np.array(out["cpu"][1].astype(mx.float32)).ravel()[:4].tolist(),
                        "gpu_scale": np.array(out["gpu"][1].astype(mx.float32)).ravel()[:4].tolist(),
                        "cpu_bias": (np.array(out["cpu"][2].astype(mx.float32)).ravel()[:4].tolist()
                                     if mode == "affine" else None),
                        "gpu_bias": (np.array(out["gpu"][2].astype(mx.float32)).ravel()[:4].tolist()
                                     if mode == "affine" else None),
                        "wrow": wt[i[0][0]].tolist() if i and wt.shape[1] <= 64 else None,
                    })
            say(f"quantize.{mode}.{dtype}", stats)
    # fixed probes
    for mode, gs, bits in (("nvfp4", 16, 4), ("mxfp4", 32, 4), ("mxfp8", 32, 8), ("affine", 32, 4)):
        w = np.zeros((2, 64), np.float32)
        w[1] = np.linspace(-3, 3, 64)
        w[1, :8] = [-0.1, -0.0, -1e-3, 0.2, -2.9, 3.0, -5.5, 0.0]
        for dt in ("float32", "bfloat16"):
            res = {}
            for label, dev in (("cpu", mx.cpu), ("gpu", GPU)):
                r = mx.quantize(mx.array(w).astype(getattr(mx, dt)), group_size=gs, bits=bits, mode=mode, stream=dev)
                res[label] = [np.array(r[0]).tolist()[0][:4], np.array(r[0]).tolist()[1][:4],
                              np.array(r[1].astype(mx.float32) if mode == "affine" else r[1]).tolist()]
            say(f"quantize.fixed.{mode}.{dt}", res)


def dequantize_probe():
    rng = np.random.default_rng(1)
    for dt in ("float16", "bfloat16", "float32"):
        w = rng.standard_normal((16, 256)).astype(np.float32) * 3
        wq, s, b = mx.quantize(mx.array(w).astype(getattr(mx, dt)), group_size=64, bits=4, stream=mx.cpu)
        codes = unpack_codes(wq, s, b, {"group_size": 64, "bits": 4, "mode": "affine"})
        sv = np.repeat(f64(s), 64, -1)
        bv = np.repeat(f64(b), 64, -1)
        once = f64(mx.array(codes * sv + bv).astype(getattr(mx, dt)))
        prod = f64(mx.array(codes * sv).astype(getattr(mx, dt)))
        twice = f64(mx.array(prod + bv).astype(getattr(mx, dt)))
        fma32 = f64(mx.array((codes * sv).astype(np.float32) + bv.astype(np.float32)).astype(getattr(mx, dt)))
        res = {}
        for label, dev in (("cpu", mx.cpu), ("gpu", GPU)):
            d = f64(mx.dequantize(wq, s, b, group_size=64, bits=4, stream=dev))
            res[label] = {"==once": int((d == once).sum()), "==twice": int((d == twice).sum()),
                          "==f32_then_round": int((d == fma32).sum()), "n": d.size}
        say(f"dequantize.affine.{dt}", res)


def qmm_probe():
    rng = np.random.default_rng(2)
    for mode, gs, bits in (("affine", 64, 4), ("nvfp4", 16, 4), ("mxfp4", 32, 4), ("mxfp8", 32, 8)):
        for dt in ("float16", "bfloat16"):
            for scale in (1.0, 30.0):
                x = (rng.standard_normal((4, 512)) * scale).astype(np.float32)
                w = (rng.standard_normal((32, 512)) * scale).astype(np.float32)
                xm = mx.array(x).astype(getattr(mx, dt))
                r = mx.quantize(mx.array(w).astype(getattr(mx, dt)), group_size=gs, bits=bits, mode=mode, stream=mx.cpu)
                wq, s = r[0], r[1]
                b = r[2] if len(r) > 2 else None
                deq = f64(mx.dequantize(wq, s, b, group_size=gs, bits=bits, mode=mode, stream=mx.cpu,
                                        dtype=mx.float32))
                exact = f64(xm) @ deq.T
                mag = np.abs(f64(xm)) @ np.abs(deq).T
                res = {"exact_max": float(np.abs(exact).max())}
                for label, dev in (("cpu", mx.cpu), ("gpu", GPU)):
                    y = f64(mx.quantized_matmul(xm, wq, s, b, transpose=True, group_size=gs, bits=bits, mode=mode,
                                                stream=dev))
                    fin = np.isfinite(y)
                    res[label] = {"nonfinite": int((~fin).sum()),
                                  "max_err_over_mag": float((np.abs(y - exact)[fin] / mag[fin]).max())}
                # the same with the product done on dequantized weights (what the peer does)
                y2 = f64(mx.matmul(xm, mx.array(deq).astype(getattr(mx, dt)).T, stream=GPU))
                res["gpu_dense"] = {"nonfinite": int((~np.isfinite(y2)).sum()),
                                    "max_err_over_mag": float((np.abs(y2 - exact) / mag)[np.isfinite(y2)].max())}
                say(f"qmm.{mode}.{dt}.scale{scale:g}", res)


def layernorm_probe():
    from conformance.execute import prepare_inputs, run_case
    from conformance.registry import REGISTRY
    rec = REGISTRY["nn.layer_norm"]
    shown = 0
    for _ in range(300):
        case = rec.cases("float16", "default").example()
        r = run_case(rec, case, "float16", backend="cuda")
        if r.passed:
            continue
        a = prepare_inputs(rec, case, "float16")
        x = mx.array(a["x"]).astype(mx.float16)
        parts = {}
        for label, dev in (("cpu", mx.cpu), ("gpu", GPU)):
            with mx.stream(dev):
                mean = mx.mean(x, axis=-1, keepdims=True)
                c = x - mean
                sq = c * c
                var = mx.mean(sq, axis=-1, keepdims=True)
                s = mx.sum(x, axis=-1, keepdims=True)
                parts[label] = {k: np.array(v.astype(mx.float32)).ravel()[:6].tolist()
                                for k, v in (("sum", s), ("mean", mean), ("var", var), ("sq", sq))}
        say(f"layernorm.f16.fail{shown}", {"x": a["x"].tolist() if a["x"].size <= 40 else a["x"].shape,
                                           "eps": case.params, "msg": r.message()[:600], **parts})
        shown += 1
        if shown >= 3:
            break


CRASH_PROBES = {
    "addmm_empty_batch": "mx.eval(mx.addmm(mx.zeros(3), mx.zeros((0,4)), mx.zeros((4,3))))",
    "matmul_empty_batch": "mx.eval(mx.zeros((0,4)) @ mx.zeros((4,3)))",
    "matmul_empty_k": "mx.eval(mx.zeros((5,0)) @ mx.zeros((0,3)))",
    "linear_5_0_4": "from mlx_impl import nn; mx.eval(nn.Linear(mx.ones((3,4)), mx.ones(3))(mx.ones((5,0,4))))",
    "linear_0_4": "from mlx_impl import nn; mx.eval(nn.Linear(mx.ones((3,4)))(mx.ones((0,4))))",
    "linear_k0": "from mlx_impl import nn; mx.eval(nn.Linear(mx.ones((3,0)), mx.ones(3))(mx.ones((5,0))))",
    "multilinear_empty": "from mlx_impl import nn; mx.eval(nn.MultiLinear(mx.ones((2,3,4)))(mx.ones((1,2,0,4))))",
    "sum_empty_last": "mx.eval(mx.sum(mx.zeros((3,0)), axis=-1))",
    "mean_empty_last": "mx.eval(mx.mean(mx.zeros((3,0)), axis=-1))",
    "rms_norm_d0": "from mlx_impl import fast; mx.eval(fast.rms_norm(mx.ones((2,0)), None, 1e-5))",
    "layer_norm_d0": "from mlx_impl import fast; mx.eval(fast.layer_norm(mx.ones((2,0)), None, None, 1e-5))",
    "nn_layer_norm_d0": "from mlx_impl import nn; mx.eval(nn.LayerNorm(mx.ones((0,)))(mx.ones((2,0))))",
    "nn_rms_norm_rows0": "from mlx_impl import nn; mx.eval(nn.RMSNorm(mx.ones((4,)))(mx.ones((0,4))))",
    "sdpa_lk0": "from mlx_impl import fast; mx.eval(fast.scaled_dot_product_attention(mx.ones((1,2,3,4)), mx.ones((1,2,0,4)), mx.ones((1,2,0,4)), scale=0.5))",
    "sdpa_lq0": "from mlx_impl import fast; mx.eval(fast.scaled_dot_product_attention(mx.ones((1,2,0,4)), mx.ones((1,2,3,4)), mx.ones((1,2,3,4)), scale=0.5))",
    "sdpa_b0": "from mlx_impl import fast; mx.eval(fast.scaled_dot_product_attention(mx.ones((0,2,3,4)), mx.ones((0,2,3,4)), mx.ones((0,2,3,4)), scale=0.5))",
    "sdpa_d0": "from mlx_impl import fast; mx.eval(fast.scaled_dot_product_attention(mx.ones((1,2,3,0)), mx.ones((1,2,3,0)), mx.ones((1,2,3,0)), scale=0.5))",
    "rope_t0": "from mlx_impl import fast; mx.eval(fast.RoPE(8)(mx.ones((1,2,0,8))))",
    "embedding_empty": "from mlx_impl import nn; mx.eval(nn.Embedding(mx.ones((4,3)))(mx.zeros((0,), mx.int32)))",
    "qmm_1bit": "from mlx_impl import quantization as q; w=q.quantize(mx.ones((4,64)), group_size=64, bits=1); mx.eval(q.quantized_matmul(mx.ones((2,64)), *w, group_size=64, bits=1))",
    "qmm_empty": "from mlx_impl import quantization as q; w=q.quantize(mx.ones((4,64)), group_size=64, bits=4); mx.eval(q.quantized_matmul(mx.ones((0,64)), *w, group_size=64, bits=4))",
    "float64_gpu": "mx.eval(mx.ones(3, mx.float64) + 1)",
    "repeat_kv_empty": "from mlx_impl import nn; mx.eval(nn.repeat_kv(mx.ones((1,2,0,4)), 2))",
}


def crash_probe():
    res = {}
    for name, code in CRASH_PROBES.items():
        try:
            proc = subprocess.run([sys.executable, "-c", "import mlx.core as mx\n" + code], capture_output=True,
                                  text=True, timeout=20)
            res[name] = (proc.returncode, (proc.stderr.strip().splitlines() or [""])[-1][:160])
        except subprocess.TimeoutExpired:
            res[name] = ("HANG", "")
    for k, v in res.items():
        print(f"  crash.{k}: {v}")
    FACTS["crash"] = res


def failing_inputs():
    """Draw examples for every cell on the GPU, keep the failing ones (with arrays)."""
    from conformance.execute import run_case
    from conformance.registry import cells
    kept, counts = [], {}
    t0 = time.time()
    for record, dtype, mode in cells():
        fails = 0
        for _ in range(25):
            case = record.cases(dtype, mode).example()
            if any(d.applies(case, dtype, "cuda") for d in record.divergences):
                continue
            r = run_case(record, case, dtype, backend="cuda")
            if not r.passed:
                fails += 1
                if fails <= 4:
                    kept.append({"op": record.name, "dtype": dtype, "mode": mode,
                                 "arrays": dict(case.arrays), "params": dict(case.params),
                                 "message": r.message()[:3000]})
        counts[f"{record.name}/{dtype}/{mode}"] = fails
    with open(os.path.join(OUT, "failures.pkl"), "wb") as fh:
        pickle.dump(kept, fh)
    say("cell_failures_of_25", {k: v for k, v in counts.items() if v})
    print(f"  ({time.time() - t0:.0f}s)")


def main():
    say("env", {"mlx": mx.__version__, "device": str(mx.default_device()),
                "MLX_ENABLE_TF32": os.environ.get("MLX_ENABLE_TF32")})
    for step in (tf32_probe, quantize_probe, dequantize_probe, qmm_probe, layernorm_probe, crash_probe,
                 failing_inputs):
        t0 = time.time()
        try:
            step()
        except Exception as exc:  # keep going: one broken probe must not cost the call
            say(f"{step.__name__}.error", repr(exc)[:500])
        print(f"[{step.__name__}: {time.time() - t0:.1f}s]", flush=True)
        with open(os.path.join(OUT, "triage.json"), "w") as fh:
            json.dump(FACTS, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
