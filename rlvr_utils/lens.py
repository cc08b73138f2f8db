"""The logit lens: each layer's residual stream read through a model's final norm and unembedding.

For every layer l the residual stream after block l (`blocks.{l}.hook_resid_post`, before any final
norm) is decoded as if it were the last layer. Per layer and problem we measure, against the model's
own output distribution:
  - KL(final || lens), averaged over the positions that predict completion tokens;
  - top-1 agreement with the final prediction at those positions;
  - at the answer position (the one predicting the first character of the final answer, see
    `probes.answer_positions`): the probability and rank (0 = top-1) of the correct answer token, and
    whether the lens' top-1 there already is the model's final top-1.
The last layer's lens is the model's own logits, so its KL is 0 and its agreement 1.
The cross-model lens decodes model A's residual stream with model B's final norm and unembedding and
compares with A's own output: if RLVR only re-routed, SFT's read-out still understands RLVR's latent
code (small KL); if RLVR moved the code, it does not.
"""
from __future__ import annotations

import logging
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from torch import nn
from tqdm.auto import tqdm

from . import stats
from .activations import capture, iter_batches
from .architecture import blocks, final_norm, site_name, unembedding
from .models import load_stage
from .plots import STAGE_COLORS
from .probes import answer_positions

STAGES = ("base", "sft", "rlvr")

log = logging.getLogger(__name__)

METRICS = ("kl", "top1_agreement", "answer_prob", "answer_rank", "answer_agreement")


def decoder(model: nn.Module) -> nn.Module:
    """The model's read-out, final norm then unembedding, as one module (shares the model's weights)."""
    return nn.Sequential(final_norm(model), unembedding(model))


def answer_token(tokenizer, final: str) -> int:
    """The token that starts the correct answer when written on its own ('27' -> the token of '2' for
    a digit-level tokenizer)."""
    ids = tokenizer(str(final).strip(), add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"final={final!r} tokenises to nothing")
    return int(ids[0])


