"""The BatchTopK crosscoder between two models' paired activations, its trainer and Latent Scaling: pure
functions of arrays, tested on planted dictionaries where the answer is known.

One sparse dictionary is learned over both models' activations at the same tokens (Lindsey et al. 2024):
a shared encoder reads the concatenated pair, and each model has its own decoder. A latent whose decoder
has norm only in the target's half is a candidate *target-specific* feature. Two corrections follow
Minder, Dumas et al. (2025, "Robustly identifying concepts introduced during chat fine-tuning using
crosscoders"):
  - BatchTopK sparsity (Bussmann et al. 2024) instead of an L1 penalty, which invents model-specific
    latents; the top k x batch activations are kept, ranked by activation x summed decoder norms;
  - Latent Scaling: for each latent j, the scalar beta that best explains a model's activations from
    f_j d_j (d_j = the target's decoder vector) is fitted in closed form, once on each model's
    reconstruction error with j's own contribution put back (nu_error = beta_ref / beta_target) and once
    on the reconstruction by the other latents (nu_recon). nu near 0: the concept is really absent from the
    reference; near 1: the reference has it and the decoder norm misled (Complete Shrinkage, Latent
    Decoupling).
A latent is *target-only* when its relative decoder norm r = ||d_T|| / (||d_ref|| + ||d_T||) is above
`specific_threshold` AND nu_error is below `presence_threshold`; *reference-only* (a feature the target lost)
in the mirror: r below 1 - `specific_threshold` and, with the reference's decoder vector as the direction, the
target's own error holds less than `presence_threshold` of it. Both are ranked by Latent Scaling (nu_error,
lowest first), as the reference ranks its chat-only latents. The paper's candidates are Δnorm > 0.9 (chat-only)
and Δnorm < 0.1 (base-only), which is r > 5/6 and r < 1/6 here (`delta_norm`, `threshold_for_delta_norm`).

Activations are normalised per model by one scalar so that E||x||^2 = d_model, as both papers do.

No library on PyPI fits this stack: `dictionary-learning` (0.1.0) has no crosscoder and pins an old nnsight;
SAELens and EleutherAI's sparsify train single-model SAEs and transcoders; the crosscoder libraries
(`crosscode`, the science-of-finetuning fork of dictionary_learning) are not published on PyPI. So this is
a compact implementation (~one screen for the model and trainer).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

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
    """Fit a BatchTopK crosscoder to normalised activations x [N, n_models, d] on x's device; returns (crosscoder,
    log) with the loss history, fraction of variance unexplained per model, dead latents and seconds. The
    initialisation and the batches are drawn on the CPU, so a seed gives the same draws on any device."""
    if x.ndim != 3:
        raise ValueError(f"x must be [tokens, models, d_model], got shape {tuple(x.shape)}")
    started = time.perf_counter()
    n, n_models, d = x.shape
    cc = Crosscoder(d, n_latents, k, n_models, seed).to(x.device)
    with torch.no_grad():
        cc.b_dec.copy_(x.mean(0))
    opt = torch.optim.Adam(cc.parameters(), lr=lr, betas=(0.9, 0.999))
    # linear decay over the last fifth: the dictionary settles before the threshold is read
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, 5 * (steps - s) / steps))
    g = torch.Generator().manual_seed(seed)
    since_fired = torch.zeros(n_latents, dtype=torch.long, device=x.device)
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
        cc.threshold.fill_(inference_threshold(cc, x, batch_size))
        fvu = fraction_unexplained(cc, x)
    info = {"history": history, "fvu": fvu.tolist(), "seconds": time.perf_counter() - started,
            "dead_at_end": int((since_fired > DEAD_AFTER).sum())}
    return cc, info


@torch.no_grad()
def inference_threshold(cc: Crosscoder, x: torch.Tensor, batch_size: int) -> float:
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
    return (err / var).cpu().numpy()


# --- per-latent diagnostics ------------------------------------------------------------------------------
def relative_norms(cc: Crosscoder, target: int = 1, reference: int = 0) -> np.ndarray:
    """||d_target|| / (||d_reference|| + ||d_target||) per latent: 1 = only in the target's decoder."""
    norms = cc.decoder_norms().detach()
    return (norms[:, target] / (norms[:, target] + norms[:, reference]).clamp_min(1e-12)).cpu().numpy()


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
    sums = {key: torch.zeros(m, 2, dtype=torch.float64, device=x.device) for key in ("err", "rec")}
    f_sq = torch.zeros(m, dtype=torch.float64, device=x.device)
    count = torch.zeros(m, dtype=torch.long, device=x.device)
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
    count = count.cpu()
    out = {"count": count.numpy()}
    for key, name in (("err", "error"), ("rec", "recon")):
        beta = (sums[key] / denom).cpu().numpy()
        out[f"beta_{name}_reference"], out[f"beta_{name}_target"] = beta[:, 0], beta[:, 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            out[f"nu_{name}"] = np.where(count.numpy() > 0, beta[:, 0] / beta[:, 1], np.nan)
    return out


# --- the reference's criterion ----------------------------------------------------------------------------
# Minder, Dumas et al. (2025, arXiv 2504.02922, eq. 2) classify latents by the relative norm difference
#     Δnorm = 1/2 * ((||d_T|| - ||d_ref||) / max(||d_T||, ||d_ref||) + 1)   (0 reference-only, 1 target-only)
# and take Δnorm > 0.9 as target-only ("chat-only") and Δnorm < 0.1 as reference-only ("base-only").
# With a = ||d_T||, b = ||d_ref||: for a >= b, Δnorm = 1 - b / (2a), so Δnorm > 0.9 <=> b / a < 0.2 <=> a > 5b,
# and our r = a / (a + b) = 1 / (1 + b/a) > 1 / 1.2 = 5/6 = 0.8333. In general r = 1 / (3 - 2 Δnorm) for
# Δnorm >= 1/2, and the map is symmetric (Δnorm(1 - r) = 1 - Δnorm(r)): Δnorm < 0.1 <=> r < 1/6.
REFERENCE_DELTA_NORM = 0.9  # the paper's target-only cut


def delta_norm(rel_norm) -> np.ndarray:
    """Minder et al.'s Δnorm of latents whose relative decoder norm is r = ||d_T|| / (||d_ref|| + ||d_T||)."""
    r = np.asarray(rel_norm, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        # b/a = (1 - r)/r when the target's decoder is the longer one; a/b = r/(1 - r) otherwise
        return np.where(r >= 0.5, 1 - (1 - r) / (2 * r), r / (2 * (1 - r)))


def threshold_for_delta_norm(delta: float = REFERENCE_DELTA_NORM) -> float:
    """The relative decoder norm r at which Δnorm = delta (delta >= 0.5): r = 1 / (3 - 2 delta); 0.9 -> 5/6."""
    if not 0.5 <= delta < 1:
        raise ValueError(f"Δnorm threshold {delta} must be in [0.5, 1)")
    return 1 / (3 - 2 * delta)


def ranked_by_scaling(idx: np.ndarray, nu_error: np.ndarray, nu_recon: np.ndarray) -> np.ndarray:
    """Candidate latents in the reference's order: lowest nu_error first (the least present in the other model),
    ties by nu_recon."""
    idx = np.asarray(idx, dtype=np.int64)
    return idx[np.lexsort((np.nan_to_num(nu_recon[idx], nan=np.inf), np.nan_to_num(nu_error[idx], nan=np.inf)))]


def specific_latents(rel_norm: np.ndarray, nu_error: np.ndarray, count: np.ndarray, specific_threshold: float,
                     presence_threshold: float, nu_recon: np.ndarray | None = None) -> np.ndarray:
    """Indices of latents specific to one model: alive, relative norm toward it above the threshold (pass
    1 - rel_norm for the reference's side), and Latent Scaling says the other model's own error holds less than
    `presence_threshold` of it (nu_error measured with this model's decoder direction); ranked by nu_error."""
    ok = (count > 0) & (rel_norm > specific_threshold) & (np.nan_to_num(nu_error, nan=1.0) < presence_threshold)
    return ranked_by_scaling(np.flatnonzero(ok), nu_error, nu_recon if nu_recon is not None else nu_error)


@dataclass
class PairFit:
    """One crosscoder between reference (model 0) and target (model 1) and its per-latent diagnostics."""

    crosscoder: Crosscoder
    scales: torch.Tensor  # [2]: multiply raw activations by these before encoding
    rel_norm: np.ndarray
    scaling: dict[str, np.ndarray]  # Latent Scaling along the target's decoder vectors
    specific: np.ndarray  # target-only latents (what the target has and the reference lacks), ranked
    info: dict = field(default_factory=dict)
    reference_scaling: dict[str, np.ndarray] = field(default_factory=dict)  # along the reference's decoder vectors
    reference_only: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # what the target lost

    @property
    def alive(self) -> np.ndarray:
        return np.flatnonzero(self.scaling["count"] > 0)


def fit_pair(reference: np.ndarray, target: np.ndarray, n_latents: int, k: int, steps: int, batch_size: int,
             lr: float, seed: int, specific_threshold: float = 5 / 6, presence_threshold: float = 0.3,
             progress: bool = True, desc: str = "crosscoder", device: str = "cpu") -> PairFit:
    """Normalise, train, and read the per-latent diagnostics of one pair of paired activations [N, d], on
    `device`; the fit comes back on the CPU (its readers edit and read on any device from there)."""
    reference, target = np.asarray(reference, dtype=np.float32), np.asarray(target, dtype=np.float32)
    if reference.shape != target.shape or reference.ndim != 2:
        raise ValueError(f"paired activations must both be [tokens, d_model] of one shape, got "
                         f"{reference.shape} and {target.shape}")
    raw = torch.from_numpy(np.stack([reference, target], axis=1)).to(device)
    scales = normalisers(raw)
    x = raw * scales[None, :, None]
    cc, info = train(x, n_latents, k, steps, batch_size, lr, seed, progress, desc)
    rel = relative_norms(cc)
    scaling = latent_scaling(cc, x)
    spec = specific_latents(rel, scaling["nu_error"], scaling["count"], specific_threshold, presence_threshold,
                            scaling["nu_recon"])
    # the mirror: latents the reference has and the target lost, measured along the reference's decoder vectors
    mirror = latent_scaling(cc, x, target=0, reference=1)
    lost = specific_latents(1 - rel, mirror["nu_error"], mirror["count"], specific_threshold, presence_threshold,
                            mirror["nu_recon"])
    return PairFit(cc.cpu(), scales.cpu(), rel, scaling, spec, info, mirror, lost)


def leaning_latents(fit: PairFit, n: int) -> np.ndarray:
    """The n live latents with the highest relative decoder norm (most target-leaning), whatever their value."""
    alive = fit.alive
    return alive[np.argsort(-fit.rel_norm[alive], kind="stable")[:n]]
