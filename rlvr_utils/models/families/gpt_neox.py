"""GPT-NeoX (Pythia): attention and MLP in parallel on the same residual stream (so there is no separate MLP
input to replay), fused q/k/v; transformers 5 renamed `embed_out` to `lm_head`."""
from rlvr_utils.models.families.base import Family, register

FAMILY = register(Family(
    model_types=("gpt_neox",),
    layers="gpt_neox.layers", final_norm="gpt_neox.final_layer_norm", unembedding="lm_head",
    unembedding_fallbacks=("embed_out",),
    attn_out="attention", mlp_out="mlp", mlp_in=None,
    children={"attention": "attn", "mlp": "mlp", "input_layernorm": "norm", "post_attention_layernorm": "norm"},
    matrices={"attention.query_key_value": ("qkv", "attn"), "attention.dense": ("o", "attn"),
              "mlp.dense_h_to_4h": ("up", "mlp"), "mlp.dense_4h_to_h": ("down", "mlp")},
))
