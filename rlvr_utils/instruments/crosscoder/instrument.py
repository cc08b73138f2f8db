"""Feature-level model diffing as an instrument: BatchTopK crosscoders between the reference (SFT) and each
treatment, over `crosscoder.seeds` seeds, with base -> SFT as the yardstick; the specific-latent counts, the
causal test (ablation and transplant during greedy decoding) and the readings of the study's latents.

metrics/crosscoder.json holds, per treatment T, `specific_latents` = `treatment_only_latents` (features T has and
SFT lacks) + `reference_only_latents` (features SFT has and T lost), each by Minder et al.'s criterion (model.py:
Δnorm beyond 0.9 either way, confirmed by Latent Scaling), and `max_relative_norm` (mean with the range over
crosscoder seeds: interval 'seeds'), and `causal_effect` (accuracy drop in points when T's treatment-only
latents are ablated in T, paired bootstrap over held-out problems; undefined where the test was not run);
beside them every fit's per-latent diagnostics (`pairs`), the causal test (`causal`), the readings and the
`summary` of headline numbers.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
from transformers import AutoConfig

from rlvr_utils.activations.extraction import run_extract
from rlvr_utils.activations.store import ActivationStore
from rlvr_utils.activations.tokens import TokenCache
from rlvr_utils.core.device import run_device
from rlvr_utils.core.estimate import Estimate
from rlvr_utils.instruments import base
from rlvr_utils.instruments.crosscoder.causal import causal_test
from rlvr_utils.instruments.crosscoder.latents import read_latents
from rlvr_utils.instruments.crosscoder.model import PairFit, fit_pair
from rlvr_utils.models import families
from rlvr_utils.training.data import read_jsonl
from rlvr_utils.treatments import registry
from rlvr_utils.treatments.registry import REFERENCE, STUDY

PARAMS = ("crosscoder", "extract", "model")  # params sections read here (rlvr_utils.core.deps)

log = logging.getLogger(__name__)
YARDSTICK = "yardstick"  # the kind of the base -> SFT pair: a fine-tuning that did teach something new


# --- inputs -----------------------------------------------------------------------------------------------
def middle_layer(cfg) -> int:
    n_layers = AutoConfig.from_pretrained(cfg.model_ref(REFERENCE), trust_remote_code=cfg.model.trust_remote_code
                                          ).num_hidden_layers
    layer = cfg.crosscoder.layer if cfg.crosscoder.layer is not None else n_layers // 2
    if not 0 <= layer < n_layers:
        raise ValueError(f"crosscoder.layer={layer} is out of range: the model has layers 0..{n_layers - 1}")
    return layer


def read_pair(store, reference: str, target: str, site: str, position: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(reference activations, target activations, (row, position) index) at the same tokens."""
    a, _ = store.read(reference, site, position)
    b, _ = store.read(target, site, position)
    ia, ib = np.asarray(store.index(reference, position)), np.asarray(store.index(target, position))
    if ia.shape != ib.shape or not np.array_equal(ia, ib):
        raise ValueError(f"activations of {reference!r} and {target!r} at {position!r} are not at the same tokens: "
                         "re-run the extraction chapter so both use the run's one token cache")
    return np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32), ia


# --- one pair -----------------------------------------------------------------------------------------------
def fit_seeds(cfg, a: np.ndarray, b: np.ndarray, d_model: int, label: str) -> list[PairFit]:
    """One crosscoder per seed (seed, seed+1, ...) on the same paired activations."""
    c = cfg.crosscoder
    fits = [fit_pair(a, b, c.expansion * d_model, c.k, c.steps, c.batch_size, c.learning_rate, cfg.seed + s,
                     c.specific_threshold, c.presence_threshold, True, f"{label} seed {s}", run_device(cfg))
            for s in range(c.seeds)]
    log.info("%s: %s specific latents over seeds, FVU %s, %.0f s", label, [len(f.specific) for f in fits],
             np.round(np.mean([f.info["fvu"] for f in fits], 0), 3), sum(f.info["seconds"] for f in fits))
    return fits


