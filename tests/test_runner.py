"""The runner's record tells the truth, on a tiny notebook set: deleted or corrupted outputs re-run their
notebook, a killed re-run never leaves a chapter that looks done, two runs of one run folder never both
write, and papermill's injected cell is parsed, never executed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from rlvr_utils.core import artifacts, lock
from rlvr_utils.publish import runner

ROOT = Path(__file__).resolve().parents[1]
PARAMS = 'params_file = "params/default.yaml"\nfrom rlvr_utils.core.notebook import guard_papermill; guard_papermill()'
SETUP = "from rlvr_utils.core import notebook\n\ncfg = notebook.params(globals())\nfrom rlvr_utils.core import artifacts\n"
# notebook 00 writes a.json (stamped); 01 computes b.json from it
NB_A = SETUP + """path = cfg.path("metrics", "a.json")
if not artifacts.is_current(path, "fa"):
    artifacts.write_json(path, {"a": list(range(100))})
    artifacts.stamp(path, "fa")
"""
NB_B = SETUP + """a, path = cfg.path("metrics", "a.json"), cfg.path("metrics", "b.json")
if not artifacts.is_current(path, "fb", [a]):
    artifacts.write_json(path, {"b": sum(artifacts.read_json(a)["a"])})
    artifacts.stamp(path, "fb", [a])
