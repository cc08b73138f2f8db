"""Problem sets: the synthetic task's invariants, the held-out split, and the real GSM8K loader."""
from pathlib import Path

from rlvr_utils import data
from rlvr_utils.config import Params
from rlvr_utils.rewards import extract_answer, is_correct

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
    cfg = Params(data={"n_sft": 2000, "n_grpo": 2000, "n_eval": 300})
    held_out = data.eval_problems(cfg)
    questions = {p["question"] for p in held_out}
    assert not questions & {p["question"] for p in data.sft_problems(cfg, held_out)}
    assert not questions & {p["question"] for p in data.grpo_problems(cfg, held_out)}
    corpus = data.pretraining_corpus(cfg.data, 3000, seed=0, exclude=questions)
    stories = {doc.split(" So ")[0] for doc in corpus}
    assert not {data.story_prompt(p).removesuffix(" So") for p in held_out} & stories


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
