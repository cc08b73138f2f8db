"""The rehearsal of the real-scale path (params/rehearsal.yaml): its offline base model and data, the vLLM
dispatch of evaluation, and the whole book on it with two-process SFT and GRPO."""
import json
import sys
import time
import types
from pathlib import Path

import pytest
import yaml

from conftest import run_book
from rlvr_utils.core import config
from rlvr_utils.training import data, rehearsal
from rlvr_utils.evaluation import evaluate

ROOT = Path(__file__).resolve().parents[1]


def test_tokenizer_is_byte_level_bpe_whose_merges_join_digits():
    tok = rehearsal.build_tokenizer(rehearsal.corpus(), 1024)
    vocab = tok.get_vocab()
    multi_digit = [t for t in vocab if sum(c.isdigit() for c in t) >= 2]
    assert multi_digit, "no merge joins two digits"
    assert tok.backend_tokenizer.encode("He has 1500 apples").tokens.count("Ġ15") == 1  # the trained tokenizer
    assert tok.decode(tok("Question: 12 + 30 = 42\nAnswer:")["input_ids"]) == "Question: 12 + 30 = 42\nAnswer:"
    assert "<|im_start|>assistant" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                               add_generation_prompt=True)


def test_model_config_has_qwen25_fields():
    tok = rehearsal.build_tokenizer(rehearsal.corpus()[:50], 400)
    c = rehearsal.model_config(tok).to_dict()
    assert c["model_type"] == "qwen2" and c["architectures"] == ["Qwen2ForCausalLM"]
    assert c["tie_word_embeddings"] and not c["use_sliding_window"] and c["rms_norm_eps"] == 1e-6
    assert c["num_key_value_heads"] < c["num_attention_heads"]  # grouped-query attention, as Qwen2.5
    rope = c.get("rope_parameters") or {}
    assert rope.get("rope_theta", c.get("rope_theta")) == 1_000_000.0


def test_numina_fixture_is_gsm8k_train_rewritten_and_disjoint_from_grpo_and_test():
    rows = data.load_numina("tests/data/numina/gsm8k_numina_cot.jsonl")
    raw = data.read_jsonl(ROOT / "tests/data/numina/gsm8k_numina_cot.jsonl")
    assert len(rows) == 300 and all({"problem", "solution", "messages"} <= set(r) for r in raw)
    assert all(r["final"] and "\\boxed{" in r["answer"] for r in rows)
    others = {r["question"] for r in data.load_gsm8k("tests/data/gsm8k/train_sample.jsonl")}
    others |= {r["question"] for r in data.load_gsm8k("tests/data/gsm8k/test.jsonl")}
    assert not others & {r["question"] for r in rows}


def test_rehearsal_params_run_every_real_scale_path(tmp_path):
    raw = yaml.safe_load((ROOT / "params" / "rehearsal.yaml").read_text())
    (tmp_path / "base").mkdir()
    raw["model"]["base"] = str(tmp_path / "base")
    (tmp_path / "base" / "config.json").write_text(json.dumps({"num_hidden_layers": 2}))
    cfg = config.from_dict(raw)
    real = config.load(ROOT / "params" / "qwen2.5-1.5b.yaml", machine=False)
    assert cfg.rehearsal and not real.rehearsal
    assert (cfg.data.sft_source, cfg.data.grpo_source) == (real.data.sft_source, real.data.grpo_source)
    assert cfg.sft.num_processes == cfg.grpo.num_processes == 2
    assert cfg.variants.nulls >= 2


def _rehearsal_cfg(tmp_path, **sft):
    raw = yaml.safe_load((ROOT / "params" / "rehearsal.yaml").read_text())
    raw["model"]["base"], raw["runs_dir"] = str(tmp_path / "base"), str(tmp_path / "runs")
    raw["sft"].update(sft)
    (tmp_path / "base").mkdir(exist_ok=True)
    (tmp_path / "base" / "config.json").write_text(json.dumps({"num_hidden_layers": 2}))
    return config.from_dict(raw)


