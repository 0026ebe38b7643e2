"""The paper's Fig. 2: the strongest activations of every channel over a dataset, projected to pixels.

:func:`scan` streams a dataset once and keeps, per channel, the ``k`` images whose strongest
activation in that channel is largest (one entry per image, as in the paper). :func:`project_top`
then projects each of them and cuts the receptive-field box from the projection and the image.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Sequence

import torch
from torch.utils.data import Dataset

from ..data import Batch, UnreadableImage, batches
from ..engine.graph import model_runs_on
from ..errors import NonFiniteError, SelectionError
from ..mirror import DEFAULT_MEMORY_BUDGET, Mirror, Selection, first_non_finite
from ..progress import progress_bar
from .tally import Extremes, Tally
from .topk import TopK, _key, _largest

__all__ = ["TopK", "Record", "ScanState", "ScanOptions", "Projected", "ProjectOptions", "scan", "project_top"]


@dataclass(frozen=True)
class Record:
    """One of the top ``k`` of a channel: the keys of ``top9.json``.

    ``index`` is the image's position in the dataset, ``path`` its file (or ``None``), ``(y, x)``
    the activation's position (``None`` for vector layers) and ``value`` the activation.
    """

    layer: str
    channel: int
    rank: int
    index: int
    path: str | None
    y: int | None
    x: int | None
    value: float

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))  # its fields in order: what asdict gives for these plain values, ten times as fast


@dataclass
class ScanState:
    """Where a scan is: the running top ``k`` per layer (and its :class:`~deconv.analyses.tally.Tally`, for a
    census), how many items of its order it has consumed, how many images it has scanned and which items
    it could not read."""

    tops: dict[str, TopK]
    position: int = 0
    images: int = 0
    skipped: list[tuple[int, str, str]] = field(default_factory=list)
    vector_layers: set[str] = field(default_factory=set)
    tallies: dict[str, Tally] = field(default_factory=dict)

    def records(self, dataset: Dataset) -> list[Record]:
        """The filled slots as records, by layer, channel and rank."""
        path = getattr(dataset, "path", lambda i: None)
        out = []
        for layer, top in self.tops.items():
            vector = layer in self.vector_layers
            values, indices, ys, xs = (t.tolist() for t in (top.values, top.index, top.y, top.x))
            for c in range(len(values)):
                for rank in range(top.k):
                    index = indices[c][rank]
                    if index < 0:
                        break
                    y, x = (None, None) if vector else (ys[c][rank], xs[c][rank])
                    out.append(Record(layer, c, rank, index, path(index), y, x, values[c][rank]))
        return out

    def merge(self, other: ScanState) -> None:
        """Adds another shard's state: the result is that of one scan over both shards."""
        for layer, top in other.tops.items():
            if layer in self.tops:
                self.tops[layer].merge(top)
            else:
                self.tops[layer] = TopK.from_state_dict(top.state_dict())  # not shared: updates replace its tensors
        for layer, tally in other.tallies.items():
            if layer in self.tallies:
                self.tallies[layer].merge(tally)
            else:
                self.tallies[layer] = Tally.from_state_dict(tally.state_dict())
        self.position += other.position
        self.images += other.images
        self.skipped = sorted(self.skipped + other.skipped)
        self.vector_layers |= other.vector_layers

    def state_dict(self) -> dict[str, Any]:
        return {
            "tops": {layer: top.state_dict() for layer, top in self.tops.items()},
            "position": self.position,
            "images": self.images,
            "skipped": self.skipped,
            "vector_layers": sorted(self.vector_layers),
            "tallies": {layer: tally.state_dict() for layer, tally in self.tallies.items()},
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ScanState:
        return cls(
            {layer: TopK.from_state_dict(top) for layer, top in state["tops"].items()},
            state["position"],
            state["images"],
            [tuple(s) for s in state["skipped"]],
            set(state["vector_layers"]),
            {layer: Tally.from_state_dict(tally) for layer, tally in state.get("tallies", {}).items()},
        )


@dataclass(frozen=True)
class ScanOptions:
    """How :func:`scan` runs: the top ``k`` kept per channel; images loaded ``batch_size`` at a time by
    ``num_workers`` processes, in the order ``indices`` (default: the whole dataset); ``strict`` raises at an
    unreadable image instead of skipping it; ``desc`` labels the progress bar, shown with ``progress``;
    ``census`` also keeps each layer's :class:`~deconv.analyses.tally.Tally` (bottom ``k``, distribution,
    classes, positions)."""

    k: int = 9
    batch_size: int = 256
    num_workers: int = 0
    indices: Sequence[int] | None = None
    strict: bool = False
    progress: bool = True
    desc: str = "scan"
    census: bool = False


def scan(
    mirror: Mirror,
    dataset: Dataset,
    layers: Sequence[str],
    options: ScanOptions | None = None,
    *,
    state: ScanState | None = None,
    checkpoint: Callable[[ScanState], None] | None = None,
    **overrides: Any,
) -> ScanState:
    """Finds the top ``k`` images of every channel of ``layers`` over ``dataset`` in one streaming pass.

    ``options`` (:class:`ScanOptions`), with any of its fields given as keywords (``k=3``), say how.
    Each image enters a channel's ranking once, with its strongest position in that channel (the
    first in row-major order on ties). The forward pass stops at the deepest requested layer.
    Memory grows with channels x ``k``, not with the dataset. A ``state`` resumes after its
    ``position``; ``checkpoint(state)`` runs after every batch. Unreadable images are skipped and
    listed in the state, or raise with ``strict``. NaN or inf activations raise
    :class:`NonFiniteError` naming the layer and the dataset image.
    """
    how = replace(options or ScanOptions(), **overrides)
    if how.k < 1:
        raise ValueError(f"k must be >= 1, got {how.k}")
    if not layers:
        raise SelectionError(f"name at least one layer to scan; valid layers: {', '.join(mirror.layer_names)}")
    for layer in layers:
        mirror.module(layer)  # an unknown layer is refused before the first batch
    order = list(range(len(dataset))) if how.indices is None else list(how.indices)  # type: ignore[arg-type]
    if state is None:
        state = ScanState({})
    remaining = order[state.position :]
    bar = progress_bar(total=len(order), initial=state.position, desc=how.desc, unit="img", enabled=how.progress)
    with bar:
        for batch in batches(dataset, how.batch_size, how.num_workers, remaining):
            if how.strict and batch.skipped:
                raise UnreadableImage(*batch.skipped[0][1:])
            if len(batch):
                found = _forward(mirror, dataset, batch, layers, how.census)
                _add(state, found, batch, how.k, how.census)
            state.images += len(batch)
            state.skipped.extend(batch.skipped)
            state.position += len(batch) + len(batch.skipped)
            bar.update(len(batch) + len(batch.skipped))
            if checkpoint is not None:
                checkpoint(state)
    return state


def _described(batch: Batch) -> str:
    return f"dataset images {int(batch.indices[0])}..{int(batch.indices[-1])} of shape {tuple(batch.images.shape[1:])}"


def _forward(
    mirror: Mirror, dataset: Dataset, batch: Batch, layers: Sequence[str], census: bool
) -> dict[str, Extremes]:
    """Each layer's per-image extremes for one batch (minima too for a ``census``). Errors name the dataset images.

    The walk runs channels-last where the layers allow it (:meth:`~deconv.mirror.Mirror.activations`):
    maxima over small maps are about ten times faster that way. Only the extremes are checked for NaN
    or inf, which they show wherever a map holds NaN or inf.
    """
    try:
        with model_runs_on(_described(batch)):
            outputs = mirror.activations(batch.images, layers, check=False, any_layout=True)
    except NonFiniteError:  # in the images
        raise _non_finite_error(mirror, dataset, batch, layers) from None
    found = {layer: Extremes(out.detach(), census) for layer, out in outputs.items()}
    for extremes in found.values():
        for values in (extremes.maxima, extremes.minima):
            if values is not None and first_non_finite(values) is not None:
                raise _non_finite_error(mirror, dataset, batch, layers)
    return found


def _non_finite_error(mirror: Mirror, dataset: Dataset, batch: Batch, layers: Sequence[str]) -> NonFiniteError:
    """The error for the batch's first image with NaN or inf values, naming the layer and the dataset image."""
    path = getattr(dataset, "path", lambda i: None)
    forward = [name for name in mirror.layer_names if name in layers]  # shallowest first
    for image, index in zip(batch.images, batch.indices.tolist()):
        where = f"dataset image {index}" + (f" ({path(index)})" if path(index) else "")
        if not bool(torch.isfinite(image).all()):
            return NonFiniteError(f"{where} holds NaN or inf values")
        for layer in forward:
            try:
                mirror.activations(image[None], [layer])
            except NonFiniteError:
                return NonFiniteError(f"layer {layer!r} has NaN or inf activations for {where}")
    first, last = int(batch.indices[0]), int(batch.indices[-1])
    return NonFiniteError(f"NaN or inf activations in the batch of dataset images {first}..{last}")


def _add(state: ScanState, found: dict[str, Extremes], batch: Batch, k: int, census: bool) -> None:
    """Enters one batch into the rankings (and the tallies, for a ``census``): per layer its extremes.

    Only the batch's own best ``k`` per channel can enter a ranking, so only those are handed on; they
    are picked for the channels of all layers at once.
    """
    index = batch.indices
    values = torch.cat([f.maxima for f in found.values()], 1).T.cpu()  # (channels, B)
    best = _largest(_key(values, index), min(k, len(index)))  # (channels, k): images of the batch
    values, chosen = values.gather(1, best), index[best]
    start = 0
    for layer, extremes in found.items():
        channels = extremes.maxima.shape[1]
        if layer not in state.tops:
            state.tops[layer] = TopK(channels, k, extremes.maxima.dtype)
            if extremes.size is None:
                state.vector_layers.add(layer)
        mine = slice(start, start + channels)
        start = mine.stop
        y, x = extremes.positions(extremes.first(best[mine], largest=True), best[mine])
        state.tops[layer].update(values[mine], chosen[mine], y, x)
        if census and layer not in state.tallies:
            state.tallies[layer] = Tally(channels, k, extremes.size, extremes.maxima.dtype)
    if census:
        Tally.count([state.tallies[layer] for layer in found], list(found.values()), index, batch.labels)


@dataclass
class Projected:
    """A chunk of projected records: ``projections`` and image ``patches`` cut to each activation's
    receptive-field box, ``(k, C, h, w)``; ``inside`` ``(k, 1, h, w)`` marks box pixels inside the image
    of size ``image_size`` ``(H, W)``."""

    records: list[Record]
    projections: torch.Tensor
    patches: torch.Tensor
    inside: torch.Tensor
    image_size: tuple[int, int]

    def cpu(self) -> Projected:
        return replace(self, projections=self.projections.cpu(), patches=self.patches.cpu(), inside=self.inside.cpu())


@dataclass(frozen=True)
class ProjectOptions:
    """How :func:`project_top` runs: each layer's images loaded ``batch_size`` at a time by ``num_workers``
    processes; chunks of at most ``memory_budget`` bytes of work; ``rule`` what the projections do at each
    ReLU (default: the mirror's; see ``docs/rules.md``); a progress bar with ``progress``."""

    batch_size: int = 64
    num_workers: int = 0
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    progress: bool = True
    rule: str | None = None


def project_top(
    mirror: Mirror,
    dataset: Dataset,
    records: Sequence[Record],
    options: ProjectOptions | None = None,
    **overrides: Any,
) -> Iterator[Projected]:
    """Projects records layer by layer, yielding :class:`Projected` chunks; ``options``
    (:class:`ProjectOptions`), with any of its fields given as keywords (``batch_size=8``), say how.

    Each projection and its input image are cut to the activation's receptive-field box (zero where
    the box leaves the image; the whole image past a global layer). All chunks of one layer come
    before the next layer's. Each layer's distinct images are loaded ``batch_size`` at a time in
    dataset order, so records split by whole batches of those images project exactly as together.
    """
    how = replace(options or ProjectOptions(), **overrides)
    bar = progress_bar(total=len(records), desc="project", unit="proj", enabled=how.progress)
    with bar:
        for layer in dict.fromkeys(r.layer for r in records):
            mine = sorted((r for r in records if r.layer == layer), key=lambda r: r.index)
            needed = list(dict.fromkeys(r.index for r in mine))
            for batch in batches(dataset, how.batch_size, how.num_workers, needed):
                if not len(batch):
                    continue
                images = mirror.check_images(batch.images)
                local = {int(i): n for n, i in enumerate(batch.indices)}
                chunk = [r for r in mine if r.index in local]
                selections = [Selection(local[r.index], r.layer, r.channel, r.y, r.x) for r in chunk]
                image = torch.tensor([s.image for s in selections], device=images.device)
                with model_runs_on(_described(batch)):
                    for where, projections in mirror.projections(
                        images, selections, crop=True, memory_budget=how.memory_budget, rule=how.rule
                    ):
                        done = [chunk[i] for i in where.tolist()]
                        positions = (
                            None
                            if done[0].y is None
                            else torch.tensor([[r.y, r.x] for r in done], device=images.device)
                        )
                        patches, inside = mirror.patches(images[image[where]], layer, positions)
                        yield Projected(done, projections, patches, inside, tuple(images.shape[-2:]))
                        bar.update(len(done))
