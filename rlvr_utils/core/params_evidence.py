"""The params sections of the evidence design: which treatments the study measures beside RLVR (variants) and
how the verdict reads them (verdict). Part of the params schema (rlvr_utils.core.params, which re-exports them).
"""
from __future__ import annotations

from typing import Literal

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Section(BaseModel):
    # allow_inf_nan=False: an infinite or NaN learning rate, temperature or threshold is refused at once
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class VariantParams(Section):
    """Checkpoints beside base, SFT and RLVR that every measurement is run on (the variants chapter): the nulls and
    controls that show whether an instrument tells a known Routing change from a known Representation
    change, and reads "no evidence" for a random change of the same size."""

    nulls: int = Field(3, ge=0, description="null 'RLVR' models: SFT plus a random-direction update with RLVR's "
                       "Frobenius norm in every tensor (seeds seed+1000+k): a weaker reference than the placebos, "
                       "and the weights chapter's unit of 'random'")
    identical: bool = Field(True, description="an 'RLVR' identical to SFT (a copy): must read 'no evidence'")
    placebos: int = Field(3, ge=0, description="placebo GRPO runs: RLVR's recipe paid by seeded draws that ignore the "
                          "completion (RLVR's mean rewards), a trained update with no task signal; the yardstick of "
                          "every row, which counts only with at least 2")
    norm_matched: bool = Field(True, description="also each placebo (and hybrid) rescaled per tensor to RLVR's "
                               "update norms, so that no row can tell RLVR from a placebo by size alone")
    hybrids: bool = Field(True, description="full-parameter controls: a control's component update plus a placebo's "
                          "update of everything else (needs placebos and both controls); a row counts only when "
                          "it reads them right")
    planted: bool = Field(True, description="feature-level controls built from SFT's weights: 'planted_feature' (a "
                          "new direction written by one re-purposed MLP neuron at the crosscoder's block) and "
                          "'removed_feature' (the direction SFT's strongest MLP neuron there writes, projected "
                          "out): known Representation changes the feature rows (crosscoder, dictionary transfer, "
                          "probes) must find (model organism only: the gate reads a property of its synthetic "
                          "problems)")
    planted_layer: int | None = Field(None, ge=0, description="block of the planted controls; None = the middle "
                                      "block (num_layers // 2), the crosscoder's default; must equal crosscoder.layer "
                                      "when that is set")
    user: dict[str, str] = Field({}, description="extra treatments to measure beside RLVR, name: checkpoint folder "
                                 "or hub id (e.g. another RL run from the same SFT model): measured and read like "
                                 "RLVR against the same placebos, nulls and controls; no known answer")
    controls: list[Literal["attn_only", "mlp_only"]] = Field(
        ["attn_only", "mlp_only"], description="positive controls: GRPO with the same recipe from SFT with every "
        "MLP weight frozen (attn_only, a known Routing change) or every attention weight frozen (mlp_only, a "
        "known Representation change)")

    @field_validator("user")
    @classmethod
    def _user_names(cls, value):
        # a name is a folder under models/ and a column of every table
        bad = [n for n in value if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", n) or n in ("base", "sft", "rlvr")]
        if bad:
            raise ValueError(f"user treatment names {bad} are not folder names (a letter, then letters, digits, "
                             "'_', '-' or '.'), or name a stage (base, sft, rlvr)")
        return value


class VerdictParams(Section):
    """Decision rules of the evidence table (the verdict chapter). Every row reads a treatment's measurement against
    the same measurement on the placebo runs (and the random-update nulls); book/methods.md gives the reason for
    each number."""

    min_relative_effect: float = Field(1.0, gt=0, description="a change measure counts when its interval clears "
                                       "every reference's interval and its distance from the placebos' mean is at "
                                       "least this many times their own scale (mean |value| + spread): 1 means at "
                                       "least double what a trained update without task signal does")
    null_ratio_margin: float = Field(0.5, gt=0, description="weight measures taken per matrix relative to the "
                                     "nulls' (1 = what a random update of the same size does) must also exceed the "
                                     "placebos' mean by this much: 1.5 times random, where a low-rank update of a "
                                     "128 x 512 matrix reaches several times")
    share_margin: float = Field(0.1, gt=0, lt=1, description="shares and ratios in [0, 1] (MLP share, effective-"
                                "rank ratio) must also differ from the nulls' mean by this much: 0.1 is 20% of "
                                "the distance between an attention-only (0) and an even (0.5) update")
    probe_gain_margin: float = Field(0.05, gt=0, description="a selectivity gain must also exceed the nulls' mean "
                                     "by this much, above the noise floor of selectivity on shuffled features")
    behaviour_margin: float = Field(0.05, gt=0, lt=1, description="a component graft's accuracy gain must also exceed "
                                    "the placebos' mean by this much (5 points: about 1.5 times the standard error "
                                    "of a paired difference on the 256 graft problems)")
    redundant_share: float = Field(0.5, gt=0, le=1, description="when both grafts help beyond the placebos, the row "
                                   "reads 'redundant' if each alone recovers at least this share of the treatment's "
                                   "gain (most of it), else 'both'")
    min_decided_rows: int = Field(1, ge=1, description="fewer counted measurements with a decided reading than this: "
                                  "inconclusive ('neither' when at least this many counted and none decided). 1: a "
                                  "measurement that reads every frozen, full-parameter and norm-matched control "
                                  "right and no placebo as evidence may answer alone (the caveats say so)")
    replicate_seeds: list[int] = Field([1, 2], description="seeds that `python -m rlvr_utils replicate` trains as "
                                       "runs <name>-seed<k>; a row counts only when all seeds that ran agree")


class ElicitationParams(Section):
    """The elicitation experiment (`python -m rlvr_utils elicit`): base, SFT and RLVR trained again for each share of
    the pretraining corpus's worked stories told in the evaluation's wording, to see whether RLVR's gain over SFT
    needs what pretraining put there (elicitation, 're-routing') or appears without it (learning)."""

    fractions: list[float] = Field([0.0, 0.05, 0.2, 0.5], min_length=2, description="values of data.corpus_new_verbs "
                                   "trained, one sub-run <name>-elicit-f<share>-s<seed> each (at least two: the "
                                   "result is a curve); 0 is a base that never met the new wording")
    seeds: list[int] = Field([0, 1], min_length=1, description="seeds of each share (another base model, other data and "
                             "held-out problems each); at least 2 for an interval over seeds")
    n_bootstrap: int = Field(2000, gt=0, description="bootstrap resamples (of problems, and of seeds within a share) "
                             "for the gains' and the slope's intervals")
    confidence: float = Field(0.95, gt=0, lt=1, description="confidence level of the intervals")

    @field_validator("fractions")
    @classmethod
    def _shares(cls, value):
        bad = [f for f in value if not 0.0 <= f <= 1.0]
        if bad:
            raise ValueError(f"shares {bad} are outside 0..1 (data.corpus_new_verbs is a share of stories)")
        if len(set(value)) < len(value):
            raise ValueError(f"fractions {value} name one share twice")
        return sorted(value)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value):
        bad = [s for s in value if not 0 <= s <= 2**32 - 1]
        if bad:
            raise ValueError(f"seeds {bad} are outside 0..2**32-1 (numpy's seed range)")
        if len(set(value)) < len(value):
            raise ValueError(f"seeds {value} name one seed twice")
        return value
