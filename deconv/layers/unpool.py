"""Unpooling with switches: the approximate inverse of max pooling."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .base import Geometry, MirrorModule, pair

__all__ = ["Unpool2d"]


class Unpool2d(MirrorModule):
    """Places each value at the input position its max-pool window chose (the switch).

    Where overlapping windows chose the same position their values add up (``F.max_unpool2d``
    would overwrite). ``(N, C, H_out, W_out) -> (N, C, H_in, W_in)``.

    ``adaptive`` mirrors ``AdaptiveMaxPool2d(output_size)``; otherwise ``MaxPool2d`` with the
    given kernel, stride, padding, dilation and ``ceil_mode``.
    """

    def __init__(
        self,
        kernel_size: int | tuple[int, int] = 2,
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        ceil_mode: bool = False,
        adaptive: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.adaptive = adaptive
        self.ceil_mode = ceil_mode
        if adaptive is None:
            self.geometry = Geometry(
                pair(kernel_size), pair(stride or kernel_size), pair(padding), pair(dilation)
            )
        else:
            self.geometry = None

    def switches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Max pool ``x`` ``(N, C, H_in, W_in)``, returning the output and its switches (flat input indices)."""
        if self.adaptive is not None:
            return F.adaptive_max_pool2d(x, self.adaptive, return_indices=True)
        g = self.geometry
        return F.max_pool2d(x, g.kernel, g.stride, g.padding, g.dilation, self.ceil_mode, return_indices=True)

    def remember(self, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, ...]:
        return self.switches(x)[1], tuple(x.shape[-2:])

    def restrict(self, memory: tuple[Any, ...], origin: torch.Tensor, size: tuple[int, int]) -> tuple[Any, ...]:
        switches, (_, width) = memory
        oy = origin[:, 0].view(-1, 1, 1, 1)
        ox = origin[:, 1].view(-1, 1, 1, 1)
        local = (switches // width - oy) * size[1] + (switches % width - ox)
        return local.clamp_(0, size[0] * size[1] - 1), size

    def forward(self, signal: torch.Tensor, switches: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
        n, c = signal.shape[:2]
        out = signal.new_zeros(n, c, input_size[0] * input_size[1])
        out.scatter_add_(2, switches.flatten(2), signal.flatten(2))
        return out.view(n, c, *input_size)

    def extra_repr(self) -> str:
        if self.adaptive is not None:
            return f"adaptive={self.adaptive}"
        g = self.geometry
        return f"kernel={g.kernel}, stride={g.stride}, padding={g.padding}, dilation={g.dilation}, ceil_mode={self.ceil_mode}"
