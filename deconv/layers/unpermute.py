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
    """The mirror of ``permute`` and ``transpose``: the inverse permutation. The batch stays first. ``ndim``: the
    dimensions of the tensors the permutation is for, where the call names them all (``permute``).

    Shape: ``(N, ...)`` permuted back.
    """

    geometry = None

    def __init__(self, order: Order, description: str = "", ndim: int | None = None) -> None:
        super().__init__()
        self.order = order
        self.description = description
        self.ndim = ndim

    def permutation(self, ndim: int) -> tuple[int, ...] | None:
        """The permutation of a tensor of ``ndim`` dimensions, where the call fixes it for that many (``permute``
        names every axis; ``transpose`` takes a tensor of any)."""
        return self._dims(ndim) if ndim == self.ndim else None

    def _dims(self, ndim: int) -> tuple[int, ...]:
        return tuple(d % ndim for d in self.order(ndim))

    def remember(self, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, ...]:
        dims = self._dims(x.dim())
        if dims[0] != 0:
            raise InputError(
                f"{self.description or 'a permutation'} moves the batch dimension; only the others can be mirrored"
            )
        return (tuple(sorted(range(len(dims)), key=dims.__getitem__)),)

    def forward(self, signal: torch.Tensor, inverse: tuple[int, ...]) -> torch.Tensor:
        return signal.permute(inverse)

    def extra_repr(self) -> str:
        return self.description
