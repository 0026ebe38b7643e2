"""Average pooling in reverse: the transpose of averaging."""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from .base import MirrorModule

__all__ = ["TransposedAverage"]

# One axis of a 2-d average pool: ``(n, 1, n, 1) -> (n, 1, m, 1)``, given the axis (0 = h, 1 = w).
AxisPool = Callable[[torch.Tensor, int], torch.Tensor]


class TransposedAverage(MirrorModule):
    """Spreads each value back over the window it averaged, with the weights the average used.

    Average pooling is separable: ``y = P_h x P_w^T`` with ``P`` ``(out, in)`` per axis. The matrices
    come from running the layer's own pooling along one axis on an identity, so padding,
    ``ceil_mode``, ``count_include_pad``, ``divisor_override`` and adaptive windows are exactly
    those of the forward pass. ``(N, C, H_out, W_out) -> (N, C, H_in, W_in)``.
    """

    geometry = None

    def __init__(self, axis_pool: AxisPool, description: str = "") -> None:
        super().__init__()
        self.axis_pool = axis_pool
        self.description = description

    def remember(self, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, ...]:
        return (tuple(x.shape[-2:]),)

    def matrix(self, size: int, axis: int, like: torch.Tensor) -> torch.Tensor:
        """``(out, in)`` averaging matrix of one axis."""
        eye = torch.eye(size, dtype=like.dtype, device=like.device).view(size, 1, size, 1)
        return self.axis_pool(eye, axis).view(size, -1).T

    def forward(self, signal: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
        p_h = self.matrix(input_size[0], 0, signal)
        p_w = self.matrix(input_size[1], 1, signal)
        return torch.einsum("nchw,hi,wj->ncij", signal, p_h, p_w)

    def extra_repr(self) -> str:
        return self.description


def average_axis_pool(
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> AxisPool:
    """``AxisPool`` of ``F.avg_pool2d`` with these settings (the divisor override goes on the h axis)."""

    def pool(eye: torch.Tensor, axis: int) -> torch.Tensor:
        return F.avg_pool2d(
            eye,
            (kernel_size[axis], 1),
            (stride[axis], 1),
            (padding[axis], 0),
            ceil_mode,
            count_include_pad,
            divisor_override if axis == 0 else (None if divisor_override is None else 1),
        )

    return pool


def adaptive_axis_pool(output_size: tuple[int | None, int | None]) -> AxisPool:
    """``AxisPool`` of ``F.adaptive_avg_pool2d`` to ``output_size`` (``None`` keeps that axis)."""

    def pool(eye: torch.Tensor, axis: int) -> torch.Tensor:
        out = output_size[axis]
        return F.adaptive_avg_pool2d(eye, (eye.shape[2] if out is None else out, 1))

    return pool
