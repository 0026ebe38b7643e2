"""Settings shared by TOML config files and command-line flags: one table, so they cannot drift.

A config key is a flag without its dashes (``batch_size`` is ``--batch-size``). Flags win over the
file, the file over the defaults. Unknown keys and wrong types are errors naming the file and key.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..errors import ConfigError

__all__ = ["Option", "option", "load_config", "resolve", "dump_toml", "parse_pair"]

LARGEST = 2**31 - 1  # the largest integer setting: beyond it counts and sizes overflow torch's


@dataclass(frozen=True)
class Option:
    """One setting: its key, type (``str``, ``int``, ``float``, ``bool``, ``list`` or ``dict``: a TOML table,
    ``--flag KEY=VALUE ...`` on the command line), default and help.

    ``item`` is the element type of a list. ``choices`` restricts the values.
    """

    key: str
    type: type
    default: Any
    help: str
    item: type | None = None
    choices: tuple[Any, ...] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    def check(self, value: Any, where: str) -> Any:
        """``value`` converted to this option's type, or ``ConfigError`` naming ``where`` and the key."""
        expected = self.type
        if expected is list:
            if not isinstance(value, list):
                raise ConfigError(f"{where}: key {self.key!r} must be a list of {_name(self.item)}, got {_show(value)}")
            return [Option(self.key, self.item, None, "").check(v, where) for v in value]
        if expected is dict:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: key {self.key!r} must be a table (KEY=VALUE pairs), got {_show(value)}")
            return value
        ok = (
            isinstance(value, bool)
            if expected is bool
            else isinstance(value, int) and not isinstance(value, bool)
            if expected is int
            else isinstance(value, (int, float)) and not isinstance(value, bool)
            if expected is float
            else isinstance(value, expected)
        )
        if not ok:
            raise ConfigError(f"{where}: key {self.key!r} must be {_name(expected)}, got {_show(value)}")
        value = float(value) if expected is float else value
        if self.choices is not None and value not in self.choices:
            raise ConfigError(
                f"{where}: key {self.key!r} must be one of {', '.join(map(repr, self.choices))}, got {value!r}"
            )
        return value


def option(key: str, type: type, default: Any, help: str, **kw: Any) -> Option:
    return Option(key, type, default, help, **kw)


def _name(t: type | None) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list",
        dict: "a table",
    }
    return names.get(t, str(t))


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def load_config(path: str | Path, options: Iterable[Option]) -> dict[str, Any]:
    """Reads and checks a TOML config; keys must be among ``options``."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config ({error.strerror or error})") from None
    try:
        source = text.decode("utf-8")
        data = tomllib.loads(source)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from None
    known = {o.key: o for o in options}
    out = {}
    for key, value in data.items():
        where = _where(path, source, key)
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r} (valid keys: {', '.join(sorted(known))})")
        out[key] = known[key].check(value, where)
    return out


def _where(path: Path, source: str, key: str) -> str:
    """``path, line N`` of the line that sets top-level ``key`` (or a table of that name), else ``path``."""
    match = re.search(rf"^[ \t]*\[*[ \t]*[\"']?{re.escape(key)}[\"']?[ \t]*[=.\]]", source, re.MULTILINE)
    return f"{path}, line {source.count(chr(10), 0, match.start()) + 1}" if match else str(path)


def resolve(options: Iterable[Option], file: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """Defaults, overridden by the config file, overridden by flags that were given (not ``None``).

    Integers beyond ``LARGEST`` are refused. A value with bytes that are not UTF-8 (a path from the command line) is refused: it could not be
    written to ``config.toml`` and read back."""
    settings = {o.key: o.default for o in options}
    settings.update({k: v for k, v in file.items() if k in settings})
    settings.update({k: v for k, v in flags.items() if v is not None and k in settings})
    for key, value in settings.items():
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, int) and not -LARGEST <= text <= LARGEST:
                raise ConfigError(f"key {key!r} must be between {-LARGEST} and {LARGEST}, got {text}")
            if isinstance(text, str) and not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    raise ConfigError(
                        f"key {key!r}: {text!r} holds bytes that are not UTF-8; rename it or choose another path"
                    ) from None
    return settings


def dump_toml(settings: dict[str, Any], header: str = "") -> str:
    """``settings`` (scalars and lists of scalars; ``None`` left out) as TOML text."""
    lines = [f"# {line}" for line in header.splitlines()]
    for key, value in settings.items():
        if value is not None:
            lines.append(f"{key} = {_toml(value)}")
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))


def parse_pair(text: str, flag: str = "") -> tuple[str, Any]:
    """``"KEY=VALUE"`` from a command line: the value as a TOML value (``5``, ``true``, ``[1, 2]``) or else
    as a string; ``ConfigError`` without ``=``."""
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise ConfigError(f"{flag or 'a table flag'}: expected KEY=VALUE, got {text!r}")
    try:
        return key, tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return key, value
