"""Loading params files: one YAML file per experiment, validated once, with errors that name the file, the key,
the value and what is allowed; checks across sections (what was extracted, what the model has, what this
machine can run). The schema is rlvr_utils.core.params.
"""
from __future__ import annotations

import difflib
import importlib.util
import json
import re
import string
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from rlvr_utils.core.params import ORGANISM, Params, ParamsError  # noqa: F401 (the API of params files)
from rlvr_utils.core import hub
from rlvr_utils.core.lock import run_folder_problem
from rlvr_utils.core.paths import PROJECT_ROOT, looks_local, resolve  # noqa: F401


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_LOCAL_DATA = (".jsonl", ".json", ".parquet")


def _config_of(ref: str, trust: bool) -> tuple[dict | None, str]:
    """(config.json of a checkpoint, where it came from); None and why when it cannot be read offline."""
    if looks_local(ref):
        path = resolve(ref) / "config.json"
        if not path.is_file():
            return None, f"{resolve(ref)} has no config.json"
        try:
            return json.loads(path.read_text()), str(path)
        except (OSError, json.JSONDecodeError) as err:
            return None, f"{path} is unreadable ({err})"
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(ref, "config.json")
    if isinstance(cached, str):
        return json.loads(Path(cached).read_text()), cached
    return None, f"hub id {ref!r} is not in the local Hugging Face cache (no network is used)"


def _num_layers(config: dict) -> int | None:
    config = config.get("text_config", config)
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(config.get(key), int):
            return config[key]
    return None


def _model_layers(p: "Params") -> tuple[int | None, str]:
    """Layers of the model the run analyses, and what says so (or why it could not be checked)."""
    if p.model.base == ORGANISM and not p.model.analyze_only:
        return p.organism.num_layers, "organism.num_layers"
    ref = p.model.rlvr or p.model.sft or p.model.base
    config, where = _config_of(ref, p.model.trust_remote_code)
    if config is None:
        return None, where
    n = _num_layers(config)
    return n, (where if n is not None else f"{where} names no layer count")


