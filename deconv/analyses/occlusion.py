"""The paper's Fig. 7: what the model makes of one image while a grey square hides part of it.

The square slides over the image in steps of ``stride`` pixels. Map cell ``(i, j)`` is the square
centred on pixel ``(i * stride + stride // 2, j * stride + stride // 2)``, so cell ``(i, j)`` stands
for the pixel block ``[i * stride, (i + 1) * stride) x [j * stride, (j + 1) * stride)``; squares are
clipped at the image border. The square holds ``fill`` in normalised units: 0, the pixel mean the
preprocessing subtracts, is the paper's grey.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from ..errors import InputError, SelectionError
from ..mirror import Mirror

__all__ = ["Occlusion", "OcclusionOptions", "occlude", "squares"]


@dataclass(frozen=True)
class Occlusion:
    """Occlusion maps of one image, ``(P, Q)`` = ``(ceil(H / stride), ceil(W / stride))`` square positions.

    ``activation``: total activation of feature map ``channel`` of ``layer`` (the map with the
    strongest activation in the unoccluded image); ``probability``: probability of class ``label``;
    ``predicted``: the most probable class (int64). ``projection`` ``(C, H, W)`` is that feature map
    projected to pixels for the unoccluded image; ``clean_activation`` and ``clean_probabilities``
    ``(K,)`` are the unoccluded values.
    """

    layer: str
    channel: int
    label: int
    square: int
    stride: int
    activation: torch.Tensor
    probability: torch.Tensor
    predicted: torch.Tensor
    projection: torch.Tensor
    clean_activation: float
    clean_probabilities: torch.Tensor


def squares(height: int, width: int, square: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column masks of every square position: ``(P, H)`` and ``(Q, W)`` booleans."""
    if square < 1 or stride < 1:
        raise InputError(f"square and stride must be >= 1 pixel, got square {square}, stride {stride}")

    def axis(size: int) -> torch.Tensor:
        start = torch.arange(0, size, stride) + stride // 2 - square // 2
        pixels = torch.arange(size)
        return (pixels >= start[:, None]) & (pixels < start[:, None] + square)

    return axis(height), axis(width)


def _totals(out: torch.Tensor) -> torch.Tensor:
    """Total activation per channel: ``(B, C, h, w)`` or ``(B, F)`` -> ``(B, C)``."""
    return out.flatten(2).sum(2) if out.dim() == 4 else out


@dataclass(frozen=True)
class OcclusionOptions:
    """How :func:`occlude` slides its square: ``square`` x ``square`` pixels of ``fill`` in steps of
    ``stride``; the feature map ``channel`` and the class ``label`` it watches (default: the strongest
    map, the most probable class); occluded copies go through the model ``batch_size`` at a time."""

    square: int
    stride: int
    channel: int | None = None
    label: int | None = None
    fill: float = 0.0
    batch_size: int = 256


@torch.no_grad()
def occlude(
    mirror: Mirror, image: torch.Tensor, layer: str, options: OcclusionOptions | None = None, **overrides: Any
) -> Occlusion:
    """Slides a ``square`` x ``square`` patch of ``fill`` over ``image`` ``(C, H, W)`` in steps of ``stride``:
    ``options`` (:class:`OcclusionOptions`), or its fields as keywords (``square=7, stride=1``).

    ``channel`` of ``layer`` defaults to the map with the strongest single activation in the
    unoccluded image, ``label`` to its most probable class. The model's last layer must output
    class scores ``(N, K)``. Occluded copies go through the model ``batch_size`` at a time,
    stopping once: one walk gives both the layer and the class scores.
    """
    how = OcclusionOptions(**overrides) if options is None else replace(options, **overrides)
    image = mirror.check_images(image[None])[0]
    out, clean = _forward(mirror, layer, image[None])
    how = _watched(how, layer, out, clean)
    activation, probabilities = _slide(mirror, layer, image, how)
    return Occlusion(
        layer=layer,
        channel=how.channel,
        label=how.label,
        square=how.square,
        stride=how.stride,
        activation=activation,
        probability=probabilities[..., how.label],
        predicted=probabilities.argmax(-1),
        projection=mirror.project(image[None], layer, how.channel, "map" if out.dim() == 4 else None)[0].cpu(),
        clean_activation=float(_totals(out)[0, how.channel]),
        clean_probabilities=clean[0].cpu(),
    )


def _forward(mirror: Mirror, layer: str, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The output of ``layer`` for ``images`` ``(B, C, H, W)`` and the class probabilities ``(B, K)``: one walk."""
    outputs = mirror.activations(images, [layer, mirror.output_layer])
    scores = outputs[mirror.output_layer]
    if scores.dim() != 2:
        raise SelectionError(f"the model's last layer outputs {tuple(scores.shape[1:])}, not class scores (K,)")
    return outputs[layer], scores.float().softmax(1)


def _watched(how: OcclusionOptions, layer: str, out: torch.Tensor, clean: torch.Tensor) -> OcclusionOptions:
    """``how`` with the channel and class to watch filled in from the unoccluded image's ``out`` and
    probabilities ``clean`` ``(1, K)``; ``SelectionError`` for one out of range."""
    strongest = out[0].flatten(1).amax(1) if out.dim() == 4 else out[0]  # per channel
    channel = int(strongest.argmax()) if how.channel is None else how.channel
    label = int(clean[0].argmax()) if how.label is None else how.label
    if not 0 <= channel < out.shape[1]:
        raise SelectionError(f"channel {channel} is out of range for layer {layer!r} with {out.shape[1]} channels")
    if not 0 <= label < clean.shape[1]:
        raise SelectionError(f"class {label} is out of range for a model with {clean.shape[1]} classes")
    return replace(how, channel=channel, label=label)


def _slide(mirror: Mirror, layer: str, image: torch.Tensor, how: OcclusionOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """The watched map's total activation ``(P, Q)`` and the class probabilities ``(P, Q, K)`` at every square
    position, ``how.batch_size`` occluded copies of ``image`` ``(C, H, W)`` at a time."""
    rows, cols = (m.to(image.device) for m in squares(image.shape[-2], image.shape[-1], how.square, how.stride))
    positions = len(rows) * len(cols)
    activation, probabilities = [], []
    for start in range(0, positions, how.batch_size):
        k = torch.arange(start, min(start + how.batch_size, positions), device=image.device)
        mask = rows[k // len(cols), None, :, None] & cols[k % len(cols), None, None, :]  # (B, 1, H, W)
        out, p = _forward(mirror, layer, torch.where(mask, how.fill, image))
        activation.append(_totals(out)[:, how.channel])
        probabilities.append(p)
    shape = (len(rows), len(cols))
    return torch.cat(activation).float().cpu().view(shape), torch.cat(probabilities).cpu().view(*shape, -1)
