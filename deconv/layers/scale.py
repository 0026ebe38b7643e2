"""Multiplication by a constant, in reverse."""

from __future__ import annotations

import torch

from .base import POINTWISE, MirrorModule

__all__ = ["Scale"]


class Scale(MirrorModule):
    """The mirror of ``x * c`` (and ``x / c``) for a constant ``c``: the signal times ``c``.

    ``factor`` is a number or a constant tensor (a parameter or buffer: shared, not copied) that
    broadcasts against ``(N, C, H, W)``. Shape: unchanged.
    """

    def __init__(self, factor: float | torch.Tensor) -> None:
        super().__init__()
        self.factor = factor
        spatial = isinstance(factor, torch.Tensor) and factor.dim() >= 2 and tuple(factor.shape[-2:]) != (1, 1)
        self.geometry = None if spatial else POINTWISE
        self.per_position = not isinstance(factor, torch.Tensor) or factor.dim() <= 1  # along the last axis

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        return signal * self.factor

    def extra_repr(self) -> str:
        return (
            f"factor={self.factor}"
            if not isinstance(self.factor, torch.Tensor)
            else f"factor={tuple(self.factor.shape)}"
        )
