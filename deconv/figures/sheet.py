"""The paper's Fig. 2 sheet: per channel, its top projections beside the image patches that caused them.

Records become display tiles (:func:`display_tiles`), each channel's tiles a panel (:func:`channel_panel`),
panels titled sheets (:func:`sheets`; :mod:`~deconv.figures.report` cuts them out again by the same layout).
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
    label_strip,
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
    "Tile",
    "display_size",
    "display_tiles",
    "save_projections",
    "channel_panel",
    "sheets",
    "figure2",
]

MARGIN = 10  # pixels around and between the panels of a sheet
GAP = 6  # pixels between the grids of a panel


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
    valid = torch.nn.functional.interpolate(chunk.inside[window].float().cpu(), size=size, mode="nearest") > 0.5
    if not bool(valid.all()):
        projections = as_uint8(hatch(projections / 255.0, valid))
        patches = as_uint8(hatch(patches / 255.0, valid))
    silent = chunk.projections.flatten(1).abs().amax(1).cpu() == 0
    return [
        Tile(r, p, q, r.value > 0 or not bool(n)) for r, p, q, n in zip(chunk.records, projections, patches, silent)
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


def channel_panel(
    projections: torch.Tensor | Sequence[torch.Tensor],
    patches: torch.Tensor,
    label: str,
    gap: int = GAP,
    spacing: int = 2,
    captions: Sequence[str] = (),
) -> Image.Image:
    """The paper's Fig. 2 cell: 3x3 projections beside the 3x3 image patches that caused them.

    ``projections`` and ``patches`` are ``(k, 3, h, w)`` display tiles (``k <= 9``; uint8 or in [0, 1]),
    best first, ``spacing`` pixels apart; the grids ``gap`` pixels apart. Several ``projections``
    grids (one per rule) are drawn side by side, left of the patches, each under its caption.
    """
    grids = [projections] if isinstance(projections, torch.Tensor) else list(projections)
    k, _, h, w = patches.shape
    columns = 3 if k > 1 else 1
    rows = math.ceil(k / columns)
    side = columns * (w + spacing) - spacing
    top = label_strip(Image.new("RGB", (1, 1)), "", size=11).height - 1 if captions else 0
    out = Image.new("RGB", (len(grids) * (side + gap) + side, top + rows * (h + spacing) - spacing), "white")
    for n, tiles in enumerate([*grids, patches]):
        left = n * (side + gap)
        pixels = (tiles if tiles.dtype == torch.uint8 else as_uint8(tiles)).permute(0, 2, 3, 1).cpu().numpy()
        for i, tile in enumerate(pixels):
            r, q = divmod(i, columns)
            out.paste(Image.fromarray(tile, "RGB"), (left + q * (w + spacing), top + r * (h + spacing)))
    draw = ImageDraw.Draw(out)
    for n, caption in enumerate(captions):
        draw.text((n * (side + gap) + 1, 1), caption, fill=INK, font=font(11))
    return label_strip(out, label)


def sheets(panels: Sequence[Image.Image], title: str, per_sheet: int = 64, margin: int = MARGIN) -> list[Image.Image]:
    """Lays panels out on sheets of at most ``per_sheet`` each (a square-ish grid), titled."""
    out = []
    total = math.ceil(len(panels) / per_sheet)
    for s in range(total):
        part = panels[s * per_sheet : (s + 1) * per_sheet]
        columns = math.ceil(math.sqrt(len(part)))
        w = max(p.width for p in part)
        h = max(p.height for p in part)
        rows = math.ceil(len(part) / columns)
        sheet = Image.new("RGB", (columns * (w + margin) + margin, rows * (h + margin) + margin), "white")
        for i, panel in enumerate(part):
            r, q = divmod(i, columns)
            sheet.paste(panel, (margin + q * (w + margin), margin + r * (h + margin)))
        name = title if total == 1 else f"{title} (sheet {s + 1} of {total})"
        out.append(label_strip(sheet, name, size=18))
    return out


def figure2(tiles: Iterable[Tile] | Mapping[str, Iterable[Tile]], title: str) -> Image.Image:
    """One sheet of the paper's Fig. 2: per channel of ``tiles`` (all of one layer, one size), its top
    projections beside their image patches, best first, in channel order, under ``title``.

    ``tiles`` by rule (the same records under each) draw one projection grid per rule, captioned
    with its name, left to right, beside the patches. Inactive entries are blank and the panel's
    label counts the active ones (of the first rule).
    """
    by_rule = dict(tiles) if isinstance(tiles, Mapping) else {"": tiles}
    by_channel: dict[int, list[list[Tile]]] = {}
    for n, of_rule in enumerate(by_rule.values()):
        for tile in of_rule:
            by_channel.setdefault(tile.record.channel, [[] for _ in by_rule])[n].append(tile)
    panels = []
    for channel in sorted(by_channel):
        ranked = [sorted(of_rule, key=lambda t: t.record.rank) for of_rule in by_channel[channel]]
        first = ranked[0]
        active = sum(t.active for t in first)
        note = "" if active == len(first) else "  never active" if not active else f"  {active} of {len(first)} active"
        blank = lambda t, x: x if t.active else torch.full_like(x, 255)  # noqa: E731
        panels.append(
            channel_panel(
                [torch.stack([blank(t, t.projection) for t in of_rule]) for of_rule in ranked],
                torch.stack([blank(t, t.patch) for t in first]),
                f"{first[0].record.layer}  channel {channel}{note}",
                captions=[*by_rule, "image patches"] if isinstance(tiles, Mapping) else (),
            )
        )
    return sheets(panels, title, per_sheet=len(panels))[0]
