"""The run's device (params `device`): every analysis loads its models and runs its heavy products where the run
says, never on a device it picked on its own. Checked on CPU by giving the run a device no instrument would pick
by itself ('mps') and recording what each one asks for; the loads are stopped there."""
import numpy as np
import pytest
import torch

from rlvr_utils.core import config, device
from rlvr_utils.core.params import ParamsError


class Loaded(Exception):
    """Raised by the fake loader once it has recorded where a model was asked for."""


@pytest.fixture
def asked(monkeypatch):
    """Every `load(ref, cfg, device)` the analyses make, recorded as (ref, device); the first one stops the run."""
    calls = []

    def fake_load(ref, cfg=None, device="cpu"):
        calls.append((str(ref), str(device)))
        raise Loaded

    import rlvr_utils.models.loading as loading
    from rlvr_utils.evaluation import evaluate
    from rlvr_utils.instruments.cka import same_input
    from rlvr_utils.instruments.crosscoder import causal, latents

    monkeypatch.setattr(loading, "load", fake_load)  # modules that call loading.load(...)
    for module in (same_input, causal, latents):
        monkeypatch.setattr(module, "load", fake_load)  # modules that imported the name
    monkeypatch.setattr(evaluate.torch.cuda, "is_available", lambda: False)
    return calls


def run_on(tmp_path, value="mps"):
    return config.from_dict({"name": "dev", "runs_dir": str(tmp_path), "device": value,
                             "evaluation": {"backend": "hf"}})


def test_auto_is_this_process_gpu_when_cuda_is_present_else_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device.resolve("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")  # accelerate launch's fourth process on a node
    assert device.resolve("auto") == "cuda:3"
    assert device.resolve("cpu") == "cpu" and device.resolve("cuda:1") == "cuda:1"


