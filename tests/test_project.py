"""What a fresh clone relies on: notebooks committed clean and tagged, environment files in sync."""
import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stripped_and_parameterized(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "commit without outputs"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and "params_file" in "".join(tagged[0]["source"])
    # papermill injects the YAML's sections (model, data, ...) as variables: read them before any import
    # can shadow them (e.g. `from rlvr_utils import data`)
    setup = "".join(code[code.index(tagged[0]) + 1]["source"])
    before = setup.split("notebook.params(globals())")[0]
    assert "notebook.params(globals())" in setup and before.strip() == "from rlvr_utils.core import notebook\n\ncfg =".strip()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_reads_like_a_chapter(path):
    text = "".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown")
    for heading in ("## Overview", "## Prerequisites", "## Summary", "## What's next"):
        assert heading in text, f"{path.name} lacks {heading!r}"


def test_toc_lists_every_notebook():
    toc = (ROOT / "_toc.yml").read_text()
    for nb in NOTEBOOKS:
        assert f"book/executed/{nb.stem}" in toc


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r): r.replace(" ", "") for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    have = {_name(r): r.replace(" ", "") for r in pip}
    assert have == wanted


def test_cpu_install_never_resolves_vllm():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "torch==2.13.0" in project["dependencies"]
    base_and_dev = project["dependencies"] + project["optional-dependencies"]["dev"]
    assert not any(_name(r) in ("vllm", "deepspeed") for r in base_and_dev)
    assert any(_name(r) == "vllm" for r in project["optional-dependencies"]["gpu"])
