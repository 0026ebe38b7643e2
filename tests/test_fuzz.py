"""Property tests: random architectures and selections, corrupted images, idx files, configs and
scan states. Nothing may fail with anything but the typed errors of :mod:`deconv.errors`."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import oracle
import pytest
import timm.layers
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
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


ACTIVATIONS = {
    "ReLU": nn.ReLU,
    "ReLU6": nn.ReLU6,
    "LeakyReLU": lambda: nn.LeakyReLU(0.2),
    "PReLU": lambda: nn.PReLU(init=0.3),
    "ELU": nn.ELU,
    "SiLU": nn.SiLU,
    "GELU": nn.GELU,
    "GELU tanh": lambda: nn.GELU(approximate="tanh"),
    "Mish": nn.Mish,
    "Hardswish": nn.Hardswish,
    "Hardtanh": lambda: nn.Hardtanh(-0.5, 1.5),
    "F.silu": lambda: Function(F.silu),
    "F.gelu tanh": lambda: Function(lambda x: F.gelu(x, approximate="tanh")),
    "F.hardswish": lambda: Function(F.hardswish),
}
GATES = {
    "Sigmoid": nn.Sigmoid,
    "Hardsigmoid": nn.Hardsigmoid,
    "sigmoid": lambda: Function(torch.sigmoid),
    "F.hardsigmoid": lambda: Function(F.hardsigmoid),
    "tanh": lambda: Function(torch.tanh),
}


class Function(nn.Module):
    """A function of the forward pass, as a module (called inside its parent's forward: traced through)."""

    def __init__(self, f) -> None:  # noqa: ANN001
        super().__init__()
        self.f = f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x)


class SqueezeExcite(nn.Module):
    """x * gate(conv(act(conv(mean(x))))): SE-ResNet, EfficientNet."""

    def __init__(self, c: int, gate: nn.Module) -> None:
        super().__init__()
        self.reduce, self.act, self.expand, self.gate = nn.Conv2d(c, 2, 1), nn.SiLU(), nn.Conv2d(2, c, 1), gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(x.mean((2, 3), keepdim=True)))))


class Eca(nn.Module):
    """timm's ECA gate: a 1-D convolution across the pooled channels, a sigmoid, expanded over the map."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.mean((2, 3)).view(x.shape[0], 1, -1))
        return x * torch.sigmoid(y).view(x.shape[0], -1, 1, 1).expand_as(x)


class SelectiveKernel(nn.Module):
    """Two branches stacked, weighted by a softmax over them, summed (SKNet, split attention)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a, self.b, self.attend = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 1), nn.Conv2d(c, 2 * c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = torch.stack([self.a(x), torch.relu(self.b(x))], dim=1)  # (N, 2, C, H, W)
        logits = self.attend(branches.sum(1).mean((2, 3), keepdim=True)).view(x.shape[0], 2, -1, 1, 1)
        return (branches * torch.softmax(logits, dim=1)).sum(dim=1)


class ChannelsLast(nn.Module):
    """permute -> layer -> permute (ConvNeXt's LayerNorm and MLP over the channels of a channels-last map)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Residual(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Product(nn.Module):
    """x * conv(x): a product of two input-dependent tensors, neither a gate."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv(x)


class Resize(nn.Module):
    def __init__(self, **kwargs) -> None:  # noqa: ANN003
        super().__init__()
        self.kwargs = kwargs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, **self.kwargs)


class Pad(nn.Module):
    def __init__(self, pad: tuple[int, ...]) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pad)


OPERATIONS = [
    "conv",
    *(f"activation {name}" for name in ACTIVATIONS),
    *(f"squeeze-excite {name}" for name in GATES),
    "eca",
    "selective kernel",
    "LayerNorm",
    "channels-last MLP",
    "row LayerNorm",
    "LayerNorm2d",
    "GroupNorm",
    "interpolate",
    "Upsample",
    "pad",
    "ZeroPad2d",
    "BlurPool2d",
    "StdConv2d",
    "ScaledStdConv2d",
    "residual",
    "product",
    "max pool",
]
"""What the modern nets draw from: every operation of issue 20's table that the walk mirrors by itself, a residual
sum and a product of two input-dependent tensors."""