def test_a_bad_device_is_refused_with_the_key_and_what_is_allowed(tmp_path, monkeypatch):
    with pytest.raises(ParamsError, match=r"device.*'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"):
        config.from_dict({"name": "d", "device": "gpu-please"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = tmp_path / "p.yaml"
    path.write_text("name: d\ndevice: cuda\n")
    with pytest.raises(ParamsError, match=r"device \(got 'cuda'\): no CUDA device on this machine"):
        config.load(path, machine=True)


def test_the_device_is_in_no_fingerprint(tmp_path):
    """Moving a run to a GPU must not redo the CPU's finished work."""
    from rlvr_utils.core import deps

    a, b = run_on(tmp_path, "cpu"), run_on(tmp_path, "mps")
    for module in ("rlvr_utils.instruments.cka.instrument", "rlvr_utils.activations.extraction",
                   "rlvr_utils.instruments.crosscoder.instrument", "rlvr_utils.evaluation.evaluate"):
        assert deps.fingerprint(a, module) == deps.fingerprint(b, module)


@pytest.mark.parametrize("where", ["lens", "patching", "grafting", "same_input", "causal", "latents",
                                   "evaluation", "extraction", "sample cell", "cka dynamics"])
def test_every_model_load_of_the_analyses_follows_the_run_device(tmp_path, asked, where):
    cfg = run_on(tmp_path)
    tokens = cfg.path("tokens")
    tokens.mkdir(parents=True)
    (tokens / "tokens.json").write_text("{}")
    (cfg.path("models", "sft")).mkdir(parents=True)
    (cfg.path("models", "sft", "config.json")).write_text("{}")
    with pytest.raises(Loaded):
        if where == "lens":
            from rlvr_utils.instruments.probes.lens_instrument import Lens
            Lens().prepare(cfg, ["rlvr"])
        elif where == "patching":
            from rlvr_utils.instruments.patching.instrument import Patching
            Patching().prepare(cfg, ["rlvr"])
        elif where == "grafting":
            from rlvr_utils.instruments.patching.grafting import Grafting
            Grafting().prepare(cfg, ["rlvr"])
        elif where == "same_input":
            from rlvr_utils.instruments.cka.same_input import SameInput
            SameInput().prepare(cfg, ["rlvr"])
        elif where == "causal":
            from rlvr_utils.instruments.crosscoder.causal import causal_test
            causal_test(cfg, "rlvr", [], [], 0)
        elif where == "latents":
            from rlvr_utils.instruments.crosscoder import latents
            from rlvr_utils.instruments.crosscoder.model import Crosscoder, PairFit
            coder = Crosscoder(4, 8, 2)
            coder.threshold.fill_(0.0)
            fit = PairFit(coder, torch.ones(2), np.full(8, 0.5), {"count": np.ones(8)}, np.zeros(0, int))
            latents.read_latents(cfg, fit, "rlvr", np.ones((3, 4), np.float32), np.ones((3, 4), np.float32),
                                 np.zeros((3, 2), int), None)
        elif where == "evaluation":
            from rlvr_utils.evaluation import evaluate
            evaluate.load_for_generation(cfg, cfg.model_ref("sft"))
        elif where == "extraction":
            from rlvr_utils.activations import extraction
            extraction.run_extract(cfg, "sft", type("Cache", (), {"fingerprint": "c"})())
        elif where == "sample cell":  # notebook 01's first look at the SFT model
            from rlvr_utils.models import loading
            loading.load_stage(cfg, "sft")
        elif where == "cka dynamics":
            from rlvr_utils.instruments.cka.instrument import run_dynamics
            cfg.path("models", "rlvr_checkpoints", "step-1").mkdir(parents=True)
            run_dynamics(cfg, None)
    assert asked and all(dev == "mps" for _, dev in asked), asked


def test_the_crosscoders_train_on_the_run_device(tmp_path, monkeypatch):
    from rlvr_utils.instruments.crosscoder import instrument

    seen = []
    monkeypatch.setattr(instrument, "fit_pair", lambda *a, **k: seen.append(a[-1]) or Loaded())
    monkeypatch.setattr(instrument.log, "info", lambda *a: None)
    cfg = run_on(tmp_path)
    with pytest.raises(AttributeError):  # the fake fit has no results to log; the device was recorded first
        instrument.fit_seeds(cfg, np.ones((4, 2)), np.ones((4, 2)), 2, "x")
    assert seen == ["mps"] * cfg.crosscoder.seeds


def test_a_crosscoder_fitted_anywhere_comes_back_on_the_cpu_with_the_same_numbers():
    """fit_pair(device=...) moves the work, not the result: the CPU run is the default path, unchanged."""
    from rlvr_utils.instruments.crosscoder.model import fit_pair

    rng = np.random.default_rng(0)
    a = rng.normal(size=(64, 8)).astype(np.float32)
    b = a + 0.1 * rng.normal(size=(64, 8)).astype(np.float32)
    one = fit_pair(a, b, 16, 2, 20, 32, 1e-3, 0, progress=False)
    two = fit_pair(a, b, 16, 2, 20, 32, 1e-3, 0, progress=False, device="cpu")
    assert one.crosscoder.W_dec.device.type == "cpu" and one.scales.device.type == "cpu"
    assert torch.equal(one.crosscoder.W_dec, two.crosscoder.W_dec)
    np.testing.assert_array_equal(one.rel_norm, two.rel_norm)


def test_cka_runs_its_products_on_the_run_device(tmp_path, monkeypatch):
    from rlvr_utils.instruments.cka import instrument

    seen = []
    monkeypatch.setattr(instrument, "compare_variant", lambda *a: seen.append(a[-1]) or ({}, []))
    monkeypatch.setattr(instrument, "compare_stages", lambda *a: seen.append(a[-1]) or {})
    cfg = run_on(tmp_path)
    instrument.CKA().measure(cfg, "rlvr", {"store": None, "layers": [0], "cells": []})
    instrument.CKA().report(cfg, {"store": None, "pairs": [], "cells": []}, {})
    assert seen == ["mps", "mps"]
