"""The ``deconv`` command line: wires settings (config file + flags) to the commands.

Errors that ``deconv`` raises on purpose print as one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from .commands import COMMANDS, all_options
from .config import Option, load_config, parse_pair, resolve
from .errors import DeconvError
from .models import spec_beside

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
        return command.run(resolve(command.options, file, args)) or 0
    except DeconvError as error:
        print(f"deconv {command.name}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print(f"deconv {command.name}: interrupted" + (f" by {interrupt}" if str(interrupt) else ""), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
