"""Where a layer's fast path is written differently from the plain MLX call (Embedding's
checked lookup: a compiled clamp + flag + gather evaluated once), its result must be
BIT-IDENTICAL to the plain call's: ``mx.take`` copies rows, so any difference is a bug.
Every overhead pair (``conformance/bench/overhead.py``) computes the same bits on both
sides (on a GPU, except its ``inexact_on_gpu`` context variants), and every public layer
has one. These tests are not benchmarks; they run in every
pass (smoke included)."""

from __future__ import annotations

import zlib

import mlx.core as mx
import mlx.nn
import numpy as np
import pytest

import mlx_impl
from conformance.bench.overhead import PAIRS, TINY

INDEX_DTYPES = (mx.int32, mx.int64, mx.uint8)
TABLE_DTYPES = (mx.float32, mx.bfloat16, mx.float16)


@pytest.mark.parametrize("table_dtype", TABLE_DTYPES, ids=str)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(), (1, 1), (2, 3, 4)], ids=str)
def test_checked_embedding_is_bit_identical_to_mx_take(table_dtype, index_dtype, shape):
    rng = np.random.default_rng(zlib.crc32(f"{table_dtype}{index_dtype}{shape}".encode()))
    n = 200
    table = mx.array(rng.standard_normal((n, 12)).astype(np.float32)).astype(table_dtype)
    values = rng.integers(0, n, size=shape)
    values.reshape(-1)[:1] = n - 1  # the last row: the clamp bound itself must pass unchanged
    indices = mx.array(values).astype(index_dtype)
    got = mlx_impl.nn.Embedding(table)(indices)
    want = mx.take(table, indices, axis=0)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.array_equal(np.array(got.view(mx.uint16 if table_dtype != mx.float32 else mx.uint32)),
                          np.array(want.view(mx.uint16 if table_dtype != mx.float32 else mx.uint32)))


def test_checked_embedding_flags_after_a_valid_call_of_the_same_shape():
    # The compiled graph is traced once per dtype and rank: a later bad input of the same
    # signature must still raise (the flag is data, not a traced constant).
    layer = mlx_impl.nn.Embedding(mx.ones((5, 2)))
    layer(mx.array([[1, 2]]))
    with pytest.raises(IndexError, match=r"^\[Embedding\] index 5 at position \(0, 1\) "):
        layer(mx.array([[0, 5]]))
    with pytest.raises(IndexError, match=r"^\[Embedding\] index -1 at position \(0, 0\) "):
        layer(mx.array([[-1, 5]]))


def test_checked_embedding_follows_the_table_width_across_calls():
    # A shapeless mx.compile of the gather once baked the first table's row width into
    # later calls (a [5, 4] table answered with 12 columns): widths must follow the table.
    for width in (12, 4, 7):
        table = mx.arange(9 * width, dtype=mx.float32).reshape(9, width)
        for indices in (mx.array(3), mx.array([[1, 8]]), mx.array([0, 2, 4], dtype=mx.uint8)):
            got = mlx_impl.nn.Embedding(table)(indices)
            assert np.array_equal(np.array(got), np.array(mx.take(table, indices, axis=0)))


def _bits(a: mx.array) -> np.ndarray:
    # Compare bit patterns (NaN- and signed-zero-exact), whatever the float dtype.
    a = a.astype(mx.float32) if a.dtype == mx.bfloat16 else a
    return np.array(a.view(mx.uint32 if a.dtype == mx.float32 else mx.uint16))


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16], ids=str)
@pytest.mark.parametrize("pair", PAIRS, ids=[p.id for p in PAIRS])
def test_every_overhead_variant_computes_the_raw_bits(pair, dtype):
    # The overhead table compares a layer with its "raw" formulation: that is only a fair
    # comparison if both compute the same thing, bit for bit (tiny sizes).
    thunks = pair.build(TINY, dtype)
    want = thunks["raw"]()
    for name, thunk in thunks.items():
        if name in pair.inexact_on_gpu and mx.default_device() == mx.gpu:
            continue  # context only, and not the same bits there (OverheadPair.inexact_on_gpu)
        got = thunk()
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert np.array_equal(_bits(got), _bits(want)), name


def test_every_public_layer_has_an_overhead_pair():
    # "Every layer within 5 % of the raw call": every mlx.nn.Module the package exports
    # (nn and fast) must be measured by conformance/bench/overhead.py.
    exported = {f"{pkg}.{name}" for pkg, mod in (("nn", mlx_impl.nn), ("fast", mlx_impl.fast))
                for name in mod.__all__ if isinstance(getattr(mod, name), type)
                and issubclass(getattr(mod, name), mlx.nn.Module)}
    measured = {p.name for p in PAIRS} | {v for p in PAIRS for v in p.variants}
    assert exported <= measured, sorted(exported - measured)


@pytest.mark.parametrize("shaped_limit", [0, 1], ids=["shapeless", "shaped-then-shapeless"])
def test_checked_embedding_past_the_shaped_traces(monkeypatch, shaped_limit):
    # Past _SHAPED_LIMIT index shapes a table's lookups share a shapeless trace: the same
    # rows, and the same IndexError, as the shaped trace and mx.take.
    from mlx_impl.nn import embedding

    monkeypatch.setattr(embedding, "_SHAPED_LIMIT", shaped_limit)
    monkeypatch.setattr(embedding, "_GATHERS", {})
    monkeypatch.setattr(embedding, "_PLANS", {})
    table = mx.arange(11 * 3, dtype=mx.float32).reshape(11, 3)
    layer = mlx_impl.nn.Embedding(table)
    for indices in (mx.array([[1, 10]]), mx.array(4), mx.array([0, 2, 9, 10], dtype=mx.uint8),
                    mx.array([[[3]], [[7]]], dtype=mx.int64)):
        assert np.array_equal(np.array(layer(indices)), np.array(mx.take(table, indices, axis=0)))
    with pytest.raises(IndexError, match=r"^\[Embedding\] index 11 at position \(1,\) "):
        layer(mx.array([0, 11]))
