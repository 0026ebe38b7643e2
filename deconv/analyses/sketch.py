"""A mergeable quantile sketch per channel: a histogram whose bins widen by powers of two as the range grows.

Bin ``i`` at scale ``e`` holds the values in ``[i * 2**e, (i + 1) * 2**e)``; a channel keeps ``BINS``
consecutive bins from the one holding its minimum, at the finest scale at which its maximum still fits.
Widening merges aligned pairs of bins, so the counts depend only on the values seen, never on their
order: shards merge exactly, to the counts of one pass over all of them.
"""

from __future__ import annotations

import torch

__all__ = ["Sketch"]

BINS = 2048  # per channel: 16 KB of int64 counts
FINEST = -1074  # float64's smallest exponent: bins narrower than a value's own precision split nothing


class Sketch:
    """Running histogram of ``channels`` streams of values: ``counts`` ``(C, BINS)`` int64 from bin ``start``
    ``(C,)`` at scale ``scale`` ``(C,)`` (bins ``2**scale`` wide), and each channel's exact ``low``/``high``."""

    def __init__(self, channels: int) -> None:
        self.counts = torch.zeros(channels, BINS, dtype=torch.int64)
        self.start = torch.zeros(channels, dtype=torch.int64)
        self.scale = torch.full((channels,), FINEST, dtype=torch.int64)
        self.low = torch.full((channels,), torch.inf, dtype=torch.float64)
        self.high = torch.full((channels,), -torch.inf, dtype=torch.float64)

    @property
    def total(self) -> torch.Tensor:
        """``(C,)`` values counted per channel."""
        return self.counts.sum(1)

    def update(self, values: torch.Tensor) -> None:
        """Counts ``values`` ``(C, M)`` (finite)."""
        values = values.to(torch.float64)
        self._widen(torch.minimum(self.low, values.amin(1)), torch.maximum(self.high, values.amax(1)))
        bins = torch.floor(torch.ldexp(values, -self.scale[:, None])).to(torch.int64) - self.start[:, None]
        self.counts.scatter_add_(1, bins, torch.ones_like(bins))

    def merge(self, other: Sketch) -> None:
        """Adds another shard's counts: the result is that of one pass over both shards' values."""
        counted = other.total > 0
        low = torch.where(counted, torch.minimum(self.low, other.low), self.low)
        high = torch.where(counted, torch.maximum(self.high, other.high), self.high)
        self._widen(low, high)
        self.counts += other._at(self.scale, self.start)

    def _widen(self, low: torch.Tensor, high: torch.Tensor) -> None:
        """Moves every channel to the finest scale at which ``[low, high]`` fits in ``BINS`` bins."""
        seen = torch.isfinite(low)
        scale = self.scale.clone()
        # from an estimate, up until it fits (at most a few steps): the count of bins shrinks as the scale grows
        span = torch.where(seen, high - low, 0.0)
        magnitude = torch.maximum(low.abs(), high.abs()).nan_to_num(0.0, 0.0, 0.0)
        estimate = torch.ceil(torch.log2(span / BINS)).nan_to_num(FINEST, FINEST, FINEST).to(torch.int64) - 1
        precision = (torch.frexp(magnitude)[1].to(torch.int64) - 53).clamp(min=FINEST)  # bins no finer than a value
        scale = torch.maximum(scale, torch.maximum(estimate, precision))
        while True:
            first = torch.floor(torch.ldexp(torch.where(seen, low, 0.0), -scale)).to(torch.int64)
            last = torch.floor(torch.ldexp(torch.where(seen, high, 0.0), -scale)).to(torch.int64)
            over = last - first >= BINS
            if not bool(over.any()):
                break
            scale = scale + over.to(torch.int64)
        self.counts = self._at(scale, torch.where(seen, first, 0))
        self.scale, self.start, self.low, self.high = scale, torch.where(seen, first, 0), low, high

    def _at(self, scale: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """This sketch's counts rebinned to coarser (or equal) ``scale`` from bin ``start``, ``(C, BINS)``."""
        if bool((scale == self.scale).all()) and bool((start == self.start).all()):
            return self.counts.clone()
        shift = scale - self.scale  # >= 0
        bins = torch.arange(BINS, dtype=torch.int64) + self.start[:, None]  # (C, BINS) absolute, at the old scale
        moved = torch.floor(torch.ldexp(bins.to(torch.float64), -shift[:, None])).to(torch.int64) - start[:, None]
        kept = self.counts > 0
        out = torch.zeros_like(self.counts)
        out.scatter_add_(1, torch.where(kept, moved, 0), torch.where(kept, self.counts, 0))
        return out

    def quantiles(self, q: torch.Tensor) -> torch.Tensor:
        """``(C, Q)`` estimates of the quantiles ``q`` ``(Q,)`` in [0, 1]: linear inside a bin, clamped to the
        channel's exact range; the rank error is at most the count of one bin. NaN for a channel with no values."""
        total = self.total.to(torch.float64)
        cumulative = self.counts.cumsum(1).to(torch.float64)  # (C, BINS)
        rank = q.to(torch.float64)[None, :] * total[:, None]  # (C, Q): values below the quantile
        bin = torch.searchsorted(cumulative, rank, right=True).clamp(max=BINS - 1)  # first bin holding the rank
        before = torch.where(bin > 0, cumulative.gather(1, (bin - 1).clamp(min=0)), 0.0)
        inside = self.counts.gather(1, bin).to(torch.float64)
        fraction = torch.where(inside > 0, (rank - before) / inside, 0.0)
        edge = torch.ldexp((self.start[:, None] + bin).to(torch.float64), self.scale[:, None])
        width = torch.ldexp(torch.ones_like(edge), self.scale[:, None])
        value = torch.minimum(torch.maximum(edge + fraction * width, self.low[:, None]), self.high[:, None])
        return torch.where(total[:, None] > 0, value, torch.nan)

    def histogram(self, channel: int, bins: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
        """One channel's counts in ``bins`` equal bins over its range, for drawing: ``edges`` ``(bins + 1,)``
        and ``counts`` ``(bins,)`` (each sketch bin goes whole to the display bin holding its centre)."""
        low, high = float(self.low[channel]), float(self.high[channel])
        if not low <= high:
            return torch.zeros(bins + 1, dtype=torch.float64), torch.zeros(bins, dtype=torch.int64)
        edges = torch.linspace(low, high if high > low else low + 1.0, bins + 1, dtype=torch.float64)
        width = 2.0 ** int(self.scale[channel])
        centres = (torch.arange(BINS, dtype=torch.float64) + int(self.start[channel]) + 0.5) * width
        where = torch.bucketize(centres.clamp(low, high), edges[1:-1], right=True)
        counts = torch.zeros(bins, dtype=torch.int64).scatter_add_(0, where, self.counts[channel])
        return edges, counts

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"counts": self.counts, "start": self.start, "scale": self.scale, "low": self.low, "high": self.high}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> Sketch:
        sketch = cls(state["counts"].shape[0])
        for name, value in state.items():
            setattr(sketch, name, torch.as_tensor(value).clone())
        return sketch
