"""A layer's census, kept while a scan streams the dataset: what the top ``k`` alone does not say about a unit.

Per channel a :class:`Tally` keeps the bottom ``k`` (the images with the smallest per-image minimum),
how often the unit is active and how strongly (moments and a quantile sketch of the per-image
maximum), the statistics of that maximum per class, and where the maximum falls on the map. Its
memory grows with channels x (``k`` + bins + classes + map positions), never with the dataset, and
shards merge exactly.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .sketch import Sketch
from .topk import TopK, _key, _largest

__all__ = ["Tally", "Extremes"]


class Extremes:
    """One batch of one layer, reduced per image and channel: ``maxima`` ``(B, C)``; for a ``census`` also
    ``minima`` ``(B, C)`` and the flat map position of every maximum, the first in row-major order,
    ``argmax`` ``(B, C)`` (``None`` otherwise and for a vector layer). :meth:`first` finds the positions
    of the few images that need them."""

    def __init__(self, out: torch.Tensor, census: bool) -> None:
        """From a layer's output ``(B, C, H, W)`` or ``(B, F)``."""
        self.out, self.size = out, None if out.dim() == 2 else (out.shape[2], out.shape[3])
        self.argmax = self.minima = None
        if out.dim() == 2:
            self.maxima = out
        elif census:  # one pooling window over the whole map: the maxima and their first positions at once
            # (max_pool2d: 15% faster than adaptive_max_pool2d, the same values and positions)
            maxima, argmax = torch.nn.functional.max_pool2d(out, out.shape[2:], return_indices=True)
            self.maxima, self.argmax = maxima.flatten(1), argmax.flatten(1)
        else:
            self.maxima = out.amax((2, 3))
        if census:
            self.minima = out if out.dim() == 2 else out.amin((2, 3))

    def first(self, best: torch.Tensor, largest: bool) -> torch.Tensor | None:
        """The flat positions ``(C, k)`` of the maxima (or minima) of the images ``best`` ``(C, k)`` (batch
        rows), the first on ties; ``None`` for a vector layer."""
        if self.size is None:
            return None
        if largest and self.argmax is not None:
            return self.argmax.cpu().T.gather(1, best)
        channel = torch.arange(self.out.shape[1], device=self.out.device)[:, None]
        maps = self.out[best.to(self.out.device), channel].flatten(2)  # (C, k, H * W)
        return (maps.argmax(2) if largest else maps.argmin(2)).cpu()

    def positions(self, flat: torch.Tensor | None, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows and columns ``(y, x)`` of flat positions (zeros for a vector layer), shaped like ``like``."""
        if flat is None or self.size is None:
            return torch.zeros_like(like, dtype=torch.long), torch.zeros_like(like, dtype=torch.long)
        return flat // self.size[1], flat % self.size[1]


class Tally:
    """The census of one layer of ``channels`` channels (maps of ``size`` ``(H, W)``, or ``None``):

    - ``bottom``: :class:`TopK` of the negated per-image minima (the most negative first, with positions);
    - ``active`` ``(C,)``: images whose maximum is > 0; ``total``, ``sum``, ``squares`` ``(C,)`` float64 of the
      per-image maximum; ``sketch``: its :class:`Sketch`;
    - per class (labels >= 0; the arrays grow with the largest label seen): ``class_images`` ``(K,)``,
      ``class_active`` ``(C, K)``, ``class_sum`` and ``class_max`` ``(C, K)`` float64 of the per-image maximum;
    - ``hits`` ``(C, H * W)``: images whose maximum lies at each map position, over the images where the unit
      is active.
    """

    def __init__(self, channels: int, k: int, size: tuple[int, int] | None, dtype: torch.dtype) -> None:
        self.size = size
        self.bottom = TopK(channels, k, dtype)
        self.active = torch.zeros(channels, dtype=torch.int64)
        self.sum = torch.zeros(channels, dtype=torch.float64)
        self.squares = torch.zeros(channels, dtype=torch.float64)
        self.sketch = Sketch(channels)
        self.class_images = torch.zeros(0, dtype=torch.int64)
        self.class_active = torch.zeros(channels, 0, dtype=torch.int64)
        self.class_sum = torch.zeros(channels, 0, dtype=torch.float64)
        self.class_max = torch.zeros(channels, 0, dtype=torch.float64)
        self.hits = torch.zeros(channels, size[0] * size[1] if size else 0, dtype=torch.int64)

    @property
    def channels(self) -> int:
        return self.active.shape[0]

    @staticmethod
    def count(tallies: Sequence[Tally], found: Sequence[Extremes], index: torch.Tensor, labels: torch.Tensor) -> None:
        """Counts one batch into the tallies of its layers, ``found[i]`` into ``tallies[i]``: the batch's dataset
        ``index`` and ``labels`` ``(B,)`` (-1: none). Each statistic is one operation over the channels of all
        the layers at once (per layer only the slices are added)."""
        assert all(f.minima is not None for f in found)
        peak = torch.cat([f.maxima for f in found], 1).detach().cpu().to(torch.float64)  # (B, all channels)
        on = peak > 0
        active, sums, squares = on.sum(0), peak.sum(0), (peak * peak).sum(0)
        negated = -torch.cat([f.minima for f in found], 1).detach().cpu().T  # (all channels, B): most negative first
        k = min(tallies[0].bottom.k, len(index))
        best = _largest(_key(negated, index), k)  # the batch's own bottom k
        lowest, chosen = negated.gather(1, best), index[best]
        hits = _hits(found, on)
        classes = _classes(peak, on, labels.cpu())
        start = 0
        for tally, extremes in zip(tallies, found):
            mine = slice(start, start + tally.channels)
            start = mine.stop
            tally.active += active[mine]
            tally.sum += sums[mine]
            tally.squares += squares[mine]
            tally.sketch.update(peak[:, mine].T)
            flat = extremes.first(best[mine], largest=False)
            tally.bottom.update(lowest[mine], chosen[mine], *extremes.positions(flat, best[mine]))
            if extremes.argmax is not None:
                tally.hits += hits.pop(0)
            if classes is not None:
                images, class_active, class_sum, class_max = classes
                tally._grow(len(images))
                tally.class_images[: len(images)] += images
                tally.class_active[:, : len(images)] += class_active[mine]
                tally.class_sum[:, : len(images)] += class_sum[mine]
                tally.class_max[:, : len(images)] = torch.maximum(tally.class_max[:, : len(images)], class_max[mine])

    def _grow(self, classes: int) -> None:
        """Widens the class arrays to ``classes`` columns."""
        more = classes - self.class_images.shape[0]
        if more <= 0:
            return
        self.class_images = torch.cat([self.class_images, torch.zeros(more, dtype=torch.int64)])
        self.class_active = torch.cat([self.class_active, torch.zeros(self.channels, more, dtype=torch.int64)], 1)
        self.class_sum = torch.cat([self.class_sum, torch.zeros(self.channels, more, dtype=torch.float64)], 1)
        self.class_max = torch.cat([self.class_max, torch.full((self.channels, more), -torch.inf).double()], 1)

    def merge(self, other: Tally) -> None:
        """Adds another shard's tally: the result is that of one scan over both shards."""
        self.bottom.merge(other.bottom)
        self.active += other.active
        self.sum += other.sum
        self.squares += other.squares
        self.sketch.merge(other.sketch)
        self._grow(other.class_images.shape[0])
        classes = other.class_images.shape[0]
        self.class_images[:classes] += other.class_images
        self.class_active[:, :classes] += other.class_active
        self.class_sum[:, :classes] += other.class_sum
        self.class_max[:, :classes] = torch.maximum(self.class_max[:, :classes], other.class_max)
        self.hits += other.hits

    ARRAYS = ("active", "sum", "squares", "class_images", "class_active", "class_sum", "class_max", "hits")

    def state_dict(self) -> dict:
        return {
            "size": list(self.size) if self.size else None,
            "bottom": self.bottom.state_dict(),
            "sketch": self.sketch.state_dict(),
            **{name: getattr(self, name) for name in self.ARRAYS},
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> Tally:
        bottom = TopK.from_state_dict(state["bottom"])
        size = tuple(state["size"]) if state["size"] else None
        tally = cls(bottom.values.shape[0], bottom.k, size, bottom.values.dtype)  # type: ignore[arg-type]
        tally.bottom = bottom
        tally.sketch = Sketch.from_state_dict(state["sketch"])
        for name in cls.ARRAYS:
            setattr(tally, name, torch.as_tensor(state[name]).clone())
        return tally


def _hits(found: Sequence[Extremes], on: torch.Tensor) -> list[torch.Tensor]:
    """Per map layer of ``found`` its ``(C, H * W)`` counts of the batch's maxima at each position, over the images
    where the unit is active (``on`` ``(B, all channels)``): one count over all the layers."""
    flat, cells, where, start = [], [], [], 0
    for extremes in found:
        channels = extremes.maxima.shape[1]
        if extremes.argmax is not None:
            size = extremes.size[0] * extremes.size[1]
            flat.append(extremes.argmax.cpu() + (sum(cells) + torch.arange(channels) * size))
            where.append(on[:, start : start + channels])
            cells.append(channels * size)
        start += channels
    if not flat:
        return []
    counts = torch.zeros(sum(cells), dtype=torch.int64)
    counts.index_add_(0, torch.cat(flat, 1).view(-1), torch.cat(where, 1).view(-1).to(torch.int64))
    return [c.view(f.shape[1], -1) for c, f in zip(counts.split(cells), flat)]


def _classes(
    peak: torch.Tensor, on: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """One batch's class statistics of ``peak`` ``(B, C)`` (``on``: ``peak > 0``) by ``labels`` ``(B,)`` (-1: none),
    over the classes up to the largest label seen: images ``(K,)``, active, sum and max ``(C, K)``; ``None``
    without labels."""
    known = labels >= 0
    if not bool(known.any()):
        return None
    if not bool(known.all()):
        peak, on, labels = peak[known], on[known], labels[known]
    classes = int(labels.max()) + 1
    members = torch.nn.functional.one_hot(labels, classes).to(torch.float64)  # (B, K)
    active = (on.T.to(torch.float64) @ members).round().to(torch.int64)  # exact: small integers
    high = torch.full((classes, peak.shape[1]), -torch.inf, dtype=torch.float64)
    high.scatter_reduce_(0, labels[:, None].expand_as(peak), peak, "amax")
    return members.sum(0).to(torch.int64), active, peak.T @ members, high.T
