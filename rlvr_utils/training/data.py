"""Problems: the organism's synthetic arithmetic, GSM8K and NuminaMath-CoT, in one row format.

Every loader returns rows of the same shape, so training, evaluation and the analyses never ask where
a problem came from:
    {"id": int, "question": str, "prompt": str, "answer": str, "final": str, "intermediates": [float]}
`prompt` is the exact text the model sees, `answer` the gold completion that follows it (working, then
"#### N" on its own line, or NuminaMath's solution with \\boxed{N}), `final` the answer as written, and
`intermediates` the running values in order (from GSM8K's <<a*b=c>> calculator notes for real data).
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Iterable

from rlvr_utils.core import artifacts, deps
from rlvr_utils.core.config import resolve

PARAMS = ("data", "evaluation", "sft")  # params sections read here (rlvr_utils.core.deps)


NAMES = ["Ida", "Raj", "Mia", "Leo", "Ana", "Tom", "Eva", "Sam", "Zoe", "Max"]
ITEMS = ["apples", "marbles", "coins", "books", "stamps", "shells", "pens", "cards"]
# The wording shift between SFT's data and RLVR's (as NuminaMath's wording differs from GSM8K's): SFT
# problems use the old verbs, evaluation and GRPO problems the new ones. Base has met both in its corpus.
# How well SFT transfers depends on each new verb, so the new set is larger: with three verbs per operation
# ('new3', the first organism's) SFT's transfer ranged from 54% to 94% over seeds, and one seed left RLVR
# little to fix. 'new3' stays for the ci run, whose 2-layer model learns that shift within its few steps.
VERBS = {
    "old": {"+": ["found", "bought", "got"], "-": ["lost", "gave away", "sold"]},
    "new": {"+": ["picked up", "received", "won", "earned", "collected", "made"],
            "-": ["dropped", "used", "spent", "broke", "ate", "donated"]},
}
VERBS["new3"] = {op: verbs[:3] for op, verbs in VERBS["new"].items()}
GAIN_VERBS, LOSS_VERBS = VERBS["old"]["+"], VERBS["old"]["-"]


def prompt_for(question: str, template: str) -> str:
    return template.format(question=question)


# --- the organism's synthetic task ----------------------------------------------------------------
def _story(rng: random.Random, data, verbs: str = "old", steps: tuple[int, int] | None = None) -> dict:
    """One word problem: a start value and add/subtract events (`steps`, default the data's), running
    values within 0..max_value, every event worded with one verb set ('old' or 'new')."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(1, data.max_start)
    start, events, equations, values = value, [], [], []
    lo, hi = steps or (data.min_steps, data.max_steps)
    for _ in range(rng.randint(lo, hi)):
        ops = [op for op in "+-" if (value + 1 if op == "+" else value - 1) in range(0, data.max_value + 1)]
        op = rng.choice(ops)
        limit = data.max_value - value if op == "+" else value
        operand = rng.randint(1, min(data.max_operand, limit))
        new = value + operand if op == "+" else value - operand
        verb = rng.choice(VERBS[verbs][op])
        more = " more" if op == "+" else ""
        events.append(f"{name} {verb} {operand}{more} {item}")
        equations.append(f"{value} {op} {operand} = {new}.")
        values.append(new)
        value = new
    return {"name": name, "item": item, "start": start, "events": events, "equations": equations,
            "values": values}


def _story_text(s: dict) -> str:
    events = [f"{s['events'][0]}."] + [f"Then {e}." for e in s["events"][1:]]
    return f"{s['name']} had {s['start']} {s['item']}. " + " ".join(events)


def _question(s: dict) -> str:
    """The question comes first so that the story ends right where the working starts, as in the corpus:
    with the question (or an 'Answer:' label) between story and working, this small a model fails to
    read the operands back (SFT greedy accuracy 11% instead of 67% in the measurement behind this choice)."""
    return f"How many {s['item']} did {s['name']} have in the end? " + _story_text(s)


def _row(s: dict, idx: int, template: str) -> dict:
    question, final = _question(s), str(s["values"][-1])
    return {"id": idx, "question": question, "prompt": prompt_for(question, template),
            "answer": " " + " ".join(s["equations"]) + f"\n#### {final}", "final": final,
            "intermediates": [float(v) for v in s["values"]]}


def synthetic_problems(data, n: int, seed: int, exclude: Iterable[str] = (), verbs: str | None = None,
                       steps: tuple[int, int] | None = None) -> list[dict]:
    """`n` distinct GSM8K-style problems, none of whose questions is in `exclude` (held-out sets).
    `verbs` and `steps` default to the evaluation distribution (data.rl_verbs, min/max_steps)."""
    rng, seen, rows = random.Random(seed), set(exclude), []
    for _ in range(200 * n):
        s = _story(rng, data, verbs or data.rl_verbs, steps)
        q = _question(s)
        if q not in seen:
            seen.add(q)
            rows.append(_row(s, len(rows), data.prompt_template))
            if len(rows) == n:
                return rows
    raise ValueError(f"data: could only make {len(rows)} distinct problems of the {n} asked; widen the ranges")


def story_prompt(problem: dict) -> str:
    """An organism problem as its pretraining corpus would tell it: the story, then ' So' before the working.
    Other problems are returned as their prompt."""
    question = problem["question"]
    if question.startswith("How many") and "? " in question:
        return question.split("? ", 1)[1] + " So"
    return problem["prompt"]


def numina_schema(row: dict) -> dict:
    """The same problem in NuminaMath-CoT's schema (problem, solution with \\boxed{}, messages)."""
    solution = row["answer"].split("\n####")[0].strip() + f" The answer is $\\boxed{{{row['final']}}}$."
    return {"problem": row["question"], "solution": solution,
            "messages": [{"role": "user", "content": row["question"]},
                         {"role": "assistant", "content": solution}]}


def pretraining_corpus(data, n: int, seed: int, exclude: Iterable[str] = ()) -> list[str]:
    """Narrative documents for the base model: never the question / answer / #### format SFT teaches.

    Half 'deferred' stories (events first, then the working: the model learns to read operands back out
    of the text), a quarter 'local' stories (working right after each event), a quarter arithmetic facts.
    A share `data.corpus_new_verbs` of the local stories uses the new verbs, so base has met the words of
    the evaluation problems, but never in a deferred story like the one it is evaluated on.
    """
    rng, held_out, docs = random.Random(seed), set(exclude), []
    shifted = data.rl_verbs if data.rl_verbs != "old" else "new"  # the evaluation's wording
    while len(docs) < n:
        kind = rng.random()
        verbs = shifted if 0.5 <= kind < 0.75 and rng.random() < data.corpus_new_verbs else "old"
        s = _story(rng, data, verbs)
        if _question(s) in held_out:
            continue
        who, item = s["name"], s["item"]
        if kind < 0.5:
            docs.append(_story_text(s) + " So "
                        + " ".join(s["equations"]) + f" In the end {who} had {s['values'][-1]} {item}.")
        elif kind < 0.75:
            parts = [f"{who} had {s['start']} {item}."]
            for i, (event, eq) in enumerate(zip(s["events"], s["equations"])):
                parts.append(f"{'Then ' if i else ''}{event}, so {eq}")
            docs.append(" ".join(parts))
        else:
            docs.append(" ".join(s["equations"]))
    return docs


# --- real data sets -------------------------------------------------------------------------------
_CALC = re.compile(r"<<([^=<>]*)=([^<>]*)>>")


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").replace("$", "").strip())
    except ValueError:
        return None


def gsm8k_row(raw: dict, idx: int, template: str = "Question: {question}\nAnswer:") -> dict:
    """A GSM8K record ({question, answer ending in '#### N'}) as a problem row."""
    if "question" not in raw or "answer" not in raw or "####" not in raw["answer"]:
        raise ValueError(f"GSM8K row {idx}: expected keys 'question' and 'answer' ending in '#### N', "
                         f"got keys {sorted(raw)}")
    working, final = raw["answer"].rsplit("####", 1)
    intermediates = [v for _, out in _CALC.findall(working) if (v := _number(out)) is not None]
    working = _CALC.sub("", working).strip()
    final = final.strip()
    return {"id": idx, "question": raw["question"], "prompt": prompt_for(raw["question"], template),
            "answer": f" {working}\n#### {final}", "final": final, "intermediates": intermediates}


def numina_row(raw: dict, idx: int, template: str = "Question: {question}\nAnswer:") -> dict:
    """A NuminaMath-CoT record ({problem, solution, messages}) as an SFT row (final from \\boxed{})."""
    if "problem" not in raw or "solution" not in raw:
        raise ValueError(f"NuminaMath-CoT row {idx}: expected keys 'problem' and 'solution', got {sorted(raw)}")
    boxed = re.findall(r"\\boxed\{([^{}]*)\}", raw["solution"])
    return {"id": idx, "question": raw["problem"], "prompt": prompt_for(raw["problem"], template),
            "answer": " " + raw["solution"].strip(), "final": boxed[-1] if boxed else "", "intermediates": []}


def load_records(ref: str, split: str, max_rows: int | None = None, hub_config: str | None = None) -> list[dict]:
    """Records from a local .jsonl/.json/.parquet file or a hub data set, through `datasets`."""
    import datasets

    path = resolve(ref)
    if path.exists():
        kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(path.suffix)
        if kind is None:
            raise ValueError(f"{path}: expected a .jsonl, .json or .parquet file")
        ds = datasets.load_dataset(kind, data_files=str(path), split="train")
    else:
        ds = datasets.load_dataset(ref, hub_config, split=split)
    if max_rows is not None:
        ds = ds.select(range(min(max_rows, len(ds))))
    return list(ds)


def load_gsm8k(ref: str, split: str = "train", max_rows: int | None = None,
               template: str = "Question: {question}\nAnswer:") -> list[dict]:
    return [gsm8k_row(r, i, template) for i, r in enumerate(load_records(ref, split, max_rows, hub_config="main"))]


def load_numina(ref: str, split: str = "train", max_rows: int | None = None,
                template: str = "Question: {question}\nAnswer:") -> list[dict]:
    return [numina_row(r, i, template) for i, r in enumerate(load_records(ref, split, max_rows))]


# --- the problem sets of one run -----------------------------------------------------------------
EVAL_SEED_OFFSET = 10_007  # held-out test problems come from their own seed
VALIDATION_SEED_OFFSET = 20_011  # and the validation problems from another
SFT_VALIDATION_SEED_OFFSET = 30_011  # and the rows of an SFT file that SFT's stopping rule reads


def eval_problems(cfg) -> list[dict]:
    """The held-out test problems: read once, by the final evaluation."""
    d = cfg.data
    if d.grpo_source == "gsm8k":
        return load_gsm8k(d.eval_path or d.grpo_path, "test", cfg.evaluation.n_problems, d.prompt_template)
    return synthetic_problems(d, max(d.n_eval, cfg.evaluation.n_problems), cfg.seed + EVAL_SEED_OFFSET)


def validation_problems(cfg) -> list[dict]:
    """Problems from the evaluation distribution, disjoint from the test set, on which settings are chosen
    (benchmarks/grpo_sweep.py). For GSM8K: the last `n_validation` rows of the train split, which
    `grpo_problems` then leaves out."""
    d = cfg.data
    if d.grpo_source == "gsm8k":
        rows = load_gsm8k(d.grpo_path, "train", d.max_rows, d.prompt_template)
        return rows[len(rows) - _gsm8k_validation_size(d, len(rows)):]
    test = [p["question"] for p in eval_problems(cfg)]
    return synthetic_problems(d, d.n_validation, cfg.seed + VALIDATION_SEED_OFFSET, exclude=test)


def _gsm8k_validation_size(d, n_rows: int) -> int:
    return min(d.n_validation, n_rows // 10)


def held_out_questions(cfg) -> list[str]:
    """Questions of the test and validation sets: excluded from every training set and the corpus."""
    return [p["question"] for p in eval_problems(cfg) + validation_problems(cfg)]


def sft_problems(cfg, held_out: list[dict]) -> list[dict]:
    """SFT's training data. The organism's comes from its own distribution (old verbs, sft_min/max_steps); a
    file's (NuminaMath-CoT or GSM8K schema) is its rows less those of SFT's stopping rule (`_sft_file_split`)."""
    d = cfg.data
    if d.sft_source != "synthetic":
        return _sft_file_split(cfg, held_out)[0]
    exclude = [p["question"] for p in held_out + validation_problems(cfg)]
    return synthetic_problems(d, d.n_sft, cfg.seed + 1, exclude=exclude,
                              verbs=d.sft_verbs, steps=(d.sft_min_steps, d.sft_max_steps))


def sft_validation_problems(cfg, held_out: list[dict]) -> list[dict]:
    """Held-out problems of SFT's own distribution: its stopping rule watches their loss. Never training rows."""
    d = cfg.data
    if d.sft_source != "synthetic":
        return _sft_file_split(cfg, held_out)[1]
    exclude = [p["question"] for p in held_out + sft_problems(cfg, held_out)]
    return synthetic_problems(d, cfg.sft.n_validation, cfg.seed + 3, exclude=exclude,
                              verbs=d.sft_verbs, steps=(d.sft_min_steps, d.sft_max_steps))


def _sft_file_split(cfg, held_out: list[dict]) -> tuple[list[dict], list[dict]]:
    """(training rows, stopping-rule rows) of an SFT file. With a stopping rule, `sft.n_validation` of the file's
    rows (of its first `data.max_rows`), drawn with seed `seed + 30_011` from all of them rather than its tail so
    that they follow its mix of sources, are the stopping rule's. Training keeps the others in file order, less
    every row that repeats the question of a stopping-rule row (NuminaMath-CoT repeats problems) or of a held-out
    evaluation or validation problem: the rule measures loss on problems SFT never trained on."""
    d, s = cfg.data, cfg.sft
    load_rows = load_numina if d.sft_source == "numina_cot" else load_gsm8k
    rows = load_rows(d.sft_path, "train", d.max_rows, d.prompt_template)
    picked = set()
    if s.stop_metric is not None:
        if s.n_validation >= len(rows):
            raise ValueError(f"sft.n_validation (got {s.n_validation}): the stopping rule's rows come out of "
                             f"data.sft_path ({d.sft_path}), which gives {len(rows)} rows (data.max_rows="
                             f"{d.max_rows}); use fewer validation rows or more data")
        picked = set(random.Random(cfg.seed + SFT_VALIDATION_SEED_OFFSET).sample(range(len(rows)), s.n_validation))
    validation = [r for i, r in enumerate(rows) if i in picked]
    never = {p["question"] for p in held_out + validation_problems(cfg) + validation}
    train = [r for r in rows if r["question"] not in never]
    if not train:
        raise ValueError(f"data.sft_path ({d.sft_path}): no training rows left once the stopping rule's "
                         f"{len(validation)} rows and the held-out evaluation problems are taken out")
    return train, validation


def grpo_problems(cfg, held_out: list[dict]) -> list[dict]:
    d = cfg.data
    if d.grpo_source == "gsm8k":
        rows = load_gsm8k(d.grpo_path, "train", d.max_rows, d.prompt_template)
        return rows[: len(rows) - _gsm8k_validation_size(d, len(rows))]
    exclude = [p["question"] for p in held_out + validation_problems(cfg)]  # both held-out sets, always
    return synthetic_problems(d, d.n_grpo, cfg.seed + 2, exclude=exclude)


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    with artifacts.atomic_file(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return Path(path)


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run the notebook that makes it first.")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _prepare(cfg, name: str, problems) -> list[dict]:
    """data/<name>.jsonl from `problems(cfg)`, rewritten only when the params or the code it depends on change."""
    path, fingerprint = cfg.path("data", f"{name}.jsonl"), deps.fingerprint(cfg, __name__)
    if not artifacts.is_current(path, fingerprint):
        write_jsonl(path, problems(cfg))
        artifacts.stamp(path, fingerprint)
    return read_jsonl(path)


def prepare_eval_set(cfg) -> list[dict]:
    """data/eval.jsonl: the held-out problems every later notebook reads (rewritten only when params change)."""
    return _prepare(cfg, "eval", eval_problems)


def prepare_validation_set(cfg) -> list[dict]:
    """data/validation.jsonl: the problems settings are chosen on (never the test set)."""
    return _prepare(cfg, "validation", validation_problems)
