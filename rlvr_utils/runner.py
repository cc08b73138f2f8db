"""Run the book: execute the notebooks in order with papermill, then build it with Jupyter Book 1.x.

The run's record (runs/<name>/executed_notebooks.json) tells the truth: a notebook's entry is removed
when it starts and written only after it succeeds, with the digest of every run file it wrote. A
notebook is skipped only when its entry was made from the same params, notebook source and up-to-date
predecessors (a stamp chain), its executed copy is complete, and every file it wrote is unchanged;
otherwise it and every later notebook re-run (their stages skip inside what is still current).
`force` re-runs what it names and makes their stages recompute (artifacts.FORCE_ENV). One run folder
runs one run at a time (artifacts.run_lock). The first failure stops the run with the notebook, the
cell, the error and the path of the partially executed copy; the book is never built from it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import artifacts
from .config import PROJECT_ROOT, Params, load, resolve

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
EXECUTED = Path("book") / "executed"  # under the book root; _toc.yml points here
BOOK_FILES = ("_config.yml", "_toc.yml", "book")
RECORD = "executed_notebooks.json"
SCRATCH = ("trainer",)  # run folders that hold only resumable scratch (optimizer states), not results


def notebooks(folder: Path | None = None) -> list[Path]:
    return sorted(Path(folder or NOTEBOOK_DIR).glob("[0-9][0-9]_*.ipynb"))


def _select(all_nbs: list[Path], only: list[str] | None, start: str | None) -> list[Path]:
    numbers = [nb.name[:2] for nb in all_nbs]
    for n in (only or []) + ([start] if start else []):
        if n.zfill(2) not in numbers:
            raise SystemExit(f"no notebook numbered {n!r}; have: {', '.join(numbers)}")
    if only:
        return [nb for nb in all_nbs if nb.name[:2] in {n.zfill(2) for n in only}]
    if start:
        return [nb for nb in all_nbs if nb.name[:2] >= start.zfill(2)]
    return all_nbs


def _stamp_key(params: Params, nb: Path, previous: str) -> str:
    h = hashlib.sha256()
    for part in (params.fingerprint(), nb.read_bytes(), previous.encode()):
        h.update(part if isinstance(part, bytes) else part.encode())
    return h.hexdigest()[:16]


def _stage_book(book_root: Path) -> None:
    """A book root other than the project gets the project's book pages and config."""
    if book_root.resolve() == PROJECT_ROOT:
        return
    book_root.mkdir(parents=True, exist_ok=True)
    for name in BOOK_FILES:
        src, dst = PROJECT_ROOT / name, book_root / name
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("executed"))
        else:
            shutil.copy2(src, dst)


def chapter_problem(path: Path) -> str | None:
    """Why an executed notebook is not a finished chapter (missing, unreadable, failed or half-executed
    by a killed run), or None when papermill finished every cell."""
    if not path.exists():
        return "not executed"
    try:
        nb = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return "unreadable (truncated?)"
    pm_meta = nb.get("metadata", {}).get("papermill", {})
    if pm_meta.get("exception"):
        return "its execution failed"
    unfinished = [i for i, c in enumerate(nb.get("cells", []))
                  if c.get("metadata", {}).get("papermill", {}).get("status") != "completed"]
    if unfinished or not pm_meta.get("end_time"):
        return f"half-executed (cell {unfinished[0] if unfinished else '?'} never finished)"
    return None


def _snapshot(run_dir: Path) -> dict[str, str]:
    """{path relative to the run folder: content digest} of the run's result files (cheap: cached)."""
    if not run_dir.exists():
        return {}
    out = {}
    for f in run_dir.rglob("*"):
        rel = f.relative_to(run_dir)
        hidden = any(part.startswith(".") for part in rel.parts)  # the lock, temporaries of atomic writes
        if hidden or rel.parts[0] in SCRATCH or rel.as_posix() == RECORD or not f.is_file():
            continue  # stamps are kept: a deleted stamp re-runs its notebook
        out[rel.as_posix()] = artifacts.file_digest(f)
    return out


def _stale(entry: dict | None, key: str, out: Path, run_dir: Path) -> str | None:
    """Why a notebook must run again, or None when its entry, executed copy and files are all current."""
    if entry is None:
        return "not executed yet (or it did not finish)"
    if entry.get("key") != key:
        return "params, the notebook or an earlier notebook changed"
    problem = chapter_problem(out)
    if problem:
        return f"executed copy {out} is {problem}"
    if "files" not in entry:
        return "recorded before content checks"
    for rel, want in entry["files"].items():
        path = run_dir / rel
        if not path.is_file():
            return f"{path} it wrote is missing"
        if artifacts.file_digest(path) != want:
            return f"{path} it wrote changed since (edited, truncated or corrupted)"
    return None


