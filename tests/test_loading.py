
"""Tests of mlx_impl.loading: declared models, load_weights, and the safetensors reader/writer.

Every checkpoint here is a real ``.safetensors`` file written into ``tmp_path`` (by
``mx.save_safetensors``, by ``save_safetensors``, or byte by byte for malformed files), or
a plain dict of arrays. Shapes are tiny so the file runs in a few seconds.
"""

import doctest
import json
import os
import pickle
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import mlx.core as mx
import numpy as np
import pytest

import mlx_impl.loading as loading
from mlx_impl import WeightLoadError, fast, load_safetensors, load_weights, weight
from mlx_impl.loading import safetensors_io, save_safetensors
from mlx_impl.nn import (
    Embedding,
    LayerNorm,
    Linear,
    LinearLayer,
    MultiLinear,
    QuantizedLinear,
    RMSNorm,
)

# ---------------------------------------------------------------------------------------
# A small Llama-like declaration (module level, so its annotations resolve)
# ---------------------------------------------------------------------------------------


@dataclass
class Attention:
    q: LinearLayer = weight("q_proj")
    k: LinearLayer = weight("k_proj")
    v: LinearLayer = weight("v_proj")
    o: LinearLayer = weight("o_proj")


@dataclass
class MLP:
    gate: LinearLayer = weight("gate_proj")
    up: LinearLayer = weight("up_proj")
    down: LinearLayer = weight("down_proj")


@dataclass
class Block:
    input_norm: RMSNorm = weight("input_layernorm", eps=1e-6)
    attn: Attention = weight("self_attn")
    post_norm: RMSNorm = weight("post_attention_layernorm", eps=1e-6)
    mlp: MLP = weight("mlp")

    built: ClassVar[int] = 0

    def __post_init__(self) -> None:
        type(self).built += 1


@dataclass
class TinyLlama:
    embed: Embedding = weight("model.embed_tokens")
    layers: list[Block] = weight("model.layers")
    norm: RMSNorm = weight("model.norm", eps=1e-6)
    lm_head: LinearLayer | None = weight("lm_head")  # absent: tied embeddings

    built: ClassVar[int] = 0

    def __post_init__(self) -> None:
        type(self).built += 1


VOCAB, D, KV, HIDDEN = 11, 32, 16, 64


def llama_checkpoint(
    *, bias: bool = True, layers: int = 2, dtype: mx.Dtype = mx.float32, seed: int = 0
) -> dict[str, mx.array]:
    """Hugging Face Llama naming; q/k/v carry biases when ``bias`` (as Qwen2 does)."""
    key = mx.random.key(seed)
    ckpt: dict[str, mx.array] = {}

    def rnd(*shape: int) -> mx.array:
        nonlocal key
        key, sub = mx.random.split(key)
        return mx.random.normal(shape, key=sub).astype(dtype)

    ckpt["model.embed_tokens.weight"] = rnd(VOCAB, D)
    for i in range(layers):
        p = f"model.layers.{i}"
        ckpt[f"{p}.input_layernorm.weight"] = rnd(D)
        ckpt[f"{p}.post_attention_layernorm.weight"] = rnd(D)
        for name, out in (("q_proj", D), ("k_proj", KV), ("v_proj", KV), ("o_proj", D)):
            ckpt[f"{p}.self_attn.{name}.weight"] = rnd(out, D)
            if bias and name != "o_proj":
                ckpt[f"{p}.self_attn.{name}.bias"] = rnd(out)
        ckpt[f"{p}.mlp.gate_proj.weight"] = rnd(HIDDEN, D)
        ckpt[f"{p}.mlp.up_proj.weight"] = rnd(HIDDEN, D)
        ckpt[f"{p}.mlp.down_proj.weight"] = rnd(D, HIDDEN)
    ckpt["model.norm.weight"] = rnd(D)
    return ckpt


def quantize_linears(
    ckpt: dict[str, mx.array], group_size: int, bits: int, mode: str = "affine"
) -> dict[str, mx.array]:
    """Replace every projection ``.weight`` with Ollama/MLX ``.weight/.scales[/.biases]``."""
    out: dict[str, mx.array] = {}
    for key, value in ckpt.items():
        if key.endswith("_proj.weight"):
            base = key[: -len(".weight")]
            parts = mx.quantize(value, group_size=group_size, bits=bits, mode=mode)
            out[f"{base}.weight"], out[f"{base}.scales"] = parts[0], parts[1]
            if mode == "affine":
                out[f"{base}.biases"] = parts[2]
        else:
            out[key] = value
    return out


