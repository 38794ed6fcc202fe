"""THE registry: one record per op or layer of ``mlx_impl``.

Conformance tests, error tests, mutation meta-tests, benchmarks and reports all read
``REGISTRY``. To find an op's pieces: its record (``conformance/records/<family>.py``)
names the MLX code and the reference (by the shared public name in ``api``), its
Hypothesis strategy (``cases``), its tolerance and the reason for it, its edge cases,
error cases, mutants and benchmark shapes. Adding an op is adding a record.

A user's own package adds records from outside the project: see :mod:`conformance.plugins`.
"""

from __future__ import annotations

from collections.abc import Iterator

from conformance.plugins import plugin_records
from conformance.record import OpRecord
from conformance.records import attention, gather, linear, norms, quantized, rope

BUILTIN_REGISTRY: dict[str, OpRecord] = {
    record.name: record
    for family in (linear, quantized, norms, gather, attention, rope)
    for record in family.RECORDS
}
"""The project's own records (those of ``mlx_impl``)."""

REGISTRY: dict[str, OpRecord] = {**BUILTIN_REGISTRY, **plugin_records(BUILTIN_REGISTRY)}
"""The built-in records, then those of installed or named records modules
(:mod:`conformance.plugins`: entry points ``mlx_conformance.records`` and
``$CONFORMANCE_RECORDS``). Everything that runs records reads this."""


def reload_plugins() -> None:
    """Rebuild ``REGISTRY`` in place (modules that imported it keep the same dict) after the
    records modules changed (:func:`conformance.plugins.add_record_modules`)."""
    plugins = plugin_records(BUILTIN_REGISTRY)
    REGISTRY.clear()
    REGISTRY.update(BUILTIN_REGISTRY)
    REGISTRY.update(plugins)


NOT_OPS: dict[str, str] = {
    "nn.Layer": "a typing Protocol, not an op (tests/test_protocols.py)",
    "nn.LinearLayer": "a typing Protocol, not an op (tests/test_protocols.py)",
    "quantization.QUANT_MODES": "a constant naming the modes the records iterate",
    "quantization.FP_MODES": "a constant: the floating-point modes",
    "quantization.AFFINE_BITS": "a constant: the affine bit widths MLX accepts",
    "quantization.AFFINE_GROUP_SIZES": "a constant: the affine group sizes MLX accepts",
    "quantization.SUPPORTED_QUANTIZATION": "a constant: every (mode, group, bits) MLX accepts",
    "quantization.QUANTIZATION_LABELS": "a constant: Ollama's checkpoint labels",
    "quantization.check_quantization": "a validator; its refusals are the records' error cases",
    "quantization.check_quantizable": "a validator; its refusals are the records' error cases",
    "quantization.check_quantized": "a validator; its refusals are the records' error cases",
    "quantization.quantization_for_label": "maps Ollama checkpoint labels to formats (tests/test_quantization.py)",
}
"""Public names of ``mlx_impl`` that are deliberately not conformance records, and why."""


def cells() -> Iterator[tuple[OpRecord, str, str]]:
    """Every (record, dtype, mode) cell of the conformance matrix."""
    for record in REGISTRY.values():
        for mode in record.modes:
            for dtype in record.dtypes:
                yield record, dtype, mode


def covered_api() -> set[str]:
    """The public names of ``mlx_impl`` the built-in records cover (a user's records cover
    names of their own package)."""
    return {name for record in BUILTIN_REGISTRY.values() for name in record.api}
