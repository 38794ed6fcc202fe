"""The registry is complete and well-formed: every public op has a record, every record
its tolerance reason, error cases, mutants and benchmark shapes; the two packages mirror
each other's public names."""

from __future__ import annotations

import pytest

import mlx_impl
import torch_reference
from conformance.registry import NOT_OPS, REGISTRY, covered_api

SUBMODULES = ("nn", "fast", "quantization")


def public_names(package) -> set[str]:
    """``submodule.Name`` for every name in the submodules' ``__all__``."""
    return {f"{sub}.{name}" for sub in SUBMODULES for name in getattr(package, sub).__all__}


def test_every_public_name_of_mlx_impl_has_a_record() -> None:
    missing = public_names(mlx_impl) - covered_api() - set(NOT_OPS)
    assert not missing, f"public names of mlx_impl with no registry record: {sorted(missing)}"


def test_records_name_only_real_public_names() -> None:
    stale = (covered_api() | set(NOT_OPS)) - public_names(mlx_impl)
    assert not stale, f"registry names that mlx_impl does not export: {sorted(stale)}"


def test_packages_mirror_each_other() -> None:
    assert public_names(mlx_impl) == public_names(torch_reference)


@pytest.mark.parametrize("record", REGISTRY.values(), ids=list(REGISTRY))
def test_record_is_complete(record) -> None:
    assert len(record.mutants) >= 2, f"{record.name} needs at least two mutants"
    assert record.errors, f"{record.name} needs error cases"
    for backend in ("cpu", "metal", "cuda"):
        for dtype in record.dtypes:
            assert record.tolerance(backend, dtype).reason
    for mutant in record.mutants:
        assert mutant.mode in record.modes, f"{record.name}: mutant {mutant.name} names unknown mode"
