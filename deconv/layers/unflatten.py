"""The reverse of flattening feature maps into a vector."""
from __future__ import annotations

from typing import Any

import torch

from .base import MirrorModule

__all__ = ["Unflatten"]


class Unflatten(MirrorModule):
    """Restores the shape the forward pass flattened: ``(N, C*H*W) -> (N, C, H, W)``."""

    geometry = None

    def remember(self, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, ...]:
        return (tuple(x.shape[1:]),)

    def forward(self, signal: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        return signal.reshape(signal.shape[0], *shape)
