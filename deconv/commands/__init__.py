"""The ``deconv`` commands. Each module registers one with :func:`command`; the CLI reads the registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .config import Option, Settings

__all__ = ["Command", "COMMANDS", "command", "all_options"]

Run = Callable[[Any], int | None]


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, one-line help, settings class and what it runs on the settings."""

    name: str
    help: str
    settings: type[Settings]
    run: Run

    @property
    def options(self) -> tuple[Option, ...]:
        """The command's settings: one flag and one config key each."""
        return self.settings.options


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, settings: type[Settings]) -> Callable[[Run], Run]:
    """Registers ``run(settings)`` as the command ``name``; it runs on a ``settings`` object built from the
    resolved flags and config file."""

    def decorator(run: Run) -> Run:
        COMMANDS[name] = Command(name, help, settings, run)
        return run

    return decorator


def all_options() -> list[Option]:
    """Every command's options, each key once: the keys a config file may hold."""
    return list({o.key: o for c in COMMANDS.values() for o in c.options}.values())


from . import evolution, layers, occlusion, project, serve, top9, train  # noqa: E402,F401  (register the commands)
