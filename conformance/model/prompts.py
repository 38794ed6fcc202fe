"""Real text prompts for model conformance: read them, tokenize them with the checkpoint's
own tokenizer (through its chat template where it has one), and decode what each side
generated.

    python -m conformance model CHECKPOINT --prompt "The capital of France is" [--no-chat-template]
    python -m conformance model CHECKPOINT --prompt-file prompts.txt   # one a line, or a JSON list
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np


def read_prompts(texts: list[str] | None, file: str | None) -> list[str]:
    """The prompts of ``--prompt`` (repeatable) then ``--prompt-file`` (a JSON list of
    strings, or one prompt per non-empty line). SystemExit on an empty prompt or a file
    that is neither."""
    prompts = list(texts or [])
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise SystemExit(f"[conformance model] --prompt-file {file}: no such file.")
        text = path.read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            try:
                loaded = json.loads(text)
            except json.JSONDecodeError as exc:
                raise SystemExit(f"[conformance model] --prompt-file {file} starts with '[' but is not JSON: {exc}") from None
            if not isinstance(loaded, list) or not all(isinstance(p, str) for p in loaded):
                raise SystemExit(f"[conformance model] --prompt-file {file}: a JSON file must be a list of strings.")
            prompts += loaded
        else:
            prompts += [line for line in text.splitlines() if line.strip()]
        if len(prompts) == len(texts or []):
            raise SystemExit(f"[conformance model] --prompt-file {file} holds no prompt.")
    if any(not p.strip() for p in prompts):
        raise SystemExit("[conformance model] a prompt is empty.")
    return prompts


@lru_cache(maxsize=4)
def _tokenizer(checkpoint: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(checkpoint)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"[conformance model] a text prompt needs the checkpoint's tokenizer, and "
                         f"{checkpoint} has none transformers can load ({type(exc).__name__}: {exc}).") from None


def tokenize_prompt(checkpoint: Path, text: str, chat_template: bool = True) -> np.ndarray:
    """``text`` as token ids ``[1, L]`` (int64) by the tokenizer in ``checkpoint``.

    With ``chat_template`` and a tokenizer that has one, the text is a single user message
    and the template adds the assistant's turn (``add_generation_prompt=True``), so the
    model answers it as in a chat; otherwise the raw text with the tokenizer's own special
    tokens. ValueError for an id outside ``config.json``'s vocabulary."""
    tok = _tokenizer(str(checkpoint))
    if chat_template and getattr(tok, "chat_template", None):
        rendered = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                           add_generation_prompt=True)
        # The template wrote the special tokens itself; the tokenizer must not add a second BOS.
        ids = tok(rendered, add_special_tokens=False)["input_ids"]
    else:
        ids = tok(text)["input_ids"]
    vocab = int(json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))["vocab_size"])
    if not ids or max(ids) >= vocab:
        raise ValueError(f"[conformance model] the prompt tokenized to {len(ids)} ids (largest "
                         f"{max(ids, default=None)}) for a vocabulary of {vocab}.")
    return np.asarray(ids, dtype=np.int64)[None]


def decode(checkpoint: Path, ids: list[int]) -> str:
    """Token ids as text by the tokenizer in ``checkpoint`` (special tokens kept, so an
    end-of-turn shows)."""
    return str(_tokenizer(str(checkpoint)).decode(ids, skip_special_tokens=False))


def has_chat_template(checkpoint: Path) -> bool:
    """Whether the tokenizer in ``checkpoint`` has a chat template."""
    return bool(getattr(_tokenizer(str(checkpoint)), "chat_template", None))
