"""The paper's Fig. 4: each channel's strongest projection at each checkpoint of training."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import torch
from PIL import Image

from .draw import column, grid, label_strip, row, to_pil
from .sheet import display_tiles

if TYPE_CHECKING:
    from ..analyses.evolution import Evolution

__all__ = ["figure4"]


def figure4(
    evolution: Evolution,
    checkpoints: Sequence[str],
    denormalize: Callable[[torch.Tensor], torch.Tensor],
    tile_px: int = 72,
    rule: str = "deconvnet",
    channel_order: str = "RGB",
) -> Image.Image:
    """The paper's Fig. 4: one strip per channel, its strongest activation's projection beside the
    image patch at each checkpoint, left to right in checkpoint order, captioned with its value.
    Tiles are Fig. 2's (:func:`display_tiles`, of a model that takes ``channel_order``); the title
    names the projections' ``rule``."""
    e = evolution
    columns = [display_tiles(e.column(t), denormalize, tile_px, channel_order) for t in range(len(checkpoints))]
    strips = []
    for k, channel in enumerate(e.channels):
        cells = [
            label_strip(
                to_pil(grid(torch.stack([tiles[k].projection, tiles[k].patch]), 2)),
                f"{name}: {tiles[k].record.value:.3g}",
            )
            for tiles, name in zip(columns, checkpoints)
        ]
        strips.append(label_strip(row(cells), f"{e.layer} channel {channel}"))
    return label_strip(
        column(strips, 16), f"{e.layer}: each channel's strongest activation, by checkpoint (rule: {rule})", size=15
    )
