"""Turning projections and image patches into pictures. Pure tensor code, then PIL at the edge.

Display convention: each projection is scaled on its own so that zero is mid-grey and the 99.5th
percentile of its magnitudes reaches black or white (``0.5 + 0.5 * p / q``, clipped); image patches are shown in
their true colours (normalisation undone), with the part of the box outside the image hatched.
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .io import atomic_write
from .occlusion import Occlusion, squares

if TYPE_CHECKING:
    from .evolution import Evolution
    from .scan import Projected, Record

__all__ = [
    "show_projection",
    "show_patch",
    "grid",
    "upscale",
    "to_pil",
    "channel_panel",
    "sheets",
    "label_strip",
    "save_png",
    "figure2",
    "Tile",
    "display_tiles",
    "display_size",
    "save_projections",
    "hatch",
    "colormap",
    "colour_bar",
    "legend",
    "row",
    "column",
    "class_name",
    "figure7",
    "figure4",
]

BACKGROUND = 1.0  # white paper between tiles
CLIP = 0.995  # projections reach black/white at this quantile of |p|: a few extreme pixels do not grey out the rest
OUTSIDE = (0.30, 0.30, 0.34)  # hatch colour for box parts beyond the image


def show_projection(projection: torch.Tensor, channel_order: str = "RGB") -> torch.Tensor:
    """``(K, C, h, w)`` projections -> ``(K, 3, h, w)`` in [0, 1], each scaled on its own around grey;
    the channels of a model that takes ``"BGR"`` are shown as RGB."""
    peak = torch.quantile(projection.flatten(1).abs(), CLIP, dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    shown = _rgb((0.5 + 0.5 * projection / peak).clamp(0, 1))
    return shown.flip(1) if channel_order == "BGR" and projection.shape[1] == 3 else shown


def show_patch(
    patch: torch.Tensor, denormalize: Callable[[torch.Tensor], torch.Tensor], valid: torch.Tensor | None = None
) -> torch.Tensor:
    """``(K, C, h, w)`` normalised image patches -> ``(K, 3, h, w)`` true colours in [0, 1].

    ``valid`` ``(K, 1, h, w)`` marks pixels inside the image; the rest is hatched.
    """
    shown = _rgb(denormalize(patch).clamp(0, 1))
    return shown if valid is None else hatch(shown, valid)


def hatch(tiles: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``(K, 3, h, w)`` in [0, 1] with the pixels outside ``valid`` ``(K, 1, h, w)`` hatched."""
    h, w = tiles.shape[-2:]
    stripes = ((torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 6 < 3).to(tiles)
    lines = torch.tensor(OUTSIDE).view(3, 1, 1).to(tiles) * (0.8 + 0.4 * stripes)
    return torch.where(valid.to(torch.bool), tiles, lines)


def _rgb(x: torch.Tensor) -> torch.Tensor:
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]