def lin(layer: object) -> Linear:
    """Narrow a ``LinearLayer`` field to ``Linear`` (failing the test if it is not one)."""
    assert isinstance(layer, Linear), type(layer)
    return layer


def qlin(layer: object) -> QuantizedLinear:
    """Narrow a ``LinearLayer`` field to ``QuantizedLinear``."""
    assert isinstance(layer, QuantizedLinear), type(layer)
    return layer


def mx_load(path: Path) -> dict[str, mx.array]:
    """``mx.load`` of a safetensors file, typed."""
    loaded = mx.load(str(path))
    assert isinstance(loaded, dict)
    return loaded


def same(a: mx.array | None, b: mx.array) -> bool:
    """Same shape, dtype and bits (NaN-free inputs)."""
    assert a is not None
    return a.shape == b.shape and a.dtype == b.dtype and bool(mx.array_equal(a, b))


# ---------------------------------------------------------------------------------------
# load_weights: happy paths
# ---------------------------------------------------------------------------------------


def test_llama_from_dict_fills_every_field() -> None:
    ckpt = llama_checkpoint()
    m = load_weights(TinyLlama, ckpt)
    assert isinstance(m.embed, Embedding)
    assert same(m.embed.weight, ckpt["model.embed_tokens.weight"])
    assert len(m.layers) == 2 and m.lm_head is None
    for i, block in enumerate(m.layers):
        p = f"model.layers.{i}"
        assert isinstance(block.input_norm, RMSNorm) and block.input_norm.eps == 1e-6
        assert same(block.post_norm.weight, ckpt[f"{p}.post_attention_layernorm.weight"])
        assert isinstance(block.attn.q, Linear) and isinstance(block.mlp.down, Linear)
        assert same(lin(block.attn.k).weight, ckpt[f"{p}.self_attn.k_proj.weight"])
        assert same(lin(block.attn.k).bias, ckpt[f"{p}.self_attn.k_proj.bias"])
        assert lin(block.attn.o).bias is None
    assert same(m.norm.weight, ckpt["model.norm.weight"])
    # The loaded layer computes with the loaded arrays.
    x = mx.random.normal((3, D), key=mx.random.key(7))
    w, b = (
        ckpt["model.layers.1.self_attn.q_proj.weight"],
        ckpt["model.layers.1.self_attn.q_proj.bias"],
    )
    np.testing.assert_allclose(
        np.array(m.layers[1].attn.q(x)), np.array(x @ w.T + b), rtol=1e-5, atol=1e-5
    )


def test_llama_from_file_and_from_shards(tmp_path: Path) -> None:
    ckpt = llama_checkpoint(dtype=mx.bfloat16)
    ckpt["lm_head.weight"] = mx.ones((VOCAB, D), dtype=mx.bfloat16)
    one = tmp_path / "model.safetensors"
    mx.save_safetensors(str(one), ckpt)  # a file written by MLX itself
    m = load_weights(TinyLlama, one)
    assert m.embed.weight.dtype == mx.bfloat16
    assert same(lin(m.layers[1].mlp.up).weight, ckpt["model.layers.1.mlp.up_proj.weight"])
    assert isinstance(m.lm_head, Linear) and m.lm_head.output_dim == VOCAB

    # Two shards, as Hugging Face splits a checkpoint; written by save_safetensors.
    keys = sorted(ckpt)
    shard_a, shard_b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_safetensors(shard_a, {k: ckpt[k] for k in keys[::2]})
    save_safetensors(shard_b, {k: ckpt[k] for k in keys[1::2]})
    m2 = load_weights(TinyLlama, [shard_a, str(shard_b)])
    assert same(lin(m2.layers[0].attn.v).bias, ckpt["model.layers.0.self_attn.v_proj.bias"])
    assert same(m2.norm.weight, ckpt["model.norm.weight"])


def test_optional_biases_present_and_absent() -> None:
    with_bias = load_weights(TinyLlama, llama_checkpoint(bias=True))
    without = load_weights(TinyLlama, llama_checkpoint(bias=False))
    q_bias = lin(with_bias.layers[0].attn.q).bias
    assert q_bias is not None and q_bias.shape == (D,)
    assert lin(without.layers[0].attn.q).bias is None and lin(without.layers[1].attn.v).bias is None


