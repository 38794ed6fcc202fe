"""mlx-lm ignores transformers 5's `rope_parameters`: a config.json written by
transformers >= 5 keeps rope_theta (and the rope scaling: rope_type, factor, ...) only
inside "rope_parameters", with no top-level "rope_theta" / "rope_scaling". mlx-lm 0.32
reads only the top-level keys, so it

* silently runs with its default theta (10000) and no scaling where ModelArgs has a
  default (llama, qwen2, qwen3, ...): wrong logits from the second position on, and
* fails to load where rope_theta is required (ModelArgs.__init__() missing 1 required
  positional argument: 'rope_theta': granite, helium, ernie4_5, llama4_text, ...).

Adding the transformers-4 keys (same values) to config.json makes the two agree.
Needs only mlx-lm, transformers, torch, numpy:

    python rope_parameters.py   # verified with mlx-lm 0.32.2, transformers 5.25.0
"""

import json
import tempfile
from pathlib import Path

import mlx.core as mx
import numpy as np
import torch
from mlx_lm.utils import load_model
from transformers import LlamaConfig, LlamaForCausalLM

ROPE = {"rope_type": "default", "rope_theta": 500000.0}


def rel_err(add_legacy_keys: bool) -> float:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_parameters=ROPE)
    model = LlamaForCausalLM(cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        path = Path(tmp) / "config.json"
        written = json.loads(path.read_text())
        assert "rope_theta" not in written and written["rope_parameters"]["rope_theta"] == 500000.0
        if add_legacy_keys:
            written["rope_theta"] = ROPE["rope_theta"]
            path.write_text(json.dumps(written))
        ids = np.arange(1, 9)[None]
        with torch.no_grad():
            ref = model(torch.from_numpy(ids)).logits[0].numpy()
        mlx_model, _ = load_model(Path(tmp))
        got = np.array(mlx_model(mx.array(ids.astype(np.int32)))[0].astype(mx.float32))
    return float(np.abs(got - ref).max() / np.abs(ref).max())


if __name__ == "__main__":
    plain, legacy = rel_err(False), rel_err(True)
    print(f"config.json as transformers 5 writes it: max rel err {plain:.1e}")      # ~1e-1: theta 10000 used
    print(f"with a top-level rope_theta added:       max rel err {legacy:.1e}")     # ~1e-7
    assert legacy < 1e-4 and plain > 1e-3, "mlx-lm now reads rope_parameters: fixed"
