"""End to end: every notebook on params/ci.yaml through the runner, then the Jupyter Book build."""
import json
from pathlib import Path

import nbformat
import pytest
import yaml

from conftest import assert_models_learn, ci_params, run_book
from rlvr_utils.publish import runner

pytestmark = pytest.mark.slow  # end-to-end: minutes (make test-fast leaves it out)



def test_every_notebook_executes_and_the_book_builds(built_book):
    params, book_root, first = built_book
    names = [nb.stem for nb in runner.notebooks()]
    assert names[:3] == ["00_base", "01_train_sft", "02_train_grpo"]
    for name in names:
        assert any(line.startswith(name) and line.rstrip().endswith(" s") for line in first.stdout.splitlines())
        html = book_root / "_build" / "html" / "book" / "executed" / f"{name}.html"
        assert html.exists(), f"{html} missing"
    assert (book_root / "_build" / "html" / "index.html").exists()
    assert (book_root / "_build" / "html" / "book" / "executed" / "reproducibility.html").exists()


def test_executed_notebooks_have_figures_and_no_errors(built_book):
    _, book_root, _ = built_book
    for path in sorted((book_root / "book" / "executed").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        assert not [o for o in outputs if o.output_type == "error"], path.name
        images = [o for o in outputs if "image/png" in o.get("data", {})]
        assert images, f"{path.name} shows no figure"


def test_artifacts_of_the_run(built_book):
    params, _, _ = built_book
    run = Path(yaml.safe_load(params.read_text())["runs_dir"]) / "ci"
    for stage in ("base", "sft", "rlvr"):
        assert (run / "models" / stage / "model.safetensors").exists()
        assert (run / "eval" / f"{stage}_greedy.jsonl").exists()
    assert list((run / "models" / "rlvr_checkpoints").glob("step-*"))
    metrics = json.loads((run / "metrics" / "eval.json").read_text())
    assert {"base", "sft", "rlvr"} <= set(metrics["greedy"])


def test_every_metrics_file_is_strict_json(built_book):
    """NaN and infinities are not JSON: every metrics file parses with a parser that refuses them."""
    params, _, _ = built_book
    run = Path(yaml.safe_load(params.read_text())["runs_dir"]) / "ci"
    files = sorted((run / "metrics").glob("*.json"))
    assert len(files) > 8

    def refuse(constant):
        raise ValueError(f"{constant} is not strict JSON")
    for path in files:
        json.loads(path.read_text(), parse_constant=refuse)


def test_ci_models_learn(built_book):
    params, _, _ = built_book
    assert_models_learn(Path(yaml.safe_load(params.read_text())["runs_dir"]) / "ci")


def test_every_evidence_row_is_measured_and_the_instruments_see_which_side_moved(built_book):
    params, _, _ = built_book
    run = Path(yaml.safe_load(params.read_text())["runs_dir"]) / "ci"
    verdict_json = json.loads((run / "metrics" / "verdict.json").read_text())
    from rlvr_utils.core import config
    from rlvr_utils.evidence import verdict
    from rlvr_utils.treatments import registry

    # ci's problems have one step, so there is no intermediate result for the probe row to decode; the
    # identical model has no update, so its update shares are undefined; the crosscoder diffs the placebos, not
    # the random nulls. Everything else must be measured.
    cfg = config.load(params)
    skipped = {"identical", *registry.names(cfg, "null")}
    unmeasured = [(r["measurement"], name) for r in verdict_json["rows"] if not r["measurement"].startswith("Gain in probe")
                  for name, reading in r["readings"].items() if reading == verdict.NOT_MEASURED
                  and not (name == "identical" or (name in skipped and r["file"] == "crosscoder.json"))]
    assert not unmeasured, unmeasured
    # At ci's scale a placebo moves the model as much as a control, so no row needs to count; but read against
    # random updates only, the frozen controls must be told apart by some row, or the pipeline is broken.
    everything = verdict.Design.from_registry(cfg)
    easy = verdict.Design({t: k for t, k in everything.kinds.items() if k != "placebo" and t not in everything.full},
                          {t: a for t, a in everything.expected.items()
                           if everything.kinds[t] != "placebo" and t not in everything.full})
    table = verdict.evidence(verdict.load_metrics(run / "metrics"), easy, cfg.verdict)
    told_apart = [r["measurement"] for _, r in table.iterrows()
                  if "reads" not in r["calibration"] and "not measured" not in r["calibration"]]
    assert told_apart, "no row tells the ci controls apart even against random updates: the pipeline is broken"


def test_second_run_skips_everything(built_book):
    params, book_root, _ = built_book
    again = run_book(params, book_root, "--no-book")
    assert again.returncode == 0, again.stderr[-3000:]
    lines = [l for l in again.stdout.splitlines() if l[:2].isdigit()]
    assert lines and all("up to date, skipped" in l for l in lines)


def test_failure_names_notebook_cell_and_partial_copy(tmp_path, monkeypatch, capsys):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    for name, code in [("00_ok", "x = 1"), ("01_broken", "raise ValueError('planted failure')"), ("02_after", "y = 2")]:
        nb = nbformat.v4.new_notebook()
        params = nbformat.v4.new_code_cell('params_file = "params/ci.yaml"')
        params.metadata["tags"] = ["parameters"]
        nb.cells = [params, nbformat.v4.new_code_cell(code)]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, notebooks / f"{name}.ipynb")
    monkeypatch.setattr(runner, "NOTEBOOK_DIR", notebooks)
    ok = runner.execute(str(ci_params(tmp_path)), book_root=tmp_path / "site")
    err = capsys.readouterr().err
    assert not ok
    assert "01_broken" in err and "ValueError: planted failure" in err
    assert str(tmp_path / "site" / "book" / "executed" / "01_broken.ipynb") in err
    assert not (tmp_path / "site" / "book" / "executed" / "02_after.ipynb").exists()


