"""Elicitation: RLVR's gain over SFT as a function of how much of the evaluation's wording pretraining saw.

The RLVR literature calls RLVR "re-routing" (eliciting) when it only brings out what pretraining already put in the
model, and tests it by behaviour: train the same recipe on bases that saw less of what the task needs. Here the
organism's evaluation and GRPO problems use verbs that SFT never sees, and `data.corpus_new_verbs` is the share of
the pretraining corpus's worked stories told with them. If RLVR elicits, its gain shrinks to nothing as that share
goes to 0; if RLVR learns the new wording itself, the gain stays.

`python -m rlvr_utils elicit` (rlvr_utils.experiments.elicitation_runs) trains base, SFT and RLVR for each share and
seed and hands their greedy answers to `summarize`; this module also draws the result (`plot`) and says what it
means (`reading`). It reads only metrics/elicitation.json, so a chapter that shows it depends on nothing else.

Intervals, all at the run's confidence level:
  - one sub-run (share, seed): percentile bootstrap over its held-out problems, paired for RLVR - SFT;
  - one share over seeds: the mean with the [min, max] range over seeds (interval 'seeds'), and a two-level
    bootstrap (seeds drawn with replacement within the share, then each drawn seed's problems: the hierarchical
    bootstrap of Davison & Hinkley 1997, sec. 3.8), which carries both seed-to-seed and problem-to-problem noise;
  - the slope of the gain against the share (least squares on the per-share means): the same two-level draws.
With one seed per share the two-level bootstrap is a bootstrap over problems only and misses seed-to-seed noise;
with two it is coarse (half the draws repeat one seed): the reading says so.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from rlvr_utils.core import artifacts, stats
from rlvr_utils.core.estimate import Estimate

RESULT = "elicitation.json"  # under the main run's metrics/

# What the curve says (`label`), and what that means for the two hypotheses
ELICITED, PARTLY, LEARNED, NO_GAIN = "elicited", "partly elicited", "learned", "no gain"
MEANING = {
    ELICITED: "RLVR brings out what pretraining put there: the behavioural signature the RLVR literature calls "
              "re-routing, on the Routing side (RLVR adds no new ability, it makes a latent one the default)",
    PARTLY: "Both: part of the gain needs pretraining's exposure (elicited) and part appears without it (learned "
            "during RLVR), so neither hypothesis alone accounts for the behaviour",
    LEARNED: "RLVR gains without pretraining having seen the new wording: it learns something pretraining did not "
             "put there, the behavioural side of Representation learning",
    NO_GAIN: "Neither: RLVR does not measurably beat SFT at these shares, so there is no gain to attribute",
}


# --- the numbers ---------------------------------------------------------------------------------------
def ols_slope(x, y) -> np.ndarray:
    """Least-squares slope of y against x along y's last axis (one slope per row of a draws matrix)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    xc = x - x.mean()
    if not np.any(xc):
        raise ValueError(f"a slope needs at least two different shares, got {x.tolist()}")
    return (y - y.mean(axis=-1, keepdims=True)) @ xc / (xc @ xc)


def two_level_draws(groups: list[list[np.ndarray]], n_bootstrap: int, seed: int = 0) -> np.ndarray:
    """(n_bootstrap, len(groups)) bootstrap means of per-problem differences: per group (one share), its runs
    (seeds) drawn with replacement, then each drawn run's problems drawn with replacement, afresh for every slot
    (a seed drawn twice is resampled twice), and the drawn runs' means averaged."""
    rng = np.random.default_rng(seed)
    out = np.empty((n_bootstrap, len(groups)))
    rows = np.arange(n_bootstrap)
    for j, runs in enumerate(groups):
        if not runs or any(len(r) == 0 for r in runs):
            raise ValueError(f"share number {j} has no run or a run with no problems")
        k = len(runs)
        picks = rng.integers(0, k, size=(n_bootstrap, k))  # level 1: which seeds
        total = np.zeros(n_bootstrap)
        for slot in range(k):  # level 2: every run's problems resampled for this slot
            means = np.stack([np.asarray(r, dtype=float)[rng.integers(0, len(r), size=(n_bootstrap, len(r)))].mean(1)
                              for r in runs])
            total += means[picks[:, slot], rows]
        out[:, j] = total / k
    return out


def _over_seeds(values: list[float]) -> Estimate:
    return Estimate(float(np.mean(values)), (min(values), max(values)), "seeds", len(values))


