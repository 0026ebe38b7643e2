"""Batch normalisation in evaluation mode, in reverse: its per-channel scale."""

from __future__ import annotations

import torch
from torch import nn

from .base import MirrorModule

__all__ = ["ChannelScale"]


class ChannelScale(MirrorModule):
    """Multiplies channel ``c`` by ``weight[c] / sqrt(running_var[c] + eps)``, the linear part of an
    evaluation-mode ``batch_norm`` (its shift is a bias and, like the filters' biases, is left out).

    Reads the module's own (shared) statistics at every call. ``(N, C, ...) -> (N, C, ...)``.
    """

    def __init__(self, batch_norm: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        object.__setattr__(self, "batch_norm", batch_norm)  # read, not owned: no copy, no submodule

    def extra_repr(self) -> str:
        return f"{self.batch_norm.num_features}"

    def channel_factors(self) -> torch.Tensor:
        """``(C,)`` factors."""
        bn = self.batch_norm
        scale = torch.rsqrt(bn.running_var + bn.eps)
        return scale if bn.weight is None else scale * bn.weight

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        return signal * self.channel_factors().view(-1, *([1] * (signal.dim() - 2)))
