"""Feature-level model diffing: a BatchTopK crosscoder between the reference (SFT) and a treatment.

One sparse dictionary is learned over both models' activations at the same tokens (Lindsey et al. 2024):
a shared encoder reads the concatenated pair, and each model has its own decoder. A latent whose decoder
has norm only in the treatment's half is a candidate *treatment-specific* feature. Two corrections follow
Minder, Dumas et al. (2025, "Robustly identifying concepts introduced during chat fine-tuning using
crosscoders"):
  - BatchTopK sparsity (Bussmann et al. 2024) instead of an L1 penalty, which invents model-specific
    latents; the top k x batch activations are kept, ranked by activation x summed decoder norms;
  - Latent Scaling: for each latent j, the scalar beta that best explains a model's activations from
    f_j d_j (d_j = the treatment's decoder vector) is fitted in closed form, once on each model's
    reconstruction error with j's own contribution put back (nu_error = beta_ref / beta_treatment) and once
    on the reconstruction by the other latents (nu_recon). nu near 0: the concept is really absent from the
    reference; near 1: the reference has it and the decoder norm misled (Complete Shrinkage, Latent
    Decoupling). A latent counts as specific when its relative decoder norm ||d_T|| / (||d_ref|| + ||d_T||)
    is above `specific_threshold` AND nu_error is below `presence_threshold`.

Activations are normalised per model by one scalar so that E||x||^2 = d_model, as both papers do.

No library on PyPI fits this stack: `dictionary-learning` (0.1.0) has no crosscoder and pins an old nnsight;
SAELens and EleutherAI's sparsify train single-model SAEs and transcoders; the crosscoder libraries
(`crosscode`, the science-of-finetuning fork of dictionary_learning) are not published on PyPI. So this is
a compact implementation (~one screen for the model and trainer), tested on planted dictionaries.

The causal test runs two models in lockstep during greedy generation (`paired_greedy`): the driver
generates, the partner reads the same tokens, and at the diffed site the driver's activation is edited
with the joint encoding of both (ablate the treatment's specific latents in the treatment; transplant them
into SFT).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from rlvr_utils.models import families as architecture
from rlvr_utils.core import artifacts, stats

log = logging.getLogger(__name__)

AUX_COEFF = 1 / 32  # Gao et al. 2024 / Bussmann et al. 2024: auxiliary loss that revives dead latents
DEAD_AFTER = 200  # steps without firing after which a latent counts as dead for the auxiliary loss


# --- the crosscoder --------------------------------------------------------------------------------------
class Crosscoder(nn.Module):
    """x [N, n_models, d] -> latents [N, n_latents] -> reconstruction [N, n_models, d]."""

    def __init__(self, d_model: int, n_latents: int, k: int, n_models: int = 2, seed: int = 0):
        super().__init__()
        if k < 1 or k > n_latents:
            raise ValueError(f"k={k} must be in 1..n_latents={n_latents}")
        g = torch.Generator().manual_seed(seed)
        # every latent starts with the same decoder vector in every model, so that a latent that nothing
        # distinguishes keeps a relative norm of exactly 0.5 (identical models give no specific latents)
        direction = torch.randn(n_latents, d_model, generator=g)
        direction = 0.1 * direction / direction.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(direction[:, None, :].repeat(1, n_models, 1).clone())
        self.W_enc = nn.Parameter(direction.T[None].repeat(n_models, 1, 1).clone() * 10 / n_models)
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.b_dec = nn.Parameter(torch.zeros(n_models, d_model))
        self.k = k
        self.register_buffer("threshold", torch.tensor(float("nan")))

    @property
    def n_latents(self) -> int:
        return self.W_dec.shape[0]

    def decoder_norms(self) -> torch.Tensor:
        """[n_latents, n_models]"""
        return self.W_dec.norm(dim=-1)

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(torch.einsum("bnd,ndm->bm", x, self.W_enc) + self.b_enc)

    def encode(self, x: torch.Tensor, batch_topk: bool = False) -> torch.Tensor:
        """Sparse latents: BatchTopK while training, the learned threshold on the same score afterwards."""
        acts = self.pre_acts(x)
        score = acts * self.decoder_norms().sum(1)
        if batch_topk:
            n_keep = min(self.k * x.shape[0], score.numel())
            # the n_keep-th largest score (kthvalue is a selection, ~2x faster than topk on a CPU)
            cut = score.flatten().kthvalue(score.numel() - n_keep + 1).values
            return acts * (score >= cut) * (score > 0)
        if torch.isnan(self.threshold):
            raise ValueError("the crosscoder has no inference threshold yet: train it with `train` first")
        return acts * (score > self.threshold)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bm,mnd->bnd", f, self.W_dec) + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def normalisers(x: torch.Tensor) -> torch.Tensor:
    """One scalar per model making E||x||^2 = d_model: [n_models]."""
    d = x.shape[-1]
    return (d / x.pow(2).sum(-1).mean(0)).sqrt()


def train(x: torch.Tensor, n_latents: int, k: int, steps: int = 1000, batch_size: int = 256, lr: float = 1e-3,
          seed: int = 0, progress: bool = True, desc: str = "crosscoder") -> tuple[Crosscoder, dict]:
    """Fit a BatchTopK crosscoder to normalised activations x [N, n_models, d]; returns (crosscoder, log)
    with the loss history, fraction of variance unexplained per model, dead latents and seconds."""
    if x.ndim != 3:
        raise ValueError(f"x must be [tokens, models, d_model], got shape {tuple(x.shape)}")
    started = time.perf_counter()
    n, n_models, d = x.shape
    cc = Crosscoder(d, n_latents, k, n_models, seed)
    with torch.no_grad():
        cc.b_dec.copy_(x.mean(0))
    opt = torch.optim.Adam(cc.parameters(), lr=lr, betas=(0.9, 0.999))
    # linear decay over the last fifth: the dictionary settles before the threshold is read
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, 5 * (steps - s) / steps))
    g = torch.Generator().manual_seed(seed)
    since_fired = torch.zeros(n_latents, dtype=torch.long)
    history = []
    for step in tqdm(range(steps), desc=desc, disable=not progress, leave=False, mininterval=1.0):
        batch = x[torch.randint(0, n, (min(batch_size, n),), generator=g)]
        f = cc.encode(batch, batch_topk=True)
        recon = cc.decode(f)
        loss = (recon - batch).pow(2).sum(-1).sum(-1).mean()
        fired = (f > 0).any(0)
        since_fired = torch.where(fired, 0, since_fired + 1)
        dead = since_fired > DEAD_AFTER
        if dead.any():  # dead latents learn to explain what the live ones miss
            residual = (batch - recon).detach()
            pre = cc.pre_acts(batch) * dead
            k_aux = min(int(dead.sum()), n_models * d // 2)
            top = pre.topk(k_aux, dim=1)
            aux_f = torch.zeros_like(pre).scatter(1, top.indices, top.values)
            aux = torch.einsum("bm,mnd->bnd", aux_f, cc.W_dec)
            loss = loss + AUX_COEFF * (aux - residual).pow(2).sum(-1).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            history.append({"step": step, "loss": loss.item()})
    with torch.no_grad():
        cc.threshold.fill_(_threshold(cc, x, batch_size))
        fvu = fraction_unexplained(cc, x)
    info = {"history": history, "fvu": fvu.tolist(), "seconds": time.perf_counter() - started,
            "dead_at_end": int((since_fired > DEAD_AFTER).sum())}
    return cc, info


@torch.no_grad()
def _threshold(cc: Crosscoder, x: torch.Tensor, batch_size: int) -> float:
    """Bussmann et al.: the mean over batches of the smallest score BatchTopK keeps; at inference a latent
    fires when its score exceeds it, so a token's activity no longer depends on its batch."""
    cuts = []
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size]
        score = cc.pre_acts(batch) * cc.decoder_norms().sum(1)
        cut = score.flatten().kthvalue(score.numel() - min(cc.k * len(batch), score.numel()) + 1).values
        if cut > 0:
            cuts.append(float(cut))
    return float(np.mean(cuts)) if cuts else 0.0