def _read_record(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        record = json.loads(path.read_text())
        return record if isinstance(record, dict) else {}
    except (OSError, json.JSONDecodeError) as err:
        print(f"{path} is unreadable ({err}): every notebook re-runs (stages still current inside skip)",
              file=sys.stderr, flush=True)
        return {}


def execute(params_file: str, only: list[str] | None = None, start: str | None = None, force: bool = False,
            book_root: Path = PROJECT_ROOT, notebook_dir: Path | None = None) -> bool:
    """Execute the selected notebooks; True when all succeeded. Raises artifacts.RunLocked when another
    process runs the same run folder."""
    params = load(params_file)  # fail on bad params before any computation
    with artifacts.run_lock(params.run_dir):
        return _execute(params, resolve(params_file), notebooks(notebook_dir), only, start, force, book_root)


def _execute(params: Params, params_path: Path, all_nbs: list[Path], only, start, force: bool, book_root: Path) -> bool:
    import papermill as pm

    logging.getLogger("papermill").setLevel(logging.ERROR)
    out_dir = book_root / EXECUTED
    run_dir = params.run_dir
    record_path = run_dir / RECORD  # lives with the artifacts: deleting runs/<name> re-runs its notebooks
    record = _read_record(record_path)
    selected = set(_select(all_nbs, only, start))
    previous, rerun_chain = "", False
    for nb in all_nbs:
        key = _stamp_key(params, nb, previous)
        previous = key
        if nb not in selected:
            continue
        out = out_dir / nb.name
        entry = record.get(nb.name)
        if not force and not rerun_chain:
            reason = _stale(entry, key, out, run_dir)
            if reason is None:
                print(f"{nb.stem:<16} up to date, skipped", flush=True)
                continue
            if entry is not None:
                print(f"{nb.stem:<16} re-runs: {reason}", flush=True)
        rerun_chain = True  # everything after a re-run notebook re-runs too
        record.pop(nb.name, None)  # no "done" entry while it runs: a killed run never looks finished
        artifacts.write_json(record_path, record)
        before = _snapshot(run_dir)
        start_time = time.time()
        out_dir.mkdir(parents=True, exist_ok=True)
        out.unlink(missing_ok=True)
        if force:
            os.environ[artifacts.FORCE_ENV] = "1"  # the kernel inherits it: every stage recomputes
        try:
            # Only params_file is passed: the notebook reads and validates the file itself, and papermill's
            # injected cell is parsed, never executed (config.guard_papermill).
            pm.execute_notebook(str(nb), str(out), parameters={"params_file": str(params_path)},
                                cwd=str(PROJECT_ROOT), kernel_name="python3", progress_bar=False)
        except pm.PapermillExecutionError as err:
            print(f"{nb.stem:<16} FAILED after {time.time() - start_time:.1f} s in cell {err.exec_count}: "
                  f"{err.ename}: {err.evalue}\n  partially executed notebook: {out}", file=sys.stderr, flush=True)
            return False
        finally:
            os.environ.pop(artifacts.FORCE_ENV, None)
        after = _snapshot(run_dir)
        written = {rel for rel, d in after.items() if before.get(rel) != d}
        for other in record.values():  # a file belongs to the last notebook that wrote it
            other["files"] = {r: d for r, d in other.get("files", {}).items() if r in after and r not in written}
        kept = set((entry or {}).get("files", {})) | written
        record[nb.name] = {"key": key, "seconds": round(time.time() - start_time, 1),
                           "files": {rel: after[rel] for rel in sorted(kept) if rel in after}}
        artifacts.write_json(record_path, record)
        print(f"{nb.stem:<16} {record[nb.name]['seconds']:7.1f} s", flush=True)
    _write_record(params, params_path, out_dir, record)
    return True


def _write_record(params: Params, params_path: Path, out_dir: Path, stamps: dict) -> None:
    """book/executed/reproducibility.md: the params file, versions and notebook times behind this book."""
    times = "\n".join(f"| {name} | {entry['seconds']:.1f} |" for name, entry in sorted(stamps.items()))
    versions = "\n".join(f"| {name} | {version} |" for name, version in artifacts.versions().items())
    shown = params_path.relative_to(PROJECT_ROOT) if params_path.is_relative_to(PROJECT_ROOT) else params_path
    text = f"""# Reproducibility record

This book was built from the params file `{shown}`
(run `{params.name}`, params fingerprint `{params.fingerprint()}`); its artifacts are in `{params.run_dir.name}/`
under `{params.runs_dir}/`. Re-run it with

```bash
python -m rlvr_utils run --params {shown}
```

## Params file

```yaml
{params_path.read_text().strip()}
```

## Packages

| package | version |
| --- | --- |
{versions}

## Notebook execution times (seconds, last execution)

| notebook | seconds |
| --- | --- |
{times}
"""
    (out_dir / "reproducibility.md").write_text(text)


def build_book(book_root: Path = PROJECT_ROOT, notebook_dir: Path | None = None) -> Path:
    """Jupyter Book 1.x over the executed notebooks (no execution at build time), warnings as errors.
    Refuses when a chapter is missing, failed or half-executed."""
    chapters = notebooks(notebook_dir)
    missing = [nb.name for nb in chapters if not (book_root / EXECUTED / nb.name).exists()]
    if missing:
        raise SystemExit(f"book not built: chapters not executed yet: {', '.join(missing)} "
                         f"(run without --only, or with --from)")
    broken = {nb.name: chapter_problem(book_root / EXECUTED / nb.name) for nb in chapters}
    broken = {name: why for name, why in broken.items() if why}
    if broken:  # e.g. a run killed while it re-executed a chapter
        raise SystemExit("book not built: " + "; ".join(f"{name} is {why}" for name, why in broken.items())
                         + ". Run the notebooks again (python -m rlvr_utils run --params ...).")
    _stage_book(book_root)
    start = time.time()
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(book_root), "--warningiserror", "--quiet"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"jupyter-book build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    index = book_root / "_build" / "html" / "index.html"
    print(f"{'book':<16} {time.time() - start:7.1f} s -> {index}", flush=True)
    return index
