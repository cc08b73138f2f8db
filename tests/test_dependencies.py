"""Dependencies are derived, never listed by hand: a chapter re-runs when a params section its library code
reads changes (and only then), and when that code changes."""
import json

from rlvr_utils.core import config, deps
from rlvr_utils.publish import runner


def _keys(cfg):
    nbs = runner.notebooks()
    return {nb.stem: runner._stamp_key(cfg, nb, nbs, {}) for nb in nbs}


def test_changing_the_confidence_level_reruns_every_chapter_whose_numbers_use_it():
    """The weights chapter reads evaluation.confidence for its intervals: it must re-run (it did not before)."""
    cfg = config.from_dict({})
    other = cfg.model_copy(update={"evaluation": cfg.evaluation.model_copy(update={"confidence": 0.9})})
    before, after = _keys(cfg), _keys(other)
    changed = {nb for nb in before if before[nb] != after[nb]}
    readers = {nb.stem for nb in runner.notebooks() if "evaluation" in runner.chapter_sections(nb)}
    assert changed == readers
    assert {"02_train_grpo", "03_variants", "06_probes", "07_crosscoder", "08_patching", "09_spectra"} <= changed


def test_a_section_no_chapter_code_reads_reruns_nothing():
    cfg = config.from_dict({})
    other = cfg.model_copy(update={"crosscoder": cfg.crosscoder.model_copy(update={"k": 4})})
    before, after = _keys(cfg), _keys(other)
    assert {nb for nb in before if before[nb] != after[nb]} == {
        nb.stem for nb in runner.notebooks() if "crosscoder" in runner.chapter_sections(nb)} == {"07_crosscoder"}


def test_changed_library_code_changes_the_digest_of_what_imports_it(tmp_path, monkeypatch):
    name = "rlvr_utils.core.stats"
    before = deps.code_digest([name])
    edited = tmp_path / "stats.py"
    edited.write_bytes(deps.module_file(name).read_bytes() + b"\n# edited\n")
    monkeypatch.setattr(deps, "module_file", lambda n, real=deps.module_file: edited if n == name else real(n))
    deps._parse.cache_clear()
    try:
        assert deps.code_digest([name]) != before
    finally:
        deps._parse.cache_clear()


def test_a_notebook_is_read_for_its_imports_even_with_magics():
    cells = ["%matplotlib inline\nfrom rlvr_utils.core import notebook\n", "import json\nfrom rlvr_utils.evidence import verdict"]
    assert deps.notebook_modules(cells) == {"rlvr_utils.core", "rlvr_utils.core.notebook", "rlvr_utils.evidence",
                                            "rlvr_utils.evidence.verdict"}
    assert json.dumps(deps.sections(["rlvr_utils.evidence.verdict"]))  # declared sections are plain strings


def test_the_verdict_reads_only_the_replicates_this_run_made_and_reruns_when_one_changes(tmp_path):
    from rlvr_utils.core import artifacts
    from rlvr_utils.evidence import replicate, verdict

    cfg = config.from_dict({"runs_dir": str(tmp_path), "name": "study", "verdict": {"replicate_seeds": [1, 2]}})
    cfg.run_dir.mkdir()
    for seed in (1, 2):  # two folders with the replicates' names; only seed 1 was made by `replicate`
        artifacts.write_json(tmp_path / f"study-seed{seed}" / "metrics" / "verdict.json", {"verdict": "Routing"})
    artifacts.write_json(cfg.path(replicate.RECORD), {"1": str(tmp_path / "study-seed1")})
    assert sorted(verdict.replicate_dirs(cfg)) == [0, 1]
    chapter = next(nb for nb in runner.notebooks() if nb.stem.endswith("_verdict"))
    before = runner._stamp_key(cfg, chapter, runner.notebooks(), {})
    artifacts.write_json(tmp_path / "study-seed2" / "metrics" / "verdict.json", {"verdict": "forged"})
    assert runner._stamp_key(cfg, chapter, runner.notebooks(), {}) == before  # not this run's replicate
    artifacts.write_json(tmp_path / "study-seed1" / "metrics" / "verdict.json", {"verdict": "edited"})
    assert runner._stamp_key(cfg, chapter, runner.notebooks(), {}) != before


def test_an_edited_library_module_reruns_the_chapters_that_import_it(tmp_path, monkeypatch):
    """The verdict's rules change: the verdict chapter's key changes, the base chapter's does not."""
    cfg = config.from_dict({})
    name = "rlvr_utils.evidence.verdict"
    edited = tmp_path / "verdict.py"
    edited.write_bytes(deps.module_file(name).read_bytes() + b"\n# a changed rule\n")
    before = _keys(cfg)
    monkeypatch.setattr(deps, "module_file", lambda n, real=deps.module_file: edited if n == name else real(n))
    deps._parse.cache_clear()
    try:
        after = _keys(cfg)
    finally:
        deps._parse.cache_clear()
    assert before["10_verdict"] != after["10_verdict"] and before["00_base"] == after["00_base"]
