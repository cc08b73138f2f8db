"""The book's references, its Data page and the project's citation file:
- every {cite} key used in book/*.md (and in the chapters' text) is in book/references.bib, every entry has
  the fields its type needs and a link, and every work the pages name by author and year has an entry;
- the Data page lists every metrics file of a run with the sha256 of the copy a reader downloads;
- CITATION.cff agrees with pyproject.toml and _config.yml;
- the book's own pages, with the project's _config.yml and _toc.yml, build with warnings as errors, and their
  citations read author-year in round brackets: "(Shao et al., 2024)", "Shao et al. (2024)"."""
from __future__ import annotations

import hashlib
import html as html_lib
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml
from pybtex.database import parse_file

from rlvr_utils.publish import citestyle, data_page, pages, runner

ROOT = Path(__file__).resolve().parents[1]
BIB = ROOT / "book" / "references.bib"
PAGES = sorted((ROOT / "book").glob("*.md"))
_ROLE = re.compile(r"\{cite(?::\w+)?\}`([^`]+)`")
# BibTeX's required fields per entry type (the BibTeX manual); a misc entry needs none there, but a reader
# needs an author or organisation, a title and a year to find it.
REQUIRED = {
    "article": ("author", "title", "journal", "year"),
    "inproceedings": ("author", "title", "booktitle", "year"),
    "book": ("title", "publisher", "year"),
    "techreport": ("author", "title", "institution", "year"),
    "misc": ("author", "title", "year"),
}
# "Yue et al. (2025)", "Hewitt & Liang, 2019", "Minder, Dumas et al. (2025)", "Roy and Vetterli 2007"
# ("Minder, Dumas et al.": the first name is the first author; "HSIC, Song et al.": the second one is)
_NAMED = re.compile(r"\b([A-Z][A-Za-z'-]+)(?:,\s+([A-Z][A-Za-z'-]+))?\s+(?:et\s+al\.?|(?:and|&)\s+[A-Z][A-Za-z'-]+)"
                    r",?\s+\(?(?P<year>(?:19|20)\d\d)\)?")


@pytest.fixture(scope="module")
def bib():
    # strict: a stray "@" in a comment or a duplicate key is an error here, as it is for sphinxcontrib-bibtex
    return parse_file(str(BIB), bib_format="bibtex")


def _chapter_texts() -> list[tuple[str, str]]:
    out = [(p.relative_to(ROOT).as_posix(), p.read_text()) for p in PAGES]
    for nb_path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(nb_path, as_version=4)
        text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        out.append((nb_path.relative_to(ROOT).as_posix(), text))
    return out


def test_every_cited_key_is_in_the_bibliography(bib):
    used = {(name, key.strip()) for name, text in _chapter_texts()
            for keys in _ROLE.findall(text) for key in keys.split(",")}
    assert len({k for _, k in used}) >= 15, "the pages cite almost nothing: are the {cite} roles still there?"
    missing = sorted(f"{name}: {key}" for name, key in used if key not in bib.entries)
    assert not missing, f"cited but not in {BIB.name}: {missing}"


def test_every_entry_has_the_fields_its_type_needs_and_a_link(bib):
    problems = []
    for key, entry in bib.entries.items():
        need = REQUIRED.get(entry.type)
        if need is None:
            problems.append(f"{key}: entry type @{entry.type} is not one this test knows ({sorted(REQUIRED)})")
            continue
        have = set(entry.fields) | set(entry.persons)
        problems += [f"{key} (@{entry.type}) has no {f}" for f in need if f not in have]
        if not re.fullmatch(r"(19|20)\d\d", entry.fields.get("year", "")):
            problems.append(f"{key}: year {entry.fields.get('year')!r} is not a year")
        if not ({"url", "doi"} & set(entry.fields)):
            problems.append(f"{key}: no url or doi (the References page links every work)")
        doi = entry.fields.get("doi", "")
        if doi and not re.fullmatch(r"10\.\d{4,9}/\S+", doi):
            problems.append(f"{key}: doi {doi!r} is not of the form 10.NNNN/...")
    assert not problems, "\n".join(problems)


def test_every_work_named_by_author_and_year_has_an_entry(bib):
    """A page or chapter that names "Surname et al. (YYYY)" in prose (not through a {cite} role) still
    refers to a work of the References page: its first author and year must match an entry."""
    have = {(e.persons["author"][0].last_names[-1].strip("{}").lower(), e.fields["year"])
            for e in bib.entries.values() if e.persons.get("author")}
    missing = []
    for name, text in _chapter_texts():
        text = " ".join(_ROLE.sub("", text).split())  # names split over a line break are still found
        missing += [f"{name}: {m.group(0)}" for m in _NAMED.finditer(text)
                    if not {(a.lower(), m["year"]) for a in m.group(1, 2) if a} & have]
    assert not missing, f"named but not in {BIB.name}: {missing}"