def summarize(correct: Mapping[tuple[float, int], Mapping[str, np.ndarray]], n_bootstrap: int = 2000,
              confidence: float = 0.95, seed: int = 0) -> dict:
    """The elicitation result from per-problem greedy correctness: `correct[(share, seed)] = {"sft": 0/1 array,
    "rlvr": 0/1 array}` over the same problems in the same order. Per run: accuracies and the paired gain; per
    share: the mean gain with its seed range and its two-level bootstrap interval; the slope of the gain against
    the share; the share of the largest exposure's gain that remains at the smallest."""
    fractions = sorted({f for f, _ in correct})
    if len(fractions) < 2:
        raise ValueError(f"elicitation needs runs at two shares or more, got {fractions}: one point is no curve")
    runs, diffs = [], {f: [] for f in fractions}
    for (fraction, run_seed), acc in sorted(correct.items()):
        sft, rlvr = np.asarray(acc["sft"], dtype=float), np.asarray(acc["rlvr"], dtype=float)
        if sft.shape != rlvr.shape or sft.ndim != 1 or len(sft) == 0:
            raise ValueError(f"share {fraction:g}, seed {run_seed}: SFT and RLVR must be scored on the same problems "
                             f"(got {sft.shape} and {rlvr.shape})")
        boot = dict(n_bootstrap=n_bootstrap, confidence=confidence, seed=run_seed)
        n = len(sft)
        estimate = lambda d: Estimate(d["value"], tuple(d["ci"]), "bootstrap", n).to_json()  # noqa: E731
        runs.append({"fraction": fraction, "seed": run_seed, "n_problems": n,
                     "sft": estimate(stats.bootstrap(sft, **boot)), "rlvr": estimate(stats.bootstrap(rlvr, **boot)),
                     "gain": estimate(stats.paired_difference(rlvr, sft, **boot))})
        diffs[fraction].append(rlvr - sft)
    draws = two_level_draws([diffs[f] for f in fractions], n_bootstrap, seed)
    by_fraction = []
    for j, fraction in enumerate(fractions):
        mine = [r for r in runs if r["fraction"] == fraction]
        gains = [r["gain"]["value"] for r in mine]
        by_fraction.append({
            "fraction": fraction, "seeds": [r["seed"] for r in mine],
            "gain": _over_seeds(gains).to_json(),
            "gain_bootstrap": Estimate(float(np.mean(gains)), stats.interval(draws[:, j], confidence), "bootstrap",
                                       sum(r["n_problems"] for r in mine)).to_json(),
            "sft": _over_seeds([r["sft"]["value"] for r in mine]).to_json(),
            "rlvr": _over_seeds([r["rlvr"]["value"] for r in mine]).to_json()})
    means = np.array([b["gain"]["value"] for b in by_fraction])
    slope = Estimate(float(ols_slope(fractions, means)), stats.interval(ols_slope(fractions, draws), confidence),
                     "bootstrap", len(runs))
    top = Estimate.from_json(by_fraction[-1]["gain_bootstrap"])
    retained = Estimate.undefined(len(runs))
    if top.ci[0] > 0:  # a share of a gain that may be 0 means nothing
        retained = Estimate(means[0] / means[-1], stats.interval(draws[:, 0] / draws[:, -1], confidence), "bootstrap",
                            len(runs))
    return {"fractions": fractions, "seeds": sorted({s for _, s in correct}), "n_bootstrap": n_bootstrap,
            "confidence": confidence, "runs": runs, "by_fraction": by_fraction, "slope": slope.to_json(),
            "retained_share": retained.to_json(),
            "units": "accuracies and gains are fractions of problems (x100 = points); shares are fractions of the "
                     "corpus's worked stories; the slope is gain per unit share (x10 = points per 10 percentage "
                     "points of exposure)"}


# --- reading it ----------------------------------------------------------------------------------------
def load(cfg) -> dict | None:
    """The run's metrics/elicitation.json, or None when `python -m rlvr_utils elicit` has not written it."""
    path = cfg.path("metrics", RESULT)
    return artifacts.read_json(path) if path.is_file() else None


def outside_inputs(cfg) -> dict[str, str | None]:
    """The file a chapter showing the experiment reads but no chapter writes (the elicit command does), with its
    digest: the runner re-runs that chapter when the experiment is (re)computed."""
    path = cfg.path("metrics", RESULT)
    return {str(path): artifacts.digest(path)}


def _result(elicitation_json: dict | str | Path) -> dict:
    if isinstance(elicitation_json, dict):
        return elicitation_json
    return artifacts.read_json(elicitation_json)


def _positive(e: Estimate) -> bool:
    return e.defined and e.ci[0] > 0


def _negative(e: Estimate) -> bool:
    return e.defined and e.ci[1] < 0


def label(elicitation_json: dict | str | Path) -> str:
    """What the curve says, from the two-level intervals of the gain at the smallest and the largest share and of
    the slope: 'elicited' (no gain without exposure, a gain with it), 'partly elicited' (a gain without exposure
    that grows with it), 'learned' (a gain without exposure that does not grow), or 'no gain'."""
    result = _result(elicitation_json)
    low, high = (Estimate.from_json(result["by_fraction"][i]["gain_bootstrap"]) for i in (0, -1))
    slope = Estimate.from_json(result["slope"])
    if not _positive(low):
        return ELICITED if _positive(high) else NO_GAIN
    return PARTLY if _positive(slope) else LEARNED


