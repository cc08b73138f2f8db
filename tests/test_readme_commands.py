"""Everything the README tells a newcomer to type exists, and every Makefile target a user can run is in it:
each `make <target>` is a Makefile target (and each .PHONY target is written as `make <target>`), each
`python -m rlvr_utils <command>` is a subcommand that accepts the options shown, each `-m rlvr_utils.<module>`
is a module, and each project path it names in code (params/..., notebooks/..., rlvr_utils/..., book/...,
benchmarks/..., tests/...) is in the repository. The commands that only read (show-params, plan,
check-params) are run as written. A failure names the README line.

Only the README's code is read (inline code spans, which may cross a line break, and fenced blocks): prose
such as "make sure" is not a command."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import re
from pathlib import Path

import pytest

from rlvr_utils.__main__ import main as cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# Paths the README names that are not meant to be in the repository, each with the reason.
NOT_PROJECT_PATHS = {
    "params/X.yaml": "a placeholder for any params file",
    "params/my-experiment.yaml": "the reader's own copy of a params file",
    "book/executed/": "inside a run's book folder (runs/<name>/book/), as the README line says",
    "benchmarks/out/gpu_smoke/logs/": "the GPU smoke's stage logs, written where it runs (git-ignored)",
    "benchmarks/gpu_smoke.md": "the GPU smoke's report, written by its first run on a GPU machine",
}
PATH_PREFIXES = ("params/", "notebooks/", "rlvr_utils/", "book/", "benchmarks/", "tests/", ".ci/")
_PATH = re.compile(r"(?<![\w./~<>-])((?:%s)[\w./*-]*)" % "|".join(re.escape(p) for p in PATH_PREFIXES))
_MAKE = re.compile(r"(?:^|[\s;&|(])make\s+(?:-\S+\s+)*([A-Za-z][\w.-]*)(?=\s|$)")
_CLI = re.compile(r"-m\s+rlvr_utils\s+([a-z][\w-]*)(.*)")
_MODULE = re.compile(r"-m\s+(rlvr_utils(?:\.\w+)+)")
_TARGET = re.compile(r"^([A-Za-z0-9_.%/-]+(?:[ \t]+[A-Za-z0-9_.%/-]+)*)[ \t]*:(?!=)")


def code_snippets(text: str) -> list[tuple[int, str]]:
    """(README line, code) for every line of a fenced block and every inline code span. A span may run over a
    line break inside its paragraph, so paragraphs are joined before spans are found; the line reported is
    the one the span starts on."""
    out: list[tuple[int, str]] = []
    para: list[tuple[int, str]] = []
    fenced = False

    def flush() -> None:
        joined, starts = "", []
        for number, line in para:
            starts.append((len(joined), number))
            joined += line + " "
        for m in re.finditer(r"`([^`]+)`", joined):
            out.append((max(n for offset, n in starts if offset <= m.start()), m.group(1)))
        para.clear()

    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            flush()
            fenced = not fenced
        elif fenced:
            out.append((number, line.split(" #")[0]))  # a shell comment is prose
        elif not line.strip():
            flush()
        else:
            para.append((number, line))
    flush()
    return out


def makefile_targets(makefile: Path) -> set[str]:
    targets = set()
    for line in makefile.read_text().splitlines():
        m = _TARGET.match(line)  # recipe lines start with a tab and never match
        if m:
            targets.update(m.group(1).split())
    return targets


def phony_targets(makefile: Path) -> set[str]:
    """The Makefile's commands (its .PHONY targets), as opposed to the files it makes."""
    return {t for line in makefile.read_text().splitlines() if line.startswith(".PHONY:")
            for t in line.split(":", 1)[1].split()}


def undocumented_targets(text: str, makefile: Path) -> list[str]:
    shown = {t for _, code in code_snippets(text) for t in _MAKE.findall(code)}
    return [f"Makefile target `{t}` is not in README.md: add `make {t}` and what it does (the table of make targets)"
            for t in sorted(phony_targets(makefile) - shown)]


