"""The ``llmlb`` command line: one subcommand per module, each with ``--help``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Subcommand name -> module. Each module defines HELP, add_arguments(parser), run(args).
SUBCOMMANDS: dict[str, str] = {
    "demo": "llmlb_fast.demo",
    "bench": "llmlb_fast.bench",
    "serve": "llmlb_fast.serve",
    "sim-cluster": "llmlb_fast.sim.cluster",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmlb",
        description="llmlb: LLM-aware load balancer (prefix affinity, least load, GPU state).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
