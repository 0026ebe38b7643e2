"""Reading images: idx files (MNIST format), folders of image files, and fault-tolerant batching.

Every dataset yields ``(image, label)`` with ``image`` a ``(C, H, W)`` float32 tensor produced by a
:class:`Preprocess` and ``label`` an ``int`` (-1 when unknown).
"""

from __future__ import annotations

import ctypes
import functools
import gzip
import math
import os
import signal
import stat
import sys
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset

from .errors import DatasetError, SelectionError, one_line
from .io import RUN_MANIFEST

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "Preprocess",
    "UnreadableImage",
    "read_idx",
    "IdxDataset",
    "ImageFolder",
    "load_image",
    "open_dataset",
    "Batch",
    "batches",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

MAX_PIXELS = 2**26
"""The pixel budget: no image is resized or cropped to more pixels than this (8192 x 8192; about 800 MB as
float32 RGB). A setting that would make every image larger is refused, and so is an image that would be."""

StrPath = str | os.PathLike[str]


class UnreadableImage(DatasetError):
    """An image file that is unreadable, truncated or not an image. ``batches`` skips these."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: cannot read image: {reason}")
        self.path = path
        self.reason = reason


def _one_line(error: BaseException) -> str:
    text = one_line(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# ----------------------------------------------------------------------------------------- preprocess

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


@dataclass(frozen=True)
class Preprocess:
    """Turns a PIL image into a normalised ``(channels, H, W)`` float32 tensor.

    Steps: convert to greyscale (``channels=1``) or RGB (``channels=3``), with any transparency
    composited onto black (16-bit greyscale is scaled from 0..65535, float images clipped to
    0..1); resize so the shorter side is ``size`` (bilinear); centre-crop to ``crop x crop``
    (padding with black if the image is smaller); scale to [0, ``pixel_scale``] (1: torchvision's
    0..1, 255: Caffe's 0..255); put the channels in ``channel_order`` ("RGB", or "BGR" for Caffe-trained
    weights); then ``(x - mean) / std`` per channel, on that scale and in that order. ``mean``/``std``
    of length 1 apply to every channel.
    """

    channels: int = 3
    size: int | None = None
    crop: int | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    pixel_scale: float = 1.0
    channel_order: str = "RGB"

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"Preprocess.channels must be 1 (greyscale) or 3 (RGB), got {self.channels!r}")
        for name, key in (("size", "resize"), ("crop", "crop")):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"Preprocess.{name} must be None or an integer >= 1, got {value!r}")
            if value is not None and value * value > MAX_PIXELS:
                side = math.isqrt(MAX_PIXELS)
                raise ValueError(
                    f"{key} {value} makes every image at least {value}x{value} pixels, over the pixel budget of "
                    f"{MAX_PIXELS:,} ({side}x{side}); choose {key} <= {side}"
                )
        for name in ("mean", "std"):
            values = tuple(getattr(self, name))
            if len(values) not in (1, self.channels) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
            ):
                raise ValueError(
                    f"Preprocess.{name} must hold 1 or {self.channels} (channels) finite numbers, got {values!r}"
                )
            object.__setattr__(self, name, tuple(float(v) for v in values))
        if any(v <= 0 for v in self.std):
            raise ValueError(f"Preprocess.std values must be > 0, got {self.std!r}")
        if not (
            isinstance(self.pixel_scale, (int, float)) and math.isfinite(self.pixel_scale) and self.pixel_scale > 0
        ):
            raise ValueError(f"Preprocess.pixel_scale must be a finite number > 0 (1 or 255), got {self.pixel_scale!r}")
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"Preprocess.channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.mean, dtype=like.dtype, device=like.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=like.dtype, device=like.device).view(-1, 1, 1)
        return mean, std

    def _convert(self, image: Image.Image) -> Image.Image:
        if image.mode in _SIXTEEN_BIT_MODES or image.mode == "F":
            scale = 1.0 if image.mode == "F" else 65535.0
            grey = np.clip(np.asarray(image, dtype=np.float32) / scale, 0.0, 1.0)
            image = Image.fromarray(np.round(grey * 255).astype(np.uint8))
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
            rgba = image.convert("RGBA")
            image = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            image.alpha_composite(rgba)
        return image.convert("L" if self.channels == 1 else "RGB")

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """PIL image of any mode -> ``(channels, H, W)`` float32, normalised."""
        image = self._convert(image)
        if self.size is not None:
            width, height = image.size
            scale = self.size / min(width, height)
            new = (max(1, round(width * scale)), max(1, round(height * scale)))
            if new[0] * new[1] > MAX_PIXELS:
                raise ValueError(
                    f"its {width}x{height} pixels resized to a shorter side of {self.size} (resize) would be "
                    f"{new[0]}x{new[1]}, over the pixel budget of {MAX_PIXELS:,}; crop or shrink the image"
                )
            if new != image.size:
                image = image.resize(new, Image.Resampling.BILINEAR)
        if self.crop is not None:
            width, height = image.size
            left, top = (width - self.crop) // 2, (height - self.crop) // 2
            image = image.crop((left, top, left + self.crop, top + self.crop))
        array = np.asarray(image)
        return self.tensor(array.reshape(array.shape[0], array.shape[1], -1))

    def tensor(self, pixels: np.ndarray) -> torch.Tensor:
        """uint8 pixels ``(..., H, W, C)`` -> ``(..., C, H, W)`` float32, normalised."""
        x = torch.from_numpy(np.asarray(pixels, dtype=np.float32) * (self.pixel_scale / 255.0)).movedim(-1, -3)
        x = self._ordered(x).contiguous()
        mean, std = self._stats(x)
        return (x - mean) / std

    def _ordered(self, x: torch.Tensor) -> torch.Tensor:
        """Swaps RGB and BGR along the channel axis ``-3`` where ``channel_order`` is "BGR" (its own inverse)."""
        return x.flip(-3) if self.channel_order == "BGR" and x.shape[-3] == 3 else x

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., C, H, W)`` normalised -> the same shape with values in [0, 1] (clamped)."""
        if x.dim() < 3 or x.shape[-3] != self.channels:
            raise ValueError(f"Preprocess.denormalize expects (..., {self.channels}, H, W), got shape {tuple(x.shape)}")
        mean, std = self._stats(x)
        return self._ordered((x * std + mean) / self.pixel_scale).clamp(0.0, 1.0)


