"""The model side of ``deconv serve``: images, their cached forward results, feature maps and
projections, as tensors and plain data (no web, no pictures).

An image is named by a *reference*: a dataset index (``"12"``) or an upload (``"upload-<hash>"``).
"""

from __future__ import annotations

import hashlib
import tempfile
import warnings
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

from ..data import Preprocess, UnreadableImage, load_image
from ..errors import InputError, SelectionError, one_line
from ..figures.draw import class_name
from ..mirror import Box, Mirror, Trace
from ..selection import Position, check_channel

__all__ = ["DIGITS", "natural", "Viewed", "Views", "Maps", "Patch", "Session"]

CACHE_BYTES = 512 * 2**20
UPLOADS = 64  # uploaded images kept (their tensors), least recently used dropped first
UPLOAD_PIXELS = 2**20  # an upload, preprocessed, has at most this many pixels (1024 x 1024): it is traced whole
DIGITS = 18  # an image index, like every integer a client sends, has at most this many digits (fits int64)


def natural(text: str) -> bool:
    """Whether ``text`` is a whole number >= 0 as a client may write it: ASCII digits, at most ``DIGITS``."""
    return text.isascii() and text.isdigit() and len(text) <= DIGITS


@dataclass
class Viewed:
    """One image's forward results: ``image`` ``(1, C, H, W)`` checked; its ``trace`` (``mirror.trace``: every
    probe point's output and the memory of every rule), made on first use."""

    image: torch.Tensor
    trace: Trace | None = None

    @property
    def nbytes(self) -> int:
        tensors = {id(self.image): self.image}
        if self.trace is not None:
            kept = [
                *self.trace.outputs.values(),
                *(m for memory in self.trace.memory for entry in memory.values() for m in entry),
            ]
            tensors.update((id(t), t) for t in kept if isinstance(t, torch.Tensor))
        return sum(t.numel() * t.element_size() for t in tensors.values())


