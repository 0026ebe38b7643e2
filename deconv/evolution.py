"""The paper's Fig. 4: how the features of one layer evolve during training, checkpoint by checkpoint.

At each checkpoint, the scan of :mod:`deconv.scan` finds every channel's strongest activation over
the scan set; it is projected to pixels and cut, with its image, to its receptive field, as in
Fig. 2, but moved inside the image: deep layers see more than a small image, and then the tile
is the whole image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch.utils.data import Dataset

from .cone import cut
from .errors import SelectionError
from .mirror import Box, Mirror, Selection
from .scan import Record, scan

__all__ = ["Evolution", "evolve"]


@dataclass(frozen=True)
class Evolution:
    """``K`` channels of ``layer`` over ``T`` checkpoints, in checkpoint order.

    ``records[k][t]`` is channel ``channels[k]``'s strongest activation at checkpoint ``t``; its
    ``projections`` and the image ``patches`` ``(K, T, C, h, w)`` are cut to its receptive field,
    moved inside the image (the whole image where the field is larger).
    """

    layer: str
    channels: list[int]
    records: list[list[Record]]
    projections: torch.Tensor
    patches: torch.Tensor

    def strongest(self, n: int) -> Evolution:
        """The ``n`` channels with the largest activation at the last checkpoint, in channel order."""
        best = sorted(sorted(range(len(self.channels)), key=lambda k: -self.records[k][-1].value)[:n])
        return Evolution(
            self.layer, [self.channels[k] for k in best], [self.records[k] for k in best],
            self.projections[best], self.patches[best],
        )


def _windows(mirror: Mirror, records: Sequence[Record], shape: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """Top-left corners ``(K, 2)`` and the size of the records' receptive fields, each moved inside the image."""
    boxes = [mirror.receptive_field(r.layer, r.y, r.x) if r.y is not None else Box(0, 0, *shape) for r in records]
    size = (min(boxes[0].bottom - boxes[0].top, shape[0]), min(boxes[0].right - boxes[0].left, shape[1]))
    origin = [(min(max(b.top, 0), shape[0] - size[0]), min(max(b.left, 0), shape[1] - size[1])) for b in boxes]
    return torch.tensor(origin), size


@torch.no_grad()
def evolve(
    mirrors: Iterable[Mirror],
    dataset: Dataset,
    layer: str,
    channels: Sequence[int] | None = None,
    *,
    indices: Sequence[int] | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    progress: bool = True,
    rule: str | None = None,
) -> Evolution:
    """Follows ``channels`` of ``layer`` (default: all) through ``mirrors``, one per checkpoint, in order.

    Each mirror scans ``dataset`` (the items ``indices``, default all) once; pass a generator to
    hold one checkpoint's model in memory at a time. ``rule`` is what the projections do at each
    ReLU (default: each mirror's).
    """
    columns: list[tuple[list[Record], torch.Tensor, torch.Tensor]] = []
    for mirror in mirrors:
        state = scan(mirror, dataset, [layer], k=1, batch_size=batch_size, num_workers=num_workers,
                     indices=indices, progress=progress)
        count = state.tops[layer].values.shape[0]
        channels = range(count) if channels is None else channels
        bad = [c for c in channels if not 0 <= c < count]
        if bad:
            raise SelectionError(f"channels {bad} are out of range for layer {layer!r} with {count} channels")
        best = {r.channel: r for r in state.records(dataset)}
        records = [best[c] for c in channels]
        images = mirror.check_images(torch.stack([torch.as_tensor(dataset[r.index][0]) for r in records]))
        selections = [Selection(k, layer, r.channel, r.y, r.x) for k, r in enumerate(records)]
        projections = mirror.project_many(images, selections, rule=rule).cpu()
        origin, size = _windows(mirror, records, tuple(images.shape[-2:]))
        k = torch.arange(len(records))
        columns.append((records, cut(projections, k, origin, size), cut(images.cpu(), k, origin, size)))
    if not columns:
        raise SelectionError("no checkpoints to follow")
    return Evolution(
        layer,
        list(channels or ()),
        [list(strip) for strip in zip(*(records for records, _, _ in columns))],
        torch.stack([projections for _, projections, _ in columns], 1),
        torch.stack([patches for _, _, patches in columns], 1),
    )
