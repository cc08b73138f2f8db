"""Variants: named checkpoints beside base, SFT and RLVR that every measurement can be run on.

A measurement that decides the verdict compares a *treatment* with the reference model, SFT. The treatments:
  - 'rlvr': the study's RLVR model;
  - 'attn_only', 'mlp_only': positive controls, the same GRPO recipe with every MLP (resp. attention)
    weight frozen: a known Routing (resp. Representation learning) change;
  - 'identical': a copy of SFT, a negative control;
  - 'null_0', 'null_1', ...: SFT plus a random-direction update with RLVR's Frobenius norm in every
    tensor, the yardstick "a random update of the same size".
Each is a standard Hugging Face folder under runs/<name>/models/<variant>.
"""
from __future__ import annotations

REFERENCE = "sft"
STUDY = "rlvr"


def null_names(cfg) -> list[str]:
    return [f"null_{k}" for k in range(cfg.variants.nulls)]


def control_names(cfg) -> list[str]:
    return list(cfg.variants.controls)


def treatments(cfg) -> list[str]:
    """Every model compared with SFT: RLVR, the positive controls, the identical model, the nulls."""
    return [STUDY, *control_names(cfg), *(["identical"] if cfg.variants.identical else []), *null_names(cfg)]
