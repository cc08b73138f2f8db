"""What a piece of work depends on, derived from the code itself: never listed twice.

Every module that reads params sections declares them once, at its top: `PARAMS = ("cka", "extract")`.
A module's *sections* are its own PARAMS and those of every rlvr_utils module it imports, directly or not
(imports inside functions count: they are read from the source, not from `sys.modules`). A chapter's sections
are those of the modules its code cells import; an instrument's fingerprint hashes its module's sections. So
when `weights` starts reading `evaluation.confidence`, declaring "evaluation" in its PARAMS re-runs every chapter
and cache that uses it, and `tests/test_deps.py` fails while a module reads a section it does not declare.

The same closure gives a *code digest*: a hash of the source of every rlvr_utils module a chapter or an
instrument runs, so a changed library module re-runs what depends on it (as DVC and Snakemake track code).
"""
from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path
from typing import Iterable

PACKAGE = "rlvr_utils"
ROOT = Path(__file__).resolve().parents[1]  # the package folder
ALWAYS = ("seed", "rehearsal", "model")  # read by almost everything: every fingerprint includes them


def module_file(name: str) -> Path | None:
    """The source file of an rlvr_utils module or package; for a module outside the package (a user's own
    instrument), its file when it is one, so that what it imports from rlvr_utils is followed too."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        import importlib.util
        import sys

        module = sys.modules.get(name)
        origin = getattr(module, "__file__", None) or getattr(importlib.util.find_spec(name), "origin", None) \
            if name else None
        return Path(origin) if origin and origin.endswith(".py") else None
    parts = name.split(".")[1:]
    if not parts:
        return ROOT / "__init__.py"
    rel = Path(*parts)
    for candidate in (ROOT / rel.with_suffix(".py"), ROOT / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported(tree: ast.AST, current: str = "") -> set[str]:
    """rlvr_utils modules an AST imports anywhere (`from rlvr_utils.x import y` counts x.y when y is a module)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith(PACKAGE))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names if module_file(f"{node.module}.{a.name}"))
    return {m for m in out if module_file(m) and m != current}


@functools.lru_cache(maxsize=None)
def _parse(name: str) -> tuple[ast.AST, bytes]:
    source = module_file(name).read_bytes()
    return ast.parse(source), source


def direct_imports(name: str) -> set[str]:
    return imported(_parse(name)[0], name)


def declared(name: str) -> tuple[str, ...]:
    """The PARAMS a module declares at its top level (empty when it reads no params)."""
    for node in _parse(name)[0].body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PARAMS" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    return ()


def defines(name: str, function: str) -> bool:
    """Whether a module defines a top-level function of that name."""
    return any(isinstance(n, ast.FunctionDef) and n.name == function for n in _parse(name)[0].body)


def _parents(name: str) -> set[str]:
    """The packages Python runs before a module (their __init__ may import more: the registries' families)."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))} if name.startswith(PACKAGE + ".") else set()


def closure(names: Iterable[str]) -> list[str]:
    """The modules named and every rlvr_utils module they import, directly or not, with the packages that hold
    them, sorted."""
    seen, todo = set(), [n for n in names if module_file(n)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend((direct_imports(name) | _parents(name)) - seen)
    return sorted(seen)


def sections(names: Iterable[str]) -> tuple[str, ...]:
    """Params sections read by these modules and everything they import, ALWAYS included, sorted."""
    found = set(ALWAYS)
    for name in closure(names):
        found.update(declared(name))
    return tuple(sorted(found))


def code_digest(names: Iterable[str]) -> str:
    """sha256 of the source of these modules and everything they import."""
    h = hashlib.sha256()
    for name in closure(names):
        h.update(name.encode() + b"\0" + _parse(name)[1] + b"\0")
    return h.hexdigest()[:16]


def notebook_modules(code_cells: Iterable[str]) -> set[str]:
    """rlvr_utils modules a notebook's code cells import (cells that do not parse, e.g. IPython magics, are
    read line by line)."""
    out = set()
    for source in code_cells:
        try:
            out |= imported(ast.parse(source))
        except SyntaxError:
            for line in source.splitlines():
                try:
                    out |= imported(ast.parse(line.strip()))
                except SyntaxError:
                    continue
    return out


def fingerprint(cfg, *modules: str) -> str:
    """What a cached artifact made by `modules` depends on: their params sections and their code."""
    return cfg.fingerprint(*sections(modules)) + code_digest(modules)
