"""Weight-difference measures: planted updates with known answers, identities, family name maps, and
memory that stays near one tensor per checkpoint."""
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

from rlvr_utils.core import artifacts, config
from rlvr_utils.instruments import base
from rlvr_utils.instruments.weights import checkpoints, maths, measures, updates
from rlvr_utils.instruments.weights.instrument import Weights
from rlvr_utils.models.families import family_of

TINY = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64)


def _orthonormal(n, r, gen):
    q, _ = torch.linalg.qr(torch.randn(n, r, generator=gen))
    return q


def _planted(singular_values, shape=(48, 40), seed=0):
    """U diag(s) V^T with orthonormal U, V: a matrix whose singular values are exactly `singular_values`."""
    gen = torch.Generator().manual_seed(seed)
    r = len(singular_values)
    return _orthonormal(shape[0], r, gen) @ torch.diag(torch.tensor(singular_values)) @ _orthonormal(shape[1], r, gen).T


def _save_tiny(folder, seed=0, family="qwen2"):
    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(family, **TINY)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(folder)
    return model


def _perturb(model, folder, groups, scale=1e-2, seed=1):
    """Save `model` with every matrix of `groups` moved by Gaussian noise (others untouched)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if updates.tensor_label(family_of(model), name)[2] in groups:
                p.add_(scale * torch.randn(p.shape, generator=gen))
    model.save_pretrained(folder)
    return model


# --- spectral measures -----------------------------------------------------------------------------
@pytest.mark.parametrize("r", [1, 3, 7])
def test_rank_r_update_with_equal_singular_values_has_effective_and_stable_rank_r(r):
    before = torch.randn(48, 40, generator=torch.Generator().manual_seed(5))
    stats = maths.update_stats(before, before + _planted([0.3] * r), tolerance=1e-5, top_k=4)
    assert stats["effective_rank"] == pytest.approx(r, abs=1e-3)
    assert stats["stable_rank"] == pytest.approx(r, abs=1e-3)
    assert stats["effective_rank_ratio"] == pytest.approx(r / 40, abs=1e-4)
    assert stats["top_k_energy"] == pytest.approx(min(4, r) / r, abs=1e-4)


def test_rank_r_update_with_unequal_singular_values_has_both_ranks_below_r():
    before = torch.randn(48, 40, generator=torch.Generator().manual_seed(5))
    stats = maths.update_stats(before, before + _planted([1.0, 0.5, 0.2, 0.1]), tolerance=1e-5, top_k=2)
    assert 1 <= stats["stable_rank"] < 4 - 0.5
    assert 1 <= stats["effective_rank"] < 4 - 0.5
    # stable rank = sum s^2 / max s^2, known exactly here
    assert stats["stable_rank"] == pytest.approx((1 + 0.25 + 0.04 + 0.01) / 1, rel=1e-4)


def test_effective_rank_matches_a_naive_numpy_reference():
    a = torch.randn(30, 20, generator=torch.Generator().manual_seed(3))
    s = np.linalg.svd(a.double().numpy(), compute_uv=False)
    p = s / s.sum()
    expected = math.exp(-(p * np.log(p)).sum())
    assert maths.effective_rank(torch.linalg.svdvals(a), a.shape) == pytest.approx(expected, rel=1e-5)


def test_principal_angle_of_a_rotated_top_direction_is_the_rotation_angle():
    gen = torch.Generator().manual_seed(0)
    u, v = _orthonormal(24, 12, gen), _orthonormal(20, 12, gen)
    s = torch.linspace(12, 1, 12)
    theta = math.radians(30)
    u_rot = u.clone()  # turn the top left singular vector towards one outside the top k=4
    u_rot[:, 0] = math.cos(theta) * u[:, 0] + math.sin(theta) * u[:, 8]
    u_rot[:, 8] = -math.sin(theta) * u[:, 0] + math.cos(theta) * u[:, 8]
    before, after = u @ torch.diag(s) @ v.T, u_rot @ torch.diag(s) @ v.T
    stats = maths.update_stats(before, after, tolerance=1e-5, top_k=4)
    assert stats["subspace_angle_left"] == pytest.approx(30, abs=1e-2)
    assert stats["subspace_angle_right"] == pytest.approx(0, abs=1e-2)
    assert stats["spectrum_change"] == pytest.approx(0, abs=1e-5)


def test_sparsity_counts_entries_within_the_tolerance():
    before = torch.zeros(10, 10)
    after = before.clone()
    after.view(-1)[:30] = 1e-3  # 30 entries moved, 70 unchanged; 20 more moved by less than the tolerance
    after.view(-1)[30:50] = 1e-6
    stats = maths.update_stats(before, after, tolerance=1e-5, top_k=2, spectra=False)
    assert stats["sparsity"] == pytest.approx(0.7)
    assert stats["n_unchanged"] == 70
    assert stats["energy_per_param"] == pytest.approx((30 * 1e-6 + 20 * 1e-12) / 100, rel=1e-4)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="tolerance"):
        maths.update_stats(torch.ones(2, 2), torch.ones(2, 2), tolerance=-1, top_k=1)
    with pytest.raises(ValueError, match="top_k"):
        maths.update_stats(torch.ones(2, 2), torch.ones(2, 2), tolerance=0, top_k=0)


# --- names -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family, attention, mlp", [
    ("llama", {"q", "k", "v", "o"}, {"gate", "up", "down"}),
    ("qwen2", {"q", "k", "v", "o"}, {"gate", "up", "down"}),
    ("mistral", {"q", "k", "v", "o"}, {"gate", "up", "down"}),
    ("olmo2", {"q", "k", "v", "o"}, {"gate", "up", "down"}),
    ("gpt2", {"qkv", "o"}, {"up", "down"}),
    ("gpt_neox", {"qkv", "o"}, {"up", "down"}),
])
def test_every_block_matrix_of_each_family_is_classified(family, attention, mlp):
    extra = {"gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=64),
             "gpt_neox": dict(rotary_pct=1.0)}.get(family, {})
    cfg = AutoConfig.for_model(family, **{**TINY, **extra})
    names = AutoModelForCausalLM.from_config(cfg).state_dict()
    label = lambda name: updates.tensor_label(family_of(family), name)  # noqa: E731
    found = {}
    for name, tensor in names.items():
        layer, module, group = label(name)
        if tensor.ndim == 2 and layer is not None:
            found.setdefault((layer, group), set()).add(module)
    for layer in range(2):
        assert found[(layer, "attention")] == attention
        assert found[(layer, "mlp")] == mlp
    assert updates.tensor_label(family_of("qwen2"), "model.embed_tokens.weight") == (None, "other", "other")
    assert updates.tensor_label(family_of("gpt2"), "transformer.h.3.attn.c_proj.weight") == (3, "o", "attention")
    assert updates.tensor_label(family_of("gpt2"), "transformer.h.3.mlp.c_proj.weight") == (3, "down", "mlp")


# --- checkpoints -----------------------------------------------------------------------------------
def test_identical_checkpoints_give_zero_norm_full_sparsity_and_no_subspace_change(tmp_path):
    _save_tiny(tmp_path / "sft")
    _save_tiny(tmp_path / "rlvr")  # same seed: the same weights, written separately
    rows = updates.compare({"sft": tmp_path / "sft", "rlvr": tmp_path / "rlvr"}, [("rlvr", "sft")])
    assert rows and all(r["delta_norm"] == 0 and r["sparsity"] == 1 for r in rows)
    summary = {k: v["value"] for k, v in measures.summarize(rows).items()}
    assert summary["rlvr_relative_update_norm"] == 0 and summary["rlvr_update_sparsity"] == 1
    assert summary["rlvr_top_subspace_angle"] < 1e-3
    assert summary["rlvr_update_mlp_share"] is None  # 0 / 0: no update to share out
    assert summary["rlvr_update_effective_rank_ratio"] is None
    matrices = [r for r in rows if "subspace_angle_left" in r]
    assert matrices
    for r in matrices:
        assert r["subspace_angle_left"] < 1e-3 and r["subspace_angle_right"] < 1e-3
        assert r["spectrum_change"] == 0 and r["stable_rank"] == 0 and r["effective_rank"] == 0


@pytest.mark.parametrize("groups, share", [({"mlp"}, 1.0), ({"attention"}, 0.0)])
def test_a_planted_update_confined_to_one_group_is_attributed_to_it(tmp_path, groups, share):
    model = _save_tiny(tmp_path / "base")
    _perturb(model, tmp_path / "sft", groups, seed=1)
    _perturb(model, tmp_path / "rlvr", groups, seed=2)
    rows = updates.compare({s: tmp_path / s for s in ("base", "sft", "rlvr")}, measures.PAIRS, spectra=False)
    table = updates.group_table(rows).set_index(["pair", "group"])
    other = ({"attention", "mlp"} - groups).pop()
    for pair in ("sft-base", "rlvr-sft", "rlvr-base"):
        assert table.loc[(pair, other), "energy_per_param"] == 0
        assert table.loc[(pair, "other"), "energy_per_param"] == 0
        assert table.loc[(pair, "all"), "mlp_share"] == share
    summary = measures.summarize(rows)
    assert summary["rlvr_update_mlp_share"]["value"] == share
    assert summary["sft_update_mlp_share"]["value"] == share


def test_sharded_and_single_file_checkpoints_read_the_same(tmp_path):
    model = _save_tiny(tmp_path / "single")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    assert checkpoints.tensor_files(tmp_path / "sharded").keys() == checkpoints.tensor_files(tmp_path / "single").keys()
    assert checkpoints.parameter_count(tmp_path / "sharded") == sum(p.numel() for p in model.parameters())
    rows = updates.compare({"a": tmp_path / "single", "b": tmp_path / "sharded"}, [("b", "a")], spectra=False)
    assert all(r["delta_norm"] == 0 for r in rows)


def test_missing_checkpoint_files_and_unknown_pairs_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="safetensors"):
        checkpoints.tensor_files(tmp_path / "empty")
    with pytest.raises(ValueError, match="pair"):
        updates.compare({"a": tmp_path / "empty", "b": tmp_path / "empty"}, [("rlvr", "a")])


def test_find_checkpoints_orders_steps_and_ignores_other_folders(tmp_path):
    for name in ("step-20", "step-3", "notes"):
        (tmp_path / name).mkdir()
        save_file({"w": torch.zeros(1)}, tmp_path / name / "model.safetensors")
    (tmp_path / "step-9").mkdir()  # no weights: not a checkpoint
    assert list(checkpoints.find_checkpoints(tmp_path)) == [3, 20]
    assert checkpoints.find_checkpoints(tmp_path / "absent") == {}


def test_analyze_writes_a_json_summary_and_training_dynamics(tmp_path):
    cfg = config.from_dict({"name": "t", "runs_dir": str(tmp_path), "grpo": {"steps": 10, "per_device_train_batch_size": 8},
                            "weights": {"top_k": 2, "spectrum_values": 5}})
    models = cfg.path("models")
    model = _save_tiny(models / "base")
    _perturb(model, models / "sft", {"attention", "mlp", "other"}, seed=1)
    _perturb(model, models / "rlvr_checkpoints" / "step-5", {"attention"}, scale=1e-3, seed=2)
    _perturb(model, models / "rlvr", {"attention"}, scale=1e-3, seed=3)
    shutil.copytree(models / "sft", models / "identical")  # treatments: a copy of SFT ...
    shutil.copytree(models / "sft", models / "null_0")  # ... and SFT plus noise in every block matrix
    sft = load_file(models / "sft" / "model.safetensors")
    gen = torch.Generator().manual_seed(4)
    family = family_of("qwen2")
    save_file({k: v + 1e-3 * torch.randn(v.shape, generator=gen)
               if updates.tensor_label(family, k)[2] in updates.GROUPS else v
               for k, v in sft.items()}, models / "null_0" / "model.safetensors", metadata={"format": "pt"})
    base.run(cfg, Weights(), progress=False)
    path = cfg.path("metrics", "weights.json")
    loaded = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in weights.json"))
    assert set(loaded["summary"]) == {
        "rlvr_update_mlp_share", "sft_update_mlp_share", "rlvr_update_effective_rank_ratio",
        "sft_update_effective_rank_ratio", "rlvr_update_sparsity",
        "rlvr_relative_update_norm", "sft_relative_update_norm", "rlvr_top_subspace_angle", "sft_top_subspace_angle"}
    assert all(v["description"] for v in loaded["summary"].values())
    assert loaded["summary"]["sft_update_effective_rank_ratio"]["ci"] is not None
    assert loaded["summary"]["rlvr_update_mlp_share"]["value"] == 0.0  # RLVR moved only attention
    variants = loaded["variants"]
    assert set(variants) == {"rlvr", "identical", "null_0"}  # the other treatments have no checkpoint
    keys = {"attn_structured_update", "mlp_structured_update", "attn_rotation", "mlp_rotation", "mlp_share",
            "effective_rank_ratio", "attn_relative_norm", "mlp_relative_norm"}
    assert all(set(v) == keys for v in variants.values())
    identical = variants["identical"]["attn_structured_update"]
    assert {k: identical[k] for k in ("value", "ci")} == {"value": 0.0, "ci": [0.0, 0.0]}
    assert variants["identical"]["attn_rotation"]["value"] == 0.0
    assert variants["identical"]["effective_rank_ratio"]["value"] is None  # nothing changed
    assert variants["rlvr"]["mlp_structured_update"]["value"] == 0.0 and variants["rlvr"]["mlp_share"]["value"] == 0.0
    assert variants["null_0"]["mlp_share"]["ci"][0] < 0.5 < variants["null_0"]["mlp_share"]["ci"][1]
    assert 0 < loaded["summary"]["sft_update_mlp_share"]["value"] < 1
    assert loaded["parameters"] == sum(p.numel() for p in model.parameters())
    assert {d["step"] for d in loaded["dynamics"]} == {0, 5, 10}
    step0 = [d for d in loaded["dynamics"] if d["step"] == 0]
    assert all(d["relative_norm"] == 0 for d in step0)
    assert all(len(m["singular_values"]) <= 5 for m in loaded["matrices"] if "singular_values" in m)


MEMORY_SCRIPT = textwrap.dedent("""
    import json, re, sys
    from rlvr_utils.instruments.weights import checkpoints, maths

    def status(key):
        return int(re.search(key + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024

    open("/proc/self/clear_refs", "w").write("5")  # reset the peak-RSS mark after the imports
    start = status("VmRSS")
    for name, t in checkpoints.iter_tensors({"a": sys.argv[1], "b": sys.argv[2]}):
        maths.update_stats(t["a"], t["b"], tolerance=1e-5, top_k=1, spectra=False)
        del t
    print(json.dumps({"peak_increase": status("VmHWM") - start}))
""")


def test_reading_two_checkpoints_keeps_memory_near_one_tensor_at_a_time(tmp_path):
    try:
        open("/proc/self/clear_refs", "w").write("5")
    except OSError:
        pytest.skip("this system cannot reset the peak-RSS mark (/proc/self/clear_refs)")
    n_tensors, shape = 6, (2048, 1024)
    tensor_bytes = 4 * shape[0] * shape[1]  # 8 MiB each; both checkpoints together: 96 MiB
    gen = torch.Generator().manual_seed(0)
    a = {f"layers.{i}.w": torch.randn(shape, generator=gen) for i in range(n_tensors)}
    (tmp_path / "a").mkdir()
    save_file(a, tmp_path / "a" / "model.safetensors")
    (tmp_path / "b").mkdir()  # sharded, through the index file
    weight_map = {}
    for shard, names in enumerate((list(a)[:3], list(a)[3:])):
        file = f"model-{shard + 1:05d}-of-00002.safetensors"
        save_file({k: a[k] + 0.01 for k in names}, tmp_path / "b" / file)
        weight_map.update({k: file for k in names})
    (tmp_path / "b" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    del a
    # A fixed mmap threshold makes glibc return freed tensors to the system at once; by default it keeps
    # a few freed tensors' worth cached (bounded, but it would blur what the reader itself keeps alive).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path / "a"), str(tmp_path / "b")],
                         capture_output=True, text=True, check=True, env=env)
    peak = json.loads(out.stdout.strip().splitlines()[-1])["peak_increase"]
    # both tensors of the current name + their difference + a boolean mask + the pages safetensors maps while
    # reading (measured 4-5.5 tensors across machines); reading everything first would hold all 12
    assert peak < 8 * tensor_bytes, f"peak grew by {peak / 2**20:.0f} MiB"


def test_fingerprint_changes_when_a_checkpoint_is_rewritten(tmp_path):
    """The driver's stamp checks the checkpoints' content: a retrained checkpoint is analysed again even when no
    param changed."""
    cfg = config.from_dict({"name": "t", "runs_dir": str(tmp_path)})
    models = cfg.path("models")
    model = _save_tiny(models / "base")
    for stage in ("sft", "rlvr"):
        model.save_pretrained(models / stage)
    instrument = Weights()
    treatments = instrument.treatments(cfg)
    base.run(cfg, instrument, progress=False)

    def current():
        return artifacts.is_current(base.path(cfg, instrument), base.fingerprint(cfg, instrument, treatments),
                                    base.inputs(cfg, instrument, treatments))

    assert current() and current()
    _perturb(model, models / "rlvr", {"mlp"})
    assert not current()


def test_fingerprint_changes_with_the_confidence_level_it_reads():
    """The instrument reads evaluation.confidence (its intervals' level): its fingerprint must follow it."""
    treatments = ["rlvr"]
    fingerprints = {c: base.fingerprint(config.from_dict({"name": "t", "evaluation": {"confidence": c}}), Weights(),
                                        treatments) for c in (0.9, 0.95)}
    assert fingerprints[0.9] != fingerprints[0.95]
    same = config.from_dict({"name": "t", "evaluation": {"confidence": 0.95}})
    assert base.fingerprint(same, Weights(), treatments) == fingerprints[0.95]


# --- storage precision, spectral gap, per-variant measures -------------------------------------------
def _bf16(t):
    return t.to(torch.bfloat16).to(torch.float32)


@pytest.mark.parametrize("seed", range(3))
def test_a_bf16_stored_rank_4_update_reads_as_rank_4(seed):
    gen = torch.Generator().manual_seed(seed)
    before = 0.02 * torch.randn(128, 512, generator=gen)  # an initialised weight's scale
    update = _planted([0.05, 0.04, 0.03, 0.02], shape=(128, 512), seed=seed)  # relative size ~1.5%
    stored_before, stored_after = _bf16(before), _bf16(before + update)  # both rounded, as bf16 checkpoints are
    stats = maths.update_stats(stored_before, stored_after, tolerance=1e-5, top_k=8, dtype="BF16")
    assert 3.5 < stats["effective_rank"] < 4.6
    assert stats["effective_rank_ratio"] < 0.04  # truth 4 / 128 = 0.031
    # the round-off floor set from the update itself (float32 arithmetic) counts the bf16 noise as rank
    naive = maths.effective_rank(torch.linalg.svdvals(stored_after - stored_before), (128, 512))
    assert naive > 20
    # an update below storage precision is round-off, not rank
    tiny = maths.update_stats(stored_before, _bf16(before + 1e-3 * update), tolerance=0, top_k=8, dtype="BF16")
    assert tiny["effective_rank"] <= 4.6


def test_unknown_dtype_is_a_clear_error():
    with pytest.raises(ValueError, match="dtype"):
        maths.unit_roundoff("F8_E4M3X")
    assert maths.unit_roundoff("BF16") == 2**-8 and maths.unit_roundoff("F16") == 2**-11


def _gapped_weight(seed=0, shape=(128, 128)):
    """A weight with an outlier direction (a clear gap after sigma_1) and sigma_8 / sigma_9 ~ 1.0003 (1.004 to 1.17
    on the organism's matrices)."""
    gen = torch.Generator().manual_seed(seed)
    s = torch.cat([torch.tensor([20.0, 12.0, 8.0, 7.5, 7.0, 6.5, 6.2, 6.0, 5.998]), torch.linspace(5.5, 1.0, shape[1] - 9)])
    u, v = _orthonormal(shape[0], shape[1], gen), _orthonormal(shape[1], shape[1], gen)
    return u @ torch.diag(s) @ v.T


def test_rotation_at_the_spectral_gap_orders_a_rank_1_and_a_same_norm_gaussian_update():
    before = _gapped_weight()
    u, s, vh = torch.linalg.svd(before)
    norm = 2.5e-3 * float(torch.linalg.vector_norm(before))
    gen = torch.Generator().manual_seed(1)
    aimed = norm * torch.outer(u[:, 5], vh[0])  # rank 1, turning the top direction towards the 6th
    scattered = torch.outer(torch.randn(128, generator=gen), torch.randn(128, generator=gen))  # rank 1, random
    gauss = torch.randn(128, 128, generator=gen)
    scattered, gauss = scattered * norm / scattered.norm(), gauss * norm / gauss.norm()
    angle = lambda st: (st["subspace_angle_left"] + st["subspace_angle_right"]) / 2  # noqa: E731
    a, r, g = (maths.update_stats(before, before + d, tolerance=0, top_k=8) for d in (aimed, scattered, gauss))
    assert a["gap_k"] == r["gap_k"] == g["gap_k"] == 1 and a["top_k_gap"] == pytest.approx(20 / 12, rel=1e-3)
    wedin = math.degrees(math.asin(norm / (20 - 12)))  # sin(angle) <= ||E||_2 / (sigma_1 - sigma_2)
    assert angle(g) < angle(a) <= wedin + 0.01  # the update that turns the top direction turns it most
    assert max(angle(r), angle(g)) < 0.3 * angle(a)  # same-norm updates in random directions barely do
    # the fixed top-8 subspace, whose edge sits between sigma_8 and sigma_9 ~ sigma_8, is turned by degrees by
    # the Gaussian update: more than the aimed update turns the top direction
    assert maths.largest_principal_angle(u[:, :8], torch.linalg.svd(before + gauss)[0][:, :8]) > 5 > 10 * angle(a)
    # a planted rotation of the top direction is measured as such
    u, s, vh = torch.linalg.svd(before)
    theta = math.radians(30)
    u_rot = u.clone()
    u_rot[:, 0], u_rot[:, 5] = math.cos(theta) * u[:, 0] + math.sin(theta) * u[:, 5], \
        -math.sin(theta) * u[:, 0] + math.cos(theta) * u[:, 5]
    turned = maths.update_stats(before, u_rot @ torch.diag(s) @ vh, tolerance=0, top_k=8)
    assert turned["subspace_angle_left"] == pytest.approx(30, abs=0.1)


def test_sparsity_does_not_count_storage_round_off_as_change():
    gen = torch.Generator().manual_seed(0)
    before = 0.05 * torch.randn(64, 64, generator=gen)
    after = before.clone()
    after.view(-1)[:1000] += 0.01  # 1000 of 4096 entries really moved
    stats = maths.update_stats(before, _bf16(after), tolerance=1e-5, top_k=2, spectra=False, dtype="BF16")
    assert stats["n_unchanged"] == 4096 - 1000  # every other entry differs only by bf16 rounding
    absolute = maths.update_stats(before, _bf16(after), tolerance=1e-5, top_k=2, spectra=False, dtype="F32")
    assert absolute["n_unchanged"] < 1000  # read as float32, rounding counts as a change


SHAPES = {"q": (64, 64), "k": (64, 64), "v": (64, 64), "o": (64, 64), "gate": (128, 64), "up": (128, 64),
          "down": (64, 128)}
PREFIX = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
          "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


def _checkpoints(tmp_path, changes: dict, layers=3):
    """SFT (random weights) and treatments {name: (groups changed, 'low_rank' | 'gaussian', seed)}, each update of
    Frobenius norm 2% of the weight's; written as safetensors."""
    gen = torch.Generator().manual_seed(0)
    sft = {f"model.layers.{l}.{PREFIX[m]}.weight": 0.05 * torch.randn(*shape, generator=gen)
           for l in range(layers) for m, shape in SHAPES.items()}
    sft["model.embed_tokens.weight"] = torch.randn(50, 64, generator=gen)
    folders = {"sft": tmp_path / "sft"}
    for name, (groups, kind, seed) in {"sft": (set(), None, 0), **changes}.items():
        g = torch.Generator().manual_seed(seed)
        out = {}
        for key, w in sft.items():
            if updates.tensor_label(family_of("qwen2"), key)[2] not in groups:
                out[key] = w
                continue
            if kind == "low_rank":
                d = torch.outer(torch.randn(w.shape[0], generator=g), torch.randn(w.shape[1], generator=g))
            else:
                d = torch.randn(*w.shape, generator=g)
            out[key] = w + d * (0.02 * w.norm() / d.norm())
        (tmp_path / name).mkdir()
        save_file(out, tmp_path / name / "model.safetensors")
        (tmp_path / name / "config.json").write_text(json.dumps({"model_type": "qwen2"}))  # the tensors' family
        folders[name] = tmp_path / name
    return folders


def test_variant_measures_credit_a_planted_low_rank_update_to_its_component(tmp_path):
    folders = _checkpoints(tmp_path, {"attn_only": ({"attention"}, "low_rank", 1), "mlp_only": ({"mlp"}, "low_rank", 2),
                                      "null_0": ({"attention", "mlp"}, "gaussian", 3),
                                      "null_1": ({"attention", "mlp"}, "gaussian", 4)})
    rows = updates.compare(folders, [(t, "sft") for t in folders if t != "sft"], tolerance=0, top_k=4, progress=False)
    v = measures.variant_measures(rows, ["attn_only", "mlp_only", "null_0", "null_1", "absent"], n_bootstrap=300)
    assert set(v) == {"attn_only", "mlp_only", "null_0", "null_1"}
    null = v["null_0"]
    for planted, other in (("attn", "mlp"), ("mlp", "attn")):
        got = v[f"{planted}_only"]
        assert got[f"{planted}_structured_update"].value > 3 * null[f"{planted}_structured_update"].value
        assert got[f"{planted}_structured_update"].ci[0] > null[f"{planted}_structured_update"].ci[1]
        assert got[f"{other}_structured_update"].value == 0 and got[f"{other}_rotation"].value == 0
        assert got[f"{other}_relative_norm"].value == 0
        assert got[f"{planted}_relative_norm"].value == pytest.approx(0.02, rel=1e-3)
        assert got["effective_rank_ratio"].value == pytest.approx(1 / 64, rel=0.05)  # rank 1 of 64
    assert v["attn_only"]["mlp_share"].value == 0 and v["mlp_only"]["mlp_share"].value == 1
    # two draws of the same-norm Gaussian update read the same, within their intervals
    for key in ("attn_structured_update", "mlp_structured_update", "attn_rotation", "mlp_rotation",
                "effective_rank_ratio", "attn_relative_norm"):
        a, b = v["null_0"][key], v["null_1"][key]
        assert abs(a.value - b.value) <= 0.1 * abs(a.value), key
    assert v["null_0"]["effective_rank_ratio"].value > 0.7  # a Gaussian update is high rank


def test_an_update_with_equal_energy_per_parameter_has_mlp_share_one_half(tmp_path):
    folders = _checkpoints(tmp_path, {"null_0": ({"attention", "mlp"}, "gaussian", 5)})
    # rescale every matrix's update to the same energy per parameter
    sft, null = load_file(folders["sft"] / "model.safetensors"), load_file(folders["null_0"] / "model.safetensors")
    save_file({k: sft[k] + (null[k] - sft[k]) / (null[k] - sft[k]).norm() * 1e-3 * math.sqrt(sft[k].numel())
               if (null[k] - sft[k]).norm() > 0 else sft[k] for k in sft}, folders["null_0"] / "model.safetensors")
    rows = updates.compare(folders, [("null_0", "sft")], tolerance=0, top_k=4, progress=False)
    share = measures.variant_measures(rows, ["null_0"])["null_0"]["mlp_share"]
    assert share.value == pytest.approx(0.5, abs=1e-3)
    assert share.ci[0] <= 0.5 <= share.ci[1]


# --- captions of the chapter's figures (drawn inline with seaborn from figures.py's frames) ---------------
def _caption_result():
    """A hand-made weights.json: one layer, q and up matrices, two pairs, two dynamics steps."""
    def matrix(pair, module, group, energy, eff, stable, angle, change, values):
        return {"pair": pair, "name": f"l0.{module}", "layer": 0, "module": module, "group": group,
                "energy_per_param": energy, "effective_rank": eff * 4, "max_rank": 4, "stable_rank": stable * 4,
                "subspace_angle_left": angle, "subspace_angle_right": angle, "spectrum_change": change,
                "singular_values": values}
    return {
        "pairs": ["sft-base", "rlvr-sft"], "top_k": 2,
        "matrices": [matrix("sft-base", "q", "attention", 1e-4, 0.5, 0.2, 20.0, 0.1, [1.0, 0.5, 0.2, 0.05]),
                     matrix("sft-base", "up", "mlp", 2e-4, 0.7, 0.3, 30.0, 0.2, [1.0, 0.6, 0.3, 0.2]),
                     matrix("rlvr-sft", "q", "attention", 1e-8, 0.3, 0.1, 0.5, 0.001, [1.0, 0.05, 0.01, 0.01]),
                     matrix("rlvr-sft", "up", "mlp", 3e-8, 0.4, 0.1, 0.7, 0.002, [1.0, 0.2, 0.05, 0.01])],
        "groups": [{"pair": p, "group": g, "energy_per_param": e, "mlp_share": s}
                   for p, s, rows in (("sft-base", 0.6, (("all", 1.5e-4), ("attention", 1e-4), ("mlp", 2e-4))),
                                      ("rlvr-sft", 0.75, (("all", 2e-8), ("attention", 1e-8), ("mlp", 3e-8))))
                   for g, e in rows],
        "dynamics": [{"step": s, "group": g, "relative_norm": v}
                     for s, vals in ((0, (0, 0, 0)), (50, (0.002, 0.001, 0.003)), (100, (0.0025, 0.0012, 0.004)))
                     for g, v in zip(("all", "attention", "mlp"), vals)],
        "summary": {"rlvr_update_mlp_share": {"value": 0.75, "ci": [0.6, 0.9]},
                    "sft_update_mlp_share": {"value": 0.6, "ci": [0.45, 0.7]},
                    "rlvr_update_effective_rank_ratio": {"value": 0.35, "ci": [0.3, 0.4]},
                    "sft_update_effective_rank_ratio": {"value": 0.6, "ci": [0.5, 0.7]},
                    "rlvr_top_subspace_angle": {"value": 0.6, "ci": [0.5, 0.7]},
                    "sft_top_subspace_angle": {"value": 25.0, "ci": [20.0, 30.0]}}}


def test_weights_captions_state_the_numbers_they_were_given():
    import pandas as pd

    from rlvr_utils.core import captions, fmt
    from rlvr_utils.instruments.weights import figures

    result = _caption_result()
    summary = result["summary"]
    matrices, groups = figures.matrix_frame(result), pd.DataFrame(result["groups"])
    energy = figures.caption_energy(result, groups)
    assert f"RLVR − SFT {captions.estimate(summary['rlvr_update_mlp_share'])}" in energy
    assert f"SFT − base {captions.estimate(summary['sft_update_mlp_share'])}" in energy
    assert "; SFT − base: no difference from 0.5 detected" in energy  # [0.45, 0.7] holds 0.5; [0.6, 0.9] does not
    assert f"{fmt.number(1.5e-4 / 2e-8)} times smaller" in energy

    spectra = figures.caption_spectra(result, figures.spectra_frame(result))
    assert f"RLVR − SFT {fmt.number(1.5)} of 4; SFT − base {fmt.number(3.5)} of 4" in spectra  # σ/σ₁ ≥ 0.1: 2, 1; 3, 4

    rank = figures.caption_rank(result, matrices)
    assert f"RLVR − SFT effective {captions.estimate(summary['rlvr_update_effective_rank_ratio'])}" in rank
    assert f"stable {fmt.number(0.1)}" in rank and f"stable {fmt.number(0.25)}" in rank

    subspace = figures.caption_subspace(result, matrices)
    assert f"angle {captions.estimate(summary['sft_top_subspace_angle'], unit='°')}" in subspace
    assert f"changed by {fmt.number(0.0015)}" in subspace and "top-2 singular values" in subspace

    dynamics = figures.caption_dynamics(result, pd.DataFrame(result["dynamics"]))
    assert f"At step 100: all parameters {fmt.number(0.0025)}, attention {fmt.number(0.0012)}" in dynamics
    assert f"added {fmt.number(100 * 0.0005 / 0.0025)}%" in dynamics


def test_weights_captions_say_not_measured_on_an_empty_run():
    import pandas as pd

    from rlvr_utils.instruments.weights import figures

    empty = {"pairs": [], "matrices": [], "groups": [], "dynamics": [], "summary": {}}
    matrices = figures.matrix_frame(empty)
    assert "Not measured" in figures.caption_energy(empty, pd.DataFrame())
    assert "Not measured" in figures.caption_spectra(empty, figures.spectra_frame(empty))
    assert "Not measured" in figures.caption_rank(empty, matrices)
    assert "Not measured" in figures.caption_subspace(empty, matrices)
    assert "No intermediate checkpoints" in figures.caption_dynamics(empty, pd.DataFrame())
