"""CKA estimators against naive references, known values, invariances and the bias they exist to remove."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from scipy.stats import ortho_group

from rlvr_utils.core import fmt
from rlvr_utils.instruments import base
from rlvr_utils.instruments.cka import figures, instrument, maths


# --- naive references, written from the definitions -------------------------------------------------
def naive_hsic(K, L, debiased):
    n = len(K)
    if not debiased:  # tr(K H L H) / (n-1)^2
        H = np.eye(n) - np.ones((n, n)) / n
        return np.trace(K @ H @ L @ H) / (n - 1) ** 2
    Kt, Lt = K - np.diag(np.diag(K)), L - np.diag(np.diag(L))  # Song et al. 2012, eq. 5
    one = np.ones(n)
    return (np.trace(Kt @ Lt) + one @ Kt @ one * (one @ Lt @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ Kt @ Lt @ one) / (n * (n - 3))


def naive_cka(X, Y, debiased=False):
    K, L = X @ X.T, Y @ Y.T
    return naive_hsic(K, L, debiased) / np.sqrt(naive_hsic(K, K, debiased) * naive_hsic(L, L, debiased))


def u_statistic_hsic(K, L):
    """HSIC as the average over ordered distinct index quadruples: the definition of the unbiased estimator."""
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(len(K)), 4):
        total += K[i, j] * L[i, j] + K[i, j] * L[q, r] - 2 * K[i, j] * L[i, q]
        count += 1
    return total / count


def correlated(n, dx, dy, seed=0, noise=1.0):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, 6))
    X = Z @ rng.normal(size=(6, dx)) + noise * rng.normal(size=(n, dx)) + 3.0
    Y = Z @ rng.normal(size=(6, dy)) + noise * rng.normal(size=(n, dy)) - 1.0
    return X, Y



SHAPES = [(50, 8, 12), (10, 30, 20)]  # n > d (feature form) and n < d (Gram form)


# --- identities and known values ----------------------------------------------------------------------
@pytest.mark.parametrize("n,dx,dy", SHAPES)
@pytest.mark.parametrize("debiased", [False, True])
def test_self_similarity_is_one(n, dx, dy, debiased):
    X, _ = correlated(n, dx, dy)
    assert maths.linear_cka(X, X, debiased) == pytest.approx(1.0, abs=1e-12)
    assert maths.rbf_cka(X, X, debiased=debiased) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("n,dx,dy", SHAPES)
@pytest.mark.parametrize("debiased", [False, True])
def test_agrees_with_naive_gram_implementation(n, dx, dy, debiased):
    X, Y = correlated(n, dx, dy)
    assert maths.linear_cka(X, Y, debiased) == pytest.approx(naive_cka(X, Y, debiased), abs=1e-6)
    assert maths.cka_from_grams(X @ X.T, Y @ Y.T, debiased) == pytest.approx(naive_cka(X, Y, debiased), abs=1e-6)
    # tensors in, same answer
    assert maths.linear_cka(torch.tensor(X, dtype=torch.float32), torch.tensor(Y), debiased) == \
        pytest.approx(naive_cka(X, Y, debiased), abs=1e-5)


def test_feature_and_gram_forms_agree():
    X, Y = correlated(80, 10, 7, noise=2.0)
    for debiased in (False, True):
        feature = maths.linear_cka(X, Y, debiased)  # n > d: feature form
        gram = maths.cka_from_grams(X @ X.T, Y @ Y.T, debiased)
        assert feature == pytest.approx(gram, abs=1e-10)


def test_debiased_formula_is_the_u_statistic():
    X, Y = correlated(7, 3, 4)
    K, L = X @ X.T, Y @ Y.T
    expected = u_statistic_hsic(K, L) / np.sqrt(u_statistic_hsic(K, K) * u_statistic_hsic(L, L))
    assert maths.linear_cka(X, Y, debiased=True) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("n,dx,dy", SHAPES)
@pytest.mark.parametrize("debiased", [False, True])
def test_invariant_to_orthogonal_transform_scaling_and_shift(n, dx, dy, debiased):
    X, Y = correlated(n, dx, dy, noise=2.0)
    Q = ortho_group.rvs(dx, random_state=1)
    base = maths.linear_cka(X, Y, debiased)
    assert maths.linear_cka(X @ Q, Y, debiased) == pytest.approx(base, abs=1e-9)
    assert maths.linear_cka(7.5 * X, 0.01 * Y, debiased) == pytest.approx(base, abs=1e-9)
    assert maths.linear_cka(X + 100.0, Y, debiased) == pytest.approx(base, abs=1e-8)
    rbf = maths.rbf_cka(X, Y, debiased=debiased)
    assert maths.rbf_cka(3.0 * X @ Q, Y, debiased=debiased) == pytest.approx(rbf, abs=1e-9)


def test_not_invariant_to_arbitrary_linear_maps():
    X, Y = correlated(60, 5, 5, noise=2.0)
    A = np.diag([10.0, 1, 1, 1, 0.1])
    assert abs(maths.linear_cka(X @ A, Y) - maths.linear_cka(X, Y)) > 1e-3


def test_debiased_removes_the_small_n_inflation():
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(64, 512)), rng.normal(size=(64, 512))  # independent: true CKA is 0
    assert maths.linear_cka(X, Y) > 0.8
    assert abs(maths.linear_cka(X, Y, debiased=True)) < 0.05


def test_rbf_approaches_linear_for_wide_kernels():
    X, Y = correlated(40, 6, 5, noise=2.0)
    assert maths.rbf_cka(X, Y, sigma=200.0) == pytest.approx(maths.linear_cka(X, Y), abs=1e-3)
    with pytest.raises(ValueError, match="sigma"):
        maths.rbf_cka(X, Y, sigma=0)


def test_cka_matrix_matches_pairwise():
    rng = np.random.default_rng(3)
    for n, d in ((40, 6), (5, 9)):
        Xs = [rng.normal(size=(n, d)) for _ in range(3)]
        Ys = [X @ rng.normal(size=(d, d)) + rng.normal(size=(n, d)) for X in Xs[:2]]
        for debiased in (False, True):
            expected = [[maths.linear_cka(X, Y, debiased) for Y in Ys] for X in Xs]
            np.testing.assert_allclose(maths.cka_matrix(Xs, Ys, debiased), expected, atol=1e-12)


def test_cka_matrix_from_loaders_holds_two_matrices_and_gives_the_same_numbers():
    """The cross-layer matrix reads each layer when it needs it (real scale: every layer of two models in float64
    would be 49-99 GiB); the numbers are the in-memory form's, bit for bit."""
    rng = np.random.default_rng(4)
    Xs = [rng.normal(size=(50, 6)).astype(np.float32) for _ in range(3)]
    Ys = [X + rng.normal(size=(50, 6)).astype(np.float32) for X in Xs]
    loads = []

    def loader(M, k):
        def load():
            loads.append(k)
            return M
        return load

    for debiased in (False, True):
        lazy = maths.cka_matrix([loader(X, i) for i, X in enumerate(Xs)], [loader(Y, 9) for Y in Ys], debiased)
        np.testing.assert_array_equal(lazy, maths.cka_matrix(Xs, Ys, debiased))
    assert loads.count(0) == 2 * (1 + 1)  # per estimator: once for its self-similarity, once for its row of pairs
    with pytest.raises(ValueError, match="more rows than features"):
        maths.cka_matrix([lambda: Xs[0][:4]], [lambda: Ys[0][:4]], True)


