"""No hand-written results number in the book's prose. The introduction promises that every number in the book
was computed by the run that built it, so the static text (book/*.md, the notebooks' Markdown cells and the
text their code cells write by hand into Markdown(...)) may hold no number that a run measures: those come from the metrics, as notebook output, glued values or generated pages
(the abstract, the Parameters page, the Data page).

The rule, on the text a reader sees (code, inline code, roles such as {glue:text}`key` or {cite}`key`, math,
link targets and HTML tags removed first):
- no decimal (0.83, .5), percentage (74%), signed number (+3, −12), or number with a results unit
  (points, s, seconds, minutes, hours, nats, degrees);
- no count of a thing a params file sets (3 seeds, 100 steps, 500 problems): name the param instead
  (`crosscoder.seeds`), whose value the Parameters page and the reproducibility record give;
- integers otherwise are structure (chapter numbers, years of citations, "k = 8" in a definition, "layer 1",
  90° as the largest angle, arithmetic in an example problem); "95% interval" names the default confidence level.
The few numbers that are neither results nor params (a cited paper's own figure, a constant of a definition)
are listed in ALLOWED with the reason."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]

# (file, the exact text around the number) -> why it is not a results number of this run
ALLOWED: dict[tuple[str, str], str] = {
    ("book/bibliography.md", "(5–30% of the parameters)"): "Mukherjee et al. (2025)'s own figure, cited",
    ("notebooks/09_spectra.ipynb", "touches only 5–30% of the"): "Mukherjee et al. (2025)'s own figure, cited",
    ("notebooks/09_spectra.ipynb", "0.5 means an equal"): "the MLP share's midpoint: a definition",
    ("notebooks/07_crosscoder.ipynb", "Δnorm > 0.9"): "Minder et al. (2025)'s published cut, cited",
    ("notebooks/07_crosscoder.ipynb", "near 0.5;"): "the relative norm's midpoint: a definition",
    ("book/methods.md", "(0.5 = equal)"): "the MLP share's midpoint: a definition",
    ("book/methods.md", "of exactly 0.5"): "the relative norm's midpoint: a definition",
    ("book/methods.md", "Δnorm > 0.9"): "Minder et al. (2025)'s published cut, cited",
    ("notebooks/09_spectra.ipynb", "0.5 = as much per"): "the MLP share's midpoint: a definition",
}

_FENCE = re.compile(r"^(`{3,}|~{3,})(.*?)$(.*?)^\1\s*$", re.MULTILINE | re.DOTALL)
_STRIP = [
    re.compile(r"\{[\w:-]+\}`[^`]*`"),  # MyST roles: {glue:text}`key`, {cite:p}`key`, {download}`...`
    re.compile(r"``[^`]*``|`[^`]*`"),  # inline code
    re.compile(r"\$\$.*?\$\$|\$[^$\n]+\$", re.DOTALL),  # math
    re.compile(r"\]\([^)]*\)"),  # link targets
    re.compile(r"<[^>\n]+>"),  # HTML tags (the text between them stays)
    re.compile(r"^:[\w-]+:.*$", re.MULTILINE),  # directive options
]
# the confidence level of every interval: the default of each section's `confidence`, named with it
_CONFIDENCE = re.compile(r"\b95% (?:\*\*)?(?:bootstrap |paired )*(?:intervals?|bands?|CI)\b")
_RESULTS = re.compile(
    r"(?<![\w.])\d*[.,]\d+(?![\w])"  # a decimal (a thousands comma counts: "7,105 tokens")
    r"|\d+\s*%"  # a percentage
    r"|(?<![\w\d])[+−]\d|±\s?\d"  # a signed number or a ± margin ("19 + 2" is arithmetic, not a sign)
    r"|(?<![\w.])\d+\s*(?:points?|s|seconds?|minutes?|min|hours?|h|nats)(?![\w])"  # a number with a results unit
    r"|(?<![\w.])\d+[\s-]+(?:crosscoder\s+)?(?:seeds?|steps?|problems?|latents?|tokens?|generations?|shuffles?|"
    r"placebos?|nulls?|folds?|treatments?|crosscoders?|prompts?|samples?)(?![\w])",  # a count a params file sets
    re.IGNORECASE)


def visible_text(markdown: str) -> str:
    """The prose a reader sees: code fences dropped (a directive fence's body kept), roles, code, math, link
    targets, tags and directive options removed."""
    text = _FENCE.sub(lambda m: m.group(3) if m.group(2).strip().startswith("{") else "", markdown)
    for pattern in (*_STRIP, _CONFIDENCE):
        text = pattern.sub(" ", text)
    return text


def results_numbers(markdown: str) -> list[str]:
    """Each number in the visible text that reads as a result or a params count, with the text around it."""
    text = visible_text(markdown)
    return [" ".join(text[max(0, m.start() - 30):m.end() + 20].split()) for m in _RESULTS.finditer(text)]


def markdown_literals(code: str) -> str:
    """The text a code cell writes by hand into `Markdown(...)`: its string literals, without the f-strings'
    replacement fields and format specs (those are the run's values)."""
    skip = set()
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.FormattedValue):
            skip.update(id(n) for n in ast.walk(node))
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and getattr(n.func, "id", getattr(n.func, "attr", None)) == "Markdown"]
    return " ".join(n.value for call in calls for n in ast.walk(call)
                    if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip)


