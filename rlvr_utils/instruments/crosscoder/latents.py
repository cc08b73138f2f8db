"""What a crosscoder's latents are: the tokens that activate them most and the next tokens their decoder
directions promote and suppress (logit lens), for the top specific and the top shared latents of one fit."""
from __future__ import annotations

import numpy as np
import torch

from rlvr_utils.core.device import run_device
from rlvr_utils.instruments.crosscoder.model import PairFit
from rlvr_utils.models import families
from rlvr_utils.models.loading import load
from rlvr_utils.treatments.registry import REFERENCE

PARAMS = ("crosscoder",)  # params sections read here (rlvr_utils.core.deps)


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
    norm = families.final_norm(model)
    gain = norm.weight if getattr(norm, "weight", None) is not None else torch.ones_like(direction)
    logits = families.unembedding(model)(gain * direction.to(gain.device, gain.dtype))
    top, bottom = logits.topk(n), (-logits).topk(n)
    return {"promotes": [tokenizer.decode([int(t)]) for t in top.indices],
            "suppresses": [tokenizer.decode([int(t)]) for t in bottom.indices]}


def read_latents(cfg, fit: PairFit, target: str, reference_acts: np.ndarray, target_acts: np.ndarray,
                 index: np.ndarray, cache) -> dict:
    """Top specific and top shared latents of one SFT -> target fit, read on the activations it was trained on:
    contexts that activate them most, logit lens through the model that owns the latent."""
    top = cfg.crosscoder.top_latents
    x = torch.from_numpy(np.stack([reference_acts, target_acts], 1)) * fit.scales[None, :, None]
    with torch.no_grad():
        f = fit.crosscoder.encode(x).numpy()
    device = run_device(cfg)
    models = {REFERENCE: load(cfg.model_ref(REFERENCE), cfg, device), target: load(cfg.model_ref(target), cfg, device)}
    tokenizer = models[target][1]
    shared = fit.alive[np.abs(fit.rel_norm[fit.alive] - 0.5) < 0.1]
    shared = shared[np.argsort(-fit.scaling["count"][shared], kind="stable")]
    out = {}
    for kind, chosen, owner, col in (("specific", fit.specific[:top], target, 1),
                                     ("shared", shared[:top], REFERENCE, 0)):
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
