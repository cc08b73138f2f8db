"""The logit-lens instrument: where each model's prediction forms, and whether the study's residual stream is
still read by the reference's later layers as their own (`metrics/lens.json`).

It runs the models themselves over the token cache (not the stored activations), so it is its own
measurement, apart from the probes. Base and the reference get the plain logit lens in `prepare`, with the
stitch of the reference's stream into base; each treatment measured gets its own lens and its stitches with
the reference (both ways) and with base. Only the study is measured: the chapter reads the lens of base, the
reference and the study, and stitching every null would cost a forward pass per layer and decide nothing the
verdict reads.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rlvr_utils.activations.tokens import TokenCache
from rlvr_utils.core.device import run_device
from rlvr_utils.instruments.base import Instrument, Measures
from rlvr_utils.instruments.probes import lens
from rlvr_utils.models.loading import load_stage
from rlvr_utils.treatments import registry

PARAMS = ("probes", "evaluation")  # rlvr_utils.core.deps

BASE = "base"


@dataclass
class Shared:
    """The token cache and its answers, the loaded base and reference, and the lens results so far:
    `plain[model]` (its own read-out) and `stitched[(a, b)]` (b's later blocks on a's stream)."""

    cache: TokenCache
    answers: dict[int, tuple[int, int]]
    models: dict
    device: str
    batch_size: int
    plain: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    stitched: dict[tuple[str, str], dict[str, np.ndarray]] = field(default_factory=dict)

    def stitch(self, a: str, model_a, b: str, model_b) -> dict[str, np.ndarray]:
        self.stitched[(a, b)] = lens.stitched_lens(model_a, model_b, self.cache, self.answers, self.batch_size)
        return self.stitched[(a, b)]

    def own_lens(self, name: str, model) -> None:
        self.plain[name] = lens.logit_lens(model, {name: lens.decoder(model)}, self.cache, self.answers,
                                           self.batch_size)[name]

    def results(self, treatments: list[str]) -> dict[str, dict[str, dict[str, np.ndarray]]]:
        """{model: {read-out: metrics}}: each model's own lens first, then its stitches into the treatments,
        the reference and base, in that order."""
        partners = [*treatments, registry.REFERENCE, BASE]
        return {a: {a: metrics, **{f"stitch:{b}": self.stitched[(a, b)] for b in partners if (a, b) in self.stitched}}
                for a, metrics in self.plain.items()}


class Lens(Instrument):
    name = "lens"
    reads = ("tokens",)
    stages = (BASE,)

    def treatments(self, cfg) -> list[str]:
        return registry.available(cfg, [registry.STUDY])

    def prepare(self, cfg, treatments: list[str]) -> Shared:
        device = run_device(cfg)
        (base, _), (reference, tokenizer) = (load_stage(cfg, s, device) for s in (BASE, registry.REFERENCE))
        cache = TokenCache.load(cfg.path("tokens"))
        shared = Shared(cache, lens.answers_for(cache, tokenizer), {BASE: base, registry.REFERENCE: reference}, device,
                        cfg.probes.lens_batch_size)
        shared.own_lens(BASE, base)
        shared.own_lens(registry.REFERENCE, reference)
        shared.stitch(registry.REFERENCE, reference, BASE, base)
        return shared

    def measure(self, cfg, treatment: str, shared: Shared) -> Measures:
        """The treatment's own lens, its stitches with base, and the stitch KL (averaged over layers) between
        it and the reference, both ways."""
        model = load_stage(cfg, treatment, shared.device)[0]
        reference = shared.models[registry.REFERENCE]
        shared.own_lens(treatment, model)
        into = shared.stitch(treatment, model, registry.REFERENCE, reference)
        back = shared.stitch(registry.REFERENCE, reference, treatment, model)
        shared.stitch(treatment, model, BASE, shared.models[BASE])
        settings = dict(n_bootstrap=cfg.probes.n_bootstrap, confidence=cfg.evaluation.confidence, seed=cfg.seed)
        return {"stitch_kl_into_reference": lens.stitch_kl(into, **settings)["mean"],
                "stitch_kl_from_reference": lens.stitch_kl(back, **settings)["mean"]}

    def report(self, cfg, shared: Shared, variants: dict[str, Measures]) -> dict:
        """Every lens per layer with its interval, and the headline numbers (answer layers, stitch KLs)."""
        p, ev = cfg.probes, cfg.evaluation
        results = shared.results(list(variants))
        lens_table = lens.table(results, p.n_bootstrap, ev.confidence, cfg.seed)
        return {"summary": lens.summary(lens_table, results, list(shared.plain), p.lens_agreement,
                                        n_bootstrap=p.n_bootstrap, confidence=ev.confidence, seed=cfg.seed),
                "lens": lens_table.to_dict("records")}
