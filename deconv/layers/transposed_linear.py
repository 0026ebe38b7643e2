"""A fully-connected layer in reverse: multiplication by its transposed weight."""

from __future__ import annotations

import torch
from torch import nn

from .base import MirrorModule

__all__ = ["TransposedLinear"]


class TransposedLinear(MirrorModule):
    """``signal @ W`` with ``W`` *the* ``linear.weight`` ``(out, in)``; no bias. Takes per-channel
    ``factors`` ``(out,)`` of its signal into ``W``. ``(N, out) -> (N, in)``."""

    per_position = True
    geometry = None
    takes_factors = True

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        object.__setattr__(self, "linear", linear)  # read, not owned: no copy, no submodule

    @property
    def weight(self) -> torch.Tensor:
        """The layer's weight ``(out, in)``, read at every call: shared; a parameter replaced on the model is used."""
        return self.linear.weight

    def forward(self, signal: torch.Tensor, factors: torch.Tensor | None = None) -> torch.Tensor:
        return signal @ (self.weight if factors is None else self.weight * factors.view(-1, 1))

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}->{self.weight.shape[1]}"
