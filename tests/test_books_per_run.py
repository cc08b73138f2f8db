"""Every run keeps its own book: two runs built one after the other keep two correct books, a failed run never
touches another run's book, an executed copy from other params is never reported up to date, and a notebook
re-runs only when the params sections it reads, or the files it reads, change."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from rlvr_utils.core import artifacts
from rlvr_utils.publish import runner

pytestmark = pytest.mark.slow  # every test executes notebooks in kernels (make test-fast leaves them out)

PARAMS = 'params_file = "params/default.yaml"\nfrom rlvr_utils.core.notebook import guard_papermill; guard_papermill()'
SETUP = "from rlvr_utils.core import notebook, artifacts\n\ncfg = notebook.params(globals())\n"
# 00 writes a.json from organism.hidden_size; 01 reads it and writes b.json with cka.n_bootstrap
NB_A = SETUP + """path = cfg.path("metrics", "a.json")
fp = cfg.fingerprint("organism")
if not artifacts.is_current(path, fp):
    artifacts.write_json(path, {"hidden": cfg.organism.hidden_size})
    artifacts.stamp(path, fp)
print(f"run {cfg.name}: hidden {cfg.organism.hidden_size}")
"""
NB_B = SETUP + """a, path = cfg.path("metrics", "a.json"), cfg.path("metrics", "b.json")
fp = cfg.fingerprint("cka")
if not artifacts.is_current(path, fp, [a]):
    artifacts.write_json(path, {"b": artifacts.read_json(a)["hidden"] * cfg.cka.n_bootstrap})
    artifacts.stamp(path, fp, [a])
print(f"run {cfg.name}: b = {artifacts.read_json(path)['b']}")
"""
NB_FAIL = SETUP + "raise ValueError('planted failure')\n"


def _notebook(path: Path, code: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    params = nbformat.v4.new_code_cell(PARAMS)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# A chapter\n\n## Overview"), params, nbformat.v4.new_code_cell(code)]
    nbformat.write(nb, path)


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.setenv("RLVR_DIGEST_CACHE", str(tmp_path / "digests.sqlite"))
    monkeypatch.setattr(artifacts, "_cache", None)
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    _notebook(nbs / "00_a.ipynb", NB_A)
    _notebook(nbs / "01_b.ipynb", NB_B)

    def params(name: str, hidden: int = 32, n_bootstrap: int = 10) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"name: {name}\nruns_dir: {tmp_path / 'runs'}\norganism: {{hidden_size: {hidden}}}\n"
                        f"cka: {{n_bootstrap: {n_bootstrap}}}\n")
        return path

    return {"nbs": nbs, "params": params, "runs": tmp_path / "runs"}


def _execute(p, params: Path, **kw) -> bool:
    return runner.execute(str(params), notebook_dir=p["nbs"], **kw)


def _ran(capsys) -> list[str]:
    return [line.split()[0] for line in capsys.readouterr().out.splitlines()
            if line.strip() and "skipped" not in line and "re-runs" not in line]


def _outputs(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_two_runs_one_after_the_other_keep_two_correct_books(project, capsys):
    from rlvr_utils.core.config import load

    a, b = project["params"]("run-a", hidden=32), project["params"]("run-b", hidden=48)
    for params in (a, b):
        assert _execute(project, params)
        assert _ran(capsys) == ["00_a", "01_b"]  # the second run executes its own chapters: nothing skipped
        runner.build_book(notebook_dir=project["nbs"], params=load(params))
        out = capsys.readouterr().out
        assert f"runs/{load(params).name}/book/_build/html/index.html" in out.replace(str(project["runs"]), "runs")
    for name, hidden, b_value in (("run-a", 32, 320), ("run-b", 48, 480)):
        root = project["runs"] / name / "book"
        assert f"run {name}: b = {b_value}" in _outputs(root / runner.EXECUTED / "01_b.ipynb")
        html = (root / "_build" / "html" / "book" / "executed" / "00_a.html").read_text()
        assert f"run {name}: hidden {hidden}" in html
        other = "run-b" if name == "run-a" else "run-a"
        assert f"run {other}" not in html
        record = (root / "_build" / "html" / "book" / "executed" / "reproducibility.html").read_text()
        assert f"{name}.yaml" in record and "Python" in record and "git commit" in record


def test_a_failed_run_never_touches_another_runs_book(project, capsys):
    a, b = project["params"]("run-a"), project["params"]("run-b")
    assert _execute(project, a)
    book_a = project["runs"] / "run-a" / "book"
    before = {p: p.read_bytes() for p in book_a.rglob("*") if p.is_file()}
    _notebook(project["nbs"] / "01_b.ipynb", NB_FAIL)
    assert not _execute(project, b)
    assert "planted failure" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in book_a.rglob("*") if p.is_file()} == before


def test_an_executed_copy_from_other_params_is_not_up_to_date(project, capsys):
    a, b = project["params"]("run-a", hidden=32), project["params"]("run-b", hidden=48)
    assert _execute(project, a) and _execute(project, b)
    capsys.readouterr()
    chapter = runner.EXECUTED / "00_a.ipynb"
    (project["runs"] / "run-a" / "book" / chapter).write_bytes((project["runs"] / "run-b" / "book" / chapter).read_bytes())
    assert _execute(project, a)
    out = capsys.readouterr().out
    assert "00_a             re-runs: executed copy" in out and "run-b" in out
    assert "run run-a: hidden 32" in _outputs(project["runs"] / "run-a" / "book" / chapter)


def test_a_notebook_reruns_only_when_what_it_reads_changes(project, capsys):
    assert _execute(project, project["params"]("run-a", hidden=32, n_bootstrap=10))
    capsys.readouterr()
    assert _execute(project, project["params"]("run-a", hidden=32, n_bootstrap=20))  # only 01_b reads cka
    assert _ran(capsys) == ["01_b"]
    assert _execute(project, project["params"]("run-a", hidden=64, n_bootstrap=20))  # a.json changes: 01_b too
    assert _ran(capsys) == ["00_a", "01_b"]
    assert json.loads((project["runs"] / "run-a" / "metrics" / "b.json").read_text()) == {"b": 64 * 20}
    record = json.loads((project["runs"] / "run-a" / runner.RECORD).read_text())
    assert record["00_a.ipynb"]["seconds"] > 0 and record["00_a.ipynb"]["code"]
    log = (project["runs"] / "run-a" / "logs" / "00_a.log")
    assert log.exists()


def test_the_published_page_of_an_edited_chapter_is_the_re_run(project, capsys):
    """A chapter edited after the run (its mtime put back) is re-executed, and the rebuilt HTML shows the
    re-run, never the edit."""
    import os

    from rlvr_utils.core.config import load

    params = project["params"]("run-a")
    assert _execute(project, params)
    runner.build_book(notebook_dir=project["nbs"], params=load(params))
    root = project["runs"] / "run-a" / "book"
    chapter = root / runner.EXECUTED / "00_a.ipynb"
    stat = chapter.stat()
    chapter.write_text(chapter.read_text().replace("hidden 32", "hidden FORGED"))
    os.utime(chapter, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    capsys.readouterr()
    assert _execute(project, params)
    assert "00_a" in _ran(capsys)
    runner.build_book(notebook_dir=project["nbs"], params=load(params))
    html = (root / "_build" / "html" / "book" / "executed" / "00_a.html").read_text()
    assert "hidden 32" in html and "FORGED" not in html