def test_sft_stopping_rule_rows_never_enter_training_on_the_real_schema_file(tmp_path):
    cfg = _rehearsal_cfg(tmp_path)
    test = data.eval_problems(cfg)
    train_rows, validation = data.sft_problems(cfg, test), data.sft_validation_problems(cfg, test)
    file_rows = data.load_numina(cfg.data.sft_path, max_rows=cfg.data.max_rows, template=cfg.data.prompt_template)
    assert len(validation) == cfg.sft.n_validation == 16 and len(train_rows) == len(file_rows) - 16 == 284
    assert not {r["question"] for r in validation} & {r["question"] for r in train_rows}
    assert not {r["id"] for r in validation} & {r["id"] for r in train_rows}
    assert {r["id"] for r in validation + train_rows} == {r["id"] for r in file_rows}  # a split of the file's rows
    assert [r["id"] for r in validation] != list(range(284, 300))  # drawn from the whole file, not its tail
    assert validation == data.sft_validation_problems(cfg, test)  # deterministic
    other_seed = _rehearsal_cfg(tmp_path, n_validation=16).model_copy(update={"seed": 1})
    assert data.sft_validation_problems(other_seed, test) != validation  # and seeded
    # no stopping rule: nothing is held out of training
    assert len(data.sft_problems(_rehearsal_cfg(tmp_path, stop_metric=None), test)) == 300
    with pytest.raises(ValueError, match=r"sft.n_validation \(got 300\).*gives 300 rows"):
        data.sft_problems(_rehearsal_cfg(tmp_path, n_validation=300), test)


def test_sft_file_rows_that_repeat_a_held_out_question_are_not_trained_on(tmp_path):
    rows = data.read_jsonl(ROOT / "tests/data/numina/gsm8k_numina_cot.jsonl")[:40]
    test_question = data.load_gsm8k("tests/data/gsm8k/test.jsonl")[0]["question"]
    rows[3] = {**rows[3], "problem": test_question}  # a test problem inside the SFT file
    data.write_jsonl(tmp_path / "sft.jsonl", rows)
    cfg = _rehearsal_cfg(tmp_path, n_validation=8)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"sft_path": str(tmp_path / "sft.jsonl")})})
    test = data.eval_problems(cfg)
    picked = [r["id"] for r in data.sft_validation_problems(cfg, test)]
    assert test_question not in [r["question"] for r in data.sft_problems(cfg, test)]
    # NuminaMath repeats problems: a row outside the stopping rule's that copies one of its rows is not trained on
    copied = next(i for i in picked if i != 3)
    other = next(i for i in range(40) if i not in picked and i != 3)
    rows[other] = dict(rows[copied])
    data.write_jsonl(tmp_path / "sft.jsonl", rows)
    assert [r["id"] for r in data.sft_validation_problems(cfg, test)] == picked  # the same draw (same row count)
    trained = [r["question"] for r in data.sft_problems(cfg, test)]
    assert rows[copied]["problem"] not in trained and len(trained) == 40 - 8 - (3 not in picked) - 1


# --- evaluation backends ---------------------------------------------------------------------------
@pytest.fixture
def fake_vllm(monkeypatch):
    """A stand-in vllm module: records what it was asked and answers like vLLM (one output list per prompt)."""
    calls = []

    class SamplingParams:
        def __init__(self, **kwargs):
            self.__dict__.update(kwargs)

    class LLM:
        def __init__(self, model, **kwargs):
            calls.append(("init", model, kwargs))

        def generate(self, prompts, sampling, use_tqdm=False):
            calls.append(("generate", prompts, sampling))
            text = "2 + 2 = 4\n#### 4"
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text=text + "\n\nQuestion: next")
                                                   for _ in range(sampling.n)]) for _ in prompts]

    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = LLM, SamplingParams
    module.__spec__ = types.SimpleNamespace(name="vllm")
    monkeypatch.setitem(sys.modules, "vllm", module)
    return calls


def test_backend_auto_picks_vllm_only_with_vllm_and_a_gpu(monkeypatch, fake_vllm):
    import importlib.util

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert evaluate.choose_backend("auto") == "hf"
    with pytest.raises(RuntimeError, match=r"evaluation.backend \(got 'vllm'\).*GPU present=False"):
        evaluate.choose_backend("vllm")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert evaluate.choose_backend("auto") == "vllm" and evaluate.choose_backend("hf") == "hf"
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real_find_spec(name, *a))
    assert evaluate.choose_backend("auto") == "hf"
    with pytest.raises(RuntimeError, match="vllm installed=False"):
        evaluate.choose_backend("vllm")


