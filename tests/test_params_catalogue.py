"""The bad-input catalogue: every bad value is refused by `check-params` (and `run`) before any work, with
exit code 2, naming the file and the key, within 10 s, writing nothing."""
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlvr_utils.__main__ import main

ROOT = Path(__file__).resolve().parents[1]

# (case id, YAML body, key the message must name). Every file also sets runs_dir to a temporary folder
# that must not exist afterwards.
CASES = [
    ("layers_out_of_range", "extract:\n  layers: [0, 9]\n", "extract.layers"),
    ("layers_negative", "extract:\n  layers: [-1]\n", "extract.layers"),
    ("layers_empty", "extract:\n  layers: []\n", "extract.layers"),
    ("layers_repeated", "extract:\n  layers: [1, 1]\n", "extract.layers"),
    ("layers_beyond_smaller_organism", "organism:\n  num_layers: 2\nextract:\n  layers: [2]\n", "extract.layers"),
    ("positions_empty", "extract:\n  positions: []\n", "extract.positions"),
    ("positions_bad_fraction", "extract:\n  positions: ['frac:2']\n", "extract.positions"),
    ("positions_repeated", "extract:\n  positions: [completion, completion]\n", "extract.positions"),
    ("extract_sites_empty", "extract:\n  sites: []\n", "extract.sites"),
    ("cka_site_not_extracted", "extract:\n  sites: [hook_attn_out]\ncka:\n  sites: [hook_attn_out, hook_mlp_out]\n",
     "cka.sites"),
    ("cka_position_not_extracted", "extract:\n  positions: [last_prompt]\ncka:\n  position: completion\n",
     "cka.position"),
    ("cka_sites_empty", "cka:\n  sites: []\n", "cka.sites"),
    ("probe_site_not_extracted", "extract:\n  sites: [hook_mlp_out, hook_attn_out, hook_resid_post]\n"
     "probes:\n  sites: [hook_resid_pre]\n", "probes.sites"),
    ("probe_target_position_not_extracted", "extract:\n  positions: [last_prompt]\ncka:\n  position: last_prompt\n"
     "probes:\n  targets: [intermediate]\n", "probes.targets"),
    ("probe_sites_empty", "probes:\n  sites: []\n", "probes.sites"),
    ("sft_data_file_missing", "data:\n  sft_source: numina_cot\n  sft_path: ./no/such/numina.jsonl\n", "data.sft_path"),
    ("sft_data_file_missing_no_dot", "data:\n  sft_source: gsm8k\n  sft_path: data/train.jsonl\n", "data.sft_path"),
    ("grpo_data_file_missing", "data:\n  grpo_source: gsm8k\n  grpo_path: ./missing.parquet\n", "data.grpo_path"),
    ("eval_data_file_missing", "data:\n  grpo_source: gsm8k\n  grpo_path: openai/gsm8k\n  eval_path: ./test.jsonl\n",
     "data.eval_path"),
    ("real_source_without_path", "data:\n  sft_source: numina_cot\n", "data.sft_path"),
    ("template_unknown_field", "data:\n  prompt_template: 'Q: {question} A: {answer}'\n", "data.prompt_template"),
    ("template_malformed", "data:\n  prompt_template: 'Q: {question} {'\n", "data.prompt_template"),
    ("template_without_question", "data:\n  prompt_template: 'Q:'\n", "data.prompt_template"),
    ("reward_weight_negative", "grpo:\n  reward_weights:\n    accuracy: -1.0\n", "grpo.reward_weights.accuracy"),
    ("reward_format_negative", "grpo:\n  reward_weights:\n    format: -0.01\n", "grpo.reward_weights.format"),
    ("reward_weights_all_zero", "grpo:\n  reward_weights:\n    accuracy: 0\n    format: 0\n", "grpo.reward_weights"),
    ("seed_negative", "seed: -1\n", "seed"),
    ("seed_too_large", "seed: 99999999999\n", "seed"),
    ("pass_k_zero", "evaluation:\n  pass_k: [0, 1]\n", "evaluation.pass_k"),
    ("pass_k_empty", "evaluation:\n  pass_k: []\n", "evaluation.pass_k"),
    ("lr_infinite", "grpo:\n  learning_rate: .inf\n", "grpo.learning_rate"),
    ("lr_nan", "sft:\n  learning_rate: .nan\n", "sft.learning_rate"),
    ("temperature_infinite", "evaluation:\n  temperature: .inf\n", "evaluation.temperature"),
    ("weights_device_bogus", "weights:\n  device: gpu-please\n", "weights.device"),
    ("checkpoint_local_looking_without_dot", "model:\n  sft: runs/sft-checkpoint\n", "model.sft"),
    ("checkpoint_folder_missing", "model:\n  base: ./no/such/folder\n", "model.base"),
    ("checkpoint_not_an_id", "model:\n  rlvr: 'not a model id'\n", "model.rlvr"),
    ("name_dotdot", "name: '..'\n", "name"),
    ("name_dot", "name: '.'\n", "name"),
    ("name_with_separator", "name: a/b\n", "name"),
    ("name_hidden", "name: .hidden\n", "name"),
    ("unknown_top_key", "sedd: 1\n", "sedd"),
    ("unknown_nested_key", "grpo:\n  lr: 1e-4\n", "grpo.lr"),
    ("wrong_type", "sft:\n  steps: many\n", "sft.steps"),
    ("batch_not_whole_groups", "grpo:\n  per_device_train_batch_size: 60\n  num_generations: 8\n", "grpo"),
    ("confidence_out_of_range", "evaluation:\n  confidence: 1.5\n", "evaluation.confidence"),
    ("extract_more_than_evaluated", "extract:\n  n_problems: 600\n", "extract.n_problems"),
    ("deepspeed_file_missing", "sft:\n  deepspeed: ./nope.json\n", "sft.deepspeed"),
    ("probe_cs_negative", "probes:\n  Cs: [-1.0]\n", "probes.Cs"),
    ("dtype_unknown", "model:\n  dtype: int8\n", "model.dtype"),
    ("heads_do_not_divide", "organism:\n  hidden_size: 130\n", "organism"),
    ("crosscoder_site_not_extracted", "extract:\n  sites: [hook_attn_out, hook_mlp_out, hook_resid_post]\n"
     "crosscoder:\n  site: hook_resid_pre\n", "crosscoder.site"),
    ("crosscoder_layer_not_extracted", "extract:\n  layers: [0, 1]\ncrosscoder:\n  layer: 3\n", "crosscoder.layer"),
    # values that passed before and failed late, hung or misbehaved (the reliability campaign's catalogue)
    ("head_dim_odd", "organism:\n  hidden_size: 60\n  num_heads: 4\n", "organism.hidden_size"),
    ("max_value_below_max_start", "data:\n  max_start: 20\n  max_value: 10\n", "data.max_value"),
    ("template_attribute", "data:\n  prompt_template: '{question.__class__}'\n", "data.prompt_template"),
    ("template_index", "data:\n  prompt_template: '{question} {question[0]}'\n", "data.prompt_template"),
    ("template_huge_width", "data:\n  prompt_template: '{question:>99999999999}'\n", "data.prompt_template"),
    ("template_conversion", "data:\n  prompt_template: '{question!r}'\n", "data.prompt_template"),
    ("name_too_long", "name: " + "a" * 300 + "\n", "name"),
    ("crosscoder_unknown_treatment", "crosscoder:\n  treatments: [rlvr, no_such]\n", "crosscoder.treatments"),
    ("crosscoder_unknown_causal", "crosscoder:\n  causal_treatments: [./runs/x]\n", "crosscoder.causal_treatments"),
    ("weights_on_missing_cuda", "weights:\n  device: cuda\n", "weights.device"),
    ("sft_not_a_checkpoint", "model:\n  sft: /etc\n  rlvr: /etc\n", "model.sft"),
    ("one_null", "variants:\n  nulls: 1\n", "variants.nulls"),
    ("probe_fractions_past_one", "probes:\n  test_fraction: 0.6\n  validation_fraction: 0.5\n", "probes.test_fraction"),
    ("replicate_seed_negative", "verdict:\n  replicate_seeds: [-1]\n", "verdict.replicate_seeds"),
    ("replicate_seed_twice", "verdict:\n  replicate_seeds: [1, 1]\n", "verdict.replicate_seeds"),
    ("learning_rate_absurd", "grpo:\n  learning_rate: 1.0e+300\n", "grpo.learning_rate"),
    ("hidden_size_huge", "organism:\n  hidden_size: 1073741824\n  intermediate_size: 512\n", "organism.hidden_size"),
    ("n_bootstrap_huge", "evaluation:\n  n_bootstrap: 1000000000000\n", "evaluation.n_bootstrap"),
    ("deepspeed_not_json", "grpo:\n  deepspeed: params/ci.yaml\n", "grpo.deepspeed"),
    ("patching_sites_empty", "patching:\n  sites: []\n", "patching.sites"),
    ("pass_k_twice", "evaluation:\n  pass_k: [1, 8, 8]\n", "evaluation.pass_k"),

]
if importlib.util.find_spec("vllm") is None:
    CASES.append(("vllm_not_installed", "grpo:\n  use_vllm: true\n", "grpo.use_vllm"))
    CASES.append(("vllm_backend_not_installed", "evaluation:\n  backend: vllm\n", "evaluation.backend"))


