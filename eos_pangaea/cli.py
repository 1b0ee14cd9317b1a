"""The ``eos-pangaea`` command line.

Each sub-command lives in its own module, which exposes ``register(subparsers)``
and sets ``func`` on its parser. Command modules import torch and matplotlib
inside their handlers, so ``eos-pangaea --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Modules that each add one or more sub-commands, in the order of the help text.
COMMAND_MODULES = (
    "eos_pangaea.commands.inspect",
    "eos_pangaea.commands.run_cpu",
    "eos_pangaea.commands.leaderboard",
    "eos_pangaea.commands.weights",
    "eos_pangaea.commands.prune",
    "eos_pangaea.commands.selection",
    "eos_pangaea.commands.plot_scaling",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every sub-command registered."""
    from eos_pangaea import __version__

    parser = argparse.ArgumentParser(
        prog="eos-pangaea",
        description="Run, inspect and extend the EoS-FM ensemble for the PANGAEA benchmark.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log progress messages (-v) or debug messages too (-vv)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=_log_level(args),
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, RuntimeError) as error:
        # Expected user errors: print the message alone, without a traceback.
        print(f"eos-pangaea {args.command}: error: {error}", file=sys.stderr)
        return 1


# Long-running commands report progress by default; the others print their
# result and log only warnings unless -v is given.
PROGRESS_COMMANDS = ("run-cpu", "weights", "prune")


def _log_level(args: argparse.Namespace) -> int:
    if args.verbose >= 2:
        return logging.DEBUG
    if args.verbose == 1 or args.command in PROGRESS_COMMANDS:
        return logging.INFO
    return logging.WARNING


if __name__ == "__main__":
    sys.exit(main())
