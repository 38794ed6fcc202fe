"""transformers as oracle and peer, for architectures the twin (``torch_reference.models``)
does not implement.

* oracle: transformers' own ``AutoModelForCausalLM`` (eager attention and experts) in
  float64 with its ``DynamicCache``, built and run under :class:`Float64Mode`, which turns
  every float32 that transformers asks for into float64. Without it the float64 model has
  float32 islands (RMSNorm's ``.to(torch.float32)``, RoPE's ``inv_freq`` and cos/sin from
  ``.float()``, eager attention's ``softmax(dtype=torch.float32)``) and answers ~1e-7
  relative from the exact value: a float32-sized oracle. Under the mode it agrees with
  the twin's float64 oracle to ~1e-15 (``tests/test_model_hf_oracle.py`` measures both).
* peer: the same model in the test dtype, as transformers computes it (its float32
  islands are the peer's honest rounding points).

Per-layer hidden states come from forward hooks on the decoder layers (each layer's
output) and a forward pre-hook on layer 0 (its input: the ``embed`` point), the points
the candidate's taps (:mod:`conformance.model.candidates`) and the twin record.

A quantized checkpoint (MLX's layout, ``conformance.model.checkpoints.derive``) is given
to transformers as a dense copy (:func:`dense_copy`): the exact float64 value of every
code for the oracle, the codes dequantized in the activation dtype with MLX's rounding
points (``torch_reference.quantization.dequantize``) for the peer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from conformance.model.errors import OracleLoadError

HF_LAYER_PATHS = ("model.layers", "model.language_model.layers", "model.decoder.layers", "transformer.h",
                  "gpt_neox.layers", "backbone.layers",
                  "layers")
"""Where transformers' causal LMs keep their decoder layers (attribute paths)."""


def _widen(value: Any) -> Any:
    if value is torch.float32:
        return torch.float64
    if isinstance(value, tuple):
        return tuple(_widen(v) for v in value)
    if isinstance(value, list):
        return [_widen(v) for v in value]
    return value


class Float64Mode(TorchFunctionMode):
    """Every ``torch.float32`` passed to a torch function or tensor method (``.to``,
    ``torch.arange(dtype=)``, ``softmax(dtype=)`` ...) becomes ``torch.float64``, and
    ``Tensor.float()`` becomes ``Tensor.double()``, while the mode is active. A float64
    model then stays float64 where its code asks for float32 (normalisation statistics,
    RoPE tables, attention softmax). Nothing else changes: integer and half requests pass."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.Tensor.float:
            return args[0].double(*args[1:], **kwargs)
        return func(*_widen(tuple(args)), **{k: _widen(v) for k, v in kwargs.items()})


def non_float64(model: Any) -> list[str]:
    """Names of ``model``'s floating parameters and buffers that are not float64."""
    return [name for name, t in [*model.named_parameters(), *model.named_buffers()]
            if t.is_floating_point() and t.dtype != torch.float64]


def hf_layers(model: Any) -> tuple[str, Any] | None:
    """transformers' decoder layers of ``model``: ``(path, ModuleList)`` or None."""
    for path in HF_LAYER_PATHS:
        target = model
        try:
            for part in path.split("."):
                target = getattr(target, part)
        except AttributeError:
            continue
        if isinstance(target, torch.nn.ModuleList) and len(target):
            return path, target
    return None


