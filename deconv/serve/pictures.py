"""The pictures of ``deconv serve``, drawn by deconv's renderer (:mod:`deconv.figures.draw`), as PNG bytes."""

from __future__ import annotations

import io
from typing import Callable

import torch
import torch.nn.functional as F
from PIL import Image

from ..figures.draw import colormap, outline, show_patch, show_projection, to_pil, upscale
from ..figures.draw import grid as render_grid
from ..mirror import Box
from .session import Maps

__all__ = [
    "TILE",
    "GAP",
    "WIDTH",
    "png",
    "projection",
    "picture",
    "patch",
    "layout",
    "tiles",
    "grid",
    "feature_map",
    "factor",
]

TILE = 40  # feature maps in the grid are at most this many pixels on a side
GAP = 2
WIDTH = 520  # the grid's width in pixels, at most


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def factor(size: int, target: int) -> int:
    """The integer enlargement that brings ``size`` pixels to about ``target`` (at least 1)."""
    return max(1, round(target / size))


def projection(p: torch.Tensor, channel_order: str = "RGB") -> bytes:
    """A projection ``(1, C, H, W)`` of a model that takes ``channel_order`` as deconv shows it
    (:func:`~deconv.figures.draw.show_projection`), pixel for pixel."""
    return png(to_pil(show_projection(p.float().cpu(), channel_order)[0]))


def picture(
    image: torch.Tensor, denormalize: Callable[[torch.Tensor], torch.Tensor], scale: int, box: Box | None
) -> bytes:
    """An image ``(1, C, H, W)`` in true colours, enlarged ``scale`` times, with ``box`` drawn."""
    shown = to_pil(upscale(show_patch(image.float().cpu(), denormalize)[0], scale))
    if box is not None:
        outline(shown, box, scale)
    return png(shown)


def patch(
    pixels: torch.Tensor, inside: torch.Tensor, denormalize: Callable[[torch.Tensor], torch.Tensor], scale: int
) -> bytes:
    """A receptive-field patch ``(1, C, h, w)``, the part outside the image hatched, enlarged ``scale`` times."""
    return png(to_pil(upscale(show_patch(pixels.float(), denormalize, inside)[0], scale)))


def layout(maps: Maps) -> tuple[int, tuple[int, int]]:
    """Where :func:`tiles` puts a layer's maps: its number of columns and each tile's ``(height, width)``."""
    k, h, w = maps.maps.shape
    if max(h, w) > TILE:  # large maps are shrunk (area average) to fit a tile
        tile = (max(1, round(h * TILE / max(h, w))), max(1, round(w * TILE / max(h, w))))
    else:  # small ones enlarged by an integer factor
        tile = (h * factor(max(h, w), TILE), w * factor(max(h, w), TILE))
    return max(1, min(k, (WIDTH + GAP) // (tile[1] + GAP))), tile


def tiles(maps: Maps) -> torch.Tensor:
    """The grid of a layer's feature maps as small viridis heat maps on one scale (the layer's range), in
    ``maps``' order, placed as :func:`layout` says: ``(3, H, W)``."""
    m = maps.maps
    k, h, w = m.shape
    columns, (th, tw) = layout(maps)
    low, high = min(0.0, float(m.min())), float(m.max())
    if max(h, w) > TILE:
        m = F.interpolate(m[:, None], size=(th, tw), mode="area")[:, 0]
    colours = colormap(m.reshape(-1, m.shape[-1]), low, high).view(3, k, *m.shape[1:]).transpose(0, 1)
    return render_grid(upscale(colours, th // m.shape[1]), columns, GAP)  # small maps enlarged after colouring


def grid(maps: Maps) -> bytes:
    """The :func:`tiles` grid as PNG."""
    return png(to_pil(tiles(maps)))


def feature_map(values: torch.Tensor, scale: int) -> bytes:
    """One feature map ``(h, w)`` as a viridis heat map on its own range, enlarged ``scale`` times."""
    low, high = min(0.0, float(values.min())), float(values.max())
    return png(to_pil(upscale(colormap(values, low, high), scale)))
