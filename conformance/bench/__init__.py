"""Benchmarks people can act on: pytest-benchmark is the engine and the file format.

Commands::

    python -m conformance bench record     # or: nox -s bench
    python -m conformance bench compare    # or: nox -s bench_compare; fails past median:30%
    python -m conformance bench report [FILES or FOLDER]
    pytest tests/benchmarks -q --benchmark-disable   # or: nox -s bench_smoke (CI; tiny shapes, run once)
    pytest-benchmark compare reports/baselines/<backend>-<machine>/*/*.json

``record`` runs ``tests/benchmarks/test_bench.py`` and saves pytest-benchmark's own JSON in
``reports/baselines/<backend>-<machine>/<machine id>/NNNN_<precision>.json`` (one row per
float32 precision: ``float32`` on the CPU; ``tf32`` and ``float32`` on CUDA, each in its own
process because MLX reads ``MLX_ENABLE_TF32`` at start-up), then renders ``report.md`` and
``report.html`` there from those files.

What is measured, per registry ``BenchCase`` and dtype (group ``op/case/dtype``): the
mlx_impl layer, the raw MLX op, the PyTorch op a user would run instead (the headline:
``F.linear``, ``F.scaled_dot_product_attention``, ``F.rms_norm``, ``F.layer_norm``,
``F.embedding``, PyTorch's int4 weight-only kernel or ``F.linear`` on the dequantized
weight), and ``torch_reference`` as context; the roofline peaks in each dtype and
precision; and each layer against its raw MLX call at decode. The project's data (cost
model, pairing, reasons, precision) is in each benchmark's ``extra_info``.

Modules: :mod:`~conformance.bench.cells` (cells and their timed callables),
:mod:`~conformance.bench.idiomatic` (raw MLX and PyTorch pairings),
:mod:`~conformance.bench.costs` (FLOP and byte models), :mod:`~conformance.bench.machine`
(machine info, precision, roofline peak cases), :mod:`~conformance.bench.overhead` (layer vs
raw call at decode), :mod:`~conformance.bench.report` (Markdown/HTML from the JSON) and
:mod:`~conformance.bench.cli`.
"""
