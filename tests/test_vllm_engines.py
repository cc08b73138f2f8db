"""vLLM engines in one process: one at a time, each shut down and its GPU memory released before the next (the GRPO
chapter evaluates 3 models in one kernel, the variants chapter 8; each engine takes 0.9 of the GPU). Checked with
a stand-in vllm module that counts the engines alive and the cleanups asked for."""
import sys
import types

import pytest

from rlvr_utils.core import config, device
from rlvr_utils.evaluation import evaluate
from rlvr_utils.training import data


@pytest.fixture
def engines(monkeypatch):
    """A fake vllm whose LLM records how many engines are alive at once; shutdown and cleanup are counted."""
    state = {"alive": 0, "most": 0, "shutdowns": 0, "cleanups": 0, "opened": []}

    class Core:
        def shutdown(self):
            state["shutdowns"] += 1
            state["alive"] -= 1

    class LLM:
        def __init__(self, model, **kwargs):
            state["alive"] += 1
            state["most"] = max(state["most"], state["alive"])
            state["opened"].append(model)
            self.llm_engine = types.SimpleNamespace(engine_core=Core())

        def generate(self, prompts, sampling, use_tqdm=False):
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text="#### 4")] * sampling.n) for _ in prompts]

    class SamplingParams:
        def __init__(self, **kwargs):
            self.__dict__.update(kwargs)

    def cleanup_dist_env_and_memory(shutdown_ray=False):
        state["cleanups"] += 1

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = LLM, SamplingParams
    vllm.__spec__ = types.SimpleNamespace(name="vllm")
    distributed = types.ModuleType("vllm.distributed")
    distributed.cleanup_dist_env_and_memory = cleanup_dist_env_and_memory
    vllm.distributed = distributed
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.distributed", distributed)
    monkeypatch.setattr(evaluate.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(evaluate.VLLMModel, "open_engines", [])
    yield state
    evaluate.close_engines()


@pytest.fixture
def run(tmp_path, engines):  # after the fake vllm: the params check that vLLM is installed
    from rlvr_utils.training.organism import build_tokenizer

    cfg = config.from_dict({"name": "v", "runs_dir": str(tmp_path), "evaluation": {"backend": "vllm", "n_problems": 2},
                            "variants": {"nulls": 2, "placebos": 0}, "extract": {"n_problems": 2}})
    tokenizer = build_tokenizer(["2 + 2 = 4"] * 3, 300)
    for name in ("sft", "rlvr", "null_0", "null_1"):
        tokenizer.save_pretrained(str(cfg.path("models", name)))
        cfg.path("models", name, "config.json").write_text("{}")
    data.write_jsonl(cfg.path("data", "eval.jsonl"), [{"id": i, "prompt": "2 + 2 =", "final": "4"} for i in range(2)])
    return cfg


def test_opening_an_engine_closes_the_one_still_open(run, engines):
    """A notebook that loads three models one after the other without closing them (the old chapters' way)."""
    for name in ("sft", "rlvr", "null_0"):
        model, _ = evaluate.load_for_generation(run, run.model_ref(name))
        assert evaluate.VLLMModel.open_engines == [model]
    assert engines["most"] == 1 and engines["shutdowns"] == 2 and engines["cleanups"] == 2
    model.close()
    model.close()  # twice is harmless
    assert engines["alive"] == 0 and engines["cleanups"] == 3
    with pytest.raises(RuntimeError, match="was closed"):
        model.generate(["2 + 2 ="], 4)


def test_each_evaluation_shuts_its_engine_down_before_the_next(run, engines, monkeypatch):
    monkeypatch.setattr(data, "prepare_eval_set", lambda cfg: data.read_jsonl(cfg.path("data", "eval.jsonl")))
    for name in ("rlvr", "null_0", "null_1"):
        assert "evaluated" in evaluate.run_variant(run, name)
        assert engines["alive"] == 0, f"{name}'s engine still holds the GPU after its evaluation"
    assert engines["opened"] == [run.model_ref(n) for n in ("rlvr", "null_0", "null_1")]
    assert engines["most"] == 1 and engines["shutdowns"] == 3 and engines["cleanups"] == 3


def test_an_engine_is_closed_when_its_block_fails(run, engines):
    with pytest.raises(ValueError):
        with evaluate.generation_model(run, run.model_ref("sft")):
            raise ValueError("a failing evaluation")
    assert engines["alive"] == 0 and evaluate.VLLMModel.open_engines == []


def test_shutdown_closes_an_engine_this_module_did_not_open(engines):
    """GRPO's colocated engine belongs to TRL's trainer; train.grpo hands it to `shutdown` after training."""
    llm = sys.modules["vllm"].LLM("rlvr")
    assert engines["alive"] == 1
    device.shutdown(llm)
    device.shutdown(None)  # no engine: nothing to do
    assert engines["alive"] == 0 and engines["shutdowns"] == 1 and engines["cleanups"] == 1
