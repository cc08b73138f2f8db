"""Run the book: execute the notebooks in order with papermill, then build it with Jupyter Book 1.x.

The run's record (runs/<name>/executed_notebooks.json) tells the truth: a notebook's entry is removed
when it starts and written only after it succeeds, with the digest of every run file it wrote. A
notebook is skipped only when its entry was made from the same params, notebook source and up-to-date
predecessors (a stamp chain), its executed copy is complete, and every file it wrote is unchanged;
otherwise it and every later notebook re-run (their stages skip inside what is still current).
`force` re-runs what it names and makes their stages recompute (artifacts.FORCE_ENV). One run folder
runs one run at a time (lock.run_lock). The first failure stops the run with the notebook, the
cell, the error and the path of the partially executed copy; the book is never built from it.

Each run has its own book (runs/<name>/book/: the executed notebooks and _build/html), so two runs never
mix chapters, and a failed run touches only its own. A notebook re-runs only when the params sections it
reads (declared by the library modules it imports: rlvr_utils.core.deps), its source, the source of those
modules or the files of the notebooks it reads from (UPSTREAM) changed.
While a notebook runs, one terminal line shows its cell, elapsed time and the kernel's last progress or
log line; the kernel's output goes to runs/<name>/logs/<notebook>.log, and the executed copy is cleaned
for the book (rlvr_utils.publish).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from rlvr_utils.core import artifacts, lock, deps
from rlvr_utils.publish import checks
from rlvr_utils.publish import pages, clean as publish
from rlvr_utils.resources import plan
from rlvr_utils.core.config import PROJECT_ROOT, Params, resolve

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
EXECUTED = Path("book") / "executed"  # under the book root; _toc.yml points here
BOOK_FILES = ("_config.yml", "_toc.yml", "book")
RECORD = "executed_notebooks.json"
BOOK, LOGS = "book", "logs"  # the run's own book root and kernel logs, under runs/<name>/
SCRATCH = ("trainer", BOOK, LOGS)  # run folders that hold no results of a notebook (scratch, book, logs)
# The last earlier chapter whose files (and its predecessors') a chapter reads; not listed: all earlier ones.
UPSTREAM = {"05_cka": "04_extract", "06_probes": "04_extract", "07_crosscoder": "04_extract",
            "08_patching": "04_extract", "09_spectra": "03_variants"}
META = "rlvr_utils"  # executed notebook metadata: the stamp key and params it was executed with


def run_book_root(params: Params) -> Path:
    """Where a run's book lives: runs/<name>/book (its chapters in book/executed, the HTML in _build/html)."""
    return params.run_dir / BOOK


def notebooks(folder: Path | None = None) -> list[Path]:
    return sorted(Path(folder or NOTEBOOK_DIR).glob("[0-9][0-9]_*.ipynb"))


def _select(all_nbs: list[Path], only: list[str] | None, start: str | None) -> list[Path]:
    numbers = [nb.name[:2] for nb in all_nbs]
    folder = _shown(all_nbs[0].parent) if all_nbs else "the notebook folder"
    for n in (only or []) + ([start] if start else []):
        if n.zfill(2) not in numbers:
            raise SystemExit(f"no notebook numbered {n!r} in {folder}; have: {', '.join(numbers) or 'none'}")
    if only:
        return [nb for nb in all_nbs if nb.name[:2] in {n.zfill(2) for n in only}]
    if start:
        return [nb for nb in all_nbs if nb.name[:2] >= start.zfill(2)]
    return all_nbs


def _code_cells(nb: Path) -> list[str]:
    return ["".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]


def chapter_modules(nb: Path) -> set[str]:
    """The rlvr_utils modules a chapter's code cells import."""
    return deps.notebook_modules(_code_cells(nb))


