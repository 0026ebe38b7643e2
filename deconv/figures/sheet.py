"""The paper's Fig. 2 sheet: per channel, its top projections beside the image patches that caused them.

Records become display tiles (:func:`display_tiles`); :func:`layout` says where every panel, grid and tile
of a sheet goes (data), :func:`figure2_sheet` draws the tiles there and returns that layout with the image;
``deconv top9`` writes it beside the sheets (:meth:`Sheet.manifest`), and the report cuts panels by it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..io import atomic_write
from .draw import (
    INK,
    as_uint8,
    font,
    grid,
    hatch,
    resize,
    save_png,
    show_patch,
    show_projection,
    to_pil,
)

if TYPE_CHECKING:
    from ..analyses.top9 import Projected, Record

__all__ = [
    "MARGIN",
    "GAP",
    "MANIFEST",
    "Tile",
    "display_size",
    "display_tiles",
    "save_projections",
    "Box",
    "Panel",
    "Layout",
    "Sheet",
    "layout",
    "figure2_sheet",
    "figure2",
]

MARGIN = 10  # pixels around and between the panels of a sheet
GAP = 6  # pixels between the grids of a panel
TITLE = 24  # the height of a sheet's title strip (18 px text)
LABEL = 19  # the height of a panel's label strip (13 px text)
MANIFEST = "sheets.json"  # beside top9.json: where each sheet's panels are (:meth:`Sheet.manifest`)
CAPTION = 17  # the height of the captions above a panel's grids (11 px text), when several rules are drawn


class Tile(NamedTuple):
    """One entry of a Fig. 2 panel at display size: its record, its projection and image patch as
    ``(3, t, t')`` uint8 tiles, and whether it is active (else it is drawn blank)."""

    record: Record
    projection: torch.Tensor
    patch: torch.Tensor
    active: bool


def display_size(box: tuple[int, int], tile_px: int) -> tuple[int, int]:
    """The ``(h, w)`` a ``box`` is drawn at: enlarged by the integer factor that fits ``tile_px``, or
    downscaled so that its longer side is ``tile_px``."""
    side = max(box)
    if side <= tile_px:
        return box[0] * (tile_px // side), box[1] * (tile_px // side)
    return max(1, round(box[0] * tile_px / side)), max(1, round(box[1] * tile_px / side))


def display_tiles(
    chunk: Projected, denormalize: Callable[[torch.Tensor], torch.Tensor], tile_px: int = 80, channel_order: str = "RGB"
) -> list[Tile]:
    """A chunk of projected records as display tiles, all of one size per layer.

    Each tile is the receptive-field box centred on its activation (no larger than the image), drawn at
    :func:`display_size`; the part beyond the image is hatched, on both sides.
    An entry whose activation is not positive and whose projection is zero is inactive (its image
    is only the first of many with nothing there).
    """
    h, w = chunk.projections.shape[-2:]
    th, tw = min(h, chunk.image_size[0]), min(w, chunk.image_size[1])
    window = (
        slice(None),
        slice(None),
        slice((h - th) // 2, (h - th) // 2 + th),
        slice((w - tw) // 2, (w - tw) // 2 + tw),
    )
    size = display_size((th, tw), tile_px)
    projections = resize(as_uint8(show_projection(chunk.projections[window].float().cpu(), channel_order)), size)
    patches = resize(as_uint8(show_patch(chunk.patches[window].float().cpu(), denormalize)), size)
    inside = chunk.inside[window].cpu()
    edge = ~inside.flatten(1).all(1)  # the tiles whose box reaches beyond the image: hatched
    if bool(edge.any()):
        valid = torch.nn.functional.interpolate(inside[edge].float(), size=size, mode="nearest") > 0.5
        projections, patches = projections.contiguous(), patches.contiguous()  # an expanded grey one is a view
        projections[edge] = hatch(projections[edge], valid)
        patches[edge] = hatch(patches[edge], valid)
    # each tile's (h, w, 3) pixels in one block, as a sheet's pixels take them: tiles are copied onto sheets
    projections, patches = (x.contiguous(memory_format=torch.channels_last) for x in (projections, patches))
    silent = (~chunk.projections.flatten(1).any(1)).tolist()  # all zero
    return [
        Tile(r, p, q, r.value > 0 or not n)
        for r, p, q, n in zip(chunk.records, projections.unbind(), patches.unbind(), silent)
    ]


def save_projections(
    chunk: Projected,
    denormalize: Callable[[torch.Tensor], torch.Tensor],
    folder: str | os.PathLike[str],
    kind: str,
    channel_order: str = "RGB",
) -> None:
    """Writes each record's full-resolution receptive-field box as ``folder/LAYER/CHANNEL-RANK.npy``
    (the projection, ``(C, h, w)`` float32) or ``.png`` (the projection beside the image patch, hatched
    beyond the image)."""
    for n, record in enumerate(chunk.records):
        path = Path(folder) / record.layer / f"{record.channel}-{record.rank}.{kind}"
        if kind == "npy":
            atomic_write(path, lambda f: np.save(f, chunk.projections[n].float().cpu().numpy()))
            continue
        valid = chunk.inside[n : n + 1].cpu()
        shown = hatch(show_projection(chunk.projections[n : n + 1].float().cpu(), channel_order), valid)
        patch = show_patch(chunk.patches[n : n + 1].float().cpu(), denormalize, valid)
        save_png(to_pil(grid(torch.cat([shown, patch]), 2)), path)


Box = tuple[int, int, int, int]
"""A rectangle of a sheet in pixels: ``(left, top, right, bottom)``, as :meth:`PIL.Image.Image.crop` takes it."""


class Panel(NamedTuple):
    """Where one channel's panel is on its sheet: its ``label`` strip, the ``panel`` below the label, and
    the columns of the panel (caption included where captioned): one per projection ``grid`` (one per
    rule, in order), then the image ``patches``. ``tiles`` holds the top-left corner of each of the
    ``count`` tiles of every column, best first, and ``captions`` where each column's caption is written."""

    channel: int
    label: Box
    panel: Box
    grids: tuple[Box, ...]
    patches: Box
    tiles: tuple[tuple[tuple[int, int], ...], ...]
    captions: tuple[tuple[int, int], ...]


class Layout(NamedTuple):
    """Where everything of a Fig. 2 sheet is: its ``size`` ``(width, height)``, its ``title`` strip and
    its panels in channel order. Pure data: :func:`figure2_sheet` draws by it, the report cuts by it."""

    size: tuple[int, int]
    title: Box
    panels: tuple[Panel, ...]


class Sheet(NamedTuple):
    """A drawn Fig. 2 sheet: its ``(H, W, 3)`` uint8 ``pixels`` and the ``layout`` it was drawn by."""

    pixels: np.ndarray
    layout: Layout

    @property
    def image(self) -> Image.Image:
        """The sheet as a PIL image."""
        return Image.fromarray(self.pixels, "RGB")

    def manifest(self, sheet: str, layer: str, rules: Sequence[str]) -> dict:
        """This sheet's entry of ``sheets.json`` (:data:`MANIFEST`): its file ``sheet`` (relative to the run
        folder), ``layer``, ``size`` ``[width, height]`` and per channel its ``panel`` (below the label), and the
        columns of the panel, each ``[left, top, right, bottom]``: one per rule (named by ``rules``), ``patches``."""
        return {
            "sheet": sheet,
            "layer": layer,
            "size": list(self.layout.size),
            "panels": [
                {
                    "channel": p.channel,
                    "panel": list(p.panel),
                    "rules": {rule: list(box) for rule, box in zip(rules, p.grids, strict=True)},
                    "patches": list(p.patches),
                }
                for p in self.layout.panels
            ],
        }


def layout(
    counts: Mapping[int, int],
    tile: tuple[int, int],
    grids: int = 1,
    captions: bool = False,
    margin: int = MARGIN,
    gap: int = GAP,
    spacing: int = 2,
) -> Layout:
    """The layout of a sheet of panels, one per channel of ``counts`` (``{channel: tiles in its panel}``, at
    most 9, best first), of ``(h, w)`` tiles: a square-ish grid of panels ``margin`` apart, under a title.

    A panel is the paper's Fig. 2 cell: ``grids`` 3x3 projection grids (one per rule, each under its caption
    when ``captions``) beside the 3x3 image patches, ``gap`` apart, tiles ``spacing`` apart, under a label.
    """
    h, w = tile
    top = CAPTION if captions else 0

    def panel(count: int) -> tuple[int, int, int, int]:  # tiles a row, a grid's width, the panel's (w, h)
        columns = 3 if count > 1 else 1
        rows = math.ceil(count / columns)
        side = columns * (w + spacing) - spacing
        return columns, side, grids * (side + gap) + side, LABEL + top + rows * (h + spacing) - spacing

    shapes = {c: panel(n) for c, n in counts.items()}
    cell = (max(s[2] for s in shapes.values()), max(s[3] for s in shapes.values()))
    columns = math.ceil(math.sqrt(len(counts)))
    rows = math.ceil(len(counts) / columns)
    size = (columns * (cell[0] + margin) + margin, TITLE + rows * (cell[1] + margin) + margin)
    panels = []
    for i, channel in enumerate(sorted(counts)):
        r, q = divmod(i, columns)
        left, top_ = margin + q * (cell[0] + margin), TITLE + margin + r * (cell[1] + margin)
        per_row, side, width, height = shapes[channel]
        inner = top_ + LABEL
        boxes = [
            (left + g * (side + gap), inner, left + g * (side + gap) + side, top_ + height) for g in range(grids + 1)
        ]
        tiles = tuple(
            tuple(
                (box[0] + (k % per_row) * (w + spacing), inner + top + (k // per_row) * (h + spacing))
                for k in range(counts[channel])
            )
            for box in boxes
        )
        panels.append(
            Panel(
                channel,
                (left, top_, left + cell[0], inner),
                (left, inner, left + cell[0], top_ + cell[1]),
                tuple(boxes[:-1]),
                boxes[-1],
                tiles,
                tuple((box[0] + 1, inner + 1) for box in boxes) if captions else (),
            )
        )
    return Layout(size, (0, 0, size[0], TITLE), tuple(panels))


def _text(pixels: np.ndarray, box: Box, writes: Sequence[tuple[tuple[int, int], str, int]]) -> None:
    """Writes ``(where, text, size)`` into ``box`` of ``pixels`` (white there), clipped to the box."""
    strip = Image.new("RGB", (box[2] - box[0], box[3] - box[1]), "white")
    draw = ImageDraw.Draw(strip)
    for (x, y), text, size in writes:
        draw.text((x - box[0], y - box[1]), text, fill=INK, font=font(size))
    pixels[box[1] : box[3], box[0] : box[2]] = np.asarray(strip)


def figure2_sheet(tiles: Iterable[Tile] | Mapping[str, Iterable[Tile]], title: str) -> Sheet:
    """One sheet of the paper's Fig. 2: per channel of ``tiles`` (all of one layer, one size), its top
    projections beside their image patches, best first, in channel order, under ``title``; with the
    :class:`Layout` it was drawn by.

    ``tiles`` by rule (the same records under each) draw one projection grid per rule, captioned
    with its name, left to right, beside the patches. Inactive entries are blank and the panel's
    label counts the active ones (of the first rule). The tiles are copied into one array of the
    sheet's pixels; only the text goes through Pillow.
    """
    captioned = isinstance(tiles, Mapping)
    by_rule = dict(tiles) if captioned else {"": tiles}
    by_channel: dict[int, list[list[Tile]]] = {}
    for n, of_rule in enumerate(by_rule.values()):
        for tile in of_rule:
            by_channel.setdefault(tile.record.channel, [[] for _ in by_rule])[n].append(tile)
    ranked = {c: [sorted(of_rule, key=lambda t: t.record.rank) for of_rule in grids] for c, grids in by_channel.items()}
    first = next(iter(ranked.values()))[0][0]
    shape = tuple(first.patch.shape[-2:])
    plan = layout({c: len(grids[0]) for c, grids in ranked.items()}, shape, len(by_rule), captioned)
    pixels = np.full((plan.size[1], plan.size[0], 3), 255, np.uint8)
    _text(pixels, plan.title, [((2, 2), title, 18)])
    captions = [*by_rule, "image patches"] if captioned else []
    h, w = shape
    grids: list[tuple[int, int, int, int]] = []  # (x, y, row step, column step) of each full 3x3 grid
    singles: list[tuple[int, int]] = []  # (x, y) of every other active entry
    drawn: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])  # their tiles: nine a grid, one a single
    for panel in plan.panels:
        ranked_grids = ranked[panel.channel]
        patches = ranked_grids[0]
        active = sum(t.active for t in patches)
        note = (
            "" if active == len(patches) else "  never active" if not active else f"  {active} of {len(patches)} active"
        )
        label = f"{patches[0].record.layer}  channel {panel.channel}{note}"
        _text(pixels, panel.label, [((panel.label[0] + 2, panel.label[1] + 2), label, 13)])
        if captions:
            box = (panel.panel[0], panel.panel[1], panel.panel[2], panel.panel[1] + CAPTION)
            _text(pixels, box, [(where, text, 11) for where, text in zip(panel.captions, captions)])
        columns = [[(t.projection, t.active) for t in of_rule] for of_rule in ranked_grids] + [
            [(t.patch, t.active) for t in patches]
        ]
        for corners, column in zip(panel.tiles, columns):  # an inactive entry stays blank (white)
            if len(column) == 9 and all(a for _, a in column):
                (x, y), step = corners[0], (corners[3][1] - corners[0][1], corners[1][0] - corners[0][0])
                grids.append((x, y, *step))
                drawn[0].extend(tile for tile, _ in column)
            else:
                singles += [(x, y) for (x, y), (_, a) in zip(corners, column) if a]
                drawn[1].extend(tile for tile, a in column if a)
    if singles or grids:
        stacked = torch.stack([t.permute(1, 2, 0) for t in drawn[0] + drawn[1]]).numpy()  # (N, h, w, 3)
        rows, cols, depth = pixels.strides
        for n, (x, y, down, across) in enumerate(grids):  # nine tiles in one copy, by a (3, 3, h, w, 3) view
            view = np.lib.stride_tricks.as_strided(
                pixels[y:, x:], (3, 3, h, w, 3), (down * rows, across * cols, rows, cols, depth), writeable=True
            )
            view[...] = stacked[9 * n : 9 * n + 9].reshape(3, 3, h, w, 3)
        for (x, y), tile in zip(singles, stacked[9 * len(grids) :]):
            pixels[y : y + h, x : x + w] = tile
    return Sheet(pixels, plan)


def figure2(tiles: Iterable[Tile] | Mapping[str, Iterable[Tile]], title: str) -> Image.Image:
    """The image of :func:`figure2_sheet`: one sheet of the paper's Fig. 2."""
    return figure2_sheet(tiles, title).image
