"""mlx-lm's RecurrentGemma builds each block's temporal_pre_norm and channel_pre_norm with
its RMSNorm default eps (1e-5) and ignores config.rms_norm_eps (1e-6 in transformers'
RecurrentGemmaConfig and in the published recurrentgemma configs); only the final norm
reads it. Setting those norms' eps to the config's makes mlx-lm agree with transformers.

Needs only mlx-lm, transformers, torch, numpy:

    python recurrent_gemma_norm_eps.py   # verified with mlx-lm 0.32.2, transformers 5.25.0
"""

import json
import tempfile
from pathlib import Path

import mlx.core as mx
import numpy as np
import torch
from mlx_lm.utils import load_model
from transformers import RecurrentGemmaConfig, RecurrentGemmaForCausalLM

if __name__ == "__main__":
    torch.manual_seed(0)
    cfg = RecurrentGemmaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=1, head_dim=16, lru_width=64,
                               attention_window_size=16, block_types=["recurrent", "attention"])
    model = RecurrentGemmaForCausalLM(cfg).eval()
    with torch.no_grad():  # norms away from their initial constant, as in a trained model
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.2 * torch.randn(p.shape))
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        path = Path(tmp) / "config.json"
        written = json.loads(path.read_text())
        rope = written.get("rope_parameters") or {}
        written.update(rope_theta=rope.get("rope_theta", 10000.0),
                       partial_rotary_factor=rope.get("partial_rotary_factor", 0.5))
        path.write_text(json.dumps(written))
        ids = np.arange(1, 9)[None]
        with torch.no_grad():
            ref = model.double()(torch.from_numpy(ids)).logits[0].numpy()
        mlx_model, _ = load_model(Path(tmp))
        errs = []
        for eps in (None, written["rms_norm_eps"]):
            if eps is not None:
                for layer in mlx_model.model.layers:
                    layer.temporal_pre_norm.eps = eps
                    layer.channel_pre_norm.eps = eps
            got = np.array(mlx_model(mx.array(ids.astype(np.int32)))[0].astype(mx.float32))
            errs.append(float(np.linalg.norm(got - ref) / np.linalg.norm(ref)))
    print(f"as shipped (block norms eps 1e-5): rel err {errs[0]:.1e}")
    print(f"block norms eps = config.rms_norm_eps ({written['rms_norm_eps']}): rel err {errs[1]:.1e}")
    assert errs[0] > 5 * errs[1], "mlx-lm's recurrent_gemma now reads rms_norm_eps for the block norms: fixed"
