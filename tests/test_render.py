"""Rendering: display scaling, grids and Fig. 2 sheets."""
from __future__ import annotations

import numpy as np
import torch

from deconv.render import channel_panel, figure2, grid, sheets, show_patch, show_projection, upscale
from deconv.scan import Projected, Record


def test_projection_display_is_centred_grey_and_per_patch() -> None:
    p = torch.zeros(2, 1, 2, 2)
    p[0, 0, 0, 0], p[0, 0, 1, 1] = 2.0, -1.0
    p[1, 0, 0, 0] = 1e-3
    shown = show_projection(p)
    assert shown.shape == (2, 3, 2, 2)
    assert shown[0, :, 0, 0].tolist() == [1.0, 1.0, 1.0]
    assert shown[0, 0, 0, 1] == 0.5 and abs(float(shown[0, 0, 1, 1]) - 0.25) < 0.01
    assert shown[1, 0, 0, 0] == 1.0  # each patch uses its own range


def test_projection_display_clips_rare_extremes() -> None:
    p = torch.linspace(-1, 1, 1000).view(1, 1, 40, 25)
    p[0, 0, 0, 0] = -50.0  # one outlier must not grey out the rest
    shown = show_projection(p)
    assert shown.min() == 0.0 and shown.max() == 1.0
    assert float(shown[0, 0, -1, -1]) > 0.95


def test_patch_display_undoes_normalisation_and_hatches_outside() -> None:
    patch = torch.full((1, 1, 4, 4), 1.0)
    valid = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    valid[..., :2, :] = True
    shown = show_patch(patch, lambda x: x * 0.5 + 0.25, valid)
    assert torch.allclose(shown[0, :, :2], torch.full((3, 2, 4), 0.75))
    assert (shown[0, :, 2:] < 0.5).all()


def test_grid_and_upscale() -> None:
    tiles = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 3, 2, 2)
    image = grid(tiles, columns=3, gap=1)
    assert image.shape == (3, 5, 8)
    assert image[0, 3, 0] == 3.0 and image[0, 0, 6] == 2.0 and image[0, 4, 7] == 1.0  # empty cell is background
    assert upscale(torch.tensor([[1.0, 2.0]]), 2).tolist() == [[1.0, 1.0, 2.0, 2.0], [1.0, 1.0, 2.0, 2.0]]


def test_sheets_split_large_layers() -> None:
    panel = channel_panel(torch.rand(9, 3, 8, 8), torch.rand(9, 3, 8, 8), "layer x  channel 0")
    assert panel.width == 2 * (3 * 8 + 2 * 2) + 6
    pages = sheets([panel] * 70, "layer x", per_sheet=32)
    assert len(pages) == 3
    assert pages[0].width > pages[2].width


def test_figure2_blanks_entries_that_reach_nothing_and_counts_the_active_ones() -> None:
    g = torch.Generator().manual_seed(0)
    records = [Record("4", 0, rank, rank, None, 0, 0, value) for rank, value in enumerate([1.0, 0.0, -1.0])]
    projections = torch.rand(3, 1, 8, 8, generator=g) + 0.1
    projections[1] = 0.0  # a zero activation: nothing reaches the pixels
    patches = torch.rand(3, 1, 8, 8, generator=g)
    chunk = Projected(records, projections, patches, torch.ones(3, 1, 8, 8, dtype=torch.bool))
    (sheet,) = figure2([chunk], lambda x: x, size=8)
    pixels = np.asarray(sheet)
    top, left, patch_left = 24 + 10 + 19, 10, 10 + 3 * 10 - 2 + 6  # title, margin, panel label; grids 2 px apart
    tile = lambda x: pixels[top : top + 8, x : x + 8]  # noqa: E731
    assert (tile(left + 10) == 255).all() and (tile(patch_left + 10) == 255).all()  # rank 1: blank
    for rank in (0, 2):  # shown, the negative one too: its projection is not zero
        assert not (tile(left + 10 * rank) == 255).all() and not (tile(patch_left + 10 * rank) == 255).all()
