"""Numbered figures referred to from the text, with captions that state what this run shows.

A figure's label comes from the name it was saved under, so the chapter's prose can refer to it whatever else the
chapter drew; a reference to a figure the run did not draw would be a broken link (a Sphinx warning, an error in
the book's build), so its reading guide goes or the reference says so. Captions read intervals the way the
verdict does: one that contains 0 is "no change detected"."""
import ast
import base64
import re
from pathlib import Path

import nbformat
import pytest

from rlvr_utils.core import captions, plots
from rlvr_utils.publish import clean

ROOT = Path(__file__).resolve().parents[1]
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()


def _image(name=None, caption="a caption"):
    metadata = {plots.CAPTION_KEY: caption, **({plots.FIGURE_KEY: name} if name else {})}
    return nbformat.v4.new_output("display_data", data={"image/png": PNG, "text/plain": "<Figure>"},
                                  metadata=metadata)


def _publish(tmp_path, cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    path = tmp_path / "08_x.ipynb"
    nbformat.write(nb, path)
    clean.publish(path, tmp_path / "log", {})
    return nbformat.read(path, as_version=4)


def _code(*outputs):
    cell = nbformat.v4.new_code_cell("draw()")
    cell.outputs = list(outputs)
    return cell


def test_figures_are_labelled_by_name_and_guides_of_undrawn_figures_go(tmp_path):
    md = nbformat.v4.new_markdown_cell
    nb = _publish(tmp_path, [
        _code(_image("08_layers_rlvr_into_sft"), _image("08_layers_rlvr_into_sft"), _image()),
        md("**How to read {numref}`fig-08-layers-rlvr-into-sft`.** Bars are layers."),
        md("**How to read {numref}`fig-08-layers-sft-into-rlvr`.** Never drawn."),
        md("As {numref}`fig-08-layers-rlvr-into-sft` and {numref}`fig-08-grafting` show, ..."),
    ])
    names = [c.metadata["mystnb"]["figure"]["name"] for c in nb.cells if "mystnb" in c.metadata]
    assert names == ["fig-08-layers-rlvr-into-sft", "fig-08-layers-rlvr-into-sft-2", "fig-08-x-3"]
    text = [c.source for c in nb.cells if c.cell_type == "markdown"]
    assert len(text) == 2 and "Never drawn" not in " ".join(text)  # removed, not hidden: Sphinx would resolve it
    assert text[1] == f"As {{numref}}`fig-08-layers-rlvr-into-sft` and {clean.NOT_DRAWN} show, ..."


def test_plots_label_is_the_saved_name():
    assert plots.label("05_cka_same_input") == "fig-05-cka-same-input"


@pytest.mark.parametrize("estimate, shown", [
    ({"value": 0.204, "ci": [0.164, 0.24]}, "+20 [+16, +24] points"),
    ({"value": 0.004, "ci": [-0.038, 0.046]}, "no change detected (+0 [-4, +5] points)"),
    ({"value": -0.056, "ci": [-0.082, -0.032]}, "-5.6 [-8.2, -3.2] points"),
    (None, "not measured"),
])
def test_a_change_whose_interval_holds_zero_is_no_change(estimate, shown):
    assert captions.change(estimate, scale=100, unit=" points") == shown


def test_span_and_names():
    assert captions.span([0.1, -0.04, 0.2], scale=100, unit=" points", sign=True) == "from -4 to +20 points"
    assert captions.span([0.5]) == "0.5" and captions.span([]) == "not measured"
    assert captions.names(["a", "b", "c"]) == "a, b and c" and captions.names(["a"]) == "a"


def _saves(nb: nbformat.NotebookNode) -> list[tuple[str, bool]]:
    """(name, has a caption) of every plots.save call in a notebook's code; a name built in a loop
    (f"08_layers_{direction}") is given up to its first placeholder, followed by '*'."""
    found = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "plots.save":
                name = node.args[2]
                if isinstance(name, ast.JoinedStr):
                    text = name.values[0].value + "*"
                else:
                    text = name.value
                found.append((text, any(k.arg == "caption" for k in node.keywords)))
    return found


@pytest.mark.parametrize("nb_path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.stem)
def test_every_figure_has_a_caption_and_is_referred_to(nb_path):
    nb = nbformat.read(nb_path, as_version=4)
    prose = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    saves = _saves(nb)
    assert len(saves) == sum(c.source.count("plots.save(") for c in nb.cells if c.cell_type == "code")
    for name, has_caption in saves:
        assert has_caption, f"{nb_path.name}: plots.save(..., {name!r}) without a caption"
        wanted = re.escape(plots.label(name.rstrip("*"))) + ("[\\w-]+" if name.endswith("*") else "`")
        assert re.search(r"\{numref\}`" + wanted, prose), f"{nb_path.name}: no {{numref}} to {name}"


def _est(value, lo, hi):
    return {"value": value, "ci": [lo, hi]}


def test_training_captions_give_where_each_curve_started_and_ended():
    history = [{"step": s, "loss": 5.0 - s / 10} for s in range(1, 21)] + [{"step": 20, "train_runtime": 3.0}]
    text = plots.caption_training(history, {"loss": "loss", "absent": "never logged"}, "Training",
                                  stopping={"metric": "loss", "best_step": 19, "best_value": 3.1})
    # the first and last tenth (two points each) averaged: 4.85 and 3.05
    assert "steps 1 to 20: loss from 4.85 to 3.05" in text and "never logged" not in text
    assert "step 19, the best loss (3.1)" in text
    assert plots.caption_training([], {"loss": "loss"}, "Training") == "Training: nothing was logged."


def test_the_gains_caption_reads_each_control_and_the_references_range():
    metrics = {"variants": {"rlvr": {"gain": _est(0.2, 0.16, 0.24)}, "attn_only": {"gain": _est(0.01, -0.02, 0.04)},
                            "placebo_0": {"gain": _est(-0.1, -0.14, -0.06)}, "placebo_1": {"gain": _est(-0.3, -0.34, -0.26)},
                            "null_0": {"gain": _est(0.002, -0.01, 0.01)}}}
    kinds = {"rlvr": "study", "attn_only": "control", "placebo_0": "placebo", "placebo_1": "placebo", "null_0": "null"}
    text = plots.caption_variant_gains(metrics, kinds)
    assert "rlvr +20 [+16, +24] points" in text and "attn_only no change detected" in text
    assert "placebos' gains range from -30 to -10 points" in text and "nulls' gains range +0.2 points" in text


def test_the_pass_at_k_caption_gives_the_smallest_and_largest_k():
    metrics = {"pass_at_k": {"sft": {"1": _est(0.5, 0.45, 0.55), "64": _est(0.9, 0.85, 0.95)}}}
    assert plots.caption_pass_at_k(metrics).endswith("pass@1: sft 0.50 [0.45, 0.55]; pass@64: sft 0.90 [0.85, 0.95].")


def test_the_norms_caption_finds_the_largest_relative_change():
    import pandas as pd

    from rlvr_utils.activations import figures

    table = pd.DataFrame([{"model": m, "layer": layer, "site": "mlp_out", "norm": n}
                          for m, norms in {"base": [1, 1], "sft": [2, 4], "rlvr": [2.2, 4]}.items()
                          for layer, n in enumerate(norms)])
    text = figures.caption_norms(table)
    assert "from sft to rlvr, +10% (mlp_out, layer 0); from base to sft, +300% (mlp_out, layer 1)" in text


def test_the_calibration_caption_counts_rows_and_gives_rlvr_reading_on_them():
    import pandas as pd

    from rlvr_utils.evidence import tables

    table = pd.DataFrame({"calibration": ["counts", "nulls read a side", "counts"],
                          "rlvr": ["redundant", "Routing", "no evidence"]})
    text = tables.caption_calibration(table)
    assert "2 of 3 rows count (rows 1, 3); on them RLVR reads redundant (row 1); no evidence (row 3)." in text
    assert "no row decides" in tables.caption_calibration(table.assign(calibration="nulls read a side"))


def test_captions_name_the_registry_stages():
    from rlvr_utils.treatments.registry import REFERENCE, STUDY

    assert (captions.stage(REFERENCE), captions.stage(STUDY), captions.stage("base")) == ("SFT", "RLVR", "base")