def test_vllm_backend_gives_the_same_rows_as_generate(monkeypatch, tmp_path, fake_vllm):
    import torch

    from rlvr_utils.training.organism import build_tokenizer

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    tokenizer = build_tokenizer(["2 + 2 = 4"] * 3, 300)
    tokenizer.save_pretrained(str(tmp_path / "m"))
    cfg = config.from_dict({"name": "v", "runs_dir": str(tmp_path), "evaluation": {"backend": "auto"}})
    model, tok = evaluate.load_for_generation(cfg, str(tmp_path / "m"))
    assert isinstance(model, evaluate.VLLMModel) and fake_vllm[0][:2] == ("init", str(tmp_path / "m"))
    problems = [{"id": 7, "prompt": "2 + 2 =", "final": "4"}, {"id": 8, "prompt": "3 + 3 =", "final": "5"}]
    rows = evaluate.greedy_eval(model, tok, problems, 16, 8, stop="\n\n")
    assert rows == [{"id": 7, "completion": "2 + 2 = 4\n#### 4", "correct": True, "formatted": True},
                    {"id": 8, "completion": "2 + 2 = 4\n#### 4", "correct": False, "formatted": True}]
    greedy = fake_vllm[-1][2]
    assert (greedy.n, greedy.temperature, greedy.max_tokens, greedy.stop, greedy.seed) == (1, 0.0, 16, ["\n\n"], None)
    samples = evaluate.generate(model, tok, ["1 + 1 ="], 16, 8, num_samples=4, temperature=0.8, seed=3)
    assert samples == [["2 + 2 = 4\n#### 4"] * 4]
    sampled = fake_vllm[-1][2]
    assert (sampled.n, sampled.temperature, sampled.seed, sampled.top_p) == (4, 0.8, 3, 1.0)


# --- the whole book --------------------------------------------------------------------------------
@pytest.mark.slow
def test_rehearsal_book_runs_end_to_end_with_two_process_training(tmp_path):
    start = time.time()
    base = tmp_path / "rehearsal-base"
    summary = rehearsal.build(base, pretrain_steps=30)
    assert summary["loss_last"] < summary["loss_first"]
    raw = yaml.safe_load((ROOT / "params" / "rehearsal.yaml").read_text())
    raw["runs_dir"], raw["model"]["base"] = str(tmp_path / "runs"), str(base)
    params = tmp_path / "rehearsal.yaml"
    params.write_text(yaml.safe_dump(raw))
    result = run_book(params, tmp_path / "site")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    print(f"rehearsal: base built and book run in {time.time() - start:.0f} s")

    run = tmp_path / "runs" / "rehearsal"
    for stage in ("sft", "rlvr"):
        record = json.loads((run / "metrics" / f"train_{stage}.json").read_text())
        assert record["num_processes"] == 2, stage  # really through accelerate launch with two processes
        assert (run / "models" / stage / "model.safetensors").exists()
    for nb in ("01_train_sft", "02_train_grpo", "03_variants"):
        assert "--multi_gpu" in (tmp_path / "site" / "book" / "executed" / f"{nb}.ipynb").read_text(), nb
    rlvr = json.loads((run / "metrics" / "train_rlvr.json").read_text())["recipe"]
    assert rlvr["launcher"] == "accelerate launch" and rlvr["generation_batch_size"] == 8
    for name in ("attn_only", "mlp_only", "placebo_0", "placebo_1"):  # RLVR's recipe, through RLVR's launcher
        assert json.loads((run / "metrics" / f"train_{name}.json").read_text())["recipe"] == rlvr, name
    verdict = json.loads((run / "metrics" / "verdict.json").read_text())
    assert any("Rehearsal" in c and "mean nothing" in c for c in verdict["caveats"])
    assert (tmp_path / "site" / "_build" / "html" / "book" / "executed" / "10_verdict.html").exists()
