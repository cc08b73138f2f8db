"""Shared fixtures: the whole book built once on params/ci.yaml, for the end-to-end and browser tests."""
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


@pytest.fixture(scope="session")
def built_book(tmp_path_factory):
    """(params file, book root, first run's result) of one full run of the book on params/ci.yaml."""
    tmp = tmp_path_factory.mktemp("book")
    params, book_root = ci_params(tmp), tmp / "site"
    first = run_book(params, book_root)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
    return params, book_root, first