# --- tiny n and bad input -------------------------------------------------------------------------------
def test_tiny_n_is_finite_or_a_clear_error():
    rng = np.random.default_rng(0)
    for n, debiased in ((4, True), (2, False), (3, False)):
        X, Y = rng.normal(size=(n, 5)), rng.normal(size=(n, 3))
        assert np.isfinite(maths.linear_cka(X, Y, debiased))
        assert np.isfinite(maths.rbf_cka(X, Y, debiased=debiased))
    with pytest.raises(ValueError, match="at least 4 samples, got n=3"):
        maths.linear_cka(rng.normal(size=(3, 5)), rng.normal(size=(3, 5)), debiased=True)
    with pytest.raises(ValueError, match="at least 2 samples"):
        maths.linear_cka(rng.normal(size=(1, 5)), rng.normal(size=(1, 5)))
    constant = np.ones((10, 4))
    for debiased in (False, True):
        assert maths.linear_cka(constant, rng.normal(size=(10, 4)), debiased) == 0.0
        assert maths.linear_cka(np.ones((50, 4)), rng.normal(size=(50, 4)), debiased) == 0.0


def test_bad_input_names_the_argument():
    X = np.zeros((5, 3))
    with pytest.raises(ValueError, match="same number of rows"):
        maths.linear_cka(X, np.zeros((6, 3)))
    with pytest.raises(ValueError, match="Y contains NaN"):
        maths.linear_cka(X, np.full((5, 3), np.nan))
    with pytest.raises(ValueError, match="X must be a 2-d array"):
        maths.linear_cka(np.zeros(5), X)
    with pytest.raises(ValueError, match="weights"):
        maths.linear_cka(X, X, weights=[1, 2])


