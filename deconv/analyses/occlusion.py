"""The paper's Fig. 7: what the model makes of one image while a grey square hides part of it.

The square slides over the image in steps of ``stride`` pixels. Map cell ``(i, j)`` is the square
centred on pixel ``(i * stride + stride // 2, j * stride + stride // 2)``, so cell ``(i, j)`` stands
for the pixel block ``[i * stride, (i + 1) * stride) x [j * stride, (j + 1) * stride)``; squares are
clipped at the image border. The square holds ``fill`` in normalised units: 0, the pixel mean the
preprocessing subtracts, is the paper's grey.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError, SelectionError
from ..mirror import Mirror

__all__ = ["Occlusion", "occlude", "squares"]


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


@torch.no_grad()
def occlude(
    mirror: Mirror,
    image: torch.Tensor,
    layer: str,
    *,
    square: int,
    stride: int,
    channel: int | None = None,
    label: int | None = None,
    fill: float = 0.0,
    batch_size: int = 256,
) -> Occlusion:
    """Slides a ``square`` x ``square`` patch of ``fill`` over ``image`` ``(C, H, W)`` in steps of ``stride``.

    ``channel`` of ``layer`` defaults to the map with the strongest single activation in the
    unoccluded image, ``label`` to its most probable class. The model's last layer must output
    class scores ``(N, K)``. Occluded copies go through the model ``batch_size`` at a time,
    stopping once: one walk gives both the layer and the class scores.
    """
    image = mirror.check_images(image[None])[0]
    top, last = mirror.index(layer), mirror.output

    def forward(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = mirror.run(images, keep=[top, last], remember=False).outputs
        if outputs[last].dim() != 2:
            raise SelectionError(
                f"the model's last layer outputs {tuple(outputs[last].shape[1:])}, not class scores (K,)"
            )
        return outputs[top], outputs[last].float().softmax(1)

    out, clean = forward(image[None])
    if channel is None:
        channel = int((out[0].flatten(1).amax(1) if out.dim() == 4 else out[0]).argmax())
    if label is None:
        label = int(clean[0].argmax())
    if not 0 <= channel < out.shape[1]:
        raise SelectionError(f"channel {channel} is out of range for layer {layer!r} with {out.shape[1]} channels")
    if not 0 <= label < clean.shape[1]:
        raise SelectionError(f"class {label} is out of range for a model with {clean.shape[1]} classes")
    rows, cols = (m.to(image.device) for m in squares(image.shape[-2], image.shape[-1], square, stride))
    activation, probabilities = [], []
    for start in range(0, len(rows) * len(cols), batch_size):
        k = torch.arange(start, min(start + batch_size, len(rows) * len(cols)), device=image.device)
        mask = rows[k // len(cols), None, :, None] & cols[k % len(cols), None, None, :]  # (B, 1, H, W)
        out_b, probabilities_b = forward(torch.where(mask, fill, image))
        activation.append(_totals(out_b)[:, channel])
        probabilities.append(probabilities_b)
    probabilities = torch.cat(probabilities).cpu().view(len(rows), len(cols), -1)
    return Occlusion(
        layer=layer,
        channel=channel,
        label=label,
        square=square,
        stride=stride,
        activation=torch.cat(activation).float().cpu().view(len(rows), len(cols)),
        probability=probabilities[..., label],
        predicted=probabilities.argmax(-1),
        projection=mirror.project(image[None], layer, channel, "map" if out.dim() == 4 else None)[0].cpu(),
        clean_activation=float(_totals(out)[0, channel]),
        clean_probabilities=clean[0].cpu(),
    )
