"""A census drawn for a notebook: one unit as one picture (:func:`unit_figure`, what ``Unit`` shows inline) and
the paper's Fig. 2 for chosen channels (:func:`census_sheet`). The numbers are the census's; this module
only draws them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from PIL import Image, ImageDraw

from ..analyses.top9 import Record, project_top
from ..errors import SelectionError
from .draw import INK, colormap, column, font, row, to_pil, upscale
from .sheet import TITLE, Tile, display_tiles, figure2

if TYPE_CHECKING:
    from ..census import Census, Unit

__all__ = ["census_sheet", "unit_figure"]

CHART = (320, 120)  # (w, h) of the histogram's and the classes' plotting area
BAR = (64, 110, 200)  # the histogram's and class chart's bars
MARK = (200, 40, 40)  # quantile marks
CLASSES = 10  # classes drawn in a unit's class chart: the strongest by mean


def census_sheet(
    census: Census, layer: str, channels: Sequence[int], rules: Sequence[str] | None, tile_px: int
) -> Image.Image:
    """Fig. 2 for ``channels`` of ``layer``: each channel's top ``k`` projected under ``rules`` (default: the
    mirror's), beside their image patches."""
    if not channels:
        raise SelectionError(f"no channels of layer {layer!r} to draw")
    records = [r for c in channels for r in census.top(layer, c)]
    tiles = _projected(census, records, rules, tile_px)
    return figure2(_one_or_all(tiles), f"{layer}: top {census.k} activations per channel, {_named(tiles)}")


def unit_figure(unit: Unit, rules: Sequence[str] | None = None, tile_px: int = 64) -> Image.Image:
    """One unit: its statistics, its top and bottom entries projected under ``rules`` (when its census holds
    the mirror and dataset), the histogram of its per-image maximum with the quantiles marked, its classes
    and where it fires."""
    census = unit.census
    parts = [_heading(unit)]
    if census is not None and census.mirror is not None and census.dataset is not None:
        top = _projected(census, unit.top, rules, tile_px)
        parts += [_note(f"top {len(unit.top)}: the largest per-image maxima, {_named(top)}", 15), _panel(top)]
        if unit.rectified:
            parts.append(
                _note(
                    f"bottom {len(unit.bottom)}: all 0 (nothing takes it below zero, as after a ReLU); "
                    "probe the layer before the ReLU for what suppresses it",
                    15,
                )
            )
        else:
            bottom = _projected(census, unit.bottom, rules, tile_px)
            parts += [_note(f"bottom {len(unit.bottom)}: the smallest per-image minima, projected as they are", 15)]
            parts.append(_panel(bottom))
    else:
        parts.append(_note("no projections: give Census.load the mirror and dataset the census was made with"))
    charts = [_histogram(unit), _classes(unit)]
    if unit.hits is not None:
        charts.append(_hit_map(unit.hits))
    parts.append(row(charts, gap=24))
    return column(parts)


def _projected(
    census: Census, records: list[Record], rules: Sequence[str] | None, tile_px: int
) -> dict[str, list[Tile]]:
    """The display tiles of ``records`` under each rule."""
    if census.mirror is None or census.dataset is None:
        raise SelectionError(
            "drawing projections needs the census's mirror and dataset: Census.load(run_dir, mirror=..., dataset=...)"
        )
    preprocess = census.preprocess
    return {
        rule: [
            tile
            for chunk in project_top(census.mirror, census.dataset, records, rule=rule, progress=False)
            for tile in display_tiles(chunk.cpu(), preprocess.denormalize, tile_px, preprocess.channel_order)
        ]
        for rule in (list(rules) if rules else [census.mirror.rule])
    }


def _one_or_all(tiles: dict[str, list[Tile]]) -> list[Tile] | dict[str, list[Tile]]:
    """One rule's tiles as they are (no captions); several by rule (a captioned grid each)."""
    return next(iter(tiles.values())) if len(tiles) == 1 else tiles


def _named(tiles: dict[str, list[Tile]]) -> str:
    return f"rule {next(iter(tiles))}" if len(tiles) == 1 else f"rules {', '.join(tiles)}"


def _panel(tiles: dict[str, list[Tile]]) -> Image.Image:
    """One channel's Fig. 2 panel, without the sheet's title strip."""
    sheet = figure2(_one_or_all(tiles), "")
    return sheet.crop((0, TITLE, sheet.width, sheet.height))


