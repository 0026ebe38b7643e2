"""Settings shared by TOML config files and command-line flags: one table, so they cannot drift.

A config key is a flag without its dashes (``batch_size`` is ``--batch-size``). Flags win over the
file, the file over the defaults. Unknown keys and wrong types are errors naming the file and key.
A command reads its resolved settings as a :class:`Settings`: a frozen dataclass whose fields are
the table's keys, checked against the table when the class is made.
"""

from __future__ import annotations

import json
import re
import tomllib
import typing
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Mapping, TypeVar

from ..errors import ConfigError

__all__ = ["Option", "Settings", "with_options", "load_config", "resolve", "dump_toml", "parse_pair"]

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


S = TypeVar("S", bound="Settings")

FIELD_TYPES = {list: tuple}  # a list setting is held as a tuple: settings are immutable


class Settings:
    """Typed settings: a frozen dataclass made by :func:`with_options`, whose fields are option keys or parts
    (other such classes, e.g. the model's settings), in the order of :attr:`options`."""

    options: ClassVar[tuple[Option, ...]] = ()
    """The whole table, the parts' options in their place: what ``--help`` and config files show."""
    _parts: ClassVar[dict[str, type[Settings]]] = {}
    _own: ClassVar[dict[str, Option]] = {}

    @classmethod
    def of(cls: type[S], values: Mapping[str, Any]) -> S:
        """From resolved settings (:func:`resolve`): keys of other commands are ignored, missing keys take
        their defaults."""
        kw = {name: part.of(values) for name, part in cls._parts.items()}
        for key, o in cls._own.items():
            value = values.get(key, o.default)
            kw[key] = tuple(value) if o.type is list else value
        return cls(**kw)

    def values(self) -> dict[str, Any]:
        """The settings by key, in the table's order, as :func:`resolve` gives them (lists as lists)."""
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name in self._parts:
                out.update(value.values())
            else:
                out[f.name] = list(value) if self._own[f.name].type is list else value
        return out


def with_options(*options: Option) -> Callable[[type[S]], type[S]]:
    """Makes a :class:`Settings` subclass a frozen dataclass of ``options`` and parts. Its fields, in
    order, are each a key of ``options`` (annotated with its type; a list as a tuple) or a part,
    whose options take its place in :attr:`Settings.options`. ``TypeError`` where they drift apart."""

    def make(cls: type[S]) -> type[S]:
        cls = dataclass(frozen=True)(cls)
        hints = typing.get_type_hints(cls)
        own, table = {o.key: o for o in options}, []
        cls._parts, cls._own = {}, {}
        for f in fields(cls):  # type: ignore[arg-type]
            hint = hints[f.name]
            if isinstance(hint, type) and is_dataclass(hint) and issubclass(hint, Settings):
                cls._parts[f.name] = hint
                table += hint.options
                continue
            o = own.pop(f.name, None)
            if o is None or (typing.get_origin(hint) or hint) is not FIELD_TYPES.get(o.type, o.type):
                raise TypeError(f"{cls.__name__}.{f.name}: no option of its name and type")
            cls._own[f.name] = o
            table.append(o)
        if own:
            raise TypeError(f"{cls.__name__}: options without a field: {', '.join(own)}")
        cls.options = tuple(table)
        return cls

    return make


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

    Integers beyond ``LARGEST`` are refused. A value with bytes that are not UTF-8 (a path from the command
    line) is refused: it could not be written to ``config.toml`` and read back."""
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
