"""The logit lens: each layer's residual stream read through a model's final norm and unembedding.

For every layer l the residual stream after block l (`blocks.{l}.hook_resid_post`, before any final
norm) is decoded as if it were the last layer. Per layer and problem we measure, against the model's
own output distribution:
  - KL(final || lens), averaged over the positions that predict completion tokens;
  - top-1 agreement with the final prediction at those positions;
  - at the answer position (the one predicting the first character of the final answer, see
    `targets.answer_positions`): the probability and rank (0 = top-1) of the answer token that really
    follows there in the sequence (teacher forcing: right for any tokenizer, e.g. ' 10' where digits merge),
    and whether the lens' top-1 there already is the model's final top-1.
The last layer's lens is the model's own logits, so its KL is 0 and its agreement 1.

The cross-model lens is a stitch: model B's remaining blocks (l+1 .. L-1), final norm and unembedding run
on model A's residual stream after block l, compared with B's own output on the same tokens. If B's later
blocks still read A's stream as they read their own, the code at layer l did not move between the models
(KL near 0); a change in any component up to layer l shows. (Swapping only the final norm and unembedding,
the earlier version, reads exactly 0 for a change confined to MLPs whose read-out is shared.)
A tuned lens (Belrose et al. 2023) is not added: the `tuned-lens` package (0.2.0, 2023) predates
transformers 5.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from rlvr_utils.activations.tokens import iter_batches
from rlvr_utils.core import stats
from rlvr_utils.core.estimate import Estimate
from rlvr_utils.instruments.probes.targets import answer_positions
from rlvr_utils.models import hooks
from rlvr_utils.models.families import blocks, final_norm, site_name, unembedding

log = logging.getLogger(__name__)

METRICS = ("kl", "top1_agreement", "answer_prob", "answer_rank", "answer_agreement")


def decoder(model: nn.Module) -> nn.Module:
    """The model's read-out, final norm then unembedding, as one module (shares the model's weights)."""
    return nn.Sequential(final_norm(model), unembedding(model))


@torch.no_grad()
def residuals(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(residual stream after every block [L, B, T, d], the model's logits [B, T, V])."""
    n_layers = len(blocks(model))
    with hooks.capture(model, ["hook_resid_post"]) as acts:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return torch.stack([acts[site_name(l, "hook_resid_post")] for l in range(n_layers)]), logits


@torch.no_grad()
def layer_metrics(resid: torch.Tensor, final_logits: torch.Tensor, read_out: nn.Module, predict_mask: torch.Tensor,
                  answer_pos: torch.Tensor, answer_tok: torch.Tensor) -> dict[str, torch.Tensor]:
    """Lens metrics {name: [L, B]} of residuals [L, B, T, d] decoded by `read_out`, against `final_logits`.

    `predict_mask` [B, T] marks the positions averaged over for KL and agreement; `answer_pos` [B] is the
    answer position (-1: none, answer metrics NaN) and `answer_tok` [B] the answer token that follows it.
    """
    device = next(read_out.parameters()).device
    return _metrics(lambda layer: read_out(resid[layer].to(device)), resid.shape[0], final_logits, predict_mask,
                    answer_pos, answer_tok, device)


@torch.no_grad()
def _metrics(logits_of, n_layers: int, final_logits, predict_mask, answer_pos, answer_tok, device):
    """Lens metrics {name: [L, B]} of `logits_of(layer)` [B, T, V] against `final_logits` [B, T, V]."""
    final_logp = torch.log_softmax(final_logits.float().to(device), dim=-1)
    final_top = final_logp.argmax(-1)
    mask = predict_mask.to(device).float()
    count = mask.sum(1)
    has_answer = answer_pos >= 0
    b_idx = torch.arange(len(answer_pos), device=device)[has_answer.to(device)]
    p_idx, tok = answer_pos[has_answer].to(device), answer_tok[has_answer].to(device)
    out = {k: torch.full((n_layers, len(answer_pos)), float("nan")) for k in METRICS}
    for layer in range(n_layers):  # one layer's [B, T, V] logits at a time bounds memory
        logp = torch.log_softmax(logits_of(layer).float(), dim=-1)
        kl = (final_logp.exp() * (final_logp - logp)).sum(-1)
        agree = (logp.argmax(-1) == final_top).float()
        out["kl"][layer] = ((kl * mask).sum(1) / count).cpu()  # NaN for a row with nothing to average
        out["top1_agreement"][layer] = ((agree * mask).sum(1) / count).cpu()
        at_answer = logp[b_idx, p_idx]  # [n, V]
        correct = at_answer.gather(1, tok[:, None])
        out["answer_prob"][layer, has_answer] = correct[:, 0].exp().cpu()
        out["answer_rank"][layer, has_answer] = (at_answer > correct).sum(1).float().cpu()
        out["answer_agreement"][layer, has_answer] = agree[b_idx, p_idx].cpu()
    return out


