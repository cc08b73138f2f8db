"""Book pages generated from the run: the abstract (from its metrics), the params reference (from the
params classes), the reproducibility record (params, code version, machine, times) and the Data page (the
run's metrics files as downloads, rlvr_utils.publish.data_page)."""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

from pydantic import BaseModel

from rlvr_utils.core import artifacts
from rlvr_utils.core.config import PROJECT_ROOT, Params
from rlvr_utils.core.fmt import interval
from rlvr_utils.evidence import limits
from rlvr_utils.publish import data_page

PARAMS = ("evaluation", "grpo", "organism", "variants")  # params sections read here (rlvr_utils.core.deps)


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _entry(summary: dict, key: str) -> tuple | None:
    e = summary.get(key)
    return (e["value"], e.get("ci")) if isinstance(e, dict) and e.get("value") is not None else None


def abstract(cfg: Params, evidence: str | None = "executed/10_verdict.ipynb") -> str:
    """The question, the setup and the answer with its headline numbers, read from metrics/eval.json and
    metrics/verdict.json of the run."""
    summary = _read(cfg.path("metrics", "eval.json")).get("summary", {})
    result = _read(cfg.path("metrics", "verdict.json"))
    model = (f"a model organism of {cfg.organism.num_layers} layers and hidden size {cfg.organism.hidden_size}, "
             "pretrained here on synthetic arithmetic stories" if cfg.model.base == "organism"
             else f"`{cfg.model.base}`")
    trained = ("the SFT and RLVR checkpoints named by the params file (analyze-only: nothing was trained)"
               if cfg.model.analyze_only else
               f"fine-tuned on worked solutions (SFT), then trained with GRPO for {cfg.grpo.steps} steps (RLVR)")
    lines = ["**Question.** Does RLVR (GRPO on problems with checkable answers) only re-route attention to what "
             "the model already knows (Routing), or does it build new features in the MLPs (Representation "
             "learning)?", "",
             f"**Setup.** Run `{cfg.name}`, seed {cfg.seed}: {model}; {trained}. Every measurement is read on "
             "RLVR and on models built to calibrate it: GRPO restricted to attention and to the MLPs (frozen "
             "controls); the same component updates beside a placebo's update of every other weight (full-"
             f"parameter controls); {cfg.variants.placebos} placebo runs of RLVR's recipe paid by coin flips (the "
             f"yardstick); {cfg.variants.nulls} random updates of RLVR's size and a copy of SFT.", ""]
    acc = {s: _entry(summary, f"accuracy_{s}") for s in ("base", "sft", "rlvr")}
    gain = _entry(summary, "rlvr_minus_sft_accuracy")
    if all(acc.values()):
        text = ", ".join(f"{s.upper() if s != 'base' else 'base'} {interval(*acc[s], scale=100)} %"
                         for s in ("base", "sft", "rlvr"))
        lines.append(f"**Accuracy** (greedy, {summary and _n_problems(cfg)} held-out problems, 95% intervals): {text}"
                     + (f"; RLVR − SFT {interval(*gain, scale=100)} points." if gain else "."))
    else:
        lines.append("**Accuracy**: not measured in this run (metrics/eval.json has no summary).")
    lines.append("")
    if result:
        rows = result.get("rows", [])
        counted = [r["measurement"] for r in rows if r.get("calibration") == "counts"]
        lines.append(f"**Calibration.** {len(counted)} of {len(rows)} evidence rows read every control right (frozen "
                     "and full-parameter, raw and at RLVR's norm) and every placebo, null and the copy as 'no "
                     "evidence'" + (": " + "; ".join(m[0].lower() + m[1:] for m in counted) + "." if counted else
                                    ". No instrument passes, so none may decide."))
        lines.append("")
        votes = {k: v for k, v in result.get("tally", {}).items() if v}
        shares = [v for k, v in result.get("summary", {}).items() if k.startswith("graft_") and v.get("ci")]
        lines.append(f"**Answer on this run: {result.get('verdict', 'not reached')}.**"
                     + (" On the counted measurements (each voting once) RLVR reads "
                        + ", ".join(f"{k} on {v}" for k, v in votes.items()) + "." if counted else "")
                     + "".join(f" The {v['description']} is {interval(v['value'], v['ci'])}." for v in shares[:2])
                     + (f" The [evidence table]({evidence}) gives every row with its interval, and the caveats "
                        "that limit it." if evidence else ""))
        if result.get("caveats"):  # what limits the answer, beside it (rlvr_utils.evidence.limits)
            lines += ["", limits.box(result["caveats"])]
    else:
        lines.append("**Answer**: the verdict chapter has not run yet.")
    return "\n".join(lines) + "\n"


def data(cfg: Params | None, pages_dir: Path) -> Path:
    """The Data page (book/data.md) with the run's metrics files copied beside it as downloads; without a
    run's params, a page that says the book carries no data (the table of contents lists the page either way)."""
    return data_page.write(pages_dir, cfg.run_dir if cfg is not None else None, cfg.name if cfg is not None else None)