def consistency_problems(p: "Params", machine: bool = True) -> list[str]:
    """Cross-section checks against what extraction keeps and what the model has, and with `machine`
    against this machine (installed packages). One line per problem: key, value, what is expected."""
    problems = []
    run_folder = run_folder_problem(p.run_dir)
    if run_folder:
        problems.append(f"runs_dir / name (got {p.runs_dir!r} / {p.name!r}): {run_folder}")
    if p.extract.completions_from != "gold" and p.extract.n_problems > p.evaluation.n_problems:
        problems.append(f"extract.n_problems (got {p.extract.n_problems}): must be <= evaluation.n_problems="
                        f"{p.evaluation.n_problems}; completions from {p.extract.completions_from!r} are the greedy "
                        "evaluation's")
    for key, value in (("sft.deepspeed", p.sft.deepspeed), ("grpo.deepspeed", p.grpo.deepspeed)):
        if value is not None and not resolve(value).is_file():
            problems.append(f"{key} (got {value!r}): no such file ({resolve(value)})")
    for key in ("model.base", "model.sft", "model.rlvr"):
        value = getattr(p.model, key.split(".")[1])
        if value and value != ORGANISM and looks_local(value) and not resolve(value).is_dir():
            problems.append(f"{key} (got {value!r}): no such checkpoint folder ({resolve(value)}); "
                            + _how_to_make(resolve(value)))
    n_layers, _ = _model_layers(p)
    planted_at = p.variants.planted_layer if p.variants.planted_layer is not None else n_layers and n_layers // 2
    if p.variants.planted and None not in (p.crosscoder.layer, planted_at) and planted_at != p.crosscoder.layer:
        problems.append(f"variants.planted_layer (got {p.variants.planted_layer}): the planted features go to block "
                        f"{planted_at}, but crosscoder.layer={p.crosscoder.layer} looks for them elsewhere; set "
                        "variants.planted_layer to the crosscoder's block")
    if machine:  # runs never download: a hub id must be in this machine's cache before any work
        named = [(key, getattr(p.model, key.split(".")[1])) for key in ("model.base", "model.sft", "model.rlvr")]
        for key, value in named + [(f"variants.user.{n}", v) for n, v in p.variants.user.items()]:
            missing = value and value != ORGANISM and not looks_local(value) and _HUB_ID.fullmatch(value) \
                and hub.problem(key, value)
            problems += [missing] if missing else []
    if machine and p.model.analyze_only:
        problems += _reference_problems(p)
    for name, value in p.variants.user.items():
        if looks_local(value) and not (resolve(value) / "config.json").is_file():
            problems.append(f"variants.user.{name} (got {value!r}): no checkpoint folder with a config.json at "
                            f"{resolve(value)}")
    d = p.data
    for key, src, path in (("data.sft_path", d.sft_source, d.sft_path), ("data.grpo_path", d.grpo_source, d.grpo_path)):
        if src != "synthetic" and path is None:
            problems.append(f"{key} (got None): must name a hub id or local file when its source is {src!r}")
    if machine and getattr(p.evaluation, "backend", None) == "vllm" and importlib.util.find_spec("vllm") is None:
        problems.append("evaluation.backend (got 'vllm'): vLLM is not installed on this machine; install the GPU "
                        "extra (pip install -e '.[gpu]') or use 'auto' or 'hf'")
    if machine and p.grpo.use_vllm and importlib.util.find_spec("vllm") is None:
        problems.append("grpo.use_vllm (got True): vLLM is not installed on this machine; install the GPU extra "
                        "(pip install -e '.[gpu]') or set use_vllm: false")
    e = p.extract
    n_layers, where = _model_layers(p)
    if e.layers is not None and n_layers is not None:
        bad = [layer for layer in e.layers if layer >= n_layers]
        if bad:
            problems.append(f"extract.layers (got {e.layers}): layers {bad} do not exist; the model has {n_layers} "
                            f"layers, 0..{n_layers - 1} ({where})")
    for key, sites in (("cka.sites", p.cka.sites), ("probes.sites", p.probes.sites)):
        missing = [s for s in sites if s not in e.sites]
        if missing:
            problems.append(f"{key} (got {sites}): {missing} never extracted; extract.sites is {e.sites}")
    x = getattr(p, "crosscoder", None)
    if x is not None:
        if x.site not in e.sites:
            problems.append(f"crosscoder.site (got {x.site!r}): never extracted; extract.sites is {e.sites}")
        if x.position not in e.positions:
            problems.append(f"crosscoder.position (got {x.position!r}): never extracted; extract.positions is "
                            f"{e.positions}")
        kept = e.layers if e.layers is not None else range(n_layers) if n_layers is not None else None
        # None is the middle block (instruments.crosscoder.middle_layer), which extract.layers may leave out
        layer = x.layer if x.layer is not None else n_layers // 2 if n_layers is not None else None
        if layer is not None and kept is not None and layer not in kept:
            which = f", the middle block {layer}" if x.layer is None else ""
            problems.append(f"crosscoder.layer (got {x.layer}{which}): not among the extracted layers {list(kept)}")
    if p.cka.position not in e.positions:
        problems.append(f"cka.position (got {p.cka.position!r}): never extracted; extract.positions is {e.positions}")
    # where each probe target reads (probes.ProbeStore): 'completion' also holds the last prompt token
    needs = {"intermediate": ("completion",), "answer_last_digit": ("completion",),
             "correct": ("last_prompt", "completion")}
    for target in p.probes.targets:
        if not set(needs[target]) & set(e.positions):
            problems.append(f"probes.targets (got {p.probes.targets}): target {target!r} reads "
                            f"{' or '.join(map(repr, needs[target]))} positions, which extract.positions "
                            f"({e.positions}) does not keep")
    fields = _template_fields(p.data.prompt_template)
    if isinstance(fields, str):
        problems.append(f"data.prompt_template (got {p.data.prompt_template!r}): {fields}")
    elif fields - {"question"}:
        problems.append(f"data.prompt_template (got {p.data.prompt_template!r}): unknown field(s) "
                        f"{sorted(fields - {'question'})}; only {{question}} is filled in (write {{{{ }}}} for a brace)")
    d = p.data
    for key, src, path in (("data.sft_path", d.sft_source, d.sft_path), ("data.grpo_path", d.grpo_source, d.grpo_path),
                           ("data.eval_path", "gsm8k" if d.grpo_source == "gsm8k" else "synthetic", d.eval_path)):
        if path is None or src == "synthetic":
            continue
        local = path.startswith((".", "/", "~")) or path.endswith(_LOCAL_DATA) or not _HUB_ID.fullmatch(path)
        if local and not resolve(path).is_file():
            problems.append(f"{key} (got {path!r}): no such file ({resolve(path)}); expected a local "
                            f".jsonl/.json/.parquet file or a hub data set id 'org/name'")
    for key in ("model.base", "model.sft", "model.rlvr"):
        value = getattr(p.model, key.split(".")[1])
        if value and value != ORGANISM and not looks_local(value) and not _HUB_ID.fullmatch(value):
            problems.append(f"{key} (got {value!r}): neither a local folder nor a hub id 'org/name'")
    return problems + _limits(p, machine)


