"""Loading checkpoints: standard Hugging Face folders or hub ids, safetensors only."""
from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

PARAMS = ("model",)  # params sections read here (rlvr_utils.core.deps)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load(ref: str, cfg=None, device: str = "cpu"):
    """(model in eval mode, tokenizer) for a folder or hub id; `trust_remote_code` only if params say so."""
    from pathlib import Path

    from safetensors import SafetensorError

    trust = bool(cfg and cfg.model.trust_remote_code)
    dtype = _DTYPES[cfg.model.dtype] if cfg else torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref, trust_remote_code=trust)
        model = AutoModelForCausalLM.from_pretrained(ref, dtype=dtype, use_safetensors=True, trust_remote_code=trust)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        if not Path(ref).is_dir():
            raise
        # a bare SafetensorError names no file: say which checkpoint, and how to recover
        raise RuntimeError(f"checkpoint {ref} cannot be loaded ({type(err).__name__}: {err}): it is truncated or "
                           "corrupted. Re-run (its stamp no longer matches, so the run rebuilds it) or run with "
                           "--force.") from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer


def load_stage(cfg, stage: str, device: str | None = None):
    """A stage's checkpoint on `device`, by default the run's (rlvr_utils.core.device)."""
    from rlvr_utils.core.device import run_device

    return load(cfg.model_ref(stage), cfg, device or run_device(cfg))


_SHAPE_KEYS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "intermediate_size")


def check_compatible(cfg, stages=("base", "sft", "rlvr")) -> None:
    """Base, SFT and RLVR must be one architecture with one vocabulary: the analyses compare them position by
    position and weight by weight. Raises a ValueError naming what differs."""
    from transformers import AutoConfig, AutoTokenizer

    trust = cfg.model.trust_remote_code
    refs = {s: cfg.model_ref(s) for s in stages}
    configs = {s: AutoConfig.from_pretrained(r, trust_remote_code=trust).to_dict() for s, r in refs.items()}
    vocabs = {s: AutoTokenizer.from_pretrained(r, trust_remote_code=trust).get_vocab() for s, r in refs.items()}
    first = stages[0]
    problems = []
    for stage in stages[1:]:
        for key in _SHAPE_KEYS:
            if configs[stage].get(key) != configs[first].get(key):
                problems.append(f"{key}: {first}={configs[first].get(key)!r} but {stage}={configs[stage].get(key)!r}")
        if vocabs[stage] != vocabs[first]:
            differing = len(set(vocabs[stage].items()) ^ set(vocabs[first].items()))
            problems.append(f"tokenizer vocabulary: {first} and {stage} differ in {differing} entries")
    if problems:
        where = ", ".join(f"{s}={r}" for s, r in refs.items())
        raise ValueError(f"checkpoints are not one model at three stages ({where}):\n  - " + "\n  - ".join(problems))
