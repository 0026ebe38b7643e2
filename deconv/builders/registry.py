"""The registry of mirrors: which mirror module each kind of layer or function gets, under each rule."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import torch
from torch import nn

from ..errors import SelectionError

__all__ = [
    "DEFAULT_RULE",
    "SIGNAL",
    "Call",
    "MirrorFactory",
    "Rule",
    "resolve_rule",
    "register_mirror",
    "unregister_mirror",
    "find_mirror_factory",
    "computes_as",
    "changed_base",
    "registered_types",
    "rules",
]

DEFAULT_RULE = "deconvnet"
"""The paper's rule: rectify the signal at every ReLU going down."""

MirrorFactory = Callable[[Any], nn.Module]
F = TypeVar("F", bound=MirrorFactory)
Target = Any  # an nn.Module subclass, or a function / tensor method (``torch.cat``, ``torch.Tensor.view``)

_FACTORIES: dict[tuple[Target, str], MirrorFactory] = {}


@dataclass(frozen=True)
class Rule:
    """A rule: what the mirror does at each ReLU going down, named as users pass it (``str(rule)`` is its
    name). A rule exists while some mirror is registered under it (:func:`register_mirror`)."""

    name: str
    description: str = ""

    def __str__(self) -> str:
        return self.name


_RULES: dict[str, Rule] = {DEFAULT_RULE: Rule(DEFAULT_RULE, "the paper's: rectify the signal at every ReLU going down")}
"""Every rule ever named, by name; :func:`rules` says which have a mirror now."""


def resolve_rule(value: str | Rule) -> Rule:
    """The registered rule named ``value`` (a name or a :class:`Rule`); ``SelectionError`` naming the valid
    rules if there is none. The one place a rule is checked."""
    name = value.name if isinstance(value, Rule) else value
    valid = rules()
    if not isinstance(name, str) or name not in valid:
        raise SelectionError(f"unknown rule {value!r}; valid rules: {', '.join(valid)}")
    return _RULES[name]


class _Signal:
    def __repr__(self) -> str:
        return "SIGNAL"


SIGNAL = _Signal()
"""Stands in a :class:`Call`'s arguments for a tensor that carries the signal (computed from the images)."""


@dataclass(frozen=True)
class Call:
    """A function call of the forward pass, as a function's mirror factory sees it.

    ``args``/``kwargs`` are the call's, with :data:`SIGNAL` for each tensor computed from the images
    and the value of each constant (numbers, parameters); ``item`` is the piece taken of a call that
    returns several (``torch.chunk(x, 2, 1)[item]``). ``name`` is the node's probe name. ``producers`` says,
    per signal argument in order, what computed it (a module's type or a function), seen through reshapes.
    """

    target: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    item: int | None = None
    name: str = ""
    producers: tuple[Any, ...] = ()

    @property
    def signals(self) -> int:
        """How many arguments carry the signal."""
        flat = [*self.args, *self.kwargs.values()]
        flat += [a for arg in flat if isinstance(arg, (list, tuple)) for a in arg]
        return sum(a is SIGNAL for a in flat)


def _key(target: Target) -> Target:
    """Tensor methods named by string (as fx records them) are keyed by the method itself; a dotted name
    (``"torchvision.ops.stochastic_depth.stochastic_depth"``) is the key of a function deconv does not import."""
    return getattr(torch.Tensor, target) if isinstance(target, str) and "." not in target else target


def _by_name(target: Target) -> str | None:
    """A function's dotted name, under which a mirror may be registered without importing its package."""
    module, name = getattr(target, "__module__", None), getattr(target, "__qualname__", None)
    return f"{module}.{name}" if isinstance(module, str) and isinstance(name, str) else None


def _name(target: Target) -> str:
    return f"{getattr(target, '__module__', None) or 'torch.Tensor'}.{getattr(target, '__qualname__', target)}"


