"""The two extension points, shown with trivial examples that are not shipped in the book:

- a new instrument is one subclass of `Instrument` (here: the size of each treatment's config.json against the
  reference's): the driver finds the treatments, caches, stamps and writes metrics/<name>.json;
- a new treatment family is one registration (here: 'copies', a named copy of SFT that must read "no evidence"):
  every instrument measures it, and the verdict's calibration expects its answer, with no other change.
Also: the driver's cache follows the params sections and code the instrument's module depends on."""
import json
import shutil

import pytest

from rlvr_utils.core import config
from rlvr_utils.core.estimate import Estimate
from rlvr_utils.instruments import base
from rlvr_utils.treatments import registry


class ConfigSize(base.Instrument):
    """Bytes of config.json, treatment minus reference: exact, no sampling."""
    name = "config_size"

    def prepare(self, cfg, treatments):
        return len(open(f"{cfg.model_ref(registry.REFERENCE)}/config.json").read())

    def measure(self, cfg, treatment, shared):
        return {"config_bytes_change": Estimate.exact(len(open(f"{cfg.model_ref(treatment)}/config.json").read()) - shared)}

    def report(self, cfg, shared, variants):
        return {"summary": {"reference_bytes": shared}}


@pytest.fixture
def run(tmp_path):
    cfg = config.from_dict({"name": "tiny", "runs_dir": str(tmp_path / "runs"), "variants": {"nulls": 2, "placebos": 0, "planted": False}})
    for name in ("sft", "rlvr", "null_0"):  # attn_only, mlp_only, identical, null_1: not built in this run
        folder = cfg.model_dir(name)
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"model_type": "qwen2", "name": name}))
    return cfg


def test_a_new_instrument_is_one_class_and_the_driver_does_the_rest(run, caplog):
    result = base.run(run, ConfigSize(), progress=False)
    assert list(result["variants"]) == ["rlvr", "null_0"]  # registry order, only what exists
    assert result["variants"]["null_0"]["config_bytes_change"] == {"value": 3.0, "ci": [3.0, 3.0], "interval": "exact", "n": None}
    assert result["missing"] == ["attn_only", "mlp_only", "identical", "null_1"] and result["not_measured"] == []
    assert json.loads(run.path("metrics", "config_size.json").read_text()) == result
    # up to date: not recomputed (a failing prepare would show it)
    calls = []
    instrument = ConfigSize()
    instrument.prepare = lambda cfg, t: calls.append(1) or 0
    base.run(run, instrument, progress=False)
    assert not calls
    # a changed input (a treatment's checkpoint) recomputes it
    (run.model_dir("rlvr") / "config.json").write_text(json.dumps({"model_type": "qwen2", "name": "rlvr, retrained"}))
    assert base.run(run, ConfigSize(), progress=False)["variants"]["rlvr"]["config_bytes_change"]["value"] == 12.0


def test_a_new_treatment_family_is_one_registration(run, monkeypatch):
    family = registry.Family("copies", lambda cfg: [registry.Treatment("copy_of_sft", "identical", registry.NO_EVIDENCE,
                                                                       "copies", "SFT, copied")],
                             build=lambda cfg, name: shutil.copytree(cfg.model_dir("sft"), cfg.model_dir(name)) and "copied",
                             order=35)
    registry.names(run)  # the shipped families are registered first
    monkeypatch.setitem(registry._FAMILIES, "copies", family)
    assert registry.names(run) == ["rlvr", "attn_only", "mlp_only", "identical", "copy_of_sft", "null_0", "null_1"]
    assert registry.expected(run)["copy_of_sft"] == registry.NO_EVIDENCE  # the verdict's calibration reads this
    registry.build(run, "copy_of_sft")
    result = base.run(run, ConfigSize(), progress=False)
    assert result["variants"]["copy_of_sft"]["config_bytes_change"]["value"] == 0.0


def test_an_instrument_reruns_when_a_params_section_its_code_reads_changes(run):
    """Every section declared by the instrument's module or the modules it imports enters its fingerprint."""
    from rlvr_utils.core import deps

    before = base.fingerprint(run, ConfigSize(), ["rlvr"])
    assert "variants" in deps.sections([ConfigSize.__module__, base.__name__])  # the registry's, through base
    changed = run.model_copy(update={"variants": run.variants.model_copy(update={"nulls": 3})})
    assert base.fingerprint(changed, ConfigSize(), ["rlvr"]) != before
    unrelated = run.model_copy(update={"crosscoder": run.crosscoder.model_copy(update={"k": 4})})
    assert base.fingerprint(unrelated, ConfigSize(), ["rlvr"]) == before
