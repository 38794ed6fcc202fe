"""Embedding: rows by index, the three index policies (the out-of-range contract that
mx.take itself does not enforce), MLX vs the PyTorch twin, and errors."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn
import numpy as np
import pytest
import torch

import mlx_impl.nn.embedding as mx_embedding_module
from mlx_impl.nn.embedding import Embedding as MxEmbedding
from mlx_impl.nn.embedding import IndexPolicy
from torch_reference.nn.embedding import Embedding as TorchEmbedding

N, D = 6, 4
TABLE = (np.arange(N * D, dtype=np.float32).reshape(N, D) - 7.5) / 4  # row r = distinct values
MX_DTYPE = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
TORCH_DTYPE = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def mx_idx(a) -> mx.array:
    return mx.array(np.asarray(a))


def torch_idx(a) -> torch.Tensor:
    a = np.asarray(a)
    if a.dtype == np.uint64:  # torch.from_numpy has no uint64: go through int64 bits
        return torch.from_numpy(a.view(np.int64)).view(torch.uint64)
    return torch.from_numpy(a)


def layers(policy: IndexPolicy = "check", dtype: str = "float32"):
    w_mx = mx.array(TABLE).astype(MX_DTYPE[dtype])
    w_t = torch.from_numpy(TABLE).to(TORCH_DTYPE[dtype])
    return MxEmbedding(w_mx, index_policy=policy), TorchEmbedding(w_t, index_policy=policy)


def as_np(y) -> np.ndarray:
    if isinstance(y, mx.array):
        return np.array(y.astype(mx.float32))
    return y.float().numpy()


# ---------------------------------------------------------------------- known answers


@pytest.mark.parametrize(
    "indices",
    [np.array(3), np.array([5, 0, 0, 2]), np.array([[1, 4], [4, 1]]), np.zeros((0, 3), np.int32)],
    ids=["scalar", "1-D with repeats", "2-D", "empty"],
)
@pytest.mark.parametrize("policy", ["check", "clip", "trusted"])
def test_rows_by_index(indices, policy):
    e_mx, e_t = layers(policy)
    expected = TABLE[indices]
    y_mx, y_t = e_mx(mx_idx(indices)), e_t(torch_idx(indices))
    assert y_mx.shape == y_t.shape == (*indices.shape, D)
    np.testing.assert_array_equal(as_np(y_mx), expected)
    np.testing.assert_array_equal(as_np(y_t), expected)


@pytest.mark.parametrize("dtype", list(MX_DTYPE))
@pytest.mark.parametrize(
    "index_dtype",
    [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64],
)
def test_mlx_and_twin_bit_exact_every_dtype(dtype, index_dtype):
    """A lookup copies rows: bit-exact in every weight dtype, for every integer index dtype."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((N, D)).astype(np.float32)
    indices = rng.integers(0, N, size=(2, 3)).astype(index_dtype)
    e_mx = MxEmbedding(mx.array(w).astype(MX_DTYPE[dtype]))
    e_t = TorchEmbedding(torch.from_numpy(w).to(TORCH_DTYPE[dtype]))
    y_mx, y_t = e_mx(mx_idx(indices)), e_t(torch_idx(indices))
    assert y_mx.dtype == MX_DTYPE[dtype] and y_t.dtype == TORCH_DTYPE[dtype]
    np.testing.assert_array_equal(as_np(y_mx), as_np(y_t))
    np.testing.assert_array_equal(
        as_np(y_t), as_np(torch.from_numpy(w).to(TORCH_DTYPE[dtype]))[indices]
    )
    y_64 = e_t(torch_idx(indices), precision="float64")
    assert y_64.dtype == torch.float64
    np.testing.assert_array_equal(y_64.numpy(), as_np(y_t))


def test_properties_and_modules():
    e_mx, e_t = layers()
    assert (e_mx.num_embeddings, e_mx.embedding_dim) == (N, D)
    assert (e_t.num_embeddings, e_t.embedding_dim) == (N, D)
    assert isinstance(e_mx, mlx.nn.Module) and set(e_mx.parameters()) == {"weight"}
    assert isinstance(e_t, torch.nn.Module) and set(e_t.state_dict()) == {"weight"}
    assert e_mx.index_policy == e_t.index_policy == "check"


# -------------------------------------------------------- out of range: policy "check"

