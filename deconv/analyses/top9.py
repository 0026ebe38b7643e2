"""The paper's Fig. 2: the strongest activations of every channel over a dataset, projected to pixels.

:func:`scan` streams a dataset once and keeps, per channel, the ``k`` images whose strongest
activation in that channel is largest (one entry per image, as in the paper). :func:`project_top`
then projects each of them and cuts the receptive-field box from the projection and the image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterator, Sequence

import torch
from torch.utils.data import Dataset

from ..data import Batch, UnreadableImage, batches
from ..engine.graph import model_runs_on
from ..errors import NonFiniteError, SelectionError
from ..mirror import DEFAULT_MEMORY_BUDGET, Mirror, Selection, first_non_finite
from ..progress import progress_bar

__all__ = ["TopK", "Record", "ScanState", "ScanOptions", "Projected", "ProjectOptions", "scan", "project_top"]


class TopK:
    """Running top ``k`` per channel of one layer: ``values``, dataset ``index``, position ``y``, ``x``,
    each ``(C, k)``, best first; ties go to the lower dataset index. Empty slots have index -1.

    Candidates wait in a buffer and are ranked a few hundred at a time (one sort, not one per batch).
    """

    BUFFER = 512  # candidate columns ranked together

    def __init__(self, channels: int, k: int = 9, dtype: torch.dtype = torch.float32) -> None:
        self._best = (
            torch.full((channels, k), -torch.inf, dtype=dtype),
            torch.full((channels, k), -1, dtype=torch.long),
            torch.zeros(channels, k, dtype=torch.long),
            torch.zeros(channels, k, dtype=torch.long),
        )
        self._waiting: list[tuple[torch.Tensor, ...]] = []
        self._columns = 0

    @property
    def k(self) -> int:
        return self._best[0].shape[1]

    values = property(lambda self: self._ranked()[0], doc="``(C, k)`` activations, best first")
    index = property(lambda self: self._ranked()[1], doc="``(C, k)`` dataset indices (-1: empty)")
    y = property(lambda self: self._ranked()[2], doc="``(C, k)`` rows of the activations")
    x = property(lambda self: self._ranked()[3], doc="``(C, k)`` columns of the activations")

    def update(self, values: torch.Tensor, index: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> None:
        """Adds candidates ``(C, M)`` (``values``, ``y``, ``x``) with dataset ``index`` ``(M,)`` or ``(C, M)``."""
        if index.dim() == 1:
            index = index.expand(values.shape[0], -1)
        self._waiting.append((values.to(self._best[0].dtype), index, y, x))
        self._columns += values.shape[1]
        if self._columns >= self.BUFFER:
            self._ranked()

    def _ranked(self) -> tuple[torch.Tensor, ...]:
        """Ranks the waiting candidates into the best ``k`` and returns ``(values, index, y, x)``."""
        if not self._waiting:
            return self._best
        merged = [torch.cat(parts, 1) for parts in zip(self._best, *self._waiting)]
        self._waiting, self._columns = [], 0
        best = _key(merged[0], merged[1]).topk(self.k, dim=1).indices
        self._best = tuple(m.gather(1, best) for m in merged)
        return self._best

    def merge(self, other: TopK) -> None:
        """Adds another shard's entries: the result is that of one scan over both shards."""
        self.update(*other._ranked())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(("values", "index", "y", "x"), self._ranked()))

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> TopK:
        top = cls(*state["values"].shape, dtype=state["values"].dtype)
        top._best = (state["values"], state["index"], state["y"], state["x"])
        return top


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
        return asdict(self)


@dataclass
class ScanState:
    """Where a scan is: the running top ``k`` per layer, how many items of its order it has consumed,
    how many images it has scanned and which items it could not read."""

    tops: dict[str, TopK]
    position: int = 0
    images: int = 0
    skipped: list[tuple[int, str, str]] = field(default_factory=list)
    vector_layers: set[str] = field(default_factory=set)

    def records(self, dataset: Dataset) -> list[Record]:
        """The filled slots as records, by layer, channel and rank."""
        path = getattr(dataset, "path", lambda i: None)
        out = []
        for layer, top in self.tops.items():
            vector = layer in self.vector_layers
            for c in range(top.values.shape[0]):
                for rank in range(top.k):
                    index = int(top.index[c, rank])
                    if index < 0:
                        break
                    y, x = (None, None) if vector else (int(top.y[c, rank]), int(top.x[c, rank]))
                    out.append(Record(layer, c, rank, index, path(index), y, x, float(top.values[c, rank])))
        return out

    def merge(self, other: ScanState) -> None:
        """Adds another shard's state: the result is that of one scan over both shards."""
        for layer, top in other.tops.items():
            if layer in self.tops:
                self.tops[layer].merge(top)
            else:
                self.tops[layer] = TopK.from_state_dict(top.state_dict())  # not shared: updates replace its tensors
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
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ScanState:
        return cls(
            {layer: TopK.from_state_dict(top) for layer, top in state["tops"].items()},
            state["position"],
            state["images"],
            [tuple(s) for s in state["skipped"]],
            set(state["vector_layers"]),
        )


