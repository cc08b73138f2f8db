"""Positive controls with a known answer: the RLVR recipe (GRPO from the same SFT model, same data and steps)
with only one component trainable, so the change is confined to it.

  - 'attn_only': only the attention weights (q, k, v, o) train: a known Routing change;
  - 'mlp_only': only the MLP weights (gate, up, down) train: a known Representation-learning change.
Embeddings and norms stay frozen in both (rlvr_utils.models.families defines the components).
"""
from __future__ import annotations


from rlvr_utils.models.families import component_map
from rlvr_utils.treatments.registry import REPRESENTATION, ROUTING, Family, Treatment, register

PARAMS = ("variants",)
CONTROLS = {  # name: (component trained, the reading it must get, description)
    "attn_only": ("attn", ROUTING, "GRPO with every MLP weight frozen: a known Routing change"),
    "mlp_only": ("mlp", REPRESENTATION, "GRPO with every attention weight frozen: a known Representation change"),
}


def train_control(cfg, name: str) -> list[dict]:
    """GRPO with RLVR's recipe from the SFT model, training only the control's component."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlvr_utils.training import train

    trained = CONTROLS[name][0]
    sft_ref = cfg.model_ref("sft")
    # float32 master weights, as TRL loads RLVR's model from a folder: a bf16 checkpoint (every published one)
    # would otherwise train in bf16, where an update of lr 5e-7 rounds away
    model = AutoModelForCausalLM.from_pretrained(sft_ref, use_safetensors=True, dtype=torch.float32,
                                                 trust_remote_code=cfg.model.trust_remote_code)
    components = component_map(model)
    n_trained = 0
    for pname, param in model.named_parameters():
        param.requires_grad_(components[pname][0] == trained)
        n_trained += param.numel() if param.requires_grad else 0
    if n_trained == 0:
        raise ValueError(f"control {name!r}: no {trained} weights found in {sft_ref} to train")
    return train.grpo(cfg, name, model)


register(Family("controls", lambda cfg: [Treatment(n, "control", CONTROLS[n][1], "controls", CONTROLS[n][2],
                                                   trained=True) for n in cfg.variants.controls],
                order=10, train=train_control))