OUT_OF_RANGE = [
    ("n", np.array([0, N, 1], dtype=np.int32), N, (1,)),
    ("minus one", np.array([[0, 1], [-1, 2]], dtype=np.int32), -1, (1, 0)),
    ("int32 max", np.array([2**31 - 1], dtype=np.int32), 2**31 - 1, (0,)),
    ("int64 max", np.array([3, 2**63 - 1], dtype=np.int64), 2**63 - 1, (1,)),
    ("uint64 max", np.array([2**64 - 1], dtype=np.uint64), 2**64 - 1, (0,)),
    ("int8 negative", np.array([1, -128], dtype=np.int8), -128, (1,)),
    ("scalar", np.array(N + 10, dtype=np.int32), N + 10, ()),
    ("first of several", np.array([N, -5, N + 1], dtype=np.int64), N, (0,)),
]


@pytest.fixture
def take_must_not_run(monkeypatch):
    """Make any call to mx.take fail the test: a rejected index must never reach MLX."""

    def forbidden(*args, **kwargs):
        raise AssertionError("mx.take was called with unchecked indices")

    monkeypatch.setattr(mx_embedding_module.mx, "take", forbidden)


@pytest.mark.parametrize(
    ("case", "indices", "value", "position"), OUT_OF_RANGE, ids=[c[0] for c in OUT_OF_RANGE]
)
def test_check_raises_before_mx_take(take_must_not_run, case, indices, value, position):
    e_mx, _ = layers("check")
    with pytest.raises(IndexError, match=rf"^\[Embedding\] index {value} at position ") as info:
        e_mx(mx_idx(indices))
    assert f"position {position}" in str(info.value)
    assert f"[0, {N})" in str(info.value) and f"num_embeddings={N}" in str(info.value)


@pytest.mark.parametrize(
    ("case", "indices", "value", "position"), OUT_OF_RANGE, ids=[c[0] for c in OUT_OF_RANGE]
)
def test_check_same_error_in_twin(case, indices, value, position):
    """Same type AND same message: the twin raises its own error, not F.embedding's."""
    e_mx, e_t = layers("check")
    with pytest.raises(IndexError) as from_mx:
        e_mx(mx_idx(indices))
    with pytest.raises(IndexError) as from_torch:
        e_t(torch_idx(indices))
    assert str(from_torch.value) == str(from_mx.value)
    assert f"index {value} at position {position}" in str(from_torch.value)


# ------------------------------------------------------------------- policy "clip"


@pytest.mark.parametrize(
    ("indices", "clamped"),
    [
        (np.array([-1, N, 2**31 - 1, 2], dtype=np.int32), [0, N - 1, N - 1, 2]),
        (np.array([[-(2**63), 2**63 - 1]], dtype=np.int64), [[0, N - 1]]),
        (np.array([2**64 - 1, 1], dtype=np.uint64), [N - 1, 1]),
        (np.array([-128, 127, 3], dtype=np.int8), [0, N - 1, 3]),
    ],
    ids=["int32", "int64 extremes", "uint64 max", "int8"],
)
def test_clip_clamps_into_range(indices, clamped):
    e_mx, e_t = layers("clip")
    expected = TABLE[np.array(clamped)]
    np.testing.assert_array_equal(as_np(e_mx(mx_idx(indices))), expected)
    np.testing.assert_array_equal(as_np(e_t(torch_idx(indices))), expected)


def test_clip_bound_wider_than_index_dtype():
    """n - 1 = 299 does not fit int8: the upper clamp is capped at the dtype max (MLX raises
    on an overflowing clip bound otherwise), so int8 indices still work."""
    table = np.arange(300 * 2, dtype=np.float32).reshape(300, 2)
    indices = np.array([-5, 127, 0], dtype=np.int8)
    expected = table[[0, 127, 0]]
    y_mx = MxEmbedding(mx.array(table), index_policy="clip")(mx_idx(indices))
    y_t = TorchEmbedding(torch.from_numpy(table), index_policy="clip")(torch_idx(indices))
    np.testing.assert_array_equal(as_np(y_mx), expected)
    np.testing.assert_array_equal(as_np(y_t), expected)


# ---------------------------------------------------------------- policy "trusted"


