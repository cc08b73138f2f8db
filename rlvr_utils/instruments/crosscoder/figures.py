"""The crosscoder chapter's figures and reading, drawn from metrics/crosscoder.json alone."""
from __future__ import annotations

import numpy as np

from rlvr_utils.core import captions, fmt, plots
from rlvr_utils.instruments.crosscoder.instrument import YARDSTICK, counts, pair_label
from rlvr_utils.treatments.registry import REFERENCE, REFERENCE_KINDS, STUDY


def _study_key(result: dict) -> str | None:
    """The SFT -> RLVR pair's key, or None when it was not diffed."""
    return next((k for k, p in result.get("pairs", {}).items()
                 if p.get("reference") == REFERENCE and p.get("target") == STUDY), None)


def _color(pair: dict) -> str:
    return {"null": "tab:gray", YARDSTICK: "tab:green"}.get(pair["kind"], "tab:red")


def plot_relative_norms(result: dict, seed: int = 0):
    """One histogram of live latents' relative decoder norm per pair (first seed), thresholds marked; a grid of
    panels (two per row) so that each stays readable at the page's width."""
    import matplotlib.pyplot as plt

    pairs = list(result["pairs"])
    rows, cols = plots.grid(len(pairs))
    fig, axes = plt.subplots(rows, cols, figsize=(plots.PAGE_WIDTH, 2.5 * rows + 0.9), sharex=True, sharey=True,
                             squeeze=False)
    plots.drop_unused(axes, len(pairs))
    threshold = result["settings"]["specific_threshold"]
    for ax, key in zip(axes.flat, pairs):
        rec = result["pairs"][key]["seeds"][seed]
        rel = np.array([r for r, n in zip(rec["rel_norm"], rec["count"]) if n > 0 and r is not None])
        color = "tab:gray" if result["pairs"][key]["kind"] == "null" else "tab:blue"
        if len(rel):
            ax.hist(rel, bins=np.linspace(0, 1, 41), color=color)
            ax.set_yscale("log")
        else:
            plots.say_missing(ax, "no live latent")
        ax.axvline(threshold, color="tab:red", ls="--", lw=1)
        ax.axvline(1 - threshold, color="tab:red", ls=":", lw=1)
        sides = (f"{rec['n_target_only']} target-only, {rec['n_reference_only']} ref-only" if "n_target_only" in rec
                 else f"{rec['n_specific']} specific")
        ax.set_title(f"{pair_label(key)}\n{sides}", fontsize=plots.MIN_FONT)
    for ax in axes[-1]:
        ax.set_xlabel("‖d_target‖ / (‖d_ref‖ + ‖d_target‖)", fontsize=plots.MIN_FONT)
    for row in axes:
        row[0].set_ylabel("live latents")
    fig.suptitle(f"Relative decoder norms at {result['site']} (seed {seed})")
    fig.tight_layout()
    return fig


def caption_relative_norms(result: dict, seed: int = 0) -> str:
    """The histograms' caption: the span of SFT -> RLVR's live latents' relative decoder norms against the
    references' (placebos, nulls) and base -> SFT's, on the seed drawn, with the specific thresholds."""
    pairs = result.get("pairs", {})
    threshold = result.get("settings", {}).get("specific_threshold")
    text = f"Relative decoder norm of each live latent per pair (seed {seed})"
    text += (f"; dashed and dotted lines: the thresholds {fmt.number(threshold)} and {fmt.number(1 - threshold)}."
             if threshold is not None else ".")

    def extent(keys):
        recs = [pairs[k]["seeds"][seed] for k in keys if len(pairs[k].get("seeds", [])) > seed]
        return captions.span([r.get("min_rel_norm") for r in recs] + [r.get("max_rel_norm") for r in recs])

    study = _study_key(result)
    if study is None:
        return text + f" {pair_label(f'{REFERENCE}->{STUDY}')}: not measured."
    refs = [k for k, p in pairs.items() if p.get("reference") == REFERENCE and p.get("kind") in REFERENCE_KINDS]
    yardstick = [k for k, p in pairs.items() if p.get("kind") == YARDSTICK]
    parts = [f"{pair_label(study)}'s live latents span {extent([study])}"]
    if refs:
        parts.append(f"the references' ({len(refs)} updates without task signal) {extent(refs)}")
    if yardstick:
        parts.append(f"{pair_label(yardstick[0])}'s {extent(yardstick)}")
    return text + " " + "; ".join(parts) + "."