def chapter_sections(nb: Path) -> tuple[str, ...]:
    """Params sections a chapter reads: those its library modules declare (rlvr_utils.core.deps) and those its
    own cells read (`cfg.<section>`), never a hand-kept list."""
    fields = set(Params.model_fields) - {"source", "name", "runs_dir"}  # where a run is, not what it computes
    own = {m for cell in _code_cells(nb) for m in re.findall(r"\bcfg\.(\w+)", cell)} & fields
    return tuple(sorted(set(deps.sections(chapter_modules(nb))) | own))


def _outside_inputs(params: Params, modules) -> dict[str, str | None]:
    """Digests of the files outside the run that a chapter's modules read: a module that reads such files says
    so with a function `outside_inputs(cfg)` (the verdict reads the replicate seeds' metrics)."""
    import importlib

    out = {}
    for name in deps.closure(modules):
        if deps.defines(name, "outside_inputs"):
            out.update(importlib.import_module(name).outside_inputs(params))
    return out


def _stamp_key(params: Params, nb: Path, all_nbs: list[Path], record: dict) -> str:
    """What a chapter's executed copy depends on: the params sections it reads, its source, the source of
    the library modules it runs, and the files the chapters it reads from wrote (as recorded, with their
    digests)."""
    modules = chapter_modules(nb)
    fingerprint = params.fingerprint(*chapter_sections(nb)) + deps.code_digest(modules)
    outside = _outside_inputs(params, modules)
    earlier = [n.name for n in all_nbs if n.name < nb.name]
    last = UPSTREAM.get(nb.stem)
    if last:
        earlier = [n for n in earlier if n <= f"{last}.ipynb"]
    upstream = {}  # the files of those chapters, whichever of them wrote each last
    for n in earlier:
        upstream.update((record.get(n) or {}).get("files") or {n: "not executed"})
    h = hashlib.sha256()
    for part in (fingerprint, nb.read_bytes(), json.dumps(upstream, sort_keys=True), json.dumps(outside, sort_keys=True)):
        h.update(part if isinstance(part, bytes) else part.encode())
    return h.hexdigest()[:16]


def _stage_book(book_root: Path, chapters: list[Path]) -> None:
    """A book root other than the project gets the project's book pages and config. Chapters from another
    notebook folder than the project's get a table of contents of their own."""
    if book_root.resolve() == PROJECT_ROOT:
        return
    book_root.mkdir(parents=True, exist_ok=True)
    for name in BOOK_FILES:
        src, dst = PROJECT_ROOT / name, book_root / name
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("executed"))
        else:
            shutil.copy2(src, dst)
    if chapters and chapters != notebooks():
        (book_root / "book" / "overview.md").write_text("# Overview\n\n```{include} abstract.md\n```\n")
        lines = ["format: jb-book", "root: book/overview", "chapters:"]
        lines += [f"  - file: book/executed/{nb.stem}" for nb in chapters]
        # not the bibliography: it links the project's chapters, which a book of other notebooks lacks
        lines += ["  - file: book/executed/reproducibility", "  - file: book/params", "  - file: book/data"]
        (book_root / "_toc.yml").write_text("\n".join(lines) + "\n")


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


def _executed_with(path: Path) -> dict:
    try:
        return json.loads(path.read_text()).get("metadata", {}).get(META, {})
    except (OSError, json.JSONDecodeError):
        return {}


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
        return "the params sections it reads, its source, or the files it reads from earlier chapters changed"
    problem = chapter_problem(out)
    if problem:
        return f"executed copy {out} is {problem}"
    made_with = _executed_with(out)
    if made_with.get("key") != key:
        return f"executed copy {out} was made from other params or another run ({made_with.get('run', 'unknown')})"
    if "files" not in entry or "executed" not in entry:
        return "recorded before content checks"
    if artifacts.file_digest(out) != entry["executed"]:
        return f"executed copy {out} changed since the run made it (edited?): the book shows only what ran"
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


class Interrupted(Exception):
    """Ctrl-C during a run: the notebook it stopped in is not recorded as done."""


