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
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        # Expected user errors: print the message alone, without a traceback.
        print(f"eos-pangaea {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
