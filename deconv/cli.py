"""The ``deconv`` command line: wires settings (config file + flags) to the commands.

Errors that ``deconv`` raises on purpose print as one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .commands import COMMANDS, all_options
from .config import Option, load_config, resolve
from .errors import DeconvError

__all__ = ["main", "parser"]


def _add(parser: argparse.ArgumentParser, o: Option) -> None:
    default = "" if o.default in ("", [], None) else f" (default: {o.default})"
    kw = {"dest": o.key, "default": None, "help": o.help + default}
    if o.type is bool:
        parser.add_argument(o.flag, action=argparse.BooleanOptionalAction, **kw)
    elif o.type is list:
        parser.add_argument(o.flag, nargs="*", type=o.item, metavar=o.key.upper(), **kw)
    else:
        parser.add_argument(o.flag, type=o.type, metavar=o.key.upper(), choices=o.choices, **kw)


def parser() -> argparse.ArgumentParser:
    """The argument parser: one subcommand per registered command, one flag per option."""
    top = argparse.ArgumentParser(prog="deconv", description="See what a CNN's units respond to (Zeiler & Fergus deconvnet).")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
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
        file = load_config(config, all_options()) if config else {}
        return command.run(resolve(command.options, file, args)) or 0
    except DeconvError as error:
        print(f"deconv {command.name}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print(f"deconv {command.name}: interrupted" + (f" by {interrupt}" if str(interrupt) else ""), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
