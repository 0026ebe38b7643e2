"""The ReLU's own backward pass: the plain gradient (Simonyan et al. 2013 saliency)."""

from __future__ import annotations

from typing import Any

import torch

from .base import MirrorModule

__all__ = ["ReLUGradient"]


class ReLUGradient(MirrorModule):
    """``R_{l-1} = R_l * [x > 0]``: passes the signal, of either sign, where the forward ReLU let its
    input through. Remembers that mask, one byte per activation.

    Shape: any, unchanged.
    """

    per_position = True

    def remember(self, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, ...]:
        return (y > 0,)

    def forward(self, signal: torch.Tensor, passed: torch.Tensor) -> torch.Tensor:
        return signal * passed
