"""A product of two tensors computed from the images, in reverse: a gate (squeeze-excite, ECA) or its exact VJP."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import UnsupportedModuleError
from .base import MirrorModule
from .distribute import _unbroadcast

__all__ = ["Gated", "Product", "Ungated"]


def _compact(t: torch.Tensor) -> torch.Tensor:
    """A factor kept from the forward pass: ``(N, C, 1, 1)`` as ``(N, C)``, so that the engine, which cuts
    per-image maps to the window it projects, picks it per image instead."""
    return t.flatten(1) if t.dim() == 4 and t.shape[-2:] == (1, 1) else t


def _full(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A kept factor back in the shape it had in the forward pass (batch left out)."""
    return t.view(t.shape[0], *shape) if t.dim() != len(shape) + 1 else t


class Gated(MirrorModule):
    """``x * g`` where ``g`` is a gate (the output of a sigmoid, hardsigmoid, softmax or tanh), under the deconvnet
    and guided rules: the gate keeps its forward value as a constant, ``R_x = R * g``, and no signal enters the
    gate's branch (input ``gate`` is ``silent``). ``(N, C, H, W) -> (R_x, None)`` in the inputs' order."""

    per_position = True

    def __init__(self, gate: int) -> None:
        super().__init__()
        self.gate = gate
        self.silent = (gate,)

    def remember(self, a: torch.Tensor, b: torch.Tensor, y: torch.Tensor) -> tuple[Any, ...]:
        g = (a, b)[self.gate]
        return _compact(g), tuple(g.shape[1:])

    def forward(self, signal: torch.Tensor, gate: torch.Tensor, shape: tuple[int, ...]) -> tuple[Any, ...]:
        through = signal * _full(gate, shape)
        return (None, through) if self.gate == 0 else (through, None)

    def extra_repr(self) -> str:
        return f"gate={self.gate}"


class Product(MirrorModule):
    """``a * b`` under the gradient rule, the product rule: ``R_a = R * b`` and ``R_b = R * a``, each summed over
    the dimensions the product broadcast it along. ``(N, ...) -> (R_a, R_b)``."""

    per_position = True

    def remember(self, a: torch.Tensor, b: torch.Tensor, y: torch.Tensor) -> tuple[Any, ...]:
        return _compact(a), _compact(b), tuple(a.shape[1:]), tuple(b.shape[1:]), tuple(y.shape[1:])

    def forward(
        self,
        signal: torch.Tensor,
        a: torch.Tensor,
        b: torch.Tensor,
        shape_a: tuple[int, ...],
        shape_b: tuple[int, ...],
        output: tuple[int, ...],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = _full(a, shape_a), _full(b, shape_b)
        return _unbroadcast(signal * b, shape_a, output), _unbroadcast(signal * a, shape_b, output)


class Ungated(MirrorModule):
    """A gate's own function (sigmoid, hardsigmoid, tanh, softmax) under the deconvnet and guided rules: no signal
    reaches it, since its gate product sends none (``stops``); the walk refuses a model that uses it otherwise,
    and projecting from inside the gate's branch is refused here."""

    per_position = True
    stops = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        raise UnsupportedModuleError(
            f"{self.name} is reached by the signal outside a gate (x * {self.name}(...)); under the deconvnet "
            "and guided rules only gates are mirrored (the gradient rule mirrors it as it is)"
        )

    def extra_repr(self) -> str:
        return self.name
