"""Dictionary transfer (SFT's sparse dictionary read on a treatment's activations) on planted dictionaries where
the answer is known: a new feature direction and a feature direction taken out leave a residue SFT's dictionary
cannot explain, while a change of the same size along SFT's own features, a tiny random change and an identical
copy do not; the excess and its interval against a naive computation; the fit/read split; the caption."""
import numpy as np
import pytest

from rlvr_utils.instruments.transfer import figures
from rlvr_utils.instruments.transfer.instrument import errors, excess_fvu, fit, normalised, split

D, FEATURES, N = 16, 40, 6000
TRAIN = dict(n_latents=64, k=3, steps=800, batch_size=256, lr=3e-3)


def _unit(m):
    return m / np.linalg.norm(m, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def world():
    """SFT: sparse features in superposition (40 directions in 16 dimensions), 20 tokens per problem, and the
    treatments built from it. Each dictionary is fitted on SFT's even problems and read on the odd ones."""
    g = np.random.default_rng(0)
    dirs = _unit(g.normal(size=(FEATURES, D)))
    coef = (g.random((N, FEATURES)) < 0.06) * g.uniform(0.5, 1.5, (N, FEATURES))
    sft = coef @ dirs + 0.01 * g.normal(size=(N, D))
    rows = np.repeat(np.arange(N // 20), 20)
    new = _unit(g.normal(size=(1, D)))[0]
    fires = g.random(N) < 0.15
    planted = sft + np.outer(fires * g.uniform(1.0, 1.5, N), new)
    removed = sft - np.outer(sft @ dirs[0], dirs[0])  # a feature's direction projected out of every token
    # a change along SFT's own features, as large in the activations as the planted feature's write
    gain = 1 + g.normal(scale=1.0, size=FEATURES)
    along = coef * gain @ dirs + 0.01 * g.normal(size=(N, D))
    scale = np.linalg.norm(planted - sft) / np.linalg.norm(along - sft)
    along = sft + scale * (along - sft)
    small = sft + 0.002 * g.normal(size=sft.shape)
    models = {"sft": sft, "identical": sft.copy(), "planted": planted, "removed": removed, "along": along,
              "small": small}
    models = {k: normalised(v.astype(np.float32)) for k, v in models.items()}
    fitted, held = split(rows)
    saes = [fit(models["sft"][fitted], seed=s, **TRAIN)[0] for s in (0, 1)]
    sums = {k: errors(saes, x[held], rows[held]) for k, x in models.items()}
    excess = {k: excess_fvu(sums["sft"], s, 500, 0.95, 0)[0] for k, s in sums.items()}
    return models, rows, saes, sums, excess


def test_the_split_never_puts_a_problem_on_both_sides():
    rows = np.repeat(np.arange(7), 3)
    fitted, held = split(rows)
    assert not (fitted & held).any() and (fitted | held).all()
    assert set(rows[fitted]).isdisjoint(rows[held]) and len(set(rows[held])) == 3


def test_a_new_or_lost_feature_direction_leaves_a_residue_and_a_change_along_sfts_features_does_not(world):
    *_, excess = world
    assert excess["identical"].value == 0 and excess["identical"].ci == (0, 0)
    quiet = max(excess[k].ci[1] for k in ("along", "small"))
    for name in ("planted", "removed"):
        assert excess[name].ci[0] > 0, (name, excess[name])
        assert excess[name].ci[0] > 3 * max(quiet, 1e-3), (name, excess[name], quiet)  # measured: 0.019 vs 0.004
    # the change along SFT's features is as large as the planted write, so this is not a measure of size
    models = world[0]
    assert np.linalg.norm(models["along"] - models["sft"]) > 0.5 * np.linalg.norm(models["planted"] - models["sft"])
    assert excess["along"].value < 0.2 * min(excess["planted"].value, excess["removed"].value)


def test_the_excess_is_the_difference_of_two_fvus_with_a_paired_interval(world):
    models, rows, saes, sums, excess = world
    fitted, held = split(rows)
    # naive reference: FVU = sum of squared errors / sum of squared distances from the mean, over held-out tokens
    x, y = models["sft"][held], models["planted"][held]

    def naive(z):
        import torch
        t = torch.from_numpy(np.ascontiguousarray(z[:, None, :]))
        err = np.mean([(s(t) - t).pow(2).sum().item() for s in saes])
        return err / ((z - z.mean(0)) ** 2).sum()
    assert excess["planted"].value == pytest.approx(naive(y) - naive(x), rel=1e-4)
    assert excess["planted"].n == len(set(rows[held])) and excess["planted"].interval == "bootstrap"
    lo, hi = excess["planted"].ci
    assert lo < excess["planted"].value < hi
    # the interval resamples problems for both models together: a shifted copy's interval is the shift's alone
    e_r, s_r = sums["sft"]
    same = excess_fvu((e_r, s_r), (e_r * 1.1, s_r), 500, 0.95, 0)[0]
    assert same.value == pytest.approx(0.1 * e_r.sum() / s_r.sum())
    assert same.ci[1] - same.ci[0] < 0.5 * same.value
    with pytest.raises(ValueError, match="same >= 2 problems"):
        excess_fvu((e_r, s_r), (e_r[:3], s_r[:3]), 10, 0.95, 0)


def test_the_caption_reads_rlvr_against_the_placebos_and_names_the_controls_above_them():
    e = lambda v, lo, hi: {"value": v, "ci": [lo, hi]}  # noqa: E731
    result = {"seeds": 2, "n_problems_read": 128,
              "summary": {"transfer_sft_fvu": e(0.011, 0.011, 0.011), "transfer_base_excess_fvu": e(0.43, 0.4, 0.46)},
              "variants": {"rlvr": {"dictionary_excess_fvu": e(3e-4, 2e-4, 4e-4)},
                           "planted_feature": {"dictionary_excess_fvu": e(0.03, 0.028, 0.033)},
                           "mlp_only": {"dictionary_excess_fvu": e(1e-4, 0.5e-4, 1.5e-4)},
                           "placebo_0": {"dictionary_excess_fvu": e(5e-4, 4e-4, 6e-4)},
                           "placebo_1": {"dictionary_excess_fvu": e(2e-4, 1e-4, 3e-4)},
                           "null_0": {"dictionary_excess_fvu": e(0.0, -1e-5, 1e-5)}}}
    kinds = {"rlvr": "study", "planted_feature": "control", "mlp_only": "control", "placebo_0": "placebo",
             "placebo_1": "placebo", "null_0": "null"}
    text = figures.caption_excess(result, kinds)
    assert "inside the placebos' range" in text and "above every null" in text
    assert "controls above every placebo: planted_feature 0.0300 [0.0280, 0.0330]" in text
    assert "mlp_only" not in text and "128 problems" in text and "0.43" in text
    fig = figures.plot_excess(result, kinds)
    assert len(fig.axes[0].get_yticklabels()) == 6
    del result["variants"]["rlvr"]
    assert figures.caption_excess(result, kinds).endswith("RLVR: not measured.")


def test_the_verdicts_row_reads_the_planted_controls_and_no_reference_as_evidence(tmp_path):
    """The row reads the key the instrument writes, high for Representation learning. With the default run's
    values (session 7), both planted controls read Representation learning, every placebo, null and the identical
    copy no evidence, and the row fails calibration only on the MLP-side controls, whose update leaves no residue."""
    from rlvr_utils.core import config
    from rlvr_utils.evidence import verdict
    from rlvr_utils.treatments.registry import NO_EVIDENCE, REPRESENTATION

    measured = {"rlvr": (2.8e-4, 2.4e-4, 3.3e-4), "attn_only": (0.7e-4, 0.4e-4, 1.1e-4),
                "mlp_only": (1.0e-4, 0.8e-4, 1.3e-4), "routing_hybrid": (1.0e-4, 0.6e-4, 1.5e-4),
                "routing_hybrid_matched": (1.4e-4, 1.0e-4, 1.8e-4), "representation_hybrid": (2.3e-4, 1.9e-4, 2.7e-4),
                "representation_hybrid_matched": (2.3e-4, 1.8e-4, 2.7e-4), "planted_feature": (0.031, 0.024, 0.040),
                "removed_feature": (0.025, 0.024, 0.026), "placebo_0": (5.0e-4, 4.4e-4, 5.6e-4),
                "placebo_1": (4.0e-4, 3.5e-4, 4.5e-4), "placebo_2": (0.9e-4, 0.2e-4, 1.6e-4),
                "placebo_0_matched": (6.1e-4, 5.5e-4, 6.8e-4), "placebo_1_matched": (5.4e-4, 4.8e-4, 6.0e-4),
                "placebo_2_matched": (2.4e-4, 1.6e-4, 3.3e-4), "identical": (0.0, 0.0, 0.0),
                "null_0": (0.0, -1e-6, 1e-5), "null_1": (1e-5, 0.0, 1e-5), "null_2": (0.0, -1e-6, 1e-5)}
    metrics = {"transfer.json": {"variants": {t: {"dictionary_excess_fvu": {"value": v, "ci": [lo, hi]}}
                                              for t, (v, lo, hi) in measured.items()}}}
    cfg = config.from_dict({"name": "tiny", "runs_dir": str(tmp_path)})
    table = verdict.evidence(metrics, verdict.Design.from_registry(cfg), cfg.verdict)
    row = table[table["file"] == "transfer.json"].iloc[0]
    assert row["readings"]["planted_feature"] == row["readings"]["removed_feature"] == REPRESENTATION
    references = [t for t in measured if t.startswith(("placebo", "null")) or t == "identical"]
    assert all(row["readings"][t] == NO_EVIDENCE for t in [*references, "rlvr", "attn_only"])
    problems = row["calibration"].split("; ")
    assert sorted(p.split(" ")[0] for p in problems) == ["mlp_only", "representation_hybrid",
                                                          "representation_hybrid_matched"], problems


def test_fit_returns_the_in_sample_fvu_of_the_dictionary_it_returns(world):
    import torch
    models, rows, *_ = world
    x = models["sft"][split(rows)[0]]
    sae, fvu = fit(x, **{**TRAIN, "steps": 50}, seed=3)
    t = torch.from_numpy(np.ascontiguousarray(x[:, None, :]))
    naive = (sae(t) - t).pow(2).sum().item() / ((x - x.mean(0)) ** 2).sum()
    assert 0 < fvu < 1 and fvu == pytest.approx(naive, rel=1e-5)
