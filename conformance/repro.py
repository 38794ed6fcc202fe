"""``python -m conformance repro NAME``: print a standalone reproducer of a known MLX
divergence that uses MLX and NumPy only, prints MLX's result on the back end where it
diverges, MLX's result on the CPU (or in float32) for contrast, and the float64 value, so a
user can paste it into an MLX issue as it is.

``--inputs FILE.npz``: the reproducer of one op's inputs captured from a model by the
model-conformance attribution (:mod:`conformance.model.attribution`), for a divergence the
registry does not know yet.

``NAME`` is an expected divergence of the registry (``ExpectedDivergence.name``) or one of
:data:`GUARDED_BUGS`: MLX bugs that ``mlx_impl`` guards against (so they never reach a
conformance cell) but that MLX itself still has. ``python -m conformance repro --list``
names them all.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Any

import numpy as np

from conformance.record import Case, ExpectedDivergence

_HEADER = """\
# Reproducer for {name} (printed by `python -m conformance repro {name}`).
# {reason}
# Needs only MLX and NumPy. MLX's default device is the back end under test.
import mlx.core as mx
import numpy as np

np.set_printoptions(precision=8, suppress=False, linewidth=120)
print("mlx", mx.__version__, "default device", mx.default_device())
"""

GUARDED_BUGS: dict[str, tuple[str, str]] = {
    "cuda_half_sum_overflow": (
        "On CUDA, mx.sum/mx.mean of float16 accumulates in float16 and overflows where the float32 "
        "sum (the CPU back end's) is finite; mlx_impl.nn.LayerNorm sums in float32 itself.",
        """\
x = np.array([[-53344.0, -48160.0, 54240.0]], np.float32)  # exact float16 values
a = mx.array(x).astype(mx.float16)
print("MLX sum, default device:", np.array(mx.sum(a, axis=-1).astype(mx.float32)))
print("MLX sum, CPU:           ", np.array(mx.sum(a, axis=-1, stream=mx.cpu).astype(mx.float32)))
print("float64:                ", x.astype(np.float64).sum(axis=-1))
""",
    ),
    "cuda_addmm_empty_batch_sigfpe": (
        "On CUDA, mx.addmm with an empty batch kills the process with SIGFPE (exit 136), even in "
        "float32; mlx_impl.nn.Linear builds the empty result itself.",
        """\
out = mx.addmm(mx.zeros(3), mx.zeros((0, 4)), mx.zeros((4, 3)), stream=mx.cpu)
mx.eval(out)
print("MLX on the CPU:", out.shape, "(float64: an empty (0, 3) result)")
out = mx.addmm(mx.zeros(3), mx.zeros((0, 4)), mx.zeros((4, 3)))
mx.eval(out)  # on CUDA the process dies here with SIGFPE
print("MLX, default device:", out.shape)
""",
    ),
    "cuda_fast_norm_empty_sigfpe": (
        "On CUDA, mx.fast.rms_norm / layer_norm over an empty last axis kill the process with "
        "SIGFPE, and a zero-row input fails in cudaGraphAddKernelNode; mlx_impl returns the empty "
        "result itself.",
        """\
print("MLX on the CPU:", mx.fast.rms_norm(mx.ones((0, 4)), None, 1e-5, stream=mx.cpu).shape,
      "(float64: an empty (0, 4) result)")
try:
    mx.eval(mx.fast.rms_norm(mx.ones((0, 4)), None, 1e-5))
    print("zero rows, default device: ok")
except RuntimeError as exc:
    print("zero rows, default device:", exc)
mx.eval(mx.fast.rms_norm(mx.ones((2, 0)), None, 1e-5))  # on CUDA the process dies here
print("D = 0, default device: ok")
""",
    ),
    "cuda_dequantize_1bit": (
        "On CUDA, 1-bit affine quantized_matmul is refused and mx.dequantize of 1-bit codes returns "
        "wrong values silently; mlx_impl refuses 1-bit affine on CUDA.",
        """\
w = np.linspace(-1.0, 1.0, 128, dtype=np.float32).reshape(2, 64)
wq, scales, biases = mx.quantize(mx.array(w), group_size=64, bits=1, stream=mx.cpu)
codes = np.array(mx.dequantize(wq, mx.ones(scales.shape), mx.zeros(scales.shape), group_size=64,
                               bits=1, stream=mx.cpu)).astype(np.float64)
exact = codes * np.repeat(np.array(scales), 64, -1) + np.repeat(np.array(biases), 64, -1)
print("MLX dequantize, default device:", np.array(mx.dequantize(wq, scales, biases, group_size=64, bits=1))[:, :4])
print("MLX dequantize, CPU:           ", np.array(mx.dequantize(wq, scales, biases, group_size=64, bits=1,
                                                              stream=mx.cpu))[:, :4])