@dataclass(frozen=True)
class ScanOptions:
    """How :func:`scan` runs: the top ``k`` kept per channel; images loaded ``batch_size`` at a time by
    ``num_workers`` processes, in the order ``indices`` (default: the whole dataset); ``strict`` raises at an
    unreadable image instead of skipping it; ``desc`` labels the progress bar, shown with ``progress``."""

    k: int = 9
    batch_size: int = 256
    num_workers: int = 0
    indices: Sequence[int] | None = None
    strict: bool = False
    progress: bool = True
    desc: str = "scan"


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
                _add(state, *_forward(mirror, dataset, batch, layers), batch.indices, how.k)
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
    mirror: Mirror, dataset: Dataset, batch: Batch, layers: Sequence[str]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The outputs of ``layers`` for one batch, and each image's strongest activation in every channel of
    them ``(B, channels of all layers)`` (a vector layer's output is its own). Errors name the dataset images.

    The walk runs channels-last where the layers allow it (:meth:`~deconv.mirror.Mirror.activations`):
    maxima over small maps are about ten times faster that way. Only the maxima are checked for NaN
    or inf, which they show wherever a map holds NaN or +inf (a -inf where it is a map's maximum;
    ReLU outputs hold none).
    """
    try:
        with model_runs_on(_described(batch)):
            outputs = mirror.activations(batch.images, layers, check=False, any_layout=True)
    except NonFiniteError:  # in the images
        raise _non_finite_error(mirror, dataset, batch, layers) from None
    found = {layer: out.detach() for layer, out in outputs.items()}
    maxima = torch.cat([out.amax((2, 3)) if out.dim() == 4 else out for out in found.values()], 1)
    if first_non_finite(maxima) is not None:
        raise _non_finite_error(mirror, dataset, batch, layers)
    return found, maxima


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


def _key(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``(C, M)`` int64 keys that order by value, then by lower index: one ``topk`` ranks exactly, ties included.

    A float's bits, read as an integer with the magnitude bits of negatives flipped, order like the
    float (float32 holds every value of the narrower types exactly); the low 32 bits hold the index,
    inverted. Float64 activations are ranked in float32: distinct values closer than float32 can tell apart tie.
    """
    bits = (values.to(torch.float32) + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into 0.0
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # monotone in the float's value
    return (ordered.to(torch.int64) << 32) | (2**32 - 2 - index)  # index -1 (an empty slot) .. 2**32 - 2


def _add(state: ScanState, found: dict[str, torch.Tensor], maxima: torch.Tensor, index: torch.Tensor, k: int) -> None:
    """Enters one batch into the rankings: per layer its output ``(B, C, H, W)`` or ``(B, F)``; each
    image's strongest activation in every channel of them ``maxima`` ``(B, channels of all layers)``;
    the images' dataset ``index`` ``(B,)``.

    Only the batch's own best ``k`` per channel can enter a ranking, so only those ``C x k`` maps are
    searched for the position of their maximum (the first on ties). The batch's best are picked for
    the channels of all layers at once.
    """
    values = maxima.T.cpu()  # (channels, B)
    best = _key(values, index).topk(min(k, len(index)), dim=1).indices  # (channels, k): images of the batch
    values, chosen = values.gather(1, best), index[best]
    start = 0
    for layer, out in found.items():
        if layer not in state.tops:
            state.tops[layer] = TopK(out.shape[1], k, out.dtype)
            if out.dim() == 2:
                state.vector_layers.add(layer)
        mine = slice(start, start + out.shape[1])
        start = mine.stop
        y = x = torch.zeros_like(best[mine])
        if out.dim() == 4:
            channel = torch.arange(out.shape[1], device=out.device)[:, None]
            flat = out[best[mine].to(out.device), channel].flatten(2).argmax(2).cpu()  # (C, k)
            y, x = flat // out.shape[3], flat % out.shape[3]
        state.tops[layer].update(values[mine], chosen[mine], y, x)


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
