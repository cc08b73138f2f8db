"""The book's Data page: every metrics file of the run (metrics/*.json and *.csv, the evidence table and the
verdict among them) copied into the book as a download, listed with its size, its sha256, the chapter that
wrote it and what it holds, plus a SHA256SUMS file so that a reader can check a downloaded copy
(`sha256sum -c SHA256SUMS`). The numbers of the book are read from these files; a reader can recompute any
of them, or redo an analysis, without re-running the study."""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

PAGE = "data.md"  # under the book's pages folder (book/); _toc.yml lists book/data
FOLDER = "data"  # the copies, next to the page, so that {download} links are relative
SUMS = "SHA256SUMS"
RECORD = "executed_notebooks.json"  # rlvr_utils.publish.runner.RECORD (importing the runner here would be a cycle)
KINDS = ("*.json", "*.csv")
# Stamps (<file>_stamp.json) record what a result was computed from, for the runner's "up to date" check:
# they hold digests of local files, not results, so the page leaves them out.
STAMP_SUFFIX = "_stamp.json"

# What each file holds, for a reader deciding what to download. A file not named here is still listed, with
# its top-level keys (JSON) or its columns (CSV), so a new instrument's metrics need no edit here to appear.
HOLDS = {
    "verdict.json": "the verdict: every evidence row with its reading on RLVR, the controls, the identical copy "
                    "and the nulls, whether it counts and why, the tally, the thresholds and the caveats",
    "evidence.csv": "the evidence of the verdict chapter as data: one line per row, treatment and signal, one "
                    "column per field (row, treatment, signal, value, ci_low, ci_high, null_low, null_high, "
                    "reading, counts, ...)",
    "evidence.json": "the same records as evidence.csv, with a description of every column",
    "eval.json": "accuracy of base, SFT and RLVR on the held-out problems (greedy and pass@k), with bootstrap "
                 "intervals",
    "variants.json": "accuracy of every treatment (controls, identical copy, nulls) and its gain over SFT, with "
                     "intervals",
    "cka.json": "debiased CKA of base, SFT and RLVR at every layer and site, with intervals and permutation "
                "baselines, and each treatment's end-to-end change",
    "same_input.json": "same-input change of each component's function (SFT's inputs through SFT's and the "
                       "treatment's weights), per treatment and layer",
    "probes.json": "linear probes with control tasks: accuracy and selectivity per layer and site, the noise "
                   "floor, and each treatment's selectivity gain",
    "lens.json": "logit lens and cross-model lens (stitching) per layer and treatment",
    "crosscoder.json": "crosscoders per model pair: relative decoder norms, Latent Scaling, counts of specific "
                       "latents, and the causal test (ablation and transplant)",
    "transfer.json": "dictionary transfer: the share of each treatment's activations that SFT's sparse dictionary "
                     "leaves unexplained on held-out problems, beyond SFT's own",
    "patching.json": "activation patching: total and direct effects of attention and MLP outputs per layer and "
                     "treatment",
    "grafting.json": "grafting: the accuracy of SFT with a treatment's attention or MLP weights swapped in",
    "weights.json": "weight updates per matrix and component: norms, structured energy, rotation of the top "
                    "singular subspace, effective rank, sparsity, per treatment",
}


def _holds(path: Path) -> str:
    """What a file holds: its known description, else what can be read off the file itself."""
    if path.name in HOLDS:
        return HOLDS[path.name]
    if path.name.startswith("train_") and path.suffix == ".json":  # one per trained model: train_<model>.json
        return (f"training log of `{path.stem.removeprefix('train_')}`: the trainer's log history at every "
                "logging step (loss and learning rate; rewards for GRPO) and wall time")
    try:
        if path.suffix == ".csv":
            with path.open(newline="") as f:
                header = next(csv.reader(f), [])
            return "columns: " + ", ".join(f"`{c}`" for c in header) if header else "an empty table"
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as err:
        return f"unreadable here ({type(err).__name__})"
    if isinstance(data, dict):
        return "keys: " + ", ".join(f"`{k}`" for k in data) if data else "an empty object"
    return f"a JSON {type(data).__name__}"


