"""A mean over dimensions, in reverse: the transpose of averaging."""

from __future__ import annotations

from typing import Any

import torch

from .base import MirrorModule

__all__ = ["TransposedMean"]


class TransposedMean(MirrorModule):
    """The mirror of ``x.mean(dims, keepdim)`` (global average pooling as ShuffleNet writes it): each
    value spread evenly over what it averaged. ``(N, C) -> (N, C, H, W)`` for ``dims=(2, 3)``.
    """

    geometry = None

    def __init__(self, dims: tuple[int, ...], keepdim: bool = False) -> None:
        super().__init__()
        self.dims = dims
        self.keepdim = keepdim

    def remember(self, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, ...]:
        return (tuple(x.shape[1:]),)

    def forward(self, signal: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        dims = sorted(d % (len(shape) + 1) for d in self.dims)
        if not self.keepdim:
            for d in dims:
                signal = signal.unsqueeze(d)
        count = 1
        for d in dims:
            count *= shape[d - 1]
        return signal.expand(signal.shape[0], *shape) / count

    def extra_repr(self) -> str:
        return f"dims={self.dims}, keepdim={self.keepdim}"