@torch.no_grad()
def residuals(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(residual stream after every block [L, B, T, d], the model's logits [B, T, V])."""
    n_layers = len(blocks(model))
    with capture(model, ["hook_resid_post"]) as acts:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return torch.stack([acts[site_name(l, "hook_resid_post")] for l in range(n_layers)]), logits


@torch.no_grad()
def layer_metrics(resid: torch.Tensor, final_logits: torch.Tensor, read_out: nn.Module, predict_mask: torch.Tensor,
                  answer_pos: torch.Tensor, answer_tok: torch.Tensor) -> dict[str, torch.Tensor]:
    """Lens metrics {name: [L, B]} of residuals [L, B, T, d] decoded by `read_out`, against `final_logits`.

    `predict_mask` [B, T] marks the positions averaged over for KL and agreement; `answer_pos` [B] is the
    answer position (-1: none, answer metrics NaN) and `answer_tok` [B] the correct answer token.
    """
    device = next(read_out.parameters()).device
    final_logp = torch.log_softmax(final_logits.float().to(device), dim=-1)
    final_top = final_logp.argmax(-1)
    mask = predict_mask.to(device).float()
    count = mask.sum(1)
    has_answer = answer_pos >= 0
    b_idx = torch.arange(len(answer_pos), device=device)[has_answer.to(device)]
    p_idx, tok = answer_pos[has_answer].to(device), answer_tok[has_answer].to(device)
    out = {k: torch.full((resid.shape[0], resid.shape[1]), float("nan")) for k in METRICS}
    for layer in range(resid.shape[0]):  # one layer's [B, T, V] logits at a time bounds memory
        logp = torch.log_softmax(read_out(resid[layer].to(device)).float(), dim=-1)
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


def predict_mask(cache, rows: list[int], width: int) -> torch.Tensor:
    """[B, T] True at positions whose next token is a completion token (the 'completion' selection)."""
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        mask[i, cache.prompt_lengths[r] - 1: len(cache.sequences[r]) - 1] = True
    return mask


def logit_lens(model: nn.Module, read_outs: dict[str, nn.Module], cache, answers: dict[int, tuple[int, int]],
               batch_size: int = 16) -> dict[str, dict[str, np.ndarray]]:
    """Lens metrics of `model`'s residual stream decoded by each read-out in `read_outs` (include the
    model's own `decoder(model)` for the plain logit lens; others give the cross-model lens).

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


def summary(lens_table: pd.DataFrame, results: dict, models: list[str], agreement: float,
            cross_pairs=(("rlvr", "sft"), ("sft", "rlvr"), ("sft", "base"), ("rlvr", "base")),
            n_bootstrap: int = 200, confidence: float = 0.95, seed: int = 0) -> dict:
    """Headline lens numbers: each model's answer layer, and the cross-model KL at the last layer."""
    out = {}
    for m in models:
        layer = answer_layer(lens_table, m, agreement)
        out[f"lens_answer_layer_{m}"] = {
            "value": float("nan") if layer is None else float(layer), "ci": None,
            "description": f"{m}: first layer whose logit lens at the answer position matches the model's final "
                           f"top-1 prediction on at least {agreement:.0%} of problems"}
    for a, b in cross_pairs:
        if a in results and b in results[a]:
            kl = results[a][b]["kl"][-1]
            est = stats.bootstrap(kl[~np.isnan(kl)], np.mean, n_bootstrap, confidence, seed)
            out[f"lens_cross_kl_{a}_by_{b}"] = {
                **est, "description": f"KL from {a}'s output to {b}'s final norm + unembedding applied to {a}'s "
                                      f"last residual stream (nats per completion token); 0 = {b} reads {a}'s "
                                      "code exactly"}
    return out


# --- the notebook's steps -----------------------------------------------------------------------
def answers_for(cache, problems: list[dict], tokenizer) -> dict[int, tuple[int, int]]:
    """{cache row: (answer position, token that starts the gold final answer)} for rows with an answer."""
    final = {int(p["id"]): p["final"] for p in problems}
    return {row: (pos, answer_token(tokenizer, final[cache.problem_ids[row]]))
            for row, pos in answer_positions(cache, tokenizer).items()}


def analyse(cfg, cache, problems: list[dict], tokenizer, stages=STAGES) -> tuple[pd.DataFrame, dict]:
    """Plain and cross-model logit lens of every stage on the token cache; returns (table, summary)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = {s: load_stage(cfg, s, device)[0] for s in stages}
    read_outs = {s: decoder(m) for s, m in loaded.items()}
    answers = answers_for(cache, problems, tokenizer)
    results = {s: logit_lens(m, read_outs, cache, answers, cfg.probes.lens_batch_size) for s, m in loaded.items()}
    ev = cfg.evaluation
    lens_table = table(results, cfg.probes.n_bootstrap, ev.confidence, cfg.seed)
    return lens_table, summary(lens_table, results, list(stages), cfg.probes.lens_agreement,
                               n_bootstrap=cfg.probes.n_bootstrap, confidence=ev.confidence, seed=cfg.seed)


# --- figures --------------------------------------------------------------------------------------
_LABELS = {"kl": "KL(final ‖ lens) [nats]", "top1_agreement": "top-1 agreement with final",
           "answer_prob": "p(correct answer token)", "answer_rank": "rank of correct answer token",
           "answer_agreement": "answer top-1 = final top-1"}


def figure(lens_table: pd.DataFrame, metrics=("kl", "top1_agreement", "answer_prob", "answer_rank")) -> plt.Figure:
    """The plain logit lens (each model read by its own final norm + unembedding), one panel per metric."""
    own = lens_table[lens_table.model == lens_table.read_out]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.8 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for model, rows in own[own.metric == metric].groupby("model", sort=False):
            rows = rows.sort_values("layer")
            sns.lineplot(data=rows, x="layer", y="value", ax=ax, marker="o", color=STAGE_COLORS.get(model), label=model)
            ax.fill_between(rows.layer, rows.ci_low, rows.ci_high, color=STAGE_COLORS.get(model), alpha=0.2)
        ax.set(title=_LABELS[metric], xlabel="layer (residual stream after block)", ylabel=metric.replace("_", " "))
        ax.set_xticks(sorted(own.layer.unique()))
        if metric == "answer_rank":
            ax.set_yscale("symlog")
        if ax is not axes[0][0] and ax.get_legend():
            ax.get_legend().remove()
    fig.suptitle("Logit lens on the shared token cache (95% bootstrap interval over problems)")
    fig.tight_layout()
    return fig


def cross_figure(lens_table: pd.DataFrame, metric: str = "kl") -> plt.Figure:
    """Cross-model lens: each model's residual stream (panel) read by every model's read-out (colour)."""
    models = list(dict.fromkeys(lens_table.model))
    fig, axes = plt.subplots(1, len(models), figsize=(3.8 * len(models), 3.4), squeeze=False, sharey=True)
    for ax, model in zip(axes[0], models):
        rows = lens_table[(lens_table.model == model) & (lens_table.metric == metric)]
        for read_out, line in rows.groupby("read_out", sort=False):
            line = line.sort_values("layer")
            style = "-" if read_out == model else "--"
            ax.plot(line.layer, line.value, style, marker="o", color=STAGE_COLORS.get(read_out),
                    label=f"read by {read_out}")
            ax.fill_between(line.layer, line.ci_low, line.ci_high, color=STAGE_COLORS.get(read_out), alpha=0.15)
        ax.set(title=f"{model}'s residual stream", xlabel="layer", ylabel=_LABELS[metric])
        ax.set_xticks(sorted(rows.layer.unique()))
        ax.legend(fontsize="small")
    fig.suptitle(f"Cross-model lens: {_LABELS[metric]} to the residual model's own output")
    fig.tight_layout()
    return fig