"""
NB_SLOW = SETUP + """import os, time
(cfg.run_dir / "started").write_text(str(os.getpid()))
time.sleep(120)
"""


def _notebook(path: Path, code: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    params = nbformat.v4.new_code_cell(PARAMS)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(code)]
    nbformat.write(nb, path)


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.setenv("RLVR_DIGEST_CACHE", str(tmp_path / "digests.sqlite"))
    monkeypatch.setattr(artifacts, "_cache", None)
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    _notebook(nbs / "00_a.ipynb", NB_A)
    _notebook(nbs / "01_b.ipynb", NB_B)
    params = tmp_path / "p.yaml"
    params.write_text(f"name: t\nruns_dir: {tmp_path / 'runs'}\n")
    return {"nbs": nbs, "params": params, "book": tmp_path / "book", "run": tmp_path / "runs" / "t"}


def _execute(p, **kw) -> bool:
    return runner.execute(str(p["params"]), notebook_dir=p["nbs"], book_root=p["book"], **kw)


def _ran(capsys) -> list[str]:
    return [line.split()[0] for line in capsys.readouterr().out.splitlines()
            if line.strip() and "skipped" not in line and "re-runs" not in line]


def test_deleted_and_corrupted_outputs_rerun_their_notebooks(project, capsys):
    assert _execute(project)
    assert _ran(capsys) == ["00_a", "01_b"]
    record = json.loads((project["run"] / runner.RECORD).read_text())
    assert set(record["00_a.ipynb"]["files"]) == {"metrics/a.json", "metrics/a.json_stamp.json"}
    assert set(record["01_b.ipynb"]["files"]) == {"metrics/b.json", "metrics/b.json_stamp.json"}

    assert _execute(project)
    assert _ran(capsys) == []  # everything up to date: no kernel started

    (project["run"] / "metrics" / "b.json").unlink()  # a deleted metrics file is never "up to date"
    assert _execute(project)
    assert _ran(capsys) == ["01_b"]
    assert (project["run"] / "metrics" / "b.json").exists()

    a = project["run"] / "metrics" / "a.json"
    good = a.read_bytes()
    a.write_bytes(good.replace(b"99", b"00"))  # same size
    assert _execute(project)
    # 00_a re-runs and recomputes a.json byte for byte: 01_b's input is unchanged, so it stays up to date
    # (a changed input re-runs it: tests/test_books_per_run.py)
    assert _ran(capsys) == ["00_a"]
    assert a.read_bytes() == good  # recomputed by the notebook's own content check


def test_force_recomputes_what_it_names(project, capsys):
    assert _execute(project)
    b = project["run"] / "metrics" / "b.json"
    before = b.stat().st_mtime_ns
    capsys.readouterr()
    assert _execute(project, only=["01"], force=True)
    assert _ran(capsys) == ["01_b"] and b.stat().st_mtime_ns != before


@pytest.mark.slow  # kernels started and killed: seconds each
def test_killed_rerun_never_yields_a_book_with_a_half_executed_chapter(project, capsys):
    assert _execute(project)
    _notebook(project["nbs"] / "01_b.ipynb", NB_SLOW)  # a re-run that will be killed mid-chapter
    code = (f"from pathlib import Path; from rlvr_utils.publish import runner; "
            f"runner.execute({str(project['params'])!r}, notebook_dir=Path({str(project['nbs'])!r}), "
            f"book_root=Path({str(project['book'])!r}))")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    started = project["run"] / "started"
    kernel_pid = None
    try:
        deadline = time.time() + 60
        while not started.exists() and time.time() < deadline:
            time.sleep(0.2)
        assert started.exists(), "the slow chapter never started"
        kernel_pid = int(started.read_text())
        os.killpg(proc.pid, signal.SIGKILL)  # kill -9 of the run
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if kernel_pid:  # the kernel runs in its own session: end it too
            try:
                os.kill(kernel_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    record = json.loads((project["run"] / runner.RECORD).read_text())
    assert "01_b.ipynb" not in record and "00_a.ipynb" in record
    chapter = project["book"] / runner.EXECUTED / "01_b.ipynb"
    assert runner.chapter_problem(chapter) is not None
    with pytest.raises(SystemExit, match="book not built: .*01_b.ipynb is (not executed|half-executed)"):
        runner.build_book(project["book"], project["nbs"])

    _notebook(project["nbs"] / "01_b.ipynb", NB_B)
    capsys.readouterr()
    assert _execute(project)
    assert _ran(capsys) == ["01_b"]  # re-run, not reported up to date
    assert runner.chapter_problem(chapter) is None


LOCK_HOLDER = """
import sys, time
from rlvr_utils.core import lock
lock.acquire_run_lock(sys.argv[1])
print("locked", flush=True)
time.sleep(60)
"""


def test_two_runs_of_one_run_folder_never_both_write(project):
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(project["run"])], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(lock.RunLocked, match="is in use by pid"):
            _execute(project)
        assert sorted(p.name for p in project["run"].iterdir()) == [lock.LOCK, lock.MARKER]  # nothing written
        assert not project["book"].exists()
    finally:
        holder.kill()
        holder.wait()
    assert lock.acquire_run_lock(project["run"])  # the killed holder's file is left, its flock is not
    lock.release_run_lock(project["run"])
    assert not (project["run"] / lock.LOCK).exists()


def test_no_refusal_of_run_leaves_a_lock_or_a_run_folder_behind(project, monkeypatch, capsys):
    """Each way `run` refuses or stops: a refusal before any work touches nothing (not even the run folder);
    a failure or a finished run lets go of the lock and removes its file, so no `.lock` naming a dead process
    is ever left to puzzle whoever looks next."""
    from rlvr_utils.__main__ import main
    from rlvr_utils.resources import machine, plan

    run = project["run"]
    for kw in ({"only": ["99"]}, {"start": "99"}):  # a notebook number that does not exist
        with pytest.raises(SystemExit, match="no notebook numbered '99' .*; have: 00, 01"):
            _execute(project, **kw)
    with pytest.raises(SystemExit, match="no notebook numbered '99'"):  # the CLI, on the project's notebooks
        main(["run", "--params", str(project["params"]), "--only", "99"])
    with monkeypatch.context() as m, pytest.raises(plan.ResourceError, match="cannot fit this machine"):
        m.setattr(machine, "host_memory", lambda: 1.0)  # a machine of one byte: the plan refuses
        _execute(project)
    assert not run.exists() and not project["book"].exists()

    _notebook(project["nbs"] / "01_b.ipynb", SETUP + "raise ValueError('planted failure')\n")
    assert not _execute(project)  # the second notebook fails
    assert "planted failure" in capsys.readouterr().err
    assert not (run / lock.LOCK).exists()
    from rlvr_utils.core.config import load

    with pytest.raises(SystemExit, match=r"01_b.ipynb is its execution failed. Run the notebooks again: "
                                         r"python -m rlvr_utils run --params \S*p.yaml"):
        runner.build_book(project["book"], project["nbs"], params=load(project["params"]))
    _notebook(project["nbs"] / "01_b.ipynb", NB_B)
    assert _execute(project)
    assert not (run / lock.LOCK).exists()


def test_papermill_injection_is_refused_and_never_runs(tmp_path):
    import papermill as pm

    nb = tmp_path / "nb.ipynb"
    _notebook(nb, "from rlvr_utils.core import notebook\n\ncfg = notebook.params(globals(), lock=False)\n")
    marker = tmp_path / "pwned"
    attacks = [{f'a = 1; open({str(marker)!r}, "w"); b': 1},  # a key written as code
               {"params_file": f'x\\"; open({str(marker)!r}, "w"); #'},  # a value that breaks out of its string
               {"name": "ci", "seed": 3}]  # what -f params/ci.yaml injects: sections, refused
    for parameters in attacks:
        with pytest.raises(pm.PapermillExecutionError) as err:
            pm.execute_notebook(str(nb), str(tmp_path / "out.ipynb"), parameters=parameters, kernel_name="python3",
                                progress_bar=False, cwd=str(ROOT))
        assert err.value.ename == "ParamsError"
    assert not marker.exists()


def test_an_edited_executed_chapter_is_re_executed_and_never_published(project, capsys):
    """Editing what the book shows (even with the file's mtime put back) re-runs that chapter; a book is never
    built from a chapter that differs from what the run executed."""
    from rlvr_utils.core.config import load

    assert _execute(project)
    chapter = project["book"] / runner.EXECUTED / "01_b.ipynb"
    stat = chapter.stat()
    chapter.write_text(chapter.read_text().replace('"outputs": []', '"outputs": [{"name": "stdout", "output_type": "stream", "text": "FORGED"}]', 1))
    os.utime(chapter, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(SystemExit, match="01_b.ipynb in .* differ from what this run executed"):
        runner.build_book(project["book"], project["nbs"], params=load(project["params"]))
    capsys.readouterr()
    assert _execute(project)
    out = capsys.readouterr().out
    assert "01_b             re-runs: executed copy" in out and "changed since the run made it" in out
    assert "FORGED" not in chapter.read_text()