def _sources() -> list[tuple[str, str]]:
    """(file, text) of every page and of every notebook's Markdown: its Markdown cells and what its code cells
    write by hand into Markdown(...)."""
    out = [(p.relative_to(ROOT).as_posix(), p.read_text()) for p in sorted((ROOT / "book").glob("*.md"))]
    for nb_path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(nb_path, as_version=4)
        name = nb_path.relative_to(ROOT).as_posix()
        out += [(name, c.source) for c in nb.cells if c.cell_type == "markdown"]
        out += [(name, markdown_literals(c.source)) for c in nb.cells if c.cell_type == "code"]
    return out


def _allowed(name: str, around: str) -> bool:
    return any(f == name and snippet in around for (f, snippet) in ALLOWED)


@pytest.mark.parametrize("name", sorted({name for name, _ in _sources()}))
def test_no_hand_written_results_number_in_the_prose(name):
    found = [around for n, text in _sources() if n == name for around in results_numbers(text)
             if not _allowed(name, around)]
    assert not found, (f"{name} holds numbers that a run measures or a params file sets, written by hand: "
                       + " | ".join(found) + ". Generate them from the metrics (glue, a generated page or "
                       "notebook output), name the param, or (a cited figure, a definition) add them to ALLOWED "
                       "with the reason")


def test_every_allowed_number_is_still_in_the_prose():
    """An allow-list entry whose text left the pages would silently allow the next number written there."""
    texts = {}
    for name, text in _sources():
        texts[name] = texts.get(name, "") + "\n" + " ".join(visible_text(text).split())
    stale = [(f, s) for f, s in ALLOWED if s not in texts.get(f, "")]
    assert not stale, f"ALLOWED entries no longer in the prose: {stale}"


@pytest.mark.parametrize("text", [
    "ablating them costs RLVR 83.6 points", "SFT reached 74%", "a gain of +3 on seed 2", "took 853 s",
    "Counts are the mean over 3 crosscoder seeds", "the 100-step schedule", "on 500 problems", "7,105 tokens"])
def test_the_rule_catches_results_and_params_counts(text):
    assert results_numbers(text), text


@pytest.mark.parametrize("text", [
    "## 05 · CKA", "Kornblith et al. (2019)", "with k = 8 directions", "layer 1's MLP", "`sft.min_delta` = `0.001`",
    "{glue:text}`rlvr_gain:.1f` points", "```python\nx = 0.5\n```", "1 − CKA", "a rank-1 update", "seeds 0 and 1"])
def test_the_rule_leaves_structure_and_generated_values(text):
    assert not results_numbers(text), text


def test_a_code_cells_hand_written_markdown_is_read_and_its_values_are_not():
    code = 'display(Markdown(f"gain {g:.1%} (noise-like updates give 0.8-0.98)"))\nprint("0.5")'
    assert results_numbers(markdown_literals(code)) and "0.8" in markdown_literals(code)
    assert ".1%" not in markdown_literals(code) and "0.5" not in markdown_literals(code)