def _project_runs() -> list[str]:
    runs = ROOT / "runs"
    return sorted(p.name for p in runs.iterdir()) if runs.exists() else []


def _bad_file(tmp_path: Path, body: str) -> tuple[Path, Path]:
    runs = tmp_path / "runs"
    path = tmp_path / "bad.yaml"
    path.write_text(f"runs_dir: {runs}\n{body}")
    return path, runs


def test_catalogue_is_large_enough():
    assert len(CASES) >= 40


@pytest.mark.parametrize("body, key", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_check_params_refuses(tmp_path, capsys, body, key):
    path, runs = _bad_file(tmp_path, body)
    before = _project_runs()
    start = time.perf_counter()
    code = main(["check-params", str(path)])
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(path) in err, err
    assert any(f"  - {key}{end}" in err for end in " :=["), err
    assert "Traceback" not in err
    assert seconds < 10
    assert not runs.exists() and _project_runs() == before


def test_run_refuses_before_any_work(tmp_path, capsys):
    """`run` validates first: a bad value writes no run folder, no record, no executed notebook."""
    path, runs = _bad_file(tmp_path, "extract:\n  layers: [7]\n")
    code = main(["run", "--params", str(path), "--book-root", str(tmp_path / "book")])
    assert code == 2 and "extract.layers" in capsys.readouterr().err
    assert not runs.exists() and not (tmp_path / "book").exists()


def test_cli_refuses_in_a_fresh_process(tmp_path):
    path, runs = _bad_file(tmp_path, "name: '..'\nseed: -1\n")
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "rlvr_utils", "check-params", str(path)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and time.perf_counter() - start < 10
    assert str(path) in result.stderr and "  - name" in result.stderr and "  - seed" in result.stderr
    assert not runs.exists() and list(tmp_path.iterdir()) == [path]


def test_a_misspelt_key_gets_a_suggestion(tmp_path, capsys):
    path, _ = _bad_file(tmp_path, "grpo:\n  learnig_rate: 1.0e-5\nverdit:\n  min_margin: 2\n")
    assert main(["check-params", str(path)]) == 2
    err = capsys.readouterr().err
    assert "grpo.learnig_rate: unknown key. Did you mean 'learning_rate'?" in err
    assert "verdit: unknown key. Did you mean 'verdict'?" in err


def test_missing_params_file_is_named(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert main(["check-params", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_layers_checked_against_a_local_checkpoint_config(tmp_path, capsys):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2", "num_hidden_layers": 2}))
    path, runs = _bad_file(tmp_path, f"model:\n  base: {folder}\nextract:\n  layers: [2]\n")
    assert main(["check-params", str(path)]) == 2
    err = capsys.readouterr().err
    assert "extract.layers" in err and str(folder / "config.json") in err and "0..1" in err
    path.write_text(f"runs_dir: {runs}\nmodel:\n  base: {folder}\nextract:\n  layers: [1]\n")
    assert main(["check-params", str(path)]) == 0
    assert not runs.exists()


def test_a_hub_model_not_downloaded_is_refused_here_and_unchecked_for_another_machine(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    path, runs = _bad_file(tmp_path, "model:\n  base: someorg/somemodel\nextract:\n  layers: [40]\n")
    assert main(["check-params", str(path)]) == 2  # a run never downloads: named with the command that does
    err = capsys.readouterr().err
    assert "model.base (got 'someorg/somemodel'): not in the local Hugging Face cache" in err
    assert "run `hf download someorg/somemodel` first" in err
    assert main(["check-params", "--other-machine", str(path)]) == 0
    out = capsys.readouterr().out
    assert "could not be checked" in out and "someorg/somemodel" in out
    assert not runs.exists()


def test_shipped_params_check_clean():
    for path in sorted((ROOT / "params").glob("*.yaml")):
        if "./runs/rehearsal-base" in path.read_text() and not (ROOT / "runs" / "rehearsal-base").is_dir():
            continue  # its base model is built first by a documented command; test_config checks the rest
        assert main(["check-params", "--other-machine", str(path)]) == 0
