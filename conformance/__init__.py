"""The conformance harness: a registry of ops (``conformance.registry``), the tolerance
policy (``conformance.tolerance``), Hypothesis strategies (``conformance.strategies``), the
judge, and the report. Run it with ``nox -s conformance`` or ``python -m conformance run``.
"""
