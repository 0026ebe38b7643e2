"""A mergeable quantile sketch per channel: a histogram whose bins widen by powers of two as the range grows.

Bin ``i`` at scale ``e`` holds the values in ``[i * 2**e, (i + 1) * 2**e)``; a channel keeps ``BINS``
consecutive bins from the one holding its minimum, at the finest scale at which its maximum still fits.
Each bin also keeps its smallest value and how many values equal it, so a value many images share
(the zeros of a ReLU, a background's response) is a quantile exactly, not smeared over its bin.
Widening merges aligned pairs of bins, so everything depends only on the values seen, never on their
order: shards merge exactly, to the sketch of one pass over all of them.
"""

from __future__ import annotations

import torch

__all__ = ["Sketch"]

BINS = 8192  # per channel 128 KB: counts, smallest values and their counts
WAITING = 4096  # values per channel held back and binned together: a range that grows moves the bins less often
ROWS = 4  # channels binned together: their bins (4 x 128 KB) and values stay in the cache between the steps
FINEST = -1000  # the narrowest bins: 2**-FINEST is still a float64, so binning is one exact multiplication


class Sketch:
    """Running histogram of ``channels`` streams of values: from bin ``start`` ``(C,)`` at scale ``scale``
    ``(C,)`` (bins ``2**scale`` wide), per bin ``(C, BINS)`` its ``counts``, its smallest value ``least``
    (inf: empty) and ``at_least``, how many values equal it; each channel's exact ``low`` and ``high``."""

    def __init__(self, channels: int) -> None:
        self.counts = torch.zeros(channels, BINS, dtype=torch.int32)
        self.least = torch.full((channels, BINS), torch.inf, dtype=torch.float64)
        self.at_least = torch.zeros(channels, BINS, dtype=torch.int32)
        self.start = torch.zeros(channels, dtype=torch.int64)
        self.scale = torch.full((channels,), FINEST, dtype=torch.int64)
        self.low = torch.full((channels,), torch.inf, dtype=torch.float64)
        self.high = torch.full((channels,), -torch.inf, dtype=torch.float64)
        self._waiting: list[torch.Tensor] = []

    @property
    def total(self) -> torch.Tensor:
        """``(C,)`` values counted per channel."""
        self._flush()
        return self.counts.sum(1, dtype=torch.int64)

    def update(self, values: torch.Tensor) -> None:
        """Counts ``values`` ``(C, M)`` (finite)."""
        self._waiting.append(values.to(torch.float64))
        if sum(v.shape[1] for v in self._waiting) >= WAITING:
            self._flush()

    def _flush(self) -> None:
        """Bins the values held back."""
        if not self._waiting:
            return
        values = torch.cat(self._waiting, 1)
        self._waiting = []
        self._widen(torch.minimum(self.low, values.amin(1)), torch.maximum(self.high, values.amax(1)))
        factor = torch.ldexp(torch.ones(len(self.scale), 1, dtype=torch.float64), -self.scale[:, None])
        start = -self.start[:, None].to(torch.float64)
        for rows in range(0, len(values), ROWS):
            mine = slice(rows, rows + ROWS)
            # value * 2**-scale - start is exact (a power of two, then a difference below BINS) and >= 0: truncated
            # to an integer, it is floored
            bins = torch.addcmul(start[mine], values[mine], factor[mine]).to(torch.int64)
            _bin(self.counts[mine], self.least[mine], self.at_least[mine], bins, values[mine])

    def merge(self, other: Sketch) -> None:
        """Adds another shard's sketch: the result is that of one pass over both shards' values."""
        self._flush()
        other = Sketch.from_state_dict(other.state_dict())
        self._widen(torch.minimum(self.low, other.low), torch.maximum(self.high, other.high))
        other._rebin(self.scale, self.start)
        self._add(other.counts, other.least, other.at_least)

    def _add(self, counts: torch.Tensor, least: torch.Tensor, at_least: torch.Tensor) -> None:
        """Adds bins at this sketch's scale and start."""
        smallest = torch.minimum(self.least, least)
        self.at_least = torch.where(self.least == smallest, self.at_least, 0) + torch.where(
            least == smallest, at_least, 0
        )
        self.counts, self.least = self.counts + counts, smallest

    def _widen(self, low: torch.Tensor, high: torch.Tensor) -> None:
        """Moves every channel to the finest scale at which ``[low, high]`` fits in ``BINS`` bins.

        That scale depends only on the range (it only grows with it), never on the order of the values.
        """
        seen = torch.isfinite(low)
        span = torch.where(seen, high - low, 0.0)
        magnitude = torch.where(seen, torch.maximum(low.abs(), high.abs()), 0.0)
        estimate = torch.ceil(torch.log2(span / BINS)).nan_to_num(FINEST, FINEST, FINEST).to(torch.int64) - 1
        precision = (torch.frexp(magnitude)[1].to(torch.int64) - 53).clamp(min=FINEST)  # no finer than a value
        scale = torch.maximum(self.scale, torch.maximum(estimate, precision))
        while True:  # from an estimate at most a step or two below
            first = torch.floor(torch.ldexp(torch.where(seen, low, 0.0), -scale)).to(torch.int64)
            last = torch.floor(torch.ldexp(torch.where(seen, high, 0.0), -scale)).to(torch.int64)
            over = last - first >= BINS
            if not bool(over.any()):
                break
            scale = scale + over.to(torch.int64)
        self._rebin(scale, first)
        self.low, self.high = low, high

    def _rebin(self, scale: torch.Tensor, start: torch.Tensor) -> None:
        """Moves the bins to a coarser (or equal) ``scale`` from bin ``start``: only the filled bins of the
        channels that move are touched."""
        moving = ((scale != self.scale) | (start != self.start)) & torch.isfinite(self.low)  # (an empty row is moved)
        rows = moving.nonzero().flatten()
        if len(rows):
            row, col = torch.nonzero(self.counts[rows], as_tuple=True)  # the filled bins that move
            channel = rows[row]
            absolute = (self.start[channel] + col).to(torch.float64)  # at the old scale
            moved = torch.floor(torch.ldexp(absolute, self.scale[channel] - scale[channel])).to(torch.int64)
            target = channel * BINS + moved - start[channel]  # flat
            count, least, at = self.counts[channel, col], self.least[channel, col], self.at_least[channel, col]
            for table, empty in ((self.counts, 0), (self.least, torch.inf), (self.at_least, 0)):
                table.index_fill_(0, rows, empty)
            self.counts.view(-1).index_add_(0, target, count)
            self.least.view(-1).scatter_reduce_(0, target, least, "amin")
            self.at_least.view(-1).index_add_(0, target, torch.where(least == self.least.view(-1)[target], at, 0))
        self.scale, self.start = scale, start

    def quantiles(self, q: torch.Tensor) -> torch.Tensor:
        """``(C, Q)`` estimates of the quantiles ``q`` ``(Q,)`` in [0, 1]; NaN for a channel with no values.

        The value of rank ``q * total``: a bin's smallest value for the ranks of the values equal to it, else
        linear from it to the bin's end. The rank error is at most the count of the bin's other values.
        """
        total = self.total.to(torch.float64)  # flushes
        cumulative = self.counts.cumsum(1, dtype=torch.int64).to(torch.float64)  # (C, BINS)
        rank = q.to(torch.float64)[None, :] * total[:, None]  # (C, Q): values below the quantile
        bin = torch.searchsorted(cumulative, rank, right=True).clamp(max=BINS - 1)  # the bin holding the rank
        inside = rank - torch.where(bin > 0, cumulative.gather(1, (bin - 1).clamp(min=0)), 0.0)
        count = self.counts.gather(1, bin).to(torch.float64)
        least, at = self.least.gather(1, bin), self.at_least.gather(1, bin).to(torch.float64)
        end = torch.ldexp((self.start[:, None] + bin + 1).to(torch.float64), self.scale[:, None])
        rest = torch.where(count > at, (inside - at) / (count - at), 0.0)
        value = torch.where(inside < at, least, least + rest * (end - least))
        value = torch.minimum(torch.maximum(value, self.low[:, None]), self.high[:, None])
        return torch.where(total[:, None] > 0, value, torch.nan)

    def histogram(self, channel: int, bins: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
        """One channel's counts in ``bins`` equal bins over its range, for drawing: ``edges`` ``(bins + 1,)``
        and ``counts`` ``(bins,)`` (each sketch bin goes whole to the display bin holding its smallest value)."""
        self._flush()
        low, high = float(self.low[channel]), float(self.high[channel])
        if not low <= high:
            return torch.zeros(bins + 1, dtype=torch.float64), torch.zeros(bins, dtype=torch.int64)
        edges = torch.linspace(low, high if high > low else low + 1.0, bins + 1, dtype=torch.float64)
        kept = self.counts[channel] > 0
        where = torch.bucketize(self.least[channel][kept], edges[1:-1], right=True)
        counts = torch.zeros(bins, dtype=torch.int64).scatter_add_(0, where, self.counts[channel][kept].long())
        return edges, counts

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The filled bins only (``channel``, ``bin``, ``counts``, ``least``, ``at_least``, each ``(N,)``) and each
        channel's ``start``, ``scale``, ``low`` and ``high``: a few values' sketch saves small."""
        self._flush()
        channel, bin = torch.nonzero(self.counts, as_tuple=True)
        return {
            "channel": channel,
            "bin": bin,
            **{name: getattr(self, name)[channel, bin] for name in ("counts", "least", "at_least")},
            **{name: getattr(self, name) for name in ("start", "scale", "low", "high")},
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> Sketch:
        sketch = cls(len(state["start"]))
        channel, bin = torch.as_tensor(state["channel"]).long(), torch.as_tensor(state["bin"]).long()
        for name in ("counts", "least", "at_least"):
            getattr(sketch, name)[channel, bin] = torch.as_tensor(state[name]).to(getattr(sketch, name).dtype)
        for name in ("start", "scale", "low", "high"):
            setattr(sketch, name, torch.as_tensor(state[name]).clone())
        return sketch


def _bin(
    counts: torch.Tensor, least: torch.Tensor, at_least: torch.Tensor, bins: torch.Tensor, values: torch.Tensor
) -> None:
    """Counts ``values`` ``(C, M)`` into their ``bins`` ``(C, M)`` of the tables ``(C, BINS)``."""
    counts.scatter_add_(1, bins, torch.ones_like(bins, dtype=torch.int32))
    before = least.gather(1, bins)
    least.scatter_reduce_(1, bins, values, "amin")
    after = least.gather(1, bins)  # the same for every value of one bin
    kept = torch.where(after < before, 0, at_least.gather(1, bins))  # a new smallest value: counted anew
    at_least.scatter_(1, bins, kept).scatter_add_(1, bins, (values == after).int())
