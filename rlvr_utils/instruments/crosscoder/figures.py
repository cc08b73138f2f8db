"""The crosscoder chapter's figures and reading, drawn from metrics/crosscoder.json alone."""
from __future__ import annotations

import numpy as np

from rlvr_utils.instruments.crosscoder.instrument import YARDSTICK, counts, pair_label
from rlvr_utils.treatments.registry import REFERENCE, STUDY


def _color(pair: dict) -> str:
    return {"null": "tab:gray", YARDSTICK: "tab:green"}.get(pair["kind"], "tab:red")


def plot_relative_norms(result: dict, seed: int = 0):
    """One histogram of live latents' relative decoder norm per pair (first seed), threshold marked."""
    import matplotlib.pyplot as plt

    pairs = list(result["pairs"])
    fig, axes = plt.subplots(1, len(pairs), figsize=(2.6 * len(pairs), 2.8), sharex=True, sharey=True, squeeze=False)
    threshold = result["settings"]["specific_threshold"]
    for ax, key in zip(axes[0], pairs):
        rec = result["pairs"][key]["seeds"][seed]
        rel = np.array([r for r, n in zip(rec["rel_norm"], rec["count"]) if n > 0 and r is not None])
        color = "tab:gray" if result["pairs"][key]["kind"] == "null" else "tab:blue"
        ax.hist(rel, bins=np.linspace(0, 1, 41), color=color)
        ax.axvline(threshold, color="tab:red", ls="--", lw=1)
        ax.axvline(1 - threshold, color="tab:red", ls=":", lw=1)
        ax.set_yscale("log")
        sides = (f"{rec['n_target_only']} target-only, {rec['n_reference_only']} ref-only" if "n_target_only" in rec
                 else f"{rec['n_specific']} specific")
        ax.set_title(f"{pair_label(key)}\n{sides}", fontsize=9)
        ax.set_xlabel("‖d_target‖ / (‖d_ref‖ + ‖d_target‖)", fontsize=8)
    axes[0][0].set_ylabel("live latents")
    fig.suptitle(f"Relative decoder norms at {result['site']} (seed {seed})", fontsize=10)
    fig.tight_layout()
    return fig


def plot_counts(result: dict):
    """Model-specific latents (target-only + reference-only) per pair: mean and range over crosscoder seeds, each
    seed as a dot."""
    import matplotlib.pyplot as plt

    keys = list(result["pairs"])
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(keys) + 2), 3))
    for i, key in enumerate(keys):
        n, color = counts(result["pairs"][key]), _color(result["pairs"][key])
        ax.errorbar(i, np.mean(n), yerr=[[np.mean(n) - min(n)], [max(n) - np.mean(n)]], fmt="o", color=color,
                    capsize=4)
        ax.scatter([i] * len(n), n, color=color, alpha=0.4, s=12)
    ax.set_xticks(range(len(keys)), [pair_label(k) for k in keys], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("model-specific latents")
    ax.set_title("Target-only + reference-only latents (mean, range over seeds)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_causal(result: dict, target: str = STUDY):
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

    keys = [k for k, p in result["pairs"].items() if p["reference"] == REFERENCE][:3]
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
        ax.set_title(pair_label(key), fontsize=9)
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
                         "top contexts": ctx, "promotes": " ".join(map(repr, r["promotes"])),
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
    if STUDY not in v:
        return "No SFT → RLVR crosscoder in this run."
    rl = v[STUDY]["specific_latents"]
    null_names = {p["target"] for p in result["pairs"].values()
                  if p["reference"] == REFERENCE and p["kind"] in ("null", "placebo")}
    nulls = {t: x["specific_latents"] for t, x in v.items() if t in null_names}
    null_hi = max((x["ci"][1] for x in nulls.values()), default=None)
    lines = [f"- Model-specific latents of SFT → RLVR (RLVR-only + SFT-only): **{rl['value']:.1f}** (range over seeds "
             f"{rl['ci'][0]:.0f}–{rl['ci'][1]:.0f})"
             + (f"; references: highest count {null_hi:.0f} over {len(nulls)} updates without task signal."
                if nulls else "; no null was diffed (build them in the variants chapter).")]
    if "crosscoder_sft_specific_latents" in result["summary"]:
        ys = result["summary"]["crosscoder_sft_specific_latents"]
        lines.append(f"- Yardstick: SFT-specific latents against base: {ys['value']:.1f} "
                     f"(range {ys['ci'][0]:.0f}–{ys['ci'][1]:.0f}).")
    cz = result["causal"].get(STUDY)
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
    # described, not read as a hypothesis: the verdict's row reads the count against the placebos' with an effect
    # size (rlvr_utils.evidence.readings says what it reads)
    if more and carries:
        verdict = ("RLVR's specific-latent range lies above every reference's, and ablating its specific latents "
                   "costs more accuracy than ablating as many random ones.")
    elif more:
        verdict = ("RLVR's specific-latent range lies above every reference's, but ablating its specific latents "
                   "costs no more accuracy than ablating as many random ones.")
    else:
        verdict = ("RLVR's specific-latent count does not exceed what the references (updates without task "
                   "signal) produce.")
    return "\n".join(lines + ["", verdict])