class _Live:
    """One terminal line for the running notebook: cell n/total, elapsed time and the kernel's last progress
    or log line, redrawn every second. Only on a terminal; elsewhere the runner prints result lines only."""

    def __init__(self, stem: str, stream=None):
        self.stem, self.stream = stem, stream or sys.stderr
        self.enabled = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.cells, self.note, self.start = "", "", time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, daemon=True) if self.enabled else None

    def __enter__(self):
        if self._thread:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def _tick(self):
        while not self._stop.wait(1.0):
            self.draw()

    def draw(self):
        if not self.enabled or self._stop.is_set():
            return
        width = shutil.get_terminal_size((100, 20)).columns - 1
        line = f"{self.stem:<16} {self.cells:<12} {time.time() - self.start:7.0f} s  {self.note}"
        self.stream.write("\r\x1b[K" + line[:width])
        self.stream.flush()

    # papermill's cell progress bar (tqdm) writes here
    def write(self, text: str) -> None:
        text = text.strip("\r\n ")
        if text:
            self.cells = text
    def flush(self) -> None:
        pass


class _KernelOutput:
    """The kernel's stdout or stderr: into the run's log file, and its last line onto the live line."""

    def __init__(self, log, live: _Live):
        self.log, self.live = log, live

    def write(self, text: str) -> None:
        self.log.write(text)
        self.log.flush()
        pieces = [p.strip() for p in text.replace("\r", "\n").split("\n") if p.strip()]
        if pieces:
            self.live.note = pieces[-1]

    def flush(self) -> None:
        self.log.flush()


@contextlib.contextmanager
def _kernel_fds(log):
    """While a kernel runs, file descriptors 1 and 2 point at the log: the kernel inherits them, so what it
    writes outside its notebook streams (its own startup warnings) lands in the log, and tqdm in the kernel
    never takes it for a terminal. Yields the terminal's stderr for the live line."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    terminal = os.fdopen(os.dup(saved[2]), "w", buffering=1, closefd=True)
    try:
        for fd in (1, 2):
            os.dup2(log.fileno(), fd)
        yield terminal
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        terminal.close()


def execute(params_file: str, only: list[str] | None = None, start: str | None = None, force: bool = False,
            book_root: Path | None = None, notebook_dir: Path | None = None) -> bool:
    """Execute the selected notebooks; True when all succeeded. Raises lock.RunLocked when another
    process runs the same run folder, Interrupted on Ctrl-C. The book root defaults to the run's own."""
    params = checks.checked(params_file)  # fail on bad params before any computation
    _select(notebooks(notebook_dir), only, start)  # and on a notebook number that does not exist
    plan.refuse_if_impossible(params)  # and on a run that cannot fit this machine (memory, disk)
    with lock.run_lock(params.run_dir):  # every refusal above leaves the run folder untouched
        return _execute(params, resolve(params_file), notebooks(notebook_dir), only, start, force,
                        Path(book_root) if book_root else run_book_root(params))



def _shown(path: Path) -> str:
    path = Path(path)
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def book_paths(params: Params, params_path: Path) -> dict[str, str]:
    """Absolute paths of this machine -> what the book shows instead."""
    runs = resolve(params.runs_dir)
    paths = {str(params_path): _shown(params_path) if params_path.is_relative_to(PROJECT_ROOT) else params_path.name,
             str(PROJECT_ROOT) + "/": "", str(PROJECT_ROOT): "."}
    if not runs.is_relative_to(PROJECT_ROOT):
        paths[str(runs)] = "runs"
    paths[str(Path.home())] = "~"
    return paths


