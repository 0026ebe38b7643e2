"""Windows of feature maps: the cone of positions one activation reaches on the way down.

A window is a top-left ``origin`` ``(K, 2)`` per selection (it may lie partly outside the map) and a
``size`` ``(h, w)`` shared by all K selections.
"""
from __future__ import annotations

import torch

from .layers.base import Geometry

__all__ = ["descend", "cut", "inside", "paste"]


def descend(geometry: Geometry, origin: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """The input window that an output window of a layer reads. ``origin`` ``(K, 2)``."""
    stride = origin.new_tensor(geometry.stride)
    padding = origin.new_tensor(geometry.padding)
    return origin * stride - padding, (
        (size[0] - 1) * geometry.stride[0] + geometry.span(0),
        (size[1] - 1) * geometry.stride[1] + geometry.span(1),
    )


def _grid(origin: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = origin[:, :1] + torch.arange(size[0], device=origin.device)
    cols = origin[:, 1:] + torch.arange(size[1], device=origin.device)
    return rows, cols  # (K, h), (K, w)


def cut(maps: torch.Tensor, image: torch.Tensor, origin: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Windows of per-image maps: ``(N, C, H, W) -> (K, C, h, w)``, for image ``image[k]`` at ``origin[k]``.

    Positions outside the map repeat its edge; mask them with :func:`inside` where that matters.
    """
    rows, cols = _grid(origin, size)
    rows = rows.clamp(0, maps.shape[-2] - 1)[:, :, None]
    cols = cols.clamp(0, maps.shape[-1] - 1)[:, None, :]
    return maps.permute(0, 2, 3, 1)[image[:, None, None], rows, cols].permute(0, 3, 1, 2)


def inside(origin: torch.Tensor, size: tuple[int, int], shape: tuple[int, int]) -> torch.Tensor | None:
    """``(K, 1, h, w)`` mask of window positions inside a map of ``shape``; ``None`` if all are."""
    if bool((origin >= 0).all()) and bool((origin + origin.new_tensor(size) <= origin.new_tensor(shape)).all()):
        return None
    rows, cols = _grid(origin, size)
    ok_rows = (rows >= 0) & (rows < shape[0])
    ok_cols = (cols >= 0) & (cols < shape[1])
    return (ok_rows[:, :, None] & ok_cols[:, None, :]).unsqueeze(1)


def paste(windows: torch.Tensor, origin: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Windows into zero maps: ``(K, C, h, w) -> (K, C, H, W)``; what lies outside the map is dropped."""
    k, c, h, w = windows.shape
    mask = inside(origin, (h, w), shape)
    if mask is not None:
        windows = windows * mask
    rows, cols = _grid(origin, (h, w))
    rows = rows.clamp(0, shape[0] - 1)[:, :, None]
    cols = cols.clamp(0, shape[1] - 1)[:, None, :]
    full = windows.new_zeros(k, shape[0], shape[1], c)
    batch = torch.arange(k, device=windows.device)[:, None, None]
    full.index_put_((batch, rows, cols), windows.permute(0, 2, 3, 1), accumulate=True)
    return full.permute(0, 3, 1, 2)
