"""mlx-lm ignores Mistral's sliding_window: a prompt longer than the window attends to
every earlier token in mlx-lm, to the last `sliding_window` tokens in transformers.

mlx-lm maps model_type "mistral" to its llama module, which applies a sliding window
only to layers that `layer_types` marks "sliding_attention"; transformers' MistralConfig
has no `layer_types` and applies `sliding_window` to every layer (Mistral-7B-v0.1 ships
sliding_window 4096). Needs only mlx-lm, transformers, torch, numpy:

    python mistral_sliding_window.py   # verified with mlx-lm 0.32.2, transformers 5.25.0
"""

import tempfile
from pathlib import Path

import mlx.core as mx
import numpy as np
import torch
from mlx_lm.utils import load_model
from transformers import MistralConfig, MistralForCausalLM

PROMPT = 8


def rel_err(window: int) -> float:
    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=window)
    model = MistralForCausalLM(cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        ids = np.arange(1, PROMPT + 1)[None]
        with torch.no_grad():
            ref = model(torch.from_numpy(ids)).logits[0].numpy()
        mlx_model, _ = load_model(Path(tmp))
        got = np.array(mlx_model(mx.array(ids.astype(np.int32)))[0].astype(mx.float32))
    return float(np.abs(got - ref).max() / np.abs(ref).max())


if __name__ == "__main__":
    inside, outside = rel_err(window=PROMPT), rel_err(window=4)
    print(f"sliding_window >= prompt: max rel err {inside:.1e}")   # ~1e-6: same model
    print(f"sliding_window 4 < prompt {PROMPT}: max rel err {outside:.1e}")  # ~1e-1: window ignored
    assert inside < 1e-4 and outside > 1e-2, "mlx-lm now applies Mistral's sliding window: fixed"
