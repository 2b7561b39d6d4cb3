"""The ``bayeskit`` command: ``demo``, ``summary FILE``, ``--version``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]


def run_demo(args) -> int:
    from bayeskit import demo

    chosen = demo.run(args.out, quick=args.quick, seed=args.seed, progress=not args.no_progress, only=args.only)
    first = Path(args.out) / f"{chosen[0]}_posterior.nc"
    print(f"\nDone. Read a saved posterior back with: bayeskit summary {first}")
    return 0


def run_summary(args) -> int:
    from bayeskit.demo.common import pandas_display
    from bayeskit.posterior import load

    try:
        post = load(args.file)
    except (FileNotFoundError, ValueError) as error:
        print(f"bayeskit summary: {error}", file=sys.stderr)
        return 2
    print(post)
    with pandas_display():
        print(post.summary(var_names=args.var_names))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from bayeskit import __version__
    from bayeskit.demo import STOPS

    parser = argparse.ArgumentParser(prog="bayeskit", description=__doc__)
    parser.add_argument("--version", action="version", version=f"bayeskit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="a tour of the engines on bundled data")
    demo.add_argument("--out", default="bayeskit-demo", help="folder for posteriors and plots")
    demo.add_argument("--quick", action="store_true", help="small sizes (seconds), same code path")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--only", nargs="+", choices=sorted(STOPS), help="run only these engines")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(handler=run_demo)
    summary = commands.add_parser("summary", help="print the summary of a saved posterior")
    summary.add_argument("file")
    summary.add_argument("--var-names", nargs="+", default=None)
    summary.set_defaults(handler=run_summary)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
