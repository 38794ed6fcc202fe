"""mlx-lm's GLM (model_type "glm") rotates the whole head: it builds
nn.RoPE(dims=head_dim, traditional=True) and never reads partial_rotary_factor, while
transformers' GlmConfig (partial_rotary_factor 0.5 by default, as THUDM's GLM-4 configs
have it) rotates only the first half of each head. Logits differ from the second
position on; with partial_rotary_factor 1.0 the two agree.

Needs only mlx-lm, transformers, torch, numpy:

    python glm_partial_rotary.py   # verified with mlx-lm 0.32.2, transformers 5.25.0
"""

import json
import tempfile
from pathlib import Path

import mlx.core as mx
import numpy as np
import torch
from mlx_lm.utils import load_model
from transformers import GlmConfig, GlmForCausalLM


def rel_err(partial: float) -> float:
    torch.manual_seed(0)
    rope = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": partial}
    cfg = GlmConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_parameters=rope,
                    pad_token_id=0)
    model = GlmForCausalLM(cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        path = Path(tmp) / "config.json"
        written = json.loads(path.read_text())
        # The transformers-4 spellings too, so this shows the rotary width alone.
        written.update(rope_theta=10000.0, partial_rotary_factor=partial)
        path.write_text(json.dumps(written))
        ids = np.arange(1, 9)[None]
        with torch.no_grad():
            ref = model(torch.from_numpy(ids)).logits[0].numpy()
        mlx_model, _ = load_model(Path(tmp))
        got = np.array(mlx_model(mx.array(ids.astype(np.int32)))[0].astype(mx.float32))
    return float(np.abs(got - ref).max() / np.abs(ref).max())


if __name__ == "__main__":
    full, half = rel_err(1.0), rel_err(0.5)
    print(f"partial_rotary_factor 1.0: max rel err {full:.1e}")   # ~1e-7
    print(f"partial_rotary_factor 0.5: max rel err {half:.1e}")   # much larger: whole head rotated
    assert full < 1e-4 and half > 10 * full, "mlx-lm's glm now honours partial_rotary_factor: fixed"
