"""Content-checked artifacts: an edited, truncated or corrupted artifact or input is recomputed, not trusted;
one run per run folder; leftovers of a killed run are cleaned."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from rlvr_utils import activations as act
from rlvr_utils.core import artifacts, lock
from rlvr_utils.models import loading as models


@pytest.fixture(autouse=True)
def _own_digest_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RLVR_DIGEST_CACHE", str(tmp_path / "digests.sqlite"))
    monkeypatch.setattr(artifacts, "_cache", None)
    monkeypatch.delenv(artifacts.FORCE_ENV, raising=False)


def _corrupt_same_size(path: Path) -> None:
    """Zero a quarter of a file in place, keeping its size and its modification time."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    start = len(data) // 2
    data[start:start + len(data) // 4] = bytes(len(data) // 4)
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def _checkpoint(folder: Path) -> Path:
    torch.manual_seed(0)
    config = AutoConfig.for_model("qwen2", vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def _cache(n: int = 6) -> act.TokenCache:
    rng = np.random.default_rng(0)
    seqs = [rng.integers(2, 64, size=8).tolist() for _ in range(n)]
    return act.TokenCache(seqs, [4] * n, list(range(n)), "gold", 0)


def _extract(folder: Path, out: Path, tokens: Path):
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    return act.extract(model, _cache(), out, "rlvr", layers=[0, 1], positions=["completion"], batch_size=4,
                       shard_size=3, inputs=[folder, tokens])


def test_same_size_corruption_of_activations_is_detected_and_recomputed(tmp_path, caplog):
    folder, out, tokens = _checkpoint(tmp_path / "ckpt"), tmp_path / "activations", tmp_path / "tokens"
    tokens.mkdir()
    (tokens / "tokens.json").write_text("[]")
    _extract(folder, out, tokens)
    store = out / "rlvr"
    files = sorted(store.glob("*.npy"))
    good = {f.name: f.read_bytes() for f in files}
    downstream = tmp_path / "cka.json"  # computed from the activations, like metrics/cka.json
    artifacts.write_json(downstream, {"cka": 1.0})
    artifacts.stamp(downstream, "fp", inputs=[store])
    assert artifacts.is_current(store, json.loads((store / artifacts.STAMP).read_text())["fingerprint"], [folder, tokens])

    _corrupt_same_size(files[0])
    fp = json.loads((store / artifacts.STAMP).read_text())["fingerprint"]
    with caplog.at_level(logging.WARNING):
        assert not artifacts.is_current(store, fp, [folder, tokens])
        assert not artifacts.is_current(downstream, "fp", inputs=[store])  # downstream recomputes too
    assert str(files[0]) in caplog.text and "recomputing" in caplog.text

    _extract(folder, out, tokens)  # the stage's own check re-extracts
    assert {f.name: f.read_bytes() for f in store.glob("*.npy")} == good
    # re-extracted activations are the ones the downstream result was computed from: it is current again
    assert artifacts.is_current(downstream, "fp", inputs=[store])


def test_edited_checkpoint_config_recomputes_downstream(tmp_path, caplog):
    folder, out, tokens = _checkpoint(tmp_path / "ckpt"), tmp_path / "activations", tmp_path / "tokens"
    tokens.mkdir()
    (tokens / "tokens.json").write_text("[]")
    _extract(folder, out, tokens)
    evaluation = tmp_path / "rlvr_greedy.jsonl"  # another artifact of the same checkpoint
    evaluation.write_text("{}\n")
    artifacts.stamp(evaluation, "fp", inputs=[folder])
    stamp_file = out / "rlvr" / artifacts.STAMP
    before = json.loads(stamp_file.read_text())

    config = json.loads((folder / "config.json").read_text())
    config["hidden_act"] = "relu"  # relu for silu
    (folder / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING):
        assert not artifacts.is_current(evaluation, "fp", inputs=[folder])
    assert "ckpt" in caplog.text and "changed" in caplog.text
    _extract(folder, out, tokens)
    after = json.loads(stamp_file.read_text())
    assert after["inputs"] != before["inputs"]  # re-extracted from the edited checkpoint
    assert artifacts.is_current(out / "rlvr", after["fingerprint"], [folder, tokens])


def test_deleted_or_edited_outputs_and_inputs_are_not_current(tmp_path):
    a, b, side = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "b_samples.jsonl"
    artifacts.write_json(a, {"x": 1})
    artifacts.stamp(a, "fa")
    artifacts.write_json(b, {"y": 2})
    side.write_text("1\n")
    artifacts.stamp(b, "fb", inputs=[a, "org/hub-model"], outputs=[side])
    assert artifacts.is_current(a, "fa") and artifacts.is_current(b, "fb", [a, "org/hub-model"])
    assert not artifacts.is_current(b, "other", [a, "org/hub-model"])  # params changed
    assert not artifacts.is_current(b, "fb", [a])  # another set of inputs
    side.write_text("2\n")
    assert not artifacts.is_current(b, "fb", [a, "org/hub-model"])  # an output written with it changed
    side.write_text("1\n")
    artifacts.write_json(a, {"x": 2})
    assert not artifacts.is_current(b, "fb", [a, "org/hub-model"])  # an input changed
    b.unlink()
    assert not artifacts.is_current(b, "fb", [a, "org/hub-model"])


def test_force_recomputes(tmp_path, monkeypatch):
    a = tmp_path / "a.json"
    artifacts.write_json(a, {})
    artifacts.stamp(a, "f")
    monkeypatch.setenv(artifacts.FORCE_ENV, "1")
    assert not artifacts.is_current(a, "f")


def test_truncated_artifacts_name_themselves(tmp_path):
    path = tmp_path / "metrics.json"
    artifacts.write_json(path, {"a": list(range(50))})
    artifacts.stamp(path, "f")
    path.write_text(path.read_text()[:40])
    assert not artifacts.is_current(path, "f")
    with pytest.raises(ValueError, match=f"{path}.*truncated or corrupted.*recomputes"):
        artifacts.read_json(path)
    folder = _checkpoint(tmp_path / "ckpt")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(RuntimeError, match=f"checkpoint {folder} cannot be loaded.*truncated or corrupted"):
        models.load(str(folder))


def test_digest_cache_is_cheap_and_never_stale(tmp_path):
    big = tmp_path / "big.npy"
    np.save(big, np.random.default_rng(0).random(2_000_000))  # 16 MB
    first = time.perf_counter()
    digest = artifacts.file_digest(big)
    full = time.perf_counter() - first
    again = time.perf_counter()
    assert artifacts.file_digest(big) == digest
    cached = time.perf_counter() - again
    assert cached < full
    _corrupt_same_size(big)  # same size, same mtime: the ctime still changes
    assert artifacts.file_digest(big) != digest


LOCK_HOLDER = """
import sys, time
from rlvr_utils.core import lock
lock.acquire_run_lock(sys.argv[1])
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_run_of_one_run_folder_is_refused(tmp_path, monkeypatch):
    run_dir = tmp_path / "runs" / "x"
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(lock.RunLocked, match=f"{run_dir.resolve()} is in use by pid {holder.pid}"):
            lock.acquire_run_lock(run_dir)
        monkeypatch.setenv(lock.LOCK_ENV, str(run_dir.resolve()))  # a child of the holder does not take it
        assert lock.acquire_run_lock(run_dir) is False
    finally:
        holder.kill()
        holder.wait()
    monkeypatch.delenv(lock.LOCK_ENV)
    assert lock.acquire_run_lock(run_dir) is True  # a killed holder's lock is released by the system
    lock.release_run_lock(run_dir)


def test_leftover_temporaries_are_cleaned_at_the_next_start(tmp_path):
    run_dir = tmp_path / "run"
    lock.claim(run_dir)  # a run folder this package made
    (run_dir / "models" / f".sft.abc{artifacts.TMP}").mkdir(parents=True)
    (run_dir / "models" / f".sft{artifacts.OLD}").mkdir()
    (run_dir / "metrics").mkdir()
    (run_dir / "metrics" / f".cka.json.x1{artifacts.TMP}").write_text("{")
    (run_dir / "metrics" / "cka.json").write_text("{}")
    assert lock.acquire_run_lock(run_dir)
    lock.release_run_lock(run_dir)
    left = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*"))
    assert left == [lock.MARKER, "metrics", "metrics/cka.json", "models"]  # the released lock took its file


def test_a_folder_rlvr_utils_did_not_make_is_never_touched(tmp_path):
    """A user's folder named as a run: nothing in it is deleted or changed, and the refusal comes before any work."""
    import subprocess
    import sys

    from rlvr_utils.core import config as params_config

    user = tmp_path / "notes"
    (user / "sub").mkdir(parents=True)
    files = {user / ".notes.old": "keep", user / ".draft.tmp": "keep", user / "sub" / ".config.old": "keep",
             user / "report.md": "mine"}
    for path, text in files.items():
        path.write_text(text)
    before = sorted(p.relative_to(user).as_posix() for p in user.rglob("*"))
    params = tmp_path / "p.yaml"
    params.write_text(f"runs_dir: {tmp_path}\nname: notes\n")
    result = subprocess.run([sys.executable, "-m", "rlvr_utils", "run", "--params", str(params)], capture_output=True,
                            text=True)
    assert result.returncode == 2 and "was not made by rlvr_utils" in result.stderr
    with pytest.raises(lock.NotARunFolder):
        lock.acquire_run_lock(user)
    assert sorted(p.relative_to(user).as_posix() for p in user.rglob("*")) == before
    assert all(path.read_text() == text for path, text in files.items())
    for raw in ({"runs_dir": ".", "name": "rlvr_utils"}, {"runs_dir": str(params)}):  # the package; a file
        with pytest.raises(params_config.ParamsError, match="runs_dir / name"):
            params_config.from_dict(raw)


def test_a_new_run_folder_is_marked_and_only_its_own_temporaries_are_cleaned(tmp_path):
    run = tmp_path / "run"
    assert lock.acquire_run_lock(run)
    lock.release_run_lock(run)
    assert (run / lock.MARKER).is_file()
    (run / f".x.abc{artifacts.TMP}").write_text("left by a killed write")
    (run / ".user.tmp").write_text("not ours")
    assert lock.clean_temporaries(run) == 1 and (run / ".user.tmp").exists()


def test_the_digest_cache_switch_accepts_what_people_write(tmp_path, monkeypatch):
    for off in ("off", "false", "none", "disabled", "0", "no", " OFF "):
        monkeypatch.setenv("RLVR_DIGEST_CACHE", off)
        monkeypatch.setattr(artifacts, "_cache", None)
        monkeypatch.chdir(tmp_path)
        assert artifacts._cache_db() is None and not any(tmp_path.iterdir())


def test_the_lock_file_goes_with_its_holder_but_not_with_a_forked_child(tmp_path):
    """A holder that exits normally removes its `.lock` (nothing stale for the next reader); a forked child
    (a data-loader worker) that exits normally leaves its parent's lock and file alone."""
    import atexit

    take = "import sys\nfrom rlvr_utils.core import lock\nlock.acquire_run_lock(sys.argv[1])\n"
    run_dir = tmp_path / "run"
    exits = subprocess.run([sys.executable, "-c", take, str(run_dir)], capture_output=True, text=True)
    assert exits.returncode == 0, exits.stderr
    assert (run_dir / lock.MARKER).is_file() and not (run_dir / lock.LOCK).exists()
    assert lock.acquire_run_lock(run_dir)
    try:
        pid = os.fork()
        if pid == 0:  # the child: what a normal exit runs, then out without pytest's own exit path
            atexit._run_exitfuncs()
            os._exit(0)
        os.waitpid(pid, 0)
        assert (run_dir / lock.LOCK).read_text().startswith(f"pid {os.getpid()} ")
        second = subprocess.run([sys.executable, "-c", take, str(run_dir)], capture_output=True, text=True)
        assert second.returncode != 0 and "is in use by" in second.stderr
    finally:
        lock.release_run_lock(run_dir)
    assert not (run_dir / lock.LOCK).exists()