def _block(draw: st.DrawFn, kind: str, c: int, size: int) -> tuple[nn.Module, int, int]:
    """One block of ``kind`` on ``c`` channels of ``size`` x ``size`` maps: the block, its channels and size."""
    if kind == "conv":
        out, k = draw(st.integers(2, 4)), draw(st.sampled_from([1, 3]))
        stride = draw(st.integers(1, 2)) if size >= 6 else 1
        return nn.Conv2d(c, out, k, stride=stride, padding=k // 2), out, (size - 1) // stride + 1
    if kind.startswith("activation "):
        return ACTIVATIONS[kind.removeprefix("activation ")](), c, size
    if kind.startswith("squeeze-excite "):
        return SqueezeExcite(c, GATES[kind.removeprefix("squeeze-excite ")]()), c, size
    if kind == "eca":
        return Eca(c), c, size
    if kind == "selective kernel":
        return SelectiveKernel(c), c, size
    if kind == "LayerNorm":
        return ChannelsLast(nn.LayerNorm(c)), c, size
    if kind == "channels-last MLP":  # ConvNeXt's: Linears over the channels of a channels-last map
        return ChannelsLast(nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))), c, size
    if kind == "row LayerNorm":  # over the columns and channels of each row: not position by position
        return ChannelsLast(nn.LayerNorm([size, c])), c, size
    if kind == "LayerNorm2d":
        return timm.layers.LayerNorm2d(c), c, size
    if kind == "GroupNorm":
        return nn.GroupNorm(draw(st.sampled_from([g for g in (1, 2) if c % g == 0])), c), c, size
    if kind == "interpolate":
        if draw(st.booleans()) and size <= 8:
            return Resize(scale_factor=2.0, mode="nearest"), c, 2 * size
        return Resize(size=(size + 3, size + 3), mode="bilinear", align_corners=False), c, size + 3
    if kind == "Upsample":
        return nn.Upsample(scale_factor=2, mode="nearest"), c, 2 * size
    if kind == "pad":
        a, b = draw(st.integers(0, 2)), draw(st.integers(0, 2))
        return Pad((a, b, b, a)), c, size + a + b
    if kind == "ZeroPad2d":
        return nn.ZeroPad2d(1), c, size + 2
    if kind == "BlurPool2d":
        return timm.layers.BlurPool2d(c, filt_size=3, stride=2), c, (size + 1) // 2
    if kind in ("StdConv2d", "ScaledStdConv2d"):
        out = draw(st.integers(2, 4))
        return getattr(timm.layers, kind)(c, out, 3, padding=1), out, size
    if kind == "residual":
        return Residual(nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.GELU())), c, size
    if kind == "product":
        return Product(c), c, size
    return nn.MaxPool2d(2), c, size // 2


@st.composite
def modern_architectures(draw: st.DrawFn, including: str) -> tuple[nn.Module, torch.Tensor]:
    """A random float64 chain of blocks of :data:`OPERATIONS`, one of them ``including``, after a first convolution,
    with random weights and norm parameters, and images for it."""
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    channels, image_size = draw(st.integers(2, 3)), draw(st.integers(5, 9))
    blocks: list[nn.Module] = [nn.Conv2d(channels, 3, 3, padding=1)]
    c, size = 3, image_size
    count = draw(st.integers(1, 4))
    at = draw(st.integers(0, count))
    for i in range(count + 1):
        kinds = [k for k in OPERATIONS if size >= 4 or k not in ("max pool", "BlurPool2d")]
        block, c, size = _block(draw, including if i == at else draw(st.sampled_from(kinds)), c, size)
        blocks.append(block)
    model = nn.Sequential(*blocks).double().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() <= 1 and not name.endswith("conv.weight"):  # gains, biases, norms' weights
                parameter.normal_(0.5, 0.5, generator=gen)
    images = torch.randn(3, channels, image_size, image_size, generator=gen, dtype=torch.float64)
    return model, images


@pytest.mark.parametrize("operation", OPERATIONS)
@settings(max_examples=8)
@given(data=st.data())
def test_random_modern_nets_match_the_oracle_under_every_rule(operation: str, data: st.DataObject) -> None:
    """Random nets, each with ``operation`` among its blocks, are exact (float64, within 1e-9 of each projection's
    largest value) at every block under every rule, and the oracle's projections are zero outside the mirror's
    receptive field; a product of two input-dependent tensors where neither is a gate is refused by name under the
    deconvnet and guided rules, and only that."""
    model, images = data.draw(modern_architectures(operation))
    gen = torch.Generator().manual_seed(0)
    blocks = [str(i) for i in range(len(model))]
    selections = oracle.selections_at(model, images, blocks, 2, gen)
    assume(selections)
    reached = 0
    for rule in ("deconvnet", "guided", "gradient"):
        try:
            mirror = deconv.build_mirror(model, rule=rule)
        except deconv.UnsupportedModuleError as error:
            assert rule != "gradient" and any(isinstance(m, Product) for m in model), error
            assert "\n" not in str(error) and "a product of two input-dependent tensors" in str(error), error
            continue
        expected = oracle.project(model, images, selections, rule=rule)
        oracle.assert_matches(mirror.project_many(images, selections), expected, min_nonzero=0.0)
        reached += bool(expected.abs().amax() > 0)
        for projection, (_, layer, _, y, x) in zip(expected, selections):  # nothing reaches outside the field
            box = mirror.receptive_field(layer, y, x)
            outside = torch.ones(images.shape[-2:], dtype=torch.bool)
            outside[max(box.top, 0) : max(box.bottom, 0), max(box.left, 0) : max(box.right, 0)] = False
            assert not projection[:, outside].any(), (layer, y, x, box)
    assert reached, "every projection is zero under every rule: the comparison means nothing"


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
