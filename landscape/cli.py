"""The ``landscape`` command.

Each analysis contributes its subcommands from a module ``landscape.commands.<area>`` with a
``register(subparsers)`` function; heavy imports (torch, matplotlib) happen inside the handlers
so that ``landscape --help`` answers at once.

Two environment variables are read at start:

``LANDSCAPE_NUM_THREADS``
    torch CPU threads when ``--threads`` is not given.
``LANDSCAPE_TINY=1``
    shrink every run to a few seconds (1 epoch, 200 training examples, 5 alphas, a tiny
    language model, ...), as the notebooks do; the tests run the README's commands this way.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["THREADS_VARIABLE", "TINY_LIMITS", "TINY_VARIABLE", "HelpFormatter", "build_parser", "main"]

THREADS_VARIABLE = "LANDSCAPE_NUM_THREADS"
TINY_VARIABLE = "LANDSCAPE_TINY"

# Modules that add subcommands, in the order they appear in --help.
COMMAND_MODULES = (
    "landscape.commands.engine",
    "landscape.commands.connectivity",
    "landscape.commands.alignment",
    "landscape.commands.lottery",
    "landscape.commands.curvature",
    "landscape.commands.concepts",
)

# Under LANDSCAPE_TINY=1, every option with one of these names is capped at the value given
# (None, "use the default", becomes the value too). A subcommand adds or overrides entries with
# ``parser.set_defaults(tiny={...})``.
TINY_LIMITS: dict[str, int] = {
    "epochs": 1,
    "n_train": 200,
    "n_test": 100,
    "alphas": 5,
    "resolution": 5,
    "rounds": 1,
    "steps": 4,
    "probe_epochs": 5,
    "max_iter": 10,
    "hidden_dim": 32,
    "bottleneck_dim": 8,
    "out_dim": 64,
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default after its help, unless the help already states it or there
    is no default worth showing (None, a flag that is off, an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or "default" in text
            or default is None
            or default is False
            or default == argparse.SUPPRESS
            or (isinstance(default, (list, tuple)) and not default)
            or isinstance(action, (argparse._StoreTrueAction, argparse._HelpAction))
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose help shows defaults; subcommand parsers inherit it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


THREADS_HELP = (
    f"torch CPU threads (default: ${THREADS_VARIABLE}, else torch's choice, one per core). On a shared "
    "or loaded machine, 1 or 2 is often several times faster; allowed before or after the command"
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="landscape",
        description="Loss-landscape and representation analysis of neural networks.",
        epilog="Run `landscape demo` for a one-minute tour; `landscape COMMAND --help` for details. "
        f"Environment: {THREADS_VARIABLE}=N sets the threads, {TINY_VARIABLE}=1 shrinks every run to seconds.",
    )
    parser.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:  # a real missing dependency inside the module is a bug
                raise
            continue
        module.register(subparsers)
    # --threads after the command too; SUPPRESS keeps a value given before the command.
    for sub in _subcommand_parsers(parser):
        if "--threads" not in sub._option_string_actions:
            sub.add_argument("--threads", type=int, default=argparse.SUPPRESS, help=THREADS_HELP)
    return parser


def _subcommand_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every parser below ``parser`` (subcommands of subcommands too), each once."""
    seen: set[int] = set()
    stack = [parser]
    while stack:
        current = stack.pop()
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    if id(sub) not in seen:
                        seen.add(id(sub))
                        stack.append(sub)
                        yield sub


def _threads(value: int | None) -> int | None:
    from landscape.core.errors import bad_argument

    if value is not None:
        return value
    text = os.environ.get(THREADS_VARIABLE, "").strip()
    if not text:
        return None
    try:
        threads = int(text)
    except ValueError:
        threads = 0
    if threads < 1:
        raise bad_argument(
            "landscape",
            THREADS_VARIABLE,
            expected="a positive integer",
            found=repr(text),
            fix=f"Unset it or set e.g. {THREADS_VARIABLE}=2.",
        )
    return threads


def apply_tiny(args: argparse.Namespace) -> dict[str, object]:
    """Cap the options named in :data:`TINY_LIMITS` (and the command's own ``tiny`` defaults);
    returns what changed."""
    limits: dict[str, object] = {**TINY_LIMITS, **(getattr(args, "tiny", None) or {})}
    changed: dict[str, object] = {}
    for name, limit in limits.items():
        if not hasattr(args, name):
            continue
        value = getattr(args, name)
        new = _capped(value, limit)
        if new != value:
            setattr(args, name, new)
            changed[name] = new
    return changed


def _capped(value: object, limit: object) -> object:
    """A number caps ints, lists of ints and comma-separated ints ("0,25,100") and sets an
    unset option; any other limit (a flag, a text) replaces the value."""
    if not isinstance(limit, int) or isinstance(limit, bool):
        return limit
    if value is None:
        return limit
    if isinstance(value, int) and not isinstance(value, bool):
        return min(value, limit)
    if isinstance(value, str) and value.replace(",", "").replace(" ", "").isdigit():
        return ",".join(str(v) for v in sorted({min(int(s), limit) for s in value.split(",") if s.strip()}))
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return sorted({min(v, limit) for v in value})
    return value


def main(argv: Sequence[str] | None = None) -> int:
    command = "landscape"
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        command = f"landscape {args.command}"
        from landscape.core.allocator import tune_cpu_allocator
        from landscape.core.device import set_num_threads
        from landscape.core.errors import LandscapeError

        try:
            set_num_threads(_threads(args.threads))
            tune_cpu_allocator()  # our own process: CPU forward passes stop page-faulting
            if os.environ.get(TINY_VARIABLE) == "1":
                changed = apply_tiny(args)
                shown = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in changed.items())
                print(
                    f"{TINY_VARIABLE}=1: tiny settings ({shown or 'nothing to shrink'}); the numbers mean nothing",
                    file=sys.stderr,
                )
            return int(args.handler(args) or 0)
        except LandscapeError as err:
            print(f"{command}: error: {err}", file=sys.stderr)
            return 2
    except KeyboardInterrupt as err:
        print(_interrupted_line(command, err), file=sys.stderr)
        return 130


def _interrupted_line(command: str, err: KeyboardInterrupt) -> str:
    """One line for Ctrl-C instead of a traceback: what was saved and how to go on."""
    from landscape.core.errors import RunInterrupted

    if isinstance(err, RunInterrupted):
        saved = f"{len(err.saved)} finished step(s) are saved" if err.saved else "no step had finished"
        return f"{command}: interrupted; {saved} in {err.folder!r}; run the same command again to resume."
    return f"{command}: interrupted before it finished; it writes its outputs when it finishes, so none were written."


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
