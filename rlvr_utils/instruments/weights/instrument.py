"""The weights instrument: weight-difference norms and SVD spectra, from the checkpoint files alone.

For each pair of checkpoints (SFT - base, RLVR - SFT, RLVR - base, and every treatment - SFT) and each tensor,
the update delta = after - before is measured by its size (Frobenius norm, norm relative to the earlier weights,
squared norm per parameter so that attention and MLP compare fairly), its sparsity (fraction of entries that
moved by at most a tolerance, as in Mukherjee et al. 2025), its spectrum (singular values, stable rank,
effective rank, energy in the top k) and by what it did to the weight matrix's own top-k singular subspaces and
values (principal angles and spectrum change, as in Zhu et al. 2025): `maths.update_stats`.

All pairs are compared in one pass over the tensors (`prepare`), so that each checkpoint's SVD of a matrix is
computed once, however many treatments are measured against SFT; `measure` reads one treatment's rows, and
`report` adds what needs every treatment at once (the measures relative to the nulls') and what the chapter draws.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlvr_utils.core.device import run_device
from rlvr_utils.instruments.base import Instrument, Measures
from rlvr_utils.instruments.weights import checkpoints, measures, updates
from rlvr_utils.instruments.weights.measures import PAIRS, pair_name
from rlvr_utils.treatments import registry
from rlvr_utils.treatments.registry import REFERENCE, STUDY

PARAMS = ("weights", "evaluation", "grpo")


@dataclass
class Compared:
    rows: list[dict]  # one per (pair, tensor): updates.compare
    folders: dict[str, Path]  # label -> local checkpoint folder


def _bootstrap(cfg) -> dict:
    return dict(n_bootstrap=cfg.weights.n_bootstrap, confidence=cfg.evaluation.confidence, seed=cfg.seed)


class Weights(Instrument):
    name = "weights"
    # besides SFT's and the treatments' checkpoints: base (when the run builds it) and GRPO's intermediate ones
    reads = ("models/rlvr_checkpoints",)
    stages = ("base",)

    def prepare(self, cfg, treatments: list[str]) -> Compared:
        w = cfg.weights
        labels = dict.fromkeys(("base", REFERENCE, *treatments))
        folders = {label: checkpoints.local_folder(cfg.model_ref(label)) for label in labels}
        pairs = [*PAIRS, *((t, REFERENCE) for t in treatments if (t, REFERENCE) not in PAIRS)]
        rows = updates.compare(folders, pairs, w.sparsity_tolerance, w.top_k, True, w.spectrum_values,
                               w.device or run_device(cfg))
        return Compared(rows, folders)

    def measure(self, cfg, treatment: str, shared: Compared) -> Measures:
        return measures.measures(shared.rows, pair_name(treatment, REFERENCE), **_bootstrap(cfg))

    def report(self, cfg, shared: Compared, variants: dict[str, Measures]) -> dict:
        """The measures relative to the nulls' (added to `variants`), the summary of SFT's and RLVR's updates,
        per-matrix rows and per-group totals of the three stage pairs, and the training dynamics of GRPO's
        intermediate checkpoints."""
        kwargs, w = _bootstrap(cfg), cfg.weights
        nulls = [n for n in registry.names(cfg, "null") if n in variants]
        for t, relative in measures.null_relative(shared.rows, list(variants), nulls, REFERENCE, **kwargs).items():
            variants[t].update(relative)
        stages = [pair_name(*p) for p in PAIRS]
        rows = [r for r in shared.rows if r["pair"] in stages]
        steps = checkpoints.find_checkpoints(cfg.path("models", "rlvr_checkpoints"))
        if steps:
            steps.setdefault(cfg.grpo.steps, shared.folders[STUDY])
            steps.setdefault(0, shared.folders[REFERENCE])
        return {
            "summary": measures.summarize(shared.rows, **kwargs),
            "pairs": stages,
            "tolerance": w.sparsity_tolerance,
            "top_k": w.top_k,
            "parameters": checkpoints.parameter_count(shared.folders["base"]),
            "groups": updates.group_table(rows).to_dict("records"),
            "matrices": rows,
            "dynamics": updates.dynamics(shared.folders[REFERENCE], steps, w.sparsity_tolerance,
                                          w.device or run_device(cfg)),
        }