def test_trusted_skips_the_host_check(monkeypatch):
    """ "trusted" calls mx.take directly: no min/max reduction, no sync."""
    e_mx, _ = layers("trusted")

    def forbidden(*args, **kwargs):
        raise AssertionError("trusted must not reduce the indices")

    monkeypatch.setattr(mx_embedding_module.mx, "min", forbidden)
    monkeypatch.setattr(mx_embedding_module.mx, "max", forbidden)
    np.testing.assert_array_equal(as_np(e_mx(mx_idx([2, 3]))), TABLE[[2, 3]])


def test_mx_take_itself_wraps_negative_indices():
    """Why the contract matters: mx.take treats -1 as the last row, silently (and reads
    arbitrary memory beyond [-n, n), which this test does not attempt)."""
    rows = mx.take(mx.array(TABLE), mx.array([-1]), axis=0)
    np.testing.assert_array_equal(np.array(rows), TABLE[[N - 1]])


# ------------------------------------------------------------------------ error cases

ERROR_CASES = [
    ("float indices", TypeError, lambda lib: _call(lib, np.array([1.0, 2.0], dtype=np.float32))),
    ("bool indices", TypeError, lambda lib: _call(lib, np.array([True, False]))),
    ("indices not an array", TypeError, lambda lib: _layer(lib)([1, 2])),
    ("unknown policy", ValueError, lambda lib: _layer(lib, "wrap")),
    ("weight 1-D", ValueError, lambda lib: _make(lib, np.ones(4, np.float32))),
    ("weight 3-D", ValueError, lambda lib: _make(lib, np.ones((2, 2, 2), np.float32))),
    ("weight integer", TypeError, lambda lib: _make(lib, np.ones((2, 2), np.int32))),
    (
        "weight not an array",
        TypeError,
        lambda lib: (MxEmbedding if lib == "mlx" else TorchEmbedding)(TABLE),  # type: ignore[arg-type]
    ),
]


def _make(lib, weight, policy="check"):
    if lib == "mlx":
        return MxEmbedding(mx.array(weight), index_policy=policy)
    return TorchEmbedding(torch.from_numpy(weight), index_policy=policy)


def _layer(lib, policy="check"):
    return _make(lib, TABLE, policy)


def _call(lib, indices):
    layer = _layer(lib)
    return layer(mx_idx(indices) if lib == "mlx" else torch_idx(indices))


