"""Concatenation in reverse: the signal split back into its parts."""

from __future__ import annotations

from typing import Any

import torch

from .base import POINTWISE, MirrorModule

__all__ = ["Split"]


class Split(MirrorModule):
    """The mirror of ``torch.cat(tensors, dim)``: each input gets its own slice of the signal along
    ``dim``. ``(N, C_1 + C_2 + ..., H, W) -> ((N, C_1, H, W), (N, C_2, H, W), ...)`` for ``dim=1``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.geometry = POINTWISE if dim in (1, -3) else None  # channels: positions stay where they are

    def remember(self, *tensors: torch.Tensor) -> tuple[Any, ...]:
        return (tuple(t.shape[self.dim] for t in tensors[:-1]),)

    def forward(self, signal: torch.Tensor, sizes: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(torch.split(signal, list(sizes), self.dim))

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