def _points(e: Estimate, scale: float = 100.0) -> str:
    return f"{scale * e.value:+.1f} [{scale * e.ci[0]:+.1f}, {scale * e.ci[1]:+.1f}]"


def _share(f: float) -> str:
    return f"{100 * f:g}%"


def reading(elicitation_json: dict | str | Path) -> str:
    """What the experiment means for Routing vs Representation learning, in plain words, from its numbers."""
    result = _result(elicitation_json)
    first, last = result["by_fraction"][0], result["by_fraction"][-1]
    low, high = Estimate.from_json(first["gain_bootstrap"]), Estimate.from_json(last["gain_bootstrap"])
    slope, retained = Estimate.from_json(result["slope"]), Estimate.from_json(result["retained_share"])
    level, seeds = f"{result['confidence']:.0%}", result["seeds"]
    spread = lambda b: "{:+.1f} to {:+.1f}".format(*(100 * v for v in b["gain"]["ci"]))  # noqa: E731
    said = label(result)
    text = [
        f"**Elicitation.** RLVR's greedy gain over SFT is **{_points(low)} points** when pretraining told "
        f"{_share(first['fraction'])} of its worked stories in the evaluation's wording and **{_points(high)}** at "
        f"{_share(last['fraction'])} ("
        + (f"mean over {len(seeds)} seeds, {level} two-level bootstrap; seeds ranged {spread(first)} and "
           f"{spread(last)} points" if len(seeds) > 1 else f"one seed, {level} paired bootstrap over problems")
        + f"). Across the "
        f"{len(result['fractions'])} shares ({', '.join(_share(f) for f in result['fractions'])}) the fitted slope is "
        f"{_points(slope, 10.0)} points per 10 percentage points of exposure. SFT's own accuracy goes from "
        f"{100 * first['sft']['value']:.1f}% to {100 * last['sft']['value']:.1f}% and RLVR's from "
        f"{100 * first['rlvr']['value']:.1f}% to {100 * last['rlvr']['value']:.1f}% over the same range."]
    if said == ELICITED:
        how = ("and it grows with exposure (the slope's interval is above 0)" if _positive(slope) else
               "although with these seeds the slope's interval still includes 0")
        text.append(f"At {_share(first['fraction'])} the gain is not distinguishable from zero; at "
                    f"{_share(last['fraction'])} RLVR gains, {how}.")
    elif said == PARTLY:
        kept = (f" (the gain at {_share(first['fraction'])} is {retained.value:.2f} [{retained.ci[0]:.2f}, "
                f"{retained.ci[1]:.2f}] times the gain at {_share(last['fraction'])})" if retained.defined else "")
        text.append(f"RLVR gains even at {_share(first['fraction'])}, and more with exposure{kept}.")
    elif said == LEARNED:
        why = (" The gain even shrinks as exposure grows, as SFT's own accuracy rises and leaves less to gain."
               if _negative(slope) else " The slope's interval includes 0: exposure makes no measurable difference.")
        text.append(f"RLVR gains already at {_share(first['fraction'])}.{why}")
    text.append(f"Reading: **{said}**. {MEANING[said]}. The verdict shows this experiment beside its table and does "
                "not count it: no control with a known answer calibrates it.")
    signal = {f: [r["grpo_signal"] for r in result["runs"] if r["fraction"] == f and r.get("grpo_signal") is not None]
              for f in (first["fraction"], last["fraction"])}
    if all(signal.values()):
        low_signal, high_signal = (float(np.mean(v)) for v in signal.values())
        text.append(f"GRPO learns only from groups whose answers differ in reward: {low_signal:.0%} of its groups did "
                    f"at {_share(first['fraction'])} and {high_signal:.0%} at {_share(last['fraction'])}."
                    + (" Where SFT rarely answers right, RLVR also had less to learn from, so this experiment cannot "
                       "tell missing knowledge from missing reward signal at the low shares."
                       if low_signal < high_signal else ""))
    if result["fractions"][0] > 0:
        text.append(f"The smallest share tried is {_share(result['fractions'][0])}, not 0: a base that never met the "
                    "new wording is not measured.")
    if len(seeds) < 3:
        text.append("With " + ("one seed the intervals cover problem-to-problem noise only, not how much another "
                               "seed's training moves the gain" if len(seeds) == 1 else
                               "two seeds the seed level of the bootstrap is coarse (half its draws repeat one seed)")
                    + ": read the labels as provisional.")
    text.append("This is behaviour: it says whether RLVR's gain needs what pretraining put in the model, not which "
                "weights carry the change.")
    return " ".join(text)