@pytest.mark.parametrize(("case", "error", "make"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
@pytest.mark.parametrize("lib", ["mlx", "torch"])
def test_errors_same_type_in_both_packages(lib, case, error, make):
    with pytest.raises(error, match=r"^\[Embedding\] "):
        make(lib)


@pytest.mark.parametrize("policy", ["clip", "trusted"])
def test_bad_index_dtype_rejected_under_every_policy(policy):
    for lib in ("mlx", "torch"):
        with pytest.raises(TypeError, match=r"^\[Embedding\] indices must have an integer dtype"):
            layer = _layer(lib, policy)
            layer(mx.array([0.0]) if lib == "mlx" else torch.tensor([0.0]))


@pytest.mark.parametrize("policy", ["check", "clip", "trusted"])
@pytest.mark.parametrize("indices", [3, True, [0, 1]], ids=["int", "bool", "list"])
def test_non_array_indices_rejected_under_every_policy(policy, indices):
    # mx.take itself accepts a Python int (and bool): "trusted" must not hand it over.
    with pytest.raises(TypeError, match=r"^\[Embedding\] indices must be an mx.array"):
        _layer("mlx", policy)(indices)


def test_twin_rejects_unknown_precision():
    _, e_t = layers()
    with pytest.raises(ValueError, match=r"^\[Embedding\] precision"):
        e_t(torch.tensor([0]), precision="float16")


# ------------------------------------------------------- index_policy type, empty table


@pytest.mark.parametrize(
    "policy",
    [np.array(["check"]), np.array([1, 2, 3]), None, 0, True, b"check"],
    ids=["str array", "int array", "None", "0", "True", "bytes"],
)
@pytest.mark.parametrize("lib", ["mlx", "torch"])
def test_index_policy_not_a_str_is_a_type_error(lib, policy):
    """Was: an array policy made `policy not in INDEX_POLICIES` raise NumPy's unbracketed
    "The truth value of an array ... is ambiguous"."""
    with pytest.raises(TypeError, match=r"^\[Embedding\] index_policy must be a str"):
        _make(lib, TABLE, policy)


EMPTY_TABLE = np.zeros((0, 3), np.float32)


@pytest.mark.parametrize("policy", ["check", "clip", "trusted"])
@pytest.mark.parametrize(
    "indices",
    [np.array([0, 0], np.int32), np.array(0, np.int64), np.zeros((2, 1), np.uint8)],
    ids=["int32 [2]", "int64 scalar", "uint8 [2, 1]"],
)
def test_empty_table_with_indices_refused_under_every_policy(take_must_not_run, policy, indices):
    """Was (clip): mlx's "[take] Cannot do a non-empty take from an empty axis", torch's
    RuntimeError; trusted is covered too (the check is on shapes only)."""
    pattern = r"^\[Embedding\] cannot look up \d+ indices .* empty table \(num_embeddings=0"
    with pytest.raises(IndexError, match=pattern) as from_mx:
        _make("mlx", EMPTY_TABLE, policy)(mx_idx(indices))
    with pytest.raises(IndexError, match=pattern) as from_torch:
        _make("torch", EMPTY_TABLE, policy)(torch_idx(indices))
    assert str(from_mx.value) == str(from_torch.value)


@pytest.mark.parametrize("policy", ["check", "clip", "trusted"])
@pytest.mark.parametrize("index_dtype", [np.int32, np.uint8, np.uint32, np.int8])
def test_empty_table_with_empty_indices_gives_empty_rows(policy, index_dtype):
    """An empty lookup is well defined even with no rows (clip must not build a -1 bound,
    which MLX refuses to convert to an unsigned index dtype)."""
    indices = np.zeros((0, 2), index_dtype)
    y_mx = _make("mlx", EMPTY_TABLE, policy)(mx_idx(indices))
    y_t = _make("torch", EMPTY_TABLE, policy)(torch_idx(indices))
    assert y_mx.shape == tuple(y_t.shape) == (0, 2, 3)
    assert y_mx.dtype == mx.float32 and y_t.dtype == torch.float32


# --------------------------------------- the "check" fast path's cached plans


@pytest.mark.parametrize("replace", ["attribute", "update"])
def test_check_plan_follows_a_replaced_table(replace):
    # The fast path finds a cached plan (compiled gather and clamp bound) per table shape,
    # index dtype and shape: a replaced table, however it is replaced, must be checked
    # against ITS height, not the old one (a stale bound would let index 5 read past a
    # 3-row table).
    layer = MxEmbedding(mx.array(TABLE))
    idx = mx.array([N - 1])
    np.testing.assert_array_equal(np.array(layer(idx)), TABLE[[N - 1]])
    smaller = mx.array(TABLE[:3])
    if replace == "attribute":
        layer.weight = smaller
    else:
        layer.update({"weight": smaller})
    with pytest.raises(IndexError, match=rf"index {N - 1} at position \(0,\) is out of range \[0, 3\)"):
        layer(idx)
    np.testing.assert_array_equal(np.array(layer(mx.array([2]))), TABLE[[2]])


def test_check_plan_follows_the_index_dtype_and_shape():
    # One plan per (dtype, shape): a call with another dtype or shape finds another, and
    # every answer is still mx.take's rows; a non-integer dtype still raises after an
    # integer one.
    layer = MxEmbedding(mx.array(TABLE))
    for indices in (np.array([1, 2]), np.array([1, 2], np.uint8), np.array([[5], [0]], np.int64), np.array(3)):
        np.testing.assert_array_equal(np.array(layer(mx_idx(indices))), TABLE[indices])
    with pytest.raises(TypeError, match="integer dtype"):
        layer(mx.array([1.0, 2.0]))



def test_index_policy_set_later_is_checked():
    # A policy assigned after construction is checked as the constructor's is. Before, an
    # unknown one ("chek") fell through to the unchecked mx.take: no bounds check at all.
    layer = MxEmbedding(mx.array(TABLE))
    with pytest.raises(ValueError, match=r"^\[Embedding\] index_policy must be one of"):
        layer.index_policy = "chek"
    for bad in (0, mx.array([1]), ["check"]):  # (an array or list: past mlx.nn.Module.__setattr__)
        with pytest.raises(TypeError, match=r"^\[Embedding\] index_policy must be a str"):
            layer.index_policy = bad
    assert layer.index_policy == "check"
    with pytest.raises(IndexError):
        layer(mx.array([N]))
    layer.index_policy = "clip"
    np.testing.assert_array_equal(np.array(layer(mx.array([N]))), TABLE[[N - 1]])
    layer.index_policy = "check"
    with pytest.raises(IndexError):
        layer(mx.array([N]))
