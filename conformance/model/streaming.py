"""transformers' model in float64 with one module's weights resident at a time.

The external anchor of model conformance is transformers' own model in float64. Loaded
whole, that is 8 bytes a parameter: 10 GB for a 1.24B-parameter Llama, more than the rest
of the comparison together. :func:`streamed_transformers` builds the same model on
PyTorch's meta device (no storage), and accelerate's ``cpu_offload`` hooks give every
module its weights just before its forward and drop them just after, read from the
checkpoint's safetensors one tensor at a time and widened to float64 on the way
(:class:`Float64Tensors`). The computation is the very same (the same modules, the same
float64 weights, the same buffers): on the tiny models the streamed logits are bit-identical
to ``from_pretrained(dtype=float64)``'s (``tests/test_model_memory.py``). It costs one read
of the checkpoint per forward (the page cache serves it after the first).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

TIED_HEAD = "lm_head.weight"
TIED_SOURCE = "model.embed_tokens.weight"


class Float64Tensors(Mapping[str, Any]):
    """The floating tensors of a checkpoint's ``*.safetensors``, read on access and widened
    to float64 (integer tensors as stored). Holds only an index of names to files.

    With ``tied`` (``tie_word_embeddings`` and no ``lm_head.weight`` stored), the head
    reads the embedding table, as transformers ties them.
    """

    def __init__(self, checkpoint: Path, tied: bool) -> None:
        from safetensors import safe_open

        self.index: dict[str, Path] = {}
        for f in sorted(Path(checkpoint).glob("*.safetensors")):
            with safe_open(str(f), "pt") as h:
                for key in h.keys():  # noqa: SIM118 (safe_open is not a Mapping)
                    self.index[key] = f
        if not self.index:
            raise ValueError(f"[streaming] {checkpoint} has no *.safetensors tensors.")
        self.tied = tied and TIED_HEAD not in self.index and TIED_SOURCE in self.index

    def _source(self, key: str) -> str:
        return TIED_SOURCE if self.tied and key == TIED_HEAD else key

    def __getitem__(self, key: str) -> Any:
        import torch
        from safetensors import safe_open

        source = self._source(key)
        if source not in self.index:
            raise KeyError(key)
        with safe_open(str(self.index[source]), "pt") as h:
            t = h.get_tensor(source)
        return t.to(torch.float64) if t.is_floating_point() else t

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._source(key) in self.index

    def __iter__(self) -> Iterator[str]:
        yield from self.index
        if self.tied:
            yield TIED_HEAD

    def __len__(self) -> int:
        return len(self.index) + int(self.tied)


def streamed_transformers(checkpoint: Path) -> Any:
    """transformers' ``AutoModelForCausalLM`` of ``checkpoint`` in float64, eager attention
    and experts, every parameter streamed from the checkpoint per forward.

    Raises:
        ValueError: a parameter of the model is not in the checkpoint under its module
            name (an architecture whose loading renames or fuses weights: load it whole).
    """
    import torch
    from accelerate import cpu_offload, init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(checkpoint))
    tensors = Float64Tensors(checkpoint, bool(getattr(config, "tie_word_embeddings", False)))
    # Parameters on the meta device; buffers (RoPE's inv_freq) real, as from_pretrained makes them.
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float64, attn_implementation="eager",
                                                 experts_implementation="eager")
    missing = [name for name, _ in model.named_parameters() if name not in tensors]
    if missing:
        raise ValueError(f"[streaming] {len(missing)} parameter(s) of transformers' "
                         f"{type(model).__name__} are not in {checkpoint} under their module names "
                         f"(e.g. {missing[:3]}); this architecture cannot be streamed.")
    model.eval()
    return cpu_offload(model, execution_device=torch.device("cpu"), state_dict=tensors)


STREAM_ABOVE_BYTES = 2 * 2**30
"""transformers' float64 anchor is streamed when its whole float64 model would be larger
than this (2 GiB: 268M parameters). Real sizes stream, so no side holds a model in float64
(a Llama-3.2-1B whole in float64 is 9.9 GB, over the 8 GB a run of it must fit in); tiny
models and SmolLM2-135M (1.1 GB) load whole."""


def needs_streaming(checkpoint: Path) -> bool:
    """Whether transformers' whole float64 model of ``checkpoint`` (8 bytes a parameter)
    would exceed :data:`STREAM_ABOVE_BYTES`: only then is it streamed. Whole is the plain
    ``from_pretrained`` path; the streamed one rests on accelerate's hooks, which agree bit
    for bit here (transformers 5.25, accelerate 1.16) but gave logits ~1 relative off on an
    H200 machine's older versions (README, "Memory and real size"), so small models keep
    the plain path. (Until this, the rule was "more than half the memory available", which
    let a 1B's 9.9 GB float64 anchor load whole on a 24 GB machine: measured, that run of
    the README's example peaked at 8.4 GiB in its float32 configuration.)"""
    from conformance.model.memory import checkpoint_size

    return checkpoint_size(checkpoint).params * 8 > STREAM_ABOVE_BYTES