def _size(n: int) -> str:
    for unit, scale in (("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f}\u00a0{unit}"  # no break between number and unit
    return f"{n}\u00a0B"


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def metrics_files(metrics_dir: Path) -> list[Path]:
    """The run's result files, by name: every JSON and CSV under metrics/ except the stamps and hidden or
    temporary files (an interrupted atomic write leaves .<name>.tmp)."""
    if not metrics_dir.is_dir():
        return []
    found = {p for kind in KINDS for p in metrics_dir.glob(kind)}
    found = [p for p in found if p.is_file() and not p.name.startswith(".") and not p.name.endswith(STAMP_SUFFIX)]
    # the verdict and the evidence first (what most readers come for), then in the order of HOLDS, then by name
    order = list(HOLDS)
    return sorted(found, key=lambda p: (order.index(p.name) if p.name in order else len(order), p.name))


def written_by(run_dir: Path) -> dict[str, str]:
    """{metrics file name: the notebook (stem) that last wrote it}, from the runner's record of the run."""
    try:
        record = json.loads((run_dir / RECORD).read_text())
    except (OSError, ValueError):
        return {}
    out = {}
    for notebook, entry in sorted(record.items()) if isinstance(record, dict) else ():
        for rel in (entry or {}).get("files") or ():
            if rel.startswith("metrics/"):
                out[rel.removeprefix("metrics/")] = notebook.removesuffix(".ipynb")
    return out


def _one_line(text: str) -> str:
    return " ".join(text.split())


def page(run_name: str | None, files: list[tuple[str, int, str, str, str]]) -> str:
    """The Data page's Markdown. `files`: (name, size in bytes, sha256, notebook that wrote it, what it
    holds), each file already copied to data/<name> beside the page."""
    lines = ["# Data", ""]
    if run_name is None:
        return "\n".join(lines + ["This book was built without a run's params, so it carries no run's data. "
                                  "`python -m rlvr_utils run --params FILE` builds a run's book with its "
                                  "metrics here.", ""])
    if not files:
        return "\n".join(lines + [f"Run `{run_name}` has written no metrics yet (`runs/{run_name}/metrics/` is "
                                  "empty): run its notebooks with `python -m rlvr_utils run --params FILE`.", ""])
    lines += [f"The chapters read their results from the files below, written by run `{run_name}` "
              f"(`runs/{run_name}/metrics/`). Download one to check a number or to redo an analysis without "
              "re-running the study. The chapter that wrote each file explains its measurement; the "
              f"[reproducibility record](executed/reproducibility.md) gives the params, code and package "
              "versions that made them.", ""]
    # a list, not a table: it wraps at any page width, where four columns would scroll on a phone
    for name, size, _, notebook, holds in files:
        chapter = f", written by [{notebook}](executed/{notebook}.ipynb)" if notebook else ""
        lines.append(f"- {{download}}`{name} <{FOLDER}/{name}>` ({_size(size)}{chapter}) — {_one_line(holds)}")
    lines += ["", "## Checksums", "",
              f"The sha256 of each file as the run wrote it ({{download}}`{SUMS} <{FOLDER}/{SUMS}>`). In the "
              f"folder you downloaded the files to, `sha256sum -c {SUMS}` says whether each copy is intact.", "",
              "```text", *(f"{digest}  {name}" for name, _, digest, _, _ in files), "```", ""]
    return "\n".join(lines)


def write(pages_dir: str | Path, run_dir: str | Path | None, run_name: str | None = None) -> Path:
    """Copy the run's metrics files into <pages_dir>/data/ (stale copies removed), write SHA256SUMS and the
    page <pages_dir>/data.md; returns the page. `run_dir` None: a page that says the book has no run."""
    pages_dir = Path(pages_dir)
    pages_dir.mkdir(parents=True, exist_ok=True)
    folder = pages_dir / FOLDER
    # a file the run no longer has must not stay downloadable: the folder holds only this build's copies
    if folder.exists():
        shutil.rmtree(folder)
    rows = []
    if run_dir is not None:
        run_dir = Path(run_dir)
        run_name = run_name or run_dir.name
        files = metrics_files(run_dir / "metrics")
        if files:
            folder.mkdir(parents=True)
        authors = written_by(run_dir)
        for src in files:
            dst = folder / src.name
            shutil.copyfile(src, dst)
            # hashed from the copy: the sum must match the bytes a reader downloads
            rows.append((src.name, dst.stat().st_size, sha256(dst), authors.get(src.name, ""), _holds(dst)))
        if rows:
            (folder / SUMS).write_text("".join(f"{digest}  {name}\n" for name, _, digest, _, _ in rows))
    out = pages_dir / PAGE
    out.write_text(page(run_name if run_dir is not None else None, rows))
    return out
