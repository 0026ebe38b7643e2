"""Guided backpropagation's ReLU going down (Springenberg et al. 2014)."""

from __future__ import annotations

from typing import Any

import torch

from .base import MirrorModule

__all__ = ["GuidedRectify"]


class GuidedRectify(MirrorModule):
    """``R_{l-1} = max(R_l, 0) * [x > 0]``: the deconvnet's rectification, and only where the forward
    ReLU let its input through. Remembers that mask, one byte per activation.

    Shape: any, unchanged.
    """

    per_position = True

    def remember(self, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, ...]:
        return (y > 0,)

    def forward(self, signal: torch.Tensor, passed: torch.Tensor) -> torch.Tensor:
        return (signal * passed).clamp_(min=0)