def test_prefix_and_strict() -> None:
    ckpt = llama_checkpoint()
    # One block under a prefix; keys outside the prefix are not "unexpected".
    block = load_weights(Block, ckpt, prefix="model.layers.1")
    assert same(lin(block.mlp.gate).weight, ckpt["model.layers.1.mlp.gate_proj.weight"])
    ckpt["model.layers.1.extra.weight"] = mx.ones((2,))
    with pytest.raises(WeightLoadError) as info:
        load_weights(Block, ckpt, prefix="model.layers.1")
    assert info.value.unexpected == ["model.layers.1.extra.weight"]
    assert load_weights(Block, ckpt, prefix="model.layers.1", strict=False).post_norm.eps == 1e-6


@dataclass
class Optionals:
    bias: mx.array | None = weight("b")
    head: Attention | None = weight("head")
    extras: list[mx.array] = weight("extras", optional=True)
    maybe_list: list[mx.array] | None = weight("maybe")
    required_list: list[mx.array] = weight("items")


def test_optional_raw_nested_and_lists() -> None:
    m = load_weights(Optionals, {"items.0": mx.ones((2,)), "items.1": mx.zeros((3,))})
    assert m.bias is None and m.head is None and m.extras == [] and m.maybe_list is None
    assert [a.shape for a in m.required_list] == [(2,), (3,)]
    m = load_weights(
        Optionals,
        {
            "items.0": mx.ones((1,)),
            "extras.0": mx.ones((4,)),
            "b": mx.ones((5,)),
            "maybe.0": mx.ones(()),
        },
    )
    assert m.bias is not None and m.bias.shape == (5,)
    assert len(m.extras) == 1 and m.maybe_list is not None and m.maybe_list[0].shape == ()
    # An empty required list is missing; a present-but-partial optional nested model is
    # loaded, so its own missing weights are reported.
    with pytest.raises(WeightLoadError) as info:
        load_weights(Optionals, {"head.q_proj.weight": mx.ones((2, 2))})
    assert set(info.value.missing) == {
        "items.0",
        "head.k_proj.weight",
        "head.v_proj.weight",
        "head.o_proj.weight",
    }


@dataclass
class AllLayers:
    ln: LayerNorm = weight("ln", eps=1e-5)
    ln_nobias: LayerNorm = weight("ln2")
    multi: MultiLinear = weight("multi")
    frms: fast.RMSNorm = weight("frms")
    fln: fast.LayerNorm = weight("fln")
    pos: mx.array = weight("pos", shape=(None, 4), dtype=mx.floating)
    proj: Linear | QuantizedLinear = weight("proj", shape=(3, 4))


def test_every_layer_class() -> None:
    ckpt = {
        "ln.weight": mx.ones((4,)),
        "ln.bias": mx.zeros((4,)),
        "ln2.weight": mx.ones((4,)),
        "multi.weight": mx.ones((2, 3, 4)),
        "frms.weight": mx.ones((4,)),
        "fln.weight": mx.ones((4,)),
        "pos": mx.ones((7, 4)),
        "proj.weight": mx.ones((3, 4)),
    }
    m = load_weights(AllLayers, ckpt)
    assert isinstance(m.ln, LayerNorm) and m.ln.bias is not None and m.ln_nobias.bias is None
    assert isinstance(m.multi, MultiLinear) and isinstance(m.frms, fast.RMSNorm)
    assert isinstance(m.fln, fast.LayerNorm) and m.fln.bias is None
    assert isinstance(m.proj, Linear) and m.pos.shape == (7, 4)


def test_declared_shape_and_dtype_and_layer_rules() -> None:
    ckpt = {
        "ln.weight": mx.ones((4,)),
        "ln.bias": mx.zeros((5,)),  # LayerNorm bias length != weight length
        "ln2.weight": mx.ones((4, 1)),  # norm weight not 1-D
        "multi.weight": mx.ones((3, 4)),  # MultiLinear weight not 3-D
        "frms.weight": mx.ones((4,), dtype=mx.int32),  # integer norm weight
        "fln.weight": mx.ones((4,)),
        "pos": mx.ones((7, 5), dtype=mx.int32),  # declared (None, 4), floating
        "proj.weight": mx.ones((3, 6)),  # declared (3, 4)
    }
    with pytest.raises(WeightLoadError) as info:
        load_weights(AllLayers, ckpt)
    err = info.value
    text = str(err)
    assert len(err.mismatched) == 7, text
    assert "'ln.bias'" in text and "(5,)" in text
    assert "'ln2.weight'" in text and "1-D" in text
    assert "'multi.weight'" in text and "3-D" in text
    assert "'frms.weight'" in text and "floating" in text and "int32" in text
    assert "declared shape ('*', 4)" in text and "expected dtype" in text
    assert "'proj.weight'" in text and "declared shape (3, 4)" in text
    assert not err.missing and not err.unexpected


