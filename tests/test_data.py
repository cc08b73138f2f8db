"""Problem sets: the synthetic task's invariants, the held-out split, and the real GSM8K loader."""
from pathlib import Path

from rlvr_utils.training import data
from rlvr_utils.core.config import Params
from rlvr_utils.training.rewards import extract_answer, is_correct

FIXTURES = Path(__file__).parent / "data" / "gsm8k"


def test_synthetic_problems_are_consistent():
    cfg = Params()
    for p in data.synthetic_problems(cfg.data, 300, seed=3):
        values = [float(v) for v in p["intermediates"]]
        assert all(0 <= v <= cfg.data.max_value for v in values)
        assert values[-1] == float(p["final"])
        assert len(values) == 2  # default difficulty: two steps
        assert is_correct(extract_answer(p["answer"]), p["final"])
        assert p["prompt"] == data.prompt_for(p["question"], cfg.data.prompt_template)
        # the working is arithmetic that checks out
        for eq in p["answer"].split("\n")[0].strip().rstrip(".").split(". "):
            lhs, rhs = eq.split(" = ")
            assert eval(lhs) == int(rhs)


def test_difficulty_is_a_parameter():
    cfg = Params(data={"min_steps": 3, "max_steps": 3})
    assert {len(p["intermediates"]) for p in data.synthetic_problems(cfg.data, 50, seed=0)} == {3}


def test_held_out_problems_never_in_training_data():
    """Test and validation sets are disjoint, and neither is in SFT's, GRPO's or the corpus's data."""
    cfg = Params(data={"n_sft": 2000, "n_grpo": 2000, "n_eval": 300, "n_validation": 300,
                       "sft_verbs": "new", "sft_min_steps": 2})  # SFT drawn from the eval distribution: collisions possible
    test, validation = data.eval_problems(cfg), data.validation_problems(cfg)
    questions = {p["question"] for p in test}
    assert len(validation) == 300 and not questions & {p["question"] for p in validation}
    questions |= {p["question"] for p in validation}
    assert set(data.held_out_questions(cfg)) == questions
    assert not questions & {p["question"] for p in data.sft_problems(cfg, test)}
    assert not questions & {p["question"] for p in data.grpo_problems(cfg, test)}
    assert not questions & {p["question"] for p in data.sft_validation_problems(cfg, test)}
    corpus = data.pretraining_corpus(cfg.data, 3000, seed=0, exclude=questions)
    stories = {doc.split(" So ")[0] for doc in corpus}
    assert not {data.story_prompt(p).removesuffix(" So") for p in test + validation} & stories


def _verbs_used(text: str) -> set[str]:
    return {kind for kind in ("old", "new") for verbs in data.VERBS[kind].values() for v in verbs if f" {v} " in text}


def test_wording_shift_between_sft_and_rlvr_data():
    """SFT's problems (old verbs, 1-2 steps) come from another distribution than the evaluation's and GRPO's
    (new verbs, 2 steps); SFT's stopping-rule problems come from SFT's own."""
    cfg = Params()
    test = data.eval_problems(cfg)
    for rows, verbs, steps in [(test, "new", {2}), (data.validation_problems(cfg), "new", {2}),
                               (data.grpo_problems(cfg, test), "new", {2}),
                               (data.sft_problems(cfg, test), "old", {1, 2}),
                               (data.sft_validation_problems(cfg, test), "old", {1, 2})]:
        assert {len(p["intermediates"]) for p in rows} == steps
        assert set().union(*(_verbs_used(p["question"]) for p in rows)) == {verbs}
    sft = {p["question"] for p in data.sft_problems(cfg, test)}
    assert not sft & {p["question"] for p in data.sft_validation_problems(cfg, test)}


def test_corpus_meets_the_new_verbs_only_in_worked_as_it_happens_stories():
    docs = data.pretraining_corpus(Params().data, 4000, seed=0)
    local = [d for d in docs if ", so " in d]
    new_local = [d for d in local if _verbs_used(d) == {"new"}]
    assert abs(len(new_local) / len(local) - 0.5) < 0.05  # data.corpus_new_verbs
    assert all(_verbs_used(d) <= {"old"} for d in docs if ", so " not in d)  # deferred stories and facts
    none = data.pretraining_corpus(Params(data={"corpus_new_verbs": 0.0}).data, 1000, seed=0)
    assert all(_verbs_used(d) <= {"old"} for d in none)


def test_pretraining_corpus_never_uses_the_sft_format():
    docs = data.pretraining_corpus(Params().data, 500, seed=0)
    assert not any("####" in d or "Question:" in d for d in docs)


def test_gsm8k_loader_on_real_schema():
    rows = data.load_gsm8k(str(FIXTURES / "train_sample.jsonl"))
    assert len(rows) == 50
    first = rows[0]
    assert first["final"] == "72" and first["intermediates"] == [24.0, 72.0]  # 48/2 = <<48/2=24>>24, 48+24 = <<48+24=72>>72
    assert "<<" not in first["answer"] and first["answer"].rstrip().endswith("#### 72")


def test_numina_schema_round_trip(tmp_path):
    import json

    problems = data.synthetic_problems(Params().data, 5, seed=0)
    path = tmp_path / "numina.jsonl"
    path.write_text("".join(json.dumps(data.numina_schema(p)) + "\n" for p in problems))
    rows = data.load_numina(str(path))
    assert [r["final"] for r in rows] == [p["final"] for p in problems]
    assert all(is_correct(extract_answer(r["answer"]), r["final"]) for r in rows)
