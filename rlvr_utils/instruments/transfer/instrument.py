"""Dictionary transfer: how much of a treatment's activations SFT's own sparse dictionary cannot explain.

A sparse autoencoder (BatchTopK, the crosscoder's trainer with one model) is fitted to SFT's activations at the
crosscoder's site, on half of the problems; each model's activations on the *other* half are then reconstructed
by that one dictionary. A treatment that moves along features SFT already has stays explained (its fraction of
variance unexplained, FVU, stays SFT's own); one that writes a direction SFT never uses, or takes away a feature
SFT's latents expect, leaves a residue the dictionary has no latent for. This is SAE transfer as a diffing tool
(Kissane et al. 2024, "SAEs (usually) transfer between base and chat models"): where the joint crosscoder
assigns a lost feature to a shared latent with a changed decoder (and never counts it), the fixed dictionary
misreads it.

metrics/transfer.json holds, per treatment T, `dictionary_excess_fvu` = FVU(T) - FVU(SFT) on the held-out
problems, through the same dictionaries (the mean over `crosscoder.seeds` dictionaries, paired bootstrap over
problems: one resample draws the same problems for both models), and `dictionary_fvu` = FVU(T) alone; beside
them SFT's own FVU on the fitted and the held-out half (an in-sample FVU would flatter SFT) and base's excess (a
yardstick: a model that lacks what SFT learnt).

Settings are the crosscoder's (site, layer, position, dictionary size, k, steps, batch, learning rate, seeds), so
that the two feature instruments read one dictionary design at one site.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from rlvr_utils.activations.extraction import run_extract
from rlvr_utils.activations.store import ActivationStore
from rlvr_utils.activations.tokens import TokenCache
from rlvr_utils.core import stats
from rlvr_utils.core.device import run_device
from rlvr_utils.core.estimate import Estimate
from rlvr_utils.instruments import base
from rlvr_utils.instruments.crosscoder import model as dictionary
from rlvr_utils.instruments.crosscoder.instrument import middle_layer, read_pair
from rlvr_utils.models import families
from rlvr_utils.treatments import registry
from rlvr_utils.treatments.registry import REFERENCE

PARAMS = ("crosscoder", "extract", "model", "evaluation")  # params sections read here (rlvr_utils.core.deps)

YARDSTICK = "base"  # read through SFT's dictionary as context: a model without SFT's fine-tuning


# --- pure functions of arrays (tests/test_transfer.py) ------------------------------------------------------
def split(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fit, held out) token masks: tokens of even-numbered problems fit the dictionary, odd ones are read, so
    that a problem's tokens are never on both sides."""
    rows = np.asarray(rows)
    return rows % 2 == 0, rows % 2 == 1


def fit(x: np.ndarray, n_latents: int, k: int, steps: int, batch_size: int, lr: float, seed: int,
        device: str = "cpu") -> tuple[dictionary.Crosscoder, float]:
    """A one-model BatchTopK dictionary of already normalised activations [N, d], and the fraction of their variance
    it leaves unexplained (in sample, as the trainer measured it)."""
    sae, info = dictionary.train(torch.from_numpy(np.ascontiguousarray(x[:, None, :])).to(device), n_latents, k,
                                 steps, batch_size, lr, seed, progress=False, desc="dictionary")
    return sae.cpu(), float(info["fvu"][0])


def normalised(x: np.ndarray) -> np.ndarray:
    """x scaled by one scalar so that E||x||^2 = d_model (the crosscoder's normalisation, per model)."""
    x = np.array(x, dtype=np.float32)  # a copy: the store hands out read-only memory maps
    return x * float(dictionary.normalisers(torch.from_numpy(x[:, None, :]))[0])


