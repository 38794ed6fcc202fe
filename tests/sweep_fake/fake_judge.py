"""A fake ``conformance.model.judge`` for the sweep's plumbing tests (tests/test_sweep.py):
by architecture and configuration it conforms, departs, cannot load, crashes its worker
or hangs, so the test can see each outcome reach the report."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


class CandidateLoadError(Exception):
    """Named like the real one; the sweep classifies by name."""


def judge(checkpoint: Path, *, candidate: str, dtype: str, quant: str | None, steps: int, prompt_len: int,
          seed: int, anchors: bool, progress: bool) -> dict[str, Any]:
    arch = Path(checkpoint).name
    if arch == "qwen2" and quant:
        os._exit(3)  # a crash: the worker dies without a result
    if arch == "qwen2" and dtype == "float32":
        time.sleep(600)  # a hang: pytest-timeout ends it
    if arch == "llama" and quant:
        raise CandidateLoadError("fake: cannot load a quantized llama")
    departs = arch == "qwen2"
    return {"passed": not departs,
            "departure": {"step": 3, "point": "layer 1", "kind": "bound", "message": "fake departure"} if departs else None,
            "tokens": {"agree": steps + 1, "steps": steps + 1, "ties": 0, "flips": []},
            "oracle": "transformers", "hidden_states": True, "notes": [], "seconds": 0.0,
            "points": [{"step": 0, "point": "logits", "ratio": 0.5}]}
