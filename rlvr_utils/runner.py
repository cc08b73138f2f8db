"""Run the book: execute the notebooks in order with papermill, then build it with Jupyter Book 1.x.

A notebook is skipped when its executed copy was made from the same params, the same notebook source,
and up-to-date predecessors (a stamp chain); `force` re-runs everything asked for. The first failure
stops the run with the notebook, the cell, the error and the path of the partially executed copy.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from . import artifacts
from .config import PROJECT_ROOT, Params, load, resolve

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
EXECUTED = Path("book") / "executed"  # under the book root; _toc.yml points here
BOOK_FILES = ("_config.yml", "_toc.yml", "book")


def notebooks() -> list[Path]:
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


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


def execute(params_file: str, only: list[str] | None = None, start: str | None = None, force: bool = False,
            book_root: Path = PROJECT_ROOT) -> bool:
    """Execute the selected notebooks; True when all succeeded."""
    import papermill as pm

    # The YAML's sections are read by config.from_notebook, not declared in the parameters cell.
    logging.getLogger("papermill").setLevel(logging.ERROR)
    params = load(params_file)  # fail on bad params before any computation
    raw = yaml.safe_load(resolve(params_file).read_text()) or {}
    out_dir = book_root / EXECUTED
    # Stamps live with the run's artifacts: deleting runs/<name> re-runs its notebooks.
    stamps_path = params.run_dir / "executed_notebooks.json"
    stamps = json.loads(stamps_path.read_text()) if stamps_path.exists() else {}
    selected = set(_select(notebooks(), only, start))
    previous, rerun_chain = "", False
    for nb in notebooks():
        key = _stamp_key(params, nb, previous)
        previous = key
        if nb not in selected:
            continue
        out = out_dir / nb.name
        if not force and not rerun_chain and stamps.get(nb.name, {}).get("key") == key and out.exists():
            print(f"{nb.stem:<16} up to date, skipped", flush=True)
            continue
        rerun_chain = True  # everything after a re-run notebook re-runs too
        start_time = time.time()
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            pm.execute_notebook(str(nb), str(out), parameters={**raw, "params_file": str(resolve(params_file))},
                                cwd=str(PROJECT_ROOT), kernel_name="python3", progress_bar=False)
        except pm.PapermillExecutionError as err:
            print(f"{nb.stem:<16} FAILED after {time.time() - start_time:.1f} s in cell {err.exec_count}: "
                  f"{err.ename}: {err.evalue}\n  partially executed notebook: {out}", file=sys.stderr, flush=True)
            stamps.pop(nb.name, None)
            artifacts.write_json(stamps_path, stamps)
            return False
        stamps[nb.name] = {"key": key, "seconds": round(time.time() - start_time, 1)}
        artifacts.write_json(stamps_path, stamps)
        print(f"{nb.stem:<16} {stamps[nb.name]['seconds']:7.1f} s", flush=True)
    _write_record(params, resolve(params_file), out_dir, stamps)
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


def build_book(book_root: Path = PROJECT_ROOT) -> Path:
    """Jupyter Book 1.x over the executed notebooks (no execution at build time), warnings as errors."""
    _stage_book(book_root)
    missing = [nb.name for nb in notebooks() if not (book_root / EXECUTED / nb.name).exists()]
    if missing:
        raise SystemExit(f"book not built: chapters not executed yet: {', '.join(missing)} "
                         f"(run without --only, or with --from)")
    start = time.time()
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(book_root), "--warningiserror", "--quiet"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"jupyter-book build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    index = book_root / "_build" / "html" / "index.html"
    print(f"{'book':<16} {time.time() - start:7.1f} s -> {index}", flush=True)
    return index