def plot_counts(result: dict):
    """Model-specific latents (target-only + reference-only) per pair: mean and range over crosscoder seeds, each
    seed as a dot; pairs as rows so their names stay horizontal and whole."""
    import matplotlib.pyplot as plt

    keys = list(result["pairs"])
    fig, ax = plt.subplots(figsize=(plots.PAGE_WIDTH, 0.36 * len(keys) + 1.4))
    for i, key in enumerate(keys):
        n, color = counts(result["pairs"][key]), _color(result["pairs"][key])
        ax.errorbar(np.mean(n), i, xerr=[[np.mean(n) - min(n)], [max(n) - np.mean(n)]], fmt="o", color=color,
                    capsize=4)
        ax.scatter(n, [i] * len(n), color=color, alpha=0.4, s=12)
    ax.set_yticks(range(len(keys)), [pair_label(k) for k in keys])
    ax.invert_yaxis()
    # counts: an integer axis from 0 (all zeros would otherwise sit mid-way on matplotlib's default ±0.05)
    most = max((max(counts(result["pairs"][k]), default=0) for k in keys), default=0)
    ax.set_xlim(-0.05 * max(most, 1) - 0.3, most * 1.05 + 1)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("model-specific latents")
    title = "Target-only + reference-only latents (mean, range over seeds)"
    ax.set_title(title if most else title + ": no pair has any on this run")
    fig.tight_layout()
    return fig


def _seed_range(pair: dict) -> str:
    """'0.5 [0.0, 1.0]': the mean of a pair's specific-latent counts and their range over seeds."""
    n = counts(pair)
    if not n:
        return "not measured"
    return fmt.interval(float(np.mean(n)), [min(n), max(n)])


def caption_counts(result: dict) -> str:
    """The counts' caption: SFT -> RLVR's model-specific latents (mean and range over seeds) against the highest
    reference count, the base -> SFT yardstick's, and the controls that have any."""
    pairs = result.get("pairs", {})
    seeds = result.get("settings", {}).get("seeds")
    text = ("Model-specific latents (target-only + reference-only) per pair: mean [range] over "
            f"{fmt.number(seeds) if seeds is not None else 'the'} crosscoder seeds.")
    study = _study_key(result)
    if study is None:
        return text + f" {pair_label(f'{REFERENCE}->{STUDY}')}: not measured."
    refs = [p for p in pairs.values() if p.get("reference") == REFERENCE and p.get("kind") in REFERENCE_KINDS]
    parts = [f"{pair_label(study)} {_seed_range(pairs[study])}"]
    if refs:
        highest = max(max(counts(p), default=0) for p in refs)
        above = min(counts(pairs[study]), default=0) > highest
        parts[0] += (f", {'above' if above else 'not above'} the references' highest count, {fmt.number(highest)} "
                     f"({len(refs)} update{'s' if len(refs) != 1 else ''} without task signal)")
    else:
        parts.append("no reference diffed")
    parts += [f"{pair_label(k)} {_seed_range(p)}" for k, p in pairs.items() if p.get("kind") == YARDSTICK]
    found = [f"{p['target']} {_seed_range(p)}" for p in pairs.values()
             if p.get("kind") == "control" and any(counts(p))]
    if found:
        parts.append(f"controls with any: {captions.names(found)}")
    return text + " " + "; ".join(parts) + "."


