"""A chapter's first cells: papermill's injected parameters are parsed, never run, and the run's params are
read and validated like `check-params` does, with the run's lock held while the kernel lives."""
from __future__ import annotations

from typing import Any

from rlvr_utils.core.lock import acquire_run_lock
from rlvr_utils.core.config import Params, ParamsError, load

NOTEBOOK_PARAMETERS = ("params_file",)  # the only names papermill may inject into a notebook
_PAPERMILL_HEADER = "# Parameters"  # first line of the cell papermill injects
_injected: dict[str, Any] = {}  # what papermill injected, parsed (never executed) by guard_papermill


def guard_papermill() -> None:
    """Called in a notebook's parameters cell: the cell papermill injects next is parsed, never run.

    papermill writes injected parameters as Python source, so a crafted key or value would run as code.
    This IPython input transformer replaces that cell by a call that reads it with `ast` (plain
    `name = <literal>` lines only) and keeps the values for `from_notebook`, which accepts only
    `params_file`. Outside IPython it does nothing.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and _papermill_cell not in shell.input_transformers_cleanup:
        shell.input_transformers_cleanup.insert(0, _papermill_cell)


def _papermill_cell(lines: list[str]) -> list[str]:
    if not lines or lines[0].strip() != _PAPERMILL_HEADER:
        return lines
    return [f"__import__('rlvr_utils.core.notebook', fromlist=['notebook']).receive_injected({''.join(lines)!r})\n"]


def receive_injected(source: str) -> None:
    """Parse papermill's injected cell; refuse anything but `name = <literal>` without running it."""
    import ast

    _injected.clear()
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        raise ParamsError(f"papermill injected a cell that is not Python ({err}); nothing of it ran") from None
    for node in tree.body:
        ok = (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name))
        try:
            value = ast.literal_eval(node.value) if ok else None
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            ok = False
        if not ok:
            raise ParamsError(f"papermill injected code, not a parameter value: {ast.get_source_segment(source, node)!r}."
                              " Refused; nothing of it ran. Pass only the params file: "
                              "papermill NOTEBOOK OUT -p params_file params/X.yaml")
        _injected[node.targets[0].id] = value


def params(namespace: dict[str, Any], lock: bool = True) -> Params:
    """Params inside a notebook, from its one parameter `params_file` (papermill: `-p params_file FILE`),
    validated like `check-params`. Names papermill injected besides it are refused, as are params
    sections bound as variables (papermill's `-f FILE` injects a file's sections: that file would not be
    named in messages, so it is not accepted). With `lock`, the notebook holds the run folder's lock
    (unless the runner that started it does)."""
    unknown = sorted(set(_injected) - set(NOTEBOOK_PARAMETERS))
    bound = [k for k in Params.model_fields if k != "source" and k in namespace
             and type(namespace[k]).__name__ != "module"]
    if unknown or bound:
        raise ParamsError(f"papermill injected {unknown or bound}: these notebooks take one parameter, params_file, "
                          "and read and validate that file themselves. Run: papermill NOTEBOOK OUT -p params_file "
                          "params/X.yaml (not -f params/X.yaml, which injects the file's sections unchecked)")
    source = _injected.get("params_file", namespace.get("params_file", "params/default.yaml"))
    if not isinstance(source, str) or not source.strip():
        raise ParamsError(f"params_file (got {source!r}): expected the path of a params YAML file, e.g. "
                          "params/default.yaml")
    cfg = load(source)
    if lock:
        acquire_run_lock(cfg.run_dir)
    return cfg
