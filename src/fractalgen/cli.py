"""Command line: `fractalgen <command>` (also `python -m fractalgen`). Thin: parse flags, call the library.

Each command lives in a module exposing `register(subparsers)`, which adds its parser and sets
`func=handler(args) -> int`. User errors print one line on stderr and exit non-zero.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .checkpoint import CheckpointError
from .config import ConfigError
from .errors import UserError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except where there is none or the help text already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """Every (sub)command's --help shows the defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


# Modules that register subcommands, in --help order.
COMMAND_MODULES = [
    "fractalgen.commands",  # train, sample, nll, demo, eval-samples
    "fractalgen.commands_conditional",  # inpaint, outpaint, uncrop, edit
    "fractalgen.commands_eval",  # evaluate, fid, ref-stats
]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fractalgen", description="Fractal generative models: train, sample, "
                                     "measure likelihood, inpaint.",
                                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="<command>", parser_class=Parser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # not written yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (UserError, ConfigError, CheckpointError) as e:
        print(f"fractalgen {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fractalgen {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
