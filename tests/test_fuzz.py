"""Property tests: random architectures and selections, corrupted images, idx files, configs and
scan states. Nothing may fail with anything but the typed errors of :mod:`deconv.errors`."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from PIL import Image
from tensor_dataset import Tensors
from torch import nn

import deconv
from deconv.analyses.checkpoint import Checkpoint
from deconv.analyses.top9 import ScanState, project_top, scan
from deconv.commands import all_options
from deconv.commands.common import preprocess_from, require_at_least
from deconv.commands.config import load_config, resolve
from deconv.commands.top9 import OPTIONS as TOP9
from deconv.commands.top9 import Top9Settings
from deconv.data import ImageFolder, Preprocess, UnreadableImage, batches, load_image, read_idx
from deconv.errors import ConfigError, DatasetError, InputError, SelectionError, StateError

ROOT = Path(__file__).parents[1]


@st.composite
def architectures(draw: st.DrawFn) -> tuple[nn.Module, torch.Tensor]:
    """A random chain of convolutions, ReLUs and pools (maybe ending in a linear layer) and random
    images for it; the images may be too small for it."""
    torch.manual_seed(draw(st.integers(0, 2**16)))
    channels = draw(st.integers(1, 3))
    layers: list[nn.Module] = []
    width = channels
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["conv", "relu", "max", "avg"]))
        k = draw(st.integers(1, 4))
        if kind == "conv":
            out = draw(st.integers(1, 5))
            layers.append(
                nn.Conv2d(width, out, k, stride=draw(st.integers(1, 2)), padding=draw(st.integers(0, k // 2)))
            )
            width = out
        elif kind == "relu":
            layers.append(nn.ReLU())
        elif kind == "max":
            layers.append(nn.MaxPool2d(k, stride=draw(st.integers(1, k)), padding=draw(st.integers(0, k // 2))))
        else:
            layers.append(nn.AvgPool2d(k, stride=draw(st.integers(1, k))))
    images = torch.randn(draw(st.integers(1, 12)), channels, draw(st.integers(3, 16)), draw(st.integers(3, 16)))
    model = nn.Sequential(*layers).eval()
    if draw(st.booleans()):
        try:
            with torch.no_grad():
                features = model(images[:1]).numel()
            model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(features, draw(st.integers(1, 4)))).eval()
        except RuntimeError:
            pass  # the images are too small for this chain: the scan must say so
    return model, images


def _runs(model: nn.Module, images: torch.Tensor) -> bool:
    """Whether the plain model runs on ``images`` (random chains may shrink them below a kernel)."""
    try:
        with torch.no_grad():
            model(images)
    except RuntimeError:
        return False
    return True


@given(architectures(), st.integers(1, 5), st.integers(1, 5), st.data())
def test_random_architectures_scan_and_project_or_raise_input_errors(
    arch: tuple[nn.Module, torch.Tensor], k: int, batch_size: int, data: st.DataObject
) -> None:
    """Layers of a model that runs on the images are scanned and projected; layers it cannot reach are an
    InputError."""
    model, images = arch
    mirror = deconv.build_mirror(model)
    layers = data.draw(st.lists(st.sampled_from(mirror.layer_names), min_size=1, max_size=3, unique=True))
    dataset = Tensors(images)
    try:
        state = scan(mirror, dataset, layers, k=k, batch_size=batch_size, progress=False)
        records = state.records(dataset)
        chunks = project_top(mirror, dataset, records, batch_size=batch_size, progress=False)
        projected = [r for chunk in chunks for r in chunk.records]
    except InputError:
        assert not _runs(model, images)  # only for images the model fails on (past the deepest layer, it may)
        return
    assert _runs(model[: 1 + max(map(int, layers))], images)  # never for images the model fails on before it
    assert sorted(projected, key=lambda r: (r.layer, r.channel, r.rank)) == sorted(
        records, key=lambda r: (r.layer, r.channel, r.rank)
    )
    for layer, top in state.tops.items():
        mine = [r for r in records if r.layer == layer]
        assert len(mine) == top.values.shape[0] * min(k, len(images))
        for c in range(top.values.shape[0]):
            ranked = [r for r in mine if r.channel == c]
            assert [r.value for r in ranked] == sorted((r.value for r in ranked), reverse=True)
            assert len({r.index for r in ranked}) == len(ranked)


def _exists(mirror: deconv.Mirror, images: torch.Tensor, selection: tuple) -> bool:
    """Whether ``selection`` names an image, layer and channel that exist, and a position inside a map's
    layer (none for a layer of vectors)."""
    image, layer, channel, *position = selection
    if not 0 <= image < len(images) or layer not in mirror.layer_names:
        return False
    shape = mirror.shape(layer, tuple(images.shape[1:]))
    inside = (
        not position
        if len(shape) == 1
        else bool(position) and 0 <= position[0] < shape[1] and 0 <= position[1] < shape[2]
    )
    return 0 <= channel < shape[0] and inside


@given(architectures(), st.lists(st.tuples(*[st.integers(-2, 20)] * 4), min_size=1, max_size=4), st.data())
def test_random_selections_project_or_raise_selection_errors(
    arch: tuple[nn.Module, torch.Tensor], picks: list[tuple[int, int, int, int]], data: st.DataObject
) -> None:
    """Selections that all exist are projected; any other is a SelectionError."""
    model, images = arch
    assume(_runs(model, images))  # images too small for the model: the test above
    mirror = deconv.build_mirror(model)
    selections = []
    for image, channel, y, x in picks:
        layer = data.draw(st.sampled_from([*mirror.layer_names, "no-such-layer"]))
        with_position = data.draw(st.booleans())
        if layer in mirror.layer_names and data.draw(st.booleans()):  # one made to exist, inside the layer
            shape = mirror.shape(layer, tuple(images.shape[1:]))
            image, channel, y, x = image % len(images), channel % shape[0], y % shape[1 % len(shape)], x % shape[-1]
            with_position = len(shape) == 3
        selections.append((image, layer, channel, y, x) if with_position else (image, layer, channel))
    if not all(_exists(mirror, images, s) for s in selections):
        with pytest.raises(SelectionError):
            mirror.project_many(images, selections)
        return
    out = mirror.project_many(images, selections)
    assert out.shape == (len(selections), *images.shape[1:])
    assert bool(torch.isfinite(out).all())


def _encoded(fmt: str, mode: str) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (12, 9, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


IMAGES = [
    _encoded(fmt, mode)
    for fmt, mode in [
        ("PNG", "RGB"),
        ("PNG", "LA"),
        ("JPEG", "L"),
        ("GIF", "P"),
        ("BMP", "RGB"),
        ("TIFF", "RGB"),
        ("WEBP", "RGB"),
    ]
]


def _corrupt(data: st.DataObject, raw: bytes) -> bytes:
    """``raw`` truncated, with bytes overwritten, inserted or deleted."""
    out = bytearray(raw[: data.draw(st.integers(0, len(raw)))] if data.draw(st.booleans()) else raw)
    for _ in range(data.draw(st.integers(0, 6))):
        if not out:
            break
        at = data.draw(st.integers(0, len(out) - 1))
        action = data.draw(st.sampled_from(["set", "insert", "delete"]))
        if action == "set":
            out[at] = data.draw(st.integers(0, 255))
        elif action == "insert":
            out[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            del out[at : at + data.draw(st.integers(1, 8))]
    return bytes(out)


@given(raw=st.sampled_from(IMAGES), suffix=st.sampled_from([".png", ".jpg", ".gif", ".tif"]), data=st.data())
def test_corrupted_image_files_load_or_are_skipped(
    raw: bytes, suffix: str, data: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("img")
    (root / f"bad{suffix}").write_bytes(_corrupt(data, raw))
    (root / "good.png").write_bytes(IMAGES[0])
    preprocess = Preprocess(channels=data.draw(st.sampled_from([1, 3])), size=6, crop=6)
    try:
        image = load_image(root / f"bad{suffix}", preprocess)
        assert image.shape == (preprocess.channels, 6, 6) and bool(torch.isfinite(image).all())
    except UnreadableImage as error:
        assert "bad" in str(error) and "\n" not in str(error)
    (batch,) = batches(ImageFolder(root, preprocess), 4)
    assert len(batch) + len(batch.skipped) == 2 and 1 in batch.indices.tolist()


def _idx(images: np.ndarray) -> bytes:
    return (
        bytes([0, 0, 0x08, images.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in images.shape) + images.tobytes()
    )


IDX = _idx(np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5))


@given(compress=st.booleans(), data=st.data())
def test_corrupted_idx_files_read_or_raise_dataset_errors(
    compress: bool, data: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    raw = gzip.compress(IDX) if compress else IDX
    path = tmp_path_factory.mktemp("idx") / ("images-idx3-ubyte" + (".gz" if compress else ""))
    path.write_bytes(_corrupt(data, raw))
    try:
        dataset = deconv.data.open_dataset(path, Preprocess(channels=1))
    except DatasetError as error:
        assert "\n" not in str(error)
        return
    assert all(dataset[i][0].dim() == 3 for i in range(len(dataset)))  # type: ignore[arg-type]
    read_idx(path)


CONFIG = (ROOT / "configs" / "default.toml").read_bytes()


@given(data=st.data())
def test_corrupted_configs_load_or_raise_config_errors(
    data: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("config") / "c.toml"
    path.write_bytes(_corrupt(data, CONFIG) if data.draw(st.booleans()) else data.draw(st.binary(max_size=60)))
    try:
        settings = Top9Settings.of(resolve(TOP9, load_config(path, all_options()), {}))
        require_at_least(
            settings, top=1, limit=0, batch_size=1, workers=0, memory_budget_mb=1, per_sheet=1, save_every=0
        )
        preprocess_from(settings.data, nn.Conv2d(1, 1, 1), embedded=False)
    except ConfigError as error:
        assert (
            "\n" not in str(error) and str(path) in str(error) or "key" in str(error) or "preprocessing" in str(error)
        )


@given(data=st.data())
def test_corrupted_scan_states_load_or_raise_state_errors(
    data: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("state") / "rank0.pt"
    mirror = deconv.build_mirror(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()))
    state = scan(
        mirror, Tensors(torch.randn(5, 1, 6, 6, generator=torch.Generator().manual_seed(1))), ["1"], progress=False
    )
    Checkpoint(path, {"top": 9}).save(state)
    path.write_bytes(_corrupt(data, path.read_bytes()))
    try:
        loaded = Checkpoint(path, {"top": 9}).load()
    except StateError as error:
        assert "\n" not in str(error)
        return
    assert isinstance(loaded, ScanState)
