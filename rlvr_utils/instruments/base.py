"""The instrument interface and its one driver.

An instrument is one measurement that the verdict can read. It says what it reads and measures one treatment
against the reference (SFT); the driver does everything else, the same way for every instrument: the list of
treatments whose checkpoints exist (from the registry), the cache (skip when up to date, on content), the stamp,
the loop over treatments with progress, strict JSON, and `metrics/<name>.json`:

    {"variants": {treatment: {key: Estimate}}, ...the instrument's own report (stage comparisons, figures' data)}

What an instrument declares, and what follows from it (never listed twice):
  - `PARAMS` at the top of its module: the params sections it reads. Its fingerprint hashes those of its
    module and of every module it imports, plus their source code (rlvr_utils.core.deps), and the runner
    re-runs its chapter when they change;
  - `reads`: the run's artifacts it reads besides the checkpoints (e.g. "tokens", "activations"), and `stages`:
    checkpoints it reads besides the reference and the treatments (e.g. "base"): their content is checked, so a
    changed input recomputes it.

A new instrument is one folder under instruments/ with a module defining a subclass and its chapter calling
`run(cfg, TheInstrument())` and then drawing; `tests/test_instrument_interface.py` shows a minimal one.
"""
from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

from rlvr_utils.core import artifacts, deps
from rlvr_utils.core.estimate import Estimate, estimates_json
from rlvr_utils.treatments import registry

log = logging.getLogger(__name__)
Measures = dict[str, Estimate]


class Instrument:
    """Subclass and set `name`; implement `measure`, and `prepare` / `report` when the instrument has shared
    work (the reference's activations, comparisons of base, SFT and RLVR) or readings across treatments."""

    name: ClassVar[str]  # the metrics file: metrics/<name>.json
    reads: ClassVar[tuple[str, ...]] = ()  # run-relative artifacts read besides the checkpoints
    stages: ClassVar[tuple[str, ...]] = ()  # checkpoints read besides the reference and the treatments ('base')

    def treatments(self, cfg) -> list[str]:
        """Treatments this instrument measures: every registered one whose checkpoint exists (override to
        narrow, e.g. to those whose activations were extracted)."""
        return registry.available(cfg)

    def prepare(self, cfg, treatments: list[str]) -> Any:
        """Work shared by every treatment (loaded reference, token cache, ...), handed to `measure`."""
        return None

    def measure(self, cfg, treatment: str, shared: Any) -> Measures:
        """{key: Estimate} of one treatment against the reference."""
        raise NotImplementedError

    def report(self, cfg, shared: Any, variants: dict[str, Measures]) -> dict:
        """The rest of the result (what the chapter draws); may add estimates to `variants` that need all
        treatments at once (e.g. a treatment relative to the nulls)."""
        return {}


def fingerprint(cfg, instrument: Instrument, treatments: list[str]) -> str:
    return deps.fingerprint(cfg, type(instrument).__module__, __name__) + ",".join(treatments)


def inputs(cfg, instrument: Instrument, treatments: list[str]) -> list:
    """What the result is computed from, content-checked by its stamp."""
    refs = [cfg.model_ref(n) for n in (*instrument.stages, registry.REFERENCE, *treatments)]
    return [*(cfg.path(r) for r in instrument.reads), *refs]


def path(cfg, instrument: Instrument):
    return cfg.path("metrics", f"{instrument.name}.json")


def run(cfg, instrument: Instrument, force: bool = False, progress: bool = True) -> dict:
    """metrics/<name>.json of this run, computed unless up to date; returns its content."""
    target = path(cfg, instrument)
    treatments = instrument.treatments(cfg)
    available = registry.available(cfg)
    missing = [t for t in registry.names(cfg) if t not in available]  # no checkpoint: a chapter has not run
    if missing:
        log.warning("%s: no checkpoint yet for %s: not measured", instrument.name, ", ".join(missing))
    skipped = [t for t in available if t not in treatments]  # left out by the instrument itself (its docstring says why)
    stamp, ins = fingerprint(cfg, instrument, treatments), inputs(cfg, instrument, treatments)
    if not force and artifacts.is_current(target, stamp, ins):
        log.info("%s is up to date: skipped", target)
        return artifacts.read_json(target)
    started = time.perf_counter()
    shared = instrument.prepare(cfg, treatments)
    variants: dict[str, Measures] = {}
    if progress:
        from tqdm.auto import tqdm

        loop = tqdm(treatments, desc=instrument.name, unit="treatment")
    else:
        loop = treatments
    for name in loop:
        variants[name] = instrument.measure(cfg, name, shared)
    result = instrument.report(cfg, shared, variants)
    result = {**result, "variants": estimates_json(variants), "missing": missing, "not_measured": skipped,
              "seconds": result.get("seconds", time.perf_counter() - started)}
    artifacts.write_json(target, artifacts.json_safe(result))
    artifacts.stamp(target, stamp, ins)
    log.info("%s written in %.1f s", target, time.perf_counter() - started)
    return artifacts.read_json(target)