def _n_problems(cfg: Params) -> str:
    n = _read(cfg.path("metrics", "eval.json")).get("n_problems")
    return str(n) if isinstance(n, int) else str(cfg.evaluation.n_problems)


def _default(field) -> str:
    if field.is_required():
        return "required"
    value = field.default
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, float) and len(repr(value)) > 10:  # 5/6, not 0.8333333333333334
        fraction = Fraction(value).limit_denominator(1000)
        if float(fraction) == value:
            return f"`{fraction}` (≈ {value:.4g})"
    return f"`{json.dumps(value)}`" if value is not None else "`null`"


def _type(annotation) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation).replace("typing.", "")
    return text.replace("|", "\\|").replace("Annotated[int, FieldInfo(annotation=NoneType, required=True, metadata=[Ge(ge=1)])]", "int ≥ 1") \
        .replace("Annotated[int, FieldInfo(annotation=NoneType, required=True, metadata=[Ge(ge=0)])]", "int ≥ 0")


def params_reference() -> str:
    """Every params field: section, key, type, default and description, from the params classes."""
    out = ["# Parameters", "",
           "Every key a params file (`params/*.yaml`) may set, with its default (the embedded experiment) and "
           "what it does. Every key is optional. `python -m rlvr_utils show-params FILE` prints a file's "
           "effective config with these defaults filled in; `check-params FILE` validates it. Generated from "
           "`rlvr_utils/core/params.py`.", ""]
    top = [(k, f) for k, f in Params.model_fields.items() if k != "source" and not _is_section(f)]
    # a list, not a four-column table: a key's description stays whole at any width, a phone's included
    out += ["## Top level", "", *(_param_line(k, f) for k, f in top)]
    for name, field in Params.model_fields.items():
        if not _is_section(field):
            continue
        cls = field.annotation
        out += ["", f"## `{name}`", "", _cell((cls.__doc__ or "").strip().split("\n\n")[0]), "",
                *(_param_line(f"{name}.{k}", f) for k, f in cls.model_fields.items())]
    return "\n".join(out) + "\n"


def _param_line(key: str, field) -> str:
    return f"- `{key}` ({_type(field.annotation)}, default {_default(field)}): {_cell(field.description)}"


def _is_section(field) -> bool:
    return isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)


def _cell(text: str | None) -> str:
    """One line of Markdown: '|' and '<' escaped ('runs/<name>/' would otherwise lose '<name>' as an HTML tag)."""
    return " ".join((text or "").split()).replace("|", "\\|").replace("<", "\\<")


def git_version() -> str:
    git = shutil.which("git")
    if not git or not (PROJECT_ROOT / ".git").exists():
        return "not a git checkout"
    try:
        commit = subprocess.run([git, "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run([git, "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as err:
        return f"unknown ({err})"
    return f"{commit or 'unknown'}" + (" (with uncommitted changes)" if dirty else " (clean)")


def _cpu() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} logical cores"


def _gpu() -> str:
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10).stdout.strip()
            if out:
                return "; ".join(out.splitlines())
        except (OSError, subprocess.SubprocessError):
            pass
    return "none found (nvidia-smi absent or silent)"


def _short_commit(code: str) -> str:
    """A commit as git abbreviates it (12 hex digits), so the wall-time table fits a phone; the code table above
    gives the whole hash."""
    head, _, rest = code.partition(" ")
    return (head[:12] if len(head) == 40 else head) + (f" {rest}" if rest else "")


def machine() -> dict[str, str]:
    return {"code (git commit) at this build": git_version(), "Python": sys.version.split()[0],
            "OS": platform.platform(), "CPU": _cpu(), "GPU": _gpu()}


def reproducibility(cfg: Params, shown_params: str, params_text: str, record: dict) -> str:
    """The params file, the code version, the machine, the packages and each notebook's wall time."""
    rows = "\n".join(f"| {k} | {v} |" for k, v in machine().items())
    versions = "\n".join(f"| {name} | {version} |" for name, version in artifacts.versions().items())
    times = "\n".join(f"| {name.removesuffix('.ipynb')} | {entry.get('seconds', 0):.1f} | {entry.get('finished', '')} "
                      f"| {_short_commit(entry.get('code', 'not recorded'))} |" for name, entry in sorted(record.items()))
    return f"""# Reproducibility record

This book was built from the params file `{shown_params}`
(run `{cfg.name}`, params fingerprint `{cfg.fingerprint()}`); its artifacts are in `runs/{cfg.name}/`.
Re-run it with

```bash
python -m rlvr_utils run --params {shown_params}
```

## Code and machine

| | |
| --- | --- |
{rows}

## Params file

```yaml
{params_text.strip()}
```

## Packages

| package | version |
| --- | --- |
{versions}

## Notebook wall times (seconds, of each notebook's last execution)

| notebook | seconds | finished | code (git commit) |
| --- | --- | --- | --- |
{times}
"""
