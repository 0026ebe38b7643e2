"""The paper's Fig. 7: occlusion sensitivity maps drawn over the image."""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

from ..analyses.occlusion import Occlusion, squares
from .draw import (
    CATEGORIES,
    class_name,
    colormap,
    colour_bar,
    label_strip,
    legend,
    outline,
    row,
    show_projection,
    to_pil,
    upscale,
)

__all__ = ["figure7"]


def _over(colours: torch.Tensor, image: torch.Tensor, stride: int, factor: int) -> Image.Image:
    """``(3, P, Q)`` colours per square position laid over ``image`` ``(3, H, W)``, enlarged ``factor`` times."""
    h, w = image.shape[-2:]
    cells = upscale(colours, stride)[:, :h, :w]
    return to_pil(upscale(0.8 * cells + 0.2 * image, factor))


def figure7(
    image: torch.Tensor,
    occlusion: Occlusion,
    names: Sequence[str] | None = None,
    size: int = 224,
    rule: str = "deconvnet",
    channel_order: str = "RGB",
) -> Image.Image:
    """The paper's Fig. 7 for one image ``(3, H, W)`` in [0, 1], maps drawn over the image.

    (a) the image, with the square where the true class loses most; per square position: (b) the
    total activation of the chosen feature map, (d) the true class's probability, (e) the most
    probable class; (c) that feature map projected to pixels for the unoccluded image, by ``rule``
    (shown as RGB for a model that takes ``channel_order`` "BGR").
    """
    o = occlusion
    factor = max(1, round(size / image.shape[-2]))
    true = class_name(o.label, names)
    low, high = float(o.activation.min()), max(float(o.activation.max()), o.clean_activation)
    activation = _over(colormap(o.activation, low, high), image, o.stride, factor)
    probability = _over(colormap(o.probability, 0.0, 1.0), image, o.stride, factor)
    panels = [  # bars and legend get empty labels to stay level with their maps
        label_strip(_worst_square(image, o, factor), f"(a) {true}: worst square"),
        row(
            [
                label_strip(activation, f"(b) {o.layer} map {o.channel}, total"),
                label_strip(colour_bar(activation.height, low, high, o.clean_activation), ""),
            ],
            4,
        ),
        label_strip(
            to_pil(upscale(show_projection(o.projection[None], channel_order)[0], factor)),
            f"(c) map {o.channel} projected ({rule})",
        ),
        row(
            [
                label_strip(probability, f"(d) p({true})"),
                label_strip(colour_bar(probability.height, 0.0, 1.0, float(o.clean_probabilities[o.label])), ""),
            ],
            4,
        ),
        _most_probable(image, o, names, factor),
    ]
    title = (
        f"occlusion by a {o.square}x{o.square} grey square, stride {o.stride}; unoccluded: "
        f"p({true}) = {float(o.clean_probabilities[o.label]):.3f}, {o.layer} map {o.channel} total = "
        f"{o.clean_activation:.3g} (triangles)"
    )
    return label_strip(row(panels, 16), title, size=15)


def _worst_square(image: torch.Tensor, o: Occlusion, factor: int) -> Image.Image:
    """(a): the image ``(3, H, W)`` enlarged ``factor`` times, the square where the true class loses most outlined."""
    h, w = image.shape[-2:]
    worst = divmod(int(o.probability.argmin()), o.probability.shape[1])
    rows, cols = squares(h, w, o.square, o.stride)
    ys, xs = rows[worst[0]].nonzero()[:, 0], cols[worst[1]].nonzero()[:, 0]
    shown = to_pil(upscale(image, factor))
    outline(shown, (int(ys[0]), int(xs[0]), int(ys[-1]) + 1, int(xs[-1]) + 1), factor)
    return shown


def _most_probable(image: torch.Tensor, o: Occlusion, names: Sequence[str] | None, factor: int) -> Image.Image:
    """(e): the most probable class per square position, one colour per class (by area), with its legend."""
    counts = o.predicted.flatten().bincount()
    found = [int(k) for k in counts.argsort(descending=True) if counts[k] > 0]  # by area
    colour = torch.zeros(len(counts), dtype=torch.long)
    colour[found] = torch.arange(len(found)) % len(CATEGORIES)
    predicted = _over(CATEGORIES[colour[o.predicted]].permute(2, 0, 1), image, o.stride, factor)
    return row(
        [
            label_strip(predicted, "(e) most probable class"),
            label_strip(legend([(CATEGORIES[colour[k]], class_name(k, names)) for k in found]), ""),
        ],
        6,
    )
