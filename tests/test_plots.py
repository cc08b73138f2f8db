"""Figures made for the book's page (rlvr_utils.core.plots): drawn at most a page wide with text no smaller than
the page can show, saved with a record of their smallest text and empty panels (which the browser test reads),
a panel without a measurement said in words, and titles wrapped to their figure."""
import matplotlib

matplotlib.use("Agg")  # tests only; notebooks show figures inline

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from rlvr_utils.core import config, plots  # noqa: E402
from rlvr_utils.evidence import tables  # noqa: E402
from rlvr_utils.treatments.registry import NO_EVIDENCE, NOT_MEASURED, REPRESENTATION, ROUTING  # noqa: E402


def fits_the_page(fig) -> None:
    assert fig.get_size_inches()[0] <= plots.PAGE_WIDTH + 0.7, fig.get_size_inches()
    assert min(plots.text_sizes(fig)) >= plots.MIN_FONT, sorted(plots.text_sizes(fig))[:5]
    assert plots.empty_panels(fig) == 0


def test_the_shared_figures_fit_the_page():
    history = [{"step": s, "loss": 1 / s, "learning_rate": 1e-4, "reward": s / 10} for s in range(1, 6)]
    fits_the_page(plots.training_curves(history, {"loss": "loss", "learning_rate": "lr", "reward": "reward"}, "t"))
    est = {"value": 0.5, "ci": [0.4, 0.6]}
    fits_the_page(plots.pass_at_k({"pass_at_k": {"sft": {"1": est, "8": est}, "rlvr": {"1": est, "8": est}}}))
    gains = {"variants": {n: {"gain": {"value": 0.05, "ci": [0.01, 0.09]}} for n in ("rlvr", "attn_only", "null_0")}}
    fits_the_page(plots.variant_gains(gains, {"rlvr": "study", "attn_only": "control", "null_0": "null"}))
    readings = [{"rlvr": ROUTING, "attn_only": ROUTING, "null_0": NO_EVIDENCE},
                {"rlvr": REPRESENTATION, "attn_only": NOT_MEASURED, "null_0": NO_EVIDENCE}]
    table = pd.DataFrame({"measurement": ["a row", "another row"], "readings": readings,
                          "calibration": ["counts", "attn_only not measured"]})
    fits_the_page(tables.calibration_figure(table, ["rlvr", "attn_only", "null_0"]))
    plt.close("all")


def test_save_records_the_smallest_text_and_empty_panels(tmp_path):
    cfg = config.from_dict({"name": "t", "runs_dir": str(tmp_path)})
    fig, axes = plt.subplots(1, 3, figsize=(plots.PAGE_WIDTH, 2.5))
    axes[0].plot([0, 1], [0, 1])
    axes[0].set_title("a title long enough to be wider than its panel, so that it is wrapped onto lines")
    axes[1].text(0.5, 0.5, "small", fontsize=6)
    path = plots.save(fig, cfg, "f")  # the third panel holds nothing
    with Image.open(path) as image:
        record = image.text
    assert float(record[plots.MIN_FONT_KEY]) == 6 * plots.DPI / 72
    assert record[plots.EMPTY_KEY] == "1"
    assert "\n" in axes[0].get_title()  # wrapped: a title wider than the figure would shrink everything on the page
    assert image.size[0] <= (plots.PAGE_WIDTH + 0.3) * plots.DPI


def test_a_missing_panel_is_said_in_words():
    fig, axes = plt.subplots(2, 2)
    plots.drop_unused(axes, 3)
    plots.say_missing(axes[0][1], "not measured on this run")
    for ax in (axes[0][0], axes[1][0]):
        ax.plot(np.arange(3))
    assert len(fig.axes) == 3 and plots.empty_panels(fig) == 0
    assert plots.grid(9) == (5, 2) and plots.grid(1) == (1, 1)
    plt.close(fig)


def test_the_instruments_figures_are_grids_that_fit_the_page():
    """The probe, lens and activation figures draw a grid of at most two panels per row (not a strip), a page
    wide, and a target a site never measured is said in words."""
    from rlvr_utils.activations import figures as activation_figures
    from rlvr_utils.instruments.probes import figures as probe_figures

    probe_rows = [{"model": m, "target": t, "layer": layer, "site": s, "metric": metric, "value": 0.5 + 0.1 * layer,
                   "ci_low": 0.4, "ci_high": 0.8}
                  for m in ("sft", "rlvr") for t in ("intermediate", "answer") for s in ("hook_resid_post", "hook_mlp_out")
                  for layer in range(3) for metric in ("accuracy", "control_accuracy", "majority_accuracy")
                  if not (t == "answer" and s == "hook_mlp_out")]  # one target x site never measured
    fig = probe_figures.figure(pd.DataFrame(probe_rows), "accuracy")
    fits_the_page(fig)
    assert len(fig.axes) == 4 and any("not measured" in t.get_text() for ax in fig.axes for t in ax.texts)
    lens = pd.DataFrame([{"model": m, "read_out": r, "metric": metric, "layer": layer, "value": 1.0 / (layer + 1),
                          "ci_low": 0.1, "ci_high": 1.2}
                         for m in ("base", "sft", "rlvr") for r in (m, *(f"stitch:{o}" for o in ("sft", "rlvr") if o != m))
                         for metric in ("kl", "top1_agreement", "answer_prob", "answer_rank") for layer in range(3)])
    fits_the_page(probe_figures.lens_figure(lens))
    fits_the_page(probe_figures.cross_figure(lens))
    norms = pd.DataFrame([{"model": m, "site": s, "layer": layer, "norm": 1.0 + layer}
                          for m in ("base", "sft", "rlvr") for s in ("attn_out", "mlp_out", "resid_post")
                          for layer in range(3)])
    fits_the_page(activation_figures.plot_norms(norms))
    plt.close("all")
