"""mlx-lm hard-codes one GELU per architecture and ignores the config's hidden_act:

* starcoder2 and gpt_bigcode (mlx_lm/models/starcoder2.py, gpt_bigcode.py: nn.gelu,
  the exact erf GELU) where the config says "gelu_pytorch_tanh" (the tanh approximation,
  as StarCoder's and StarCoder2's published configs do);
* gpt_neox (gpt_neox.py: nn.gelu_approx, "corresponds to FastGELUActivation") where the
  config says "gelu" (exact; Pythia's published configs do).

* gemma (gemma.py: nn.gelu) where transformers runs the tanh approximation (it even
  rewrites hidden_act "gelu" to "gelu_pytorch_tanh" for Gemma: "meant to target the tanh
  approximation"); shown by patching mlx-lm's gemma to nn.gelu_approx.

The two GELUs differ by up to ~5e-4 absolute per activation, so every MLP output moves.
Switching transformers to the GELU mlx-lm hard-codes makes the two agree. Needs only
mlx-lm, transformers, torch, numpy:

    python gelu_variant.py   # verified with mlx-lm 0.32.2, transformers 5.25.0
"""

import json
import tempfile
from pathlib import Path

import mlx.core as mx
import numpy as np
import torch
from mlx_lm.utils import load_model
from transformers import AutoConfig, AutoModelForCausalLM

SMALL = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}
CASES = {  # model_type: (the config's GELU, the GELU mlx-lm uses)
    "starcoder2": ("gelu_pytorch_tanh", "gelu"),
    "gpt_neox": ("gelu", "gelu_pytorch_tanh"),
    "gpt_bigcode": ("gelu_pytorch_tanh", "gelu"),
}
GPT2_STYLE = {"vocab_size": 128, "n_embd": 64, "n_inner": 256, "n_layer": 2, "n_head": 4}


def rel_err(model_type: str, act: str) -> float:
    torch.manual_seed(0)
    if model_type == "gpt_bigcode":
        cfg = AutoConfig.for_model(model_type, **GPT2_STYLE, activation_function=act)
    else:
        cfg = AutoConfig.for_model(model_type, **SMALL, hidden_act=act)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # larger activations than the init's, where the GELUs part
        for p in model.parameters():
            p.mul_(4.0) if p.ndim == 2 else None
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        path = Path(tmp) / "config.json"
        written = json.loads(path.read_text())
        rope = written.get("rope_parameters") or {}
        if model_type != "gpt_bigcode":
            written.update(head_dim=16)
        written.update(rope_theta=rope.get("rope_theta", 10000.0),
                       rotary_emb_base=rope.get("rope_theta", 10000.0),
                       rotary_pct=rope.get("partial_rotary_factor", 1.0))
        path.write_text(json.dumps(written))
        ids = np.arange(1, 9)[None]
        with torch.no_grad():
            ref = model(torch.from_numpy(ids)).logits[0].numpy()
        mlx_model, _ = load_model(Path(tmp))
        got = np.array(mlx_model(mx.array(ids.astype(np.int32)))[0].astype(mx.float32))
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def gemma_rel_err(patch: bool) -> float:
    import mlx.nn as nn
    from mlx_lm.models import gemma

    torch.manual_seed(0)
    cfg = AutoConfig.for_model("gemma", **SMALL, hidden_act="gelu_pytorch_tanh", pad_token_id=0, bos_token_id=1,
                               eos_token_id=2)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    shipped = nn.gelu
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        path = Path(tmp) / "config.json"
        written = json.loads(path.read_text())
        written.update(rope_theta=10000.0, head_dim=16)
        path.write_text(json.dumps(written))
        ids = np.arange(1, 9)[None]
        with torch.no_grad():
            ref = model(torch.from_numpy(ids).to(torch.int64)).logits[0].double().numpy()
        try:
            if patch:
                gemma.nn.gelu = nn.gelu_approx  # gemma.nn is mlx.nn: restored below
            mlx_model, _ = load_model(Path(tmp))
            got = np.array(mlx_model(mx.array(ids.astype(np.int32)))[0].astype(mx.float32))
        finally:
            gemma.nn.gelu = shipped
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


if __name__ == "__main__":
    shipped, patched = gemma_rel_err(False), gemma_rel_err(True)
    print(f"gemma: mlx-lm as shipped (exact GELU): rel err {shipped:.1e}; patched to gelu_approx: {patched:.1e}")
    assert shipped > 2 * patched, "gemma: mlx-lm now runs the tanh GELU"
    for model_type, (declared, used) in CASES.items():
        as_declared, as_used = rel_err(model_type, declared), rel_err(model_type, used)
        print(f"{model_type}: hidden_act {declared!r}: max rel err {as_declared:.1e}; "
              f"with {used!r} (what mlx-lm runs): {as_used:.1e}")
        assert as_used < 1e-4 and as_declared > 10 * as_used, f"{model_type}: mlx-lm now follows hidden_act"