print("float64:                       ", exact[:, :4])
""",
    ),
    "cuda_affine_single_group_qmm": (
        "On CUDA (Hopper: H100/H200), mx.quantized_matmul of an affine 4- or 8-bit weight with one "
        "group per row (K = group size, a multiple of 64) and more than one row of x returns wrong "
        "products (relative error ~1 against float64); one row, or K above the group size, is right. "
        "mlx_impl appends an all-zero group, which leaves the product unchanged.",
        """\
w = mx.random.normal((192, 64), key=mx.random.key(1)).astype(mx.bfloat16)
wq, s, b = mx.quantize(w, group_size=64, bits=4, stream=mx.cpu)
deq = np.array(mx.dequantize(wq, s, b, group_size=64, bits=4, dtype=mx.float32, stream=mx.cpu), np.float64)
for rows in (1, 12):
    x = mx.random.normal((rows, 64), key=mx.random.key(2)).astype(mx.bfloat16)
    exact = np.array(x.astype(mx.float32), np.float64) @ deq.T
    for where in ("default device", "CPU"):
        stream = mx.cpu if where == "CPU" else mx.default_stream(mx.default_device())
        y = np.array(mx.quantized_matmul(x, wq, s, b, group_size=64, bits=4, stream=stream).astype(mx.float32))
        rel = np.linalg.norm(y - exact) / np.linalg.norm(exact)
        print(f"x [{rows}, 64], {where}: relative error {rel:.2e} (the CPU: about 1e-2, bfloat16 rounding)")
""",
    ),
}
"""name -> (why, MLX-and-NumPy code) of MLX bugs that mlx_impl guards against."""


def _literal(a: np.ndarray) -> str:
    return f"np.array({np.asarray(a).tolist()!r}, np.{np.asarray(a).dtype})"


def _quantized_matmul_body(case: Case, dtype: str) -> str:
    """MLX and NumPy code for a quantized-matmul divergence: pack with mx.quantize on the CPU,
    run mx.quantized_matmul on the default device and on the CPU, and the float64 product of
    the same packed weights (element codes read back exactly, scale and bias exact)."""
    p = case.params
    arrays = case.arrays
    lines = [f"dtype = mx.{dtype}",
             f"x = mx.array({_literal(arrays['x'])}).astype(dtype)",
             f"w = mx.array({_literal(arrays['weight'])}).astype(dtype)",
             f"fmt = dict(group_size={p['group_size']}, bits={p['bits']}, mode={p['mode']!r})",
             "packed = mx.quantize(w, **fmt, stream=mx.cpu)",
             "wq, scales = packed[0], packed[1]",
             "biases = packed[2] if len(packed) > 2 else None"]
    if "bias" in arrays:
        lines.append(f"bias = mx.array({_literal(arrays['bias'])}).astype(dtype)")
    else:
        lines.append("bias = None")
    lines += [
        "def product(stream=None):",
        "    y = mx.quantized_matmul(x, wq, scales, biases, transpose=True, **fmt, stream=stream)",
        "    y = y if bias is None else y + bias",
        "    return np.array(y.astype(mx.float32))",
        "# float64: dequantize on the CPU in float32 (exact: element times a power-of-two-ish scale;",
        "# for affine the codes are read back with unit scale and zero bias, then q*s+b in float64)",
        "if fmt['mode'] == 'affine':",
        "    one, zero = mx.ones(scales.shape), mx.zeros(scales.shape)",
        "    q = np.array(mx.dequantize(wq, one, zero, **fmt, stream=mx.cpu)).astype(np.float64)",
        "    g = fmt['group_size']",
        "    deq = q * np.repeat(np.array(scales.astype(mx.float32)), g, -1) + "
        "np.repeat(np.array(biases.astype(mx.float32)), g, -1)",
        "else:",
        "    deq = np.array(mx.dequantize(wq, scales, None, **fmt, stream=mx.cpu, dtype=mx.float32))"
        ".astype(np.float64)",
        "exact = np.array(x.astype(mx.float32)).astype(np.float64) @ deq.T",
        "exact = exact if bias is None else exact + np.array(bias.astype(mx.float32))",
        "print('MLX, default device:', product())",
        "print('MLX, CPU back end:  ', product(mx.cpu))",
        "print('float64:            ', exact)",
    ]
    return "\n".join(lines) + "\n"


_CAPTURED_HEADER = """\
# Reproducer of an op captured from a model (printed by `python -m conformance repro --inputs {path}`).
# {op}: the registry record {record} in {dtype} on the inputs the model fed it, where the
# model-conformance attribution named MLX's back end (conformance/model/attribution.py; the
# departure's cause_detail says whether the record fails here or conforms only through its
# allowance for a known back-end behaviour, such as half-precision accumulation).
# Needs only MLX and NumPy, and the captured inputs file. MLX's default device is the back end under test.
import json
import mlx.core as mx
import numpy as np

