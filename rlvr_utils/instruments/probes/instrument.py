"""The probes instrument: what each model's stored activations make linearly decodable, and each treatment's
gain in intermediate-result selectivity over the reference (`variants[T]["selectivity_gain"]`, which the
verdict reads against the nulls' gains and the noise floor).

Base, the reference and the study are probed for every target at every site: the chapter draws them. Every
other treatment whose activations are stored is probed for intermediate results at the summary site only:
that is what the verdict compares, and probing everything for every null would cost the most and decide
nothing more.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import pandas as pd
from transformers import AutoTokenizer

from rlvr_utils.activations.store import ActivationStore
from rlvr_utils.activations.tokens import TokenCache
from rlvr_utils.core.estimate import Estimate
from rlvr_utils.instruments.base import Instrument, Measures
from rlvr_utils.instruments.probes import maths, sweep
from rlvr_utils.instruments.probes.targets import ProbeTarget, targets_for, with_treatments
from rlvr_utils.training.data import read_jsonl
from rlvr_utils.treatments import registry

PARAMS = ("probes", "evaluation", "model")  # rlvr_utils.core.deps

log = logging.getLogger(__name__)

STAGES = ("base", registry.REFERENCE, registry.STUDY)  # probed for every target at every site


@dataclass
class Shared:
    """What every treatment's probes share: the reader, every model's targets, where and how to probe, and
    the tables and samples so far (the stages' first, then each treatment's)."""

    reader: sweep.StoreReader
    targets: dict[str, list[ProbeTarget]]
    layers: list[int]
    site: str  # where the headline numbers are read
    settings: dict
    described: pd.DataFrame
    summary: dict
    n_resampled: int | None  # problems with a scored intermediate-result test example (the gain's n)
    tables: list[pd.DataFrame] = field(default_factory=list)
    samples: dict = field(default_factory=dict)


class Probes(Instrument):
    name = "probes"
    reads = ("activations", "tokens", "eval", "data/eval.jsonl")

    def treatments(self, cfg) -> list[str]:
        """The registered treatments whose activations were extracted."""
        return registry.available(cfg, ActivationStore(cfg.path("activations")).models())

    def prepare(self, cfg, treatments: list[str]) -> Shared:
        """Locate the targets, probe the stages everywhere, and read the headline numbers and the noise floor."""
        p = cfg.probes
        store = ActivationStore(cfg.path("activations"))
        stages = [s for s in STAGES if s in store.models()]
        if not stages:
            raise FileNotFoundError(f"no activations of {', '.join(STAGES)} in {store.folder}: run the extraction "
                                    "chapter first")
        cache = TokenCache.load(cfg.path("tokens"))
        problems = read_jsonl(cfg.path("data", "eval.jsonl"))
        tokenizer = AutoTokenizer.from_pretrained(cfg.model_ref(registry.REFERENCE),
                                                  trust_remote_code=cfg.model.trust_remote_code)
        greedy = {s: read_jsonl(cfg.path("eval", f"{s}_greedy.jsonl")) for s in stages}
        stage_targets = targets_for(p, cache, problems, tokenizer, greedy)
        meta = store.meta(stages[0])
        sites = [s for s in p.sites if s in meta["sites"]]
        if not sites:
            raise ValueError(f"probes.sites={p.sites}: none of them was extracted (have {meta['sites']})")
        site = sweep.SUMMARY_SITE if sweep.SUMMARY_SITE in sites else sites[-1]
        settings = dict(Cs=p.Cs, max_iter=p.max_iter, tol=p.tol, test_fraction=p.test_fraction,
                        validation_fraction=p.validation_fraction, n_bootstrap=p.n_bootstrap,
                        confidence=cfg.evaluation.confidence, seed=cfg.seed)
        reader = sweep.StoreReader(store)
        table, samples = sweep.run(reader, stage_targets, meta["layers"], sites, **settings)
        summary = sweep.summary(table, samples, stages, max(meta["layers"]) + 1, p.decodable_margin,
                                cfg.evaluation.confidence, site)
        inter = [t for t in stage_targets.get(registry.REFERENCE, []) if t.name == "intermediate"]
        n_resampled = None
        if inter:
            started = time.perf_counter()
            floor = sweep.noise_floor(reader, registry.REFERENCE, inter[0], meta["layers"], [site], **settings)
            log.info("selectivity noise floor in %.1f s", time.perf_counter() - started)
            summary["selectivity_noise_floor"] = {
                "value": floor["value"], "ci": floor["ci"],
                "description": f"intermediate-result selectivity of {registry.REFERENCE}'s activations ({site}) with "
                               "their rows shuffled over examples (no information about the labels), through the same "
                               "folds, probes, control task and validation choice of layer; pooled over shuffles and "
                               "resamples"}
            n_resampled = maths.plan(inter[0], p.test_fraction, p.validation_fraction, 1, cfg.seed).n_scored_problems
        described = maths.describe(stage_targets, p.test_fraction, p.validation_fraction, cfg.seed)
        return Shared(reader, with_treatments(stage_targets, treatments, treatments), meta["layers"], site, settings,
                      described, summary, n_resampled, [table], samples)

    def measure(self, cfg, treatment: str, shared: Shared) -> Measures:
        """The treatment's selectivity gain over the reference at the layer where it gains most, and its change
        at the layer where it loses most ('selectivity_drop': a removed feature); a treatment the stages did not
        include is probed here, for intermediate results at the summary site."""
        if treatment not in shared.targets:  # the reference has no intermediate result to compare
            return {"selectivity_gain": Estimate.undefined(), "selectivity_drop": Estimate.undefined()}
        if treatment not in STAGES:
            table, samples = sweep.run(shared.reader, {treatment: shared.targets[treatment]}, shared.layers,
                                       [shared.site], **shared.settings)
            shared.tables.append(table)
            shared.samples.update(samples)
        table = pd.concat(shared.tables, ignore_index=True)
        out = {}
        for key, lower in (("selectivity_gain", False), ("selectivity_drop", True)):
            change = sweep.selectivity_gain(table, shared.samples, treatment, registry.REFERENCE, "intermediate",
                                            cfg.evaluation.confidence, shared.site, shared.n_resampled, lower)
            out[key] = Estimate.undefined() if change is None else change
        return out

    def report(self, cfg, shared: Shared, variants: dict[str, Measures]) -> dict:
        """The headline numbers, the targets and every probe (what the chapter draws)."""
        return {"summary": shared.summary, "targets": shared.described.to_dict("records"),
                "probes": sweep.table_records(pd.concat(shared.tables, ignore_index=True))}
