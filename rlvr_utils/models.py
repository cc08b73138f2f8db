"""Loading checkpoints: standard Hugging Face folders or hub ids, safetensors only."""
from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load(ref: str, cfg=None, device: str = "cpu"):
    """(model in eval mode, tokenizer) for a folder or hub id; `trust_remote_code` only if params say so."""
    trust = bool(cfg and cfg.model.trust_remote_code)
    dtype = _DTYPES[cfg.model.dtype] if cfg else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(ref, trust_remote_code=trust)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(ref, dtype=dtype, use_safetensors=True, trust_remote_code=trust)
    return model.to(device).eval(), tokenizer


def load_stage(cfg, stage: str, device: str = "cpu"):
    return load(cfg.model_ref(stage), cfg, device)
