"""Permuting dimensions, in reverse."""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..errors import InputError
from .base import MirrorModule

__all__ = ["Unpermute"]

Order = Callable[[int], tuple[int, ...]]
"""The permutation a call made of a tensor with this many dimensions: ``ndim -> dims``."""


class Unpermute(MirrorModule):
    """The mirror of ``permute`` and ``transpose``: the inverse permutation. The batch stays first.

    Shape: ``(N, ...)`` permuted back.
    """

    geometry = None

    def __init__(self, order: Order, description: str = "") -> None:
        super().__init__()
        self.order = order
        self.description = description

    def remember(self, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, ...]:
        dims = tuple(d % x.dim() for d in self.order(x.dim()))
        if dims[0] != 0:
            raise InputError(
                f"{self.description or 'a permutation'} moves the batch dimension; only the others can be mirrored"
            )
        return (tuple(sorted(range(len(dims)), key=dims.__getitem__)),)

    def forward(self, signal: torch.Tensor, inverse: tuple[int, ...]) -> torch.Tensor:
        return signal.permute(inverse)

    def extra_repr(self) -> str:
        return self.description
