"""The causal test of a crosscoder's latents: does a model's accuracy depend on them?

Two models run in lockstep during greedy generation (`paired_greedy`): the driver generates, the partner
reads the same tokens, and at the diffed site the driver's activation is edited with the joint encoding of
both (`latent_edit`: ablate the target's latents in the target; transplant them into the reference). Each
edit is set beside as many random live latents, and every accuracy change has a paired bootstrap interval
over the held-out problems.
"""
from __future__ import annotations

import copy
import inspect
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from rlvr_utils.core import stats
from rlvr_utils.core.device import run_device
from rlvr_utils.core.estimate import Estimate
from rlvr_utils.instruments.crosscoder.model import PairFit, leaning_latents
from rlvr_utils.models import chat, hooks
from rlvr_utils.models.loading import load
from rlvr_utils.training.rewards import extract_answer, is_correct
from rlvr_utils.treatments.registry import REFERENCE

PARAMS = ("crosscoder", "evaluation")  # params sections read here (rlvr_utils.core.deps)


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
    on_device: dict = {}  # the crosscoder and the edit's tensors where the models run (a copy: the fit stays put)

    def edit(h_driver: torch.Tensor, h_partner: torch.Tensor) -> torch.Tensor:
        if len(latents) == 0:
            return h_driver
        if h_driver.device not in on_device:
            to = h_driver.device
            on_device[to] = (cc if cc.W_dec.device == to else copy.deepcopy(cc).to(to), s.to(to), latents.to(to),
                             delta_dir.to(to))
        coder, scales, chosen, direction = on_device[h_driver.device]
        shape = h_driver.shape
        pair = [None, None]
        pair[driver], pair[other] = h_driver.reshape(-1, shape[-1]), h_partner.reshape(-1, shape[-1])
        x = torch.stack([pair[0].float() * scales[0], pair[1].float() * scales[1]], dim=1)
        with torch.no_grad():
            f = coder.encode(x)[:, chosen]
        return (pair[driver] + (f @ direction).to(h_driver.dtype)).reshape(shape)
    return edit


@torch.no_grad()
def paired_greedy(driver, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 256,
                  partner=None, layer: int = 0, site: str = "hook_resid_post", edit=None,
                  desc: str = "greedy") -> list[str]:
    """Greedy completions of `driver`, with `partner` reading the same tokens in lockstep (KV caches for both)
    and `edit(h_driver, h_partner)` applied at the site to the last prompt position and every generated one:
    the positions the crosscoder was trained on. Without an edit it is plain greedy decoding."""
    tokenizer.padding_side = "left"
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    state: dict = {}
    handles = []
    if edit is not None:
        if partner is None:
            raise ValueError("an edit needs a partner model to encode the pair")
        handles.append(hooks.hook(partner, layer, site, lambda t: state.__setitem__("partner", t)))

        def apply(t):
            if state["prefill"]:  # only the last prompt position, as in training
                return torch.cat([t[:, :-1], edit(t[:, -1:], state["partner"][:, -1:])], dim=1)
            return edit(t, state["partner"])
        handles.append(hooks.hook(driver, layer, site, apply))
    # transformers 5.x renamed `past_key_values` to `cache`; take whichever this version has
    cache_kw = "cache" if "cache" in inspect.signature(driver.forward).parameters else "past_key_values"
    device = next(driver.parameters()).device  # the partner runs on the same one
    out: list[str] = []
    with hooks.active(handles):
        for start in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False):
            enc = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True).to(device)
            ids, mask = enc["input_ids"], enc["attention_mask"]
            caches = {"driver": DynamicCache(), "partner": DynamicCache()}
            finished = torch.zeros(len(ids), dtype=torch.bool, device=device)
            new_tokens = []
            current = ids
            for step in range(max_new_tokens):
                position_ids = (mask.cumsum(-1) - 1).clamp_min(0)[:, -current.shape[1]:]
                state["prefill"] = step == 0
                kwargs = dict(input_ids=current, attention_mask=mask, position_ids=position_ids, use_cache=True)
                if edit is not None:
                    partner(**kwargs, **{cache_kw: caches["partner"]})
                logits = driver(**kwargs, **{cache_kw: caches["driver"]}).logits[:, -1]
                token = torch.where(finished, torch.tensor(pad, device=device), logits.argmax(-1))
                new_tokens.append(token)
                finished |= token == eos
                if finished.all():
                    break
                current = token[:, None]
                mask = torch.cat([mask, torch.ones(len(ids), 1, dtype=mask.dtype, device=device)], dim=1)
            out += tokenizer.batch_decode(torch.stack(new_tokens, 1), skip_special_tokens=True)
    return out


