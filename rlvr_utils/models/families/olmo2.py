"""OLMo 2: norms *after* each sublayer (and q/k norms inside attention), so what a sublayer adds to the residual
stream is the output of its post-norm, and the MLP reads the residual stream itself."""
from rlvr_utils.models.families.base import Family, register

FAMILY = register(Family(
    model_types=("olmo2",),
    layers="model.layers", final_norm="model.norm", unembedding="lm_head",
    attn_out="post_attention_layernorm", mlp_out="post_feedforward_layernorm", mlp_in="mlp",
    children={"self_attn": "attn", "mlp": "mlp", "post_attention_layernorm": "norm",
              "post_feedforward_layernorm": "norm"},
    matrices={"self_attn.q_proj": ("q", "attn"), "self_attn.k_proj": ("k", "attn"), "self_attn.v_proj": ("v", "attn"),
              "self_attn.o_proj": ("o", "attn"), "mlp.gate_proj": ("gate", "mlp"), "mlp.up_proj": ("up", "mlp"),
              "mlp.down_proj": ("down", "mlp")},
))
