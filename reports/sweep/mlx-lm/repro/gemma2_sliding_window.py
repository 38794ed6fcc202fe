"""mlx-lm's Gemma 2 has no sliding window: its sliding layers (every other one, window
4096 in the published models) attend to every earlier token, transformers' to the last
`sliding_window` ones. A prompt longer than the window gives different logits.

mlx_lm/models/gemma2.py never reads `sliding_window` (nor `layer_types`) and builds a
plain KVCache for every layer. Needs only mlx-lm, transformers, torch, numpy:

    python gemma2_sliding_window.py   # verified with mlx-lm 0.32.2, transformers 5.25.0
"""

import tempfile
from pathlib import Path

import mlx.core as mx
import numpy as np
import torch
from mlx_lm.utils import load_model
from transformers import Gemma2Config, Gemma2ForCausalLM

PROMPT = 8


def rel_err(window: int) -> float:
    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=window,
                        query_pre_attn_scalar=16)
    model = Gemma2ForCausalLM(cfg).eval()
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
    assert inside < 1e-4 and outside > 1e-2, "mlx-lm now applies Gemma 2's sliding window: fixed"
