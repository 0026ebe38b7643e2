"""Turning projections and image patches into pictures. Pure tensor code, then PIL at the edge.

Display convention: each projection is scaled on its own so that zero is mid-grey and its
largest magnitude reaches black or white (``0.5 + 0.5 * p / max|p|``); image patches are shown in
their true colours (normalisation undone), with the part of the box outside the image hatched.
"""
from __future__ import annotations

import io
import math
import os
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from .io import atomic_write

if TYPE_CHECKING:
    from .scan import Projected

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
]

BACKGROUND = 1.0  # white paper between tiles
OUTSIDE = (0.30, 0.30, 0.34)  # hatch colour for box parts beyond the image


def show_projection(projection: torch.Tensor) -> torch.Tensor:
    """``(K, C, h, w)`` projections -> ``(K, 3, h, w)`` in [0, 1], each scaled on its own around grey."""
    peak = projection.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return _rgb(0.5 + 0.5 * projection / peak)


def show_patch(
    patch: torch.Tensor, denormalize: Callable[[torch.Tensor], torch.Tensor], valid: torch.Tensor | None = None
) -> torch.Tensor:
    """``(K, C, h, w)`` normalised image patches -> ``(K, 3, h, w)`` true colours in [0, 1].

    ``valid`` ``(K, 1, h, w)`` marks pixels inside the image; the rest is hatched.
    """
    shown = _rgb(denormalize(patch).clamp(0, 1))
    if valid is None:
        return shown
    h, w = shown.shape[-2:]
    stripes = ((torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 6 < 3).to(shown)
    hatch = torch.tensor(OUTSIDE).view(3, 1, 1).to(shown) * (0.8 + 0.4 * stripes)
    return torch.where(valid.to(torch.bool), shown, hatch)


def _rgb(x: torch.Tensor) -> torch.Tensor:
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]


def upscale(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour enlargement of ``(..., h, w)`` by an integer ``factor``."""
    return x if factor == 1 else x.repeat_interleave(factor, -2).repeat_interleave(factor, -1)


def grid(tiles: torch.Tensor, columns: int, gap: int = 2, fill: float = BACKGROUND) -> torch.Tensor:
    """``(K, 3, h, w)`` tiles -> one ``(3, H, W)`` image, row by row, ``gap`` pixels apart."""
    k, c, h, w = tiles.shape
    rows = max(1, math.ceil(k / columns))
    out = tiles.new_full((c, rows * (h + gap) - gap, columns * (w + gap) - gap), fill)
    for i in range(k):
        r, q = divmod(i, columns)
        out[:, r * (h + gap) : r * (h + gap) + h, q * (w + gap) : q * (w + gap) + w] = tiles[i]
    return out


def to_pil(image: torch.Tensor) -> Image.Image:
    """``(3, H, W)`` in [0, 1] -> an RGB PIL image."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().cpu().numpy()
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


def channel_panel(projections: torch.Tensor, patches: torch.Tensor, label: str, gap: int = 6) -> Image.Image:
    """The paper's Fig. 2 cell: 3x3 projections beside the 3x3 image patches that caused them.

    ``projections`` and ``patches`` are ``(k, 3, h, w)`` display tiles (``k <= 9``), best first.
    """
    columns = 3 if projections.shape[0] > 1 else 1
    left = grid(projections, columns)
    right = grid(patches, columns)
    both = torch.full((3, left.shape[1], left.shape[2] + gap + right.shape[2]), BACKGROUND)
    both[:, :, : left.shape[2]] = left
    both[:, :, left.shape[2] + gap :] = right
    return label_strip(to_pil(both), label)


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


def figure2(
    chunks: Iterable[Projected], denormalize: Callable[[torch.Tensor], torch.Tensor], per_sheet: int = 64, size: int = 64
) -> list[Image.Image]:
    """Sheets of the paper's Fig. 2 for one layer: per channel, its top projections beside their patches.

    ``chunks`` are the :class:`~deconv.scan.Projected` chunks of one layer. Tiles are enlarged by
    an integer factor to about ``size`` pixels.
    """
    tiles: dict[int, list[tuple[int, torch.Tensor, torch.Tensor]]] = {}
    layer = ""
    for chunk in chunks:
        factor = max(1, round(size / chunk.projections.shape[-2]))
        shown = upscale(show_projection(chunk.projections.float().cpu()), factor)
        patches = upscale(show_patch(chunk.patches.float().cpu(), denormalize, chunk.inside.cpu()), factor)
        for record, projection, patch in zip(chunk.records, shown, patches):
            layer = record.layer
            tiles.setdefault(record.channel, []).append((record.rank, projection, patch))
    panels = []
    for channel in sorted(tiles):
        ranked = sorted(tiles[channel], key=lambda t: t[0])
        panels.append(channel_panel(
            torch.stack([p for _, p, _ in ranked]), torch.stack([q for _, _, q in ranked]), f"{layer}  channel {channel}"
        ))
    return sheets(panels, f"{layer}: top {max(len(t) for t in tiles.values())} activations per channel", per_sheet)
