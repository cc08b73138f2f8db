"""Params validation: shipped files validate; broken ones fail fast, naming the file, key and value."""
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rlvr_utils.core import config, notebook

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "params").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_params_validate(path):
    raw = yaml.safe_load(path.read_text())
    base = raw.get("model", {}).get("base", "")
    if base.startswith("./runs/") and not (ROOT / base).exists():
        raw["model"]["base"] = "organism"  # built by a documented command (rehearsal): the rest must still hold
    cfg = config.from_dict(raw, source=str(path), machine=False)
    assert cfg.name == path.stem or cfg.name


def test_vllm_params_need_vllm_on_this_machine():
    import importlib.util

    path = ROOT / "params" / "qwen2.5-1.5b.yaml"
    if importlib.util.find_spec("vllm") is not None:
        config.load(path)
        return
    with pytest.raises(config.ParamsError, match="grpo.use_vllm .*vLLM is not installed"):
        config.load(path)


def _write(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, key, hint", [
    ("sft:\n  stepz: 3\n", "sft.stepz", "unknown key"),
    ("grpo:\n  learning_rate: fast\n", "grpo.learning_rate", "'fast'"),
    ("grpo:\n  per_device_train_batch_size: 60\n  num_generations: 8\n", "grpo", "multiple of num_generations=8"),
    ("model:\n  base: ./no/such/folder\n", "model.base", "no such checkpoint folder"),
    ("data:\n  grpo_source: gsm8k\n", "data.grpo_path", "must name a hub id or local file"),
    ("evaluation:\n  n_problems: -5\n", "evaluation.n_problems", "greater than 0"),
    ("grpo:\n  loss_type: ppo\n", "grpo.loss_type", "'dapo'"),
])
def test_bad_params_name_file_key_and_value(tmp_path, text, key, hint):
    path = _write(tmp_path, text)
    with pytest.raises(config.ParamsError) as err:
        config.load(path)
    message = str(err.value)
    assert str(path) in message and key in message and hint in message


def test_a_missing_checkpoint_of_this_project_says_which_command_makes_it(tmp_path):
    """The analyze-only example before `make book`, or a copy pointing at another run: the refusal names the
    command that makes the folder, not only that it is missing."""
    makes = {"./runs/rehearsal-base": "python -m rlvr_utils.training.rehearsal --out runs/rehearsal-base",
             "./runs/default/models/sft": "run that book first (make book)",
             "./runs/ci/models/sft": "run that book first (make book PARAMS=params/ci.yaml)",
             "./runs/never-made-xyz/models/sft": "(make book PARAMS=<the params file with name: never-made-xyz>)"}
    checked = 0
    for folder, command in makes.items():
        if config.resolve(folder).exists():
            continue  # made already on this checkout: nothing to refuse
        with pytest.raises(config.ParamsError) as err:
            config.load(_write(tmp_path, f"model:\n  sft: {folder}\n  rlvr: {folder}\n"))
        assert "no such checkpoint folder" in str(err.value) and command in str(err.value), str(err.value)
        checked += 1
    assert checked  # the never-made run is always missing


def test_unknown_key_lists_allowed_keys(tmp_path):
    with pytest.raises(config.ParamsError, match="Allowed keys here: .*learning_rate"):
        config.load(_write(tmp_path, "grpo:\n  lr: 1e-4\n"))


def test_not_a_mapping_and_missing_file(tmp_path):
    with pytest.raises(config.ParamsError, match="mapping"):
        config.load(_write(tmp_path, "- a\n- b\n"))
    with pytest.raises(config.ParamsError, match="does not exist"):
        config.load(tmp_path / "nope.yaml")
    with pytest.raises(config.ParamsError, match=r"params/defualt.yaml does not exist. Did you mean .*params/default.yaml\?"):
        config.load("params/defualt.yaml")


