"""The registry of mirrors: which mirror module each kind of layer gets."""
from __future__ import annotations

from typing import Callable, TypeVar

from torch import nn

__all__ = ["MirrorFactory", "register_mirror", "unregister_mirror", "find_mirror_factory", "registered_types"]

MirrorFactory = Callable[[nn.Module], nn.Module]
F = TypeVar("F", bound=MirrorFactory)

_FACTORIES: dict[type[nn.Module], MirrorFactory] = {}


def register_mirror(*module_types: type[nn.Module], override: bool = False) -> Callable[[F], F]:
    """Decorate a factory ``(module) -> mirror module`` as the mirror of ``module_types`` and their subclasses.

    The mirror module's ``forward(signal, *memory)`` maps a reconstruction of the layer's output back
    to its input; subclass :class:`deconv.layers.MirrorModule` to keep memory from the forward pass::

        @deconv.register_mirror(MyScale)
        def _(module: MyScale) -> nn.Module:
            return deconv.layers.PassThrough()

    Registering a type twice raises ``ValueError`` unless ``override=True``.
    """
    if not module_types or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in module_types):
        raise TypeError(f"register_mirror takes nn.Module subclasses, got {module_types!r}")

    def decorator(factory: F) -> F:
        for module_type in module_types:
            if module_type in _FACTORIES and not override:
                raise ValueError(
                    f"a mirror for {module_type.__module__}.{module_type.__qualname__} is already registered "
                    f"({_FACTORIES[module_type].__qualname__}); pass override=True to replace it"
                )
        for module_type in module_types:
            _FACTORIES[module_type] = factory
        return factory

    return decorator


def unregister_mirror(module_type: type[nn.Module]) -> None:
    """Forget the mirror registered for exactly ``module_type``; ``KeyError`` if there is none."""
    del _FACTORIES[module_type]


def find_mirror_factory(module: nn.Module) -> MirrorFactory | None:
    """The factory registered for the nearest class in ``type(module).__mro__``, or ``None``."""
    for cls in type(module).__mro__:
        if cls in _FACTORIES:
            return _FACTORIES[cls]
    return None


def registered_types() -> tuple[type[nn.Module], ...]:
    """Every registered module type, in registration order."""
    return tuple(_FACTORIES)
