"""Hub checkpoints without the network: hub ids resolved through the local Hugging Face cache (refused, with the
command that downloads them, when absent or partial), the reference checked against the RL model's card, sharded
bf16 checkpoints read and written tensor by tensor in their own shard layout, and per-model chat templates."""
import json

import pytest
import torch
from huggingface_hub import constants
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

from conftest import hub_cache
from rlvr_utils.core import config, hub
from rlvr_utils.instruments.weights import checkpoints
from rlvr_utils.models import chat
from rlvr_utils.treatments import nulls, registry, weights

TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def _tokenizer(template=None, bos=False):
    """A tiny word-level tokenizer; with `bos` it adds '<s>' itself (as Llama's and OLMo's do)."""
    words = ["<s>", "</s>", "<|user|>", "<|assistant|>", "\n", "Ann", "had", "3", "apples", "."]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="</s>"))
    tok.pre_tokenizer = pre_tokenizers.Split(r"<\|\w+\|>|\n| |\.", "isolated")
    tok.add_special_tokens(["<s>", "</s>", "<|user|>", "<|assistant|>"])
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    out = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>")
    out.chat_template = template
    return out


def _checkpoint(folder, seed, dtype=torch.bfloat16, shard="20KB"):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(Qwen2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=False)).to(dtype)
    model.save_pretrained(folder, max_shard_size=shard)
    _tokenizer(TEMPLATE).save_pretrained(folder)
    return folder


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """org/sft and org/rlvr as sharded bf16 checkpoints in a local Hugging Face cache (HF_HUB_CACHE)."""
    folders = {f"org/{s}": _checkpoint(tmp_path / "saved" / s, seed) for seed, s in enumerate(("sft", "rlvr"))}
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache(tmp_path / "hub", folders)))
    return tmp_path


def _params(tmp_path, **model):
    return config.from_dict({"runs_dir": str(tmp_path / "runs"), "variants": {"nulls": 2, "planted": False},
                             "model": {"base": "org/sft", "sft": "org/sft", "rlvr": "org/rlvr", **model}})


def test_a_cached_hub_id_is_its_snapshot_folder(cache):
    cfg = _params(cache)
    folder = cfg.model_dir("rlvr")
    assert cfg.model_ref("rlvr") == str(folder) and folder.parent.name == "snapshots"
    assert (folder / "model.safetensors.index.json").is_file()
    assert len(set(checkpoints.tensor_files(folder).values())) >= 2  # sharded
    assert checkpoints.local_folder("org/rlvr") == folder and registry.has_checkpoint(cfg.model_ref("rlvr"))


def test_a_missing_or_partial_hub_model_is_refused_with_the_command_that_downloads_it(cache):
    with pytest.raises(config.ParamsError) as err:
        _params(cache, rlvr="org/never-downloaded")
    assert "model.rlvr (got 'org/never-downloaded'): not in the local Hugging Face cache" in str(err.value)
    assert "run `hf download org/never-downloaded` first" in str(err.value)
    assert config.from_dict({"model": {"rlvr": "org/never-downloaded", "sft": "org/sft"}}, machine=False)
    with pytest.raises(FileNotFoundError, match="hf download org/never-downloaded"):
        checkpoints.local_folder("org/never-downloaded")
    shard = sorted(hub.snapshot("org/rlvr").glob("model-*.safetensors"))[-1]
    shard.unlink()  # an interrupted download
    with pytest.raises(config.ParamsError, match=f"model.rlvr .*lacks {shard.name}.*hf download org/rlvr"):
        _params(cache)


def test_the_reference_is_the_checkpoint_the_rl_model_card_names(cache):
    card = hub.snapshot("org/rlvr") / "README.md"
    card.write_text("---\nbase_model: org/dpo\n---\n# an RL model\n")
    with pytest.raises(config.ParamsError, match=r"model.sft \(got 'org/sft'\): the reference must be the checkpoint "
                                                 r"RL started from.*base_model \['org/dpo'\]"):
        _params(cache)
    card.write_text("---\nbase_model:\n- org/sft\n---\n")
    assert _params(cache).model.sft == "org/sft"


