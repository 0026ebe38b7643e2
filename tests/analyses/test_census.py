"""The census against brute force over every activation of a small labelled dataset, its sketch's
exact merging, its files and its refusals."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import deconv
from deconv.analyses.sketch import BINS, Sketch
from deconv.analyses.top9 import ScanState, scan
from deconv.census import Census
from deconv.errors import DatasetError, SelectionError, StateError

LAYERS = ["0", "1", "4", "6"]  # a conv before its ReLU (negative values), its ReLU, a ReLU after pooling, a vector


class Labelled(Dataset):
    """``(image, label)`` items from tensors, with the labels listed and ``classes`` named."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str] | None = None) -> None:
        self.images, self.labels = images, labels.numpy()
        if classes is not None:
            self.classes = classes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


class Unlisted(Labelled):
    """The same items, with no ``labels`` attribute: labels are known only from the items."""

    def __getattribute__(self, name: str):  # type: ignore[no-untyped-def]
        if name == "labels":
            raise AttributeError(name)
        return super().__getattribute__(name)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(object.__getattribute__(self, "labels")[index])


def _model() -> nn.Module:
    torch.manual_seed(3)
    return (
        nn.Sequential(
            nn.Conv2d(1, 6, 5, 2, 2),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
            nn.Conv2d(6, 8, 3, 1, 1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(8 * 4 * 4, 5),
        )
        .double()
        .eval()
    )


def _data(n: int = 143) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    images = torch.randn(n, 1, 16, 16, generator=g, dtype=torch.float64)
    images[7] *= 4
    images[90] = images[7]  # exact ties between images: the lower index must win, at the top and the bottom
    images[40] = 0.0  # ties within a map: the first position in row-major order
    labels = torch.randint(0, 4, (n,), generator=g)
    labels[::11] = -1  # unlabelled images: counted everywhere but in the class statistics
    return images, labels


def _outputs(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {layer: model[: int(layer) + 1](images) for layer in LAYERS}


def _ranked(values: torch.Tensor, positions: torch.Tensor, k: int, largest: bool) -> list[tuple[int, int, float]]:
    """``(index, flat position, value)`` of the ``k`` largest (or smallest) values, ties to the lower index."""
    order = sorted(range(len(values)), key=lambda i: (-float(values[i]) if largest else float(values[i]), i))
    return [(i, int(positions[i]), float(values[i])) for i in order[:k]]


def _first(maps: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The first flat position in each ``(N, H*W)`` map holding ``target`` ``(N,)``."""
    return torch.stack([(row == t).nonzero()[0, 0] for row, t in zip(maps, target)])


@pytest.fixture(scope="module")
def made() -> tuple[nn.Module, torch.Tensor, torch.Tensor, Census]:
    model = _model()
    images, labels = _data()
    names = ["a", "b", "c", "d"]
    census = deconv.census(model, Labelled(images, labels, names), LAYERS, k=5, batch_size=16, progress=False)
    return model, images, labels, census


def test_census_equals_brute_force(made: tuple) -> None:
    model, images, labels, census = made
    for layer, out in _outputs(model, images).items():
        maps = out.flatten(2) if out.dim() == 4 else out[:, :, None]
        width = out.shape[-1] if out.dim() == 4 else 1
        table = census.table(layer)
        for c in range(out.shape[1]):
            peak, low = maps[:, c].amax(1), maps[:, c].amin(1)
            unit = census.unit(layer, c)
            for records, expected in (
                (unit.top, _ranked(peak, _first(maps[:, c], peak), 5, True)),
                (unit.bottom, _ranked(low, _first(maps[:, c], low), 5, False)),
            ):
                got = [(r.index, r.y, r.x, r.value) for r in records]
                want = [
                    (i, f // width if out.dim() == 4 else None, f % width if out.dim() == 4 else None, v)
                    for i, f, v in expected
                ]
                assert [g[:3] for g in got] == [w[:3] for w in want], (layer, c)
                assert [g[3] for g in got] == pytest.approx([w[3] for w in want], rel=1e-6, abs=1e-7)
            on = peak > 0
            assert unit.active == pytest.approx(float(on.double().mean()), abs=1e-12)
            assert unit.mean == pytest.approx(float(peak.double().mean()), rel=1e-9, abs=1e-9)
            assert unit.std == pytest.approx(float(peak.double().std(correction=0)), rel=1e-6, abs=1e-9)
            assert float(table["max"][c]) == pytest.approx(float(peak.max()), rel=1e-6)
            assert float(table["min"][c]) == pytest.approx(float(low.min()), rel=1e-6, abs=1e-7)
            for stats in unit.classes:
                mine = labels == stats.label
                assert (stats.name, stats.images) == ("abcd"[stats.label], int(mine.sum()))
                assert stats.active == int(on[mine].sum())
                assert stats.mean == pytest.approx(float(peak[mine].double().mean()), rel=1e-9, abs=1e-9)
                assert stats.max == pytest.approx(float(peak[mine].max()), rel=1e-6)
            assert sum(s.images for s in unit.classes) == int((labels >= 0).sum())
            top_labels = [int(labels[r.index]) for r in unit.top if labels[r.index] >= 0]
            assert sorted(unit.top_classes) == sorted(
                (n, top_labels.count("abcd".index(n))) for n in set(map("abcd".__getitem__, top_labels))
            )
            if out.dim() == 4:
                where = _first(maps[:, c], peak)[on]
                expected = torch.bincount(where, minlength=maps.shape[2]).view(out.shape[2], out.shape[3])
                assert torch.equal(unit.hits, expected)
            else:
                assert unit.hits is None


def test_a_relu_output_has_a_bottom_of_zeros_and_says_so(made: tuple) -> None:
    census = made[3]
    assert all(census.unit("1", c).rectified for c in range(6))
    assert all(r.value == 0.0 for r in census.bottom("1", 0))
    assert not all(census.unit("0", c).rectified for c in range(6))  # the conv before it goes negative


def test_quantiles_are_within_one_percent_in_rank_on_the_default_dataset() -> None:
    torch.set_num_threads(1)
    model, dataset = deconv.default_model(), deconv.default_dataset()
    layers = ["features.1", "features.3", "features.4", "features.7", "features.9", "features.11"]  # with pre-ReLU
    census = deconv.census(model, dataset, layers, batch_size=500, progress=False)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    outputs = census.mirror.activations(images, layers)
    for layer in layers:
        peaks = outputs[layer].amax((2, 3)).double()
        for c in range(peaks.shape[1]):
            ordered, estimates = peaks[:, c].sort().values, census.unit(layer, c).quantiles
            for q, estimate in estimates.items():
                below, upto = int((ordered < estimate).sum()), int((ordered <= estimate).sum())
                target = q * len(ordered)
                error = 0 if below <= target <= upto else min(abs(below - target), abs(upto - target))
                assert error <= 0.01 * len(ordered), (layer, c, q)


def test_the_sketch_is_the_same_in_any_order_and_split() -> None:
    g = torch.Generator().manual_seed(0)
    values = torch.cat([torch.randn(3, 500, generator=g) * 0.01, torch.rand(3, 300, generator=g) * 1e4], 1).double()
    values[1] = 7.0  # a constant channel
    values[2] = torch.rand(800, generator=g, dtype=torch.float64)  # a smooth one
    whole = Sketch(3)
    whole.update(values)
    pieces = Sketch(3)
    for part in torch.randperm(800, generator=g).split(37):  # coarsening as the range grows
        piece = Sketch(3)
        piece.update(values[:, part])
        pieces.merge(piece)
    pieces.merge(Sketch(3))  # an empty shard
    for a, b in zip(whole.state_dict().values(), pieces.state_dict().values()):
        assert torch.equal(a, b)
    assert whole.total.tolist() == [800] * 3
    assert int(((whole.counts > 0).sum(1) <= BINS).all())
    median = whole.quantiles(torch.tensor([0.5]))
    assert float(median[1, 0]) == 7.0
    smooth = int((values[2] <= median[2, 0]).sum())
    assert abs(smooth - 400) <= 2
    # a clump narrower than one bin: the rank error is at most that bin's count, as documented
    clumped = int((values[0] <= median[0, 0]).sum())
    assert abs(clumped - 400) <= int(whole.counts[0].max())


def test_merged_shards_equal_one_census() -> None:
    model = _model()
    images, labels = _data()
    dataset, mirror = Labelled(images, labels), deconv.build_mirror(model)
    whole = scan(mirror, dataset, LAYERS, k=5, batch_size=16, census=True, progress=False)
    merged = ScanState({})
    for shard in (range(0, 48), range(48, 48), range(48, 143)):
        merged.merge(scan(mirror, dataset, LAYERS, k=5, batch_size=16, census=True, progress=False, indices=shard))
    for layer in LAYERS:
        a, b = whole.tallies[layer].state_dict(), merged.tallies[layer].state_dict()
        for name in ("active", "class_images", "class_active", "class_max", "hits"):
            assert torch.equal(a[name], b[name]), name
        for name in ("sum", "squares", "class_sum"):
            assert torch.allclose(a[name], b[name], rtol=1e-12, atol=1e-12), name
        for part in ("bottom", "sketch"):
            for x, y in zip(a[part].values(), b[part].values()):
                assert torch.equal(x, y), part


def test_saved_census_loads_back_as_data(made: tuple, tmp_path: Path) -> None:
    census = made[3]
    census.save(tmp_path)
    with zipfile.ZipFile(tmp_path / "census.npz") as archive:
        assert all(name.endswith(".npy") for name in archive.namelist())
    with np.load(tmp_path / "census.npz", allow_pickle=False) as npz:  # no object arrays
        assert {npz[name].dtype.kind for name in npz.files} <= {"i", "f"}
    loaded = Census.load(tmp_path)
    assert loaded.layers == census.layers and loaded.images == census.images and loaded.classes == ["a", "b", "c", "d"]
    for layer in LAYERS:
        for c in range(census.channels(layer)):
            a, b = census.unit(layer, c), loaded.unit(layer, c)
            assert (a.top, a.bottom, a.quantiles, a.classes, a.top_classes) == (
                b.top,
                b.bottom,
                b.quantiles,
                b.classes,
                b.top_classes,
            )
    records = json.loads((tmp_path / "top9.json").read_text())
    assert [r["index"] for r in records] == [r.index for r in census.records()]
    assert set(records[0]) == {"layer", "channel", "rank", "index", "path", "y", "x", "value", "rule"}


def test_damaged_or_missing_census_files_are_refused_in_one_line(made: tuple, tmp_path: Path) -> None:
    with pytest.raises(StateError, match="no census here"):
        Census.load(tmp_path)
    made[3].save(tmp_path)
    (tmp_path / "census.npz").write_bytes(b"not a zip")
    with pytest.raises(StateError, match="damaged census") as error:
        Census.load(tmp_path)
    assert "\n" not in str(error.value)


def test_bad_requests_are_refused_naming_what_is_valid(made: tuple) -> None:
    model, images, labels, census = made
    with pytest.raises(SelectionError, match=r"k must be an integer from 1 to the dataset's 143 images, got 144"):
        deconv.census(model, Labelled(images, labels), ["1"], k=144)
    with pytest.raises(SelectionError, match="layer '9' is not in this census; its layers: 0, 1, 4, 6"):
        census.unit("9", 0)
    with pytest.raises(SelectionError, match=r"layer '1' has 6 channels \(0-5\), got channel 6"):
        census.unit("1", 6)


def test_labels_beyond_the_class_names_are_refused_naming_the_first() -> None:
    model = _model()
    images, labels = _data()
    labels[20], labels[30] = 7, 9
    with pytest.raises(DatasetError, match=r"dataset image 20 has label 7, outside the 4 class names \(0-3"):
        deconv.census(model, Labelled(images, labels, ["a", "b", "c", "d"]), ["1"], progress=False)
    with pytest.raises(DatasetError, match=r"^label 7 is outside the 4 class names"):  # known only from the items
        deconv.census(model, Unlisted(images, labels, ["a", "b", "c", "d"]), ["1"], progress=False)


def test_without_labels_there_are_no_class_statistics() -> None:
    images, _ = _data()
    census = deconv.census(_model(), Labelled(images, torch.full((143,), -1)), ["1"], progress=False)
    assert not census.labelled and census.unit("1", 0).classes == [] and census.unit("1", 0).top_classes == []


def test_a_census_of_a_model_whose_forward_branches_on_the_images_shape() -> None:
    """``deconv.census`` of a model torch.fx alone cannot trace: its mirror is traced for the dataset's images."""

    class SameChannels(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[1] != self.conv.in_channels:  # as Hugging Face's embedders check
                raise ValueError("wrong channel count")
            return torch.relu(self.conv(x))

    model = SameChannels().double().eval()
    images, labels = _data()
    found = deconv.census(model, Labelled(images, labels), layers=["conv"], k=2, progress=False)
    maxima = model.conv(images).amax((2, 3))[:, 1].tolist()
    best = sorted(range(len(maxima)), key=lambda i: (-maxima[i], i))[:2]  # ties: the lower index (7 and 90)
    assert [r.index for r in found.top("conv", 1)] == best
