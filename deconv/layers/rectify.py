"""Rectification: the paper's ReLU on the reconstruction going down."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import MirrorModule

__all__ = ["Rectify"]


class Rectify(MirrorModule):
    """``R_{l-1} = max(R_l, 0)``: passes only the positive part of the signal, whatever the forward pass did.

    Shape: any, unchanged. The deconvnet rule (Zeiler & Fergus), the default.
    """

    per_position = True
    rectifies = True

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        return F.relu(signal)