# --- weights, bootstrap, permutation, minibatch ----------------------------------------------------------------
@pytest.mark.parametrize("n,dx,dy", SHAPES)
def test_integer_weights_equal_repeated_rows_for_the_biased_estimator(n, dx, dy):
    X, Y = correlated(n, dx, dy)
    w = np.random.default_rng(1).integers(0, 4, size=n)
    w[:2] = 1
    idx = np.repeat(np.arange(n), w)
    assert maths.linear_cka(X, Y, weights=w) == pytest.approx(maths.linear_cka(X[idx], Y[idx]), abs=1e-9)


@pytest.mark.parametrize("n,dx,dy", SHAPES)
def test_weighted_debiased_excludes_pairs_of_copies(n, dx, dy):
    """Reference: repeat rows, then zero every Gram entry pairing two copies of one row (not just the diagonal)."""
    X, Y = correlated(n, dx, dy)
    w = np.random.default_rng(2).integers(0, 3, size=n)
    w[:4] = 1
    idx = np.repeat(np.arange(n), w)
    same = idx[:, None] == idx[None, :]

    def hsic(K, L):
        K, L, N, one = np.where(same, 0, K), np.where(same, 0, L), len(K), np.ones(len(K))
        return (np.sum(K * L) + K.sum() * L.sum() / ((N - 1) * (N - 2)) - 2 / (N - 2) * one @ K @ L @ one) / (N * (N - 3))

    # rows are centred at the mean of the distinct rows (excluding copy pairs makes the estimator
    # only approximately shift-invariant, so the reference must centre the same way)
    Xr, Yr = (X - X.mean(0))[idx], (Y - Y.mean(0))[idx]
    K, L = Xr @ Xr.T, Yr @ Yr.T
    expected = hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))
    assert maths.linear_cka(X, Y, debiased=True, weights=w) == pytest.approx(expected, abs=1e-9)


def resampled_reference(X, Y, index, counts, debiased):
    """Build the resample explicitly: copies of each problem's rows; for the debiased estimator zero every
    Gram entry pairing a row with itself or rows of two copies of the same problem."""
    rows, problem, copy = [], [], []
    for p, c in enumerate(counts.astype(int)):
        for k in range(c):
            members = np.flatnonzero(index == p)
            rows += members.tolist()
            problem += [p] * len(members)
            copy += [k] * len(members)
    rows, problem, copy = np.array(rows), np.array(problem), np.array(copy)
    Xr, Yr = (X - X.mean(0))[rows], (Y - Y.mean(0))[rows]
    if not debiased:
        return maths.linear_cka(Xr, Yr)
    forbidden = (problem[:, None] == problem[None, :]) & (copy[:, None] != copy[None, :])
    forbidden |= np.eye(len(rows), dtype=bool)

    def hsic(K, L):
        K, L, N, one = np.where(forbidden, 0, K), np.where(forbidden, 0, L), len(K), np.ones(len(K))
        return (np.sum(K * L) + K.sum() * L.sum() / ((N - 1) * (N - 2)) - 2 / (N - 2) * one @ K @ L @ one) / (N * (N - 3))

    K, L = Xr @ Xr.T, Yr @ Yr.T
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


