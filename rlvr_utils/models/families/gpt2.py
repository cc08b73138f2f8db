"""GPT-2: fused q/k/v in `c_attn`, Conv1D weights stored transposed (which swaps left and right singular vectors
only), both output projections named `c_proj` (the parent tells them apart)."""
from rlvr_utils.models.families.base import Family, register

FAMILY = register(Family(
    model_types=("gpt2",),
    layers="transformer.h", final_norm="transformer.ln_f", unembedding="lm_head",
    attn_out="attn", mlp_out="mlp", mlp_in="ln_2",
    children={"attn": "attn", "mlp": "mlp", "ln_1": "norm", "ln_2": "norm"},
    matrices={"attn.c_attn": ("qkv", "attn"), "attn.c_proj": ("o", "attn"), "mlp.c_fc": ("up", "mlp"),
              "mlp.c_proj": ("down", "mlp")},
))