# --- statistics --------------------------------------------------------------------------------------------
def paired(a, b, n_bootstrap: int, confidence: float, seed: int) -> Estimate:
    """mean(a - b) over problems with its paired bootstrap interval (problems are the unit)."""
    a = np.asarray(a, dtype=float)
    out = stats.paired_difference(a, b, n_bootstrap, confidence, seed)
    return Estimate(out["value"], out["ci"], "bootstrap", len(a))


def accuracy_change(before: np.ndarray, after: np.ndarray, n_bootstrap: int, confidence: float,
                    seed: int) -> Estimate:
    """mean(after - before) in points, paired bootstrap over problems; `after` may be [seeds, problems]
    (averaged over seeds per problem first, so every seed's edit counts and problems stay the unit)."""
    after = np.asarray(after, dtype=float)
    after = after.mean(0) if after.ndim == 2 else after
    return paired(100 * after, 100 * np.asarray(before, dtype=float), n_bootstrap, confidence, seed)


# --- the test ----------------------------------------------------------------------------------------------
def causal_test(cfg, target: str, fits: list[PairFit], problems: list[dict], layer: int) -> dict:
    """Greedy accuracy of the target with a latent set ablated, and of SFT with it transplanted, each against a
    random set of as many other live latents (one draw per crosscoder seed). Sets: the specific latents
    ('specific'), and the `causal_top` most target-leaning live latents ('leaning', never empty). An empty set
    edits nothing, so its accuracy is the unedited one and no generation is run. Estimates as JSON."""
    c, ev = cfg.crosscoder, cfg.evaluation
    device = run_device(cfg)  # the greedy passes are most of the test's time: on the run's GPU when it has one
    ref_model, tokenizer = load(cfg.model_ref(REFERENCE), cfg, device)
    tgt_model, _ = load(cfg.model_ref(target), cfg, device)
    prompts = chat.format_prompts(cfg, tokenizer, [p["prompt"] for p in problems])  # as evaluation asks them

    def correct(completions):
        return np.array([is_correct(extract_answer(t), p["final"]) for t, p in zip(completions, problems)], dtype=float)

    def greedy(driver, partner=None, edit=None, desc="greedy"):
        return correct(paired_greedy(driver, tokenizer, prompts, ev.max_new_tokens, min(ev.batch_size, 256),
                                     partner, layer, c.site, edit, desc))

    base = {"target": greedy(tgt_model, desc=f"{target} greedy"), "reference": greedy(ref_model, desc="sft greedy")}
    boot = dict(n_bootstrap=c.n_bootstrap, confidence=c.confidence, seed=cfg.seed)

    def accuracy(correct_: np.ndarray) -> dict:
        out = stats.bootstrap(100 * correct_, **boot)
        return Estimate(out["value"], out["ci"], "bootstrap", len(correct_)).to_json()

    out = {"n_problems": len(problems), "seeds": len(fits[: c.causal_seeds]),
           "accuracy_target": accuracy(base["target"]), "accuracy_reference": accuracy(base["reference"])}
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
        res: dict = {"latents_per_seed": sizes}
        for key in ("ablate", "ablate_random"):  # a drop is positive
            res[f"{key}_drop"] = paired(100 * base["target"], 100 * np.mean(runs[key], 0), **boot).to_json()
        res["ablate_reference_drop"] = paired(100 * base["reference"], 100 * np.mean(runs["ablate_reference"], 0),
                                              **boot).to_json()
        for key in ("transplant", "transplant_random"):
            res[f"{key}_gain"] = accuracy_change(base["reference"], np.array(runs[key]), **boot).to_json()
        out[set_name] = res
    return out