np.set_printoptions(precision=8, suppress=False, linewidth=120)
print("mlx", mx.__version__, "default device", mx.default_device())
data = np.load({path!r})
meta = json.loads(str(data["__meta__"]))
p = meta["params"]
dtype = mx.{dtype}
a = {{k: data[k] for k in data.files if k != "__meta__"}}
def arr(k):  # floats in the test dtype (exact: they were captured in it), codes as they are
    v = a[k]
    return mx.array(v).astype(dtype) if v.dtype.kind == "f" else mx.array(v)
wide = {{k: v.astype(np.float64) for k, v in a.items()}}
"""

_CAPTURED_BODIES: dict[str, str] = {
    "nn.linear": """\
def run(stream=None):
    y = mx.matmul(arr("x"), arr("weight").T, stream=stream)
    return y + arr("bias") if "bias" in a else y
exact = wide["x"] @ wide["weight"].T + (wide["bias"] if "bias" in a else 0.0)
""",
    "nn.quantized_linear": """\
fmt = dict(group_size=p["group_size"], bits=p["bits"], mode=p["mode"])
def run(stream=None):
    y = mx.quantized_matmul(arr("x"), arr("wq"), arr("scales"), arr("qbiases") if "qbiases" in a else None,
                            transpose=True, **fmt, stream=stream)
    return y + arr("bias") if "bias" in a else y
if fmt["mode"] == "affine":
    s = mx.array(a["scales"]).astype(mx.float32)
    q = np.array(mx.dequantize(arr("wq"), mx.ones(s.shape), mx.zeros(s.shape), **fmt, stream=mx.cpu), np.float64)
    g = fmt["group_size"]
    deq = q * np.repeat(wide["scales"], g, -1) + np.repeat(wide["qbiases"], g, -1)
else:
    deq = np.array(mx.dequantize(arr("wq"), arr("scales"), None, **fmt, stream=mx.cpu, dtype=mx.float32), np.float64)
exact = wide["x"] @ deq.T + (wide["bias"] if "bias" in a else 0.0)
""",
    "nn.rms_norm": """\
def run(stream=None):
    return mx.fast.rms_norm(arr("x"), arr("weight"), p["stored_eps"], stream=stream)
x = wide["x"]
exact = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + p["stored_eps"]) * wide["weight"]
""",
    "fast.rope": """\
def run(stream=None):
    return mx.fast.rope(arr("x"), p["dims"], traditional=p["mode"] == "interleaved", base=p["base"],
                        scale=p["scale"], offset=p["offset"], stream=stream)
x = wide["x"]
d, half = p["dims"], p["dims"] // 2
pos = (p["offset"] + np.arange(x.shape[-2], dtype=np.float64))[:, None] * p["scale"]
theta = pos * p["base"] ** (-2.0 * np.arange(half) / d)
c, s_ = np.cos(theta), np.sin(theta)
if p["mode"] == "interleaved":
    x1, x2 = x[..., 0:d:2], x[..., 1:d:2]
    rot = np.stack([x1 * c - x2 * s_, x1 * s_ + x2 * c], axis=-1).reshape(*x.shape[:-1], d)
else:
    x1, x2 = x[..., :half], x[..., half:d]
    rot = np.concatenate([x1 * c - x2 * s_, x1 * s_ + x2 * c], axis=-1)
exact = np.concatenate([rot, x[..., d:]], axis=-1)
""",
    "fast.scaled_dot_product_attention": """\
mask = arr("mask") if "mask" in a else p.get("mask")
def run(stream=None):
    return mx.fast.scaled_dot_product_attention(arr("q"), arr("k"), arr("v"), scale=p["scale"], mask=mask,
                                                stream=stream)
q, k, v = wide["q"], wide["k"], wide["v"]
rep = q.shape[1] // k.shape[1]
k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
scores = p["scale"] * q @ np.swapaxes(k, -1, -2)
lq, lk = scores.shape[-2:]
if "mask" in a:
    scores = np.where(a["mask"].astype(bool), scores, -np.inf)
elif mask == "causal":
    scores = np.where(np.arange(lk)[None, :] <= np.arange(lq)[:, None] + lk - lq, scores, -np.inf)