def test_the_named_work_check_reads_the_forms_the_pages_use():
    found = [(m.group(1), m.group(2), m["year"]) for m in _NAMED.finditer(
        "as Yue et al. (2025) report; Hewitt & Liang, 2019; Minder, Dumas et al. (2025); Roy and Vetterli 2007; "
        "unbiased HSIC, Song et al. 2012")]
    assert found == [("Yue", None, "2025"), ("Hewitt", None, "2019"), ("Minder", "Dumas", "2025"),
                     ("Roy", None, "2007"), ("HSIC", "Song", "2012")]


def test_the_book_config_loads_the_bibliography():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    files = config["bibtex_bibfiles"]
    assert files and all((ROOT / f).is_file() for f in files), files
    # sphinx.config.extensions replaces Jupyter Book's list, which is where bibtex_bibfiles would add it
    assert "sphinxcontrib.bibtex" in config["sphinx"]["config"]["extensions"]
    # the style is registered by an extension of the list (rlvr_utils.publish.citestyle)
    assert config["sphinx"]["config"]["bibtex_reference_style"] == citestyle.NAME
    assert "rlvr_utils.publish.citestyle" in config["sphinx"]["config"]["extensions"]
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    assert toc["parts"][-1]["chapters"][-1] == {"file": "book/bibliography"}
    assert "```{bibliography}" in (ROOT / "book" / "bibliography.md").read_text()


def test_citation_file_agrees_with_the_project():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert cff["cff-version"] == "1.2.0"
    assert {"cff-version", "message", "title", "authors"} <= set(cff)  # CFF 1.2.0's required keys
    assert cff["type"] == "software"
    assert str(cff["version"]) == project["version"]
    assert cff["license"] == project["license"]  # an SPDX expression (PEP 639)
    assert cff["authors"] == [{"name": config["author"]}]  # one entity, as the book's title page names it
    assert project["license-files"] == ["LICENSE"]
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith(f"{cff['license']} License\n")
    assert f"Copyright (c) {config['copyright']} {config['author']}\n" in license_text


# ---- the Data page -------------------------------------------------------------------------------------------

