"""The paper's Fig. 4: how the features of one layer evolve during training, checkpoint by checkpoint.

At each checkpoint, the scan of :mod:`deconv.analyses.top9` finds every channel's strongest activation over
the scan set; it is projected to pixels and cut, with its image, to its receptive field exactly as
in Fig. 2 (:func:`deconv.analyses.top9.project_top`), and drawn as Fig. 2's tiles are.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterable, Sequence

import torch
from torch.utils.data import Dataset

from ..errors import SelectionError
from ..mirror import Mirror
from .top9 import Projected, ProjectOptions, Record, ScanOptions, project_top, scan

__all__ = ["Evolution", "EvolutionOptions", "evolve"]


@dataclass(frozen=True)
class Evolution:
    """``K`` channels of ``layer`` over ``T`` checkpoints, in checkpoint order.

    ``records[k][t]`` is channel ``channels[k]``'s strongest activation at checkpoint ``t``; its
    ``projections`` and the image ``patches`` ``(K, T, C, h, w)`` are cut to its receptive-field box
    (zero where the box leaves the image, which ``inside`` ``(K, T, 1, h, w)`` marks), images of ``image_size``.
    """

    layer: str
    channels: list[int]
    records: list[list[Record]]
    projections: torch.Tensor
    patches: torch.Tensor
    inside: torch.Tensor
    image_size: tuple[int, int]

    def column(self, t: int) -> Projected:
        """Checkpoint ``t``'s projected records, as :func:`deconv.analyses.top9.project_top` gives them."""
        records = [strip[t] for strip in self.records]
        return Projected(records, self.projections[:, t], self.patches[:, t], self.inside[:, t], self.image_size)

    def strongest(self, n: int) -> Evolution:
        """The ``n`` channels with the largest activation at the last checkpoint, in channel order."""
        best = sorted(sorted(range(len(self.channels)), key=lambda k: -self.records[k][-1].value)[:n])
        return Evolution(
            self.layer,
            [self.channels[k] for k in best],
            [self.records[k] for k in best],
            self.projections[best],
            self.patches[best],
            self.inside[best],
            self.image_size,
        )


@dataclass(frozen=True)
class EvolutionOptions:
    """How :func:`evolve` scans and projects: the dataset items ``indices`` (default: all), loaded
    ``batch_size`` at a time by ``num_workers`` processes; ``rule`` what the projections do at each ReLU
    (default: each mirror's); a progress bar per checkpoint with ``progress``."""

    indices: Sequence[int] | None = None
    batch_size: int = 256
    num_workers: int = 0
    progress: bool = True
    rule: str | None = None


@torch.no_grad()
def evolve(
    mirrors: Iterable[Mirror],
    dataset: Dataset,
    layer: str,
    channels: Sequence[int] | None = None,
    options: EvolutionOptions | None = None,
    **overrides: Any,
) -> Evolution:
    """Follows ``channels`` of ``layer`` (default: all) through ``mirrors``, one per checkpoint, in order;
    ``options`` (:class:`EvolutionOptions`), with any of its fields given as keywords, say how.

    Each mirror scans ``dataset`` once; pass a generator to hold one checkpoint's model in memory at
    a time.
    """
    how = replace(options or EvolutionOptions(), **overrides)
    columns: list[Projected] = []
    for t, mirror in enumerate(mirrors, 1):
        scanning = ScanOptions(
            k=1,
            batch_size=how.batch_size,
            num_workers=how.num_workers,
            indices=how.indices,
            progress=how.progress,
            desc=f"scan at checkpoint {t}",
        )
        state = scan(mirror, dataset, [layer], scanning)
        count = state.tops[layer].values.shape[0]
        channels = range(count) if channels is None else channels
        bad = [c for c in channels if not 0 <= c < count]
        if bad:
            raise SelectionError(f"channels {bad} are out of range for layer {layer!r} with {count} channels")
        best = {r.channel: r for r in state.records(dataset)}
        columns.append(_column(mirror, dataset, [best[c] for c in channels], how))
    if not columns:
        raise SelectionError("no checkpoints to follow")
    return Evolution(
        layer,
        list(channels or ()),
        [list(strip) for strip in zip(*(c.records for c in columns))],
        torch.stack([c.projections for c in columns], 1),
        torch.stack([c.patches for c in columns], 1),
        torch.stack([c.inside for c in columns], 1),
        columns[0].image_size,
    )


def _column(mirror: Mirror, dataset: Dataset, records: list[Record], how: EvolutionOptions) -> Projected:
    """One checkpoint's ``records`` projected and cut as :func:`~deconv.analyses.top9.project_top` does, in
    their own order (the channels')."""
    projecting = ProjectOptions(batch_size=how.batch_size, num_workers=how.num_workers, progress=False, rule=how.rule)
    chunks = [c.cpu() for c in project_top(mirror, dataset, records, projecting)]
    done = [r for c in chunks for r in c.records]
    order = [done.index(r) for r in records]
    stacked = {f: torch.cat([getattr(c, f) for c in chunks])[order] for f in ("projections", "patches", "inside")}
    return Projected(records, **stacked, image_size=chunks[0].image_size)
