"""The ``landscape`` command.

Each analysis contributes its subcommands from a module ``landscape.<area>.commands`` with a
``register(subparsers)`` function; heavy imports happen inside the handlers so that
``landscape --help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

# Modules that add subcommands, in the order they appear in --help.
COMMAND_MODULES = (
    "landscape.commands.engine",
    "landscape.commands.connectivity",
    "landscape.commands.alignment",
    "landscape.commands.lottery",
    "landscape.commands.curvature",
    "landscape.commands.concepts",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="landscape",
        description="Loss-landscape and representation analysis of neural networks.",
        epilog="Run `landscape demo` for a one-minute tour; `landscape COMMAND --help` for details.",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:  # a real missing dependency inside the module is a bug
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from landscape.core.device import set_num_threads
    from landscape.core.errors import LandscapeError

    set_num_threads(args.threads)
    try:
        return int(args.handler(args) or 0)
    except LandscapeError as err:
        print(f"landscape {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
