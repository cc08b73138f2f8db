"""An executed notebook as a published chapter: what a reader needs stays, the rest goes to the run's log.

After papermill has run a notebook, `publish` rewrites the executed copy for Jupyter Book 1 (MyST-NB):
- code is hidden one click away (`hide-input`); the parameters cell and papermill's injected cell are
  removed (`remove-cell`): the reproducibility record names the params file;
- stderr (warnings, logging, tqdm bars), Trainer progress tables, widgets and bare return values such as
  `PosixPath(...)` leave the page; the run's log file keeps them (stderr is written there live);
- a Markdown table printed to stdout is shown as a table, not as raw pipes;
- absolute paths of the building machine become relative ones;
- every image becomes a numbered figure with a caption: the caption `plots.save` attached, else the
  heading of the section the figure sits in; its label is `plots.label` of the name it was saved under
  (`fig-05-cka-components`), so the chapter's prose refers to it as {numref}`fig-05-cka-components`;
- a reference to a figure this run did not draw (an optional figure) would be a broken link: a reading
  guide ("How to read {numref}`…`") whose figures were all left out is removed, any other such reference
  says that the run did not draw it; an old-style "How to read this figure" after a cell that drew none is
  removed.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat

from rlvr_utils.core.plots import CAPTION_KEY, FIGURE_KEY, label

HIDE, REMOVE = "hide-input", "remove-cell"
_TABLE_ROW = re.compile(r"^\s*\|.*\|\s*$")
_TABLE_SEP = re.compile(r"^\s*\|(\s*:?-{3,}:?\s*\|)+\s*$")
_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d|\[?(INFO|WARNING|DEBUG|ERROR)\b)")
_PROGRESS = re.compile(r"\d+%\|.*\|\s*\d+/\d+|\d+(\.\d+)?\s*(it|s)/(s|it)\]")
# reprs a cell returns by accident (its last line), not meant as output
_REPR = re.compile(r"^(PosixPath|WindowsPath|Path)\(|^<[\w.]+ (object )?at 0x|^<(Figure|Axes|matplotlib)|"
                   r"^\[<matplotlib|^Text\(|^<Axes")
_WIDGET = "application/vnd.jupyter.widget-view+json"
_READING_GUIDE = re.compile(r"^\W*How to read (this|the|these) (table and )?figures?|^\W*How to read \{numref\}",
                            re.IGNORECASE)
_FIGURE_REF = re.compile(r"\{numref\}`(?:[^`<]*<)?(fig-[\w-]+)>?`")
NOT_DRAWN = "a figure this run did not draw"


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


class _Cleaner:
    def __init__(self, stem: str, log: list[str], paths: list[tuple[str, str]]):
        self.stem, self.log, self.paths = stem, log, paths
        self.figures = 0
        self.labels: list[str] = []  # of the figures drawn, in order

    def label(self, output: dict) -> str:
        """The figure's label: from the name plots.save gave it, else its position; unique on the page."""
        name = _text(output.get("metadata", {}).get(FIGURE_KEY, ""))
        base = label(name) if name else f"fig-{self.stem.replace('_', '-')}-{self.figures}"
        found, n = base, 1
        while found in self.labels:
            n += 1
            found = f"{base}-{n}"
        self.labels.append(found)
        return found

    def relative(self, text: str) -> str:
        for absolute, shown in self.paths:
            text = text.replace(absolute, shown)
        return text

    def drop(self, why: str, text: str) -> None:
        self.log.append(f"[{self.stem}: {why}, kept out of the book]\n{text.rstrip()}\n")

    def stdout(self, text: str) -> list[dict]:
        """Plain lines stay a stream; progress and logging lines go to the log; a pipe table becomes Markdown."""
        out, plain, lines = [], [], text.splitlines()
        i = 0
        while i < len(lines):
            line = lines[i]
            if _TABLE_ROW.match(line) and i + 1 < len(lines) and _TABLE_SEP.match(lines[i + 1]):
                j = i + 2
                while j < len(lines) and _TABLE_ROW.match(lines[j]):
                    j += 1
                if plain:
                    out.append(nbformat.v4.new_output("stream", name="stdout", text="\n".join(plain) + "\n"))
                    plain = []
                table = "\n".join(lines[i:j])
                out.append(nbformat.v4.new_output("display_data", data={"text/markdown": table,
                                                                        "text/plain": table}))
                i = j
                continue
            if _PROGRESS.search(line) or _LOG_LINE.match(line) or "\r" in line:
                self.drop("progress or logging line", line)
            else:
                plain.append(line)
            i += 1
        if plain and any(p.strip() for p in plain):
            out.append(nbformat.v4.new_output("stream", name="stdout", text="\n".join(plain) + "\n"))
        return out

    def output(self, output: dict) -> list[dict]:
        kind = output.get("output_type")
        if kind == "stream":
            if output.get("name") == "stderr":  # already in the log, written live by the runner
                return []
            return self.stdout(self.relative(_text(output.get("text", ""))))
        if kind not in ("display_data", "execute_result"):
            return [output]  # errors stay visible (the book is never built from a failed chapter anyway)
        data = output.get("data", {})
        plain = _text(data.get("text/plain", ""))
        if _WIDGET in data:
            self.drop("widget", plain)
            return []
        if "<progress" in _text(data.get("text/html", "")):  # the Trainer's live progress and loss table
            self.drop("training progress table", plain)
            return []
        if kind == "execute_result" and set(data) <= {"text/plain"} and _REPR.match(plain.strip()):
            self.drop("return value", plain)
            return []
        output = copy.deepcopy(output)
        for mime, value in output.get("data", {}).items():
            if mime.startswith("text/") or mime in ("application/json",):
                output["data"][mime] = self.relative(_text(value))
        return [output]

    def cell(self, cell: dict, heading: str) -> list[dict]:
        """The cell with clean outputs, split so that each image is a figure cell of its own (MyST-NB
        applies a cell's figure options to every output, and a figure label may appear once)."""
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if "injected-parameters" in tags or "parameters" in tags:
            if REMOVE not in tags:
                tags.append(REMOVE)
            return [cell]
        if HIDE not in tags and "remove-input" not in tags and REMOVE not in tags:
            tags.append(HIDE)
        outputs = [o for out in cell.get("outputs", []) for o in self.output(out)]
        own_figure = bool(cell["metadata"].get("mystnb", {}).get("figure"))
        cells, current = [], copy.deepcopy(cell)
        current["outputs"] = []
        for out in outputs:
            if "image/png" in out.get("data", {}) and not own_figure:
                self.figures += 1
                caption = _text(out.get("metadata", {}).get(CAPTION_KEY, "")) or heading or self.stem
                figure = copy.deepcopy(cell)
                figure["source"] = "# figure drawn by the cell above"  # MyST-NB skips a cell with no source
                figure["outputs"] = [out]
                figure["metadata"]["tags"] = [t for t in tags if t != HIDE] + ["remove-input"]
                figure["metadata"]["mystnb"] = {"figure": {"caption": self.relative(caption), "name": self.label(out)}}
                figure["id"] = f"{cell.get('id', 'c')}-fig{self.figures}"[:64]
                cells += [current, figure]
                current = copy.deepcopy(cell)
                current.update(source="# output of the cell above", outputs=[], id=f"{cell.get('id', 'c')}-after{self.figures}"[:64])
                current["metadata"]["tags"] = [t for t in tags if t != HIDE] + ["remove-input"]
            else:
                current["outputs"].append(out)
        if current["outputs"] or not cells:
            cells.append(current)
        return cells


