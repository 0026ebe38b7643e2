"""Filtering in reverse: transposed convolution with the convolution's own filters."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import Geometry, MirrorModule, pair

__all__ = ["TransposedFilter"]


class TransposedFilter(MirrorModule):
    """Convolves the signal with the transposed filters of ``conv``; no bias.

    ``weight`` *is* ``conv.weight`` (shared, never copied). Any stride, padding, dilation, groups
    and kernel shape; the output has exactly the size of the conv's input in the forward pass.
    ``(N, C_out, H_out, W_out) -> (N, C_in, H_in, W_in)``.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if isinstance(conv.padding, str):  # "same" / "valid": resolve to numbers
            padding = (0, 0) if conv.padding == "valid" else tuple(
                d * (k - 1) // 2 for k, d in zip(conv.kernel_size, conv.dilation)
            )
        else:
            padding = pair(conv.padding)
        self.weight = conv.weight
        self.groups = conv.groups
        self.in_channels = conv.in_channels
        self.geometry = Geometry(pair(conv.kernel_size), pair(conv.stride), padding, pair(conv.dilation))

    def remember(self, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, ...]:
        return tuple(x.shape[-2:]), self.geometry.padding

    def restrict(self, memory: tuple[Any, ...], origin: torch.Tensor, size: tuple[int, int]) -> tuple[Any, ...]:
        return size, (0, 0)

    def forward(
        self, signal: torch.Tensor, input_size: tuple[int, int], padding: tuple[int, int]
    ) -> torch.Tensor:
        """``padding``: rows and columns of the full transposed output that lie before the input's first."""
        g = self.geometry
        extra = [
            input_size[a] - ((signal.shape[2 + a] - 1) * g.stride[a] - 2 * padding[a] + g.span(a))
            for a in (0, 1)
        ]
        cut = [min(e, 0) for e in extra]  # conv padding "same" can ask for a smaller output than full
        out = F.conv_transpose2d(
            signal, self.weight, None, g.stride, padding,
            [max(e, 0) for e in extra], self.groups, g.dilation,
        )
        if cut != [0, 0]:
            out = out[..., : input_size[0], : input_size[1]]
        return out

    def extra_repr(self) -> str:
        g = self.geometry
        return (
            f"{self.weight.shape[0]}->{self.weight.shape[1] * self.groups}, kernel={g.kernel}, "
            f"stride={g.stride}, padding={g.padding}, dilation={g.dilation}, groups={self.groups}"
        )