# ---------------------------------------------------------------------------------------
# Quantized checkpoints
# ---------------------------------------------------------------------------------------


def test_quantized_q4_checkpoint_matches_quantized_matmul(tmp_path: Path) -> None:
    float_ckpt = llama_checkpoint(bias=True)
    qckpt = quantize_linears(float_ckpt, group_size=32, bits=4)
    path = tmp_path / "q4.safetensors"
    save_safetensors(path, qckpt, {"quantization": "Q4"})
    m = load_weights(TinyLlama, path, quantization="Q4")
    x = mx.random.normal((2, D), key=mx.random.key(3))
    for i in range(2):
        for name, layer in (
            ("self_attn.q_proj", m.layers[i].attn.q),
            ("mlp.down_proj", m.layers[i].mlp.down),
        ):
            p = f"model.layers.{i}.{name}"
            assert isinstance(layer, QuantizedLinear)
            assert (layer.group_size, layer.bits, layer.mode) == (32, 4, "affine")
            xin = (
                x
                if name.startswith("self")
                else mx.random.normal((2, HIDDEN), key=mx.random.key(4))
            )
            want = mx.quantized_matmul(
                xin,
                qckpt[f"{p}.weight"],
                qckpt[f"{p}.scales"],
                qckpt[f"{p}.biases"],
                transpose=True,
                group_size=32,
                bits=4,
            )
            if f"{p}.bias" in qckpt:
                want = want + qckpt[f"{p}.bias"]
            assert same(layer(xin), want)
    # Unquantized layers of the same checkpoint stay float.
    assert isinstance(m.embed, Embedding) and m.embed.weight.dtype == mx.float32
    # The same via an explicit tuple.
    m2 = load_weights(TinyLlama, qckpt, quantization=(32, 4, "affine"))
    assert same(qlin(m2.layers[0].attn.k).scales, qckpt["model.layers.0.self_attn.k_proj.scales"])


def test_quantized_without_quantization_or_with_wrong_label() -> None:
    qckpt = quantize_linears(llama_checkpoint(layers=1), group_size=32, bits=4)
    with pytest.raises(WeightLoadError) as info:
        load_weights(TinyLlama, qckpt)
    text = str(info.value)
    assert "7 quantized layer(s)" in text and "quantization=None" in text and "'Q4'" in text
    assert not info.value.unexpected  # the keys are accounted for, not "unexpected"
    # Q8 is (64, 8): the packed widths imply other input sizes: every layer is mis-shaped.
    with pytest.raises(WeightLoadError) as info:
        load_weights(TinyLlama, qckpt, quantization="Q8")
    assert len(info.value.mismatched) >= 7
    assert "not a multiple of the group size 64" in str(info.value)


def test_quantized_shape_and_dtype_rules() -> None:
    qckpt = quantize_linears(llama_checkpoint(layers=1, bias=False), group_size=32, bits=4)
    p = "model.layers.0.self_attn"
    qckpt[f"{p}.q_proj.scales"] = mx.concatenate(
        [qckpt[f"{p}.q_proj.scales"]] * 2, axis=1
    )  # 2 groups, not 1
    qckpt[f"{p}.k_proj.biases"] = qckpt[f"{p}.k_proj.biases"].astype(mx.float16)  # dtype != scales
    qckpt[f"{p}.v_proj.weight"] = qckpt[f"{p}.v_proj.weight"].astype(mx.int32)  # not uint32
    del qckpt[f"{p}.o_proj.biases"]  # affine needs biases
    with pytest.raises(WeightLoadError) as info:
        load_weights(TinyLlama, qckpt, quantization="Q4")
    err = info.value
    assert err.missing == [f"{p}.o_proj.biases"]
    text = str(err)
    assert (
        f"'{p}.q_proj.scales'" in text
        and f"({D}, {D // 32}) for weight ({D}, {D // 8}) but has ({D}, 2)" in text
    )
    assert f"'{p}.k_proj.biases'" in text and "float16" in text
    assert f"'{p}.v_proj.weight'" in text and "uint32" in text


@dataclass
class QProj:
    proj: LinearLayer = weight("proj", shape=(8, 32))