@pytest.mark.parametrize("n_problems,rows,d", [(12, 5, 6), (10, 1, 30), (6, 2, 20)])  # feature form; Gram form
@pytest.mark.parametrize("debiased", [False, True])
def test_bootstrap_resamples_problems(n_problems, rows, d, debiased, monkeypatch):
    X, Y = correlated(n_problems * rows, d, d + 2, noise=2.0)
    groups = np.repeat(np.arange(n_problems) * 7 + 3, rows)  # problem ids, rows of a problem together
    samples = maths.bootstrap_cka(X, Y, groups, n_bootstrap=8, debiased=debiased, seed=5)
    counts, index = maths.problem_counts(groups, 8, seed=5)
    expected = [resampled_reference(X, Y, index, c, debiased) for c in counts]
    np.testing.assert_allclose(samples, expected, atol=1e-9)
    assert (counts.sum(1) == n_problems).all()  # each resample draws n_problems problems
    assert len(np.unique(samples)) > 1
    if rows == 1:  # one row per problem: the same as weighting rows
        np.testing.assert_allclose(samples, [maths.linear_cka(X, Y, debiased, weights=c[index]) for c in counts],
                                   atol=1e-9)
    monkeypatch.setattr(maths, "GROUPED_BYTES", 0)  # the low-memory path gives the same numbers
    np.testing.assert_allclose(maths.bootstrap_cka(X, Y, groups, n_bootstrap=8, debiased=debiased, seed=5), samples,
                               atol=1e-9)


def test_bootstrap_is_not_inflated_by_repeated_problems():
    """Independent X and Y whose tokens cluster by problem: copying a problem's rows into a plain debiased
    estimate pairs each problem with itself and reads structure that is not there; the resampling
    estimator stays centred on the point estimate."""
    rng = np.random.default_rng(0)
    n_problems, rows, d = 40, 6, 64
    groups = np.repeat(np.arange(n_problems), rows)
    X = rng.normal(size=(n_problems, d))[groups] + 0.3 * rng.normal(size=(n_problems * rows, d))
    Y = rng.normal(size=(n_problems, d))[groups] + 0.3 * rng.normal(size=(n_problems * rows, d))
    point = maths.linear_cka(X, Y, debiased=True)
    samples = maths.bootstrap_cka(X, Y, groups, n_bootstrap=40, debiased=True)
    assert abs(samples.mean() - point) < 0.03
    copied = []
    for draw in np.random.default_rng(1).integers(0, n_problems, size=(10, n_problems)):
        idx = np.concatenate([np.flatnonzero(groups == p) for p in draw])
        copied.append(maths.linear_cka(X[idx], Y[idx], debiased=True))
    assert np.mean(copied) - point > 0.1


def test_permutation_baseline():
    X, Y = correlated(60, 5, 5, noise=0.5)
    values = maths.permutation_cka(X, Y, n_permutations=30, debiased=True, seed=4)
    rng = np.random.default_rng(4)
    expected = [maths.linear_cka(X, Y[rng.permutation(60)], debiased=True) for _ in range(30)]
    np.testing.assert_allclose(values, expected, atol=1e-10)
    assert abs(values.mean()) < 0.1 < maths.linear_cka(X, Y, debiased=True)
    Xs, Ys = X[:8], np.hstack([Y[:8]] * 3)  # Gram form path
    values = maths.permutation_cka(Xs, Ys, n_permutations=5, debiased=False, seed=2)
    rng = np.random.default_rng(2)
    np.testing.assert_allclose(values, [maths.linear_cka(Xs, Ys[rng.permutation(8)]) for _ in range(5)], atol=1e-10)