def plot_causal(result: dict, target: str = STUDY):
    """Accuracy change of each latent edit with its paired 95% interval, beside the random-latent control; a set
    of latents that is empty on this run says so instead of showing zeros that were never measured."""
    import matplotlib.pyplot as plt

    cz = result["causal"].get(target)
    if not cz:
        return None
    sets = ("specific", "leaning")
    # not sharing y: a panel that says "nothing measured" has no ticks, which a shared axis would take from all
    fig, axes = plt.subplots(1, len(sets), figsize=(plots.PAGE_WIDTH, 3.6), squeeze=False)
    for ax, set_name in zip(axes[0], sets):
        n = cz[set_name]["latents_per_seed"]
        ax.set_title(f"{set_name} latents (n = {', '.join(map(str, dict.fromkeys(n)))})", fontsize=plots.MIN_FONT)
        if not any(n):
            plots.say_missing(ax, f"no {set_name} latent on this run:\nnothing to ablate or transplant")
            continue
        labels = []
        for i, (key, label) in enumerate((("ablate_drop", f"ablate in\n{target} (drop)"),
                                          ("transplant_gain", "transplant into\nsft (gain)"))):
            rand = key.replace("_drop", "").replace("_gain", "") + "_random" + key[key.rindex("_"):]
            in_ref = cz[set_name].get("ablate_reference_drop") if key == "ablate_drop" else None
            labels.append(label)
            for dx, est, color in ((-0.2, cz[set_name][key], "tab:red"), (0.0, cz[set_name][rand], "tab:gray"),
                                   (0.2, in_ref, "tab:blue")):
                if est is None or est.get("value") is None:
                    continue
                ax.errorbar(i + dx, est["value"], yerr=[[est["value"] - est["ci"][0]], [est["ci"][1] - est["value"]]],
                            fmt="o", color=color, capsize=4)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(labels)), labels, fontsize=plots.MIN_FONT)
        ax.set_xlim(-0.6, len(labels) - 0.4)
        ax.set_ylabel("accuracy points")
    from matplotlib.lines import Line2D

    keys = (("tab:red", "chosen latents"), ("tab:gray", "as many random latents"),
            ("tab:blue", "chosen latents ablated in sft"))
    fig.legend([Line2D([], [], marker="o", ls="", color=c) for c, _ in keys], [label for _, label in keys],
               loc="lower center", ncol=2, fontsize=plots.MIN_FONT)
    fig.suptitle(f"Causal test on {cz['n_problems']} held-out problems (paired 95% intervals)")
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    return fig


def caption_causal(result: dict, target: str = STUDY) -> str:
    """The causal test's caption: per set of latents, the accuracy drop when ablating them in RLVR beside as many
    random latents and the same latents in SFT, and the gain of transplanting them into SFT."""
    cz = result.get("causal", {}).get(target)
    if not cz:
        return f"Causal test of the crosscoder latents on {target}: not measured on this run."
    text = (f"Greedy accuracy change (points) on {cz.get('n_problems', 'the')} held-out problems when latents are "
            "edited, beside as many random latents.")
    parts = []
    for set_name, what in (("specific", "specific latents"), ("leaning", "most RLVR-leaning latents")):
        c = cz.get(set_name) or {}
        n = c.get("latents_per_seed") or []
        if not any(n):
            parts.append(f"No {what} on this run: nothing edited")
            continue
        drop, random = c.get("ablate_drop"), c.get("ablate_random_drop")
        compare = "beside"
        if drop and random and drop.get("ci") and random.get("ci") and None not in drop["ci"] + random["ci"]:
            compare = "above" if drop["ci"][0] > random["ci"][1] else "not above"
        parts.append(f"{captions.names(map(str, dict.fromkeys(n)))} {what}: the drop when ablating them in {target} "
                     f"is {captions.change(drop)}, {compare} the random latents' {captions.change(random)} (the same "
                     f"latents in {REFERENCE}: {captions.change(c.get('ablate_reference_drop'))}); the gain when "
                     f"transplanting them into {REFERENCE}: {captions.change(c.get('transplant_gain'))}")
    return " ".join([text, *(p + "." for p in parts)])


