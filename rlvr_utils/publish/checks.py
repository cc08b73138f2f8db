"""Checks of a params file that need the treatment registry, which rlvr_utils.core.config cannot import (it lies
below it): run by check-params and before a run starts, after the file's own checks."""
from __future__ import annotations

from rlvr_utils.core.config import load
from rlvr_utils.core.params import Params, ParamsError
from rlvr_utils.treatments import registry

PARAMS = ("crosscoder",)  # params sections read here (rlvr_utils.core.deps)


def problems(cfg: Params) -> list[str]:
    known, out = registry.names(cfg), []
    for key in ("crosscoder.treatments", "crosscoder.causal_treatments"):
        unknown = [t for t in getattr(cfg.crosscoder, key.split(".")[1]) or [] if t not in known]
        if unknown:
            out.append(f"{key} (got {unknown}): not treatments of this run; it has {', '.join(known)}")
    return out


def checked(path, machine: bool = True) -> Params:
    """Params from a file, with every check: the file's own (config.load) and the registry's."""
    cfg = load(path, machine=machine)
    found = problems(cfg)
    if found:
        raise ParamsError("\n".join([f"Invalid params in {cfg.source}:", *(f"  - {line}." for line in found)]))
    return cfg