def fit_record(fit: PairFit) -> dict:
    """What the figures and the verdict need from one fit (per-latent arrays as lists; NaN -> None)."""
    clean = lambda a: [None if not np.isfinite(v) else float(v) for v in np.asarray(a, dtype=float)]  # noqa: E731
    alive_rel = fit.rel_norm[fit.alive]
    return {"n_specific": int(len(fit.specific) + len(fit.reference_only)), "n_target_only": int(len(fit.specific)),
            "n_reference_only": int(len(fit.reference_only)), "specific": fit.specific.tolist(),
            "reference_only": fit.reference_only.tolist(), "alive": int(len(fit.alive)),
            "min_rel_norm": float(alive_rel.min()) if len(alive_rel) else None,
            "max_rel_norm": float(alive_rel.max()) if len(alive_rel) else None,
            "fvu": fit.info["fvu"], "seconds": fit.info["seconds"], "threshold": float(fit.crosscoder.threshold),
            "rel_norm": clean(fit.rel_norm), "nu_error": clean(fit.scaling["nu_error"]),
            "nu_recon": clean(fit.scaling["nu_recon"]), "count": fit.scaling["count"].tolist(),
            "nu_error_reference": clean(fit.reference_scaling.get("nu_error", np.full(len(fit.rel_norm), np.nan)))}


def pair_record(reference: str, target: str, kind: str, n_tokens: int, fits: list[PairFit]) -> dict:
    return {"reference": reference, "target": target, "kind": kind, "n_tokens": n_tokens,
            "seeds": [fit_record(f) for f in fits]}


# --- estimates ------------------------------------------------------------------------------------------------
def seed_interval(values) -> Estimate:
    """Mean over crosscoder seeds with the range over seeds as its interval (3 seeds: no parametric claim)."""
    v = np.asarray(values, dtype=float)
    return Estimate(float(v.mean()), (float(v.min()), float(v.max())), "seeds", len(v))


def counts(pair: dict, side: str = "n_specific") -> list[int]:
    """Per crosscoder seed: model-specific latents ('n_specific', both sides), or one side ('n_target_only',
    'n_reference_only')."""
    return [s[side] for s in pair["seeds"]]


def measures(pair: dict, causal: dict | None) -> base.Measures:
    """One SFT -> T pair's estimates for the verdict: latents only T has, latents only SFT has (a feature T lost)
    and their sum, which the verdict reads (both are features that changed); the causal effect (accuracy drop
    in points when T's treatment-only latents are ablated in T) is undefined where the test was not run, never 0."""
    return {"specific_latents": seed_interval(counts(pair)),
            "treatment_only_latents": seed_interval(counts(pair, "n_target_only")),
            "reference_only_latents": seed_interval(counts(pair, "n_reference_only")),
            "max_relative_norm": seed_interval([s["max_rel_norm"] for s in pair["seeds"]]),
            "min_relative_norm": seed_interval([s["min_rel_norm"] for s in pair["seeds"]]),
            "causal_effect": Estimate.from_json(causal["specific"]["ablate_drop"]) if causal
            else Estimate.undefined()}


def pair_label(key: str) -> str:
    return key.replace("->", " → ")