def _fake_run(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "tiny"
    metrics = run / "metrics"
    metrics.mkdir(parents=True)
    (metrics / "verdict.json").write_text(json.dumps({"verdict": "inconclusive", "rows": []}))
    (metrics / "evidence.csv").write_text("row,treatment,value\ncka,rlvr,0.5\n")
    (metrics / "new_instrument.json").write_text(json.dumps({"summary": {}, "variants": {}}))
    (metrics / "train_rlvr.json").write_text(json.dumps({"log_history": []}))
    (metrics / "verdict.json_stamp.json").write_text("{}")  # provenance for the runner, not a result
    (metrics / ".eval.json.tmp").write_text("half-written")  # an interrupted atomic write
    (run / data_page.RECORD).write_text(json.dumps({
        "10_verdict.ipynb": {"files": {"metrics/verdict.json": "x", "metrics/evidence.csv": "y",
                                       "metrics/verdict.json_stamp.json": "z"}}}))
    return run


def _listed_sums(page: str) -> dict[str, str]:
    block = page.split("```text\n", 1)[1].split("```", 1)[0]
    return {name: digest for digest, name in (line.split("  ", 1) for line in block.splitlines())}


def test_data_page_lists_each_metrics_file_with_its_sha256(tmp_path):
    run = _fake_run(tmp_path)
    out = data_page.write(tmp_path / "book", run)
    page = out.read_text()
    results = ["verdict.json", "evidence.csv", "new_instrument.json", "train_rlvr.json"]
    for name in results:
        digest = hashlib.sha256((run / "metrics" / name).read_bytes()).hexdigest()
        assert _listed_sums(page)[name] == digest
        assert (tmp_path / "book" / "data" / name).read_bytes() == (run / "metrics" / name).read_bytes()
        assert f"{{download}}`{name} <data/{name}>`" in page
    assert set(_listed_sums(page)) == set(results)  # no stamp, no temporary file
    sums = (tmp_path / "book" / "data" / data_page.SUMS).read_text().splitlines()
    assert sorted(sums) == sorted(f"{d}  {n}" for n, d in _listed_sums(page).items())  # `sha256sum -c` format
    verdict_row = next(line for line in page.splitlines() if line.startswith("- {download}`verdict.json"))
    assert "[10_verdict](executed/10_verdict.ipynb)" in verdict_row  # from the runner's record
    assert "keys: `summary`, `variants`" in page  # an unknown file says what it holds from its content
    assert "columns" not in verdict_row and "`rlvr`" in page  # train_<model>.json: the model it trained
    assert page.index("verdict.json") < page.index("new_instrument.json")  # the verdict first


def test_data_page_drops_a_file_the_run_no_longer_has(tmp_path):
    run = _fake_run(tmp_path)
    data_page.write(tmp_path / "book", run)
    (run / "metrics" / "new_instrument.json").unlink()
    page = data_page.write(tmp_path / "book", run).read_text()
    assert "new_instrument.json" not in page
    assert not (tmp_path / "book" / "data" / "new_instrument.json").exists()


def test_data_page_without_a_run_or_metrics_says_so(tmp_path):
    page = pages.data(None, tmp_path).read_text()
    assert page.startswith("# Data") and "without a run's params" in page and "{download}" not in page
    empty = tmp_path / "runs" / "empty"
    empty.mkdir(parents=True)
    page = data_page.write(tmp_path / "book", empty).read_text()
    assert "has written no metrics yet" in page and "{download}" not in page


def test_data_page_reads_the_runners_record():
    assert data_page.RECORD == runner.RECORD


def test_the_books_own_pages_build_with_warnings_as_errors(tmp_path):
    """The project's _config.yml and _toc.yml over book/*.md, with stand-ins for the executed chapters and
    the generated pages: every {cite} resolves, the References page renders, the Data page's downloads land
    in the HTML with the bytes the page's sha256 describes."""
    root = tmp_path / "book_root"
    root.mkdir()
    for name in ("_config.yml", "_toc.yml"):
        (root / name).write_text((ROOT / name).read_text())
    (root / "book" / "executed").mkdir(parents=True)
    for page in PAGES + [BIB]:
        (root / "book" / page.name).write_text(page.read_text())
    shutil.copytree(ROOT / "book" / "_static", root / "book" / "_static")  # the book's CSS, as the runner stages it
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    for part in toc["parts"]:
        for chapter in part["chapters"]:
            stem = chapter["file"].removeprefix("book/executed/")
            if chapter["file"].startswith("book/executed/") and stem != "reproducibility":
                nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# {stem}")])
                nbformat.write(nb, root / "book" / "executed" / f"{stem}.ipynb")
    (root / "book" / "executed" / "reproducibility.md").write_text("# Reproducibility record\n")
    (root / "book" / "abstract.md").write_text("The abstract.\n")
    (root / "book" / "params.md").write_text(pages.params_reference())
    run = _fake_run(tmp_path)
    page = data_page.write(root / "book", run).read_text()
    result = subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build", str(root),
                             "--warningiserror", "--quiet"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    html = root / "_build" / "html" / "book"
    references = (html / "bibliography.html").read_text()
    assert references.count('role="doc-biblioentry"') == len(parse_file(str(BIB)).entries)  # :all:
    methods = (html / "methods.html").read_text()
    assert 'href="bibliography.html#' in methods  # citations link to their entry
    # what a reader sees: author-year in round brackets, "(Kornblith et al., 2019)", "Wedin (1972)", and several
    # works in one citation separated by semicolons
    text = " ".join(" ".join(html_lib.unescape(re.sub(r"<[^>]+>", "", (html / f"{page}.html").read_text()
                                                      .split("<main", 1)[1])).split())
                    for page in ("intro", "methods", "bibliography"))
    year = r"(?:19|20)\d\d[a-z]?"
    work = rf"(?:[A-Z][\w'-]*|nostalgebraist)[^()\[\];]{{0,60}}?, {year}"
    parenthetical = re.findall(rf"\({work}\)", text)
    several = re.findall(rf"\({work}(?:; {work})+\)", text)
    textual = re.findall(rf"[A-Z][\w'-]+(?: et al\.| and [A-Z][\w'-]+)? \({year}\)", text)
    square = re.findall(rf"\[[^\[\]]{{0,60}}?,? \[?{year}\]", text)
    assert len(parenthetical) >= 10 and several and len(textual) >= 3, (parenthetical, several, textual)
    assert not square, f"citations in square brackets: {square}"
    assert '_static/book.css' in methods  # the CSS that wraps table cells to the column's width
    data = (html / "data.html").read_text()
    downloads = re.findall(r'href="\.\./(_downloads/[^"]+/([^"/]+))"', data)
    sums = _listed_sums(page)
    assert {name for _, name in downloads} == set(sums) | {data_page.SUMS}
    for rel, name in downloads:
        if name != data_page.SUMS:
            assert hashlib.sha256((root / "_build" / "html" / rel).read_bytes()).hexdigest() == sums[name]