def plot_scaling(result: dict, seed: int = 0):
    """Relative decoder norm against Latent Scaling's nu_error for each SFT->treatment pair (first seed)."""
    import matplotlib.pyplot as plt

    keys = [k for k, p in result["pairs"].items() if p["reference"] == REFERENCE][:4]
    rows, cols = plots.grid(len(keys))
    fig, axes = plt.subplots(rows, cols, figsize=(plots.PAGE_WIDTH, 2.7 * rows + 0.4), sharex=True, sharey=True,
                             squeeze=False)
    plots.drop_unused(axes, len(keys))
    s = result["settings"]
    for ax, key in zip(axes.flat, keys):
        rec = result["pairs"][key]["seeds"][seed]
        pts = [(r, v) for r, v, n in zip(rec["rel_norm"], rec["nu_error"], rec["count"]) if n > 0 and v is not None]
        if pts:
            r, v = np.array(pts).T
            ax.scatter(r, np.clip(v, -0.5, 1.5), s=8, alpha=0.6)
        else:
            plots.say_missing(ax, "no live latent with a ν_error")
        ax.axvline(s["specific_threshold"], color="tab:red", ls="--", lw=1)
        ax.axhline(s["presence_threshold"], color="tab:red", ls="--", lw=1)
        ax.set_xlim(0, 1)
        ax.set_title(pair_label(key), fontsize=plots.MIN_FONT)
    for ax in axes[-1]:
        ax.set_xlabel("relative decoder norm")
    for row in axes:
        row[0].set_ylabel("ν_error (clipped)")
    fig.tight_layout()
    return fig


def caption_scaling(result: dict, seed: int = 0) -> str:
    """Latent Scaling's caption: per SFT -> treatment pair drawn, the live latents in the specific box (relative
    norm beyond the threshold and ν_error below the presence threshold) and those beyond the norm threshold only."""
    pairs, s = result.get("pairs", {}), result.get("settings", {})
    keys = [k for k, p in pairs.items() if p.get("reference") == REFERENCE][:4]
    text = f"Relative decoder norm against Latent Scaling's ν_error for each live latent (seed {seed})"
    if not keys or s.get("specific_threshold") is None or s.get("presence_threshold") is None:
        return text + ": not measured on this run."
    text += (f"; dashed: relative norm {fmt.number(s['specific_threshold'])}, ν_error "
             f"{fmt.number(s['presence_threshold'])}.")
    parts = []
    for key in keys:
        seeds = pairs[key].get("seeds", [])
        if len(seeds) <= seed:
            continue
        rec = seeds[seed]
        right = [v for r, v, n in zip(rec["rel_norm"], rec["nu_error"], rec["count"])
                 if n > 0 and v is not None and r is not None and r > s["specific_threshold"]]
        box = sum(v < s["presence_threshold"] for v in right)
        parts.append(f"{pairs[key]['target']} {box}" + (f" (and {len(right) - box} beyond the norm threshold "
                                                       "with a high ν_error)" if len(right) > box else ""))
    if not parts:
        return text + " Not measured on this run."
    return text + " Latents in the lower-right (specific) box: " + ", ".join(parts) + "."


def readings_frame(result: dict):
    """One row per read latent, four columns so it fits a phone's width: which latent, its diagnostics, its top
    contexts and the tokens its decoder promotes and suppresses through the logit lens."""
    import pandas as pd

    rows = []
    for kind, latents in result.get("readings", {}).items():
        for r in latents:
            ctx = " | ".join(f"…{c['context']}[{c['token']}]→{c['next']!r}" for c in r["contexts"][:3])
            rows.append({"latent": f"{kind} #{r['latent']}",
                         "relative norm · ν_error · frequency": " · ".join(
                             fmt.number(r[k]) for k in ("rel_norm", "nu_error", "frequency")),
                         "top contexts": ctx,
                         "logit lens": f"promotes {' '.join(map(repr, r['promotes']))}; "
                                       f"suppresses {' '.join(map(repr, r['suppresses']))}"})
    return pd.DataFrame(rows)


def _fmt(est: dict) -> str:
    return fmt.interval(est["value"], est["ci"], sign=True)


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