def _cli_help(args: list[str]) -> str:
    """What `python -m rlvr_utils ARGS --help` prints (argparse exits after printing)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        cli([*args, "--help"])
    return out.getvalue()


def subcommands() -> set[str]:
    m = re.search(r"\{([\w,-]+)\}", _cli_help([]))
    assert m, "python -m rlvr_utils --help lists no subcommands"
    return set(m.group(1).split(","))


def make_problems(text: str, targets: set[str]) -> list[str]:
    return [f"README.md:{n}: `make {t}` is not a Makefile target (targets: {', '.join(sorted(targets))})"
            for n, code in code_snippets(text) for t in _MAKE.findall(code) if t not in targets]


def cli_problems(text: str, commands: set[str]) -> list[str]:
    problems, helps = [], {}
    for n, code in code_snippets(text):
        for m in _CLI.finditer(code):
            command, rest = m.group(1), m.group(2)
            if command not in commands:
                problems.append(f"README.md:{n}: `python -m rlvr_utils {command}` is not a subcommand "
                                f"(python -m rlvr_utils --help lists {', '.join(sorted(commands))})")
                continue
            helps.setdefault(command, _cli_help([command]))
            for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", rest):
                if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", helps[command]):
                    problems.append(f"README.md:{n}: `{command} {flag}`: python -m rlvr_utils {command} --help "
                                    "has no such option")
        for module in _MODULE.findall(code):
            try:
                spec = importlib.util.find_spec(module)
            except ModuleNotFoundError:  # a missing parent package
                spec = None
            if spec is None:
                problems.append(f"README.md:{n}: `-m {module}`: no such module")
    return problems


def path_problems(text: str, root: Path) -> list[str]:
    problems = []
    for n, code in code_snippets(text):
        for path in _PATH.findall(code):
            path = path.rstrip(".")  # the end of a sentence inside the span
            if path in NOT_PROJECT_PATHS:
                continue
            found = list(root.glob(path)) if "*" in path else [root / path] if (root / path).exists() else []
            if not found:
                problems.append(f"README.md:{n}: `{path}` is not in the repository")
    return problems


def test_every_make_target_in_the_readme_exists():
    problems = make_problems(README.read_text(), makefile_targets(ROOT / "Makefile"))
    assert not problems, "\n".join(problems)


def test_every_make_target_is_in_the_readme():
    problems = undocumented_targets(README.read_text(), ROOT / "Makefile")
    assert not problems, "\n".join(problems)


def test_every_cli_command_and_option_in_the_readme_exists():
    problems = cli_problems(README.read_text(), subcommands())
    assert not problems, "\n".join(problems)


def test_every_project_path_in_the_readme_exists():
    problems = path_problems(README.read_text(), ROOT)
    assert not problems, "\n".join(problems)


# Commands that only read (print a config, a plan, a check): the README's own lines of them are run as written.
READ_ONLY = {"show-params", "plan", "check-params"}


def read_only_commands(text: str, root: Path) -> list[tuple[int, list[str]]]:
    """(README line, arguments after `-m rlvr_utils`) of each read-only command whose files all exist (a
    placeholder such as FILE or params/my-experiment.yaml is not run)."""
    import shlex

    out = []
    for n, code in code_snippets(text):
        m = _CLI.search(code)
        if not m or m.group(1) not in READ_ONLY:
            continue
        args = [m.group(1), *shlex.split(m.group(2))]
        operands = [a for a in args[1:] if not a.startswith("-") and not re.fullmatch(r"[\d.]+", a)]
        if all((root / a).is_file() for a in operands):
            out.append((n, args))
    return out


def run_problems(ran: list[tuple[int, list[str]]], capsys) -> list[str]:
    """Each command run: it succeeds, or (a plan that does not fit, the analyze-only example before `make
    book`) ends saying what to change or run, never with a traceback."""
    problems = []
    for n, args in ran:
        try:
            rc = cli(args)
        except Exception as err:  # noqa: BLE001 -- the point is that none escapes
            rc = f"{type(err).__name__}: {err}"
        out = capsys.readouterr()
        said = out.out + out.err
        if rc != 0 and not (rc in (1, 2) and ("make book" in said or "change:" in said)):
            problems.append(f"README.md:{n}: `python -m rlvr_utils {' '.join(args)}` exited {rc}:\n{said[-800:]}")
    return problems


def test_the_readmes_read_only_commands_run_as_written(capsys):
    ran = read_only_commands(README.read_text(), ROOT)
    assert {args[0] for _, args in ran} == READ_ONLY, ran
    problems = run_problems(ran, capsys)
    assert not problems, "\n".join(problems)


def test_a_read_only_command_that_fails_is_named(capsys):
    text = "```bash\npython -m rlvr_utils show-params FILE\npython -m rlvr_utils check-params tests/conftest.py\n```\n"
    ran = read_only_commands(text, ROOT)
    assert ran == [(3, ["check-params", "tests/conftest.py"])]  # FILE, a placeholder, is not run
    problems = run_problems(ran, capsys)
    assert len(problems) == 1 and problems[0].startswith("README.md:3: `python -m rlvr_utils check-params "
                                                         "tests/conftest.py` exited 2")


def test_the_checks_find_what_they_look_for():
    """The real README names targets, commands and paths: an extractor that finds nothing would pass
    vacuously."""
    snippets = code_snippets(README.read_text())
    assert {"book", "test", "test-fast"} <= {t for _, c in snippets for t in _MAKE.findall(c)}
    assert {"run", "check-params"} <= {m.group(1) for _, c in snippets for m in _CLI.finditer(c)}
    assert {"params/default.yaml", "notebooks/00_base.ipynb"} <= {p for _, c in snippets for p in _PATH.findall(c)}
    assert {"book", "test", "clean"} <= makefile_targets(ROOT / "Makefile")
    assert {"book", "test", "check-params", "install"} <= phony_targets(ROOT / "Makefile")


def test_each_check_can_fail_and_names_the_line():
    text = ("Intro: make sure to read this.\n\n"  # prose, not a command
            "Run `make bogus-target` first,\nthen `.venv/bin/python -m rlvr_utils\nfrobnicate --params x`.\n\n"
            "```bash\n.venv/bin/python -m rlvr_utils run --params params/default.yaml --no-such-flag\n"
            "python -m rlvr_utils.no_such_module\n```\n\nSee `notebooks/99_missing.ipynb` and `params/*.nope`.\n")
    assert undocumented_targets("Only `make book` here.\n", ROOT / "Makefile")[0].startswith("Makefile target `")
    assert make_problems(text, makefile_targets(ROOT / "Makefile")) == [
        f"README.md:3: `make bogus-target` is not a Makefile target (targets: "
        f"{', '.join(sorted(makefile_targets(ROOT / 'Makefile')))})"]
    cli = cli_problems(text, subcommands())
    assert len(cli) == 3, cli
    assert cli[0].startswith("README.md:4: `python -m rlvr_utils frobnicate` is not a subcommand")
    assert cli[1] == "README.md:8: `run --no-such-flag`: python -m rlvr_utils run --help has no such option"
    assert cli[2] == "README.md:9: `-m rlvr_utils.no_such_module`: no such module"
    assert path_problems(text, ROOT) == ["README.md:12: `notebooks/99_missing.ipynb` is not in the repository",
                                         "README.md:12: `params/*.nope` is not in the repository"]