class HFSide:
    """transformers' own model of a dense checkpoint, with its ``DynamicCache`` and hooks.

    ``precision``: ``"float64"`` (the oracle: float64 weights, :class:`Float64Mode` during
    construction and every forward) or ``"native"`` (the peer: the checkpoint's dtype, on
    the device and at the matmul precision of the twin's peer). ``step(tokens [B, L]) ->
    (logits [B, L, V], hidden [B, L, H] x (layers + 1))`` as the other sides.

    Raises OracleLoadError when transformers cannot build or load the checkpoint.
    """

    def __init__(self, path: Path, precision: str, name: str, hidden: bool = True) -> None:
        from transformers import AutoModelForCausalLM, DynamicCache
        from transformers.utils import logging

        from conformance.execute import backend_name, configure_peer_precision, peer_device

        if precision not in ("float64", "native"):
            raise ValueError(f"[HFSide] precision must be 'float64' or 'native' but got {precision!r}.")
        logging.disable_progress_bar()
        self.name = name
        self.float64 = precision == "float64"
        self.device: Any = "cpu"
        if not self.float64:
            backend = backend_name()
            self.device = peer_device(backend)
            configure_peer_precision(backend)
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
        dtype = torch.float64 if self.float64 else _TORCH[config.get("dtype") or config.get("torch_dtype") or "float32"]
        try:
            with self._mode():
                # Eager attention and experts: the fused kernels (SDPA, grouped_mm) take no float64.
                self.model = AutoModelForCausalLM.from_pretrained(
                    str(path), dtype=dtype, attn_implementation="eager", experts_implementation="eager")
                self.model.to(self.device)
                self.model.eval()
                self.cache = DynamicCache(config=self.model.config)
        except Exception as exc:  # any failure of transformers to build this checkpoint
            raise OracleLoadError(f"[oracle] transformers cannot build {path} as a causal LM "
                                  f"(model_type {config.get('model_type')!r}): {type(exc).__name__}: {exc}") from exc
        self.not_float64 = non_float64(self.model) if self.float64 else []
        self.narrow_outputs: set[str] = set()
        self.seen = 0
        self.hidden: list[torch.Tensor] = []
        self.layers_path: str | None = None
        self.n_layers = 0
        found = hf_layers(self.model) if hidden else None
        if found is not None:
            self.layers_path, layers = found
            self.n_layers = len(layers)
            layers[0].register_forward_pre_hook(self._record_input, with_kwargs=True)
            for layer in layers:
                layer.register_forward_hook(self._record_output)

    def _mode(self) -> Any:
        import contextlib

        return Float64Mode() if self.float64 else contextlib.nullcontext()

    def _record_input(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.hidden.append(args[0] if args else kwargs["hidden_states"])

    def _record_output(self, module: Any, args: Any, output: Any) -> None:
        self.hidden.append(output[0] if isinstance(output, tuple) else output)

    def step(self, tokens: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Feed ``tokens: [B, L]`` int through the cache; logits ``[B, L, V]`` and the
        hidden states (layer 0's input, each layer's output), float64 copies."""
        from conformance.model.sides import _torch_np

        ids = torch.from_numpy(tokens.astype(np.int64)).to(self.device)
        length = ids.shape[1]
        positions = torch.arange(self.seen, self.seen + length, device=self.device)[None]
        self.hidden = []
        try:
            with torch.no_grad(), self._mode():
                out = self.model(input_ids=ids, cache=self.cache, use_cache=True, position_ids=positions)
        except Exception as exc:  # transformers failing on its own checkpoint: no oracle here
            raise OracleLoadError(f"[oracle] {self.name} failed on tokens of shape {tuple(ids.shape)}: "
                                  f"{type(exc).__name__}: {exc}") from exc
        self.seen += length
        if self.float64:
            # What the mode could not reach: an output that is not float64 resolves only to its dtype.
            self.narrow_outputs.update(str(t.dtype) for t in (out.logits, *self.hidden) if t.dtype != torch.float64)
        return _torch_np(out.logits), [_torch_np(h) for h in self.hidden]


_TORCH = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dense_copy(derived: Path, out: Path, precision: str) -> Path:
    """A checkpoint transformers can load from ``derived`` (MLX's quantized layout): each
    quantized ``.weight`` (with ``.scales``/``.biases``) dequantized, ``"quantization"``
    dropped from ``config.json``. ``precision="float64"``: the exact value of every code,
    and every tensor stored as float64 (the oracle); ``"native"``: dequantized in the
    activation dtype (``config["dtype"]``) with MLX's rounding points (the peer).
    A dense ``derived`` is returned as it is.

    Shape: a packed ``[N, K * bits / 32]`` uint32 weight becomes ``[N, K]``.
    """
    from safetensors.torch import load_file, save_file

    from torch_reference.quantization import dequantize

    config = json.loads((derived / "config.json").read_text(encoding="utf-8"))
    quant = config.get("quantization")
    if quant is None:
        return derived
    act = _TORCH[config.get("dtype", "bfloat16")]
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(derived.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    written: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        stem = name.removesuffix(".weight")
        if name.endswith((".scales", ".biases")):
            continue
        if name.endswith(".weight") and f"{stem}.scales" in tensors:
            # mlx-lm writes a layer's own group size and bits under its path where they differ.
            own = quant.get(stem) if isinstance(quant.get(stem), dict) else quant
            w = dequantize(t, tensors[f"{stem}.scales"], tensors.get(f"{stem}.biases"),
                           group_size=int(own.get("group_size", quant["group_size"])),
                           bits=int(own.get("bits", quant["bits"])),
                           mode=str(own.get("mode", quant.get("mode", "affine"))),
                           dtype=None if precision == "float64" else act, precision=precision)
            written[name] = w.contiguous()
        else:
            written[name] = t
    if precision == "float64":
        written = {k: (v.to(torch.float64) if v.is_floating_point() else v) for k, v in written.items()}
        config["dtype"] = config["torch_dtype"] = "float64"
    else:
        written = {k: (v.to(act) if v.is_floating_point() else v) for k, v in written.items()}
    del config["quantization"]
    # mlx-lm writes the same under transformers' key too; transformers would take it for its own.
    config.pop("quantization_config", None)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    save_file(written, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return out
