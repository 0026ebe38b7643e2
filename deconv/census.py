"""A unit census in one pass over a dataset: per channel its top ``k`` and bottom ``k``, how often and how
strongly it fires, which classes drive it and where on the map it fires.

>>> census = deconv.census(model, dataset, layers=["layer3.1", "layer4.1"])
>>> unit = census.unit("layer4.1", 7)      # shows inline in a notebook
>>> unit.top, unit.bottom, unit.active, unit.quantiles, unit.classes, unit.hits
>>> census.save("runs/mine")               # top9.json, census.npz, census.json; Census.load reads them back
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from .analyses.sketch import Sketch
from .analyses.tally import Tally
from .analyses.top9 import Record, ScanOptions, ScanState, scan
from .analyses.topk import TopK
from .data import Preprocess, open_dataset
from .errors import DatasetError, SelectionError, StateError, one_line
from .io import atomic_write, write_json
from .mirror import Mirror, build_mirror

__all__ = ["census", "Census", "Unit", "ClassStats", "QUANTILES", "CENSUS_FILE", "CENSUS_META"]

QUANTILES = (0.01, 0.1, 0.5, 0.9, 0.99)
BARS = 40  # bins of a unit's histogram as drawn
CENSUS_FILE = "census.npz"
CENSUS_META = "census.json"
FORMAT = "deconv census 1"


class Distribution(NamedTuple):
    """A layer's per-image maxima, per channel: ``quantiles`` ``(C, Q)``, histogram ``edges`` ``(C, BARS + 1)``
    and ``counts`` ``(C, BARS)``."""

    quantiles: torch.Tensor
    edges: torch.Tensor
    counts: torch.Tensor


@dataclass(frozen=True)
class ClassStats:
    """A unit's per-image maximum over the images of one class: their count, how many activate the unit,
    the mean and the largest maximum."""

    label: int
    name: str
    images: int
    active: int
    mean: float
    max: float


@dataclass(frozen=True)
class Unit:
    """One channel's census.

    ``top``/``bottom``: records, the largest per-image maxima / the smallest per-image minima first;
    ``active``: the fraction of images with maximum > 0; ``mean``, ``std``, ``quantiles`` (``{q: value}``):
    of the per-image maximum; ``classes``: :class:`ClassStats` per class (empty without labels);
    ``top_classes``: ``(name, count)`` of the classes most represented in ``top``; ``hits``: ``(H, W)``
    how often each position held the maximum, over the images where the unit is active (``None`` for a
    vector layer); ``histogram``: ``(edges (bins + 1,), counts (bins,))`` of the per-image maximum.
    """

    layer: str
    channel: int
    images: int
    top: list[Record]
    bottom: list[Record]
    active: float
    mean: float
    std: float
    quantiles: dict[float, float]
    classes: list[ClassStats]
    top_classes: list[tuple[str, int]]
    hits: torch.Tensor | None
    histogram: tuple[torch.Tensor, torch.Tensor]
    census: Census | None = None

    @property
    def rectified(self) -> bool:
        """Whether nothing in the dataset took the unit below zero (as after a ReLU): its bottom ``k`` are all 0."""
        return all(r.value >= 0 for r in self.bottom)

    def figure(self, rules: Sequence[str] | None = None) -> Any:
        """The unit as one PIL image: top and bottom entries projected under ``rules`` (when the census
        holds its mirror and dataset), the histogram with its quantiles, the classes and the hit map."""
        from .figures.unit import unit_figure

        return unit_figure(self, rules)

    def _repr_png_(self) -> bytes:
        from .figures.draw import encode_png

        return encode_png(np.asarray(self.figure()))

    def _repr_html_(self) -> str:
        picture = base64.b64encode(self._repr_png_()).decode()
        return f'<img alt="{html.escape(repr(self))}" src="data:image/png;base64,{picture}">'

    def __repr__(self) -> str:
        return (
            f"Unit {self.layer} channel {self.channel}: active in {self.active:.1%} of {self.images} images, "
            f"per-image maximum mean {self.mean:.4g} (std {self.std:.4g})"
        )


class Census:
    """The census of ``layers`` over ``images`` images: read it per unit (:meth:`unit`), per layer
    (:meth:`table`), draw it (:meth:`sheet`) and keep it (:meth:`save`, :meth:`load`).

    ``mirror`` and ``dataset`` (when known) let it project entries, shown through ``preprocess`` (default: the
    dataset's own, else none: the images as they are); ``classes`` names the labels.
    """

    def __init__(
        self,
        state: ScanState,
        k: int,
        *,
        mirror: Mirror | None = None,
        dataset: Dataset | None = None,
        classes: Sequence[str] | None = None,
        paths: dict[int, str | None] | None = None,
        labels: dict[int, int] | None = None,
        distributions: dict[str, Distribution] | None = None,
        preprocess: Preprocess | None = None,
    ) -> None:
        self.state, self.k, self.mirror, self.dataset = state, k, mirror, dataset
        self.preprocess = (
            preprocess
            or getattr(dataset, "preprocess", None)
            or Preprocess(channels=_image_channels(mirror.model) if mirror is not None else 3)
        )
        self.classes = list(classes) if classes else None
        self._paths = paths if paths is not None else _paths(dataset, state)
        self._labels = labels if labels is not None else _labels(dataset, state)
        self._distributions = dict(distributions or {})
        self._tables: dict[str, dict[str, torch.Tensor]] = {}

    def distribution(self, layer: str) -> Distribution:
        """The quantiles ``QUANTILES`` ``(C, Q)`` of each channel's per-image maximum and its histogram for
        drawing, ``edges`` ``(C, BARS + 1)`` and ``counts`` ``(C, BARS)``: read from the scan's sketches once."""
        if layer not in self._distributions:
            sketch = self._tally(layer).sketch
            bars = [sketch.histogram(c, BARS) for c in range(sketch.low.shape[0])]
            self._distributions[layer] = Distribution(
                sketch.quantiles(torch.tensor(QUANTILES)),
                torch.stack([edges for edges, _ in bars]),
                torch.stack([counts for _, counts in bars]),
            )
        return self._distributions[layer]

    @property
    def layers(self) -> list[str]:
        return list(self.state.tallies)

    @property
    def images(self) -> int:
        return self.state.images

    @property
    def labelled(self) -> bool:
        """Whether any image had a label (class statistics are kept only then)."""
        return any(t.class_images.numel() and int(t.class_images.sum()) for t in self.state.tallies.values())

    def channels(self, layer: str) -> int:
        return self._tally(layer).channels

    def _tally(self, layer: str) -> Tally:
        if layer not in self.state.tallies:
            raise SelectionError(f"layer {layer!r} is not in this census; its layers: {', '.join(self.layers)}")
        return self.state.tallies[layer]

    def _channel(self, layer: str, channel: int) -> int:
        count = self.channels(layer)
        if isinstance(channel, bool) or not isinstance(channel, int) or not 0 <= channel < count:
            raise SelectionError(f"layer {layer!r} has {count} channels (0-{count - 1}), got channel {channel!r}")
        return channel

    def _records(self, layer: str, channel: int, top: TopK, sign: float) -> list[Record]:
        vector = layer in self.state.vector_layers
        indices, values = top.index[channel].tolist(), top.values[channel].double().tolist()
        ys, xs = (None, None) if vector else (top.y[channel].tolist(), top.x[channel].tolist())
        out = []
        for rank, index in enumerate(indices):
            if index < 0:
                break
            y, x = (None, None) if vector else (ys[rank], xs[rank])
            value = sign * values[rank] + 0.0  # + 0.0: no -0.0
            out.append(Record(layer, channel, rank, index, self._paths.get(index), y, x, value))
        return out

    def top(self, layer: str, channel: int) -> list[Record]:
        """The images with the largest per-image maximum of ``channel``, best first (ties: lower index)."""
        return self._records(layer, self._channel(layer, channel), self.state.tops[layer], 1.0)

    def bottom(self, layer: str, channel: int) -> list[Record]:
        """The images with the smallest per-image minimum of ``channel``, most negative first (ties: lower index)."""
        return self._records(layer, self._channel(layer, channel), self._tally(layer).bottom, -1.0)

    def records(self, which: str = "top") -> list[Record]:
        """Every layer's top (or ``"bottom"``) records, by layer, channel and rank: the rows of ``top9.json``."""
        pick = self.top if which == "top" else self.bottom
        return [r for layer in self.layers for c in range(self.channels(layer)) for r in pick(layer, c)]

    def table(self, layer: str) -> dict[str, torch.Tensor]:
        """Per channel of ``layer`` ``(C,)``: ``active`` (fraction), ``mean``, ``std``, ``max`` (the strongest
        activation), ``min`` (the most negative) and ``selectivity`` (how much more the best class's mean
        is than the mean over the other classes, relative to their sum; 0 without labels): what a layer's
        channels are sorted by."""
        if layer not in self._tables:
            self._tables[layer] = self._table(layer)
        return self._tables[layer]

    def _table(self, layer: str) -> dict[str, torch.Tensor]:
        tally = self._tally(layer)
        n = max(self.images, 1)
        mean = tally.sum / n
        per_class = tally.class_sum / tally.class_images.clamp(min=1)  # (C, K)
        counted = tally.class_images > 0
        if int(counted.sum()) >= 2:
            means = per_class[:, counted]
            best = means.amax(1)
            rest = (means.sum(1) - best) / (means.shape[1] - 1)
            selectivity = torch.where(best + rest.abs() > 0, (best - rest) / (best.abs() + rest.abs()), 0.0)
        else:
            selectivity = torch.zeros_like(mean)
        return {
            "active": tally.active.double() / n,
            "mean": mean,
            "std": (tally.squares / n - mean * mean).clamp(min=0).sqrt(),
            "max": self.state.tops[layer].values[:, 0].double(),
            "min": -tally.bottom.values[:, 0].double(),
            "selectivity": selectivity,
        }

    def unit(self, layer: str, channel: int) -> Unit:
        """Everything the census knows of one channel (shows inline in Jupyter)."""
        channel = self._channel(layer, channel)
        tally, row = self._tally(layer), {k: float(v[channel]) for k, v in self.table(layer).items()}
        distribution = self.distribution(layer)
        values = distribution.quantiles[channel]
        top = self.top(layer, channel)
        named = Counter(self._class_name(self._labels[r.index]) for r in top if self._labels.get(r.index, -1) >= 0)
        return Unit(
            layer=layer,
            channel=channel,
            images=self.images,
            top=top,
            bottom=self.bottom(layer, channel),
            active=row["active"],
            mean=row["mean"],
            std=row["std"],
            quantiles={q: float(v) for q, v in zip(QUANTILES, values)},
            classes=self._class_stats(tally, channel),
            top_classes=named.most_common(),
            hits=tally.hits[channel].view(*tally.size) if tally.size else None,
            histogram=(distribution.edges[channel], distribution.counts[channel]),
            census=self,
        )

    def _class_name(self, label: int) -> str:
        return self.classes[label] if self.classes and label < len(self.classes) else str(label)

    def _class_stats(self, tally: Tally, channel: int) -> list[ClassStats]:
        return [
            ClassStats(
                label,
                self._class_name(label),
                int(images),
                int(tally.class_active[channel, label]),
                float(tally.class_sum[channel, label]) / int(images),
                float(tally.class_max[channel, label]),
            )
            for label, images in enumerate(tally.class_images.tolist())
            if images
        ]

    def sheet(
        self, layer: str, channels: Iterable[int] | None = None, rules: Sequence[str] | None = None, tile_px: int = 80
    ) -> Any:
        """The paper's Fig. 2 for ``channels`` of ``layer`` (default: all) under ``rules`` (default: the
        mirror's), as a PIL image: needs the census's mirror and dataset."""
        from .figures.unit import census_sheet

        chosen = list(range(self.channels(layer))) if channels is None else [self._channel(layer, c) for c in channels]
        return census_sheet(self, layer, chosen, list(rules) if rules else None, tile_px)

    # ------------------------------------------------------------------------------------------ files

    def save(self, run_dir: str | os.PathLike[str]) -> Path:
        """Writes ``top9.json`` (the top records, as ``deconv top9`` writes them), ``census.npz`` (numpy
        arrays, no pickles) and ``census.json`` (what they are) into ``run_dir``; returns it."""
        out = Path(run_dir)
        out.mkdir(parents=True, exist_ok=True)
        rule = self.mirror.rule if self.mirror is not None else None
        write_json(out / "top9.json", [{**r.to_json(), "rule": rule} for r in self.records()])
        self.write(out)
        return out

    def write(self, out: Path) -> None:
        """Writes ``census.npz`` and ``census.json`` into ``out`` (atomically each)."""
        arrays: dict[str, np.ndarray] = {}
        for layer in self.layers:
            tally, top = self.state.tallies[layer], self.state.tops[layer]
            parts = {
                **{f"top_{k}": v for k, v in top.state_dict().items()},
                **{f"bottom_{k}": v for k, v in tally.bottom.state_dict().items()},
                **self.distribution(layer)._asdict(),
                **{name: getattr(tally, name) for name in Tally.ARRAYS},
                "top_label": torch.tensor([[self._labels.get(int(i), -1) for i in row] for row in top.index.tolist()]),
            }
            arrays.update({f"{layer}:{name}": value.detach().cpu().numpy() for name, value in parts.items()})
        atomic_write(out / CENSUS_FILE, lambda file: np.savez(file, **arrays))  # compressing took longer than the scan
        meta = {
            "format": FORMAT,
            "images": self.images,
            "k": self.k,
            "classes": self.classes,
            "quantiles": list(QUANTILES),
            "layers": [
                {
                    "name": layer,
                    "channels": self.channels(layer),
                    "size": list(self.state.tallies[layer].size) if self.state.tallies[layer].size else None,
                }
                for layer in self.layers
            ],
            "paths": {str(i): p for i, p in sorted(self._paths.items()) if p is not None},
            "skipped": [list(s) for s in self.state.skipped],
        }
        write_json(out / CENSUS_META, meta)

    @classmethod
    def load(
        cls,
        run_dir: str | os.PathLike[str],
        *,
        mirror: Mirror | None = None,
        dataset: Dataset | None = None,
        preprocess: Preprocess | None = None,
    ) -> Census:
        """The census saved in ``run_dir`` (by :meth:`save` or ``deconv top9``), read as data (no pickles);
        give the ``mirror`` and ``dataset`` it was made with (and the ``preprocess`` that undoes its
        normalisation, when the dataset does not carry it) to draw projections. One-line
        :class:`~deconv.errors.StateError` for a missing, damaged or foreign file."""
        folder = Path(run_dir)
        meta_path, arrays_path = folder / CENSUS_META, folder / CENSUS_FILE
        for path in (meta_path, arrays_path):
            if not path.is_file():
                raise StateError(f"{path}: no census here (deconv top9 and Census.save write {CENSUS_FILE})")
        try:
            meta = json.loads(meta_path.read_text())
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise ValueError(
                    f"format is {meta.get('format') if isinstance(meta, dict) else None!r}, not {FORMAT!r}"
                )
            with np.load(arrays_path, allow_pickle=False) as npz:
                arrays = {name: torch.from_numpy(npz[name]) for name in npz.files}
            state, labels, distributions = _state(meta, arrays)
        except StateError:
            raise
        except Exception as error:  # noqa: BLE001 - damaged JSON, zip or arrays raise many types
            raise StateError(f"{folder}: damaged census ({type(error).__name__}: {one_line(error, 120)})") from None
        paths = {int(i): p for i, p in meta.get("paths", {}).items()}
        return cls(
            state,
            int(meta["k"]),
            mirror=mirror,
            dataset=dataset,
            classes=meta["classes"],
            paths=paths,
            labels=labels,
            distributions=distributions,
            preprocess=preprocess,
        )

    def __repr__(self) -> str:
        layers = ", ".join(f"{layer} ({self.channels(layer)})" for layer in self.layers)
        return f"Census of {self.images} images, top and bottom {self.k} per channel of {layers}"

    def _repr_html_(self) -> str:
        """A table of the layers: channels, how many never fire, and the mean fraction of images they fire on."""
        rows = []
        for layer in self.layers:
            table = self.table(layer)
            dead = int((table["active"] == 0).sum())
            rows.append(
                f"<tr><td>{html.escape(layer)}</td><td>{self.channels(layer)}</td><td>{dead}</td>"
                f"<td>{float(table['active'].mean()):.1%}</td></tr>"
            )
        head = "<tr><th>layer</th><th>channels</th><th>never active</th><th>mean fraction active</th></tr>"
        return f"<p>{html.escape(repr(self))}</p><table>{head}{''.join(rows)}</table>"


def _state(meta: dict, arrays: dict[str, torch.Tensor]) -> tuple[ScanState, dict[int, int], dict[str, Distribution]]:
    """The scan state, the top images' labels and the distributions held in a census's arrays."""
    distributions: dict[str, Distribution] = {}
    state = ScanState({}, images=int(meta["images"]), skipped=[tuple(s) for s in meta.get("skipped", [])])
    labels: dict[int, int] = {}
    for entry in meta["layers"]:
        layer = entry["name"]

        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {
                n[len(layer) + 1 + len(prefix) :]: v for n, v in arrays.items() if n.startswith(f"{layer}:{prefix}")
            }

        missing = [
            n
            for n in ("top_values", "bottom_values", *Distribution._fields, *Tally.ARRAYS)
            if f"{layer}:{n}" not in arrays
        ]
        if missing:
            raise StateError(f"census.npz has no array {layer}:{missing[0]} for layer {layer!r} of census.json")
        top = {k: v for k, v in part("top_").items() if k != "label"}
        state.tops[layer] = TopK.from_state_dict(top)
        tally_state: dict[str, Any] = {
            "size": entry["size"],
            "bottom": part("bottom_"),
            "sketch": Sketch(entry["channels"]).state_dict(),  # its results are kept, not the sketch itself
            **{name: arrays[f"{layer}:{name}"] for name in Tally.ARRAYS},
        }
        distributions[layer] = Distribution(*(arrays[f"{layer}:{name}"] for name in Distribution._fields))
        state.tallies[layer] = Tally.from_state_dict(tally_state)
        if entry["size"] is None:
            state.vector_layers.add(layer)
        for i, label in zip(
            state.tops[layer].index.flatten().tolist(), arrays[f"{layer}:top_label"].flatten().tolist()
        ):
            if i >= 0:
                labels[i] = label
    return state, labels, distributions


def _paths(dataset: Dataset | None, state: ScanState) -> dict[int, str | None]:
    """The files of the images in the census's records (``None``: not a file)."""
    path = getattr(dataset, "path", None)
    indices = {
        int(i)
        for top in [*state.tops.values(), *(t.bottom for t in state.tallies.values())]
        for i in top.index.flatten().tolist()
    }
    return {i: path(i) if path else None for i in sorted(indices) if i >= 0}


def _labels(dataset: Dataset | None, state: ScanState) -> dict[int, int]:
    """The labels of the top images (-1: none)."""
    if dataset is None:
        return {}
    known = getattr(dataset, "labels", None)
    indices = {int(i) for top in state.tops.values() for i in top.index.flatten().tolist() if i >= 0}
    return {i: int(known[i]) if known is not None else int(dataset[i][1]) for i in sorted(indices)}


def check_labels(dataset: Dataset, classes: Sequence[str] | None, state: ScanState | None = None) -> None:
    """``DatasetError`` naming the first label that does not fit ``classes`` (before the scan where the
    dataset lists its labels, else from the scan's class counts)."""
    if not classes:
        return
    known = getattr(dataset, "labels", None)
    if known is not None and state is None:
        for index, label in enumerate(np.asarray(known).tolist()):
            if not -1 <= label < len(classes):
                raise DatasetError(
                    f"dataset image {index} has label {label}, outside the {len(classes)} class names "
                    f"(0-{len(classes) - 1}; -1: none)"
                )
    for tally in state.tallies.values() if state else []:
        seen = torch.nonzero(tally.class_images).flatten().tolist()
        if seen and seen[-1] >= len(classes):
            bad = next(label for label in seen if label >= len(classes))
            raise DatasetError(
                f"label {bad} is outside the {len(classes)} class names (0-{len(classes) - 1}; -1: none)"
            )


def census(
    mirror_or_model: Mirror | nn.Module,
    dataset: Dataset | str | os.PathLike[str],
    layers: Sequence[str],
    k: int = 9,
    *,
    classes: Sequence[str] | None = None,
    preprocess: Preprocess | None = None,
    options: ScanOptions | None = None,
    **overrides: Any,
) -> Census:
    """The census of every channel of ``layers`` over ``dataset`` (a torch ``Dataset`` of ``(image, label)``,
    or a folder or idx file read with ``preprocess``), in one streaming pass: top ``k`` and bottom ``k``,
    the distribution of the per-image maximum, class statistics (labels >= 0, named by ``classes`` or the
    dataset's ``classes``) and where each unit fires. ``options`` (:class:`~deconv.analyses.top9.ScanOptions`)
    and keywords such as ``batch_size=64`` say how the scan runs."""
    model = mirror_or_model.model if isinstance(mirror_or_model, Mirror) else mirror_or_model
    if not isinstance(dataset, Dataset):
        dataset = open_dataset(dataset, preprocess or Preprocess(channels=_image_channels(model)))
    mirror = (
        mirror_or_model
        if isinstance(mirror_or_model, Mirror)
        else build_mirror(model, shape=lambda: tuple(dataset[0][0].shape))  # only if its forward pass needs it
    )
    size = len(dataset)  # type: ignore[arg-type]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= size:
        raise SelectionError(f"k must be an integer from 1 to the dataset's {size} images, got {k!r}")
    names = class_names(dataset, mirror.model, classes)
    check_labels(dataset, names)
    state = scan(mirror, dataset, list(layers), replace(options or ScanOptions(), k=k, census=True, **overrides))
    check_labels(dataset, names, state)
    return Census(state, k, mirror=mirror, dataset=dataset, classes=names, preprocess=preprocess)


def class_names(dataset: Dataset, model: nn.Module, given: Sequence[str] | None = None) -> list[str] | None:
    """The names of the labels: ``given``, else the dataset's or the model's ``classes`` (``None``: unnamed)."""
    names = given or getattr(dataset, "classes", None) or getattr(model, "classes", None)
    return list(names) if names else None


def _image_channels(model: nn.Module) -> int:
    """The colour channels the model's first layer takes (3 when it cannot tell)."""
    first = next((m for m in model.modules() if isinstance(getattr(m, "in_channels", None), int)), None)
    return 1 if first is not None and first.in_channels == 1 else 3