@torch.no_grad()
def stitched_logits(resid: torch.Tensor, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    layer: int) -> torch.Tensor:
    """Logits [B, T, V] of `model` whose residual stream after block `layer` is replaced by `resid` [B, T, d]
    (another model's): `model`'s later blocks, final norm and unembedding run on it."""
    replace = hooks.hook(model, layer, "hook_resid_post", lambda own: resid.to(own.dtype))
    with hooks.active([replace]):
        return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def stitched_lens(model_a: nn.Module, model_b: nn.Module, cache, answers: dict[int, tuple[int, int]],
                  batch_size: int = 16) -> dict[str, np.ndarray]:
    """Cross-model lens by stitching: {metric: [n_layers, n_rows]} of B's blocks after layer l run on A's
    residual stream after block l, against B's own output (KL(B ‖ stitched), top-1 agreement with B, and
    the answer token's probability and rank)."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if len(blocks(model_a)) != len(blocks(model_b)):
        raise ValueError("stitching needs two models with the same number of layers")
    device = next(model_b.parameters()).device
    parts: dict[str, list] = {k: [] for k in METRICS}
    for rows, input_ids, mask in tqdm(iter_batches(cache, batch_size), total=-(-len(cache) // batch_size),
                                      desc="stitched lens", leave=False):
        input_ids, mask = input_ids.to(device), mask.to(device)
        resid_a, _ = residuals(model_a, input_ids, mask)
        with torch.no_grad():
            own_b = model_b(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
        pos = torch.tensor([answers.get(r, (-1, 0))[0] for r in rows])
        tok = torch.tensor([answers.get(r, (-1, 0))[1] for r in rows])
        metrics = _metrics(lambda layer: stitched_logits(resid_a[layer], model_b, input_ids, mask, layer),
                           resid_a.shape[0], own_b, predict_mask(cache, rows, input_ids.shape[1]), pos, tok, device)
        for k, v in metrics.items():
            parts[k].append(v.numpy())
    return {k: np.concatenate(v, axis=1) for k, v in parts.items()}


def predict_mask(cache, rows: list[int], width: int) -> torch.Tensor:
    """[B, T] True at positions whose next token is a completion token (the 'completion' selection)."""
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        mask[i, cache.prompt_lengths[r] - 1: len(cache.sequences[r]) - 1] = True
    return mask


def logit_lens(model: nn.Module, read_outs: dict[str, nn.Module], cache, answers: dict[int, tuple[int, int]],
               batch_size: int = 16) -> dict[str, dict[str, np.ndarray]]:
    """Lens metrics of `model`'s residual stream decoded by each read-out in `read_outs` (the model's own
    `decoder(model)` for the plain logit lens; another model's read-out swaps only the final norm and
    unembedding: `stitched_lens` is the cross-model lens).

    `answers` maps a cache row to (answer position, correct answer token); rows without one get NaN
    answer metrics. Returns {read-out name: {metric: array [n_layers, n_rows]}} in cache row order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    device = next(model.parameters()).device
    parts: dict[str, dict[str, list]] = {name: {k: [] for k in METRICS} for name in read_outs}
    started = time.perf_counter()
    for rows, input_ids, mask in tqdm(iter_batches(cache, batch_size), total=-(-len(cache) // batch_size),
                                      desc="logit lens", leave=False):
        resid, logits = residuals(model, input_ids.to(device), mask.to(device))
        pos = torch.tensor([answers.get(r, (-1, 0))[0] for r in rows])
        tok = torch.tensor([answers.get(r, (-1, 0))[1] for r in rows])
        predicting = predict_mask(cache, rows, input_ids.shape[1])
        for name, read_out in read_outs.items():
            for k, v in layer_metrics(resid, logits, read_out, predicting, pos, tok).items():
                parts[name][k].append(v.numpy())
    log.info("logit lens over %d sequences x %d read-outs in %.1f s", len(cache), len(read_outs),
             time.perf_counter() - started)
    return {name: {k: np.concatenate(v, axis=1) for k, v in metrics.items()} for name, metrics in parts.items()}


def table(results: dict[str, dict[str, dict[str, np.ndarray]]], n_bootstrap: int = 200, confidence: float = 0.95,
          seed: int = 0) -> pd.DataFrame:
    """Tidy per-layer means with bootstrap intervals over problems.

    `results` is {residual model: logit_lens(...) output}; one row per (model, read_out, layer, metric).
    Problems without an answer position are left out of the answer metrics.
    """
    records = []
    for model, by_read_out in results.items():
        for read_out, metrics in by_read_out.items():
            for metric, values in metrics.items():
                for layer, per_problem in enumerate(values):
                    kept = per_problem[~np.isnan(per_problem)]
                    if len(kept) == 0:
                        est = {"value": float("nan"), "ci": [float("nan"), float("nan")]}
                    else:
                        est = stats.bootstrap(kept, np.mean, n_bootstrap, confidence, seed)
                    records.append({"model": model, "read_out": read_out, "layer": layer, "metric": metric,
                                    "value": est["value"], "ci_low": est["ci"][0], "ci_high": est["ci"][1],
                                    "n_problems": len(kept)})
    return pd.DataFrame.from_records(records)


def answer_layer(lens_table: pd.DataFrame, model: str, agreement: float) -> int | None:
    """First layer where the model's own lens at the answer position already gives its final top-1 on at
    least `agreement` of the problems (None when there is no answer position at all)."""
    rows = lens_table[(lens_table.model == model) & (lens_table.read_out == model)
                      & (lens_table.metric == "answer_agreement") & (lens_table.value >= agreement)]
    return None if rows.empty else int(rows.layer.min())


def mean_estimate(values: np.ndarray, n_bootstrap: int = 200, confidence: float = 0.95, seed: int = 0) -> Estimate:
    """Mean over problems with its bootstrap interval; problems without a value (NaN) are left out."""
    kept = values[~np.isnan(values)]
    if len(kept) == 0:
        return Estimate.undefined(0)
    est = stats.bootstrap(kept, np.mean, n_bootstrap, confidence, seed)
    return Estimate(est["value"], est["ci"], "bootstrap", len(kept))


def stitch_kl(stitched: dict[str, np.ndarray], n_bootstrap: int = 200, confidence: float = 0.95, seed: int = 0
              ) -> dict[str, Estimate]:
    """A stitch's KL per problem {'last': at the last layer (B's read-out on A's final stream), 'mean':
    averaged over layers}, with bootstrap intervals over problems."""
    kl = stitched["kl"]
    return {"last": mean_estimate(kl[-1], n_bootstrap, confidence, seed),
            "mean": mean_estimate(np.nanmean(kl, axis=0), n_bootstrap, confidence, seed)}


def summary(lens_table: pd.DataFrame, results: dict, models: list[str], agreement: float, cross_pairs=None,
            n_bootstrap: int = 200, confidence: float = 0.95, seed: int = 0) -> dict:
    """Headline lens numbers: each model's answer layer, and the stitched cross-model lens of `cross_pairs`
    (default: every stitch in `results`): `results[a]["stitch:b"]` (B's later blocks on A's stream), its KL at
    the last layer (B's read-out on A's final stream) and averaged over layers."""
    out = {}
    for m in models:
        layer = answer_layer(lens_table, m, agreement)
        out[f"lens_answer_layer_{m}"] = {
            "value": float("nan") if layer is None else float(layer), "ci": None,
            "description": f"{m}: first layer whose logit lens at the answer position matches the model's final "
                           f"top-1 prediction on at least {agreement:.0%} of problems"}
    if cross_pairs is None:
        cross_pairs = [(a, r.removeprefix("stitch:")) for a, read_outs in results.items() for r in read_outs
                       if r.startswith("stitch:")]
    for a, b in cross_pairs:
        stitched = results.get(a, {}).get(f"stitch:{b}")
        if stitched is None:
            continue
        kl = stitch_kl(stitched, n_bootstrap, confidence, seed)
        for key, est, what in ((f"lens_cross_kl_{a}_by_{b}", kl["last"], "at the last layer"),
                               (f"lens_stitch_kl_{a}_into_{b}", kl["mean"], "averaged over layers")):
            out[key] = {"value": est.value, "ci": list(est.ci), "n_problems": est.n,
                        "description": f"stitched lens {what}: KL from {b}'s own output to {b}'s later blocks, final "
                                       f"norm and unembedding run on {a}'s residual stream (nats per completion "
                                       f"token); 0 = {b} reads {a}'s code as its own"}
    return out


def answers_for(cache, tokenizer) -> dict[int, tuple[int, int]]:
    """{cache row: (answer position, the answer token that follows it in the sequence)} for rows with an
    answer (teacher forcing: with merged digits the token is ' 10', not '1')."""
    return {row: (pos, int(cache.sequences[row][pos + 1])) for row, pos in answer_positions(cache, tokenizer).items()
            if pos + 1 < len(cache.sequences[row])}
