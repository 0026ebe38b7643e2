"""LayerNorm and GroupNorm in reverse: their linear part, or their exact VJP under the gradient rule."""

from __future__ import annotations

from typing import Any

import torch

from .base import MirrorModule

__all__ = ["Normalize"]


class Normalize(MirrorModule):
    """The mirror of ``y = (x - mean) / sqrt(var + eps) * weight + bias``, the statistics taken per sample over the
    last ``dims`` dimensions (LayerNorm), or over each of ``groups`` channel groups and the positions (GroupNorm).

    The deconvnet and guided rules take the forward pass's mean and variance as constants: ``R_x = R * weight /
    sqrt(var + eps)``, as for batch norm. The gradient rule (``exact``) is the norm's vector-Jacobian product,
    ``rstd * (g - mean(g) - x_hat * mean(g * x_hat))`` with ``g = R * weight``. Mixes positions: whole maps.
    ``(N, ...) -> (N, ...)``.
    """

    geometry = None
    reads_inputs = True

    def __init__(self, weight: torch.Tensor | None, eps: float, exact: bool, dims: int = 0, groups: int = 0) -> None:
        super().__init__()
        object.__setattr__(self, "weight", weight)  # the model's own parameter: read, not owned
        self.eps, self.exact, self.dims, self.groups = eps, exact, dims, groups
        self.per_position = dims == 1 and not groups  # over the last axis alone: a channels-last LayerNorm

    def _grouped(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` with the normalised elements of each sample (and group) on the last axis."""
        if self.groups:
            return t.reshape(t.shape[0], self.groups, -1)
        return t.reshape(*t.shape[: t.dim() - self.dims], -1)

    def _weighted(self, signal: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            return signal
        if self.groups:  # per channel, on axis 1
            return signal * self.weight.view(-1, *([1] * (signal.dim() - 2)))
        return signal * self.weight

    def remember(self, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, ...]:
        flat = self._grouped(x)
        var, mean = torch.var_mean(flat, dim=-1, unbiased=False, keepdim=True)
        rstd = torch.rsqrt(var + self.eps)
        return (rstd, (flat - mean) * rstd) if self.exact else (rstd,)

    def forward(self, signal: torch.Tensor, rstd: torch.Tensor, normalized: torch.Tensor | None = None) -> torch.Tensor:
        g = self._grouped(self._weighted(signal))
        if normalized is None:
            return (g * rstd).reshape(signal.shape)
        mean_g = g.mean(-1, keepdim=True)
        mean_gx = (g * normalized).mean(-1, keepdim=True)
        return (rstd * (g - mean_g - normalized * mean_gx)).reshape(signal.shape)

    def extra_repr(self) -> str:
        what = f"groups={self.groups}" if self.groups else f"dims={self.dims}"
        return f"{what}, {'exact' if self.exact else 'statistics constant'}"
