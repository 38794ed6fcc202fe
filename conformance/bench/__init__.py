"""Performance baselines: ``mlx_impl`` against ``torch_reference`` on the same device,
for every benchmark case of the registry.

Commands::

    python -m conformance bench record    # or: nox -s bench
    python -m conformance bench compare   # or: nox -s bench_compare; exit 1 on a regression
    pytest tests/benchmarks -q --benchmark-disable   # or: nox -s bench_smoke (CI; no timing)

``record`` writes ``reports/baselines/<backend>-<machine>/`` (e.g. ``cpu-amd-epyc-2c``):
``baseline.json`` (machine: CPU model, cores, memory, versions, MLX's BLAS and cache limit,
PyTorch's threads and BLAS; the measured roofline; every cell's timings and cost model;
the layer-overhead pairs), ``report.md`` and ``report.html`` (self-contained, an inline
SVG bar per cell for MLX/PyTorch). ``compare`` runs the same cells again and writes
``current.json``, ``comparison.md`` and ``comparison.html`` there. Exit codes: 0 fine,
1 regression (compare) or a cell that could not run (record), 2 unusable baseline
(missing, corrupt, foreign schema: one line saying which and what to do).

What is measured: each registry ``BenchCase`` at each of its dtypes (float32, bfloat16;
quantized cases in every mode), on MLX's default device (Metal, CUDA with ``mlx[cuda13]``,
else the CPU; ``--device cpu`` forces the CPU) and PyTorch on the matching device. The CPU
back end runs ``cpu_make`` shapes where a case has them (the report's shape column and
note say so). MLX evaluates inside every timed call; PyTorch synchronises its device.
Warm-up first, median and IQR reported (:mod:`~conformance.bench.timing`). MLX's CPU back
end is tuned with ``mlx_impl.cpu_backend.tune_cpu`` (buffer-cache limit, optimized BLAS),
PyTorch gets ``torch.set_num_threads(cores)``; both are recorded.

The regression rule (:mod:`~conformance.bench.baseline`): a cell fails when mlx_impl's
or torch_reference's median is more than 25 % (``--threshold``) above the baseline's AND
the slowdown exceeds the two runs' IQRs added; a cell that regresses is measured once more
and fails only if it regresses again. ``--min-delta-us`` also ignores absolute slowdowns
below a floor, for shared machines where sub-millisecond cells jitter between runs.

Modules: :mod:`~conformance.bench.timing` (how a call is timed), :mod:`~conformance.bench.costs`
(each op's FLOP and byte model), :mod:`~conformance.bench.machine` (machine info and the
measured roofline), :mod:`~conformance.bench.runner` (what runs), :mod:`~conformance.bench.overhead`
(layer vs raw ``mx`` call), :mod:`~conformance.bench.raw_torch` (the idiomatic PyTorch op),
:mod:`~conformance.bench.baseline` (the file format and the regression rule),
:mod:`~conformance.bench.render` (Markdown and HTML) and :mod:`~conformance.bench.cli`.
"""