def register_mirror(*targets: Target, rule: str | Rule = DEFAULT_RULE, override: bool = False) -> Callable[[F], F]:
    """Decorate a factory as the mirror of ``targets`` under ``rule``.

    A target is an ``nn.Module`` subclass (its subclasses match too), whose factory takes the module,
    or a function or tensor method (``F.silu``, ``torch.Tensor.view``, or a function's dotted name, so that its
    package need not be imported), whose factory takes a :class:`Call`.
    The factory returns the mirror module: ``forward(signal, *memory)`` maps a reconstruction of the
    output back to the input; subclass :class:`deconv.layers.MirrorModule` to keep memory from the
    forward pass or to declare geometry::

        @deconv.register_mirror(MyScale)
        def _(module: MyScale) -> nn.Module:
            return deconv.layers.PassThrough()

    ``rule`` names the rule the mirror belongs to (``"deconvnet"``, ``"guided"``, ``"gradient"`` or a
    new one, which this registers; a :class:`Rule` also gives its description); a target with no mirror
    under a rule uses its ``"deconvnet"`` mirror. Registering a target twice under one rule raises
    ``ValueError`` unless ``override=True``.
    """
    if not targets or not all(
        (isinstance(t, type) and issubclass(t, nn.Module))
        or (callable(t) and not isinstance(t, type))
        or (isinstance(t, str) and "." in t)
        for t in targets
    ):
        raise TypeError(f"register_mirror takes nn.Module subclasses or functions, got {targets!r}")
    entry = rule if isinstance(rule, Rule) else Rule(rule)
    if not isinstance(entry.name, str) or not entry.name.isidentifier():
        raise ValueError(f"a rule is named by an identifier such as 'guided', got {rule!r}")
    rule = entry.name

    def decorator(factory: F) -> F:
        for target in targets:
            if (_key(target), rule) in _FACTORIES and not override:
                raise ValueError(
                    f"a mirror for {_name(target)} under rule {rule!r} is already registered "
                    f"({_FACTORIES[_key(target), rule].__qualname__}); pass override=True to replace it"
                )
        _RULES.setdefault(rule, entry)  # the first entry to name a rule stays its entry
        for target in targets:
            _FACTORIES[_key(target), rule] = factory
        return factory

    return decorator


def unregister_mirror(target: Target, rule: str | Rule = DEFAULT_RULE) -> None:
    """Forget the mirror registered for exactly ``target`` under ``rule``; ``KeyError`` if there is none."""
    del _FACTORIES[_key(target), str(rule)]


def find_mirror_factory(target: nn.Module | Target, rule: str | Rule = DEFAULT_RULE) -> MirrorFactory | None:
    """The factory for a module or a function under ``rule``, falling back on the ``"deconvnet"`` one; ``None``
    if neither is registered.

    A module matches the nearest registered class in ``type(module).__mro__`` only while it computes what that
    class computes: a subclass that overrides ``forward`` or another method of the class (timm's
    ``BatchNormAct2d`` adds an activation to ``BatchNorm2d``; ``StdConv2d`` standardises its filters) does not
    match, and the walk traces through it, unless the subclass is registered itself.
    """
    keys = type(target).__mro__ if isinstance(target, nn.Module) else (_key(target), _by_name(target))
    for wanted in dict.fromkeys((str(rule), DEFAULT_RULE)):
        for key in keys:
            try:
                if (key, wanted) in _FACTORIES:
                    return _FACTORIES[key, wanted] if computes_as(keys, key) else None
            except TypeError:  # an unhashable target
                return None
    return None


def changed_base(module: nn.Module) -> type | None:
    """The registered class that ``module``'s type derives from but computes otherwise (see
    :func:`find_mirror_factory`), or ``None``."""
    mro = type(module).__mro__
    for key in mro[1:]:
        if (key, DEFAULT_RULE) in _FACTORIES:
            return None if computes_as(mro, key) else key
    return None


KEEPS_COMPUTATION = frozenset({"__init__", "__repr__", "extra_repr", "reset_parameters", "_load_from_state_dict"})
"""Methods a subclass may override and still compute what its registered class computes."""


def computes_as(mro: tuple[type, ...], base: type) -> bool:
    """Whether the classes before ``base`` in ``mro`` (a module type's ``__mro__``) leave every method of
    ``base`` as it is, but for :data:`KEEPS_COMPUTATION`: then the module computes what ``base`` does."""
    if not isinstance(base, type):
        return True  # a function
    below = mro[: mro.index(base)]
    return not any(
        callable(value) and name not in KEEPS_COMPUTATION and hasattr(base, name)
        for cls in below
        for name, value in vars(cls).items()
    )


def registered_types() -> tuple[Target, ...]:
    """Every registered module type and function, in registration order."""
    return tuple(dict.fromkeys(target for target, _ in _FACTORIES))


def rules() -> tuple[str, ...]:
    """The names of every rule some mirror is registered under, ``"deconvnet"`` first (see :func:`resolve_rule`
    for their :class:`Rule` entries)."""
    return tuple(dict.fromkeys([DEFAULT_RULE, *(rule for _, rule in _FACTORIES)]))
