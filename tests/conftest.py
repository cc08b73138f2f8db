"""Shared fixtures: the whole book built once on params/ci.yaml, for the end-to-end and browser tests."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Unit tests use tiny tensors: a second thread only adds OpenMP synchronisation, which is many times
    slower on a shared 2-core machine. The end-to-end runs are subprocesses and keep torch's default."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def ci_params(tmp_path: Path) -> Path:
    """params/ci.yaml with its artifacts under tmp_path, so tests never touch the user's runs/."""
    raw = yaml.safe_load((ROOT / "params" / "ci.yaml").read_text())
    raw["runs_dir"] = str(tmp_path / "runs")
    path = tmp_path / "ci.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run_book(params: Path, book_root: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "rlvr_utils", "run", "--params", str(params), "--book-root", str(book_root), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)


def hub_cache(cache: Path, folders: dict[str, Path]) -> Path:
    """A Hugging Face cache in huggingface_hub's layout (HF_HUB_CACHE) holding each local checkpoint folder as the
    'main' snapshot of a hub id: models--org--name/{blobs/<sha256>, snapshots/<commit>/<file> -> blob, refs/main},
    as `hf download` leaves it. Nothing is downloaded: tests name local folders as if they were hub ids."""
    import hashlib
    import os

    for repo_id, folder in folders.items():
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        commit = hashlib.sha1(repo_id.encode()).hexdigest()
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        (repo / "blobs").mkdir(exist_ok=True)
        for file in sorted(Path(folder).iterdir()):
            blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
            blob.write_bytes(file.read_bytes())
            (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
    return cache


def assert_models_learn(run: Path) -> None:
    """A ci-sized run is small, but its models must learn: a run whose SFT writes '1111...' and whose GRPO is
    paid nothing (RLVR = SFT) exercises code, not behaviour, and must fail here."""
    import numpy as np
    from safetensors.numpy import load_file

    greedy = json.loads((run / "metrics" / "eval.json").read_text())["greedy"]
    for stage in ("sft", "rlvr"):
        assert greedy[stage]["format_rate"]["ci"][0] > 0.5, (run.name, stage, greedy[stage])
        assert greedy[stage]["accuracy"]["ci"][0] > 0.05, (run.name, stage, greedy[stage])
    assert greedy["base"]["accuracy"]["value"] > 0, greedy["base"]  # base does arithmetic in its own format
    sft_log = json.loads((run / "metrics" / "train_sft.json").read_text())
    assert sft_log["stopping"]["best_step"], sft_log.get("stopping")
    history = json.loads((run / "metrics" / "train_rlvr.json").read_text())["log_history"]
    paid = [h["rewards/accuracy_reward/mean"] for h in history if "rewards/accuracy_reward/mean" in h]
    assert paid and np.mean(paid) > 0.1, paid  # GRPO was paid: its groups had correct samples to learn from
    sft, rlvr = (load_file(str(run / "models" / s / "model.safetensors")) for s in ("sft", "rlvr"))
    assert sum(float(np.abs(rlvr[k] - sft[k]).sum()) for k in sft) > 0, "RLVR's weights are SFT's"
    answers = {s: [r["completion"] for r in map(json.loads, (run / "eval" / f"{s}_greedy.jsonl").read_text().splitlines())]
               for s in ("sft", "rlvr")}
    assert answers["rlvr"] != answers["sft"], "RLVR writes exactly what SFT writes"


@pytest.fixture(scope="session")
def built_book(tmp_path_factory):
    """(params file, book root, first run's result) of one full run of the book on params/ci.yaml."""
    tmp = tmp_path_factory.mktemp("book")
    params, book_root = ci_params(tmp), tmp / "site"
    first = run_book(params, book_root)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
    return params, book_root, first