def summary(result: dict) -> dict:
    """Headline numbers of the report's `pairs` and `causal`, with intervals and descriptions."""
    out = {}
    pairs = result["pairs"]

    def entry(est: Estimate | dict, description: str) -> dict:
        return {**(est.to_json() if isinstance(est, Estimate) else est), "description": description}

    yardstick = [k for k, p in pairs.items() if p["kind"] == YARDSTICK]
    study = [k for k, p in pairs.items() if p["reference"] == REFERENCE and p["target"] == STUDY]
    nulls = [k for k, p in pairs.items() if p["reference"] == REFERENCE and p["kind"] == "null"]
    for key in yardstick:
        out["crosscoder_sft_specific_latents"] = entry(seed_interval(counts(pairs[key])), "yardstick: model-specific "
            "latents (SFT-only + base-only) in the base->SFT crosscoder (mean, range over crosscoder seeds)")
    for key in study:
        out["crosscoder_rlvr_specific_latents"] = entry(seed_interval(counts(pairs[key])), "model-specific latents "
            "(RLVR-only + SFT-only) in the SFT->RLVR crosscoder (Minder et al.'s Δnorm beyond 0.9 either way and "
            "Latent Scaling; mean, range over crosscoder seeds)")
        for side, text in (("n_target_only", "RLVR-only latents (features RLVR has and SFT lacks)"),
                           ("n_reference_only", "SFT-only latents (features SFT has and RLVR lost)")):
            out[f"crosscoder_rlvr_{side.removeprefix('n_')}_latents"] = entry(
                seed_interval(counts(pairs[key], side)), f"{text} in the SFT->RLVR crosscoder (mean, range over seeds)")
        out["crosscoder_fvu_rlvr"] = entry(seed_interval([np.mean(s["fvu"]) for s in pairs[key]["seeds"]]),
                                           "fraction of variance the SFT->RLVR crosscoder leaves unexplained (mean "
                                           "of the two models; range over seeds)")
    for keys, name in ((yardstick, "sft"), (study, "rlvr")):
        for key in keys:
            out[f"crosscoder_{name}_max_relative_norm"] = entry(
                seed_interval([s["max_rel_norm"] for s in pairs[key]["seeds"]]),
                f"largest relative decoder norm of a live latent, {pair_label(key)} (0.5 = no latent leans to either "
                "model; mean, range over seeds)")
    if nulls:
        out["crosscoder_null_max_relative_norm"] = entry(
            seed_interval([s["max_rel_norm"] for k in nulls for s in pairs[k]["seeds"]]),
            "largest relative decoder norm of a live latent, SFT -> nulls (mean, range over nulls and seeds)")
        out["crosscoder_null_specific_latents"] = entry(
            seed_interval([n for k in nulls for n in counts(pairs[k])]),
            f"model-specific latents in SFT->null crosscoders ({len(nulls)} random updates of RLVR's size; mean, range "
            "over nulls and seeds): the floor RLVR's count is set against")
    cz = result["causal"].get(STUDY)
    texts = (("ablate_drop", "greedy accuracy drop (points) when {what} are ablated in RLVR"),
             ("ablate_random_drop", "the same for as many random live latents (control of {what})"),
             ("transplant_gain", "greedy accuracy gain (points) when {what} are transplanted into SFT"),
             ("transplant_random_gain", "the same for as many random live latents (control of {what})"),
             ("ablate_reference_drop", "greedy accuracy drop (points) when {what} are ablated in SFT (what a "
              "shared latent costs either model)"))
    for set_name, what, prefix in (("specific", "RLVR's specific latents", "crosscoder_rlvr_"),
                                   ("leaning", "the most RLVR-leaning live latents (highest relative decoder norm)",
                                    "crosscoder_rlvr_leaning_")):
        if not cz:
            break
        for key, text in texts:
            out[prefix + key] = entry(cz[set_name][key], text.format(what=what) + f"; paired bootstrap over "
                                      f"{cz['n_problems']} held-out problems")
    return out


# --- the instrument -----------------------------------------------------------------------------------------
@dataclass
class Shared:
    """What every treatment's measurement shares, and what the report collects from them."""

    cache: TokenCache
    store: ActivationStore
    layer: int
    site: str
    d_model: int
    problems: list[dict]
    pairs: dict = field(default_factory=dict)
    causal: dict = field(default_factory=dict)
    readings: dict | None = None
    train_seconds: float = 0.0
    causal_seconds: float = 0.0