def _all(folder):
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def test_sharded_bf16_treatments_are_written_tensor_by_tensor_in_sfts_layout(cache, monkeypatch):
    cfg = _params(cache)
    sft_dir = cfg.model_dir("sft")
    held = []  # how many source tensors are in memory at once: one per source checkpoint at most
    read = checkpoints.read_tensor
    monkeypatch.setattr(weights, "read_tensor", lambda *a, **k: held.append(a[1]) or read(*a, **k))
    for name in ("identical", "null_0", "null_1"):
        registry.build(cfg, name)
        built = cfg.model_dir(name)
        assert sorted(p.name for p in built.glob("*.safetensors")) == sorted(p.name for p in sft_dir.glob("*.safetensors"))
        assert json.loads((built / "model.safetensors.index.json").read_text()) == \
            json.loads((sft_dir / "model.safetensors.index.json").read_text())
    sft, rlvr = _all(sft_dir), _all(cfg.model_dir("rlvr"))
    assert held.count(next(iter(sft))) == 5  # identical once, each null twice (SFT's and RLVR's): never a whole model
    identical, null = _all(cfg.model_dir("identical")), _all(cfg.model_dir("null_0"))
    assert all(torch.equal(identical[k], sft[k]) and identical[k].dtype == torch.bfloat16 for k in sft)
    for k in sft:  # RLVR's norm per tensor, in bf16 (rounded), in another direction
        assert null[k].dtype == torch.bfloat16
        want = (rlvr[k].double() - sft[k].double()).norm()
        assert torch.isclose((null[k].double() - sft[k].double()).norm(), want, rtol=0.05)
    assert not torch.equal(null["model.layers.0.mlp.up_proj.weight"], _all(cfg.model_dir("null_1"))[
        "model.layers.0.mlp.up_proj.weight"])


def test_a_single_file_null_is_the_whole_model_arithmetic_exactly(tmp_path):
    """On a single-file checkpoint (the organism's) the streamed null is bit for bit the in-memory one of
    nulls.random_update on load_file's tensors, which the package built before it streamed."""
    cfg = config.from_dict({"runs_dir": str(tmp_path / "runs"), "variants": {"nulls": 2, "planted": False}})
    for seed, stage in enumerate(("sft", "rlvr")):
        _checkpoint(cfg.model_dir(stage), seed, torch.float32, shard="50GB")
    registry.build(cfg, "null_1")
    sft, rlvr = (load_file(cfg.model_dir(s) / "model.safetensors") for s in ("sft", "rlvr"))
    expected = nulls.random_update(sft, rlvr, cfg.seed + nulls.SEED_OFFSET + 1)
    built = load_file(cfg.model_dir("null_1") / "model.safetensors")
    assert list(built) == list(expected) and all(torch.equal(built[k], expected[k]) for k in expected)


@pytest.mark.parametrize("bos", [False, True])
def test_chat_template_prompts_tokenise_as_apply_chat_template_does(bos):
    tokenizer = _tokenizer(TEMPLATE, bos=bos)
    on, off = (config.from_dict({"model": {"chat_template": value}}) for value in ("auto", "none"))
    assert config.Params().model.chat_template == "none"  # the organism is asked its plain prompts
    [prompt] = chat.format_prompts(on, tokenizer, ["Ann had 3 apples."])
    assert prompt.endswith("<|user|>\nAnn had 3 apples.\n<|assistant|>\n")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Ann had 3 apples."}], tokenize=True,
                                        add_generation_prompt=True, return_dict=True)["input_ids"]
    assert tokenizer(prompt)["input_ids"] == list(ids)  # what generate, GRPO and the token cache read: one BOS
    assert tokenizer(prompt)["input_ids"].count(tokenizer.bos_token_id) == 1
    assert chat.format_prompts(off, tokenizer, ["Ann had 3 apples."]) == ["Ann had 3 apples."]
    assert chat.format_prompts(on, _tokenizer(None, bos=bos), ["Ann had 3 apples."]) == ["Ann had 3 apples."]