def test_cli_fails_fast_without_traceback(tmp_path):
    path = _write(tmp_path, "sft:\n  steps: many\n")
    start = time.time()
    result = subprocess.run([sys.executable, "-m", "rlvr_utils", "check-params", str(path)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert time.time() - start < 10
    assert "sft.steps" in result.stderr and "Traceback" not in result.stderr


def test_notebook_reads_its_params_file_with_the_same_rules(tmp_path):
    path = ROOT / "params" / "ci.yaml"
    assert notebook.params({"params_file": str(path)}, lock=False).fingerprint() == config.load(path).fingerprint()
    bad = _write(tmp_path, "sft:\n  stepz: 3\n")
    with pytest.raises(config.ParamsError, match=f"{bad}.*\n.*sft.stepz"):
        notebook.params({"params_file": str(bad)}, lock=False)


def test_notebook_refuses_injected_sections_and_code():
    """papermill -f FILE injects the file's sections: refused (the file is not known to name it)."""
    import yaml

    injected = yaml.safe_load((ROOT / "params" / "ci.yaml").read_text())
    with pytest.raises(config.ParamsError, match="take one parameter, params_file"):
        notebook.params({**injected, "params_file": "params/ci.yaml"}, lock=False)
    try:
        notebook.receive_injected('# Parameters\nparams_file = "params/ci.yaml"\nseed = 3\n')
        with pytest.raises(config.ParamsError, match=r"injected \['seed'\]"):
            notebook.params({}, lock=False)
        for code in ('# Parameters\nx = __import__("os").getpid()\n', '# Parameters\na = 1; import os\n',
                     '# Parameters\nparams_file = "a"; open("/tmp/x", "w")\n'):
            with pytest.raises(config.ParamsError, match="not a parameter value.*nothing of it ran"):
                notebook.receive_injected(code)
    finally:
        notebook._injected.clear()


def test_fingerprint_tracks_only_named_sections():
    a, b = config.Params(), config.Params(grpo={"steps": 7})
    assert a.fingerprint("sft") == b.fingerprint("sft")
    assert a.fingerprint("grpo") != b.fingerprint("grpo")


BAD_FILES = {  # content: what the message must say
    "binary": (bytes(range(256)) * 4, "not UTF-8 text"),
    "utf16": ("name: x\n".encode("utf-16"), "not UTF-8 text"),
    "deep_nesting": (("a: " + "[" * 5000 + "]" * 5000).encode(), "nested more than"),
    "alias_bomb": (b'a: &a ["lol", "lol"]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n'
                   + b"".join(f"x{i}: &x{i} [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n".encode() for i in range(12)),
                   "anchors and aliases"),
    "duplicate_section": (b"grpo:\n  steps: 5\ngrpo:\n  temperature: 0.3\n", "key 'grpo' is given twice"),
    "duplicate_key": (b"grpo:\n  steps: 5\n  steps: 6\n", "key 'steps' is given twice"),
    "huge": (b"# " + b"x" * (300 << 10) + b"\n", "a params file is a few KB"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_any_file_is_refused_with_a_short_message_never_a_crash_or_a_hang(tmp_path, case):
    content, says = BAD_FILES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_bytes(content)
    with pytest.raises(config.ParamsError) as err:
        config.load(path)
    assert says in str(err.value) and str(path) in str(err.value) and len(str(err.value)) < 400


def test_a_folder_given_as_the_params_file_says_so(tmp_path):
    with pytest.raises(config.ParamsError, match="is a folder: give a YAML file in it"):
        config.load(tmp_path)


def test_the_embedded_experiment_is_the_code_defaults():
    """An empty params file runs the default book: params/default.yaml names only the run."""
    empty, default = config.from_dict({}).model_dump(mode="json"), config.load("params/default.yaml").model_dump(mode="json")
    assert {k: v for k, v in empty.items() if k != "name"} == {k: v for k, v in default.items() if k != "name"}
    assert set(yaml.safe_load(Path("params/default.yaml").read_text())) == {"name"}


def test_the_ci_files_comments_about_the_default_are_true():
    """params/ci.yaml states how it differs from the default in comments such as `seeds: 3  # unlike the
    default's 2`: each number it gives as the default's is the default's value of that line's key, and a key
    it sets to the default's own value says why in its comment (sft_min_steps: 1 beside sft_max_steps: 1)."""
    defaults = config.from_dict({}).model_dump(mode="json")
    section, claims = None, 0
    for line in Path("params/ci.yaml").read_text().splitlines():
        m = re.match(r"^(\s*)(\w+):\s*([^#]*?)\s*(?:#(.*))?$", line)
        if not m:
            continue
        indent, key, comment = m.group(1), m.group(2), m.group(4) or ""
        section = key if not indent else section
        value = yaml.safe_load(m.group(3)) if m.group(3) else None
        if indent and value is not None and value == defaults[section][key]:
            assert comment, f"ci.yaml {section}.{key}: the default's value, set without a comment saying why"
        said = re.search(r"default's (\d+(?:\.\d+)?)\b", comment)
        if said and indent:
            assert float(said.group(1)) == defaults[section][key], f"ci.yaml {section}.{key}: {line.strip()}"
            claims += 1
    assert claims >= 2  # crosscoder.seeds and variants.placebos say what the default is
