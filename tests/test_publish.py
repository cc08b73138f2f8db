"""The published chapter: code hidden, papermill's cells removed, warnings, progress, logging and return values
out of the page and in the log, pipe tables as tables, relative paths, numbered figures with captions."""
import base64

import nbformat

from rlvr_utils.core import fmt
from rlvr_utils.publish import clean as publish

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()


def _executed(tmp_path):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('params_file = "params/ci.yaml"')
    params.metadata["tags"] = ["parameters"]
    injected = nbformat.v4.new_code_cell('# Parameters\nparams_file = "/home/me/project/params/ci.yaml"')
    injected.metadata["tags"] = ["injected-parameters"]
    code = nbformat.v4.new_code_cell("work()")
    code.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text="TqdmWarning: IProgress not found\n 50%|#####| 5/10\n"),
        nbformat.v4.new_output("stream", name="stdout", text="read /home/me/project/runs/ci/metrics/eval.json\n"
                               "| a | b |\n| --- | --- |\n| 1 | 2 |\n"),
        nbformat.v4.new_output("display_data", data={"image/png": PNG, "text/plain": "<Figure>"},
                               metadata={"caption": "Accuracy of base, SFT and RLVR"}),
        nbformat.v4.new_output("display_data", data={"image/png": PNG, "text/plain": "<Figure>"}),
        nbformat.v4.new_output("execute_result", data={"text/plain": "PosixPath('/home/me/project/runs/ci/x.png')"},
                               execution_count=3),
    ]
    empty = nbformat.v4.new_code_cell("maybe_plot()")
    empty.outputs = [nbformat.v4.new_output("stream", name="stdout", text="nothing to plot\n")]
    nb.cells = [nbformat.v4.new_markdown_cell("## Accuracy"), params, injected, code,
                nbformat.v4.new_markdown_cell("**How to read this figure.** Each point is a model."), empty,
                nbformat.v4.new_markdown_cell("**How to read this figure.** Nothing drawn above.")]
    path = tmp_path / "05_x.ipynb"
    nbformat.write(nb, path)
    return path


def test_a_chapter_is_cleaned_for_the_book(tmp_path):
    path, log = _executed(tmp_path), tmp_path / "logs" / "05_x.log"
    assert publish.publish(path, log, {"/home/me/project/": "", "/home/me": "~"}) == 2
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "remove-cell" in code[0].metadata.tags and "remove-cell" in code[1].metadata.tags
    assert "hide-input" in code[2].metadata.tags
    outputs = [o for c in code for o in c.outputs]
    text = str(outputs)
    assert "Tqdm" not in text and "50%" not in text and "PosixPath" not in text and "/home/me" not in text
    assert any(o.get("data", {}).get("text/markdown", "").startswith("| a | b |") for o in outputs)
    assert any(o.get("text", "") == "read runs/ci/metrics/eval.json\n" for o in outputs)
    figures = [c.metadata["mystnb"]["figure"] for c in code if "mystnb" in c.metadata]
    assert [f["caption"] for f in figures] == ["Accuracy of base, SFT and RLVR", "Accuracy"]  # else the heading
    assert len({f["name"] for f in figures}) == 2
    assert all(len([o for o in c.outputs if "image/png" in o.get("data", {})]) <= 1 for c in code)
    guides = [c for c in nb.cells if c.cell_type == "markdown" and "How to read" in c.source]
    assert ["remove-cell" in c.metadata.get("tags", []) for c in guides] == [False, True]
    logged = log.read_text()
    assert "PosixPath" in logged


def test_numbers_are_rounded_to_what_their_interval_supports():
    assert fmt.interval(0.16, [0.12, 0.2]) == "0.16 [0.12, 0.20]"
    assert fmt.interval(0.123456, [0.1, 0.15]) == "0.123 [0.100, 0.150]"  # half-width 0.025: two digits
    assert fmt.interval(0.668, [0.626, 0.708], scale=100) == "67 [63, 71]"
    assert fmt.interval(0.5, None) == "0.5" and fmt.interval(None) == "not measured"