def test_nvfp4_checkpoint_and_stray_biases() -> None:
    w = mx.random.normal((8, 32), key=mx.random.key(5))
    wq, scales, *_ = mx.quantize(w, group_size=16, bits=4, mode="nvfp4")
    m = load_weights(QProj, {"proj.weight": wq, "proj.scales": scales}, quantization="NVFP4")
    assert isinstance(m.proj, QuantizedLinear) and m.proj.mode == "nvfp4"
    x = mx.random.normal((2, 32), key=mx.random.key(6))
    want = mx.quantized_matmul(x, wq, scales, transpose=True, group_size=16, bits=4, mode="nvfp4")
    assert same(m.proj(x), want)
    with pytest.raises(WeightLoadError, match="mode nvfp4 stores no biases"):
        load_weights(
            QProj,
            {"proj.weight": wq, "proj.scales": scales, "proj.biases": mx.zeros((8, 2))},
            quantization="NVFP4",
        )
    # The declared shape is the unpacked [out, in]; a float layer of another shape fails it.
    with pytest.raises(WeightLoadError, match=r"declared shape \(8, 32\)"):
        load_weights(QProj, {"proj.weight": mx.ones((8, 16))})


# ---------------------------------------------------------------------------------------
# One error that lists everything; no half-built model
# ---------------------------------------------------------------------------------------


def test_one_error_lists_every_problem(tmp_path: Path) -> None:
    ckpt = llama_checkpoint()
    del ckpt["model.norm.weight"]
    del ckpt["model.layers.1.mlp.up_proj.weight"]
    ckpt["model.layers.0.self_attn.rotary.inv_freq"] = mx.ones((4,))
    ckpt["model.layers.0.self_attn.q_proj.bias"] = mx.ones((D + 1,))
    path = tmp_path / "broken.safetensors"
    save_safetensors(path, ckpt)
    with pytest.raises(WeightLoadError) as info:
        load_weights(TinyLlama, path)
    err = info.value
    assert isinstance(err, ValueError)
    assert sorted(err.missing) == ["model.layers.1.mlp.up_proj.weight", "model.norm.weight"]
    assert err.unexpected == ["model.layers.0.self_attn.rotary.inv_freq"]
    assert len(err.mismatched) == 1 and "model.layers.0.self_attn.q_proj.bias" in err.mismatched[0]
    assert len(err.problems) == 4 and err.files == [str(path)]
    text = str(err)
    assert text.startswith(f"[load_weights] Cannot load TinyLlama from {path}: 4 problems:")
    for key in (*err.missing, *err.unexpected, "model.layers.0.self_attn.q_proj.bias"):
        assert key in text
    assert f"(in {path})" in text and f"({D + 1},)" in text
    copy = pickle.loads(pickle.dumps(err))  # survives multiprocessing with its attributes
    assert str(copy) == text and copy.missing == err.missing and copy.files == err.files


def test_failed_load_builds_nothing() -> None:
    good = load_weights(TinyLlama, llama_checkpoint(seed=1))
    before = np.array(lin(good.layers[0].attn.q).weight)
    blocks, models = Block.built, TinyLlama.built
    bad = llama_checkpoint(seed=2)
    del bad["model.layers.1.input_layernorm.weight"]
    with pytest.raises(WeightLoadError):
        load_weights(TinyLlama, bad)
    # No model or block object was even constructed, and earlier models are untouched.
    assert (Block.built, TinyLlama.built) == (blocks, models)
    np.testing.assert_array_equal(np.array(lin(good.layers[0].attn.q).weight), before)


@dataclass
class BadKwarg:
    norm: RMSNorm = weight("norm", bogus=1)
    other: RMSNorm = weight("other")


def test_constructor_rejection_joins_the_one_error() -> None:
    # Checks pass, but the layer constructor refuses an argument: still one WeightLoadError
    # (naming the field), and no model is returned.
    with pytest.raises(WeightLoadError) as info:
        load_weights(BadKwarg, {"norm.weight": mx.ones((4,)), "other.weight": mx.ones((4,))})
    (line,) = info.value.problems
    assert line.startswith("'norm': RMSNorm rejected its weights:") and "bogus" in line


def test_list_gap_and_non_array_values() -> None:
    ckpt = llama_checkpoint(layers=3)
    for key in [k for k in ckpt if k.startswith("model.layers.1.")]:
        del ckpt[key]
    ckpt["model.norm.weight"] = np.ones(D, dtype=np.float32)  # type: ignore[assignment]
    with pytest.raises(WeightLoadError) as info:
        load_weights(TinyLlama, ckpt)
    text = str(info.value)
    assert "list 'model.layers' stops at index 1" in text and "[2]" in text
    assert "'model.norm.weight': expected an mx.array but got ndarray" in text
    assert not info.value.unexpected  # the stranded layer 2 is reported once, as the gap