# ---------------------------------------------------------------------------------------------- idx

_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: StrPath, limit: int | None = None) -> np.ndarray:
    """Read an idx file (MNIST format, raw or gzip-compressed; detected by magic bytes).

    Returns an array of the header's shape (its first ``limit`` items, if given: only those are
    read and decompressed) with a native-endian dtype.
    """
    name = os.fspath(path)
    try:
        file = open(name, "rb")
    except OSError as error:
        raise DatasetError(f"{name}: cannot read idx file ({_one_line(error)})") from None
    with file:
        gzipped = file.read(2) == b"\x1f\x8b"
        file.seek(0)
        try:
            return _read_idx(gzip.GzipFile(fileobj=file) if gzipped else file, name, limit, gzipped)
        except (OSError, EOFError, zlib.error) as error:
            raise DatasetError(
                f"{name}: truncated or corrupt {'gzip data' if gzipped else 'file'} ({_one_line(error)}); "
                "expected a complete idx file (or .gz of one)"
            ) from None


def _read_idx(stream: BinaryIO, name: str, limit: int | None, gzipped: bool) -> np.ndarray:
    head = stream.read(4)
    if len(head) < 4 or head[:2] != b"\x00\x00":
        raise DatasetError(
            f"{name}: not an idx file: expected magic bytes 00 00 <dtype> <ndim>, got {head.hex(' ') or 'empty file'}"
        )
    code, ndim = head[2], head[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise DatasetError(f"{name}: unknown idx dtype code 0x{code:02X}; expected one of {known}")
    header = stream.read(4 * ndim)
    if ndim == 0 or len(header) < 4 * ndim:
        raise DatasetError(f"{name}: idx header declares {ndim} dimensions but the file ends inside the header")
    dims = tuple(int(d) for d in np.frombuffer(header, dtype=">u4"))
    dtype = _IDX_DTYPES[code]
    expected = math.prod(dims) * dtype.itemsize
    count = dims[0] if limit is None else min(limit, dims[0])
    wanted = count * math.prod(dims[1:]) * dtype.itemsize
    size = None if gzipped else os.fstat(stream.fileno()).st_size - 4 - 4 * ndim  # known without reading
    if size is not None and size < wanted:
        data = b""
    else:
        data = stream.read(wanted)
        size = len(data) + len(stream.read()) if limit is None else size
    if len(data) < wanted or (limit is None and size != expected):
        held = f"holds {size} bytes" if size is not None else f"ends after {len(data)} bytes"
        raise DatasetError(f"{name}: idx header declares shape {dims} ({expected} bytes of data) but the file {held}")
    array = np.frombuffer(data, dtype=dtype).reshape((count, *dims[1:]))
    return array.astype(dtype.newbyteorder("="))


class IdxDataset(Dataset):
    """Images from an idx file of shape ``(N, H, W)`` uint8, optionally with an ``(N,)`` labels file.

    Items are ``(image (C, H, W) float32, label int)``; the label is -1 without a labels file. Each
    image goes through ``preprocess`` as a greyscale PIL image, exactly like a greyscale image file.
    """

    def __init__(
        self,
        images: StrPath,
        labels: StrPath | None,
        preprocess: Preprocess,
        classes: Sequence[str] = (),
        limit: int | None = None,
    ) -> None:
        self.images = read_idx(images, limit)
        self.preprocess = preprocess
        self._normalized: torch.Tensor | None = None
        self.classes: list[str] = list(classes)
        if self.images.ndim != 3 or self.images.dtype != np.uint8:
            raise DatasetError(
                f"{os.fspath(images)}: expected uint8 images of shape (N, H, W), "
                f"got {self.images.dtype} of shape {self.images.shape}"
            )
        if len(self.images) == 0:
            raise DatasetError(f"{os.fspath(images)}: holds no images (its header declares shape {self.images.shape})")
        if labels is None:
            self.labels = np.full(len(self.images), -1, dtype=np.int64)
        else:
            read = read_idx(labels, limit)
            if read.ndim != 1 or read.dtype.kind not in "iu":
                raise DatasetError(
                    f"{os.fspath(labels)}: expected integer labels of shape (N,), "
                    f"got {read.dtype} of shape {read.shape}"
                )
            if len(read) != len(self.images):
                raise DatasetError(
                    f"{os.fspath(labels)} holds {len(read)} labels but {os.fspath(images)} holds "
                    f"{len(self.images)} images; expected the same count"
                )
            self.labels = read.astype(np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self.preprocess.size is None and self.preprocess.crop is None:  # no resampling: all at once, once
            if self._normalized is None:
                grey = self.images[..., None]
                self._normalized = self.preprocess.tensor(np.repeat(grey, self.preprocess.channels, -1))
            return self._normalized[index], int(self.labels[index])
        return self.preprocess(Image.fromarray(self.images[index])), int(self.labels[index])

    def path(self, index: int) -> str | None:
        """Items of an idx file have no file of their own: always None."""
        return None


# -------------------------------------------------------------------------------------- image folder


class ImageFolder(Dataset):
    """Image files found recursively under ``root``, in sorted order of their relative paths.

    The label of a file is the index in ``classes`` of its first-level subfolder; ``classes`` holds
    the sorted names of the first-level subfolders that contain images. Files directly in ``root``
    have label -1. Names starting with "." (hidden files and folders) and deconv's own run folders
    (holding ``deconv-run.json``) are ignored.
    """

    def __init__(self, root: StrPath, preprocess: Preprocess) -> None:
        self.root = Path(root)
        self.preprocess = preprocess
        accepted = " ".join(IMAGE_EXTENSIONS)
        if not self.root.exists():
            raise DatasetError(f"{self.root}: no such folder (expected a folder of {accepted} images)")
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: not a folder (expected a folder of {accepted} images)")
        found: list[str] = []
        for folder, dirs, files in os.walk(self.root):
            # hidden folders, and deconv's own run folders (their sheets and thumbnails are no data)
            dirs[:] = [
                d for d in dirs if not d.startswith(".") and not os.path.isfile(os.path.join(folder, d, RUN_MANIFEST))
            ]
            rel = Path(folder).relative_to(self.root)
            found.extend(
                (rel / f).as_posix()
                for f in files
                if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
            )
        if not found:
            raise DatasetError(f"{self.root}: no images found (searched subfolders for {accepted}, any case)")
        self.files: list[str] = sorted(found)
        self.classes: list[str] = sorted({f.split("/", 1)[0] for f in self.files if "/" in f})
        index = {name: i for i, name in enumerate(self.classes)}
        self.labels: list[int] = [index[f.split("/", 1)[0]] if "/" in f else -1 for f in self.files]

    def __len__(self) -> int:
        return len(self.files)

    def path(self, index: int) -> str:
        """The file of item ``index``."""
        return str(self.root / self.files[index])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return load_image(self.path(index), self.preprocess), self.labels[index]


def _open_regular(path: str) -> BinaryIO:
    """``path`` opened for reading if it is a regular file (or a symlink to one); a FIFO, device or
    socket raises :class:`UnreadableImage` instead of blocking (opened non-blocking, then checked)."""
    file = open(path, "rb", opener=lambda name, flags: os.open(name, flags | os.O_NONBLOCK))
    mode = os.fstat(file.fileno()).st_mode
    if not stat.S_ISREG(mode):
        file.close()
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode) else "a device or socket"
        raise UnreadableImage(path, f"not a regular file ({kind})")
    os.set_blocking(file.fileno(), True)
    return file


def load_image(path: StrPath, preprocess: Preprocess) -> torch.Tensor:
    """One image file (EXIF orientation applied) -> ``(C, H, W)`` via ``preprocess``.

    Raises :class:`UnreadableImage` naming the file if it is missing, not a regular file (a FIFO
    would block), unreadable, truncated or not an image.
    """
    path = os.fspath(path)
    try:
        with _open_regular(path) as file, Image.open(file) as opened:
            opened.load()
            return preprocess(ImageOps.exif_transpose(opened))
    except UnreadableImage:
        raise
    except FileNotFoundError:
        raise UnreadableImage(path, "no such file") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        raise UnreadableImage(path, _one_line(error)) from None


def open_dataset(path: StrPath, preprocess: Preprocess, limit: int | None = None) -> Dataset:
    """A folder -> :class:`ImageFolder`; a file -> :class:`IdxDataset` (of its first ``limit`` images).

    For an idx file the labels file is the one whose name has "images-idx3" replaced by
    "labels-idx1", when it exists beside it.
    """
    target = Path(path)
    if not target.exists():
        raise DatasetError(f"{target}: no such file or folder (expected a folder of images or an idx file)")
    if target.is_dir():
        return ImageFolder(target, preprocess)
    if target.suffix.lower() in IMAGE_EXTENSIONS:
        raise DatasetError(f"{target}: a single image, not a dataset; pass the folder that holds it")
    labels = target.with_name(target.name.replace("images-idx3", "labels-idx1"))
    return IdxDataset(target, labels if labels != target and labels.is_file() else None, preprocess, limit=limit)


# ------------------------------------------------------------------------------------------ batches


@dataclass
class Batch:
    """Readable items of one batch, plus the items of that batch that could not be read.

    A batch in which no item was readable is still yielded (so its ``skipped`` items are reported);
    its ``images`` then has shape ``(0, 0, 0, 0)``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    skipped: list[tuple[int, str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])


class _Guarded(Dataset):
    """Wraps a dataset so an unreadable item becomes a record instead of an exception."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, int, tuple[str, str] | None]:
        try:
            image, label = self.dataset[index]
        except UnreadableImage as error:
            return index, None, -1, (error.path, error.reason)
        return index, image, label, None


def _collate(items: list[tuple[int, torch.Tensor | None, int, tuple[str, str] | None]]) -> Batch | DatasetError:
    # Errors are returned, not raised, so that worker processes do not wrap them in multi-line messages.
    good = [(i, image, label) for i, image, label, _ in items if image is not None]
    skipped = [(i, record[0], record[1]) for i, _, _, record in items if record is not None]
    if not good:
        empty = torch.empty(0, dtype=torch.int64)
        return Batch(torch.empty(0, 0, 0, 0), empty, empty.clone(), skipped)
    first = good[0][1].shape
    for _, image, _ in good:
        if image.shape != first:
            return DatasetError(
                f"images of different shapes in one batch: {tuple(first)} and {tuple(image.shape)}; "
                "set a resize size and/or crop so all images get the same size"
            )
    return Batch(
        images=torch.stack([image for _, image, _ in good]),
        labels=torch.tensor([label for _, _, label in good], dtype=torch.int64),
        indices=torch.tensor([i for i, _, _ in good], dtype=torch.int64),
        skipped=skipped,
    )


def batches(
    dataset: Dataset,
    batch_size: int,
    num_workers: int = 0,
    indices: Sequence[int] | None = None,
) -> Iterator[Batch]:
    """Yield :class:`Batch` es of ``(B, C, H, W)`` images in order over ``indices`` (default: all items).

    Items that raise :class:`UnreadableImage` are left out of ``images`` and listed in ``skipped``.
    Worker processes die with the process that started them, even when it is killed.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    size = len(dataset)  # type: ignore[arg-type]
    order = list(range(size)) if indices is None else [int(i) for i in indices]
    bad = next((i for i in order if not 0 <= i < size), None)
    if bad is not None:
        raise SelectionError(f"image index {bad} does not exist; the dataset holds {size} images (0..{size - 1})")
    loader = DataLoader(
        _Guarded(dataset),
        batch_size=batch_size,
        sampler=order,
        num_workers=num_workers,
        collate_fn=_collate,
        worker_init_fn=functools.partial(_die_with, os.getpid()),
    )
    for batch in loader:
        if isinstance(batch, DatasetError):
            raise batch
        yield batch


def _die_with(parent: int, worker: int) -> None:
    """A DataLoader worker's start: on Linux the kernel sends it SIGKILL when its parent dies
    (``prctl(PR_SET_PDEATHSIG)``), so no worker outlives a killed run; one whose parent died already exits."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)