def test_cka_dynamics_ends_at_the_rlvr_model(built_book):
    """GRPO's last saved checkpoint is the RLVR model: its CKA with SFT equals the main comparison's."""
    import numpy as np

    from rlvr_utils.core import config
    from rlvr_utils.instruments.cka import instrument as cka_analysis
    from rlvr_utils.activations.tokens import TokenCache

    cfg = config.load(built_book[0])
    rows = cka_analysis.run_dynamics(cfg, TokenCache.load(cfg.path("tokens")))
    last = max(r["step"] for r in rows)
    assert last == cfg.grpo.steps and {r["step"] for r in rows} == set(range(cfg.grpo.save_steps, last + 1, cfg.grpo.save_steps))
    summary = json.loads(cfg.path("metrics", "cka.json").read_text())["summary"]
    for site in ("attn_out", "mlp_out"):
        final = np.mean([r["cka"] for r in rows if r["step"] == last and r["site"] == site])
        assert final == pytest.approx(summary[f"cka_sft_rlvr_{site}"]["value"], abs=1e-6)


def test_the_chapters_read_in_the_verdicts_words_and_the_evidence_is_data(built_book):
    """Chapters 05-09 close with what the verdict reads from them; the verdict chapter opens with its limitations
    and links the evidence as data (one column per field) beside its table."""
    params, book_root, _ = built_book
    run = Path(yaml.safe_load(params.read_text())["runs_dir"]) / "ci"
    table = json.loads((run / "metrics" / "evidence.json").read_text())
    assert table["records"] and list(table["records"][0]) == list(table["columns"])
    assert {"rlvr", "identical"} <= {r["treatment"] for r in table["records"]}
    header = (run / "metrics" / "evidence.csv").read_text().splitlines()[0].split(",")
    assert header == list(table["columns"])
    for stem in ("05_cka", "06_probes", "07_crosscoder", "08_patching", "09_spectra"):
        nb = nbformat.read(book_root / "book" / "executed" / f"{stem}.ipynb", as_version=4)
        shown = [o.get("data", {}).get("text/markdown", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", [])]
        assert any("What the verdict reads from this chapter" in text for text in shown), stem
    html = (book_root / "_build" / "html" / "book" / "executed" / "10_verdict.html").read_text()
    assert html.index("Limitations of this run") < html.index('id="overview"')  # at the top of the chapter
    assert "evidence.csv" in html and "evidence.json" in html
