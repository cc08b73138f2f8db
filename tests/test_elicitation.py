"""The elicitation experiment: `python -m rlvr_utils elicit` trains a sub-run per (share, seed), resumes and skips
what is up to date, and writes metrics/elicitation.json; its numbers (two-level bootstrap, slope), its reading and
its figure are checked on planted per-problem answers where the right answer is known."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from rlvr_utils.__main__ import main
from rlvr_utils.core import captions, stats
from rlvr_utils.core.config import ParamsError, load
from rlvr_utils.experiments import elicitation, elicitation_runs

ROOT = Path(__file__).resolve().parents[1]

# Smaller than params/ci.yaml: one layer, a few optimizer steps per stage. The models learn nothing; the test checks
# the experiment's plumbing (sub-runs, stamps, resume, the result's structure), the planted tests its numbers.
TINY = {
    "organism": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2, "vocab_size": 200,
                 "corpus_documents": 300, "pretrain_steps": 4, "pretrain_batch_size": 8, "warmup_steps": 1},
    "data": {"n_sft": 64, "n_grpo": 16, "n_eval": 12, "n_validation": 8},
    "sft": {"steps": 3, "batch_size": 8, "stop_metric": None},
    "grpo": {"steps": 2, "per_device_train_batch_size": 8, "num_generations": 4, "max_completion_length": 12,
             "save_steps": 1},
    "evaluation": {"n_problems": 12, "max_new_tokens": 12, "n_bootstrap": 50},
    "extract": {"n_problems": 8},
}


def tiny_params(tmp_path: Path, **extra) -> Path:
    raw = {"name": "tiny", "runs_dir": str(tmp_path / "runs"), **TINY, **extra}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def planted(gains: dict[float, float], seeds=(0, 1), n=400, base=0.5, seed=0) -> dict:
    """Per-problem answers whose RLVR - SFT gain at each share is `gains[share]`: RLVR turns a random `gain /
    (1 - base)` of SFT's wrong answers right."""
    rng = np.random.default_rng(seed)
    out = {}
    for f, gain in gains.items():
        for s in seeds:
            sft = (rng.random(n) < base).astype(float)
            rlvr = np.where(rng.random(n) < gain / (1 - base), 1.0, sft)
            out[(f, s)] = {"sft": sft, "rlvr": rlvr}
    return out


