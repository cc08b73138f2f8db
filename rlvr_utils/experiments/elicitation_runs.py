"""`python -m rlvr_utils elicit`: the elicitation experiment's sub-runs, one after another, then its result.

For each share f of `elicitation.fractions` and each seed s of `elicitation.seeds` (or the command line's), the
sub-run runs/<name>-elicit-f<f>-s<s>/ is the params file with `data.corpus_new_verbs: f`, `seed: s` and that name,
written into its own folder as params.yaml. It trains base, SFT and RLVR (rlvr_utils.training.train) and evaluates
SFT and RLVR greedily (rlvr_utils.evaluation.evaluate; no pass@k, which the result does not use), each step
skipped when its stamped artifact is up to date, so an interrupted command resumes where it stopped. Sub-runs run
one at a time: training already uses every core. Their greedy answers then become the main run's
metrics/elicitation.json (rlvr_utils.experiments.elicitation), itself stamped with its inputs and recomputed only
when one of them, the experiment's settings or this code changed.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import yaml
from pydantic import ValidationError

from rlvr_utils.core import artifacts, deps, lock
from rlvr_utils.core.config import ORGANISM, Params, ParamsError, resolve
from rlvr_utils.core.params_evidence import ElicitationParams
from rlvr_utils.evaluation import evaluate
from rlvr_utils.experiments import elicitation
from rlvr_utils.publish.checks import checked
from rlvr_utils.training import data, train

PARAMS = ("elicitation", "data")  # params sections read here (rlvr_utils.core.deps)

STAGES = ("base", "sft", "rlvr")  # trained in each sub-run
EVALUATED = ("sft", "rlvr")  # greedy answers the result compares


def settings(cfg: Params, fractions: list[float] | None = None, seeds: list[int] | None = None) -> ElicitationParams:
    """The experiment's settings: the params file's `elicitation` section, with the command line's shares and seeds
    in place of its own; refused with the option and what is allowed when they are not valid."""
    # a schema without the section (before Params carried it) runs the section's defaults
    section = getattr(cfg, "elicitation", None) or ElicitationParams()
    chosen = section.model_dump()
    for key, given in (("fractions", fractions), ("seeds", seeds)):
        if given is not None:
            chosen[key] = list(given)
    try:
        return ElicitationParams(**chosen)
    except ValidationError as err:
        lines = [f"  - {'.'.join(map(str, e['loc']))} (--{e['loc'][0]} or elicitation.{e['loc'][0]} in "
                 f"{cfg.source}): {e['msg']}" for e in err.errors()]
        raise ParamsError("\n".join(["Invalid elicitation settings:", *lines])) from None


def check(cfg: Params) -> None:
    """Refuse a params file the experiment means nothing for: it varies the organism's pretraining corpus, so it
    needs an organism trained here, and an evaluation wording that SFT's data does not use."""
    d, where = cfg.data, cfg.source
    problems = []
    if cfg.model.base != ORGANISM or cfg.model.sft is not None or cfg.model.rlvr is not None:
        problems.append(f"model.base / model.sft / model.rlvr (got {cfg.model.base!r} / {cfg.model.sft!r} / "
                        f"{cfg.model.rlvr!r}): the experiment pretrains the organism again, so model.base must be "
                        f"'{ORGANISM}' and no SFT or RLVR checkpoint may be given")
    if d.sft_source != "synthetic" or d.grpo_source != "synthetic":
        problems.append(f"data.sft_source / data.grpo_source (got {d.sft_source!r} / {d.grpo_source!r}): the "
                        "experiment varies the organism's synthetic corpus; both must be 'synthetic'")
    if d.rl_verbs == "old" or d.rl_verbs == d.sft_verbs:
        problems.append(f"data.rl_verbs (got {d.rl_verbs!r}, data.sft_verbs {d.sft_verbs!r}): the evaluation must "
                        "use a wording SFT's data does not, else pretraining's share of it tests nothing")
    if problems:
        raise ParamsError("\n".join([f"Invalid params for the elicitation experiment in {where}:",
                                     *(f"  - {p}." for p in problems)]))


def sub_run_name(name: str, fraction: float, seed: int) -> str:
    return f"{name}-elicit-f{fraction:g}-s{seed}"


def sub_params(params_file: str | Path, cfg: Params, fraction: float, seed: int) -> Path:
    """runs/<name>-elicit-f<f>-s<s>/params.yaml: the given file with the share, the seed and the name changed
    (rewritten only when that changes, so a resumed command sees the same file)."""
    raw = yaml.safe_load(resolve(params_file).read_text()) or {}
    raw.update(name=sub_run_name(cfg.name, fraction, seed), seed=seed)
    raw["data"] = {**(raw.get("data") or {}), "corpus_new_verbs": fraction}
    raw.pop("elicitation", None)  # a sub-run is one run of the study, not an experiment of its own
    path = cfg.run_dir.parent / raw["name"] / "params.yaml"
    lock.claim(path.parent)  # a run folder of this package's, made before its params file is written in it
    text = yaml.safe_dump(raw, sort_keys=False)
    if not path.is_file() or path.read_text() != text:
        with artifacts.atomic_file(path) as tmp:
            tmp.write_text(text)
    return path