def test_minibatch_cka():
    X, Y = correlated(2000, 6, 9, noise=2.0)
    assert maths.minibatch_cka([(X, Y)]) == pytest.approx(maths.linear_cka(X, Y, debiased=True), abs=1e-12)
    batches = [(X[i:i + 100], Y[i:i + 100]) for i in range(0, 2000, 100)]
    assert maths.minibatch_cka(batches) == pytest.approx(maths.linear_cka(X, Y, debiased=True), abs=0.02)
    # the biased per-batch average is pulled up by small batches; the debiased one is not
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(2000, 64)), rng.normal(size=(2000, 64))
    small = [(A[i:i + 40], B[i:i + 40]) for i in range(0, 2000, 40)]
    assert abs(maths.minibatch_cka(small)) < 0.02 < 0.5 < maths.minibatch_cka(small, debiased=False)
    with pytest.raises(ValueError, match="no batches"):
        maths.minibatch_cka([])


# --- the run-level comparison on a real (tiny) activation store ----------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlvr_utils import activations as act

    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 64, size=int(rng.integers(8, 14))).tolist() for _ in range(24)]
    cache = act.TokenCache(seqs, [4] * 24, list(range(24)), "gold", 0)
    folder = tmp_path_factory.mktemp("activations")
    config = AutoConfig.for_model("qwen2", vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, num_key_value_heads=1)
    for stage, seed in (("base", 0), ("sft", 0), ("rlvr", 1)):  # sft is a copy of base
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config).eval()
        act.extract(model, cache, folder, stage, positions=["completion"], shard_size=10)
    return act.ActivationStore(folder)


def test_compare_stages(store):
    result = instrument.compare_stages(store, "completion", n_bootstrap=30, n_permutations=4)
    summary = result["summary"]
    for pair in ("base_sft", "base_rlvr", "sft_rlvr"):
        for site in ("attn_out", "mlp_out", "resid_post"):
            entry = summary[f"cka_{pair}_{site}"]
            assert entry["ci"][0] <= entry["value"] <= entry["ci"][1] and entry["description"]
    assert summary["cka_base_sft_mlp_out"]["value"] == pytest.approx(1.0, abs=1e-9)  # identical models
    assert summary["cka_base_sft_mlp_out"]["ci"] == pytest.approx([1.0, 1.0], abs=1e-9)
    assert summary["cka_base_rlvr_resid_post"]["value"] < 0.99  # different random models
    cell = next(c for c in result["cells"] if c["pair"] == "base_rlvr" and c["site"] == "hook_mlp_out" and c["layer"] == 1)
    X, _ = store.read("base", "blocks.1.hook_mlp_out", "completion")
    Y, rows = store.read("rlvr", "blocks.1.hook_mlp_out", "completion")
    assert cell["value"] == pytest.approx(maths.linear_cka(X, Y, debiased=True), abs=1e-12)
    assert cell["ci"] == pytest.approx(list(np.quantile(maths.bootstrap_cka(X, Y, rows, 30), [0.025, 0.975])), abs=1e-12)
    mean_diff = np.mean([summary["cka_base_rlvr_mlp_out"]["value"] - summary["cka_base_rlvr_attn_out"]["value"]])
    assert summary["cka_base_rlvr_mlp_minus_attn"]["value"] == pytest.approx(mean_diff)
    matrix = np.array(next(c["matrix"] for c in result["cross_layer"] if c["pair"] == "base_sft"))
    np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-9)
    shuffled = [p for p in result["inflation"]["points"] if p["pairing"] == "shuffled" and p["n"] == 8]
    assert np.mean([p["cka"] for p in shuffled if p["estimator"] == "biased"]) > \
        np.mean([p["cka"] for p in shuffled if p["estimator"] == "debiased"])
    # end-to-end CKA mixes in upstream changes and is read against placebos only by the verdict: no hypothesis here
    assert not {"Routing", "Representation"} & set(figures.summary_markdown(result).split())

    text = figures.summary_markdown(result)
    shown = fmt.interval(summary["cka_sft_rlvr_mlp_out"]["value"], summary["cka_sft_rlvr_mlp_out"]["ci"])
    assert "base vs rlvr" in text and shown in text