def upscale(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour enlargement of ``(..., h, w)`` by an integer ``factor``."""
    return x if factor == 1 else x.repeat_interleave(factor, -2).repeat_interleave(factor, -1)


def grid(tiles: torch.Tensor, columns: int, gap: int = 2, fill: float = BACKGROUND) -> torch.Tensor:
    """``(K, 3, h, w)`` tiles -> one ``(3, H, W)`` image, row by row, ``gap`` pixels apart (``fill``
    between them; white for uint8 tiles)."""
    fill = 255 if tiles.dtype == torch.uint8 else fill
    k, c, h, w = tiles.shape
    rows = max(1, math.ceil(k / columns))
    out = tiles.new_full((c, rows * (h + gap) - gap, columns * (w + gap) - gap), fill)
    for i in range(k):
        r, q = divmod(i, columns)
        out[:, r * (h + gap) : r * (h + gap) + h, q * (w + gap) : q * (w + gap) + w] = tiles[i]
    return out


def to_pil(image: torch.Tensor) -> Image.Image:
    """``(3, H, W)`` in [0, 1] (or uint8) -> an RGB PIL image."""
    pixels = image if image.dtype == torch.uint8 else _uint8(image)
    array = pixels.permute(1, 2, 0).contiguous().cpu().numpy()
    return Image.fromarray(array, "RGB")


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def label_strip(image: Image.Image, text: str, size: int = 13) -> Image.Image:
    """``image`` with ``text`` written above it."""
    height = size + 6
    out = Image.new("RGB", (image.width, image.height + height), "white")
    ImageDraw.Draw(out).text((2, 2), text, fill=(20, 20, 20), font=_font(size))
    out.paste(image, (0, height))
    return out


def channel_panel(
    projections: torch.Tensor | Sequence[torch.Tensor], patches: torch.Tensor, label: str, gap: int = 6, spacing: int = 2,
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
        pixels = (tiles if tiles.dtype == torch.uint8 else _uint8(tiles)).permute(0, 2, 3, 1).cpu().numpy()
        for i, tile in enumerate(pixels):
            r, q = divmod(i, columns)
            out.paste(Image.fromarray(tile, "RGB"), (left + q * (w + spacing), top + r * (h + spacing)))
    draw = ImageDraw.Draw(out)
    for n, caption in enumerate(captions):
        draw.text((n * (side + gap) + 1, 1), caption, fill=INK, font=_font(11))
    return label_strip(out, label)


def sheets(panels: Sequence[Image.Image], title: str, per_sheet: int = 64, margin: int = 10) -> list[Image.Image]:
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


def save_png(image: Image.Image, path: str | os.PathLike[str]) -> None:
    """Writes ``image`` as PNG, atomically."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


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


def _uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


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
    window = (slice(None), slice(None), slice((h - th) // 2, (h - th) // 2 + th), slice((w - tw) // 2, (w - tw) // 2 + tw))
    size = display_size((th, tw), tile_px)
    projections = _resize(_uint8(show_projection(chunk.projections[window].float().cpu(), channel_order)), size)
    patches = _resize(_uint8(show_patch(chunk.patches[window].float().cpu(), denormalize)), size)
    valid = torch.nn.functional.interpolate(chunk.inside[window].float().cpu(), size=size, mode="nearest") > 0.5
    if not bool(valid.all()):
        projections = _uint8(hatch(projections / 255.0, valid))
        patches = _uint8(hatch(patches / 255.0, valid))
    silent = chunk.projections.flatten(1).abs().amax(1).cpu() == 0
    return [
        Tile(r, p, q, r.value > 0 or not bool(n)) for r, p, q, n in zip(chunk.records, projections, patches, silent)
    ]


def save_projections(
    chunk: Projected, denormalize: Callable[[torch.Tensor], torch.Tensor], folder: str | os.PathLike[str], kind: str,
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
        panels.append(channel_panel(
            [torch.stack([blank(t, t.projection) for t in of_rule]) for of_rule in ranked],
            torch.stack([blank(t, t.patch) for t in first]),
            f"{first[0].record.layer}  channel {channel}{note}",
            captions=[*by_rule, "image patches"] if isinstance(tiles, Mapping) else (),
        ))
    return sheets(panels, title, per_sheet=len(panels))[0]


# ------------------------------------------------------------------ heat maps and figures 4 and 7

VIRIDIS = torch.tensor([
    (68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
    (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37),
]) / 255.0
"""Anchors of the viridis colour map, low to high (perceptually even; readable in greyscale)."""
CATEGORIES = torch.tensor([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]) / 255.0
"""Colours of categorical maps, one per class in order of first use (they repeat after ten)."""
INK = (20, 20, 20)


def colormap(values: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``(H, W)`` values -> ``(3, H, W)`` viridis colours in [0, 1]; ``low`` is dark blue, ``high`` yellow."""
    t = ((values.float() - low) / max(high - low, 1e-12)).clamp(0, 1) * (len(VIRIDIS) - 1)
    i = t.floor().long().clamp(max=len(VIRIDIS) - 2)
    f = (t - i)[..., None]
    return (VIRIDIS[i] * (1 - f) + VIRIDIS[i + 1] * f).permute(2, 0, 1)


def colour_bar(height: int, low: float, high: float, mark: float | None = None, width: int = 14) -> Image.Image:
    """A vertical colour bar for :func:`colormap`, ``high`` at the top, its ends written beside it;
    ``mark`` is drawn as a white line with a triangle pointing at it."""
    ramp = torch.linspace(high, low, height)[:, None].expand(height, width)
    font = _font(12)
    labels = [f"{high:.3g}", f"{low:.3g}"]
    out = Image.new("RGB", (width + 12 + max(round(font.getlength(t)) for t in labels), height), "white")
    out.paste(to_pil(colormap(ramp, low, high)), (0, 0))
    draw = ImageDraw.Draw(out)
    draw.text((width + 10, 0), labels[0], fill=INK, font=font)
    draw.text((width + 10, height - 14), labels[1], fill=INK, font=font)
    if mark is not None:
        y = min(max(round((high - mark) / max(high - low, 1e-12) * (height - 1)), 0), height - 1)
        draw.line([(0, y), (width - 1, y)], fill="white", width=2)
        draw.polygon([(width, y), (width + 7, y - 5), (width + 7, y + 5)], fill=INK)
    return out


def legend(entries: Sequence[tuple[torch.Tensor, str]], size: int = 14) -> Image.Image:
    """Colour swatches ``(3,)`` in [0, 1] with their names, one per line."""
    font = _font(12)
    width = size + 8 + max((round(font.getlength(name)) for _, name in entries), default=0)
    out = Image.new("RGB", (width, len(entries) * (size + 6)), "white")
    draw = ImageDraw.Draw(out)
    for n, (colour, name) in enumerate(entries):
        y = n * (size + 6)
        draw.rectangle([0, y, size - 1, y + size - 1], fill=tuple(int(v * 255) for v in colour.tolist()))
        draw.text((size + 6, y), name, fill=INK, font=font)
    return out


def row(images: Sequence[Image.Image], gap: int = 12) -> Image.Image:
    """Images side by side, top-aligned, ``gap`` pixels apart on white."""
    out = Image.new("RGB", (sum(i.width for i in images) + gap * (len(images) - 1), max(i.height for i in images)), "white")
    x = 0
    for image in images:
        out.paste(image, (x, 0))
        x += image.width + gap
    return out


def column(images: Sequence[Image.Image], gap: int = 12) -> Image.Image:
    """Images one below the other, left-aligned, ``gap`` pixels apart on white."""
    return row([i.transpose(Image.Transpose.TRANSPOSE) for i in images], gap).transpose(Image.Transpose.TRANSPOSE)


def class_name(k: int, names: Sequence[str] | None) -> str:
    """``names[k]``, or ``"class k"`` where the model names no classes."""
    return names[k] if names and 0 <= k < len(names) else f"class {k}"


def _over(colours: torch.Tensor, image: torch.Tensor, stride: int, factor: int) -> Image.Image:
    """``(3, P, Q)`` colours per square position laid over ``image`` ``(3, H, W)``, enlarged ``factor`` times."""
    h, w = image.shape[-2:]
    cells = upscale(colours, stride)[:, :h, :w]
    return to_pil(upscale(0.8 * cells + 0.2 * image, factor))


def figure7(
    image: torch.Tensor, occlusion: Occlusion, names: Sequence[str] | None = None, size: int = 224, rule: str = "deconvnet",
    channel_order: str = "RGB",
) -> Image.Image:
    """The paper's Fig. 7 for one image ``(3, H, W)`` in [0, 1], maps drawn over the image.

    (a) the image, with the square where the true class loses most; per square position: (b) the
    total activation of the chosen feature map, (d) the true class's probability, (e) the most
    probable class; (c) that feature map projected to pixels for the unoccluded image, by ``rule``
    (shown as RGB for a model that takes ``channel_order`` "BGR").
    """
    o = occlusion
    h, w = image.shape[-2:]
    factor = max(1, round(size / h))
    worst = divmod(int(o.probability.argmin()), o.probability.shape[1])
    rows, cols = squares(h, w, o.square, o.stride)
    ys, xs = rows[worst[0]].nonzero()[:, 0], cols[worst[1]].nonzero()[:, 0]
    shown = to_pil(upscale(image, factor))
    ImageDraw.Draw(shown).rectangle(
        [int(xs[0]) * factor, int(ys[0]) * factor, (int(xs[-1]) + 1) * factor - 1, (int(ys[-1]) + 1) * factor - 1],
        outline=(255, 60, 60), width=2,
    )
    true = class_name(o.label, names)
    low, high = float(o.activation.min()), max(float(o.activation.max()), o.clean_activation)
    activation = _over(colormap(o.activation, low, high), image, o.stride, factor)
    probability = _over(colormap(o.probability, 0.0, 1.0), image, o.stride, factor)
    counts = o.predicted.flatten().bincount()
    found = [int(k) for k in counts.argsort(descending=True) if counts[k] > 0]  # by area
    colour = torch.zeros(len(counts), dtype=torch.long)
    colour[found] = torch.arange(len(found)) % len(CATEGORIES)
    predicted = _over(CATEGORIES[colour[o.predicted]].permute(2, 0, 1), image, o.stride, factor)
    panels = [  # bars and legend get empty labels to stay level with their maps
        label_strip(shown, f"(a) {true}: worst square"),
        row([label_strip(activation, f"(b) {o.layer} map {o.channel}, total"),
             label_strip(colour_bar(activation.height, low, high, o.clean_activation), "")], 4),
        label_strip(to_pil(upscale(show_projection(o.projection[None], channel_order)[0], factor)), f"(c) map {o.channel} projected ({rule})"),
        row([label_strip(probability, f"(d) p({true})"),
             label_strip(colour_bar(probability.height, 0.0, 1.0, float(o.clean_probabilities[o.label])), "")], 4),
        row([label_strip(predicted, "(e) most probable class"),
             label_strip(legend([(CATEGORIES[colour[k]], class_name(k, names)) for k in found]), "")], 6),
    ]
    title = (
        f"occlusion by a {o.square}x{o.square} grey square, stride {o.stride}; unoccluded: "
        f"p({true}) = {float(o.clean_probabilities[o.label]):.3f}, {o.layer} map {o.channel} total = "
        f"{o.clean_activation:.3g} (triangles)"
    )
    return label_strip(row(panels, 16), title, size=15)


def figure4(
    evolution: Evolution, checkpoints: Sequence[str], denormalize: Callable[[torch.Tensor], torch.Tensor], tile_px: int = 72,
    rule: str = "deconvnet", channel_order: str = "RGB",
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
            label_strip(to_pil(grid(torch.stack([tiles[k].projection, tiles[k].patch]), 2)), f"{name}: {tiles[k].record.value:.3g}")
            for tiles, name in zip(columns, checkpoints)
        ]
        strips.append(label_strip(row(cells), f"{e.layer} channel {channel}"))
    return label_strip(column(strips, 16), f"{e.layer}: each channel's strongest activation, by checkpoint (rule: {rule})", size=15)
