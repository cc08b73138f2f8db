"""The patching instrument: every treatment's components patched into the reference (SFT), on the answer tokens
of the shared token cache; the study model's (RLVR's) components also layer by layer with total effects, SFT's
into RLVR (necessity), and clean/corrupted patching inside SFT and inside RLVR.

Metric. Teacher forcing on the shared token cache: the mean log-probability (nats) of the final answer's
actual tokens, each scored at the position that predicts it (`batches.answer_span`). The verdict reads, per
treatment, the attention and MLP direct effects summed over layers (`core.direct_effects`: the donor's
component run on SFT's own input, later components frozen) and the total effect, each a bootstrap Estimate
over problems. Run it with `base.run(cfg, Patching())`; metrics/patching.json holds besides the variants:
`cross_model` (a report per direction: `{T}_into_sft`, `sft_into_rlvr`), `within_model`, `summary`
(direct-effect shares of RLVR - SFT and SFT - RLVR gaps), `settings`, `token_source`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from torch import nn

from rlvr_utils.activations import tokens as activations
from rlvr_utils.core.device import run_device
from rlvr_utils.core.estimate import Estimate
from rlvr_utils.instruments import base
from rlvr_utils.instruments.patching.batches import PatchBatch, answer_batches, answer_span, corrupted_batches
from rlvr_utils.instruments.patching.core import Patch, direct_effects, layer_patches, sweep
from rlvr_utils.instruments.patching.effects import (component_shares, component_totals, direct_rows, mean_ci,
                                                     patch_rows)
from rlvr_utils.models import families, loading
from rlvr_utils.training import data
from rlvr_utils.treatments.registry import REFERENCE, STUDY

PARAMS = ("patching", "evaluation")  # params sections read here (rlvr_utils.core.deps)

MEASURES = ("attn_direct_effect", "mlp_direct_effect", "total_effect")  # per treatment, for the verdict
WITHIN_POSITIONS = ("corrupted", "target")  # 'all' would restore resid_pre trivially (only one token differs)
STUDY_INTO_REFERENCE, REFERENCE_INTO_STUDY = f"{STUDY}_into_{REFERENCE}", f"{REFERENCE}_into_{STUDY}"


def _boot(cfg) -> dict:
    return dict(n_bootstrap=cfg.patching.n_bootstrap, confidence=cfg.evaluation.confidence, seed=cfg.seed)


def compare(receiver: nn.Module, donor: nn.Module, batches: list[PatchBatch], patches: Sequence[Patch], cfg,
            progress: bool = True, name: str = "donor") -> dict:
    """Total effects (activation patching) and direct effects of `donor` in `receiver`, JSON-ready."""
    boot = _boot(cfg)
    total = sweep(receiver, donor, batches, patches, cfg.patching.patches_per_forward, progress, f"patching {name}")
    direct = direct_effects(receiver, donor, batches, progress, f"direct effects {name}")
    return {"n_problems": len(direct.receiver), "metric": "mean log-probability of the answer tokens (nats)",
            "receiver_metric": mean_ci(direct.receiver, **boot), "donor_metric": mean_ci(direct.donor, **boot),
            **component_totals(direct, **boot), **component_shares(direct, **boot),
            "patches": patch_rows(total, **boot), "components": direct_rows(direct, **boot),
            "seconds": total.seconds + direct.seconds}


def within_model(cfg, models: dict[str, nn.Module], tokenizer, cache, progress: bool = True) -> dict:
    """Clean/corrupted patching inside each model: where the corrupted number's information flows."""
    pc = cfg.patching
    batches = corrupted_batches(cache.sequences, cache.prompt_lengths, cache.problem_ids, tokenizer,
                                cache.pad_token_id, pc.batch_size, pc.corrupt_number, cfg.seed, pc.n_problems)
    if not batches:
        raise ValueError(f"no prompt has a number #{pc.corrupt_number} that its completion writes again")
    patches = layer_patches(len(families.blocks(next(iter(models.values())))), pc.sites, WITHIN_POSITIONS)
    boot = _boot(cfg)
    out = {}
    for name, model in models.items():
        result = sweep(model, model, batches, patches, pc.patches_per_forward, progress, f"clean/corrupted {name}")
        out[name] = {"n_problems": len(result.receiver), "metric": "logit(clean digit) - logit(corrupted digit)",
                     "corrupted": mean_ci(result.receiver, **boot), "clean": mean_ci(result.donor, **boot),
                     "patches": patch_rows(result, **boot), "seconds": result.seconds}
    return out