def test_figures_have_titles_and_labels(store):
    import matplotlib

    matplotlib.use("Agg")  # tests only; notebooks show figures inline
    result = instrument.compare_stages(store, "completion", sites=["hook_mlp_out", "hook_resid_post"], n_bootstrap=5,
                                n_permutations=2)
    from rlvr_utils.core import plots

    for fig in (figures.plot_components(result), figures.plot_cross_layer(result), figures.plot_inflation(result)):
        assert fig._suptitle is not None or fig.axes[0].get_title()
        # drawn for the page: a page wide at most, no text smaller than a phone can show once scaled to it
        assert fig.get_size_inches()[0] <= plots.PAGE_WIDTH and min(plots.text_sizes(fig)) >= plots.MIN_FONT
        panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        assert all(ax.get_title() for ax in panels)
        assert any(ax.get_xlabel() for ax in panels) and any(ax.get_ylabel() for ax in panels)  # outer panels of a grid
    with pytest.raises(ValueError, match="not extracted"):
        instrument.compare_stages(store, "last_prompt", n_bootstrap=5, n_permutations=2)


def run_of(store, tmp_path, name="t"):
    """Params of a run whose activation store is a copy of `store`, with a checkpoint (a config.json is enough to
    exist) for every model stored: the instrument measures the treatments that have both."""
    import shutil

    from rlvr_utils.core import config

    cfg = config.from_dict({"name": name, "runs_dir": str(tmp_path), "cka": {"n_bootstrap": 5, "n_permutations": 2}})
    shutil.copytree(store.folder, cfg.path("activations"))
    for model in store.models():
        cfg.model_dir(model).mkdir(parents=True)
        (cfg.model_dir(model) / "config.json").write_text("{}")
    return cfg


def test_run_cka_writes_metrics_and_skips_when_current(store, tmp_path, monkeypatch):
    cfg = run_of(store, tmp_path)
    result = base.run(cfg, instrument.CKA(), progress=False)
    saved = json.loads(cfg.path("metrics", "cka.json").read_text())
    assert saved["summary"] == result["summary"] and "cka_sft_rlvr_mlp_out" in saved["summary"]
    monkeypatch.setattr(instrument, "compare_stages", lambda *a, **k: pytest.fail("up to date: must not recompute"))
    assert base.run(cfg, instrument.CKA(), progress=False)["summary"] == saved["summary"]
    cfg.cka.n_bootstrap = 6
    with pytest.raises(pytest.fail.Exception):
        base.run(cfg, instrument.CKA(), progress=False)


