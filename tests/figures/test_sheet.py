"""Rendering: display scaling, grids and Fig. 2 sheets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deconv.analyses.top9 import Projected, Record
from deconv.commands import top9
from deconv.figures.draw import OUTSIDE, as_uint8, grid, hatch, show_patch, show_projection, upscale
from deconv.figures.sheet import LABEL, TITLE, Tile, display_size, display_tiles, figure2, figure2_sheet, layout


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


def test_the_layout_of_a_panel_is_the_papers_cell() -> None:
    plan = layout({0: 9}, (8, 8))
    (panel,) = plan.panels
    assert panel.panel[2] - panel.panel[0] == 2 * (3 * 8 + 2 * 2) + 6  # two 3x3 grids, 2 px apart, 6 between
    assert panel.label == (10, TITLE + 10, panel.panel[2], TITLE + 10 + LABEL) and panel.panel[1] == panel.label[3]
    assert plan.size == (panel.panel[2] + 10, panel.panel[3] + 10)
    assert panel.tiles[1][:4] == (
        (panel.patches[0], panel.panel[1]),
        (panel.patches[0] + 10, panel.panel[1]),
        (panel.patches[0] + 20, panel.panel[1]),
        (panel.patches[0], panel.panel[1] + 10),
    )


def _tiles(channels: int, k: int, side: int, rules: int, seed: int = 0) -> list[list[Tile]]:
    """Random display tiles of ``channels`` channels, ``k`` each, under ``rules`` rules (the same records)."""
    g = torch.Generator().manual_seed(seed)
    records = [Record("l", c, r, c * k + r, None, 0, 0, 1.0 + r) for c in range(channels) for r in range(k)]
    patches = [torch.randint(0, 256, (3, side, side), generator=g, dtype=torch.uint8) for _ in records]
    return [
        [
            Tile(r, torch.randint(0, 256, (3, side, side), generator=g, dtype=torch.uint8), q, True)
            for r, q in zip(records, patches)
        ]
        for _ in range(rules)
    ]


@pytest.mark.parametrize("channels, k, rules", [(7, 9, 1), (12, 9, 3), (5, 1, 1), (3, 4, 2)])
def test_every_tile_is_drawn_where_the_layout_says_inside_its_boxes(channels: int, k: int, rules: int) -> None:
    """The sheet's pixels at each tile corner of its layout are that tile's; every tile lies inside its
    column, every column inside its panel, the panels apart from each other and from the title."""
    by_rule = _tiles(channels, k, 6, rules)
    names = [f"rule{n}" for n in range(rules)]
    sheet = figure2_sheet(dict(zip(names, by_rule)) if rules > 1 else by_rule[0], "l: top")
    pixels, plan = np.asarray(sheet.image), sheet.layout
    assert (sheet.pixels == pixels).all() and pixels.shape == (plan.size[1], plan.size[0], 3)
    assert [p.channel for p in plan.panels] == list(range(channels))
    inside = lambda a, b: b[0] <= a[0] and b[1] <= a[1] and a[2] <= b[2] and a[3] <= b[3]  # noqa: E731
    for panel in plan.panels:
        columns = [[t for t in tiles if t.record.channel == panel.channel] for tiles in by_rule]
        assert len(panel.grids) == rules and inside(panel.patches, panel.panel)
        for box, corners, kind, tiles in zip(
            [*panel.grids, panel.patches], panel.tiles, ["projection"] * rules + ["patch"], [*columns, columns[0]]
        ):
            assert inside(box, panel.panel) and len(corners) == k
            for (x, y), tile in zip(corners, tiles):
                assert inside((x, y, x + 6, y + 6), box)
                assert (pixels[y : y + 6, x : x + 6] == getattr(tile, kind).permute(1, 2, 0).numpy()).all()
        assert inside(panel.label, (0, plan.title[3], *plan.size)) and panel.label[3] == panel.panel[1]
        for other in plan.panels:
            if other is not panel:
                a, b = panel.panel, other.panel
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]  # disjoint


def test_the_manifest_names_each_column_by_its_rule() -> None:
    sheet = figure2_sheet(dict(zip(["deconvnet", "guided"], _tiles(2, 9, 5, 2))), "l: top 9")
    entry = sheet.manifest("sheets/l-1.png", "l", ["deconvnet", "guided"])
    assert entry["sheet"] == "sheets/l-1.png" and entry["layer"] == "l" and entry["size"] == list(sheet.layout.size)
    (first, second) = entry["panels"]
    assert first["channel"] == 0 and second["channel"] == 1
    assert first["rules"] == {r: list(b) for r, b in zip(["deconvnet", "guided"], sheet.layout.panels[0].grids)}
    assert first["panel"] == list(sheet.layout.panels[0].panel) and first["patches"][2] == first["panel"][2]
    with pytest.raises(ValueError):  # a rule for every grid, no more and no fewer
        sheet.manifest("sheets/l-1.png", "l", ["deconvnet"])


def test_figure2_blanks_entries_that_reach_nothing_and_counts_the_active_ones() -> None:
    g = torch.Generator().manual_seed(0)
    records = [Record("4", 0, rank, rank, None, 0, 0, value) for rank, value in enumerate([1.0, 0.0, -1.0])]
    projections = torch.rand(3, 1, 8, 8, generator=g) + 0.1
    projections[1] = 0.0  # a zero activation: nothing reaches the pixels
    patches = torch.rand(3, 1, 8, 8, generator=g)
    chunk = Projected(records, projections, patches, torch.ones(3, 1, 8, 8, dtype=torch.bool), (16, 16))
    tiles = display_tiles(chunk, lambda x: x, tile_px=8)
    assert [t.active for t in tiles] == [True, False, True]
    sheet = figure2(tiles, "4: top 3")
    pixels = np.asarray(sheet)
    top, left, patch_left = 24 + 10 + 19, 10, 10 + 3 * 10 - 2 + 6  # title, margin, panel label; grids 2 px apart
    tile = lambda x: pixels[top : top + 8, x : x + 8]  # noqa: E731
    assert (tile(left + 10) == 255).all() and (tile(patch_left + 10) == 255).all()  # rank 1: blank
    for rank in (0, 2):  # shown, the negative one too: its projection is not zero
        assert not (tile(left + 10 * rank) == 255).all() and not (tile(patch_left + 10 * rank) == 255).all()


def _chunk(box: int, image: int, inside: torch.Tensor, value: float = 1.0) -> Projected:
    records = [Record("4", 0, rank, rank, None, 3, 3, value) for rank in range(len(inside))]
    g = torch.Generator().manual_seed(1)
    k = len(inside)
    return Projected(
        records,
        torch.rand(k, 3, box, box, generator=g) + 0.1,
        torch.rand(k, 3, box, box, generator=g),
        inside,
        (image, image),
    )


def test_edge_tiles_keep_the_box_centred_and_hatch_what_lies_beyond_the_image() -> None:
    inside = torch.ones(2, 1, 10, 10, dtype=torch.bool)
    inside[1, :, :, :4] = False  # the second activation is near the left edge: 4 columns of its box are outside
    chunk = _chunk(10, 40, inside)
    tiles = display_tiles(chunk, lambda x: x, tile_px=20)
    assert [tuple(t.patch.shape) for t in tiles] == [(3, 20, 20)] * 2  # one size, enlarged twice
    for t in tiles:
        assert t.projection.dtype == torch.uint8 and t.patch.dtype == torch.uint8
    outside = tiles[1].patch[:, :, :8].float() / 255
    lines = torch.tensor(OUTSIDE).view(3, 1, 1)
    assert ((outside / lines - 1).abs() <= 0.21).all()  # the hatch colour, striped
    assert outside.std() > 0.01
    expected = upscale((chunk.patches[1, :, :, 4:] * 255).round(), 2)
    assert (
        tiles[1].patch[:, :, 8:].float() - expected
    ).abs().max() <= 1  # the image part in its place: centred as before
    assert not torch.allclose(tiles[0].patch[:, :, :8].float() / 255, outside)  # an inner tile has no hatch
    assert ((tiles[1].projection[:, :, :8].float() / 255 / lines - 1).abs() <= 0.21).all()  # both sides hatched


def test_a_box_larger_than_the_image_is_shown_image_sized_around_its_centre() -> None:
    inside = torch.zeros(1, 1, 30, 30, dtype=torch.bool)
    inside[..., 5:25, 5:25] = True  # a 30x30 box around a 20x20 image
    chunk = _chunk(30, 20, inside)
    (tile,) = display_tiles(chunk, lambda x: x, tile_px=40)
    assert tile.patch.shape == (3, 40, 40)
    expected = upscale((chunk.patches[0, :, 5:25, 5:25] * 255).round(), 2)
    assert (tile.patch.float() - expected).abs().max() <= 1


def test_large_boxes_are_downscaled_with_a_filter_and_small_ones_enlarged_by_an_integer_factor() -> None:
    assert display_size((5, 5), 80) == (80, 80) and display_size((7, 7), 80) == (77, 77)
    assert display_size((212, 212), 80) == (80, 80) and display_size((200, 100), 80) == (80, 40)
    inside = torch.ones(1, 1, 160, 160, dtype=torch.bool)
    chunk = _chunk(160, 224, inside)
    chunk.patches[:] = ((torch.arange(160)[:, None] + torch.arange(160)) % 2).float()  # a fine checkerboard
    (tile,) = display_tiles(chunk, lambda x: x, tile_px=80)
    assert tile.patch.shape == (3, 80, 80)
    # a low-pass filter averages the checkerboard to grey; picking pixels (nearest) would keep black and white
    assert (tile.patch[:, 4:-4, 4:-4].float() - 127.5).abs().max() < 20


def test_sheets_of_64_channels_fit_4096_pixels_at_the_default_tile_size() -> None:
    side = next(o.default for o in top9.OPTIONS if o.key == "tile_px")
    plan = layout(dict.fromkeys(range(64), 9), (side, side))
    assert max(plan.size) <= 4096


def test_uint8_hatching_by_bit_masks_equals_the_float_hatching_in_bytes() -> None:
    g = torch.Generator().manual_seed(1)
    tiles = torch.rand(4, 3, 13, 17, generator=g)
    valid = torch.rand(4, 1, 13, 17, generator=g) > 0.4
    expected = as_uint8(hatch(tiles, valid))  # torch.where on floats, then bytes
    assert torch.equal(hatch(as_uint8(tiles), valid), expected)
    last = as_uint8(tiles).contiguous(memory_format=torch.channels_last)  # as display tiles are laid out
    assert torch.equal(hatch(last, valid), expected)
