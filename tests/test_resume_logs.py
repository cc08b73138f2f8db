"""Resumed training keeps whole-run logs: loss, time and token counters cover the run, not the resumed part."""
import json

import pytest

from rlvr_utils.core import config
from rlvr_utils.training import train

pytestmark = pytest.mark.slow  # trains, is killed and resumes: seconds each (make test-fast leaves it out)


def test_token_counter_that_restarted_continues_and_loss_averages_every_step():
    history = [{"step": 1, "loss": 4.0, "num_tokens": 100}, {"step": 2, "loss": 2.0, "num_tokens": 200},
               # resumed at step 2: TRL's SFT counter restarts at 0
               {"step": 3, "loss": 1.0, "num_tokens": 100}, {"step": 4, "loss": 1.0, "num_tokens": 200},
               {"step": 4, "train_loss": 1.0, "train_runtime": 2.0}]
    out = train.whole_run_history(history, resume_step=2)
    assert [e.get("num_tokens") for e in out] == [100, 200, 300, 400, None]
    assert out[-1]["train_loss"] == pytest.approx((4 + 2 + 1 + 1) / 4) and out[-1]["session_train_loss"] == 1.0
    assert train.whole_run_history(history, 0) == history
    # a counter the trainer restores (GRPO's num_input_tokens_seen) is left alone
    kept = [{"step": 2, "num_tokens": 200}, {"step": 3, "num_tokens": 300}]
    assert train.whole_run_history(kept, 2) == kept


def _cfg(tmp_path, name):
    return config.from_dict({
        "name": name, "runs_dir": str(tmp_path),
        "organism": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2, "vocab_size": 64,
                     "corpus_documents": 200, "pretrain_steps": 8, "pretrain_batch_size": 4, "pretrain_seq_len": 16,
                     "warmup_steps": 0},
        "data": {"n_eval": 20}, "evaluation": {"n_problems": 20}, "extract": {"n_problems": 8},
    })


def _kill_then_resume(monkeypatch, run, step: int) -> None:
    """Run a training stage, kill it (KeyboardInterrupt) when it reaches `step`, then run it again to resume."""
    import transformers

    original = transformers.Trainer.training_step

    def dies(self, *args, **kwargs):
        if self.state.global_step == step:
            raise KeyboardInterrupt("killed")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "training_step", dies)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(transformers.Trainer, "training_step", original)
    run()


def test_interrupted_pretraining_logs_the_whole_run(tmp_path, monkeypatch):
    whole = _cfg(tmp_path, "whole")
    train.pretrain_base(whole)
    reference = json.loads(whole.path("metrics", "train_base.json").read_text())

    cfg = _cfg(tmp_path, "killed")
    _kill_then_resume(monkeypatch, lambda: train.pretrain_base(cfg), 5)
    resumed = json.loads(cfg.path("metrics", "train_base.json").read_text())

    assert resumed["resumed_from_step"] == 4
    final, ref_final = resumed["log_history"][-1], reference["log_history"][-1]
    assert final["train_loss"] == pytest.approx(ref_final["train_loss"], rel=0.02)
    timing = ("runtime", "per_second", "session_", "train_loss")  # train_loss: the whole-run mean, approximated
    assert len(resumed["log_history"]) == len(reference["log_history"])
    for ref, got in zip(reference["log_history"], resumed["log_history"]):  # the first loss after the resume too
        keys = {k for k in ref.keys() | got.keys() if not any(t in k for t in timing)}
        assert {k: got.get(k) for k in keys} == pytest.approx({k: ref.get(k) for k in keys}, rel=1e-6), ref.get("step")
    assert abs(final["session_train_loss"] - ref_final["train_loss"]) > abs(final["train_loss"] - ref_final["train_loss"])
    assert resumed["seconds"] > resumed["session_seconds"] > 0 and final["train_runtime"] == resumed["seconds"]
    assert [e["step"] for e in resumed["log_history"] if "loss" in e] == [e["step"] for e in reference["log_history"] if "loss" in e]


def test_interrupted_sft_logs_every_field_as_the_whole_run(tmp_path, monkeypatch):
    """Every logged field of a resumed SFT run equals the uninterrupted run's (timing aside): the eval token
    counter as well as the training one."""

    def sft_cfg(name):
        raw = _cfg(tmp_path, name).model_dump(mode="json")
        raw["data"].update(n_sft=200, n_validation=20)
        raw["sft"].update(steps=40, eval_steps=10, patience=10, batch_size=8, n_validation=16, logging_steps=5)
        return config.from_dict({k: v for k, v in raw.items() if k != "source"})

    whole = sft_cfg("whole")
    train.pretrain_base(whole)
    train.train_sft(whole)
    reference = json.loads(whole.path("metrics", "train_sft.json").read_text())["log_history"]
    cfg = sft_cfg("killed")
    train.pretrain_base(cfg)
    _kill_then_resume(monkeypatch, lambda: train.train_sft(cfg), 23)
    resumed = json.loads(cfg.path("metrics", "train_sft.json").read_text())["log_history"]
    timing = ("runtime", "per_second", "session_")
    assert len(resumed) == len(reference)
    for ref, got in zip(reference, resumed):
        keys = {k for k in ref.keys() | got.keys() if not any(t in k for t in timing)}
        assert {k: got.get(k) for k in keys} == pytest.approx({k: ref.get(k) for k in keys}, rel=1e-6), ref.get("step")


def test_a_checkpoint_between_two_logging_steps_still_gives_whole_run_logs(tmp_path, monkeypatch):
    """Pretraining 100 steps logs every 2 and saves every 25: a checkpoint falls between two logging steps. The
    trainer logs at every checkpoint, so the first loss after resuming from step 25 averages the same steps as in
    the uninterrupted run."""

    def long_cfg(name):
        raw = _cfg(tmp_path, name).model_dump(mode="json")
        raw["organism"]["pretrain_steps"] = 100
        return config.from_dict({k: v for k, v in raw.items() if k != "source"})

    whole = long_cfg("whole")
    train.pretrain_base(whole)
    reference = json.loads(whole.path("metrics", "train_base.json").read_text())["log_history"]
    cfg = long_cfg("killed")
    _kill_then_resume(monkeypatch, lambda: train.pretrain_base(cfg), 27)
    record = json.loads(cfg.path("metrics", "train_base.json").read_text())
    assert record["resumed_from_step"] == 25
    steps = lambda history: [h["step"] for h in history if "loss" in h]  # noqa: E731
    losses = lambda history: [h["loss"] for h in history if "loss" in h]  # noqa: E731
    assert 25 in steps(reference) and steps(record["log_history"]) == steps(reference)  # logged at the checkpoint
    assert losses(record["log_history"]) == pytest.approx(losses(reference), rel=1e-6)
