"""Drawing primitives shared by the figures and ``deconv serve``: projections and image patches as
pictures, grids, boxes, labels, colour maps and bars. Pure tensor code, then PIL at the edge.

Display convention: each projection is scaled on its own so that zero is mid-grey and the 99.5th
percentile of its magnitudes reaches black or white (``0.5 + 0.5 * p / q``, clipped); image patches are shown in
their true colours (normalisation undone), with the part of the box outside the image hatched.
"""

from __future__ import annotations

import functools
import math
import os
import struct
import zlib
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..io import atomic_write

__all__ = [
    "VIRIDIS",
    "CATEGORIES",
    "as_uint8",
    "show_projection",
    "show_patch",
    "hatch",
    "upscale",
    "resize",
    "grid",
    "to_pil",
    "outline",
    "font",
    "label_strip",
    "row",
    "column",
    "save_png",
    "encode_png",
    "colormap",
    "colour_bar",
    "legend",
    "class_name",
]

BACKGROUND = 1.0  # white paper between tiles
CLIP = 0.995  # projections reach black/white at this quantile of |p|: a few extreme pixels do not grey out the rest
OUTSIDE = (0.30, 0.30, 0.34)  # hatch colour for box parts beyond the image
INK = (20, 20, 20)  # text
BOX = (255, 60, 60)  # the outline of a box drawn on an image

VIRIDIS = (
    torch.tensor(
        [
            (68, 1, 84),
            (71, 44, 122),
            (59, 81, 139),
            (44, 113, 142),
            (33, 144, 141),
            (39, 173, 129),
            (92, 200, 99),
            (170, 220, 50),
            (253, 231, 37),
        ]
    )
    / 255.0
)
"""Anchors of the viridis colour map, low to high (perceptually even; readable in greyscale)."""
CATEGORIES = (
    torch.tensor(
        [
            (31, 119, 180),
            (255, 127, 14),
            (44, 160, 44),
            (214, 39, 40),
            (148, 103, 189),
            (140, 86, 75),
            (227, 119, 194),
            (127, 127, 127),
            (188, 189, 34),
            (23, 190, 207),
        ]
    )
    / 255.0
)
"""Colours of categorical maps, one per class in order of first use (they repeat after ten)."""


def as_uint8(x: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] as uint8 0..255 (grey ``(..., 3, h, w)`` expanded from one channel: converted once)."""
    if x.dim() >= 3 and x.shape[-3] == 3 and x.stride(-3) == 0:
        return as_uint8(x[..., :1, :, :]).expand(x.shape)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


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
    """``(K, 3, h, w)`` in [0, 1] (or uint8) with the pixels outside ``valid`` ``(K, 1, h, w)`` hatched."""
    h, w = tiles.shape[-2:]
    stripes = ((torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 6 < 3).float()
    lines = torch.tensor(OUTSIDE).view(3, 1, 1) * (0.8 + 0.4 * stripes)
    if tiles.dtype == torch.uint8:  # by bit masks: several times as fast as torch.where on bytes
        mask = valid.to(torch.uint8).neg_()  # 255 inside, 0 outside
        return (tiles & mask) | (as_uint8(lines) & ~mask)
    return torch.where(valid.to(torch.bool), tiles, lines.to(tiles))


def _rgb(x: torch.Tensor) -> torch.Tensor:
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]


def upscale(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour enlargement of ``(..., h, w)`` by an integer ``factor``."""
    return x if factor == 1 else x.repeat_interleave(factor, -2).repeat_interleave(factor, -1)