def test_elicit_trains_each_share_evaluates_resumes_and_skips_what_is_up_to_date(tmp_path, capsys):
    """Two sub-runs of three tiny trainings each, then the command twice more: ~25 s on one thread."""
    params = tiny_params(tmp_path)
    assert main(["elicit", "--params", str(params), "--fractions", "0", "0.5", "--seeds", "0"]) == 0
    runs = tmp_path / "runs"
    result_path = runs / "tiny" / "metrics" / "elicitation.json"
    result = json.loads(result_path.read_text())
    printed = capsys.readouterr().out
    assert "Reading: **" in printed and "written:" in printed

    # each sub-run is the params file with the share and the seed changed, and its own models and answers
    for f in ("0", "0.5"):
        sub = runs / f"tiny-elicit-f{f}-s0"
        cfg = load(sub / "params.yaml")
        assert cfg.data.corpus_new_verbs == float(f) and cfg.seed == 0 and cfg.organism.pretrain_steps == 4
        for stage in ("base", "sft", "rlvr"):
            assert (sub / "models" / stage / "model.safetensors").is_file()
        assert len((sub / "eval" / "rlvr_greedy.jsonl").read_text().splitlines()) == 12
    # the two bases were pretrained on different corpora: different weights
    bases = [(runs / f"tiny-elicit-f{f}-s0" / "models" / "base" / "model.safetensors").read_bytes() for f in ("0", "0.5")]
    assert bases[0] != bases[1]

    assert result["fractions"] == [0.0, 0.5] and result["seeds"] == [0] and result["label"] in elicitation.MEANING
    assert [(r["fraction"], r["seed"]) for r in result["runs"]] == [(0.0, 0), (0.5, 0)]
    for r in result["runs"]:
        assert r["n_problems"] == 12 and r["run"] == f"tiny-elicit-f{r['fraction']:g}-s0"
        assert all(v is not None and v >= 0 for v in r["seconds"].values()), r["seconds"]
        for key in ("sft", "rlvr", "gain"):
            est = r[key]
            assert est["interval"] == "bootstrap" and est["ci"][0] <= est["value"] <= est["ci"][1], (key, est)
        assert r["gain"]["value"] == pytest.approx(r["rlvr"]["value"] - r["sft"]["value"])
    for b in result["by_fraction"]:
        assert b["gain"]["interval"] == "seeds" and b["gain"]["n"] == 1
        assert b["gain_bootstrap"]["interval"] == "bootstrap"
    assert result["slope"]["interval"] == "bootstrap"
    gains = [b["gain"]["value"] for b in result["by_fraction"]]
    assert result["slope"]["value"] == pytest.approx((gains[1] - gains[0]) / 0.5)  # two points: the line through them

    # a second call is up to date: nothing retrained, re-evaluated or rewritten
    watched = [p for p in runs.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".jsonl", ".json")]
    before = {p: p.stat().st_mtime_ns for p in watched}
    assert main(["elicit", "--params", str(params), "--fractions", "0", "0.5", "--seeds", "0"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("up to date") >= 2 * 5 + 1, printed  # 3 trainings + 2 evaluations per sub-run, the result
    assert {p: p.stat().st_mtime_ns for p in watched} == before

    # an interrupted evaluation (its answers gone) is redone alone; the result is recomputed from the same answers
    sub = runs / "tiny-elicit-f0.5-s0"
    (sub / "eval" / "rlvr_greedy.jsonl").unlink()
    assert main(["elicit", "--params", str(params), "--fractions", "0", "0.5", "--seeds", "0"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("evaluated in") == 1 and "trained " not in printed
    assert (sub / "models" / "rlvr" / "model.safetensors").stat().st_mtime_ns == before[sub / "models" / "rlvr" / "model.safetensors"]
    again = json.loads(result_path.read_text())
    assert [r["gain"] for r in again["runs"]] == [r["gain"] for r in result["runs"]]  # greedy answers: the same


def test_bad_settings_and_params_are_refused_naming_the_key(tmp_path, capsys):
    params = tiny_params(tmp_path)
    assert main(["elicit", "--params", str(params), "--fractions", "0.5", "--seeds", "0"]) == 2
    assert "fractions" in capsys.readouterr().err  # one share is no curve
    assert main(["elicit", "--params", str(params), "--fractions", "0", "1.5"]) == 2
    assert "outside 0..1" in capsys.readouterr().err
    assert main(["elicit", "--params", str(params), "--fractions", "0", "0.5", "--seeds", "1", "1"]) == 2
    assert "one seed twice" in capsys.readouterr().err
    same = tiny_params(tmp_path, data={**TINY["data"], "rl_verbs": "old"})
    with pytest.raises(ParamsError, match="data.rl_verbs"):
        elicitation_runs.run(same, [0.0, 0.5], [0])
    assert not (tmp_path / "runs").exists()  # refused before anything was trained or written


def test_a_sub_run_is_the_params_file_with_share_seed_and_name_changed(tmp_path):
    params = tiny_params(tmp_path, seed=7)
    cfg = load(params)
    path = elicitation_runs.sub_params(params, cfg, 0.05, 1)
    assert path == tmp_path / "runs" / "tiny-elicit-f0.05-s1" / "params.yaml"
    sub = load(path)
    assert (sub.name, sub.seed, sub.data.corpus_new_verbs) == ("tiny-elicit-f0.05-s1", 1, 0.05)
    assert sub.data.n_sft == cfg.data.n_sft and sub.grpo == cfg.grpo and sub.organism == cfg.organism
    stamp = path.stat().st_mtime_ns
    elicitation_runs.sub_params(params, cfg, 0.05, 1)  # unchanged: not rewritten
    assert path.stat().st_mtime_ns == stamp


def test_the_two_level_bootstrap_resamples_seeds_and_problems():
    """One seed: a bootstrap over problems (stats.bootstrap's width); two seeds far apart: the interval covers
    both (the seed level); no noise anywhere: no width."""
    rng = np.random.default_rng(1)
    run = (rng.random(300) < 0.3).astype(float)
    one = elicitation.two_level_draws([[run]], 4000, seed=0)[:, 0]
    ref = stats.bootstrap(run, n_bootstrap=4000, seed=5)["ci"]
    assert np.mean(one) == pytest.approx(run.mean(), abs=0.005)
    assert np.ptp(stats.interval(one)) == pytest.approx(np.ptp(ref), rel=0.15)
    far = elicitation.two_level_draws([[np.zeros(300), np.ones(300)]], 4000, seed=0)[:, 0]
    assert stats.interval(far) == (0.0, 1.0)  # a quarter of the draws take one seed twice
    flat = elicitation.two_level_draws([[np.full(50, 0.2), np.full(80, 0.2)]], 500, seed=0)
    assert np.all(flat == pytest.approx(0.2))


def test_the_slope_interval_is_a_bootstrap_that_finds_a_planted_slope_and_not_a_flat_one():
    fractions = (0.0, 0.05, 0.2, 0.5)
    rising = elicitation.summarize(planted({f: 0.4 * f for f in fractions}), n_bootstrap=1000)
    slope = rising["slope"]
    assert slope["interval"] == "bootstrap" and slope["n"] == 8
    assert slope["ci"][0] > 0 and slope["ci"][0] < 0.4 < slope["ci"][1]  # covers the planted 0.4 per unit share
    # the interval is the percentile interval of the slope over the same two-level draws
    correct = planted({f: 0.4 * f for f in fractions})
    groups = [[correct[(f, s)]["rlvr"] - correct[(f, s)]["sft"] for s in (0, 1)] for f in fractions]
    draws = elicitation.two_level_draws(groups, 1000, seed=0)
    assert slope["ci"] == pytest.approx(list(stats.interval(elicitation.ols_slope(fractions, draws))))
    # another bootstrap seed moves the interval a little, not the estimate
    other = elicitation.summarize(correct, n_bootstrap=1000, seed=3)["slope"]
    assert other["value"] == slope["value"] and other["ci"] != slope["ci"]
    flat = elicitation.summarize(planted({f: 0.15 for f in fractions}), n_bootstrap=1000)["slope"]
    assert flat["ci"][0] < 0 < flat["ci"][1]
    more = elicitation.summarize(planted({f: 0.15 for f in fractions}, n=1600), n_bootstrap=1000)["slope"]
    assert np.ptp(more["ci"]) < np.ptp(flat["ci"])  # more problems, a narrower interval


def test_per_share_summaries_carry_the_seed_range_and_paired_intervals():
    correct = planted({0.0: 0.0, 0.5: 0.2}, seeds=(0, 1, 2))
    result = elicitation.summarize(correct, n_bootstrap=500)
    assert result["seeds"] == [0, 1, 2] and len(result["runs"]) == 6
    top = result["by_fraction"][1]
    per_seed = [r["gain"]["value"] for r in result["runs"] if r["fraction"] == 0.5]
    assert top["gain"] == {"value": pytest.approx(np.mean(per_seed)), "ci": [min(per_seed), max(per_seed)],
                           "interval": "seeds", "n": 3}
    for r in result["runs"]:
        c = correct[(r["fraction"], r["seed"])]
        assert r["gain"]["ci"] == list(stats.paired_difference(c["rlvr"], c["sft"], n_bootstrap=500, seed=r["seed"])["ci"])
    assert result["retained_share"]["value"] == pytest.approx(result["by_fraction"][0]["gain"]["value"] / top["gain"]["value"])
    with pytest.raises(ValueError, match="same problems"):
        elicitation.summarize({(0.0, 0): {"sft": np.ones(3), "rlvr": np.ones(4)}, (0.5, 0): correct[(0.5, 0)]})
    with pytest.raises(ValueError, match="two shares"):
        elicitation.summarize({(0.5, 0): correct[(0.5, 0)]})


@pytest.mark.parametrize("gains, expected", [
    ({0.0: 0.0, 0.05: 0.02, 0.2: 0.08, 0.5: 0.2}, elicitation.ELICITED),
    ({0.0: 0.1, 0.05: 0.11, 0.2: 0.15, 0.5: 0.3}, elicitation.PARTLY),
    ({0.0: 0.2, 0.05: 0.2, 0.2: 0.2, 0.5: 0.2}, elicitation.LEARNED),
    ({0.0: 0.0, 0.05: 0.0, 0.2: 0.0, 0.5: 0.0}, elicitation.NO_GAIN),
])
def test_the_reading_follows_the_numbers(gains, expected):
    result = elicitation.summarize(planted(gains, n=600), n_bootstrap=1000)
    assert elicitation.label(result) == expected
    text = elicitation.reading(result)
    assert f"Reading: **{expected}**" in text and elicitation.MEANING[expected] in text
    low, high = result["by_fraction"][0]["gain_bootstrap"], result["by_fraction"][-1]["gain_bootstrap"]
    for est in (low, high):  # the numbers it quotes are the result's, in points
        assert f"{100 * est['value']:+.1f} [{100 * est['ci'][0]:+.1f}, {100 * est['ci'][1]:+.1f}]" in text
    assert f"{10 * result['slope']['value']:+.1f}" in text
    assert "two seeds" in text  # the caveat of a two-seed experiment
    caption = elicitation.caption(result)  # the figure's caption: the same ends, slope and label
    assert caption.endswith(f": {expected}.") and captions.estimate(low, scale=100, unit=" points", sign=True) in caption


def test_the_reading_names_a_smallest_share_above_zero_and_a_single_seed():
    result = elicitation.summarize(planted({0.2: 0.0, 0.5: 0.2}, seeds=(0,)), n_bootstrap=300)
    text = elicitation.reading(result)
    assert "smallest share tried is 20%, not 0" in text and "one seed" in text


def test_the_figure_shows_every_run_and_the_mean_per_share(tmp_path):
    import matplotlib

    matplotlib.use("Agg")  # a test, not a notebook: no display
    result = elicitation.summarize(planted({0.0: 0.0, 0.2: 0.1, 0.5: 0.2}), n_bootstrap=200)
    path = tmp_path / "elicitation.json"
    path.write_text(json.dumps(result))
    fig = elicitation.plot(path)  # from the file, as a chapter reads it
    gain_ax, acc_ax = fig.axes
    points = [line for line in gain_ax.lines if line.get_marker() == "o"]
    assert len(points) == 2 and all(len(line.get_xdata()) == 3 for line in points)  # two seeds, three shares each
    mean = next(line for line in gain_ax.lines if line.get_marker() == "s")
    assert list(mean.get_ydata()) == pytest.approx([100 * b["gain"]["value"] for b in result["by_fraction"]])
    assert "gain" in gain_ax.get_title() and "Accuracy" in acc_ax.get_title()
    assert len([line for line in acc_ax.lines if line.get_marker() == "o"]) == 2  # SFT and RLVR
    fig.savefig(tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 10_000


def test_a_chapter_reruns_when_the_result_changes(tmp_path):
    """A chapter cell that imports the module gets its `outside_inputs` (the runner hashes them into the chapter's
    key), and reads no params section: showing the result depends on the result only."""
    from rlvr_utils.core import deps

    modules = deps.notebook_modules(["from rlvr_utils.experiments import elicitation"])
    assert [m for m in deps.closure(modules) if deps.defines(m, "outside_inputs")] == [elicitation.__name__]
    assert set(deps.sections(modules)) == set(deps.ALWAYS)
    cfg = load(tiny_params(tmp_path))
    assert elicitation.load(cfg) is None
    before = elicitation.outside_inputs(cfg)
    assert list(before.values()) == [None]
    cfg.path("metrics").mkdir(parents=True)
    cfg.path("metrics", elicitation.RESULT).write_text(json.dumps({"fractions": [0, 0.5]}))
    after = elicitation.outside_inputs(cfg)
    assert list(after) == list(before) and list(after.values())[0] is not None
    assert elicitation.load(cfg) == {"fractions": [0, 0.5]}


def test_the_reading_says_how_much_reward_signal_grpo_had_at_each_end(tmp_path):
    """At a low share SFT rarely answers right, so most GRPO groups are rewarded alike and teach nothing: the reading
    quotes the share of groups with a reward spread (from TRL's frac_reward_zero_std) and says what that confounds."""
    from rlvr_utils.core import config
    from rlvr_utils.experiments import elicitation_runs

    sub = config.from_dict({"name": "sub", "runs_dir": str(tmp_path)})
    assert elicitation_runs.grpo_signal(sub) is None  # not trained yet
    sub.path("metrics").mkdir(parents=True)
    sub.path("metrics", "train_rlvr.json").write_text(json.dumps({"log_history": [
        {"frac_reward_zero_std": 0.9}, {"frac_reward_zero_std": 0.7}, {"loss": 0.1}]}))
    assert elicitation_runs.grpo_signal(sub) == pytest.approx(0.2)

    result = elicitation.summarize(planted({0.0: 0.0, 0.05: 0.02, 0.2: 0.08, 0.5: 0.2}), n_bootstrap=300)
    assert "reward signal" not in elicitation.reading(result)  # nothing recorded: nothing said
    for r in result["runs"]:
        r["grpo_signal"] = {0.0: 0.2, 0.5: 0.85}.get(r["fraction"], 0.5) + 0.02 * r["seed"]
    text = elicitation.reading(result)
    assert "21% of its groups did at 0% and 86% at 50%" in text and "missing reward signal" in text