class CrosscoderInstrument(base.Instrument):
    name = "crosscoder"
    reads = ("tokens", "data/eval.jsonl")
    stages = ("base",)  # the base -> SFT yardstick

    def treatments(self, cfg) -> list[str]:
        """crosscoder.treatments (each must have a checkpoint), else the study, the controls (which calibrate
        the verdict's row), the user's treatments and the placebos (the yardstick; the random nulls only when
        there are no placebos: each pair costs a crosscoder per seed) whose checkpoints exist."""
        listed = cfg.crosscoder.treatments
        references = ("placebo",) if registry.names(cfg, "placebo") else ("null",)
        wanted = list(listed) if listed is not None else registry.names(cfg, "study", "control", "user", *references)
        have = registry.available(cfg, wanted)
        missing = [t for t in wanted if t not in have]
        if missing and listed is not None:
            raise FileNotFoundError(f"crosscoder.treatments={listed}: no checkpoint for {missing} (looked in "
                                    f"{[cfg.model_ref(t) for t in missing]}); run the variants chapter first")
        return [t for t in wanted if t in have]

    def prepare(self, cfg, treatments: list[str]) -> Shared:
        """The activations of base and SFT, the site, the base -> SFT yardstick and the held-out problems of the
        causal test (eval.jsonl rows after those the crosscoders train on)."""
        c = cfg.crosscoder
        started = time.perf_counter()
        cache = TokenCache.load(cfg.path("tokens"))
        for stage in ("base", REFERENCE):  # skipped when current
            run_extract(cfg, stage, cache)
        store = ActivationStore(cfg.path("activations"))
        layer = middle_layer(cfg)
        problems = read_jsonl(cfg.path("data", "eval.jsonl"))[cfg.extract.n_problems:][: c.causal_problems]
        if not problems:
            log.warning("no causal test: eval.jsonl has no rows after the first extract.n_problems=%d, which the "
                        "crosscoders trained on", cfg.extract.n_problems)
        elif len(problems) < c.causal_problems:
            log.warning("only %d held-out problems after the %d the crosscoders trained on "
                        "(crosscoder.causal_problems=%d)", len(problems), cfg.extract.n_problems, c.causal_problems)
        shared = Shared(cache, store, layer, families.site_name(layer, c.site), store.meta(REFERENCE)["d_model"],
                        problems)
        a, b, _ = read_pair(store, "base", REFERENCE, shared.site, c.position)
        key = f"base->{REFERENCE}"
        shared.pairs[key] = pair_record("base", REFERENCE, YARDSTICK, len(a), fit_seeds(cfg, a, b, shared.d_model, key))
        shared.train_seconds += time.perf_counter() - started
        return shared

    def measure(self, cfg, treatment: str, shared: Shared) -> base.Measures:
        c = cfg.crosscoder
        started = time.perf_counter()
        run_extract(cfg, treatment, shared.cache)  # the variants may not have been extracted yet
        a, b, index = read_pair(shared.store, REFERENCE, treatment, shared.site, c.position)
        key = f"{REFERENCE}->{treatment}"
        fits = fit_seeds(cfg, a, b, shared.d_model, key)
        pair = shared.pairs[key] = pair_record(REFERENCE, treatment, registry.get(cfg, treatment).kind, len(a), fits)
        shared.train_seconds += time.perf_counter() - started
        started = time.perf_counter()
        if treatment in c.causal_treatments and shared.problems:
            shared.causal[treatment] = causal_test(cfg, treatment, fits, shared.problems, shared.layer)
        shared.causal_seconds += time.perf_counter() - started
        if treatment == STUDY:
            shared.readings = read_latents(cfg, fits[0], treatment, a, b, index, shared.cache)
        return measures(pair, shared.causal.get(treatment))

    def report(self, cfg, shared: Shared, variants: dict) -> dict:
        c = cfg.crosscoder
        result = {"layer": shared.layer, "site": shared.site, "position": c.position,
                  "settings": c.model_dump(mode="json"), "pairs": shared.pairs, "causal": shared.causal,
                  "train_seconds": shared.train_seconds, "causal_seconds": shared.causal_seconds}
        if shared.readings is not None:
            result["readings"] = shared.readings
        return {**result, "summary": summary(result)}