@torch.no_grad()
def errors(saes: list[dictionary.Crosscoder], x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per problem (sorted row ids): the squared reconstruction error summed over its tokens, averaged over the
    dictionaries, and the tokens' squared distance from the mean over all tokens (the FVU's denominator)."""
    x = np.asarray(x, dtype=np.float32)
    t = torch.from_numpy(np.ascontiguousarray(x[:, None, :]))
    err = np.mean([(sae(t) - t).pow(2).sum((1, 2)).double().numpy() for sae in saes], axis=0)
    spread = ((x - x.mean(0)) ** 2).sum(1).astype(np.float64)
    ids, inverse = np.unique(np.asarray(rows), return_inverse=True)
    return np.bincount(inverse, err, len(ids)), np.bincount(inverse, spread, len(ids))


def excess_fvu(reference: tuple[np.ndarray, np.ndarray], target: tuple[np.ndarray, np.ndarray], n_bootstrap: int,
               confidence: float, seed: int) -> tuple[Estimate, Estimate]:
    """(FVU(target) - FVU(reference), FVU(target)) from per-problem (error, spread) sums of the same problems,
    each with a percentile interval over problems resampled together for both models."""
    (e_r, s_r), (e_t, s_t) = reference, target
    if not len(e_r) == len(s_r) == len(e_t) == len(s_t) or len(e_r) < 2:
        raise ValueError(f"per-problem sums must cover the same >= 2 problems, got {len(e_r)} and {len(e_t)}")
    idx = stats.bootstrap_indices(len(e_r), n_bootstrap, seed)
    f_r, f_t = e_r[idx].sum(1) / s_r[idx].sum(1), e_t[idx].sum(1) / s_t[idx].sum(1)
    point_r, point_t = e_r.sum() / s_r.sum(), e_t.sum() / s_t.sum()
    n = len(e_r)
    return (Estimate(point_t - point_r, stats.interval(f_t - f_r, confidence), "bootstrap", n),
            Estimate(point_t, stats.interval(f_t, confidence), "bootstrap", n))


# --- the instrument -----------------------------------------------------------------------------------------
@dataclass
class Shared:
    cache: TokenCache
    store: ActivationStore
    site: str
    position: str
    saes: list
    held_out: np.ndarray  # token mask of the problems read (not fitted)
    reference: tuple[np.ndarray, np.ndarray]  # SFT's per-problem (error, spread) on them
    report: dict = field(default_factory=dict)


class DictionaryTransfer(base.Instrument):
    name = "transfer"
    reads = ("tokens",)
    stages = ("base",)  # the yardstick

    def treatments(self, cfg) -> list[str]:
        """The crosscoder's treatments when `crosscoder.treatments` names them, else every treatment with a
        checkpoint (a dictionary read is cheap: the placebos, nulls and controls are all measured)."""
        listed = cfg.crosscoder.treatments
        return registry.available(cfg, list(listed)) if listed is not None else registry.available(cfg)

    def _read(self, cfg, shared: Shared, name: str) -> tuple[np.ndarray, np.ndarray]:
        """`name`'s normalised activations and each token's problem, checked to be at SFT's tokens."""
        run_extract(cfg, name, shared.cache)  # skipped when current
        _, x, index = read_pair(shared.store, REFERENCE, name, shared.site, shared.position)
        return normalised(x), index[:, 0]

    def _sums(self, shared: Shared, x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return errors(shared.saes, x[shared.held_out], rows[shared.held_out])

    def prepare(self, cfg, treatments: list[str]) -> Shared:
        c, started = cfg.crosscoder, time.perf_counter()
        store, layer = ActivationStore(cfg.path("activations")), middle_layer(cfg)
        site = families.site_name(layer, c.site)
        shared = Shared(TokenCache.load(cfg.path("tokens")), store, site, c.position, [], np.zeros(0, bool),
                        (np.zeros(0), np.zeros(0)))
        x, rows = self._read(cfg, shared, REFERENCE)
        fitted, shared.held_out = split(rows)
        sides = [len(np.unique(rows[mask])) for mask in (fitted, shared.held_out)]
        if min(sides) < 2:
            raise ValueError(f"dictionary transfer: {sides[0]} problems to fit and {sides[1]} to read at {site} "
                             f"({c.position}); it needs 2 of each: raise extract.n_problems (got "
                             f"{cfg.extract.n_problems})")
        d = x.shape[1]
        fits = [fit(x[fitted], c.expansion * d, c.k, c.steps, c.batch_size, c.learning_rate, cfg.seed + s,
                    run_device(cfg)) for s in range(c.seeds)]
        shared.saes, in_sample = [sae for sae, _ in fits], [fvu for _, fvu in fits]
        shared.reference = self._sums(shared, x, rows)
        held = shared.reference[0].sum() / shared.reference[1].sum()
        ev = cfg.evaluation
        yardstick = excess_fvu(shared.reference, self._sums(shared, *self._read(cfg, shared, YARDSTICK)),
                               ev.n_bootstrap, ev.confidence, cfg.seed)[0]
        shared.report = {
            "site": site, "position": c.position, "layer": layer, "n_latents": c.expansion * d,
            "k": c.k, "seeds": c.seeds, "n_tokens_fitted": int(fitted.sum()),
            "n_tokens_read": int(shared.held_out.sum()), "n_problems_read": int(len(shared.reference[0])),
            "summary": {
                "transfer_sft_fvu": {**Estimate.exact(held).to_json(), "description": "fraction of SFT's variance "
                                     "its own dictionary leaves unexplained on the held-out problems"},
                "transfer_sft_fvu_fitted": {**Estimate(float(np.mean(in_sample)), (min(in_sample), max(in_sample)),
                                                       "seeds", len(in_sample)).to_json(),
                                            "description": "the same on the problems the dictionary was fitted to "
                                                           "(range over dictionary seeds)"},
                "transfer_base_excess_fvu": {**yardstick.to_json(), "description": "yardstick: base's FVU through "
                                             "SFT's dictionary minus SFT's (a model without SFT's fine-tuning)"}},
            "fit_seconds": time.perf_counter() - started}
        return shared

    def measure(self, cfg, treatment: str, shared: Shared) -> base.Measures:
        ev = cfg.evaluation
        excess, fvu = excess_fvu(shared.reference, self._sums(shared, *self._read(cfg, shared, treatment)),
                                 ev.n_bootstrap, ev.confidence, cfg.seed)
        return {"dictionary_excess_fvu": excess, "dictionary_fvu": fvu}

    def report(self, cfg, shared: Shared, variants: dict) -> dict:
        study = variants.get(registry.STUDY, {}).get("dictionary_excess_fvu")
        summary = dict(shared.report["summary"])
        if study is not None:
            summary["transfer_rlvr_excess_fvu"] = {**study.to_json(), "description": "RLVR's FVU through SFT's "
                                                   "dictionary minus SFT's (held-out problems, paired bootstrap)"}
        return {**shared.report, "summary": summary}
