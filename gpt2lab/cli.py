"""The `gpt2lab` command: a thin argparse layer over the library. Each subcommand parses its flags, calls
library functions, and prints. A `GPT2LabError` (bad user input) becomes one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys

from gpt2lab.errors import GPT2LabError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of argparse's usage dump
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gpt2lab", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for add_command in COMMANDS:
        add_command(commands)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except GPT2LabError as e:
        print(f"gpt2lab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gpt2lab {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `gpt2lab sample ... | head`
        return 0


def _version() -> str:
    from gpt2lab import __version__

    return f"gpt2lab {__version__}"


# Each entry adds one subcommand (its flags, and `run` set to the function that executes it).
COMMANDS = []
