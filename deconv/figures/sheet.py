"""The paper's Fig. 2 sheet: per channel, its top projections beside the image patches that caused them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, NamedTuple

import numpy as np
import torch
from PIL import Image

from ..io import atomic_write
from .draw import as_uint8, channel_panel, grid, hatch, save_png, sheets, show_patch, show_projection, to_pil, upscale

if TYPE_CHECKING:
    from ..analyses.top9 import Projected, Record

__all__ = ["Tile", "display_tiles", "display_size", "save_projections", "figure2"]


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


def _resize(tiles: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(K, 3, h, w)`` uint8 -> ``(K, 3, *size)``: an integer enlargement repeats pixels, any other
    size is Pillow's Lanczos filter (a proper low-pass for downscaling)."""
    h, w = tiles.shape[-2:]
    if size[0] % h == 0 and size[0] // h == size[1] / w:
        return upscale(tiles, size[0] // h)
    pixels = tiles.permute(0, 2, 3, 1).numpy()
    out = [np.asarray(Image.fromarray(p).resize(size[::-1], Image.Resampling.LANCZOS)) for p in pixels]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


def display_tiles(
    chunk: Projected, denormalize: Callable[[torch.Tensor], torch.Tensor], tile_px: int = 80, channel_order: str = "RGB"
) -> list[Tile]:
    """A chunk of projected records as display tiles, all of one size per layer.

    Each tile is the receptive-field box centred on its activation (no larger than the image), drawn at :func:`display_size`; the part beyond the image is hatched, on both sides.
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
    projections = _resize(as_uint8(show_projection(chunk.projections[window].float().cpu(), channel_order)), size)
    patches = _resize(as_uint8(show_patch(chunk.patches[window].float().cpu(), denormalize)), size)
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