# --- every treatment against the reference, end to end -------------------------------------------------------------
@pytest.fixture(scope="module")
def variant_store(tmp_path_factory):
    """SFT, a different RLVR, an identical copy and an attention-only planted update; no base model."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlvr_utils import activations as act

    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, 64, size=int(rng.integers(8, 14))).tolist() for _ in range(24)]
    cache = act.TokenCache(seqs, [4] * 24, list(range(24)), "gold", 0)
    folder = tmp_path_factory.mktemp("variant_activations")
    config = AutoConfig.for_model("qwen2", vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, num_key_value_heads=1)
    torch.manual_seed(0)
    sft = AutoModelForCausalLM.from_config(config).eval()
    torch.manual_seed(1)
    rlvr = AutoModelForCausalLM.from_config(config).eval()
    attn_only = AutoModelForCausalLM.from_config(config).eval()
    attn_only.load_state_dict(sft.state_dict())
    with torch.no_grad():  # rank-2 update of every attention projection; MLP weights untouched
        for name, p in attn_only.named_parameters():
            if "self_attn" in name and p.ndim == 2:
                p += 0.5 * p.norm() * torch.nn.functional.normalize(torch.randn(p.shape[0], 2) @ torch.randn(2, p.shape[1]),
                                                                    dim=(0, 1))
    for name, model in (("sft", sft), ("rlvr", rlvr), ("identical", sft), ("attn_only", attn_only)):
        act.extract(model, cache, folder, name, positions=["completion"], shard_size=10)
    return act.ActivationStore(folder)


def test_compare_variants_end_to_end(variant_store):
    summary, cells = instrument.compare_variants(variant_store, "completion", "sft", ["identical", "attn_only", "rlvr"],
                                                 n_bootstrap=20)
    assert list(summary) == ["identical", "attn_only", "rlvr"]
    for name in summary:
        assert set(summary[name]) == {"attn_change_end_to_end", "mlp_change_end_to_end"}
    for key in ("attn_change_end_to_end", "mlp_change_end_to_end"):
        assert summary["identical"][key].value == pytest.approx(0.0, abs=1e-12)
        assert summary["identical"][key].ci == pytest.approx([0.0, 0.0], abs=1e-12)
        lo, hi = summary["rlvr"][key].ci
        assert 0.01 < lo <= summary["rlvr"][key].value <= hi
        assert summary["rlvr"][key].interval == "bootstrap" and summary["rlvr"][key].n == 24  # problems resampled
    # end to end, an attention-only update moves the untouched MLPs' outputs (their inputs moved): the reason the
    # same-input comparison (same_input.py) exists
    assert summary["attn_only"]["mlp_change_end_to_end"].ci[0] > 0.001
    cell = next(c for c in cells if c["variant"] == "rlvr" and c["component"] == "mlp" and c["layer"] == 1)
    X, _ = variant_store.read("sft", "blocks.1.hook_mlp_out", "completion")
    Y, _ = variant_store.read("rlvr", "blocks.1.hook_mlp_out", "completion")
    assert cell["change"] == pytest.approx(1 - maths.linear_cka(X, Y, debiased=True), abs=1e-12)
    assert len(cells) == 3 * 2 * 2
    assert instrument.compare_variants(variant_store, "completion", "sft", []) == ({}, [])


def test_run_cka_takes_the_pairs_and_treatments_that_exist(variant_store, tmp_path):
    cfg = run_of(variant_store, tmp_path)
    result = base.run(cfg, instrument.CKA(), progress=False)
    assert result["pairs"] == ["sft_rlvr"]  # no base model: only the pair that exists
    assert "cka_sft_rlvr_mlp_minus_attn" in result["summary"]
    assert list(result["variants"]) == ["rlvr", "attn_only", "identical"]  # variants.treatments order
    assert result["variants_reference"] == "sft" and "end-to-end" in result["variants_label"]
    text = cfg.path("metrics", "cka.json").read_text()
    assert "NaN" not in text and json.loads(text)["variants"] == result["variants"]
    with pytest.raises(FileNotFoundError, match="04_extract"):
        base.run(config_of_empty_run(tmp_path), instrument.CKA(), progress=False)


def config_of_empty_run(tmp_path):
    from rlvr_utils.core import config

    return config.from_dict({"name": "empty", "runs_dir": str(tmp_path)})


def test_problem_gram_is_the_inner_products_of_the_per_problem_products():
    """What the low-memory bootstrap uses instead of a d x d product per resample: G[p, q] = <X_p'Y_p, X_q'Y_q>,
    built a slice of features at a time (a tiny budget forces several slices)."""
    import torch

    from rlvr_utils.instruments.cka.problems import problem_gram

    rng = np.random.default_rng(7)
    index = rng.permutation(np.repeat(np.arange(5), [3, 1, 4, 2, 6]))
    X, Y = rng.normal(size=(16, 7)), rng.normal(size=(16, 3))
    A = [X[index == p].T @ Y[index == p] for p in range(5)]
    expected = np.array([[np.sum(a * b) for b in A] for a in A])
    got = problem_gram(torch.from_numpy(X), torch.from_numpy(Y), torch.from_numpy(index), 5, budget=8 * 5 * 3 * 2)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


# --- captions: the takeaway on this run, its numbers formatted from the data -----------------------------------
def _e(value, lo, hi):
    return {"value": value, "ci": [lo, hi]}


def test_caption_components_states_the_means_and_reads_an_interval_holding_zero_as_no_change():
    from rlvr_utils.core import captions

    summary = {"cka_sft_rlvr_attn_out": _e(0.9975, 0.9972, 0.9978), "cka_sft_rlvr_mlp_out": _e(0.9966, 0.9964, 0.9968),
               "cka_sft_rlvr_mlp_minus_attn": _e(-0.0004, -0.0011, 0.0002),
               "cka_base_sft_attn_out": _e(0.445, 0.436, 0.453), "cka_base_sft_mlp_out": _e(0.475, 0.470, 0.479)}
    result = {"debiased": True, "pairs": ["base_sft", "base_rlvr", "sft_rlvr"], "summary": summary}
    text = figures.caption_components(result)
    for key in ("cka_sft_rlvr_attn_out", "cka_sft_rlvr_mlp_out", "cka_base_sft_attn_out", "cka_base_sft_mlp_out"):
        assert fmt.interval(summary[key]["value"], summary[key]["ci"]) in text
    assert f"no change detected ({captions.estimate(summary['cka_sft_rlvr_mlp_minus_attn'], sign=True)})" in text
    assert "not measured" in figures.caption_components({"pairs": [], "summary": {}})


def test_caption_comparison_reads_rlvr_against_the_placebos_and_the_nulls(tmp_path):
    from rlvr_utils.core import captions, config

    cfg = config.from_dict({"name": "t", "runs_dir": str(tmp_path)})
    same = {"variants": {"rlvr": {"attn_change": _e(1.6e-4, 1.5e-4, 1.7e-4), "mlp_change": _e(9e-4, 8e-4, 1e-3)},
                         "placebo_0": {"attn_change": _e(1.3e-4, 1.2e-4, 1.4e-4), "mlp_change": _e(1e-4, 9e-5, 1.1e-4)},
                         "placebo_1": {"attn_change": _e(2.8e-4, 2.7e-4, 2.9e-4), "mlp_change": _e(5e-5, 4e-5, 6e-5)},
                         "null_0": {"attn_change": _e(1e-6, 9e-7, 1.1e-6), "mlp_change": _e(2e-7, 1e-7, 3e-7)}}}
    text = figures.caption_comparison(cfg, same)
    rlvr = same["variants"]["rlvr"]
    assert captions.estimate(rlvr["attn_change"]) in text and captions.estimate(rlvr["mlp_change"]) in text
    assert f"inside the placebos' range ({captions.span([1.3e-4, 2.8e-4])})" in text  # attention
    assert "above every placebo" in text and "above every null" in text  # the MLP
    assert "End to end: not measured" in text  # no cka.json's variants
    assert "RLVR's same-input change" in figures.caption_comparison(cfg, {}, None) and \
        "not measured" in figures.caption_comparison(cfg, {}, None)


def test_captions_of_the_cross_layer_inflation_and_dynamics_figures():
    matrix = [[0.99, 0.5], [0.4, 0.98]]
    result = {"cross_layer": [{"pair": "sft_rlvr", "site": "hook_attn_out", "layers": [0, 1], "matrix": matrix},
                              {"pair": "base_sft", "site": "hook_attn_out", "layers": [0, 1],
                               "matrix": [[0.2, 0.6], [0.1, 0.3]]}],
              "inflation": {"pair": "base_rlvr", "site": "hook_resid_post", "layer": 1, "d": 16, "points": [
                  {"n": n, "pairing": "shuffled", "estimator": est, "cka": v, "repeat": 0}
                  for n, est, v in ((8, "biased", 0.36), (8, "debiased", 0.03), (64, "biased", 0.05),
                                    (64, "debiased", -0.001))]}}
    cross = figures.caption_cross_layer(result)
    assert "In 1 of 2 matrices" in cross and fmt.number(1 - 0.98) in cross and fmt.number(1 - 0.5) in cross
    inflation = figures.caption_inflation(result)
    assert all(fmt.number(v) in inflation for v in (0.36, 0.03, 0.05, -0.001)) and "d = 16" in inflation
    rows = [{"step": s, "layer": 0, "site": "mlp_out", "cka": c} for s, c in ((10, 0.999), (20, 0.99))]
    dynamics = figures.caption_dynamics(rows)
    assert f"from {fmt.number(1 - 0.999)} to {fmt.number(1 - 0.99)}" in dynamics and "step 20" in dynamics
    assert "not measured" in figures.caption_cross_layer({}).lower() and "not measured" in figures.caption_inflation({})
    assert "No intermediate checkpoint" in figures.caption_dynamics([])