def resize(tiles: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(K, 3, h, w)`` uint8 -> ``(K, 3, *size)``: an integer enlargement repeats pixels, any other
    size is Pillow's Lanczos filter (a proper low-pass for downscaling)."""
    h, w = tiles.shape[-2:]
    if size[0] % h == 0 and size[0] // h == size[1] / w:
        return upscale(tiles, size[0] // h)
    pixels = tiles.permute(0, 2, 3, 1).numpy()
    out = [np.asarray(Image.fromarray(p).resize(size[::-1], Image.Resampling.LANCZOS)) for p in pixels]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


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
    pixels = image if image.dtype == torch.uint8 else as_uint8(image)
    array = pixels.permute(1, 2, 0).contiguous().cpu().numpy()
    return Image.fromarray(array, "RGB")


@functools.cache
def font(size: int) -> ImageFont.ImageFont:
    """Pillow's default font at ``size`` pixels (loaded once per size)."""
    return ImageFont.load_default(size=size)


def outline(image: Image.Image, box: Sequence[int], scale: int = 1) -> None:
    """Draws the box ``(top, left, bottom, right)`` of a picture enlarged ``scale`` times on ``image``."""
    top, left, bottom, right = box
    ImageDraw.Draw(image).rectangle(
        [left * scale, top * scale, right * scale - 1, bottom * scale - 1], outline=BOX, width=2
    )


def label_strip(image: Image.Image, text: str, size: int = 13) -> Image.Image:
    """``image`` with ``text`` written above it."""
    height = size + 6
    out = Image.new("RGB", (image.width, image.height + height), "white")
    ImageDraw.Draw(out).text((2, 2), text, fill=INK, font=font(size))
    out.paste(image, (0, height))
    return out


def save_png(image: Image.Image | np.ndarray, path: str | os.PathLike[str]) -> None:
    """Writes ``image`` (or ``(H, W, 3)`` uint8 pixels) as PNG, atomically (:func:`encode_png`)."""
    data = encode_png(np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else image)
    atomic_write(path, lambda f: f.write(data))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(pixels: np.ndarray, level: int = 1) -> bytes:
    """``(H, W, 3)`` uint8 pixels as an 8-bit RGB PNG: every row by the PNG "Up" filter (its difference
    from the row above, computed at once), deflated at ``level``. Lossless; about three times as fast as
    Pillow's adaptive filtering at its fastest level, at the same size, as the figures repeat rows."""
    h, w, _ = pixels.shape
    rows = np.ascontiguousarray(pixels, dtype=np.uint8).reshape(h, w * 3)
    filtered = np.empty((h, w * 3 + 1), np.uint8)
    filtered[:, 0] = 2  # the filter type of each row: Up
    filtered[:1, 1:] = rows[:1]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # wraps modulo 256, as PNG's filters do
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8 bits, RGB, deflate, adaptive filters, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(filtered, level))
        + _chunk(b"IEND", b"")
    )


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
    face = font(12)
    labels = [f"{high:.3g}", f"{low:.3g}"]
    out = Image.new("RGB", (width + 12 + max(round(face.getlength(t)) for t in labels), height), "white")
    out.paste(to_pil(colormap(ramp, low, high)), (0, 0))
    draw = ImageDraw.Draw(out)
    draw.text((width + 10, 0), labels[0], fill=INK, font=face)
    draw.text((width + 10, height - 14), labels[1], fill=INK, font=face)
    if mark is not None:
        y = min(max(round((high - mark) / max(high - low, 1e-12) * (height - 1)), 0), height - 1)
        draw.line([(0, y), (width - 1, y)], fill="white", width=2)
        draw.polygon([(width, y), (width + 7, y - 5), (width + 7, y + 5)], fill=INK)
    return out


def legend(entries: Sequence[tuple[torch.Tensor, str]], size: int = 14) -> Image.Image:
    """Colour swatches ``(3,)`` in [0, 1] with their names, one per line."""
    face = font(12)
    width = size + 8 + max((round(face.getlength(name)) for _, name in entries), default=0)
    out = Image.new("RGB", (width, len(entries) * (size + 6)), "white")
    draw = ImageDraw.Draw(out)
    for n, (colour, name) in enumerate(entries):
        y = n * (size + 6)
        draw.rectangle([0, y, size - 1, y + size - 1], fill=tuple(int(v * 255) for v in colour.tolist()))
        draw.text((size + 6, y), name, fill=INK, font=face)
    return out


def row(images: Sequence[Image.Image], gap: int = 12) -> Image.Image:
    """Images side by side, top-aligned, ``gap`` pixels apart on white."""
    out = Image.new(
        "RGB", (sum(i.width for i in images) + gap * (len(images) - 1), max(i.height for i in images)), "white"
    )
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
