"""The treatment registry: every model compared with the reference (SFT), what it is known to carry, and how it
is built. Training, variants, every instrument, the verdict, compare and the notebooks read it; nothing else
lists treatment names.

A *treatment family* is one file in this folder that calls `register(Family(...))`: it expands the params into
treatments (`expand(cfg) -> [Treatment]`) and builds one (`build(cfg, name)`, weight arithmetic) or trains one
(`train(cfg, name)`, RLVR's recipe). Adding a control or a null family is that one file, its import in
`treatments/__init__.py` (and, if it has settings, a params field).

Kinds and known answers:
  - 'study': RLVR itself; its answer is what the study asks (None);
  - 'control': a trained change confined to one component, whose answer is known (Routing or Representation);
  - 'placebo': a *trained* change with no task signal (RLVR's recipe, paid by draws that ignore the
    completion): must read "no evidence";
  - 'null': a change that carries no task signal (a random direction of RLVR's size): must read "no evidence";
  - 'identical': SFT itself, copied: must read "no evidence";
  - 'user': a checkpoint a user adds to compare (answer unknown).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

PARAMS = ("variants",)  # the families expand params.variants
REFERENCE = "sft"  # every treatment is measured against this checkpoint
STUDY = "rlvr"
ROUTING = "Routing"
REPRESENTATION = "Representation learning"
NO_EVIDENCE = "no evidence"
BOTH = "both"  # both components changed in a way the task explains, and the gain needs them together
REDUNDANT = "redundant"  # both did, and each alone carries most of the gain
NOT_MEASURED = "not measured"
Kind = Literal["study", "control", "placebo", "null", "identical", "user"]
REFERENCE_KINDS = ("placebo", "null", "identical")  # known to carry no task signal: what treatments are read against


@dataclass(frozen=True)
class Treatment:
    name: str
    kind: Kind
    answer: str | None  # the reading it is known to carry: ROUTING, REPRESENTATION, NO_EVIDENCE; None = unknown
    family: str  # the registered family that made it
    description: str = ""
    trained: bool = False  # built by a training run (its checkpoint's stamp is a training stage's)
    full: bool = False  # a control whose other components moved too (for no task reason): not "which side moved"
    rescales: str | None = None  # the treatment whose update this one is, rescaled: the same direction
    calibrates: tuple[str, ...] | None = None  # the verdict's row groups this control's answer holds for (None: all)


@dataclass(frozen=True)
class Family:
    name: str
    expand: Callable[[object], list[Treatment]]  # params -> this family's treatments, in order
    build: Callable[[object, str], str] | None = None  # (params, name) -> what was done, for weight arithmetic
    order: int = 50  # position among families: study first, then controls, identical, nulls
    train: Callable[[object, str], list] | None = None  # (params, name) -> log history, for trained treatments


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    _FAMILIES[family.name] = family
    return family


def _families() -> list[Family]:
    """The registered families (rlvr_utils/treatments/__init__.py imports every family file), in order."""
    return sorted(_FAMILIES.values(), key=lambda f: f.order)


def all(cfg) -> list[Treatment]:  # noqa: A001 (registry.all reads naturally)
    """Every treatment the params ask for, in the order the book shows them."""
    out = [t for family in _families() for t in family.expand(cfg)]
    names = [t.name for t in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"treatment names {twice} are used twice: a variants.user name may not repeat a "
                         f"registered treatment's ({', '.join(n for n in names if n not in twice)})")
    return out


def names(cfg, *kinds: str) -> list[str]:
    """Treatment names, optionally of some kinds only ('null', 'control', ...)."""
    return [t.name for t in all(cfg) if not kinds or t.kind in kinds]


def built(cfg) -> list[str]:
    """Treatments made by weight arithmetic from other checkpoints (registry.build), in registry order."""
    return [t.name for t in all(cfg) if _FAMILIES[t.family].build is not None]


def trained(cfg) -> list[str]:
    """Treatments trained with RLVR's recipe besides RLVR itself (registry.train)."""
    return [t.name for t in all(cfg) if _FAMILIES[t.family].train is not None]


def kinds(cfg) -> dict[str, str]:
    """{treatment: kind}, for colouring and grouping."""
    return {t.name: t.kind for t in all(cfg)}


def get(cfg, name: str) -> Treatment:
    for t in all(cfg):
        if t.name == name:
            return t
    raise KeyError(f"treatment {name!r} is not in this run's registry; it has: {', '.join(names(cfg))}")


def expected(cfg) -> dict[str, str]:
    """{treatment: the reading it must get} for every treatment whose answer is known."""
    return {t.name: t.answer for t in all(cfg) if t.answer is not None}


def build(cfg, name: str) -> str:
    treatment = get(cfg, name)
    family = _FAMILIES[treatment.family]
    if family.build is None:
        return f"{name}: nothing to build here"
    return family.build(cfg, name)


def train(cfg, name: str) -> list:
    """Train one trained treatment in this process (what `python -m rlvr_utils train --stage NAME` runs)."""
    family = _FAMILIES[get(cfg, name).family]
    if family.train is None:
        raise ValueError(f"treatment {name!r} is not trained (it is built from checkpoints: registry.build)")
    return family.train(cfg, name)


def has_checkpoint(ref: str | Path) -> bool:
    """One rule for "this checkpoint exists": a local folder with a config.json, or a hub id (checked when
    loaded)."""
    path = Path(ref)
    if path.is_absolute() or str(ref).startswith((".", "~")) or path.exists():
        return (path.expanduser() / "config.json").is_file()
    return str(ref).count("/") == 1  # 'org/name': a hub id


def available(cfg, wanted: list[str] | None = None) -> list[str]:
    """Treatments (all, or those `wanted`) whose checkpoint exists, in registry order."""
    chosen = names(cfg) if wanted is None else [n for n in names(cfg) if n in wanted]
    return [n for n in chosen if has_checkpoint(cfg.model_ref(n))]

