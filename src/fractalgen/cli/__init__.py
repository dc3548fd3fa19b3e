"""Command line: `fractalgen <command>` (also `python -m fractalgen`). Thin: parse flags, call the library.

Each command family is one module with `register(subparsers)`, which adds its parsers and sets
`func=handler(args) -> int`. User errors print one line `fractalgen CMD: error: ...` and exit 2.
"""
from __future__ import annotations

import sys

from ..config import ConfigError
from ..errors import UserError
from ..formats import CheckpointError
from ..version import __version__
from . import codec, conditional, demo, evaluate, hub, plot, sample, serve, train
from .options import HelpFormatter, Parser

# The command families, in --help order.
COMMAND_MODULES = [
    train,  # train
    sample,  # sample, nll, eval-samples
    demo,  # demo
    conditional,  # inpaint, outpaint, uncrop, edit
    evaluate,  # evaluate, fid, ref-stats
    serve,  # serve (the web demo; Gradio is imported only when it runs)
    hub,  # export
    plot,  # plot
    codec,  # compress, decompress
]


def build_parser() -> Parser:
    parser = Parser(prog="fractalgen", description="Fractal generative models: train, sample, "
                    "measure likelihood, inpaint.", formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"fractalgen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", parser_class=Parser)
    for module in COMMAND_MODULES:
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