def train_and_evaluate(sub: Params) -> list[str]:
    """Base, SFT and RLVR of one sub-run, then SFT's and RLVR's greedy answers; what is up to date is skipped.
    Holds the sub-run's lock, so a second command on the same experiment stops instead of overwriting it."""
    done = []
    with lock.run_lock(sub.run_dir):
        for stage in STAGES:
            try:
                done.append(train.run_stage(sub, stage))
            except Exception as err:
                raise RuntimeError(f"elicitation sub-run {sub.name} ({sub.source}): training {stage} failed: {err}. "
                                   "Run the same command again to resume from its last checkpoint.") from err
        for stage in EVALUATED:
            done.append(evaluate.run_variant(sub, stage))
    return done


def _stamp_seconds(path: Path) -> float | None:
    """Seconds the stamped artifact took to make (its stamp's record), None when it has none."""
    stamp = path / artifacts.STAMP if path.is_dir() else path.with_name(path.name + artifacts.STAMP)
    if not stamp.is_file():
        return None
    return json.loads(stamp.read_text()).get("seconds")


def greedy_file(sub: Params, stage: str) -> Path:
    return sub.path("eval", f"{stage}_greedy.jsonl")


def grpo_signal(sub: Params) -> float | None:
    """Share of GRPO's groups whose completions differed in reward, over its logged steps (1 - TRL's
    `frac_reward_zero_std`): a group whose answers are all rewarded alike has no advantage and teaches nothing.
    None when the training log has no such entry."""
    path = sub.path("metrics", "train_rlvr.json")
    if not path.is_file():
        return None
    history = artifacts.read_json(path).get("log_history", [])
    zero = [float(row["frac_reward_zero_std"]) for row in history if "frac_reward_zero_std" in row]
    return 1.0 - float(np.mean(zero)) if zero else None


def sub_run_record(sub: Params) -> dict:
    """Where a sub-run is, what each of its steps cost when it was made (seconds, from the stamps), and how much
    reward signal its GRPO run had."""
    seconds = {stage: _stamp_seconds(sub.path("models", stage)) for stage in STAGES}
    seconds.update({f"evaluate_{stage}": _stamp_seconds(greedy_file(sub, stage)) for stage in EVALUATED})
    return {"run": sub.name, "folder": str(sub.run_dir), "seconds": seconds, "grpo_signal": grpo_signal(sub)}


def correct_answers(sub: Params) -> dict[str, np.ndarray]:
    """{stage: per-problem 0/1 correctness} of SFT and RLVR, checked to be the same problems in the same order."""
    rows = {stage: data.read_jsonl(greedy_file(sub, stage)) for stage in EVALUATED}
    ids = {stage: [r["id"] for r in stage_rows] for stage, stage_rows in rows.items()}
    if ids["sft"] != ids["rlvr"]:
        raise ValueError(f"{greedy_file(sub, 'sft')} and {greedy_file(sub, 'rlvr')} score different problems: the "
                         "gain is a paired difference. Delete both and run the command again.")
    return {stage: np.array([r["correct"] for r in stage_rows], dtype=float) for stage, stage_rows in rows.items()}


def _fingerprint(chosen: ElicitationParams, seed: int) -> str:
    """The result depends on the experiment's settings, the bootstrap's seed and this code (and the sub-runs'
    answers, which its stamp checks as inputs)."""
    settings_json = json.dumps({**chosen.model_dump(mode="json"), "seed": seed}, sort_keys=True)
    return hashlib.sha256(settings_json.encode()).hexdigest()[:16] + deps.code_digest([__name__])


def run(params_file: str | Path, fractions: list[float] | None = None, seeds: list[int] | None = None) -> dict:
    """Every sub-run (skipping what is up to date), then metrics/elicitation.json in the main run (recomputed only
    when its inputs changed); returns the result."""
    cfg = checked(params_file)
    check(cfg)
    chosen = settings(cfg, fractions, seeds)
    subs = {}
    for fraction in chosen.fractions:
        for seed in chosen.seeds:
            sub = checked(sub_params(params_file, cfg, fraction, seed))
            print(f"--- share {fraction:g}, seed {seed}: {sub.run_dir}", flush=True)
            started = time.time()
            for line in train_and_evaluate(sub):
                print(f"    {line}", flush=True)
            print(f"--- share {fraction:g}, seed {seed} done in {time.time() - started:.0f} s", flush=True)
            subs[(fraction, seed)] = sub
    lock.claim(cfg.run_dir)  # the main run may not have run yet: its folder holds the result
    path = cfg.path("metrics", elicitation.RESULT)
    fingerprint = _fingerprint(chosen, cfg.seed)
    inputs = [*(greedy_file(sub, stage) for sub in subs.values() for stage in EVALUATED),
              *(sub.path("metrics", "train_rlvr.json") for sub in subs.values())]
    if artifacts.is_current(path, fingerprint, inputs):
        print(f"{path}: up to date, skipped", flush=True)
        return artifacts.read_json(path)
    result = elicitation.summarize({key: correct_answers(sub) for key, sub in subs.items()},
                                   chosen.n_bootstrap, chosen.confidence, cfg.seed)
    for entry in result["runs"]:
        entry.update(sub_run_record(subs[(entry["fraction"], entry["seed"])]))
    result = {"run": cfg.name, "params_file": str(cfg.source), "label": elicitation.label(result), **result}
    artifacts.write_json(path, artifacts.json_safe(result))
    artifacts.stamp(path, fingerprint, inputs)
    print(f"written: {path}", flush=True)
    return result
