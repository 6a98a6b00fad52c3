"""The `gpt2lab` command: a thin argparse layer over the library, one module per subcommand.

Each module has `add_command(commands)` (its flags, and `run` set to the function that executes it) and that
`run(args) -> int` (library calls, printing, the exit code). `main` runs it: a `GPT2LabError` (bad user input) or
an OS refusal becomes one line on stderr and exit code 2, said once under torchrun (every process runs the command:
train, eval), whose workers then leave through `distributed.exit_process`. A `BadValue` from the library names
its parameter (`batch_size`); the line names the flag the user typed (`--batch-size`).
"""

from __future__ import annotations

import argparse
import sys

from gpt2lab.errors import BadValue, GPT2LabError
from gpt2lab.runtime import distributed


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of argparse's usage dump
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from gpt2lab.cli import bench, eval, export, inspect, plot, prepare, sample, serve, train

    parser = _Parser(
        prog="gpt2lab",
        description="GPT-2 from scratch: look inside it, sample it, prepare data, train, evaluate, benchmark.",
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    # in the order `gpt2lab --help` lists them
    for command in (inspect, sample, prepare, train, export, eval, serve, plot, bench):
        p = command.add_command(commands)
        p.set_defaults(parser=p)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    # `gpt2lab train` also takes any config key as a dotted flag (`--optim.lr 3e-4`): left over by argparse.
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_config_flags", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.config_flags = extra
    if not distributed.launched_by_torchrun():
        return run_command(args)
    # Under torchrun every process runs the command (train, eval): rank 0 says a user error, the same on every
    # rank, once; and a worker must leave through exit_process (see there for why), which never returns.
    distributed.exit_process(run_command(args, say_user_errors=distributed.launch().rank == 0))


def run_command(args, say_user_errors: bool = True) -> int:
    """Run the subcommand; what the user or the OS got wrong becomes one line on stderr and exit code 2."""
    try:
        return args.run(args)
    except GPT2LabError as e:
        if say_user_errors:
            print(f"gpt2lab {args.command}: error: {user_message(e, args.parser)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `gpt2lab sample ... | head`: the reader has all it wanted (before OSError, its base)
        return 0
    except OSError as e:
        if e.errno is None:
            raise
        # The OS refused something the library did not wrap (a read, say): still one line, naming the path.
        where = f"{e.filename}: " if e.filename else ""
        print(f"gpt2lab {args.command}: error: {where}{e.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gpt2lab {args.command}: interrupted", file=sys.stderr)
        return 130


def user_message(error: GPT2LabError, parser: argparse.ArgumentParser) -> str:
    """The error's sentence, a library parameter named as the command's flag for it (`batch_size` ->
    `--batch-size`); a parameter the command has no flag for (a training config key) stays as it is."""
    if isinstance(error, BadValue):
        flag = flag_for(parser, error.param)
        if flag:
            return error.named(flag)
    return str(error)


def flag_for(parser: argparse.ArgumentParser, param: str) -> str | None:
    for action in parser._actions:
        if action.dest == param and action.option_strings:
            return max(action.option_strings, key=len)  # the long form: --batch-size, not -b
    return None


def _version() -> str:
    from gpt2lab import __version__

    return f"gpt2lab {__version__}"
