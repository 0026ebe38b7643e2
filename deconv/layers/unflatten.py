"""Reshaping in reverse: the shape the forward pass had before a flatten, view or reshape."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError
from .base import MirrorModule

__all__ = ["Unflatten"]


class Unflatten(MirrorModule):
    """Restores the shape before ``Flatten``, ``view``, ``reshape``, ``flatten``, ``squeeze`` or
    ``unsqueeze``: ``(N, C*H*W) -> (N, C, H, W)`` for a flatten. The batch dimension must survive.
    """

    geometry = None

    def remember(self, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, ...]:
        if y.dim() == 0 or y.shape[0] != x.shape[0]:
            raise InputError(
                f"a reshape from {tuple(x.shape)} to {tuple(y.shape)} mixes the batch dimension; "
                "only reshapes that keep it first, e.g. x.view(x.size(0), -1), can be mirrored"
            )
        return (tuple(x.shape[1:]),)

    def forward(self, signal: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        return signal.reshape(signal.shape[0], *shape)
