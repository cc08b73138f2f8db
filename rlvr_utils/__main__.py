"""Command line: `python -m rlvr_utils {run, check-params, train}`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import PROJECT_ROOT, ParamsError, load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlvr_utils", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute the notebooks with papermill, then build the book")
    run.add_argument("--params", required=True, help="params YAML file, e.g. params/default.yaml")
    run.add_argument("--only", nargs="+", metavar="NN", help="run only these notebooks (by number)")
    run.add_argument("--from", dest="start", metavar="NN", help="run from this notebook on")
    run.add_argument("--force", action="store_true", help="re-run notebooks even if up to date")
    run.add_argument("--book-root", type=Path, default=PROJECT_ROOT, help="where book/executed and _build go")
    run.add_argument("--no-book", action="store_true", help="execute the notebooks but do not build the book")

    check = sub.add_parser("check-params", help="validate params files and exit")
    check.add_argument("files", nargs="+")

    train = sub.add_parser("train", help="train one stage (what `accelerate launch` runs)")
    train.add_argument("--stage", required=True, choices=["base", "sft", "rlvr"])
    train.add_argument("--params", required=True)

    args = parser.parse_args(argv)
    try:
        if args.command == "check-params":
            for f in args.files:
                cfg = load(f)
                print(f"{f}: ok (run '{cfg.name}', artifacts in {cfg.run_dir})")
            return 0
        if args.command == "train":
            from . import train as training

            training.TRAINERS[args.stage](load(args.params))
            return 0
        from . import runner

        load(args.params)
        if not runner.execute(args.params, args.only, args.start, args.force, args.book_root.resolve()):
            return 1
        if not args.no_book and not args.only:
            runner.build_book(args.book_root.resolve())
        return 0
    except ParamsError as err:
        print(err, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
