"""Slicing in reverse: the signal put back into its place among zeros."""

from __future__ import annotations

from typing import Any, Callable

import torch

from .base import POINTWISE, MirrorModule

__all__ = ["Embed"]

Index = Callable[[tuple[int, ...]], tuple[Any, ...]]
"""Where a slice took its part, given the input's shape without the batch: ``shape -> index`` (slices
and integers for the dimensions after the batch)."""


class Embed(MirrorModule):
    """The mirror of taking a part of a tensor (``x[:, :c]``, ``x[:, :, 0, 0]``,
    ``torch.chunk(x, 2, 1)[i]``, ``torch.split``, ``narrow``): zeros shaped like the input with the
    signal in that part. ``(N, c, H, W) -> (N, C, H, W)`` for a channel slice.

    ``channels_only``: the part is cut along the channels alone, so positions stay where they are.
    """

    def __init__(self, index: Index, channels_only: bool, description: str = "") -> None:
        super().__init__()
        self.index = index
        self.description = description
        self.geometry = POINTWISE if channels_only else None

    def remember(self, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, ...]:
        return (tuple(x.shape[1:]),)

    def forward(self, signal: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        if self.geometry is not None:  # a window of the maps: its positions are the signal's
            shape = (shape[0], *signal.shape[2:])
        out = signal.new_zeros(signal.shape[0], *shape)
        out[(slice(None), *self.index(shape))] = signal
        return out

    def extra_repr(self) -> str:
        return self.description
