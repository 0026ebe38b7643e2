"""From a model to its mirror: the registry of mirrors and the walk over a network."""

from . import builtins as _builtins  # noqa: F401  (registers the built-in mirrors)
from .registry import (
    DEFAULT_RULE,
    SIGNAL,
    Call,
    Rule,
    find_mirror_factory,
    register_mirror,
    registered_types,
    resolve_rule,
    rules,
    unregister_mirror,
)
from .walk import walk

__all__ = [
    "DEFAULT_RULE",
    "SIGNAL",
    "Call",
    "Rule",
    "resolve_rule",
    "register_mirror",
    "unregister_mirror",
    "find_mirror_factory",
    "registered_types",
    "rules",
    "walk",
]
