"""The top-9 scan against brute force over all activations of a small dataset."""

from __future__ import annotations

import pytest
import torch
from tensor_dataset import Tensors
from torch import nn

import deconv
from deconv.analyses.top9 import TopK, project_top, scan
from deconv.errors import NonFiniteError, SelectionError


def _model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, 2, 2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
        nn.Conv2d(6, 8, 3, 1, 1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 5),
    ).eval()


def _images() -> torch.Tensor:
    g = torch.Generator().manual_seed(4)
    images = torch.randn(137, 1, 16, 16, generator=g)
    images[7] *= 4  # strong, so that it ranks in every channel
    images[90] = images[7]  # exact ties between images: the lower index must win
    images[100] = images[7]
    images[40] = 0.0  # an all-zero image: ties within the map go to the first position
    return images


def _brute_force(model: nn.Module, images: torch.Tensor, upto: int, k: int) -> list[tuple]:
    with torch.no_grad():
        out = model[: upto + 1](images)
    rows = []
    for c in range(out.shape[1]):
        if out.dim() == 4:
            flat = out[:, c].flatten(1)
            best = [(float(flat[i].max()), i, int((flat[i] == flat[i].max()).nonzero()[0])) for i in range(len(images))]
        else:
            best = [(float(out[i, c]), i, 0) for i in range(len(images))]
        best.sort(key=lambda t: (-t[0], t[1]))
        width = out.shape[-1]
        for rank, (value, i, f) in enumerate(best[:k]):
            pos = (f // width, f % width) if out.dim() == 4 else (None, None)
            rows.append((c, rank, i, *pos, value))
    return rows


def test_scan_equals_brute_force_with_ties_and_odd_batches() -> None:
    model, images = _model(), _images()
    mirror = deconv.build_mirror(model)
    dataset = Tensors(images)
    state = scan(mirror, dataset, ["1", "4", "6"], k=9, batch_size=10, progress=False)
    records = state.records(dataset)
    for layer, upto in (("1", 1), ("4", 4), ("6", 6)):
        got = [(r.channel, r.rank, r.index, r.y, r.x) for r in records if r.layer == layer]
        want = _brute_force(model, images, upto, 9)
        assert got == [w[:5] for w in want], layer
        # the scan runs channels-last, the brute force in the model's layout: values agree to rounding
        torch.testing.assert_close(
            [r.value for r in records if r.layer == layer], [w[5] for w in want], rtol=1e-5, atol=1e-6
        )
    assert state.images == len(images) and state.position == len(images)
    tied = [[r.index for r in records if r.layer == "1" and r.channel == c][:3] for c in range(6)]
    assert [7, 90, 100] in tied, tied  # the same value three times: in dataset order
    for r in records:
        assert r.path == f"image{r.index}.png"


def test_scan_result_does_not_depend_on_batch_size_or_shards() -> None:
    model, images = _model(), _images()
    mirror = deconv.build_mirror(model)
    dataset = Tensors(images)
    whole = scan(mirror, dataset, ["4"], batch_size=137, progress=False)
    odd = scan(mirror, dataset, ["4"], batch_size=3, progress=False)
    shards = [scan(mirror, dataset, ["4"], batch_size=8, indices=range(r, 137, 3), progress=False) for r in range(3)]
    merged = shards[0].tops["4"]
    for other in shards[1:]:
        merged.merge(other.tops["4"])
    for top in (odd.tops["4"], merged):
        for a, b in zip(whole.tops["4"].state_dict().values(), top.state_dict().values()):
            assert torch.equal(a, b)


def test_fewer_images_than_k_leaves_slots_empty() -> None:
    mirror = deconv.build_mirror(_model())
    dataset = Tensors(_images()[:4])
    records = scan(mirror, dataset, ["4"], k=9, progress=False).records(dataset)
    assert {r.rank for r in records} == {0, 1, 2, 3}
    assert len(records) == 8 * 4


def test_topk_update_orders_by_value_then_index() -> None:
    top = TopK(1, k=3)
    top.update(
        torch.tensor([[1.0, 5.0, 5.0]]),
        torch.tensor([9, 8, 2]),
        torch.zeros(1, 3, dtype=torch.long),
        torch.zeros(1, 3, dtype=torch.long),
    )
    top.update(
        torch.tensor([[5.0, 0.5]]),
        torch.tensor([1, 0]),
        torch.ones(1, 2, dtype=torch.long),
        torch.ones(1, 2, dtype=torch.long),
    )
    assert top.values.tolist() == [[5.0, 5.0, 5.0]]
    assert top.index.tolist() == [[1, 2, 8]]
    assert top.y.tolist() == [[1, 0, 0]]


def test_project_top_crops_match_dense_projections_and_images() -> None:
    model, images = _model(), _images()
    mirror = deconv.build_mirror(model)
    dataset = Tensors(images)
    records = scan(mirror, dataset, ["1", "4"], k=3, batch_size=50, progress=False).records(dataset)
    seen = 0
    for chunk in project_top(mirror, dataset, records, batch_size=7, progress=False):
        for r, projection, patch, inside in zip(chunk.records, chunk.projections, chunk.patches, chunk.inside):
            dense = mirror.project_many(images, [(r.index, r.layer, r.channel, r.y, r.x)])[0]
            box = mirror.receptive_field(r.layer, r.y, r.x)
            pad = 40
            big = torch.nn.functional.pad(dense, (pad,) * 4)
            want = big[:, box.top + pad : box.bottom + pad, box.left + pad : box.right + pad]
            torch.testing.assert_close(projection, want, rtol=1e-5, atol=1e-6)
            image = torch.nn.functional.pad(images[r.index], (pad,) * 4)
            want_patch = image[:, box.top + pad : box.bottom + pad, box.left + pad : box.right + pad]
            assert torch.equal(patch, want_patch)
            inside_image = torch.nn.functional.pad(torch.ones(1, 16, 16, dtype=torch.bool), (pad,) * 4)
            assert torch.equal(
                inside, inside_image[:, box.top + pad : box.bottom + pad, box.left + pad : box.right + pad]
            )
            seen += 1
    assert seen == len(records)


class Flat(nn.Module):
    """A user's layer that only works in the default memory layout (``view`` fails on channels-last)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], -1).view(x.shape)


def test_a_users_layer_keeps_the_models_layout_and_the_exact_values() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 5, 2, 2), Flat(), nn.ReLU(), nn.MaxPool2d(3, 2, 1), nn.Conv2d(6, 8, 3, 1, 1), nn.ReLU()
    ).eval()
    deconv.register_mirror(Flat)(lambda m: deconv.layers.PassThrough())
    try:
        mirror = deconv.build_mirror(model)
        dataset = Tensors(_images())
        records = scan(mirror, dataset, ["2", "5"], k=9, batch_size=10, progress=False).records(dataset)
    finally:
        deconv.unregister_mirror(Flat)
    for layer, upto in (("2", 2), ("5", 5)):
        got = [(r.channel, r.rank, r.index, r.y, r.x, r.value) for r in records if r.layer == layer]
        assert got == _brute_force(model, _images(), upto, 9), layer  # bit for bit: the same layout


class Poison(nn.Module):
    """NaN at one position of one channel, for images with an activation above 5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[:, 2, 1, 1] = torch.where(x.flatten(1).amax(1) > 5, torch.nan, x[:, 2, 1, 1])
        return x


def test_a_nan_off_the_maximum_names_the_layer_and_image() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 6, 5, 2, 2), nn.ReLU(), Poison()).eval()
    images = torch.zeros(30, 1, 16, 16)
    images[23] = 100 * torch.randn(1, 16, 16)  # strong activations: Poison fires for image 23 only
    deconv.register_mirror(Poison)(lambda m: deconv.layers.PassThrough())
    try:
        mirror = deconv.build_mirror(model)
        with pytest.raises(NonFiniteError, match=r"layer '2' has NaN or inf activations for dataset image 23"):
            scan(mirror, Tensors(images), ["1", "2"], batch_size=8, progress=False)
    finally:
        deconv.unregister_mirror(Poison)


def test_ties_within_one_batch_go_to_the_lower_index() -> None:
    model, images = _model(), _images()
    images[[120, 3, 77, 50, 31]] = images[7].clone()  # six copies of the strongest image in one batch
    dataset = Tensors(images)
    records = scan(deconv.build_mirror(model), dataset, ["1", "6"], k=4, batch_size=137, progress=False).records(
        dataset
    )
    for layer, upto in (("1", 1), ("6", 6)):
        got = [(r.channel, r.rank, r.index, r.y, r.x) for r in records if r.layer == layer]
        assert got == [w[:5] for w in _brute_force(model, images, upto, 4)], layer
    assert [r.index for r in records if r.layer == "1" and r.channel == 0] == [3, 7, 31, 50]


def test_scanning_no_layer_is_an_error_listing_the_valid_ones() -> None:
    with pytest.raises(SelectionError, match=r"at least one layer.*valid layers: 0, 1, 2"):
        scan(deconv.build_mirror(_model()), Tensors(_images()), [], progress=False)