def _execute(params: Params, params_path: Path, all_nbs: list[Path], only, start, force: bool, book_root: Path) -> bool:
    import papermill as pm

    logging.getLogger("papermill").setLevel(logging.ERROR)  # e.g. "Passed unknown parameter" is ours to check
    out_dir = book_root / EXECUTED
    run_dir = params.run_dir
    record_path = run_dir / RECORD  # lives with the artifacts: deleting runs/<name> re-runs its notebooks
    record = _read_record(record_path)
    selected = set(_select(all_nbs, only, start))
    shown_params = _shown(params_path)
    for nb in all_nbs:
        if nb not in selected:
            continue
        key = _stamp_key(params, nb, all_nbs, record)  # after earlier chapters of this run updated the record
        out = out_dir / nb.name
        entry = record.get(nb.name)
        if not force:
            reason = _stale(entry, key, out, run_dir)
            if reason is None:
                print(f"{nb.stem:<16} up to date, skipped", flush=True)
                continue
            if entry is not None:
                print(f"{nb.stem:<16} re-runs: {reason}", flush=True)
        record.pop(nb.name, None)  # no "done" entry while it runs: a killed run never looks finished
        artifacts.write_json(record_path, record)
        before = _snapshot(run_dir)
        start_time = time.time()
        out_dir.mkdir(parents=True, exist_ok=True)
        out.unlink(missing_ok=True)
        log_path = run_dir / LOGS / f"{nb.stem}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if force:
            os.environ[artifacts.FORCE_ENV] = "1"  # the kernel inherits it: every stage recomputes
        try:
            with open(log_path, "w") as log, _kernel_fds(log) as terminal, _Live(nb.stem, terminal) as live:
                bar = {"file": live, "desc": "", "bar_format": "cell {n_fmt}/{total_fmt}", "mininterval": 0} \
                    if live.enabled else False
                # Only params_file is passed: the notebook reads and validates the file itself, and papermill's
                # injected cell is parsed, never executed (notebook.guard_papermill).
                pm.execute_notebook(str(nb), str(out), parameters={"params_file": str(params_path)},
                                    cwd=str(PROJECT_ROOT), kernel_name="python3", progress_bar=bar,
                                    stdout_file=_KernelOutput(log, live), stderr_file=_KernelOutput(log, live),
                                    # the kernel's own "running over TCP without encryption" warning: local only
                                    extra_arguments=["--IPKernelApp.log_level=ERROR"])
        except pm.PapermillExecutionError as err:
            print(f"{nb.stem:<16} FAILED after {time.time() - start_time:.1f} s in cell {err.exec_count}: "
                  f"{err.ename}: {err.evalue}\n  partially executed notebook: {out}\n  kernel log: {log_path}",
                  file=sys.stderr, flush=True)
            return False
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted in {nb.stem} after {time.time() - start_time:.0f} s; it is not recorded "
                              f"as done (its log: {_shown(log_path)}). Resume with: python -m rlvr_utils run "
                              f"--params {shown_params}  (finished notebooks and stages are skipped, training "
                              "resumes from its last checkpoint)") from None
        finally:
            os.environ.pop(artifacts.FORCE_ENV, None)
        _publish(params, params_path, nb, out, log_path, key)
        after = _snapshot(run_dir)
        written = {rel for rel, d in after.items() if before.get(rel) != d}
        for other in record.values():  # a file belongs to the last notebook that wrote it
            other["files"] = {r: d for r, d in other.get("files", {}).items() if r in after and r not in written}
        kept = set((entry or {}).get("files", {})) | written
        record[nb.name] = {"key": key, "seconds": round(time.time() - start_time, 1),
                           "executed": artifacts.file_digest(out),
                           "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                           "code": pages.git_version(),
                           "files": {rel: after[rel] for rel in sorted(kept) if rel in after}}
        artifacts.write_json(record_path, record)
        print(f"{nb.stem:<16} {record[nb.name]['seconds']:7.1f} s", flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "reproducibility.md").write_text(publish.relative(
        pages.reproducibility(params, shown_params, params_path.read_text(), record), book_paths(params, params_path)))
    return True


