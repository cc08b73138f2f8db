"""The house rules of the library, checked on its source: dependencies declared once and derived, no import
cycle, modules one can read in a sitting, one hook layer, one treatment registry, one model-family adapter,
no private name crossing modules, no chapter number inside the library."""
import ast
import re
from pathlib import Path

import pytest

from rlvr_utils.core import deps
from rlvr_utils.core.params import Params

PACKAGE = Path(deps.ROOT)
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
# `device` is where a run computes, not what (rlvr_utils.core.device): like runs_dir, in no fingerprint
SECTIONS = set(Params.model_fields) - {"name", "seed", "rehearsal", "runs_dir", "source", "device"}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source(path: Path) -> str:
    return path.read_text()


# params read through `cfg.<section>` (or `params.`, `p.`): the notation the whole package uses
_READ = re.compile(r"\b(?:cfg|params|p)\.(\w+)\b")
SCHEMA = {"rlvr_utils.core.params", "rlvr_utils.core.config", "rlvr_utils.core.notebook", "rlvr_utils.publish.pages",
          "rlvr_utils.__main__"}  # these define, load or print every section


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_a_module_declares_every_params_section_it_reads(path):
    """A section read but not declared (here or by a module imported) would leave a cache stale when it changes:
    the bug where weights read evaluation.confidence but re-ran only on `weights`."""
    name = module_name(path)
    if name in SCHEMA:
        return
    read = set(_READ.findall(source(path))) & SECTIONS
    missing = read - set(deps.sections([name]))
    assert not missing, f"{name} reads {sorted(missing)} but no PARAMS it depends on declares them"


def _graph() -> dict[str, set[str]]:
    return {module_name(p): deps.direct_imports(module_name(p)) for p in MODULES}


def test_the_import_graph_has_no_cycle():
    graph, state, path = _graph(), {}, []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_every_module_reads_in_one_sitting(path):
    assert len(source(path).splitlines()) < 500


def test_hooks_live_in_the_hook_layer_only():
    pattern = re.compile(r"register_forward(_pre)?_hook|isinstance\(output, tuple\)")
    offenders = [module_name(p) for p in MODULES if pattern.search(source(p)) and module_name(p) != "rlvr_utils.models.hooks"]
    assert not offenders, offenders


def test_treatment_names_live_in_the_registry_only():
    """Control, null and identical names are registered by their family's file (and offered by params)."""
    pattern = re.compile(r"[\"'](attn_only|mlp_only|identical)[\"']|null_\{|[\"']null_\d|startswith\([\"']null")
    allowed = ("rlvr_utils.treatments.", "rlvr_utils.core.params")
    offenders = [module_name(p) for p in MODULES if pattern.search(source(p)) and not module_name(p).startswith(allowed)]
    assert not offenders, offenders


def test_model_family_knowledge_lives_in_the_families_only():
    pattern = re.compile(r"\b(self_attn|post_attention_layernorm|input_layernorm|q_proj|gate_proj|c_attn|"
                         r"query_key_value|dense_4h_to_h)\b")
    offenders = [module_name(p) for p in MODULES if pattern.search(source(p))
                 and not module_name(p).startswith("rlvr_utils.models.families")]
    assert not offenders, offenders


def test_no_private_name_is_imported_across_modules():
    offenders = []
    for path in MODULES:
        for node in ast.walk(ast.parse(source(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rlvr_utils"):
                offenders += [f"{module_name(path)}: {node.module}.{a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
    assert not offenders, offenders


def test_the_library_names_no_chapter():
    """Chapters refer to the library, never the reverse: a renumbered chapter cannot leave a stale number here."""
    pattern = re.compile(r"\b(notebook|chapter)s? \d{1,2}\b", re.IGNORECASE)
    offenders = [f"{module_name(p)}: {m.group(0)}" for p in MODULES for m in pattern.finditer(source(p))]
    assert not offenders, offenders
