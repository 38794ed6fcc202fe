"""The two ways a judged run can fail before any comparison: the candidate cannot be
built or run, or the oracle (transformers) cannot build the checkpoint. Both are
exported from :mod:`conformance.model` for callers of :func:`conformance.model.judge`
(a sweep over many architectures tells "my port broke" from "no oracle here")."""

from __future__ import annotations


class CandidateLoadError(RuntimeError):
    """The candidate could not be imported, built, loaded, or it crashed when run."""


class OracleLoadError(RuntimeError):
    """transformers could not build or load the checkpoint as its own model (the oracle)."""