def caption(elicitation_json: dict | str | Path) -> str:
    """The curve's ends, its slope and its label, for the figure."""
    from rlvr_utils.core.captions import estimate

    result = _result(elicitation_json)
    first, last = result["by_fraction"][0], result["by_fraction"][-1]
    points = dict(scale=100, unit=" points", sign=True)
    return (f"RLVR's greedy gain over SFT against the share of pretraining's worked stories told in the "
            f"evaluation's wording: {estimate(first['gain_bootstrap'], **points)} at {_share(first['fraction'])}, "
            f"{estimate(last['gain_bootstrap'], **points)} at {_share(last['fraction'])}, a slope of "
            f"{estimate(result['slope'], scale=10, unit=' points', sign=True)} per 10 percentage points "
            f"({len(result['seeds'])} seed{'s' if len(result['seeds']) > 1 else ''}): {label(result)}.")


def plot(elicitation_json: dict | str | Path):
    """Left: RLVR's gain over SFT against the share (each seed's run with its paired interval, the mean over seeds
    with its two-level interval, the fitted line); right: SFT's and RLVR's accuracy (mean and seed range)."""
    import matplotlib.pyplot as plt

    from rlvr_utils.core import fmt, plots
    from rlvr_utils.core.plots import STAGE_COLORS

    result = _result(elicitation_json)
    level = f"{result['confidence']:.0%}"
    # one panel above the other: side by side, each would be half the page's width and its text half as big
    fig, (ax, acc) = plt.subplots(2, 1, figsize=(plots.PAGE_WIDTH, 8.4))
    x = np.array([100 * b["fraction"] for b in result["by_fraction"]])
    seeds = result["seeds"]
    offsets = {s: (i - (len(seeds) - 1) / 2) * 0.006 * max(x.max(), 1.0) for i, s in enumerate(seeds)}
    palette = plt.get_cmap("tab10")
    for i, s in enumerate(seeds):
        mine = [r for r in result["runs"] if r["seed"] == s]
        xs = [100 * r["fraction"] + offsets[s] for r in mine]
        ys = np.array([100 * r["gain"]["value"] for r in mine])
        err = np.abs(np.array([[100 * r["gain"]["ci"][0] for r in mine], [100 * r["gain"]["ci"][1] for r in mine]]) - ys)
        ax.errorbar(xs, ys, yerr=err, fmt="o", ms=4, alpha=0.55, capsize=2, color=palette(i % 10),
                    label=f"seed {s} ({level} paired bootstrap)")
    mean = np.array([100 * b["gain"]["value"] for b in result["by_fraction"]])
    lo = np.array([100 * b["gain_bootstrap"]["ci"][0] for b in result["by_fraction"]])
    hi = np.array([100 * b["gain_bootstrap"]["ci"][1] for b in result["by_fraction"]])
    ax.errorbar(x, mean, yerr=[mean - lo, hi - mean], fmt="s-", color="black", capsize=5, lw=1.5,
                label=f"mean over seeds ({level} two-level bootstrap)")
    slope = result["slope"]
    grid = np.linspace(x.min(), x.max(), 50)
    ax.plot(grid, mean.mean() + slope["value"] * (grid - x.mean()), ls="--", color="0.4",
            label=f"fit: {fmt.interval(slope['value'], slope['ci'], scale=10, sign=True)} points per 10 pp")
    ax.axhline(0, color="0.3", lw=1)
    ax.set(xlabel="pretraining's worked stories in the new wording (%)", ylabel="RLVR − SFT greedy accuracy (points)",
           title="RLVR's gain over SFT")
    ax.set_xticks(x)
    ax.legend(fontsize=plots.MIN_FONT, loc="best")
    for stage in ("sft", "rlvr"):
        values = np.array([100 * b[stage]["value"] for b in result["by_fraction"]])
        low = [100 * b[stage]["ci"][0] for b in result["by_fraction"]]
        high = [100 * b[stage]["ci"][1] for b in result["by_fraction"]]
        acc.plot(x, values, marker="o", color=STAGE_COLORS[stage], label=f"{stage.upper()} (mean; band: seed range)")
        acc.fill_between(x, low, high, color=STAGE_COLORS[stage], alpha=0.2)
    acc.set(xlabel="pretraining's worked stories in the new wording (%)", ylabel="greedy accuracy (%)",
            title="Accuracy of SFT and RLVR", ylim=(0, 100))
    acc.set_xticks(x)
    acc.legend(fontsize=plots.MIN_FONT)
    fig.suptitle("Elicitation: RLVR's gain as pretraining sees more of the evaluation's wording")
    fig.tight_layout()
    return fig
