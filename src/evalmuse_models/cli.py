"""The ``evalmuse`` command line.

Every sub-command lives in its own module under :mod:`evalmuse_models.commands` and exposes
``register(subparsers)``; this module discovers them and turns input errors into one-line
messages with exit status 2. Command modules must stay cheap to
import (heavy imports go inside the function that runs the command), so that
``evalmuse --help`` answers instantly: the console script does not even register the model
families with transformers until a command runs.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from . import __version__, commands
from .utils import UserInputError

#: Errors that mean "your input is wrong", reported as one line (exit status 2) rather than a traceback.
USER_ERRORS = (UserInputError, FileExistsError, FileNotFoundError, IsADirectoryError, NotADirectoryError)
#: Errors of the machine rather than of the program (full disk, permissions, read-only file system),
#: reported as one line with exit status 1.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show an option's default unless it says nothing (None, a False flag) or the help already gives it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS or "default" in text:
            return text
        return super()._get_help_string(action)


def _use_formatter(parser: argparse.ArgumentParser) -> None:
    """One help style for every command and sub-command."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _use_formatter(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evalmuse",
        description="Fine-grained quality assessment of text-to-image generations (EvalMuse).",
    )
    parser.add_argument("--version", action="version", version=f"evalmuse-models {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(subparsers)
    _use_formatter(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        # A bare `evalmuse` or a command group without its sub-command: show the relevant help.
        (getattr(args, "_parser", None) or parser).print_help()
        return 2
    from . import register

    register()  # deferred by the console script until a command runs (see evalmuse_models.__init__)
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return status
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`evalmuse eval ... --json | head`): stop quietly, like other Unix tools.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as err:
        if err.errno not in _ENVIRONMENT_ERRNOS:
            raise
        # The disk or the file system refused a write (full disk, no permission, read-only): the
        # outputs are atomic or resumable, so say what happened in one line.
        where = f": {err.filename}" if err.filename else ""
        print(f"error: {err.strerror or err}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