@torch.no_grad()
def fraction_unexplained(cc: Crosscoder, x: torch.Tensor) -> np.ndarray:
    """Per model: ||x - x_hat||^2 / ||x - mean||^2 over the tokens."""
    recon = cc(x)
    err = (x - recon).pow(2).sum((0, 2))
    var = (x - x.mean(0)).pow(2).sum((0, 2))
    return (err / var).numpy()


# --- per-latent diagnostics ------------------------------------------------------------------------------
def relative_norms(cc: Crosscoder, target: int = 1, reference: int = 0) -> np.ndarray:
    """||d_target|| / (||d_reference|| + ||d_target||) per latent: 1 = only in the target's decoder."""
    norms = cc.decoder_norms().detach()
    return (norms[:, target] / (norms[:, target] + norms[:, reference]).clamp_min(1e-12)).numpy()


@torch.no_grad()
def latent_scaling(cc: Crosscoder, x: torch.Tensor, target: int = 1, reference: int = 0,
                   chunk: int = 4096) -> dict[str, np.ndarray]:
    """Minder, Dumas et al. (2025) Latent Scaling, closed form, for every latent j with direction d_j = the
    target's decoder vector. For model M, beta_M = sum_n f_nj <d_j, y_n^M> / (|d_j|^2 sum_n f_nj^2) with
      y = error target:  x_M - x_hat_M + f_nj d_j^M   (what M needs that the other latents do not give)
      y = recon target:  x_hat_M - b_dec_M - f_nj d_j^M (what the other latents already give M)
    nu_error = beta_error[reference] / beta_error[target], nu_recon likewise; also the activation count."""
    m = cc.n_latents
    d = cc.W_dec[:, target]  # [m, dim]
    d_sq = d.pow(2).sum(1)
    self_dot = (cc.W_dec * d[:, None, :]).sum(-1)  # <d_j, d_j^M>: [m, n_models]
    sums = {key: torch.zeros(m, 2, dtype=torch.float64) for key in ("err", "rec")}
    f_sq = torch.zeros(m, dtype=torch.float64)
    count = torch.zeros(m, dtype=torch.long)
    for start in range(0, len(x), chunk):
        batch = x[start:start + chunk]
        f = cc.encode(batch)
        recon = cc.decode(f)
        f_sq += f.pow(2).sum(0).double()
        count += (f > 0).sum(0)
        for col, M in enumerate((reference, target)):
            err_proj = (batch[:, M] - recon[:, M]) @ d.T  # [N, m]
            rec_proj = (recon[:, M] - cc.b_dec[M]) @ d.T
            sums["err"][:, col] += (f * err_proj).sum(0).double() + f.pow(2).sum(0).double() * self_dot[:, M].double()
            sums["rec"][:, col] += (f * rec_proj).sum(0).double() - f.pow(2).sum(0).double() * self_dot[:, M].double()
    denom = (d_sq.double() * f_sq).clamp_min(1e-12)[:, None]
    out = {"count": count.numpy()}
    for key, name in (("err", "error"), ("rec", "recon")):
        beta = (sums[key] / denom).numpy()
        out[f"beta_{name}_reference"], out[f"beta_{name}_target"] = beta[:, 0], beta[:, 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            out[f"nu_{name}"] = np.where(count.numpy() > 0, beta[:, 0] / beta[:, 1], np.nan)
    return out


def specific_latents(rel_norm: np.ndarray, nu_error: np.ndarray, count: np.ndarray, specific_threshold: float,
                     presence_threshold: float) -> np.ndarray:
    """Indices of latents specific to the target: alive, relative norm above the threshold, and Latent Scaling
    says the reference's own error holds less than `presence_threshold` of it; sorted by relative norm."""
    ok = (count > 0) & (rel_norm > specific_threshold) & (np.nan_to_num(nu_error, nan=1.0) < presence_threshold)
    idx = np.flatnonzero(ok)
    return idx[np.argsort(-rel_norm[idx], kind="stable")]


@dataclass
class PairFit:
    """One crosscoder between reference (model 0) and target (model 1) and its per-latent diagnostics."""

    crosscoder: Crosscoder
    scales: torch.Tensor  # [2]: multiply raw activations by these before encoding
    rel_norm: np.ndarray
    scaling: dict[str, np.ndarray]
    specific: np.ndarray
    info: dict = field(default_factory=dict)

    @property
    def alive(self) -> np.ndarray:
        return np.flatnonzero(self.scaling["count"] > 0)


def fit_pair(reference: np.ndarray, target: np.ndarray, n_latents: int, k: int, steps: int, batch_size: int,
             lr: float, seed: int, specific_threshold: float = 0.9, presence_threshold: float = 0.3,
             progress: bool = True, desc: str = "crosscoder") -> PairFit:
    """Normalise, train, and read the per-latent diagnostics of one pair of paired activations [N, d]."""
    reference, target = np.asarray(reference, dtype=np.float32), np.asarray(target, dtype=np.float32)
    if reference.shape != target.shape or reference.ndim != 2:
        raise ValueError(f"paired activations must both be [tokens, d_model] of one shape, got "
                         f"{reference.shape} and {target.shape}")
    raw = torch.from_numpy(np.stack([reference, target], axis=1))
    scales = normalisers(raw)
    x = raw * scales[None, :, None]
    cc, info = train(x, n_latents, k, steps, batch_size, lr, seed, progress, desc)
    rel = relative_norms(cc)
    scaling = latent_scaling(cc, x)
    spec = specific_latents(rel, scaling["nu_error"], scaling["count"], specific_threshold, presence_threshold)
    return PairFit(cc, scales, rel, scaling, spec, info)


# --- editing a forward pass ------------------------------------------------------------------------------
def latent_edit(fit: PairFit, latents, driver: int, mode: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """edit(h_driver, h_partner) -> new h_driver, in raw units, from the joint encoding of both models.

    mode 'remove': subtract the latents' decoded contribution for the driver (ablation);
    mode 'transplant': replace it by the other model's decoded contribution (adds the target's feature to
    the reference, where its own decoder vector is near zero)."""
    if mode not in ("remove", "transplant"):
        raise ValueError(f"mode={mode!r} must be 'remove' or 'transplant'")
    latents = torch.as_tensor(np.asarray(latents, dtype=np.int64))
    cc, s = fit.crosscoder, fit.scales
    other = 1 - driver
    own = cc.W_dec[latents, driver].detach() / s[driver]
    theirs = cc.W_dec[latents, other].detach() / s[other]
    delta_dir = -own if mode == "remove" else theirs - own

    def edit(h_driver: torch.Tensor, h_partner: torch.Tensor) -> torch.Tensor:
        if len(latents) == 0:
            return h_driver
        shape = h_driver.shape
        pair = [None, None]
        pair[driver], pair[other] = h_driver.reshape(-1, shape[-1]), h_partner.reshape(-1, shape[-1])
        x = torch.stack([pair[0].float() * s[0], pair[1].float() * s[1]], dim=1)
        with torch.no_grad():
            f = cc.encode(x)[:, latents]
        return (pair[driver] + (f @ delta_dir).to(h_driver.dtype)).reshape(shape)
    return edit


def _block_hook(model, layer: int, site: str, fn):
    """Forward hook that passes the site's tensor to fn(t) -> replacement or None."""
    b = architecture.blocks(model)[layer]
    if site == "hook_resid_pre":
        def pre(_m, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            new = fn(hidden)
            if new is None:
                return None
            return ((new,) + tuple(args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})
        return b.block.register_forward_pre_hook(pre, with_kwargs=True)
    module = {"hook_attn_out": b.attn_out, "hook_mlp_out": b.mlp_out, "hook_resid_post": b.block}[site]

    def post(_m, _args, output):
        t = output[0] if isinstance(output, tuple) else output
        new = fn(t)
        if new is None:
            return None
        return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new
    return module.register_forward_hook(post)


@torch.no_grad()
def paired_greedy(driver, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 256,
                  partner=None, layer: int = 0, site: str = "hook_resid_post", edit=None,
                  desc: str = "greedy") -> list[str]:
    """Greedy completions of `driver`, with `partner` reading the same tokens in lockstep (KV caches for both)
    and `edit(h_driver, h_partner)` applied at the site to the last prompt position and every generated one:
    the positions the crosscoder was trained on. Without an edit it is plain greedy decoding."""
    from transformers import DynamicCache

    tokenizer.padding_side = "left"
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    state: dict = {}
    handles = []
    if edit is not None:
        if partner is None:
            raise ValueError("an edit needs a partner model to encode the pair")
        handles.append(_block_hook(partner, layer, site, lambda t: state.__setitem__("partner", t)))

        def apply(t):
            if state["prefill"]:  # only the last prompt position, as in training
                return torch.cat([t[:, :-1], edit(t[:, -1:], state["partner"][:, -1:])], dim=1)
            return edit(t, state["partner"])
        handles.append(_block_hook(driver, layer, site, apply))
    out: list[str] = []
    try:
        for start in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False):
            enc = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True)
            ids, mask = enc["input_ids"], enc["attention_mask"]
            caches = {"driver": DynamicCache(), "partner": DynamicCache()}
            # transformers 5.x renamed `past_key_values` to `cache`; take whichever this version has
            cache_kw = "cache" if "cache" in inspect.signature(driver.forward).parameters else "past_key_values"
            finished = torch.zeros(len(ids), dtype=torch.bool)
            new_tokens = []
            current = ids
            for step in range(max_new_tokens):
                position_ids = (mask.cumsum(-1) - 1).clamp_min(0)[:, -current.shape[1]:]
                state["prefill"] = step == 0
                kwargs = dict(input_ids=current, attention_mask=mask, position_ids=position_ids, use_cache=True)
                if edit is not None:
                    partner(**kwargs, **{cache_kw: caches["partner"]})
                logits = driver(**kwargs, **{cache_kw: caches["driver"]}).logits[:, -1]
                token = torch.where(finished, torch.tensor(pad), logits.argmax(-1))
                new_tokens.append(token)
                finished |= token == eos
                if finished.all():
                    break
                current = token[:, None]
                mask = torch.cat([mask, torch.ones(len(ids), 1, dtype=mask.dtype)], dim=1)
            out += tokenizer.batch_decode(torch.stack(new_tokens, 1), skip_special_tokens=True)
    finally:
        for h in handles:
            h.remove()
    return out


# --- reading latents -------------------------------------------------------------------------------------
@torch.no_grad()
def top_contexts(f_column: np.ndarray, index: np.ndarray, cache, tokenizer, n: int = 5, width: int = 10) -> list[dict]:
    """The n tokens where a latent is most active: activation, preceding context, the token, and the next
    token it helps predict (index = (cache row, position) of each activation row)."""
    order = np.argsort(-f_column, kind="stable")[:n]
    out = []
    for i in order:
        if f_column[i] <= 0:
            break
        row, pos = (int(v) for v in index[i])
        seq = cache.sequences[row]
        out.append({"activation": float(f_column[i]),
                    "context": tokenizer.decode(seq[max(0, pos - width):pos]),
                    "token": tokenizer.decode(seq[pos:pos + 1]),
                    "next": tokenizer.decode(seq[pos + 1:pos + 2])})
    return out


@torch.no_grad()
def logit_effect(model, direction: torch.Tensor, tokenizer, n: int = 5) -> dict:
    """Logit lens of a decoder direction: the unembedding of (final-norm gain x direction), the tokens it
    promotes and suppresses most."""
    norm = architecture.final_norm(model)
    gain = norm.weight if getattr(norm, "weight", None) is not None else torch.ones_like(direction)
    logits = architecture.unembedding(model)(gain * direction.to(gain.dtype))
    top, bottom = logits.topk(n), (-logits).topk(n)
    return {"promotes": [tokenizer.decode([int(t)]) for t in top.indices],
            "suppresses": [tokenizer.decode([int(t)]) for t in bottom.indices]}


# --- statistics --------------------------------------------------------------------------------------------
def seed_interval(values) -> dict:
    """Mean over crosscoder seeds with the range over seeds as its interval (3 seeds: no parametric claim)."""
    v = np.asarray(values, dtype=float)
    return {"value": float(v.mean()), "ci": [float(v.min()), float(v.max())]}


def accuracy_change(before: np.ndarray, after: np.ndarray, n_bootstrap: int, confidence: float, seed: int) -> dict:
    """mean(after - before) in points, paired bootstrap over problems; `after` may be [seeds, problems]
    (averaged over seeds per problem first, so every seed's edit counts and problems stay the unit)."""
    after = np.asarray(after, dtype=float)
    after = after.mean(0) if after.ndim == 2 else after
    out = stats.paired_difference(100 * after, 100 * np.asarray(before, dtype=float), n_bootstrap, confidence, seed)
    return out


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --- one run: notebook 07 ----------------------------------------------------------------------------------
def treatments_of(cfg) -> list[str]:
    """Treatments diffed against SFT: crosscoder.treatments, else RLVR, the controls (which calibrate the
    verdict's row) and the nulls."""
    from rlvr_utils.treatments.registry import STUDY, names

    if cfg.crosscoder.treatments is not None:
        return list(cfg.crosscoder.treatments)
    return [STUDY, *names(cfg, "control"), *names(cfg, "null")]


def pairs_of(cfg, available: list[str]) -> list[tuple[str, str]]:
    """(reference, target) pairs: base -> SFT as the yardstick, then SFT -> each available treatment."""
    from rlvr_utils.treatments.registry import REFERENCE

    return [("base", REFERENCE)] + [(REFERENCE, t) for t in treatments_of(cfg) if t in available]


def _available(cfg) -> tuple[list[str], list[str]]:
    """(treatments whose checkpoint exists, missing ones). Explicitly listed treatments must exist."""
    from pathlib import Path

    names = treatments_of(cfg)
    have = [t for t in names if Path(cfg.model_ref(t)).is_dir() or not _is_local(cfg.model_ref(t))]
    missing = [t for t in names if t not in have]
    if missing and cfg.crosscoder.treatments is not None:
        raise FileNotFoundError(f"crosscoder.treatments={cfg.crosscoder.treatments}: no checkpoint for {missing} "
                                f"(looked in {[cfg.model_ref(t) for t in missing]}); run 03_variants first")
    return have, missing


def _is_local(ref: str) -> bool:
    return ref.startswith(("/", ".", "~")) or ref.count("/") != 1


def read_pair(store, reference: str, target: str, site: str, position: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(reference activations, target activations, (row, position) index) at the same tokens."""
    a, _ = store.read(reference, site, position)
    b, _ = store.read(target, site, position)
    ia, ib = np.asarray(store.index(reference, position)), np.asarray(store.index(target, position))
    if ia.shape != ib.shape or not np.array_equal(ia, ib):
        raise ValueError(f"activations of {reference!r} and {target!r} at {position!r} are not at the same tokens: "
                         "re-run 04_extract so both use the run's one token cache")
    return np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32), ia


def middle_layer(cfg) -> int:
    from transformers import AutoConfig

    n_layers = AutoConfig.from_pretrained(cfg.model_ref("sft"), trust_remote_code=cfg.model.trust_remote_code
                                          ).num_hidden_layers
    layer = cfg.crosscoder.layer if cfg.crosscoder.layer is not None else n_layers // 2
    if not 0 <= layer < n_layers:
        raise ValueError(f"crosscoder.layer={layer} is out of range: the model has layers 0..{n_layers - 1}")
    return layer


def fingerprint(cfg, models: list[str], cache) -> str:
    from rlvr_utils.core.artifacts import checkpoint_fingerprint, file_digest as _file_digest

    eval_path = cfg.path("data", "eval.jsonl")
    return _digest([cfg.fingerprint("crosscoder", "extract", "evaluation", "seed"), cache.fingerprint,
                    {m: checkpoint_fingerprint(cfg.model_ref(m)) for m in models},
                    _file_digest(eval_path) if eval_path.exists() else None])


def _fit_record(fit: PairFit) -> dict:
    """What the figures and the verdict need from one fit (per-latent arrays as lists; NaN -> None)."""
    clean = lambda a: [None if not np.isfinite(v) else float(v) for v in np.asarray(a, dtype=float)]  # noqa: E731
    alive_rel = fit.rel_norm[fit.alive]
    return {"n_specific": int(len(fit.specific)), "specific": fit.specific.tolist(), "alive": int(len(fit.alive)),
            "max_rel_norm": float(alive_rel.max()) if len(alive_rel) else None,
            "fvu": fit.info["fvu"], "seconds": fit.info["seconds"], "threshold": float(fit.crosscoder.threshold),
            "rel_norm": clean(fit.rel_norm), "nu_error": clean(fit.scaling["nu_error"]),
            "nu_recon": clean(fit.scaling["nu_recon"]), "count": fit.scaling["count"].tolist()}


def leaning_latents(fit: PairFit, n: int) -> np.ndarray:
    """The n live latents with the highest relative decoder norm (most target-leaning), whatever their value."""
    alive = fit.alive
    return alive[np.argsort(-fit.rel_norm[alive], kind="stable")[:n]]


def _causal(cfg, target: str, fits: list[PairFit], problems: list[dict], layer: int, progress: bool) -> dict:
    """Greedy accuracy of the target with a latent set ablated, and of SFT with it transplanted, each against a
    random set of as many other live latents (one draw per crosscoder seed). Sets: the specific latents
    ('specific'), and the `causal_top` most target-leaning live latents ('leaning', never empty). An empty set
    edits nothing, so its accuracy is the unedited one and no generation is run."""
    from rlvr_utils.models.loading import load
    from rlvr_utils.training.rewards import extract_answer, is_correct
    from rlvr_utils.treatments.registry import REFERENCE

    c, ev = cfg.crosscoder, cfg.evaluation
    ref_model, tokenizer = load(cfg.model_ref(REFERENCE), cfg)
    tgt_model, _ = load(cfg.model_ref(target), cfg)
    prompts = [p["prompt"] for p in problems]

    def correct(completions):
        return np.array([is_correct(extract_answer(t), p["final"]) for t, p in zip(completions, problems)], dtype=float)

    def greedy(driver, partner=None, edit=None, desc="greedy"):
        return correct(paired_greedy(driver, tokenizer, prompts, ev.max_new_tokens, min(ev.batch_size, 256),
                                     partner, layer, c.site, edit, desc))

    base = {"target": greedy(tgt_model, desc=f"{target} greedy"), "reference": greedy(ref_model, desc="sft greedy")}
    boot = dict(n_bootstrap=c.n_bootstrap, confidence=c.confidence, seed=cfg.seed)
    out = {"n_problems": len(problems), "seeds": len(fits[: c.causal_seeds]),
           "accuracy_target": stats.bootstrap(100 * base["target"], **boot),
           "accuracy_reference": stats.bootstrap(100 * base["reference"], **boot)}
    for set_name in ("specific", "leaning"):
        runs = {k: [] for k in ("ablate", "ablate_random", "ablate_reference", "transplant", "transplant_random")}
        sizes = []
        for seed, fit in enumerate(fits[: c.causal_seeds]):
            chosen = fit.specific if set_name == "specific" else leaning_latents(fit, c.causal_top)
            others = np.setdiff1d(fit.alive, chosen)
            random = np.random.default_rng(cfg.seed + seed).choice(others, size=min(len(chosen), len(others)),
                                                                    replace=False)
            sizes.append(len(chosen))
            for key, latents in (("ablate", chosen), ("ablate_random", random)):
                runs[key].append(greedy(tgt_model, ref_model, latent_edit(fit, latents, 1, "remove"),
                                        f"{set_name} {key} s{seed}") if len(latents) else base["target"])
            # the same latents removed from SFT with SFT's decoder: a shared latent's ablation hurts both models,
            # so only a drop in the target beyond the drop in SFT points to the target's own use of them
            runs["ablate_reference"].append(greedy(ref_model, tgt_model, latent_edit(fit, chosen, 0, "remove"),
                                                   f"{set_name} ablate in sft s{seed}") if len(chosen)
                                            else base["reference"])
            for key, latents in (("transplant", chosen), ("transplant_random", random)):
                runs[key].append(greedy(ref_model, tgt_model, latent_edit(fit, latents, 0, "transplant"),
                                        f"{set_name} {key} s{seed}") if len(latents) else base["reference"])
        res = {"latents_per_seed": sizes}
        for key in ("ablate", "ablate_random"):  # a drop is positive
            res[f"{key}_drop"] = stats.paired_difference(100 * base["target"], 100 * np.mean(runs[key], 0), **boot)
        res["ablate_reference_drop"] = stats.paired_difference(100 * base["reference"],
                                                               100 * np.mean(runs["ablate_reference"], 0), **boot)
        for key in ("transplant", "transplant_random"):
            res[f"{key}_gain"] = accuracy_change(base["reference"], np.array(runs[key]), **boot)
        out[set_name] = res
    return out


def _readings(cfg, fit: PairFit, target: str, store, cache, site: str) -> dict:
    """Top specific and top shared latents of one fit: contexts that activate them most, logit lens."""
    from rlvr_utils.models.loading import load
    from rlvr_utils.treatments.registry import REFERENCE

    c = cfg.crosscoder
    a, b, index = read_pair(store, REFERENCE, target, site, c.position)
    x = torch.from_numpy(np.stack([a, b], 1)) * fit.scales[None, :, None]
    with torch.no_grad():
        f = fit.crosscoder.encode(x).numpy()
    models = {REFERENCE: load(cfg.model_ref(REFERENCE), cfg), target: load(cfg.model_ref(target), cfg)}
    tokenizer = models[target][1]
    shared = fit.alive[np.abs(fit.rel_norm[fit.alive] - 0.5) < 0.1]
    shared = shared[np.argsort(-fit.scaling["count"][shared], kind="stable")]
    out = {}
    for kind, chosen, owner, col in (("specific", fit.specific[:c.top_latents], target, 1),
                                     ("shared", shared[:c.top_latents], REFERENCE, 0)):
        rows = []
        for j in chosen:
            direction = fit.crosscoder.W_dec[j, col].detach() / fit.scales[col]
            rows.append({"latent": int(j), "rel_norm": float(fit.rel_norm[j]),
                         "nu_error": float(fit.scaling["nu_error"][j]), "nu_recon": float(fit.scaling["nu_recon"][j]),
                         "frequency": float(fit.scaling["count"][j] / len(x)),
                         "contexts": top_contexts(f[:, j], index, cache, tokenizer),
                         "logit_lens_of": owner, **logit_effect(models[owner][0], direction, tokenizer)})
        out[kind] = rows
    return out


def run(cfg, force: bool = False, progress: bool = True) -> dict:
    """metrics/crosscoder.json: crosscoders for base->SFT and SFT->each treatment over `crosscoder.seeds` seeds,
    the specific-latent counts, the causal test and the latent readings; skipped when up to date."""
    from rlvr_utils.activations.store import TokenCache, run_extract, ActivationStore
    from rlvr_utils.training.data import read_jsonl
    from rlvr_utils.treatments.registry import REFERENCE, STUDY

    c = cfg.crosscoder
    started = time.perf_counter()
    available, missing = _available(cfg)
    if missing:
        log.warning("no checkpoint for %s: diffed without them (run 03_variants to build them)", missing)
    pairs = pairs_of(cfg, available)
    models = sorted({m for p in pairs for m in p})
    cache = TokenCache.load(cfg.path("tokens"))
    path = cfg.path("metrics", "crosscoder.json")
    fp = fingerprint(cfg, models, cache)
    inputs = [cfg.path("tokens"), *(cfg.model_ref(m) for m in models)]  # content-checked by the stamp
    if artifacts.is_current(path, fp, inputs) and not force:
        log.info("crosscoder.json is up to date: skipping")
        return artifacts.read_json(path)

    store = ActivationStore(cfg.path("activations"))
    for m in models:  # the variants may not have been extracted by 04_extract; skipped when current
        run_extract(cfg, m, cache)
    layer = middle_layer(cfg)
    site = architecture.site_name(layer, c.site)
    d_model = store.meta(REFERENCE)["d_model"]
    result: dict = {"layer": layer, "site": site, "position": c.position, "missing": missing,
                    "settings": c.model_dump(mode="json"), "pairs": {}, "causal": {}}
    kept: dict[str, list[PairFit]] = {}
    for ref, tgt in pairs:
        a, b, _ = read_pair(store, ref, tgt, site, c.position)
        fits = [fit_pair(a, b, c.expansion * d_model, c.k, c.steps, c.batch_size, c.learning_rate, cfg.seed + s,
                         c.specific_threshold, c.presence_threshold, progress, f"{ref}->{tgt} seed {s}")
                for s in range(c.seeds)]
        log.info("%s -> %s: %s specific latents over seeds, FVU %s, %.0f s", ref, tgt, [len(f.specific) for f in fits],
                 np.round(np.mean([f.info["fvu"] for f in fits], 0), 3), sum(f.info["seconds"] for f in fits))
        result["pairs"][f"{ref}->{tgt}"] = {"reference": ref, "target": tgt, "n_tokens": len(a),
                                            "seeds": [_fit_record(f) for f in fits]}
        if ref == REFERENCE and (tgt in c.causal_treatments or tgt == STUDY):
            kept[tgt] = fits
    result["train_seconds"] = time.perf_counter() - started

    problems = read_jsonl(cfg.path("data", "eval.jsonl"))[cfg.extract.n_problems:][: c.causal_problems]
    if len(problems) < c.causal_problems:
        log.warning("only %d held-out problems after the %d the crosscoders trained on (crosscoder.causal_problems=%d)",
                    len(problems), cfg.extract.n_problems, c.causal_problems)
    causal_started = time.perf_counter()
    if not problems:
        log.warning("no causal test: eval.jsonl has no rows after the first extract.n_problems=%d, which the "
                    "crosscoders trained on", cfg.extract.n_problems)
    for tgt in [t for t in c.causal_treatments if t in kept and problems]:
        result["causal"][tgt] = _causal(cfg, tgt, kept[tgt], problems, layer, progress)
    result["causal_seconds"] = time.perf_counter() - causal_started
    if STUDY in kept:
        result["readings"] = _readings(cfg, kept[STUDY][0], STUDY, store, cache, site)
    result["variants"] = variants_block(result)
    result["summary"] = summary(result)
    result["seconds"] = time.perf_counter() - started
    artifacts.write_json(path, result)
    artifacts.stamp(path, fp, inputs, seconds=result["seconds"])
    return result


def _counts(result: dict, pair: str) -> list[int]:
    return [s["n_specific"] for s in result["pairs"][pair]["seeds"]]


_NO_VALUE = {"value": None, "ci": [None, None]}


def variants_block(result: dict) -> dict:
    """{T: {"specific_latents": ..., "causal_effect": ...}} for every treatment diffed against SFT; the causal
    effect (accuracy drop in points when T's specific latents are ablated in T) is null where not run."""
    out = {}
    for key, pair in result["pairs"].items():
        if pair["reference"] != "sft":
            continue
        t = pair["target"]
        causal = result["causal"].get(t)
        out[t] = {"specific_latents": seed_interval(_counts(result, key)),
                  "max_relative_norm": seed_interval([s["max_rel_norm"] for s in pair["seeds"]]),
                  "causal_effect": {k: causal["specific"]["ablate_drop"][k] for k in ("value", "ci")}
                  if causal else dict(_NO_VALUE)}
    return out


def summary(result: dict) -> dict:
    """Headline numbers with intervals and descriptions (the verdict reads these)."""
    out = {}
    pairs = result["pairs"]
    if "base->sft" in pairs:
        out["crosscoder_sft_specific_latents"] = {**seed_interval(_counts(result, "base->sft")), "description":
            "yardstick: SFT-specific latents in the base->SFT crosscoder (mean, range over crosscoder seeds)"}
    if "sft->rlvr" in pairs:
        out["crosscoder_rlvr_specific_latents"] = {**seed_interval(_counts(result, "sft->rlvr")), "description":
            "RLVR-specific latents in the SFT->RLVR crosscoder (relative decoder norm and Latent Scaling; mean, "
            "range over crosscoder seeds)"}
        out["crosscoder_fvu_rlvr"] = {**seed_interval([np.mean(s["fvu"]) for s in pairs["sft->rlvr"]["seeds"]]),
                                      "description": "fraction of variance the SFT->RLVR crosscoder leaves "
                                      "unexplained (mean of the two models; range over seeds)"}
    for key, name in (("base->sft", "sft"), ("sft->rlvr", "rlvr")):
        if key in pairs:
            out[f"crosscoder_{name}_max_relative_norm"] = {
                **seed_interval([s["max_rel_norm"] for s in pairs[key]["seeds"]]),
                "description": f"largest relative decoder norm of a live latent, {_pair_label(key)} (0.5 = no latent "
                               "leans to either model; mean, range over seeds)"}
    nulls = [k for k, p in pairs.items() if p["reference"] == "sft" and p["target"].startswith("null_")]
    if nulls:
        out["crosscoder_null_max_relative_norm"] = {
            **seed_interval([s["max_rel_norm"] for k in nulls for s in pairs[k]["seeds"]]),
            "description": "largest relative decoder norm of a live latent, SFT -> nulls (mean, range over nulls "
                           "and seeds)"}
        counts = [n for k in nulls for n in _counts(result, k)]
        out["crosscoder_null_specific_latents"] = {**seed_interval(counts), "description":
            f"specific latents in SFT->null crosscoders ({len(nulls)} random updates of RLVR's size; mean, range "
            "over nulls and seeds): the floor RLVR's count is set against"}
    cz = result["causal"].get("rlvr")
    texts = (("ablate_drop", "greedy accuracy drop (points) when {what} are ablated in RLVR"),
             ("ablate_random_drop", "the same for as many random live latents (control of {what})"),
             ("transplant_gain", "greedy accuracy gain (points) when {what} are transplanted into SFT"),
             ("transplant_random_gain", "the same for as many random live latents (control of {what})"))
    for set_name, what in (("specific", "RLVR's specific latents"),
                           ("leaning", "the most RLVR-leaning live latents (highest relative decoder norm)")):
        if not cz:
            break
        for key, text in texts + (("ablate_reference_drop", "greedy accuracy drop (points) when {what} are "
                                   "ablated in SFT (what a shared latent costs either model)"),):
            prefix = "crosscoder_rlvr_" if set_name == "specific" else "crosscoder_rlvr_leaning_"
            out[prefix + key] = {**{k: cz[set_name][key][k] for k in ("value", "ci")},
                                 "description": text.format(what=what) + f"; paired bootstrap over "
                                 f"{cz['n_problems']} held-out problems"}
    return out


# --- figures and reading (notebook 07) -----------------------------------------------------------------------
def _pair_label(key: str) -> str:
    return key.replace("->", " → ")


def plot_relative_norms(result: dict, seed: int = 0):
    """One histogram of live latents' relative decoder norm per pair (first seed), threshold marked."""
    import matplotlib.pyplot as plt

    pairs = list(result["pairs"])
    fig, axes = plt.subplots(1, len(pairs), figsize=(2.6 * len(pairs), 2.8), sharex=True, sharey=True, squeeze=False)
    threshold = result["settings"]["specific_threshold"]
    for ax, key in zip(axes[0], pairs):
        rec = result["pairs"][key]["seeds"][seed]
        rel = np.array([r for r, n in zip(rec["rel_norm"], rec["count"]) if n > 0 and r is not None])
        ax.hist(rel, bins=np.linspace(0, 1, 41), color="tab:blue" if "null" not in key else "tab:gray")
        ax.axvline(threshold, color="tab:red", ls="--", lw=1)
        ax.axvline(1 - threshold, color="tab:red", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_title(f"{_pair_label(key)}\n{rec['n_specific']} specific", fontsize=9)
        ax.set_xlabel("‖d_target‖ / (‖d_ref‖ + ‖d_target‖)", fontsize=8)
    axes[0][0].set_ylabel("live latents")
    fig.suptitle(f"Relative decoder norms at {result['site']} (seed {seed})", fontsize=10)
    fig.tight_layout()
    return fig


def plot_counts(result: dict):
    """Specific latents per pair: mean and range over crosscoder seeds, each seed as a dot."""
    import matplotlib.pyplot as plt

    keys = list(result["pairs"])
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(keys) + 2), 3))
    for i, key in enumerate(keys):
        counts = _counts(result, key)
        color = "tab:gray" if "null" in key else ("tab:green" if key.startswith("base") else "tab:red")
        ax.errorbar(i, np.mean(counts), yerr=[[np.mean(counts) - min(counts)], [max(counts) - np.mean(counts)]],
                    fmt="o", color=color, capsize=4)
        ax.scatter([i] * len(counts), counts, color=color, alpha=0.4, s=12)
    ax.set_xticks(range(len(keys)), [_pair_label(k) for k in keys], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("specific latents")
    ax.set_title("Target-specific latents (mean, range over seeds)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_causal(result: dict, target: str = "rlvr"):
    """Accuracy change of each latent edit with its paired 95% interval, beside the random-latent control."""
    import matplotlib.pyplot as plt

    cz = result["causal"].get(target)
    if not cz:
        return None
    rows = []
    for set_name in ("specific", "leaning"):
        n = cz[set_name]["latents_per_seed"]
        for key, label in (("ablate_drop", f"ablate in {target} (drop)"), ("transplant_gain", "transplant into sft (gain)")):
            rand = key.replace("_drop", "").replace("_gain", "") + "_random" + key[key.rindex("_"):]
            in_ref = cz[set_name].get("ablate_reference_drop") if key == "ablate_drop" else None
            rows.append((f"{set_name} (n={n[0]})\n{label}", cz[set_name][key], cz[set_name][rand], in_ref))
    fig, ax = plt.subplots(figsize=(7, 3))
    for i, (label, real, rand, in_ref) in enumerate(rows):
        for dx, est, color in ((-0.2, real, "tab:red"), (0.0, rand, "tab:gray"), (0.2, in_ref, "tab:blue")):
            if est is None:
                continue
            ax.errorbar(i + dx, est["value"], yerr=[[est["value"] - est["ci"][0]], [est["ci"][1] - est["value"]]],
                        fmt="o", color=color, capsize=4, label=None)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
    ax.set_ylabel("accuracy points")
    ax.plot([], [], "o", color="tab:red", label="chosen latents")
    ax.plot([], [], "o", color="tab:gray", label="as many random latents")
    ax.plot([], [], "o", color="tab:blue", label="chosen latents ablated in sft")
    ax.legend(fontsize=8)
    ax.set_title(f"Causal test on {cz['n_problems']} held-out problems (paired 95% intervals)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_scaling(result: dict, seed: int = 0):
    """Relative decoder norm against Latent Scaling's nu_error for each SFT->treatment pair (first seed)."""
    import matplotlib.pyplot as plt

    keys = [k for k, p in result["pairs"].items() if p["reference"] == "sft"][:3]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3), sharey=True, squeeze=False)
    s = result["settings"]
    for ax, key in zip(axes[0], keys):
        rec = result["pairs"][key]["seeds"][seed]
        pts = [(r, v) for r, v, n in zip(rec["rel_norm"], rec["nu_error"], rec["count"]) if n > 0 and v is not None]
        if pts:
            r, v = np.array(pts).T
            ax.scatter(r, np.clip(v, -0.5, 1.5), s=8, alpha=0.6)
        ax.axvline(s["specific_threshold"], color="tab:red", ls="--", lw=1)
        ax.axhline(s["presence_threshold"], color="tab:red", ls="--", lw=1)
        ax.set_xlim(0, 1)
        ax.set_title(_pair_label(key), fontsize=9)
        ax.set_xlabel("relative decoder norm")
    axes[0][0].set_ylabel("ν_error (clipped to [-0.5, 1.5])")
    fig.tight_layout()
    return fig


def readings_frame(result: dict):
    """One row per read latent: kind, diagnostics, top contexts and logit-lens tokens."""
    import pandas as pd

    rows = []
    for kind, latents in result.get("readings", {}).items():
        for r in latents:
            ctx = " | ".join(f"…{c['context']}[{c['token']}]→{c['next']!r}" for c in r["contexts"][:3])
            rows.append({"kind": kind, "latent": r["latent"], "rel_norm": round(r["rel_norm"], 3),
                         "nu_error": round(r["nu_error"], 3), "frequency": round(r["frequency"], 4),
                         "top contexts": ctx, f"promotes": " ".join(map(repr, r["promotes"])),
                         "suppresses": " ".join(map(repr, r["suppresses"]))})
    return pd.DataFrame(rows)


def _fmt(est: dict) -> str:
    lo, hi = est["ci"]
    return f"{est['value']:+.1f} [{lo:+.1f}, {hi:+.1f}]"


def reading(result: dict) -> str:
    """What the chapter concludes: RLVR added features that carry its gain only when its specific-latent count
    lies above every null's (intervals over seeds) AND ablating them costs more accuracy than ablating as many
    random latents (paired intervals); otherwise no evidence of new features."""
    v = result["variants"]
    if "rlvr" not in v:
        return "No SFT → RLVR crosscoder in this run."
    rl = v["rlvr"]["specific_latents"]
    nulls = {t: x["specific_latents"] for t, x in v.items() if t.startswith("null_")}
    null_hi = max((x["ci"][1] for x in nulls.values()), default=None)
    lines = [f"- RLVR-specific latents: **{rl['value']:.1f}** (range over seeds {rl['ci'][0]:.0f}–{rl['ci'][1]:.0f})"
             + (f"; nulls: highest count {null_hi:.0f} over {len(nulls)} random updates of RLVR's size."
                if nulls else "; no null was diffed (run 03_variants).")]
    if "sft->rlvr" in result["pairs"] and "base->sft" in result["pairs"]:
        ys = result["summary"]["crosscoder_sft_specific_latents"]
        lines.append(f"- Yardstick: SFT-specific latents against base: {ys['value']:.1f} "
                     f"(range {ys['ci'][0]:.0f}–{ys['ci'][1]:.0f}).")
    cz = result["causal"].get("rlvr")
    carries = False
    if cz:
        for set_name, what in (("specific", "specific latents"), ("leaning", f"{cz['leaning']['latents_per_seed'][0]} "
                                                                             "most RLVR-leaning latents")):
            c = cz[set_name]
            lines.append(f"- Ablating the {what} in RLVR: accuracy drop {_fmt(c['ablate_drop'])} points "
                         f"(random control {_fmt(c['ablate_random_drop'])}; the same latents ablated in SFT: "
                         f"{_fmt(c['ablate_reference_drop'])}); transplanting them into SFT: "
                         f"{_fmt(c['transplant_gain'])} (random {_fmt(c['transplant_random_gain'])}).")
        s = cz["specific"]
        carries = s["ablate_drop"]["ci"][0] > max(0.0, s["ablate_random_drop"]["ci"][1])
    if "crosscoder_rlvr_max_relative_norm" in result["summary"]:
        parts = [f"{name} {result['summary'][key]['value']:.3f} (range {result['summary'][key]['ci'][0]:.3f}–"
                 f"{result['summary'][key]['ci'][1]:.3f})" for name, key in
                 (("SFT → RLVR", "crosscoder_rlvr_max_relative_norm"), ("SFT → nulls", "crosscoder_null_max_relative_norm"),
                  ("base → SFT", "crosscoder_sft_max_relative_norm")) if key in result["summary"]]
        lines.append("- Most lopsided live latent (relative decoder norm): " + "; ".join(parts) + ".")
    more = null_hi is not None and rl["ci"][0] > null_hi
    if more and carries:
        verdict = "**RLVR added features that carry its gain** (more specific latents than any null, and its gain depends on them)."
    elif more:
        verdict = ("RLVR has more specific latents than the nulls, but the causal test does not show that its gain "
                   "depends on them: **no evidence that new features carry the gain** (consistent with Routing).")
    else:
        verdict = ("**No evidence of new features**: RLVR's specific-latent count does not exceed what a random "
                   "update of the same size produces.")
    return "\n".join(lines + ["", verdict])