# Largest values that still describe an experiment (a typo of an exponent must fail here, not hours later or
# by exhausting memory): learning rates, model sizes, resampling counts.
_UPPER = {"sft.learning_rate": 1.0, "grpo.learning_rate": 1.0, "organism.pretrain_lr": 1.0,
          "organism.hidden_size": 16384, "organism.intermediate_size": 65536, "organism.num_layers": 256,
          "organism.vocab_size": 1_000_000, "organism.corpus_documents": 10_000_000,
          **{f"{s}.n_bootstrap": 100_000 for s in ("evaluation", "cka", "probes", "patching", "weights", "crosscoder")},
          "cka.n_permutations": 10_000, "evaluation.batch_size": 1_000_000, "data.n_eval": 10_000_000}


def _limits(p: "Params", machine: bool) -> list[str]:
    """Bounds and combinations that pydantic's per-field rules cannot see, each refused before any work."""
    problems = []
    for key, top in _UPPER.items():
        section, field = key.split(".")
        value = getattr(getattr(p, section), field)
        if value > top:
            problems.append(f"{key} (got {value!r}): at most {top:g}")
    o, d = p.organism, p.data
    if (o.hidden_size // o.num_heads) % 2:
        problems.append(f"organism.hidden_size / organism.num_heads (got {o.hidden_size} / {o.num_heads} = "
                        f"{o.hidden_size // o.num_heads}): the head dimension must be even (rotary embeddings)")
    if d.max_value < d.max_start:
        problems.append(f"data.max_value (got {d.max_value}): must be >= data.max_start={d.max_start} (running values "
                        "start at most at max_start and stay in 0..max_value)")
    if d.max_value < d.max_operand:
        problems.append(f"data.max_value (got {d.max_value}): must be >= data.max_operand={d.max_operand}")
    if len(p.name) > 100:
        problems.append(f"name (got {len(p.name)} characters): at most 100 (it names folders and files)")
    if p.variants.nulls == 1:
        problems.append("variants.nulls (got 1): 0 (no nulls) or at least 2; a null is read against the others")
    if p.probes.test_fraction + p.probes.validation_fraction >= 1:
        problems.append(f"probes.test_fraction + probes.validation_fraction (got {p.probes.test_fraction} + "
                        f"{p.probes.validation_fraction}): must leave problems to train on (sum < 1)")
    seeds = p.verdict.replicate_seeds
    if any(s < 0 for s in seeds) or len(set(seeds)) < len(seeds):
        problems.append(f"verdict.replicate_seeds (got {seeds}): distinct seeds >= 0")
    if len(set(p.evaluation.pass_k)) < len(p.evaluation.pass_k):
        problems.append(f"evaluation.pass_k (got {p.evaluation.pass_k}): each k once")
    if not p.patching.sites:
        problems.append("patching.sites (got []): at least one site to patch")
    machines = p.launch.num_machines
    for key, section, trained in (("sft", p.sft, p.model.sft is None), ("grpo", p.grpo, not p.model.analyze_only)):
        if trained and section.num_processes % machines:  # accelerate starts num_processes / num_machines per machine
            problems.append(f"{key}.num_processes (got {section.num_processes}): must be a multiple of "
                            f"launch.num_machines={machines} (the processes of all machines together)")
    for key, path in (("sft.deepspeed", p.sft.deepspeed), ("grpo.deepspeed", p.grpo.deepspeed)):
        if path and resolve(path).is_file():
            try:
                json.loads(resolve(path).read_text())
            except (ValueError, UnicodeDecodeError) as err:
                problems.append(f"{key} (got {path!r}): not a JSON DeepSpeed config ({err})")
    for key in ("model.sft", "model.rlvr"):
        value = getattr(p.model, key.split(".")[1])
        if value and looks_local(value) and resolve(value).is_dir() and not (resolve(value) / "config.json").is_file():
            problems.append(f"{key} (got {value!r}): {resolve(value)} has no config.json; not a checkpoint folder")
    for key, value in (("device", p.device), ("weights.device", p.weights.device)):
        if machine and value and value.startswith("cuda"):  # torch is imported only for a CUDA device
            from rlvr_utils.core import device

            wrong = device.problem(value)
            if wrong:
                problems.append(wrong.replace("device (got", f"{key} (got", 1))
    return problems


def _reference_problems(p: "Params") -> list[str]:
    """Every treatment is read against model.sft, so with given checkpoints it must be the one RL started from: a
    model.rlvr whose model card names its base_model (hub cards do) must name model.sft."""
    rlvr, sft = p.model.rlvr, p.model.sft
    folder = resolve(rlvr) if looks_local(rlvr) else hub.snapshot(rlvr)
    declared = hub.declared_bases(folder) if folder is not None and folder.is_dir() else []
    if not declared or looks_local(sft) or sft in declared:
        return []
    return [f"model.sft (got {sft!r}): the reference must be the checkpoint RL started from, and model.rlvr's model "
            f"card ({folder / 'README.md'}) names base_model {declared}; set model.sft to it"]


def _how_to_make(folder: Path) -> str:
    """What makes a missing checkpoint folder: the rehearsal's base model and another run's models are made by
    commands of this project; anything else is the user's to provide."""
    runs = PROJECT_ROOT / "runs"
    if folder == runs / "rehearsal-base":
        return "build it first: python -m rlvr_utils.training.rehearsal --out runs/rehearsal-base (about 1 minute)"
    if folder.parent.name == "models" and folder.parent.parent.parent == runs:
        run = folder.parent.parent.name
        return f"it is made by the run {run!r}: run that book first ({_make_book(run)})"
    return "a hub id is 'org/name', a local folder is best written './path'"


def _make_book(run: str) -> str:
    """The command that makes run `run`: the shipped params file whose `name` it is, if any."""
    if run == Params.model_fields["name"].default:
        return "make book"
    for f in sorted((PROJECT_ROOT / "params").glob("*.yaml")):
        try:
            named = (yaml.safe_load(f.read_text()) or {}).get("name")
        except (OSError, yaml.YAMLError, AttributeError):
            continue
        if named == run:
            return f"make book PARAMS={f.relative_to(PROJECT_ROOT)}"
    return f"make book PARAMS=<the params file with name: {run}>"


def unchecked(p: "Params") -> list[str]:
    """What could not be checked offline (e.g. a hub model's layer count), for check-params to say."""
    n_layers, where = _model_layers(p)
    return [] if n_layers is not None else [f"extract.layers against the model: could not be checked ({where})"]


def _template_fields(template: str) -> set[str] | str:
    """The fields a prompt template fills in, or why it is not a template. Only a bare `{question}` is a field:
    an attribute, an index, a conversion or a format spec (`{question:>99999999999}` would allocate 100 GB)
    is refused."""
    try:
        parsed = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        return f"not a valid format string ({err}); write {{{{ and }}}} for literal braces"
    odd = [name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") for name, spec, conv in parsed
           if spec or conv or not name.isidentifier()]
    if odd:
        return (f"field(s) {odd} format more than the question itself; write {{question}} alone (and {{{{ }}}} for a "
                "literal brace)")
    return {name for name, _, _ in parsed}


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"Invalid params in {source}:"]
    for e in err.errors():
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]).lstrip(".") or "<top level>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            parent = _section_class(e["loc"][:-1])
            allowed = ", ".join(k for k in parent.model_fields if k != "source")
            close = difflib.get_close_matches(str(e["loc"][-1]), [k for k in parent.model_fields if k != "source"], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            lines.append(f"  - {key}: unknown key.{hint} Allowed keys here: {allowed}.")
        else:
            value = e.get("input")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            lines.append(f"  - {key}{shown}: {msg}.")
    return "\n".join(lines)


def _section_class(loc) -> type[BaseModel]:
    cls: type[BaseModel] = Params
    for part in loc:
        field = cls.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            break
        cls = field.annotation
    return cls


def from_dict(raw: dict[str, Any], source: str = "<dict>", machine: bool = True) -> Params:
    """Validated params; `machine=False` skips what only this machine decides (installed vLLM), for a
    file meant for another machine."""
    if not isinstance(raw, dict):
        raise ParamsError(f"Invalid params in {source}: the file must be a YAML mapping of sections, got {type(raw).__name__}.")
    try:
        params = Params(**raw)
    except ValidationError as err:
        raise ParamsError(_format_error(err, source)) from None
    problems = consistency_problems(params, machine)
    if problems:
        raise ParamsError("\n".join([f"Invalid params in {source}:"] + [f"  - {line}." for line in problems]))
    params.source = source
    return params


MAX_BYTES = 256 << 10  # the largest shipped params file is 4 KB: anything this size is not a params file
MAX_DEPTH = 8  # sections hold values, lists or one more mapping (reward_weights): a few levels at most


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML would keep the last silently, so a
    second `grpo:` section would replace the first whole)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}); "
                    "YAML would silently keep the second", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> Any:
    """A params file's content, refused with a short message (never a crash, never a hang) when it is not a
    small UTF-8 YAML mapping: binary or UTF-16 files, anchors and aliases (a billion-laughs bomb expands
    exponentially), nesting deeper than any section needs, duplicate keys."""
    if path.stat().st_size > MAX_BYTES:
        raise ParamsError(f"Params file {path} is {path.stat().st_size:,} bytes: a params file is a few KB of YAML "
                          f"(at most {MAX_BYTES:,} bytes)")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ParamsError(f"Params file {path} is not UTF-8 text (byte {err.start}): a binary file or another "
                          "encoding (UTF-16?); save it as UTF-8 YAML") from None
    try:
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):  # events first: nothing is built yet
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise ParamsError(f"Params file {path}: YAML anchors and aliases (&, *) are not accepted in params "
                                  f"files (line {event.start_mark.line + 1}); write each value out")
            depth += isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent))
            depth -= isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent))
            if depth > MAX_DEPTH:
                raise ParamsError(f"Params file {path}: nested more than {MAX_DEPTH} levels deep (line "
                                  f"{event.start_mark.line + 1}); params are sections of values")
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise ParamsError(f"Params file {path} is not valid YAML: {err}") from None


def load(path: str | Path, machine: bool = True) -> Params:
    path = resolve(path)
    if path.is_dir():
        raise ParamsError(f"Params file {path} is a folder: give a YAML file in it, e.g. {path / 'default.yaml'}")
    if not path.is_file():
        near = sorted(path.parent.glob("*.y*ml")) if path.parent.is_dir() else []
        close = difflib.get_close_matches(path.name, [f.name for f in near], n=1)
        hint = (f" Did you mean {path.parent / close[0]}?" if close else
                " The shipped ones are in params/ (params/default.yaml is the default study).")
        raise ParamsError(f"Params file {path} does not exist.{hint}")
    return from_dict(read_yaml(path) or {}, source=str(path), machine=machine)


# --- notebooks --------------------------------------------------------------------------------------