w = np.exp(scores - scores.max(axis=-1, keepdims=True))
exact = (w / w.sum(axis=-1, keepdims=True)) @ v
""",
}
"""Record name -> the MLX-and-NumPy body of a captured-inputs reproducer: defines
``run(stream)`` (MLX's op) and ``exact`` (float64 from the same rounded inputs)."""

_CAPTURED_FOOTER = """\
def show(y):
    return np.array(y.astype(mx.float32)).astype(np.float64)
mlx_default, mlx_cpu = show(run()), show(run(mx.cpu))
for label, y in (("MLX, default device", mlx_default), ("MLX, CPU back end", mlx_cpu)):
    err = np.abs(y - exact)
    i = np.unravel_index(int(np.argmax(err)), err.shape)
    print(f"{label}: max |MLX - float64| = {err.max():.6g} at {tuple(int(j) for j in i)} "
          f"(MLX {y[i]:.8g}, float64 {exact[i]:.8g}); relative 2-norm "
          f"{np.linalg.norm(y - exact) / max(np.linalg.norm(exact), 1e-300):.3g}")
"""


def captured_reproducer(path: str) -> str:
    """The standalone reproducer of an op's captured inputs (``.npz`` written by
    :func:`conformance.model.attribution.save_capture`: the record's arrays and
    ``__meta__``), for the records of :data:`_CAPTURED_BODIES`."""
    import json
    from pathlib import Path

    file = Path(path)
    if not file.is_file():
        raise KeyError(f"[repro] no captured-inputs file {path!r}.")
    with np.load(file) as data:
        if "__meta__" not in data.files:
            raise KeyError(f"[repro] {path!r} has no __meta__ entry: not a captured-inputs file.")
        meta = json.loads(str(data["__meta__"]))
    record = meta.get("record")
    if record not in _CAPTURED_BODIES:
        raise KeyError(f"[repro] no captured-inputs reproducer for record {record!r}; "
                       f"known: {sorted(_CAPTURED_BODIES)}.")
    header = _CAPTURED_HEADER.format(path=str(file.resolve()), op=meta.get("op", "?"), record=record,
                                     dtype=meta["dtype"])
    return header + _CAPTURED_BODIES[record] + _CAPTURED_FOOTER


def divergences() -> dict[str, tuple[str, ExpectedDivergence]]:
    """Every expected divergence of the registry: name -> (record name, divergence)."""
    from conformance.registry import REGISTRY

    return {d.name: (r.name, d) for r in REGISTRY.values() for d in r.divergences}


_BODIES = {"quantization.quantized_matmul": _quantized_matmul_body,
           "nn.quantized_linear": _quantized_matmul_body}
"""Record name -> the builder of its MLX-and-NumPy reproducer body."""


def reproducer(name: str) -> str:
    """The standalone reproducer script for ``name`` (see the module docstring)."""
    if name in GUARDED_BUGS:
        reason, body = GUARDED_BUGS[name]
        return _HEADER.format(name=name, reason=reason) + body
    known = divergences()
    if name not in known:
        raise KeyError(f"[repro] unknown name {name!r}; known: {sorted([*known, *GUARDED_BUGS])}.")
    record_name, divergence = known[name]
    if record_name not in _BODIES:
        raise KeyError(f"[repro] no MLX-only reproducer is written for record {record_name!r}.")
    reason = " ".join(textwrap.wrap(divergence.reason, 10_000)) + f" Back ends: {', '.join(divergence.backends)}."
    return _HEADER.format(name=name, reason=reason) + _BODIES[record_name](divergence.reproducer,
                                                                          divergence.dtype)


def command_repro(args: argparse.Namespace) -> int:
    """Print the reproducer (or, with ``--list``, the names; with ``--inputs``, the
    reproducer of an op's captured inputs)."""
    if getattr(args, "inputs", None):
        try:
            sys.stdout.write(captured_reproducer(args.inputs))
        except KeyError as exc:
            print(exc.args[0], file=sys.stderr)
            return 2
        return 0
    if args.list or not args.name:
        for name, (record_name, d) in sorted(divergences().items()):
            print(f"{name}  ({record_name}; {', '.join(d.backends)})")
        for name in sorted(GUARDED_BUGS):
            print(f"{name}  (guarded in mlx_impl)")
        return 0
    try:
        sys.stdout.write(reproducer(args.name))
    except KeyError as exc:
        print(exc.args[0], file=sys.stderr)
        return 2
    return 0


def add_parser(sub: Any) -> None:
    """Register ``repro`` on the ``python -m conformance`` subcommands."""
    repro = sub.add_parser("repro", help="print a standalone MLX+NumPy reproducer of a known divergence")
    repro.add_argument("name", nargs="?", help="an expected divergence or guarded MLX bug")
    repro.add_argument("--list", action="store_true", help="list the names")
    repro.add_argument("--inputs", help="a captured-inputs .npz (model conformance's attribution): "
                       "print the reproducer of that op")
    repro.set_defaults(func=command_repro)
