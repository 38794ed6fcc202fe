"""``torch_reference.loading.load_safetensors`` (the ``safetensors`` package's reader) against
``mlx_impl.load_safetensors`` (the project's own parser): the same tensors, bit for bit; and
the model packages keep the project's import rule (mlx_impl never imports torch,
torch_reference never imports MLX)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch

from mlx_impl.loading import load_safetensors as mlx_load
from mlx_impl.loading import save_safetensors
from torch_reference.loading import load_safetensors as torch_load


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy()
    if t.dtype == torch.uint32:
        return t.view(torch.int32).numpy().view(np.uint32)
    return t.numpy()


def _mx_numpy(a: mx.array) -> np.ndarray:
    return np.array(a.view(mx.int16)) if a.dtype == mx.bfloat16 else np.array(a)


def test_same_tensors_as_mlx_impl(tmp_path: Path) -> None:
    arrays = {
        "f32": mx.random.normal((3, 5)),
        "bf16": mx.random.normal((4,)).astype(mx.bfloat16),
        "f16": mx.random.normal((2, 2)).astype(mx.float16),
        "f64": mx.random.normal((2,)).astype(mx.float64),
        "packed": mx.random.randint(0, 2**31, (4, 2)).astype(mx.uint32),
        "codes": mx.random.randint(0, 255, (4, 1)).astype(mx.uint8),
        "i64": mx.arange(6, dtype=mx.int64).reshape(2, 3),
    }
    save_safetensors(tmp_path / "a.safetensors", dict(list(arrays.items())[:4]))
    save_safetensors(tmp_path / "b.safetensors", dict(list(arrays.items())[4:]))
    files = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    ours, twin = mlx_load(files), torch_load(files)
    assert set(ours) == set(twin) == set(arrays)
    for k in arrays:
        assert tuple(twin[k].shape) == ours[k].shape, k
        np.testing.assert_array_equal(_as_numpy(twin[k]), _mx_numpy(ours[k]), err_msg=k)


def test_name_in_two_shards_is_refused(tmp_path: Path) -> None:
    save_safetensors(tmp_path / "a.safetensors", {"w": mx.zeros((2,))})
    save_safetensors(tmp_path / "b.safetensors", {"w": mx.ones((2,))})
    with pytest.raises(ValueError, match=r"\[load_safetensors\] tensor 'w' is in both"):
        torch_load([tmp_path / "a.safetensors", tmp_path / "b.safetensors"])


def test_not_a_safetensors_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ValueError, match=r"\[load_safetensors\] cannot read"):
        torch_load(tmp_path / "x.safetensors")


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [("mlx_impl.models", "torch"), ("torch_reference.models", "mlx"),
     ("torch_reference.loading", "mlx")],
)
def test_import_rule(module: str, forbidden: str) -> None:
    code = (f"import sys, {module}; "
            f"bad = [m for m in sys.modules if m == {forbidden!r} or m.startswith({forbidden + '.'!r})]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