def _note(text: str, size: int = 13) -> Image.Image:
    face = font(size)
    out = Image.new("RGB", (round(face.getlength(text)) + 8, size + 7), "white")
    ImageDraw.Draw(out).text((2, 2), text, fill=INK, font=face)
    return out


def _heading(unit: Unit) -> Image.Image:
    q = unit.quantiles
    lines = [
        f"{unit.layer}  channel {unit.channel}",
        f"active (max > 0) in {unit.active:.1%} of {unit.images} images; per-image maximum: mean {unit.mean:.4g}, "
        f"std {unit.std:.4g}",
        "quantiles: " + ", ".join(f"{k:g}: {v:.4g}" for k, v in q.items()),
    ]
    out = Image.new("RGB", (max(round(font(13).getlength(t)) for t in lines) + 8, 24 + 18 * (len(lines) - 1)), "white")
    draw = ImageDraw.Draw(out)
    draw.text((2, 0), lines[0], fill=INK, font=font(18))
    for n, text in enumerate(lines[1:]):
        draw.text((2, 24 + 18 * n), text, fill=INK, font=font(13))
    return out


def _histogram(unit: Unit) -> Image.Image:
    """Bars of the per-image maximum's histogram, the quantiles marked in red and written below."""
    edges, counts = (t.double() for t in unit.histogram)
    w, h = CHART
    out = Image.new("RGB", (w + 8, h + 52), "white")
    draw = ImageDraw.Draw(out)
    draw.text((2, 0), "per-image maximum (images per bin)", fill=INK, font=font(12))
    top, low, high = 18, float(edges[0]), float(edges[-1])
    span = max(high - low, 1e-12)
    peak = max(float(counts.max()), 1.0)
    bars = len(counts)
    for i, count in enumerate(counts.tolist()):
        x0, x1 = 4 + round(i * w / bars), 4 + round((i + 1) * w / bars) - 1
        if count:
            draw.rectangle([x0, top + h - max(1, round(count / peak * h)), x1, top + h], fill=BAR)
    draw.line([(4, top + h), (4 + w, top + h)], fill=INK)
    for value in unit.quantiles.values():
        x = 4 + round((value - low) / span * w)
        draw.line([(x, top), (x, top + h)], fill=MARK)
    draw.text((4, top + h + 4), f"{low:.3g}", fill=INK, font=font(11))
    end = f"{high:.3g}"
    draw.text((4 + w - round(font(11).getlength(end)), top + h + 4), end, fill=INK, font=font(11))
    marks = "red: quantiles " + ", ".join(f"{q:g}" for q in unit.quantiles)
    draw.text((4, top + h + 18), marks, fill=MARK, font=font(11))
    return out


def _classes(unit: Unit) -> Image.Image:
    """The mean per-image maximum of the strongest classes, with how many of the top entries are theirs."""
    if not unit.classes:
        return _note("no labels: no class statistics")
    shown = sorted(unit.classes, key=lambda c: -c.mean)[:CLASSES]
    in_top = dict(unit.top_classes)
    face, line = font(11), 14
    names = [f"{c.name} ({in_top[c.name]} in top {len(unit.top)})" if c.name in in_top else c.name for c in shown]
    left = max(round(face.getlength(n)) for n in names) + 8
    w = CHART[0] - 60
    out = Image.new("RGB", (left + w + 60, 18 + line * len(shown)), "white")
    draw = ImageDraw.Draw(out)
    draw.text(
        (2, 0),
        f"mean per-image maximum by class (strongest {len(shown)} of {len(unit.classes)})",
        fill=INK,
        font=font(12),
    )
    peak = max(max(abs(c.mean) for c in shown), 1e-12)
    for n, (stats, name) in enumerate(zip(shown, names)):
        y = 18 + n * line
        draw.text((2, y), name, fill=INK, font=face)
        draw.rectangle([left, y + 2, left + max(1, round(max(stats.mean, 0) / peak * w)), y + line - 3], fill=BAR)
        draw.text((left + w + 4, y), f"{stats.mean:.3g}", fill=INK, font=face)
    return out


def _hit_map(hits: torch.Tensor) -> Image.Image:
    """Where the maximum was, over the images where the unit is active: ``hits`` ``(H, W)`` in viridis."""
    h, w = hits.shape
    factor = max(1, 120 // max(h, w))
    picture = to_pil(upscale(colormap(hits.double(), 0.0, max(float(hits.max()), 1.0)), factor))
    return column([_note(f"where its maximum is ({h}x{w} map; yellow: {int(hits.max())} images)", 12), picture], 2)
