"""Performance baselines: ``mlx_impl`` against ``torch_reference`` on the same device,
for every benchmark case of the registry (``python -m conformance bench record|compare``).

Modules: :mod:`~conformance.bench.timing` (how a call is timed), :mod:`~conformance.bench.costs`
(each op's FLOP and byte model), :mod:`~conformance.bench.machine` (machine info and the
measured roofline), :mod:`~conformance.bench.runner` (what runs), :mod:`~conformance.bench.overhead`
(layer vs raw ``mx`` call), :mod:`~conformance.bench.baseline` (the file format and the
regression rule), :mod:`~conformance.bench.render` (Markdown and HTML reports) and
:mod:`~conformance.bench.cli` (the command line).
"""
