"""mlx-lm's DeepSeek-V3.2 builds the DSA indexer's key norm as nn.LayerNorm(index_head_dim)
(mlx_lm/models/deepseek_v32.py, Indexer.__init__): MLX's default eps, 1e-5. transformers'
DeepseekV32Indexer builds it with eps=1e-6, as DeepSeek's own inference code does (its
LayerNorm class defaults to eps 1e-6; deepseek-ai/DeepSeek-V3.2-Exp inference/model.py).
The normalized keys differ by ~eps_diff / (2 var) relative; they only score keys for the
top-k choice, so the model's outputs move only where that choice is a near tie. Setting
mlx-lm's k_norm.eps to 1e-6 makes the two agree to float32 rounding.

Needs only mlx-lm, transformers, torch, numpy:

    python deepseek_v32_indexer_k_norm_eps.py   # verified with mlx-lm 0.32.2, transformers 5.25.0
"""

import mlx.core as mx
import numpy as np
import torch
from mlx.utils import tree_unflatten
from mlx_lm.models.deepseek_v32 import Indexer, ModelArgs
from transformers import DeepseekV32Config
from transformers.models.deepseek_v32.modeling_deepseek_v32 import DeepseekV32Indexer

if __name__ == "__main__":
    torch.manual_seed(0)
    cfg = DeepseekV32Config(vocab_size=128, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                            num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=32,
                            kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16,
                            index_n_heads=2, index_head_dim=32, index_topk=4)
    ref = DeepseekV32Indexer(cfg, layer_idx=0).eval()
    with torch.no_grad():  # the norm away from its initial constant, as in a trained model
        ref.k_norm.weight.add_(0.2 * torch.randn(ref.k_norm.weight.shape))
        ref.k_norm.bias.add_(0.2 * torch.randn(ref.k_norm.bias.shape))
    mine = Indexer(ModelArgs.from_dict(cfg.to_dict()))
    # the same weights into mlx-lm's indexer (same parameter names in both libraries)
    mine.update(tree_unflatten([(k, mx.array(v.detach().numpy())) for k, v in ref.state_dict().items()]))
    x = torch.randn(1, 8, cfg.hidden_size)
    with torch.no_grad():
        want = ref.k_norm(ref.wk(x)).numpy()
    print(f"transformers k_norm eps {ref.k_norm.eps}, mlx-lm k_norm eps {mine.k_norm.eps}")
    errs = []
    for eps in (None, ref.k_norm.eps):
        if eps is not None:
            mine.k_norm.eps = eps
        got = np.array(mine.k_norm(mine.wk(mx.array(x.numpy()))))
        errs.append(float(np.linalg.norm(got - want) / np.linalg.norm(want)))
    print(f"as shipped (indexer k_norm eps 1e-5): rel err {errs[0]:.1e}")
    print(f"indexer k_norm eps = 1e-6 (transformers', DeepSeek's): rel err {errs[1]:.1e}")
    assert errs[0] > 5 * errs[1], "mlx-lm's deepseek_v32 indexer k_norm now uses eps 1e-6: fixed"
