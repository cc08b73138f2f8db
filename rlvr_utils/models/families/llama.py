"""Llama-style decoders (Llama, Qwen2, Qwen3, Mistral): pre-norm blocks, separate q/k/v/o and a gated MLP."""
from rlvr_utils.models.families.base import Family, register

FAMILY = register(Family(
    model_types=("llama", "qwen2", "qwen3", "mistral"),
    layers="model.layers", final_norm="model.norm", unembedding="lm_head",
    attn_out="self_attn", mlp_out="mlp", mlp_in="post_attention_layernorm",
    children={"self_attn": "attn", "mlp": "mlp", "input_layernorm": "norm", "post_attention_layernorm": "norm"},
    matrices={"self_attn.q_proj": ("q", "attn"), "self_attn.k_proj": ("k", "attn"), "self_attn.v_proj": ("v", "attn"),
              "self_attn.o_proj": ("o", "attn"), "mlp.gate_proj": ("gate", "mlp"), "mlp.up_proj": ("up", "mlp"),
              "mlp.down_proj": ("down", "mlp")},
))
