"""Addition in reverse: every operand receives the signal."""

from __future__ import annotations

from typing import Any

import torch

from .base import MirrorModule

__all__ = ["Distribute"]


class Distribute(MirrorModule):
    """The mirror of ``x + y`` (``torch.add``, ``out += identity``): each operand gets the signal as it
    is, summed over the dimensions the addition broadcast it along. ``(N, ...) -> tuple of (N, ...)``.
    """

    per_position = True

    def remember(self, *tensors: torch.Tensor) -> tuple[Any, ...]:
        *inputs, output = tensors
        return tuple(tuple(t.shape[1:]) for t in inputs), tuple(output.shape[1:])

    def forward(
        self, signal: torch.Tensor, shapes: tuple[tuple[int, ...], ...], output: tuple[int, ...]
    ) -> tuple[torch.Tensor, ...]:
        return tuple(_unbroadcast(signal, shape, output) for shape in shapes)


def _unbroadcast(signal: torch.Tensor, shape: tuple[int, ...], output: tuple[int, ...]) -> torch.Tensor:
    """``signal`` summed over the dimensions where ``shape`` was broadcast up to ``output`` (batch left out)."""
    if shape == output:
        return signal
    lead = len(output) - len(shape)
    dims = [1 + d for d in range(len(output)) if d < lead or (shape[d - lead] == 1 and output[d] != 1)]
    out = signal.sum(dims, keepdim=True) if dims else signal
    return out.reshape(out.shape[0], *out.shape[1 + lead :])