class Views:
    """A bounded LRU of :class:`Viewed` entries, keyed by ``(model, image)``, holding at most ``max_bytes``
    (the most recent entry is always kept). Each entry's size is counted once, when it is made and when its
    trace is added, into a running ``total``: O(1) bookkeeping per request, however full the cache."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.entries: OrderedDict[tuple[int, str], Viewed] = OrderedDict()
        self.sizes: dict[tuple[int, str], int] = {}
        self.total = 0

    def get(self, key: tuple[int, str], image: torch.Tensor | None = None) -> Viewed | None:
        """The entry of ``key``, made fresh with ``image`` where missing (``None`` without one)."""
        if key in self.entries:
            self.entries.move_to_end(key)
        elif image is not None:
            self.entries[key] = Viewed(image)
            self.count(key)
        return self.entries.get(key)

    def count(self, key: tuple[int, str]) -> None:
        """Counts the size of the most recent entry ``key`` anew (made, or its trace added), then drops the least
        recently used entries until the rest fit in ``max_bytes``."""
        size = self.entries[key].nbytes
        self.total += size - self.sizes.get(key, 0)
        self.sizes[key] = size
        while len(self.entries) > 1 and self.total > self.max_bytes:
            dropped, _ = self.entries.popitem(last=False)
            self.total -= self.sizes.pop(dropped)


@dataclass(frozen=True)
class Maps:
    """A layer's feature maps for one image, strongest first: ``maps`` ``(K, h, w)`` (``(K, 1, 1)`` for a
    layer of vectors), ``channels`` ``(K,)`` their channel numbers, ``peaks`` ``(K,)`` their largest values."""

    maps: torch.Tensor
    channels: torch.Tensor
    peaks: torch.Tensor
    vectors: bool


@dataclass(frozen=True)
class Patch:
    """The receptive-field ``box`` of one activation and the image cut to it: ``pixels`` ``(1, C, h, w)``,
    ``inside`` ``(1, 1, h, w)`` true where the box is inside the image."""

    box: Box
    pixels: torch.Tensor
    inside: torch.Tensor


class Session:
    """One model and dataset being probed. Not thread-safe: callers hold one lock around every call."""

    def __init__(
        self,
        mirror: Mirror,
        dataset: Dataset,
        preprocess: Preprocess,
        classes: Sequence[str] | None = None,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self.mirror = mirror
        self.dataset = dataset
        self.preprocess = preprocess
        self.classes = list(classes or getattr(dataset, "classes", None) or [])
        self.views = Views(cache_bytes)
        self.uploads: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.image_shape = tuple(dataset[0][0].shape) if len(dataset) else None
        self.rules = tuple(mirror.rules)

    # ------------------------------------------------------------------ images
    def image(self, ref: str) -> Viewed:
        """The cached forward results of image ``ref`` (loaded and checked on first use)."""
        viewed = self.views.get(self._key(ref))
        if viewed is None:
            viewed = self.views.get(self._key(ref), self.mirror.check_images(self._pixels(ref)[None]))
        return viewed

    def _key(self, ref: str) -> tuple[int, str]:
        return (id(self.mirror), ref)

    def _pixels(self, ref: str) -> torch.Tensor:
        if ref in self.uploads:
            self.uploads.move_to_end(ref)
            return self.uploads[ref]
        if ref.startswith("upload-"):
            raise SelectionError(
                f"image {ref!r}: no such upload (uploads are kept while the server runs, the last {UPLOADS})"
            )
        index = self._index(ref)
        try:
            return self.dataset[index][0]
        except UnreadableImage as error:  # its reason, not its server path
            raise InputError(f"dataset image {index} cannot be read: {error.reason}") from None

    def _index(self, ref: str) -> int:
        n = len(self.dataset)
        if not natural(ref) or int(ref) >= n:
            raise SelectionError(
                f"image {ref!r} is not in the dataset: give an index in 0..{n - 1} or an upload's name"
            )
        return int(ref)

    def label(self, ref: str) -> int:
        """The dataset label of image ``ref`` (-1 for uploads and unlabelled data)."""
        if ref.startswith("upload-"):
            return -1
        labels = getattr(self.dataset, "labels", None)
        index = self._index(ref)
        return int(labels[index]) if labels is not None else int(self.dataset[index][1])

    def find(self, start: int, count: int, label: int | None = None) -> list[int]:
        """Up to ``count`` dataset indices from ``start`` on; with ``label``, only the images labelled so."""
        if label is None:
            return list(range(start, min(start + count, len(self.dataset))))
        labels = torch.as_tensor(getattr(self.dataset, "labels", []), dtype=torch.long)
        return (labels[start:].eq(label).nonzero()[:count, 0] + start).tolist()

    def upload(self, data: bytes) -> str:
        """An uploaded image file -> its reference. Decoded in a temporary folder with Pillow's
        decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``) as a hard limit, preprocessed as configured;
        where the configuration resizes and crops nothing and dataset images are square, fitted to their size."""
        preprocess = self.preprocess
        shape = self.image_shape
        if preprocess.size is None and preprocess.crop is None and shape is not None and shape[1] == shape[2]:
            preprocess = replace(preprocess, size=shape[1], crop=shape[1])
        with tempfile.TemporaryDirectory(prefix="deconv-serve-") as folder, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            path = Path(folder) / "upload"
            path.write_bytes(data)
            try:
                pixels = load_image(path, preprocess)
            except UnreadableImage as error:
                reason = error.reason.replace(f"'{path}'", "").replace(str(path), "")  # no server path to the client
                raise InputError(f"uploaded file: cannot read image: {reason}") from None
            except Image.DecompressionBombWarning as error:
                raise InputError(f"uploaded file: {one_line(error)}") from None
        if pixels.shape[1] * pixels.shape[2] > UPLOAD_PIXELS:
            raise InputError(
                f"uploaded image preprocesses to {pixels.shape[2]}x{pixels.shape[1]} pixels, over the "
                f"{UPLOAD_PIXELS:,} deconv serve traces (1024x1024); upload a smaller image or set resize in the config"
            )
        try:
            self.mirror.shape(self.mirror.output_layer, tuple(pixels.shape))
        except RuntimeError:
            raise InputError(
                f"uploaded image preprocesses to shape {tuple(pixels.shape)}, which the model cannot take "
                f"(dataset images: {shape}); set resize/crop in the config"
            ) from None
        ref = "upload-" + hashlib.sha256(pixels.numpy().tobytes()).hexdigest()[:16]
        self.uploads[ref] = pixels
        self.uploads.move_to_end(ref)
        while len(self.uploads) > UPLOADS:
            self.uploads.popitem(last=False)
        return ref

    # ------------------------------------------------------------------ forward results
    def traced(self, ref: str) -> Viewed:
        """Image ``ref`` with its forward trace (one walk on first use, then cached)."""
        viewed = self.image(ref)
        if viewed.trace is None:
            viewed.trace = self.mirror.trace(viewed.image)
            self.views.count(self._key(ref))
        return viewed

    def output(self, ref: str, layer: str) -> torch.Tensor:
        """The output of ``layer`` for image ``ref``, ``(1, ...)``, from its cached trace."""
        return self.mirror.traced(self.traced(ref).trace, layer)

    def maps(self, ref: str, layer: str) -> Maps:
        """All feature maps of ``layer`` for image ``ref``, strongest first (ties: lower channel first)."""
        out = self.output(ref, layer)[0].float().cpu()
        vectors = out.dim() == 1
        maps = out.view(-1, 1, 1) if vectors else out
        peaks = maps.flatten(1).amax(1)
        order = torch.sort(peaks, descending=True, stable=True).indices
        return Maps(maps[order], order, peaks[order], vectors)

    def feature_map(self, ref: str, layer: str, channel: int) -> torch.Tensor:
        """Feature map ``channel`` of ``layer`` for image ``ref``: ``(h, w)`` (``(1, 1)`` for a layer of vectors)."""
        out = self.output(ref, layer)[0]
        check_channel(layer, channel, out.shape[0])
        return out[channel].float().cpu().reshape(out.shape[1:] if out.dim() == 3 else (1, 1))

    def classes_of(self, ref: str, top: int = 5) -> list[dict]:
        """The ``top`` most probable classes of image ``ref``: ``[{"class", "name", "probability"}]``, best first."""
        if top < 1:
            raise SelectionError(f"top must be >= 1 (how many classes to list), got {top}")
        scores = self.output(ref, self.mirror.output_layer)[0].float()
        if scores.dim() != 1:
            raise SelectionError(f"the model's last layer outputs maps {tuple(scores.shape)}, not class scores")
        probabilities, classes = scores.softmax(0).topk(min(top, scores.numel()))
        return [
            {"class": int(k), "name": class_name(int(k), self.classes), "probability": float(p)}
            for k, p in zip(classes, probabilities)
        ]

    # ------------------------------------------------------------------ projections
    def project(
        self,
        ref: str,
        layer: str | None = None,
        channel: int | None = None,
        position: Position = None,
        target_class: int | None = None,
        rule: str | None = None,
    ) -> torch.Tensor:
        """``mirror.project`` of image ``ref``: ``(1, C, H, W)``, from the image's cached trace (no forward walk)."""
        viewed = self.traced(ref)
        return self.mirror.project(viewed.image, layer, channel, position, target_class, rule, trace=viewed.trace)

    def patch(self, ref: str, layer: str, y: int, x: int) -> Patch:
        """The receptive-field box of activation ``(y, x)`` of ``layer`` and image ``ref`` cut to it."""
        image = self.image(ref).image
        shape = tuple(image.shape[1:])
        box = self.mirror.receptive_field(layer, y, x, shape)  # checks the position
        pixels, mask = self.mirror.patches(image.cpu(), layer, torch.tensor([[y, x]]))
        return Patch(box, pixels, mask)

    def layers(self) -> list[dict]:
        """Every probe-able layer: ``[{"name", "kind", "shape", "receptive_field"}]`` (field size in pixels or null)."""
        infos = self.mirror.describe(self.image_shape)
        return [
            {
                "name": i.name,
                "kind": i.kind,
                "shape": list(i.shape),
                "receptive_field": None if i.receptive_field is None else list(i.receptive_field.size),
            }
            for i in infos
        ]