def relative(text: str, paths: dict[str, str]) -> str:
    """`text` with the absolute paths in `paths` replaced by what the book shows (longest first)."""
    return _Cleaner("", [], _ordered(paths)).relative(text)


def _ordered(paths: dict[str, str]) -> list[tuple[str, str]]:
    return sorted(((str(k), v) for k, v in paths.items() if str(k) not in ("", "/")), key=lambda kv: -len(kv[0]))


def _heading(source: str, previous: str) -> str:
    found = [ln.lstrip("#").strip() for ln in source.splitlines() if re.match(r"^#{1,4} ", ln)]
    return found[-1] if found else previous


def _refer_to_drawn(cell, drawn: list[str]) -> bool:
    """Point a Markdown cell's figure references at the figures drawn; False for a reading guide of none."""
    if cell.cell_type != "markdown":
        return True
    refs = _FIGURE_REF.findall(cell.source)
    missing = [r for r in refs if r not in drawn]
    if not missing:
        return True
    if _READING_GUIDE.match(cell.source) and len(missing) == len(refs):
        return False  # removed, not hidden: a hidden cell's {numref} would still be resolved by Sphinx
    cell.source = _FIGURE_REF.sub(lambda m: m.group(0) if m.group(1) in drawn else NOT_DRAWN, cell.source)
    return True


def publish(path: Path, log_path: Path, paths: dict[str, str]) -> int:
    """Rewrite the executed notebook at `path` for the book (see the module docstring); what leaves the page
    is appended to `log_path`. `paths`: absolute path -> what the book shows instead. Returns the number of
    figures."""
    nb = nbformat.read(path, as_version=4)
    removed: list[str] = []
    cleaner = _Cleaner(Path(path).stem, removed, _ordered(paths))
    cells, heading, figures_before = [], "", 0
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            heading = _heading(cell.source, heading)
            cell.source = cleaner.relative(cell.source)
            if (_READING_GUIDE.match(cell.source) and not _FIGURE_REF.search(cell.source)
                    and cleaner.figures == figures_before):  # an old-style guide after a cell that drew none
                tags = cell.setdefault("metadata", {}).setdefault("tags", [])
                tags.append(REMOVE)
            figures_before = cleaner.figures
            cells.append(cell)
        elif cell.cell_type == "code":
            cells += [nbformat.from_dict(c) for c in cleaner.cell(cell, heading)]
        else:
            cells.append(cell)
    nb.cells = [c for c in cells if _refer_to_drawn(c, cleaner.labels)]
    nb.metadata.pop("widgets", None)  # widget state would make MyST-NB load the widget manager from a CDN
    papermill = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path"):
        if key in papermill:
            papermill[key] = cleaner.relative(str(papermill[key]))
    if isinstance(papermill.get("parameters"), dict):
        papermill["parameters"] = {k: cleaner.relative(str(v)) for k, v in papermill["parameters"].items()}
    nbformat.write(nb, path)
    if removed:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as log:
            log.write("\n".join(removed) + "\n")
    return cleaner.figures
