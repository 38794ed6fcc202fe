"""Which architectures the sweep covers: every ``model_type`` that both the installed mlx-lm
and the installed transformers implement as a text causal language model.

mlx-lm: a module ``mlx_lm.models.<name>`` where ``<name>`` is the ``model_type`` after
mlx-lm's own ``MODEL_REMAPPING`` (``mistral`` is served by its ``llama`` module), which is
what ``mlx_lm.utils.load`` does with a checkpoint's ``config.json``.
transformers: ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`` (the ``AutoModelForCausalLM`` table).
A ``model_type`` mapped there to a ``...ForConditionalGeneration`` class is a multimodal
model (vision or audio towers around the language model): it is listed as excluded, with
that reason, not built.
"""

from __future__ import annotations

import importlib.util
import pkgutil
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Architecture:
    """One architecture both libraries implement."""

    model_type: str
    """``config.json``'s ``model_type`` (transformers' key)."""
    mlx_lm_module: str
    """``mlx_lm.models.<this>`` serves it (after mlx-lm's remapping)."""
    transformers_class: str
    """transformers' ``AutoModelForCausalLM`` class name for it."""


@dataclass
class Discovery:
    """The sweep's architectures, what was left out and why, and the versions it saw."""

    architectures: list[Architecture]
    excluded: list[dict[str, str]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (the report's ``discovery`` section)."""
        return {"architectures": [asdict(a) for a in self.architectures], "excluded": self.excluded,
                "versions": self.versions}


def versions() -> dict[str, str]:
    """Versions of the libraries the sweep compares (mlx-lm, transformers, mlx, torch)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for dist in ("mlx-lm", "transformers", "mlx", "torch"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            found[dist] = "not installed"
    return found


def mlx_lm_modules() -> set[str]:
    """Names of the installed mlx-lm's model modules (``mlx_lm.models.*``)."""
    spec = importlib.util.find_spec("mlx_lm.models")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("[sweep] mlx-lm is not installed: pip install 'mlx-conformance[models]'.")
    return {name for _, name, _ in pkgutil.iter_modules(spec.submodule_search_locations)}


def mlx_lm_remapping() -> dict[str, str]:
    """mlx-lm's ``model_type`` aliases (``MODEL_REMAPPING``: ``mistral`` -> ``llama`` ...)."""
    from mlx_lm import utils

    return dict(getattr(utils, "MODEL_REMAPPING", {}))


def discover(only: list[str] | None = None) -> Discovery:
    """Every text causal LM ``model_type`` both libraries implement, sorted by name.

    Args:
        only: restrict to these model types (``--arch``); an unknown one is a SystemExit
            naming the known ones.

    Returns: a :class:`Discovery` (architectures, excluded with reasons, versions).
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    modules = mlx_lm_modules()
    remap = mlx_lm_remapping()
    found: list[Architecture] = []
    excluded: list[dict[str, str]] = []
    for model_type, cls in sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items()):
        module = remap.get(model_type, model_type)
        if module not in modules:
            continue
        if cls.endswith("ForConditionalGeneration"):
            excluded.append({"model_type": model_type, "reason": f"multimodal: transformers maps it to {cls} "
                             "(vision/audio towers around the text model), not a text causal LM"})
            continue
        found.append(Architecture(model_type, module, cls))
    if only:
        known = {a.model_type for a in found}
        unknown = sorted(set(only) - known)
        if unknown:
            raise SystemExit(f"[sweep] unknown or unsupported architecture(s) {unknown}; known: {sorted(known)}")
        found = [a for a in found if a.model_type in only]
    return Discovery(found, excluded, versions())