def summary(cross: dict) -> dict:
    """Direct-effect shares of the study/reference gap in both directions, each an estimate with a description
    (context beside the verdict's rows)."""
    out = {}
    for direction in (STUDY_INTO_REFERENCE, REFERENCE_INTO_STUDY):
        report = cross.get(direction)
        if report is None:
            continue
        donor, receiver = report["donor"].upper(), report["receiver"].upper()
        for c, short in (("attn", "attn_out"), ("mlp", "mlp_out")):
            share = report[f"{c}_direct_share"]
            estimate = (Estimate(share["value"], share["ci"], "bootstrap", report["n_problems"]) if share["ci"]
                        else Estimate.undefined(report["n_problems"]))
            out[f"patch_{short}_effect_{direction}"] = {
                **estimate.to_json(),
                "description": f"direct effect of {donor}'s {short} (same input, later components frozen), summed "
                               f"over layers, as a share of the {donor} - {receiver} gap in the answer tokens' mean "
                               f"log-probability ({report['n_problems']} problems; NaN when the gap is not "
                               "distinguishable from zero)"}
    return out


@dataclass
class Shared:
    """What every treatment's measurement uses: the reference loaded once, the answer batches and patches."""

    device: str
    reference: nn.Module
    tokenizer: object
    cache: activations.TokenCache
    batches: list[PatchBatch]
    patches: list[Patch]
    cross: dict = field(default_factory=dict)  # {direction: report}, filled per treatment
    study: nn.Module | None = None  # kept after its measurement for the necessity and within-model steps


class Patching(base.Instrument):
    name = "patching"
    reads = ("tokens", "data/eval.jsonl")

    def __init__(self, progress: bool = True):
        self.progress = progress

    def prepare(self, cfg, treatments: list[str]) -> Shared:
        pc = cfg.patching
        device = run_device(cfg)
        reference, tokenizer = loading.load(cfg.model_ref(REFERENCE), cfg, device)
        cache = activations.TokenCache.load(cfg.path("tokens"))
        answered = sum(answer_span(s, p, tokenizer, pc.answer_marker) is not None
                       for s, p in zip(cache.sequences, cache.prompt_lengths))
        print(f"token cache ({cache.source} completions): {answered} of {len(cache)} sequences have a final answer")
        if answered == 0:  # e.g. an untrained model wrote the completions: patch on the gold solutions instead
            problems = data.read_jsonl(cfg.path("data", "eval.jsonl"))
            cache = activations.build_token_cache(tokenizer, problems[:pc.n_problems], None, "gold")
            print("no final answer to patch on: using the gold solutions of the held-out problems instead")
        batches = answer_batches(cache.sequences, cache.prompt_lengths, cache.problem_ids, tokenizer,
                                 cache.pad_token_id, pc.batch_size, pc.answer_marker, pc.n_problems)
        if not batches:
            raise ValueError(f"no token-cache sequence has a final answer after {pc.answer_marker!r}")
        patches = layer_patches(len(families.blocks(reference)), pc.sites, pc.positions, all_layers=True)
        return Shared(device, reference, tokenizer, cache, batches, patches)

    def measure(self, cfg, treatment: str, shared: Shared) -> dict[str, Estimate]:
        """The treatment's components into the reference: direct effects for every treatment (what the
        verdict reads, 2 per layer), total-effect sweeps (one forward pass per patch) for the study only."""
        donor, _ = loading.load(cfg.model_ref(treatment), cfg, shared.device)
        patches = shared.patches if treatment == STUDY else []
        report = {"donor": treatment, "receiver": REFERENCE,
                  **compare(shared.reference, donor, shared.batches, patches, cfg, self.progress, treatment)}
        shared.cross[f"{treatment}_into_{REFERENCE}"] = report
        if treatment == STUDY:
            shared.study = donor
        return {k: Estimate(report[k]["value"], report[k]["ci"], "bootstrap", report["n_problems"]) for k in MEASURES}

    def report(self, cfg, shared: Shared, variants: dict) -> dict:
        out = {"settings": cfg.patching.model_dump(mode="json"), "token_source": shared.cache.source,
               "cross_model": shared.cross}
        if shared.study is not None:
            shared.cross[REFERENCE_INTO_STUDY] = {
                "donor": REFERENCE, "receiver": STUDY,
                **compare(shared.study, shared.reference, shared.batches, shared.patches, cfg, self.progress,
                          f"{REFERENCE} into {STUDY}")}
            if cfg.patching.within_model:
                try:
                    out["within_model"] = within_model(cfg, {REFERENCE: shared.reference, STUDY: shared.study},
                                                       shared.tokenizer, shared.cache, self.progress)
                except ValueError as error:  # e.g. a tokenizer that merges digits: say why, keep the rest
                    print(f"clean/corrupted patching skipped: {error}")
                    out["within_model"] = {"skipped": str(error)}
        out["summary"] = summary(shared.cross)
        return out
