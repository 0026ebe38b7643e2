"""Layers that do nothing at inference: their mirror does nothing too."""

from __future__ import annotations

import torch

from .base import MirrorModule

__all__ = ["PassThrough"]


class PassThrough(MirrorModule):
    """Identity, for ``Dropout`` (in evaluation mode) and ``Identity``. Shape: any, unchanged."""

    per_position = True

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        return signal
