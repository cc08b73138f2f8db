"""Where the attention output, MLP output, final norm and unembedding live in each supported family.

Hook sites follow TransformerLens names. `attn_out` and `mlp_out` are the modules whose output is
exactly what the block adds to the residual stream, so that for every supported family
    resid_post = resid_pre + attn_out + mlp_out.
OLMo2 normalises *after* each sublayer, so its sites are the post-sublayer norms.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

SITES = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post")


@dataclass(frozen=True)
class Block:
    block: nn.Module  # input = resid_pre, output = resid_post
    attn_out: nn.Module
    mlp_out: nn.Module


def _decoder(model: nn.Module):
    """(layers, final_norm, unembedding) for the families we support."""
    family = model.config.model_type
    if family in ("llama", "qwen2", "qwen3", "mistral", "olmo2"):
        return model.model.layers, model.model.norm, model.lm_head
    if family == "gpt2":
        return model.transformer.h, model.transformer.ln_f, model.lm_head
    if family == "gpt_neox":
        # transformers 5 renamed GPT-NeoX's `embed_out` to `lm_head`
        head = model.lm_head if hasattr(model, "lm_head") else model.embed_out
        return model.gpt_neox.layers, model.gpt_neox.final_layer_norm, head
    raise ValueError(
        f"model_type {family!r} is not supported; supported: llama, qwen2, qwen3, mistral, olmo2, gpt2, gpt_neox"
    )


def blocks(model: nn.Module) -> list[Block]:
    layers, _, _ = _decoder(model)
    family = model.config.model_type
    out = []
    for layer in layers:
        if family == "olmo2":
            out.append(Block(layer, layer.post_attention_layernorm, layer.post_feedforward_layernorm))
        elif family == "gpt2":
            out.append(Block(layer, layer.attn, layer.mlp))
        elif family == "gpt_neox":
            out.append(Block(layer, layer.attention, layer.mlp))
        else:
            out.append(Block(layer, layer.self_attn, layer.mlp))
    return out


def final_norm(model: nn.Module) -> nn.Module:
    return _decoder(model)[1]


def unembedding(model: nn.Module) -> nn.Module:
    return _decoder(model)[2]


def site_name(layer: int, site: str) -> str:
    return f"blocks.{layer}.{site}"
