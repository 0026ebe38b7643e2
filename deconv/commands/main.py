"""The ``deconv`` command line: wires settings (config file + flags) to the commands.

Errors that ``deconv`` raises on purpose print as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path
from typing import NoReturn, Sequence

import torch

from ..errors import DeconvError, one_line
from ..zoo.models import spec_beside
from . import COMMANDS, all_options
from .config import Option, load_config, parse_pair, resolve

__all__ = ["main", "parser"]


def _add(parser: argparse.ArgumentParser, o: Option) -> None:
    default = "" if o.default in ("", [], None) else f" (default: {o.default})"
    kw = {"dest": o.key, "default": None, "help": o.help + default}
    if o.type is bool:
        parser.add_argument(o.flag, action=argparse.BooleanOptionalAction, **kw)
    elif o.type is dict:
        parser.add_argument(o.flag, nargs="*", metavar="KEY=VALUE", **kw)
    elif o.type is list:
        parser.add_argument(o.flag, nargs="*", type=o.item, metavar=o.key.upper(), **kw)
    else:
        parser.add_argument(o.flag, type=o.type, metavar=o.key.upper(), choices=o.choices, **kw)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``deconv top9: error: ...``), exit status 2; ``--help`` shows the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    """The argument parser: one subcommand per registered command, one flag per option."""
    top = _Parser(prog="deconv", description="See what a CNN's units respond to (Zeiler & Fergus deconvnet).")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        p.add_argument("--config", help="a TOML file whose keys are this command's flags (flags win)")
        for o in command.options:
            _add(p, o)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    if hasattr(sys.stdout, "reconfigure"):  # file names that are not UTF-8 print as escapes, never crash
        sys.stdout.reconfigure(errors="backslashreplace")
    args = vars(parser().parse_args(argv))
    command = COMMANDS[args.pop("command")]
    config = args.pop("config")
    try:
        file = load_config(config, [*all_options(), *command.options]) if config else {}  # the command's own types win
        if file.get("model"):  # a model file named in a config is found beside it, from any folder
            file["model"] = spec_beside(file["model"], Path(config).parent)
        for o in command.options:
            if o.type is dict and args.get(o.key) is not None:
                args[o.key] = dict(parse_pair(pair, o.flag) for pair in args[o.key])
        return command.run(command.settings.of(resolve(command.options, file, args))) or 0
    except DeconvError as error:
        print(f"deconv {command.name}: error: {error}", file=sys.stderr)
        return 2
    except (MemoryError, torch.OutOfMemoryError) as error:
        print(f"deconv {command.name}: error: {_out_of_memory(error, command.options)}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        if "can't allocate memory" not in str(error) and "out of memory" not in str(error):  # torch's allocators
            raise
        print(f"deconv {command.name}: error: {_out_of_memory(error, command.options)}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.errno not in FIXABLE:
            raise
        where = f"{error.filename}: " if error.filename else ""
        print(f"deconv {command.name}: error: {where}{error.strerror}; {FIXABLE[error.errno]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print(f"deconv {command.name}: interrupted" + (f" by {interrupt}" if str(interrupt) else ""), file=sys.stderr)
        return 130


FIXABLE = {  # the system errors a user can fix, and how
    errno.ENOSPC: "free some space or choose another --out",
    errno.EDQUOT: "free some space or choose another --out",
    errno.ENAMETOOLONG: "choose shorter names or a shorter --out",
}
SHRINK = ("batch_size", "memory_budget_mb", "top", "workers", "limit")  # settings that bound memory, most likely first


def _out_of_memory(error: BaseException, options: Sequence[Option]) -> str:
    """One line: what ran out (torch's message, e.g. the bytes it tried to allocate) and the settings that shrink it."""
    what = one_line(error, 160) or "an allocation failed"
    keys = [f"--{k.replace('_', '-')}" for k in SHRINK if k in {o.key for o in options}]
    return f"out of memory ({type(error).__name__}: {what})" + (f"; lower {', '.join(keys)}" if keys else "")


if __name__ == "__main__":
    sys.exit(main())
