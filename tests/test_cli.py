"""show-params prints the effective config; compare sets runs side by side; the params reference page lists
every field with its description and default; the abstract reads the run's metrics; every command-line argument
says what it is."""
import argparse
import json
from pathlib import Path

import pytest
import yaml

from rlvr_utils.core import config
from rlvr_utils.publish import pages
from rlvr_utils.__main__ import build_parser, main


def undocumented_arguments(parser: argparse.ArgumentParser, prefix: str = "python -m rlvr_utils") -> list[str]:
    """Every subcommand and argument (positional or option) without help text, walking the parser's tree."""
    missing = []
    for action in parser._actions:  # argparse has no public walk; _actions is what format_help itself reads
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                if not helps.get(name):
                    missing.append(f"{prefix} {name}")
                missing += undocumented_arguments(sub, f"{prefix} {name}")
        elif not isinstance(action, argparse._HelpAction) and not action.help:
            missing.append(f"{prefix} {'/'.join(action.option_strings) or action.dest}")
    return missing


def test_every_command_line_argument_has_help_text():
    """`python -m rlvr_utils` and every module with a command line of its own (a `build_parser`), which is every
    module that builds an argparse parser."""
    import importlib

    root = Path(__file__).resolve().parents[1]
    with_cli = sorted(".".join(p.relative_to(root).with_suffix("").parts) for p in (root / "rlvr_utils").rglob("*.py")
                      if "ArgumentParser(" in p.read_text())
    assert {"rlvr_utils.__main__", "rlvr_utils.training.rehearsal", "rlvr_utils.resources.measure"} <= set(with_cli)
    for name in with_cli:
        module = importlib.import_module(name)
        assert hasattr(module, "build_parser"), f"{name} builds a parser outside build_parser(): the test cannot walk it"
        assert undocumented_arguments(module.build_parser(), module.build_parser().prog) == [], name


def test_the_help_walk_finds_an_argument_without_help():
    parser = build_parser()
    parser.add_argument("--bare")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub.choices["run"].add_argument("extra")
    sub.add_parser("quiet")
    assert sorted(undocumented_arguments(parser)) == ["python -m rlvr_utils --bare", "python -m rlvr_utils quiet",
                                                      "python -m rlvr_utils run extra"]


def test_show_params_fills_in_every_default(capsys):
    assert main(["show-params", "params/ci.yaml"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["organism"]["hidden_size"] == 64  # from the file
    assert shown["cka"]["debiased"] is True and "redundant_share" in shown["verdict"]  # defaults
    assert config.from_dict(shown).fingerprint() == config.load("params/ci.yaml").fingerprint()


def test_show_params_names_a_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cka: {n_bootstrap: -1}\n")
    assert main(["show-params", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "n_bootstrap" in err


def test_compare_prints_and_writes_markdown_and_csv(tmp_path, capsys):
    for name, gain in (("s0", 0.1), ("s1", 0.06)):
        metrics = tmp_path / name / "metrics"
        metrics.mkdir(parents=True)
        (metrics / "eval.json").write_text(json.dumps({"summary": {
            "rlvr_minus_sft_accuracy": {"value": gain, "ci": [gain - 0.02, gain + 0.02]}}}))
    out = tmp_path / "side"
    assert main(["compare", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("| measurement | s0 | s1 |") and "0.060 [0.040, 0.080]" in printed
    assert (tmp_path / "side.md").exists() and "s1" in (tmp_path / "side.csv").read_text()
    assert main(["compare", str(tmp_path / "nope")]) == 2


def test_every_params_field_is_documented_on_the_reference_page():
    page = pages.params_reference()
    missing = []
    for section, field in config.Params.model_fields.items():
        if section == "source":
            continue
        sub = field.annotation.model_fields if pages._is_section(field) else {None: field}
        for key, f in sub.items():
            name = section if key is None else f"{section}.{key}"
            assert f"\n- `{name}` (" in page, name
            if not f.description:
                missing.append(name)
    assert not missing, f"fields without a description: {missing}"


def test_the_abstract_reads_the_runs_metrics(tmp_path):
    cfg = config.Params(name="x", runs_dir=str(tmp_path))
    metrics = tmp_path / "x" / "metrics"
    metrics.mkdir(parents=True)
    entry = lambda v, lo, hi: {"value": v, "ci": [lo, hi]}
    (metrics / "eval.json").write_text(json.dumps({"n_problems": 500, "summary": {
        "accuracy_base": entry(0.838, 0.804, 0.87), "accuracy_sft": entry(0.668, 0.626, 0.708),
        "accuracy_rlvr": entry(0.828, 0.794, 0.86), "rlvr_minus_sft_accuracy": entry(0.16, 0.12, 0.2)}}))
    rows = [{"measurement": f"Row {k}", "calibration": "counts" if k < 4 else "fails"} for k in range(7)]
    (metrics / "verdict.json").write_text(json.dumps({"verdict": "Routing", "rows": rows, "tally": {
        "Routing": 3, "Representation learning": 0, "no evidence": 1}, "summary": {
        "graft_attn_share": {"value": 0.8, "ci": [0.6, 0.9], "description": "share recovered by attention alone"}}}))
    text = pages.abstract(cfg)
    assert "SFT 67 [63, 71] %" in text and "RLVR − SFT 16 [12, 20] points" in text and "500 held-out" in text
    assert text.index("**Calibration.** 4 of 7") < text.index("Answer on this run: Routing")  # calibration first
    assert "row 0; row 1; row 2; row 3." in text and "Routing on 3, no evidence on 1" in text
    assert "share recovered by attention alone is 0.80 [0.60, 0.90]" in text and "10_verdict" in text
    empty = pages.abstract(config.Params(name="y", runs_dir=str(tmp_path)))
    assert "not measured" in empty and "has not run yet" in empty


def test_pdf_before_the_book_is_built_says_what_to_run_and_touches_nothing(tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text(f"name: t\nruns_dir: {tmp_path / 'runs'}\n")
    with pytest.raises(SystemExit, match=rf"build it first \(make book PARAMS={params}, or python -m rlvr_utils run "):
        main(["pdf", "--params", str(params)])
    assert not (tmp_path / "runs").exists()
