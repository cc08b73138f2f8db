"""Command line: `python -m rlvr_utils {run, replicate, elicit, plan, check-params, show-params, compare, pdf, train,
launch, extract}`."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rlvr_utils.publish.checks import checked
from rlvr_utils.core.lock import NotARunFolder, RunLocked, acquire_run_lock, run_lock
from rlvr_utils.core.config import PROJECT_ROOT, ParamsError, load, unchecked


def runner_interrupted() -> type[Exception]:
    from rlvr_utils.publish.runner import Interrupted

    return Interrupted


PARAMS_HELP = "params YAML file, e.g. params/default.yaml"


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand and argument, each with its help text (tests/test_cli.py walks it)."""
    parser = argparse.ArgumentParser(prog="python -m rlvr_utils", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute the notebooks with papermill, then build the book")
    run.add_argument("--params", required=True, help=PARAMS_HELP)
    run.add_argument("--only", nargs="+", metavar="NN", help="run only these notebooks (by number)")
    run.add_argument("--from", dest="start", metavar="NN", help="run from this notebook on")
    run.add_argument("--force", action="store_true", help="re-run the notebooks named (all by default) and "
                     "recompute everything they make, even if up to date")
    run.add_argument("--book-root", type=Path, default=None,
                     help="where book/executed and _build go (default: the run's own, runs/<name>/book)")
    run.add_argument("--no-book", action="store_true", help="execute the notebooks but do not build the book")

    rep = sub.add_parser("replicate", help="run the study for each of verdict.replicate_seeds (runs <name>-seed<k>), "
                         "then re-run the verdict chapter and build the book")
    rep.add_argument("--params", required=True, help=PARAMS_HELP + " (the main run's)")
    rep.add_argument("--seeds", nargs="+", type=int, help="instead of verdict.replicate_seeds")
    rep.add_argument("--no-book", action="store_true", help="replicate only; do not re-run the verdict or build")
    rep.add_argument("--book-root", type=Path, default=None, help="the main run's book root, as given to `run`")

    eli = sub.add_parser("elicit", help="RLVR's gain vs how much of the new wording pretraining saw: base, SFT and "
                         "RLVR trained again per share of data.corpus_new_verbs and seed (runs "
                         "<name>-elicit-f<share>-s<seed>), then runs/<name>/metrics/elicitation.json")
    eli.add_argument("--params", required=True, help=PARAMS_HELP + " (the runs are made from it)")
    eli.add_argument("--fractions", nargs="+", type=float, metavar="SHARE",
                     help="shares of data.corpus_new_verbs, instead of elicitation.fractions (e.g. 0 0.05 0.2 0.5)")
    eli.add_argument("--seeds", nargs="+", type=int, help="instead of elicitation.seeds")

    show = sub.add_parser("show-params", help="print a params file's effective config, defaults filled in")
    show.add_argument("file", help=PARAMS_HELP + "; an empty file shows the defaults (the default run)")

    comp = sub.add_parser("compare", help="accuracies and evidence rows of several runs side by side "
                          "(printed, and written as Markdown and CSV)")
    comp.add_argument("runs", nargs="+", metavar="RUN", help="run names under runs/ or run folders")
    comp.add_argument("--out", type=Path, help="output path without suffix (default: runs/compare-A-B...)")

    pdf = sub.add_parser("pdf", help="print the run's built book to one PDF (runs/<name>/book/_build/pdf/book.pdf) "
                         "with the machine's Chromium; build the book first")
    pdf.add_argument("--params", required=True, help=PARAMS_HELP)
    pdf.add_argument("--book-root", type=Path, default=None,
                     help="the book root given to `run` (default: the run's own, runs/<name>/book)")

    check = sub.add_parser("check-params", help="validate params files and exit")
    check.add_argument("files", nargs="+", metavar="FILE", help="params YAML files, e.g. params/*.yaml")
    check.add_argument("--other-machine", action="store_true",
                       help="the files are for another machine: skip what only this one decides (vLLM installed)")

    train = sub.add_parser("train", help="train one stage (what `accelerate launch` runs)")
    train.add_argument("--stage", required=True, help="base, sft, rlvr, or a trained treatment of the params' "
                       "registry (a control, a placebo)")
    train.add_argument("--params", required=True, help=PARAMS_HELP)

    node = sub.add_parser("launch", help="every training stage of the run (SFT, GRPO, controls, placebos) on this "
                          "machine, each through accelerate launch; on several machines each starts this with its rank")
    node.add_argument("--params", required=True, help=PARAMS_HELP)
    node.add_argument("--machine-rank", type=int, default=None, metavar="R",
                      help="this machine's rank, 0 to launch.num_machines - 1 (default: launch.machine_rank)")

    ext = sub.add_parser("extract", help="extract one model's activations over the run's token cache (what "
                         "`accelerate launch` runs when extract.num_processes > 1)")
    ext.add_argument("--stage", required=True, help="base, sft, rlvr or a variant")
    ext.add_argument("--params", required=True, help=PARAMS_HELP)

    plan = sub.add_parser("plan", help="estimate each stage's peak GPU and host memory, disk and compute; exit 1 "
                          "when a stage cannot fit the machine (default: this one)")
    plan.add_argument("params", help=PARAMS_HELP)
    plan.add_argument("--gpus", type=int, help="GPUs of the machine (0: CPU only; default: what torch sees)")
    plan.add_argument("--gpu-memory", type=float, metavar="GiB", help="memory of each GPU (implies --gpus 1 "
                      "on a machine without GPUs)")
    plan.add_argument("--host-memory", type=float, metavar="GiB", help="host memory (default: this machine's)")
    plan.add_argument("--disk", type=float, metavar="GiB", help="free disk for the run (default: free where it "
                      "writes, plus its folder)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check-params":
            failed = False
            for f in args.files:  # every file is checked, each failure reported
                try:
                    cfg = checked(f, machine=not args.other_machine)
                except ParamsError as err:
                    print(err, file=sys.stderr)
                    failed = True
                    continue
                print(f"{f}: ok (run '{cfg.name}', artifacts in {cfg.run_dir})")
                for note in unchecked(cfg):
                    print(f"  note: {note}")
            return 2 if failed else 0
        if args.command == "plan":
            from rlvr_utils.resources import report

            return report.main(args.params, args.gpus, args.gpu_memory, args.host_memory, args.disk)
        if args.command == "show-params":
            import yaml

            cfg = load(args.file)
            print(f"# effective config of {args.file} (every default filled in); run folder {cfg.run_dir}")
            print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, default_flow_style=False), end="")
            return 0
        if args.command == "compare":
            from rlvr_utils.evidence import compare

            try:
                frame = compare.table(args.runs)
            except FileNotFoundError as err:
                print(err, file=sys.stderr)
                return 2
            out = args.out or PROJECT_ROOT / "runs" / ("compare-" + "-".join(Path(r).name for r in args.runs))
            md, csv = compare.write(frame, out)
            print(md.read_text(), end="")
            print(f"\nwritten: {md} and {csv}")
            return 0
        if args.command == "pdf":
            from rlvr_utils.publish import pdf, runner

            cfg = checked(args.params)
            root = args.book_root.resolve() if args.book_root else runner.run_book_root(cfg)
            pdf.refuse_unless_built(root, args.params)  # before the lock: a refusal touches nothing
            try:
                with run_lock(cfg.run_dir):  # a run rewriting the chapters meanwhile would mix two versions
                    out = pdf.build(root, args.params)
            except pdf.NoBrowser as err:
                print(err, file=sys.stderr)
                return 2
            print(f"the PDF: {out.relative_to(PROJECT_ROOT) if out.is_relative_to(PROJECT_ROOT) else out}")
            return 0
        if args.command == "train":
            from rlvr_utils.training import train as training
            from rlvr_utils.treatments import registry

            cfg = checked(args.params)
            trained = [t.name for t in registry.all(cfg) if t.trained and t.name not in training.TRAINERS]
            if args.stage not in (*training.TRAINERS, *trained):
                print(f"--stage {args.stage!r}: expected one of {', '.join([*training.TRAINERS, *trained])}",
                      file=sys.stderr)
                return 2
            if os.environ.get("RANK", "0") == "0":  # under accelerate launch, rank 0 holds the run's lock
                acquire_run_lock(cfg.run_dir)
            if args.stage in training.TRAINERS:
                training.TRAINERS[args.stage](cfg)
            else:
                registry.train(cfg, args.stage)
            return 0
        if args.command == "launch":
            from rlvr_utils.treatments import launch

            cfg = checked(args.params)
            try:
                rank = launch.machine_rank(cfg, args.machine_rank, "--machine-rank")
            except ValueError as err:
                print(f"{args.params}: {err}", file=sys.stderr)
                return 2
            print("\n".join(launch.train_on_this_machine(cfg, args.params, rank)))
            return 0
        if args.command == "extract":
            from rlvr_utils import activations

            cfg = checked(args.params)
            if os.environ.get("RANK", "0") == "0":
                acquire_run_lock(cfg.run_dir)
            activations.run_extract(cfg, args.stage, activations.TokenCache.load(cfg.path("tokens")))
            return 0
        if args.command == "elicit":
            from rlvr_utils.experiments import elicitation, elicitation_runs

            print(elicitation.reading(elicitation_runs.run(args.params, args.fractions, args.seeds)))
            return 0
        from rlvr_utils.publish import runner

        cfg = checked(args.params)
        if args.command == "replicate":
            from rlvr_utils.publish import replication as replicate

            if not replicate.run(args.params, args.seeds):
                return 1
            if args.no_book:
                return 0
            root = args.book_root.resolve() if args.book_root else runner.run_book_root(cfg)
            if not runner.execute(args.params, only=["10"], force=True, book_root=root):
                return 1
            runner.build_book(root, params=cfg)
            return 0
        root = args.book_root.resolve() if args.book_root else runner.run_book_root(cfg)
        if not runner.execute(args.params, args.only, args.start, args.force, root):
            return 1
        if args.no_book:
            return 0
        if args.only and any(runner.chapter_problem(root / runner.EXECUTED / nb.name) for nb in runner.notebooks()):
            print(f"book not rebuilt: not every chapter of run '{cfg.name}' is executed yet "
                  f"(run without --only first)", flush=True)
            return 0
        runner.build_book(root, params=cfg)  # after --only too: the book shows the re-run chapters
        return 0
    except runner_interrupted() as err:
        print(f"\n{err}", file=sys.stderr, flush=True)
        return 130
    except KeyboardInterrupt:
        print("\ninterrupted. Resume with the same command: finished notebooks and stages are skipped.",
              file=sys.stderr, flush=True)
        return 130
    except (ParamsError, NotARunFolder) as err:
        print(err, file=sys.stderr)
        return 2
    except RunLocked as err:
        print(err, file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