def test_declaration_errors() -> None:
    with pytest.raises(ValueError, match=r"\[weight\]"):
        weight("")
    with pytest.raises(ValueError, match=r"\[weight\]"):
        weight("a..b")
    with pytest.raises(TypeError, match=r"\[load_weights\] model_type"):
        load_weights(dict, {})

    @dataclass
    class BadType:
        x: int = weight("x")

    with pytest.raises(TypeError, match="cannot fill a field of type"):
        load_weights(BadType, {"x": mx.ones(1)})

    @dataclass
    class NoDecl:
        x: mx.array

    with pytest.raises(TypeError, match="neither a weight"):
        load_weights(NoDecl, {})

    @dataclass
    class KwargsOnRaw:
        x: mx.array = weight("x", eps=1.0)

    with pytest.raises(TypeError, match="only apply to layers"):
        load_weights(KwargsOnRaw, {"x": mx.ones(1)})
    with pytest.raises(ValueError, match="mode"):
        load_weights(QProj, {}, quantization=(32, 4, "nope"))
    with pytest.raises(ValueError, match="nvfp4 needs group_size 16"):
        load_weights(QProj, {}, quantization=(32, 4, "nvfp4"))


def test_docstring_examples_run() -> None:
    result = doctest.testmod(loading, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 10 and result.failed == 0


# ---------------------------------------------------------------------------------------
# save_safetensors / load_safetensors
# ---------------------------------------------------------------------------------------


ALL_DTYPES = [
    mx.bool_, mx.uint8, mx.int8, mx.uint16, mx.int16, mx.uint32, mx.int32, mx.uint64,
    mx.int64, mx.float16, mx.bfloat16, mx.float32, mx.float64, mx.complex64,
]  # fmt: skip


def test_round_trip_every_dtype_and_shape(tmp_path: Path) -> None:
    arrays: dict[str, mx.array] = {}
    for i, dt in enumerate(ALL_DTYPES):
        base = mx.array([[0, 1, 2], [3, 200, 7]])
        arrays[f"t{i}"] = (base > 1) if dt == mx.bool_ else base.astype(dt)
    arrays["scalar"] = mx.array(-2.5, dtype=mx.bfloat16)
    arrays["empty"] = mx.zeros((0, 3), dtype=mx.float16)
    arrays["transposed"] = mx.arange(6, dtype=mx.float32).reshape(2, 3).T
    arrays["neg_bf16"] = mx.array([-1e30, 3.140625, -0.0], dtype=mx.bfloat16)
    path = tmp_path / "all.safetensors"
    save_safetensors(path, arrays, {"format": "mlx"})
    back = load_safetensors(path)
    assert back.keys() == arrays.keys()
    for k, a in arrays.items():
        assert same(back[k], a), k
    # Interoperable: MLX's loader reads it identically, metadata included (all but F64,
    # which mx.load 0.32.4 rejects: "[safetensor] unsupported dtype F64").
    del arrays[f"t{ALL_DTYPES.index(mx.float64)}"]
    save_safetensors(path, arrays, {"format": "mlx"})
    loaded = mx.load(str(path), return_metadata=True)
    assert isinstance(loaded, tuple)
    theirs, meta = loaded
    assert meta == {"format": "mlx"}
    for k, a in arrays.items():
        assert same(theirs[k], a), k
    # The header is padded to a multiple of 8 bytes, as the format recommends.
    (header_len,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert header_len % 8 == 0


def test_reads_safetensors_package_files(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    path = tmp_path / "np.safetensors"
    w = np.arange(12, dtype=np.float16).reshape(3, 4)
    save_file({"w": w, "i": np.array([-1, 2], dtype=np.int64)}, str(path))
    back = load_safetensors(path)
    np.testing.assert_array_equal(np.array(back["w"]), w)
    assert back["i"].dtype == mx.int64 and back["i"].tolist() == [-1, 2]


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "w.safetensors"
    save_safetensors(path, {"a": mx.ones((2,))})
    old = path.read_bytes()
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask

    def failing(specs: object, file: str, metadata: object) -> None:
        Path(file).write_bytes(b"partial")  # the disk fills up halfway through the write
        raise OSError("disk full")

    monkeypatch.setattr(safetensors_io, "_write_file", failing)
    with pytest.raises(OSError, match="disk full"):
        save_safetensors(path, {"a": mx.zeros((2,)), "b": mx.zeros((3,))})
    assert path.read_bytes() == old  # untouched
    assert sorted(os.listdir(tmp_path)) == ["w.safetensors"]  # no temp file left behind


def test_save_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserved"):
        save_safetensors(tmp_path / "x", {"__metadata__": mx.ones(1)})
    with pytest.raises(TypeError, match=r"mx\.array"):
        save_safetensors(tmp_path / "x", {"a": np.ones(1)})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="metadata"):
        save_safetensors(tmp_path / "x", {"a": mx.ones(1)}, {"n": 1})  # type: ignore[dict-item]
    assert not os.listdir(tmp_path)


# Malformed files, written byte by byte.


def write_raw(path: Path, header: object, data: bytes = b"", header_len: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data)
    return path


def entry(dtype: str, shape: list, begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def load_error(*paths: Path) -> WeightLoadError:
    with pytest.raises(WeightLoadError) as info:
        load_safetensors(list(paths))
    return info.value


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    save_safetensors(path, {"a": mx.ones((4,)), "b": mx.ones((8,))})
    full = path.read_bytes()
    path.write_bytes(full[:-5])
    err = load_error(path)
    assert str(path) in str(err) and "'b'" in str(err) and "truncated" in str(err)
    path.write_bytes(full[:20])  # cut inside the header
    assert "header length" in str(load_error(path))
    path.write_bytes(full[:5])
    assert "too short" in str(load_error(path))


def test_header_length_past_eof(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "h.safetensors", {"a": entry("F32", [1], 0, 4)}, b"\0" * 4, 1 << 40)
    err = load_error(path)
    assert f"{path}: header length {1 << 40} runs past the end of the file" in str(err)


def test_header_that_lies(tmp_path: Path) -> None:
    header = {
        "big": entry("F32", [1000], 0, 16),  # shape needs 4000 bytes
        "past": entry("F32", [4], 16, 80),  # beyond the 32-byte data section
        "backwards": entry("F32", [0], 8, 4),
        "neg": entry("F32", [-4], 0, 16),
        "boolshape": entry("F32", [True], 0, 4),
        "x": entry("F32", [4], 0, 16),
        "y": entry("F32", [4], 8, 24),  # overlaps x
        "z": entry("U8", [4], 24, 28),
    }
    path = write_raw(tmp_path / "lie.safetensors", header, b"\0" * 32)
    err = load_error(path)
    text = str(err)
    assert len(err.problems) == 6, text
    for name in ("big", "past", "backwards", "neg", "boolshape"):
        assert f"tensor {name!r}" in text
    assert "tensors 'x' [0, 16) and 'y' [8, 24) overlap" in text
    assert "'z'" not in text
    assert text.startswith(f"[load_safetensors] Cannot load safetensors from {path}: 6 problems:")
    # mx.load reads the overlapping pair without complaint (why we validate ourselves).
    ok = write_raw(tmp_path / "ov.safetensors", {"x": header["x"], "y": header["y"]}, b"\0" * 32)
    assert set(mx_load(ok)) == {"x", "y"}
    assert "overlap" in str(load_error(ok))


def test_dtypes_unknown_unsupported_and_raw_fp8(tmp_path: Path) -> None:
    header = {"q": entry("Q7", [4], 0, 4), "e5": entry("F8_E5M2", [4], 4, 8)}
    err = load_error(write_raw(tmp_path / "d.safetensors", header, b"\0" * 8))
    assert "unknown dtype 'Q7'" in str(err) and "F8_E5M2 has no MLX equivalent" in str(err)
    # F8_E4M3 codes load as raw uint8, exactly as mx.load hands them out.
    path = write_raw(
        tmp_path / "e4.safetensors", {"s": entry("F8_E4M3", [3], 0, 3)}, b"\x38\x40\xb8"
    )
    got = load_safetensors(path)["s"]
    assert same(got, mx_load(path)["s"]) and got.tolist() == [0x38, 0x40, 0xB8]


def test_header_not_json(tmp_path: Path) -> None:
    cases = {
        "text": b"not json at all{",
        "utf8": b'{"\xff": 1}',
        "array": b"[1, 2]",
        "dupkey": b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, "a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}',
        "nan": b'{"a": {"dtype": "U8", "shape": [NaN], "data_offsets": [0, 1]}}',
        "entry": b'{"a": 5}',
        "meta": b'{"__metadata__": {"k": 1}}',
    }
    expected = {
        "text": "not valid JSON",
        "utf8": "not valid UTF-8",
        "array": "must be a JSON object",
        "dupkey": "duplicate key 'a'",
        "nan": "NaN is not valid JSON",
        "entry": "entry must be an object",
        "meta": "__metadata__ must map strings to strings",
    }
    paths = [write_raw(tmp_path / f"{name}.safetensors", raw, b"\0") for name, raw in cases.items()]
    err = load_error(*paths)  # every broken file reported in one error
    assert len(err.problems) == len(cases) and all(str(p) in str(err) for p in paths)
    for (name, want), path in zip(expected.items(), paths, strict=True):
        (line,) = [p for p in err.problems if p.startswith(f"{path}: ")]
        assert want in line, (name, line)


def test_duplicate_keys_across_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_safetensors(a, {"w": mx.ones((2,)), "x": mx.ones((1,))})
    save_safetensors(b, {"w": mx.zeros((2,))})
    err = load_error(a, b)
    assert f"tensor 'w' appears in both {a} and {b}" in str(err)
    with pytest.raises(WeightLoadError, match="appears in both"):
        load_weights(Optionals, [a, b], strict=False)


class _Boom:
    """Unpickling this object creates a marker file: proof that pickle ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (Path(self.marker),))


def test_pickle_renamed_safetensors_is_not_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps({"w": _Boom(str(marker))}, protocol=4))
    err = load_error(path)
    assert "header length" in str(err) and str(path) in str(err)
    with pytest.raises(WeightLoadError):
        load_weights(TinyLlama, path)
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # control: unpickling WOULD have created it
    assert marker.exists()


def test_missing_file_and_bad_paths(tmp_path: Path) -> None:
    err = load_error(tmp_path / "nope.safetensors")
    assert "nope.safetensors: cannot read" in str(err)
    with pytest.raises(ValueError, match="no files given"):
        load_safetensors([])
    with pytest.raises(TypeError, match="paths"):
        load_safetensors(42)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# The libraries decide: rules the safetensors package enforces, torch never imported
# ---------------------------------------------------------------------------------------


def test_unowned_bytes_are_refused_though_mx_load_reads_them(tmp_path: Path) -> None:
    # The format's rule that the data section is exactly covered by the tensors: the
    # safetensors library enforces it; mx.load does not look.
    gap = write_raw(
        tmp_path / "gap.safetensors", {"x": entry("F32", [4], 0, 16), "y": entry("F32", [4], 20, 36)},
        b"\0" * 36,
    )
    tail = write_raw(tmp_path / "tail.safetensors", {"x": entry("F32", [4], 0, 16)}, b"\0" * 20)
    assert set(mx_load(gap)) == {"x", "y"} and set(mx_load(tail)) == {"x"}
    err = load_error(gap, tail)
    assert len(err.problems) == 2, str(err)
    assert f"{gap}: bytes [16, 20) of the data section belong to no tensor (before 'y')" in str(err)
    assert f"{tail}: the data section has 4 bytes after the last tensor" in str(err)


def test_huge_declared_shape_is_refused_without_allocating(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "huge.safetensors", {"w": entry("U8", [2**40, 2**40], 0, 8)}, b"\0" * 8)
    err = load_error(path)
    (line,) = err.problems
    assert line.startswith(f"{path}: tensor 'w': shape [{2**40}, {2**40}] of U8 needs")


def test_bool_bytes_other_than_0_and_1_load_as_true(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "b.safetensors", {"b": entry("BOOL", [3], 0, 3)}, b"\x00\x01\x07")
    got = load_safetensors(path)["b"]
    assert got.dtype == mx.bool_ and got.tolist() == [False, True, True]


def test_float64_and_bfloat16_in_one_file(tmp_path: Path) -> None:
    # mx.load refuses F64; such a file is read through the safetensors library instead,
    # which must still hand out bfloat16 bit for bit.
    arrays = {
        "d": mx.array([1e300, -2.5, 5e-324], dtype=mx.float64),
        "h": mx.array([[1.5, -3e38]], dtype=mx.bfloat16),
    }
    path = tmp_path / "mixed.safetensors"
    save_safetensors(path, arrays)
    back = load_safetensors(path)
    assert same(back["d"], arrays["d"]) and same(back["h"], arrays["h"])


def test_loading_never_imports_torch(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys, mlx.core as mx\n"
        "from mlx_impl.loading import load_safetensors, save_safetensors\n"
        f"p = {str(tmp_path / 'w.safetensors')!r}\n"
        "save_safetensors(p, {'w': mx.ones((2,), dtype=mx.bfloat16), 'd': mx.ones((1,), dtype=mx.float64)})\n"
        "load_safetensors(p)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