def _publish(params: Params, params_path: Path, nb: Path, out: Path, log_path: Path, key: str) -> None:
    """Clean the executed copy for the book and record what it was made from."""
    # the evidence's downloads are linked beside its table by the verdict chapter, from the Data page's copies
    publish.publish(out, log_path, book_paths(params, params_path))
    import nbformat

    executed = nbformat.read(out, as_version=4)
    executed.metadata[META] = {"key": key, "run": params.name, "params_fingerprint": params.fingerprint()}
    nbformat.write(executed, out)


def build_book(book_root: Path | None = None, notebook_dir: Path | None = None, params: Params | None = None) -> Path:
    """Jupyter Book 1.x over the executed notebooks (no execution at build time), warnings as errors.
    Refuses when a chapter is missing, failed, half-executed or from another run. With `params`, the
    generated pages (abstract, params reference) are written and the book root defaults to the run's."""
    if book_root is None:
        if params is None:
            raise ValueError("build_book needs a book root or the run's params")
        book_root = run_book_root(params)
    book_root = Path(book_root)
    chapters = notebooks(notebook_dir)
    source = params.source if params is not None and not params.source.startswith("<") else None
    again = f"python -m rlvr_utils run --params {_shown(Path(source)) if source else 'FILE'}"
    missing = [nb.name for nb in chapters if not (book_root / EXECUTED / nb.name).exists()]
    if missing:
        raise SystemExit(f"book not built: chapters not executed yet: {', '.join(missing)}. Run them: {again} "
                         f"(without --only; or --from {missing[0][:2]})")
    broken = {nb.name: chapter_problem(book_root / EXECUTED / nb.name) for nb in chapters}
    broken = {name: why for name, why in broken.items() if why}
    if broken:  # e.g. a run killed while it re-executed a chapter
        raise SystemExit("book not built: " + "; ".join(f"{name} is {why}" for name, why in broken.items())
                         + f". Run the notebooks again: {again}")
    if params is not None:
        other = {nb.name: _executed_with(book_root / EXECUTED / nb.name).get("run") for nb in chapters}
        other = {n: r for n, r in other.items() if r != params.name}
        if other:
            raise SystemExit(f"book not built: chapters of another run in {book_root / EXECUTED}: {other}. Run this "
                             f"one's: {again} (without --book-root, each run has a book folder of its own)")
        record = _read_record(params.run_dir / RECORD)
        changed = [nb.name for nb in chapters if (record.get(nb.name) or {}).get("executed")
                   != artifacts.file_digest(book_root / EXECUTED / nb.name)]
        if changed:
            raise SystemExit(f"book not built: {', '.join(changed)} in {book_root / EXECUTED} differ from what this "
                             f"run executed (edited, or executed by another command): run the book again ({again}), "
                             "which re-executes them")
    _stage_book(book_root, chapters)
    pages_dir = book_root / "book"
    (pages_dir / "params.md").write_text(pages.params_reference())
    verdict = next((f"executed/{nb.stem}.ipynb" for nb in chapters if nb.stem.endswith("_verdict")), None)
    (pages_dir / "abstract.md").write_text(pages.abstract(params, verdict) if params is not None else
                                           "The abstract is written from the run's metrics by `python -m rlvr_utils run`.\n")
    pages.data(params, pages_dir)  # book/data.md + book/data/: the run's metrics as downloads
    start = time.time()
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(book_root), "--warningiserror", "--quiet"]
    # Sphinx rebuilds a page when its source's mtime changed; a chapter whose content changed with its mtime
    # kept must be rebuilt too: every page is rebuilt whenever any chapter's content differs from the last build
    built = book_root / "_build" / ".rlvr-chapters.json"
    now = {p.name: artifacts.file_digest(p) for p in sorted((book_root / EXECUTED).glob("*")) if p.is_file()}
    if not built.is_file() or json.loads(built.read_text()) != now:
        cmd.append("--all")
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"jupyter-book build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    artifacts.write_json(built, now)
    index = book_root / "_build" / "html" / "index.html"
    print(f"{'book':<16} {time.time() - start:7.1f} s", flush=True)
    print(f"the book: {_shown(index)}  (open it in a browser)", flush=True)
    return index
