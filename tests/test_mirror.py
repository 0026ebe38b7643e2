"""Mirror.project / project_many / projections against the autograd oracle (tests/oracle.py), float64.

Sections: whole architectures at every layer; project's modes; crops and receptive fields;
random architectures (hypothesis); sharing and non-interference; errors; dtype; memory budget.
"""

from __future__ import annotations

import contextlib
import copy
from collections import Counter
from typing import Iterator

import oracle
import pytest
import torch
import torch.nn.functional as F
from conftest import Arch, batch_norm, randn
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import deconv

ARCHS = ["zfnet", "vgg_bn", "tiny_vgg", "odd_convs"]
pytestmark = pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")


@contextlib.contextmanager
def count_paths(mirror: deconv.Mirror, image_shape: tuple[int, ...]) -> Iterator[Counter]:
    """Counts mirror calls on windows smaller than the layer's output map and on whole maps."""
    counts: Counter = Counter()
    shapes = {id(s.mirror): info.shape for s, info in zip(mirror.steps, mirror.describe(image_shape))}

    def hook(module: nn.Module, args: tuple) -> None:
        shape = shapes[id(module)]
        small = len(shape) == 3 and tuple(args[0].shape[-2:]) != shape[-2:]
        counts["window" if small else "whole"] += 1

    handles = [step.mirror.register_forward_pre_hook(hook) for step in mirror.steps]
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


def switch_collisions(model: nn.Module, images: torch.Tensor) -> int:
    """Output positions of the model's max pools whose switch another window of the same map also chose."""
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.MaxPool2d):
            x = oracle.activation(model, images, "<" + name)
            _, switches = F.max_pool2d(
                x,
                module.kernel_size,
                module.stride,
                module.padding,
                module.dilation,
                module.ceil_mode,
                return_indices=True,
            )
            flat = switches.flatten(2)
            for row in flat.flatten(0, 1):
                total += len(row) - len(row.unique())
    return total


# ---------------------------------------------------------------- architectures, every layer
@pytest.mark.parametrize("arch", ARCHS)
def test_every_layer_matches_oracle(arch: str, request: pytest.FixtureRequest, gen: torch.Generator) -> None:
    model, images, taps = request.getfixturevalue(arch)
    mirror = deconv.build_mirror(model)
    selections = oracle.selections_at(model, images, mirror.layer_names, 6, gen, taps)
    assert {s[1] for s in selections} == set(mirror.layer_names)
    with count_paths(mirror, images.shape[1:]) as paths:
        actual = mirror.project_many(images, selections)
    oracle.assert_matches(actual, oracle.project(model, images, selections, taps), min_nonzero=0.8)
    assert paths["window"] > 0 and paths["whole"] > 0, paths  # both the cone and the dense path ran


def test_zfnet_switch_collisions_occur(zfnet: Arch) -> None:
    """Overlapping 3x3/2 pools: windows share switches, and the oracle test above sums them."""
    assert switch_collisions(zfnet.model, zfnet.images) >= 20


def test_negative_activation_keeps_its_sign(zfnet: Arch) -> None:
    """A pre-ReLU activation below zero projects as the oracle seeded with its (negative) value."""
    h = oracle.activation(zfnet.model, zfnet.images, "3")
    negative = (h < 0).nonzero()[:8].tolist()
    selections = [(n, "3", c, y, x) for n, c, y, x in negative]
    mirror = deconv.build_mirror(zfnet.model)
    oracle.assert_matches(
        mirror.project_many(zfnet.images, selections), oracle.project(zfnet.model, zfnet.images, selections)
    )


# ---------------------------------------------------------------- project's modes
@pytest.mark.parametrize(
    "arch, layer", [("zfnet", "4"), ("zfnet", "0"), ("tiny_vgg", "features.4"), ("tiny_vgg", "classifier.1")]
)
def test_project_without_position_takes_the_argmax(arch: str, layer: str, request: pytest.FixtureRequest) -> None:
    model, images, taps = request.getfixturevalue(arch)
    h = oracle.activation(model, images, layer)
    channel = int(h.flatten(2).amax(2).amin(0).argmax()) if h.dim() == 4 else int(h.amin(0).argmax())
    h = h[:, channel]
    sites = [
        (i, layer, channel, *divmod(int(m.argmax()), m.shape[-1])) if m.dim() == 2 else (i, layer, channel)
        for i, m in enumerate(h)
    ]
    actual = deconv.build_mirror(model).project(images, layer=layer, channel=channel)
    oracle.assert_matches(actual, oracle.project(model, images, sites), min_nonzero=1.0)


def test_project_at_a_position_projects_it_in_every_image(zfnet: Arch) -> None:
    sites = [(i, "6", 9, 1, 2) for i in range(len(zfnet.images))]
    actual = deconv.build_mirror(zfnet.model).project(zfnet.images, layer="6", channel=9, position=(1, 2))
    oracle.assert_matches(actual, oracle.project(zfnet.model, zfnet.images, sites))


@pytest.mark.parametrize("arch", ["zfnet", "vgg_bn", "tiny_vgg"])
def test_target_class_projects_the_logit(arch: str, request: pytest.FixtureRequest) -> None:
    model, images, _ = request.getfixturevalue(arch)
    logits = oracle.activation(model, images, "")
    k = int((logits > 0).sum(0).argmax())  # the class positive for most images
    mirror = deconv.build_mirror(model)
    expected = oracle.project(model, images, [(i, "logits", k) for i in range(len(images))], {"logits": ""})
    oracle.assert_matches(mirror.project(images, target_class=k), expected)


@pytest.mark.parametrize(
    "arch, layer, channel", [("zfnet", "1", 3), ("zfnet", "9", 4), ("vgg_bn", "7", 11), ("odd_convs", "4", 1)]
)
def test_map_projection_seeds_the_whole_channel(
    arch: str, layer: str, channel: int, request: pytest.FixtureRequest
) -> None:
    """Not a sum of single projections (Rectify is not linear): the seed is the channel's map."""
    model, images, _ = request.getfixturevalue(arch)
    actual = deconv.build_mirror(model).project(images, layer=layer, channel=channel, position="map")
    oracle.assert_matches(actual, oracle.project_map(model, images, layer, channel), min_nonzero=1.0)


# ---------------------------------------------------------------- crops and receptive fields
def test_describe_gives_hand_computed_fields_and_shapes(zfnet: Arch) -> None:
    info = {i.name: i for i in deconv.build_mirror(zfnet.model).describe((3, 48, 48))}
    expected = {
        "0": (7, 2, -1),
        "1": (7, 2, -1),
        "2": (11, 4, -3),
        "3": (27, 8, -11),
        "5": (43, 16, -19),
        "6": (75, 16, -35),
        "8": (107, 16, -51),
        "10": (139, 32, -51),
    }
    for name, (size, stride, offset) in expected.items():
        assert info[name].receptive_field == deconv.ReceptiveField((size, size), (stride, stride), (offset, offset)), (
            name
        )
    shapes = {
        "0": (8, 22, 22),
        "2": (8, 11, 11),
        "3": (12, 6, 6),
        "5": (12, 3, 3),
        "10": (16, 1, 1),
        "11": (16,),
        "15": (10,),
    }
    assert {name: info[name].shape for name in shapes} == shapes
    assert info["11"].receptive_field is None and info["15"].receptive_field is None
    assert (info["2"].kind, info["2"].mirror) == ("MaxPool2d", "Unpool2d")


def test_receptive_field_box_by_hand(zfnet: Arch) -> None:
    mirror = deconv.build_mirror(zfnet.model)
    assert mirror.receptive_field("0", 3, 5, (3, 48, 48)) == deconv.Box(5, 9, 12, 16)
    assert mirror.receptive_field("5", 1, 2, (3, 48, 48)) == deconv.Box(-3, 13, 40, 56)


def box_of(mirror: deconv.Mirror, selection: tuple, shape: tuple[int, ...]) -> deconv.Box:
    if len(selection) == 3:
        return deconv.Box(0, 0, shape[-2], shape[-1])
    return mirror.receptive_field(selection[1], selection[3], selection[4], shape)


def assert_crops(mirror: deconv.Mirror, images: torch.Tensor, selections: list, dense: torch.Tensor) -> None:
    """Crops equal the oracle's dense projections cut to the receptive-field box (zero-padded), and
    the dense projections are zero outside the box."""
    seen = []
    for where, crops in mirror.projections(images, selections, crop=True):
        for k, crop in zip(where.tolist(), crops):
            top, left, bottom, right = box_of(mirror, selections[k], images.shape[1:])
            pad = max(0, -top, -left, bottom - images.shape[-2], right - images.shape[-1])
            padded = F.pad(dense[k], (pad, pad, pad, pad))
            expected = padded[:, top + pad : bottom + pad, left + pad : right + pad]
            oracle.assert_matches(crop[None], expected[None], min_nonzero=0.0)
            outside = dense[k].clone()
            outside[:, max(top, 0) : max(bottom, 0), max(left, 0) : max(right, 0)] = 0
            assert float(outside.abs().max()) == 0.0, f"selection {selections[k]} reaches outside its box"
            seen.append(k)
    assert sorted(seen) == list(range(len(selections)))


@pytest.mark.parametrize("arch", ["zfnet", "odd_convs", "vgg_bn"])
def test_crops_are_the_dense_projection_cut_to_the_receptive_field(
    arch: str, request: pytest.FixtureRequest, gen: torch.Generator
) -> None:
    model, images, taps = request.getfixturevalue(arch)
    mirror = deconv.build_mirror(model)
    selections = oracle.selections_at(model, images, mirror.layer_names, 3, gen, taps)
    assert_crops(mirror, images, selections, oracle.project(model, images, selections, taps))


# ---------------------------------------------------------------- random architectures
def spans(draw, size: tuple[int, int], most: int, dilate: bool) -> tuple[tuple[int, int], tuple[int, int]]:
    """A kernel and a dilation per axis whose span fits in a map of ``size``."""
    kernel = tuple(draw(st.integers(1, min(most, n))) for n in size)
    dilation = tuple(draw(st.integers(1, 2)) if dilate and 2 * (k - 1) + 1 <= n else 1 for k, n in zip(kernel, size))
    return kernel, dilation


def conv_layer(draw, channels: int, size: tuple[int, int]) -> nn.Module:
    groups = draw(st.sampled_from([g for g in (1, 2, 3) if channels % g == 0]))
    out = groups * draw(st.integers(1, 3))
    kernel, dilation = spans(draw, size, 4, dilate=True)
    if draw(st.integers(0, 4)) == 0:
        return nn.Conv2d(channels, out, kernel, padding="same", dilation=dilation, groups=groups)
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = tuple(draw(st.integers(0, (k - 1) * d // 2 + 1)) for k, d in zip(kernel, dilation))
    return nn.Conv2d(channels, out, kernel, stride, padding, dilation, groups)


def pool_layer(draw, size: tuple[int, int], average: bool) -> nn.Module:
    kernel, dilation = spans(draw, size, 3, dilate=not average)
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    if average:
        return nn.AvgPool2d(
            kernel, stride, padding, draw(st.booleans()), draw(st.booleans()), draw(st.sampled_from([None, 1, 3]))
        )
    return nn.MaxPool2d(kernel, stride, padding, dilation, ceil_mode=draw(st.booleans()))


KINDS = ["conv"] * 3 + ["relu"] * 2 + ["max"] * 3 + ["avg"] * 2 + ["bn", "dropout", "identity", "adaptive"]


@st.composite
def architectures(draw) -> Arch:
    """A random stack of the built-in layers that fits its random input, ending in a ReLU."""
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    shape = (draw(st.integers(1, 4)), draw(st.integers(5, 24)), draw(st.integers(5, 24)))
    x = torch.zeros(1, *shape, dtype=torch.float64)
    layers: list[nn.Module] = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(KINDS))
        c, size = x.shape[1], tuple(x.shape[-2:])
        if kind == "conv":
            layer = conv_layer(draw, c, size)
        elif kind == "relu":
            layer = nn.ReLU(inplace=draw(st.booleans()))
        elif kind in ("max", "avg"):
            layer = pool_layer(draw, size, average=kind == "avg")
        elif kind == "bn":
            layer = batch_norm(c, gen)
        elif kind == "adaptive":
            size = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
            layer = draw(st.sampled_from([nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d]))(size)
        else:
            layer = nn.Dropout(0.5) if kind == "dropout" else nn.Identity()
        layer = layer.double().eval()
        try:
            y = layer(x.clone())
        except RuntimeError:  # a size or padding this layer cannot take
            continue
        layers.append(layer)
        x = y
    if draw(st.booleans()):
        layers += [nn.Flatten(), nn.Linear(x[0].numel(), 5), nn.ReLU(), nn.Linear(5, 4)]
    layers.append(nn.ReLU())
    model = nn.Sequential(*layers).double().eval()
    return Arch(model, torch.randn(2, *shape, generator=gen, dtype=torch.float64), {})


@settings(max_examples=80)
@given(arch=architectures(), pick=st.integers(0, 2**31 - 1))
def test_random_architectures_match_oracle(arch: Arch, pick: int) -> None:
    """project_many and the crops of projections, for random positive selections at every layer."""
    mirror = deconv.build_mirror(arch.model)
    gen = torch.Generator().manual_seed(pick)
    selections = oracle.selections_at(arch.model, arch.images, mirror.layer_names, 2, gen)
    order = torch.randperm(len(selections), generator=gen).tolist()
    selections = [selections[k] for k in order]
    expected = oracle.project(arch.model, arch.images, selections)
    oracle.assert_matches(mirror.project_many(arch.images, selections), expected, min_nonzero=0.0)
    assert_crops(mirror, arch.images, selections, expected)


# ---------------------------------------------------------------- sharing and non-interference
def test_mirrors_share_the_model_weights(zfnet: Arch) -> None:
    mirror = deconv.build_mirror(zfnet.model)
    weighted = [s for s in mirror.steps if isinstance(s.layer, (nn.Conv2d, nn.Linear))]
    assert [s.name for s in weighted] == ["0", "3", "6", "8", "12", "15"]
    for step in weighted:
        assert step.mirror.weight is step.layer.weight
    assert [s.layer for s in mirror.steps] == list(zfnet.model)


def test_changing_a_weight_changes_the_projection(zfnet: Arch) -> None:
    """Shared, not copied: an in-place update of the model shows in the next projection."""
    model, images, _ = zfnet
    mirror = deconv.build_mirror(model)
    selections = [(0, "6", 3, 1, 1), (1, "3", 2, 2, 4), (2, "15", 4)]
    before = mirror.project_many(images, selections)
    with torch.no_grad():
        model[0].weight.mul_(-1.5)
        model[6].weight[3].neg_()
    after = mirror.project_many(images, selections)
    oracle.assert_matches(after, oracle.project(model, images, selections))
    assert not torch.allclose(before, after)


def snapshot(model: nn.Module) -> dict:
    """Everything build_mirror and project must leave alone."""
    modules = dict(model.named_modules())
    return {
        "training": {n: m.training for n, m in modules.items()},
        "state": [(k, v.clone()) for k, v in model.state_dict(keep_vars=True).items()],
        "parameters": [(n, p, p.requires_grad, p.grad) for n, p in model.named_parameters()],
        "hooks": {
            n: [
                list(getattr(m, d).items())
                for d in (
                    "_forward_hooks",
                    "_forward_pre_hooks",
                    "_backward_hooks",
                    "_backward_pre_hooks",
                    "_state_dict_hooks",
                    "_load_state_dict_pre_hooks",
                )
            ]
            for n, m in modules.items()
        },
        "children": {n: list(m._modules.items()) for n, m in modules.items()},
    }


def assert_same(before: dict, after: dict) -> None:
    assert after["training"] == before["training"]
    assert [k for k, _ in after["state"]] == [k for k, _ in before["state"]]
    for (k, a), (_, b) in zip(after["state"], before["state"]):
        assert a.dtype == b.dtype and torch.equal(a, b), k
    assert [(n, id(p), r, g) for n, p, r, g in after["parameters"]] == [
        (n, id(p), r, g) for n, p, r, g in before["parameters"]
    ]
    assert after["hooks"] == before["hooks"]
    assert after["children"] == before["children"]


def test_build_and_project_leave_a_training_model_alone(gen: torch.Generator) -> None:
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3),
        batch_norm(4, gen),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout2d(0.3),
        nn.Flatten(),
        nn.Linear(100, 3),
    ).double()
    model.train()
    model[6].eval()  # a mixed state must come back as it was
    calls = Counter()
    model[0].register_forward_hook(lambda m, a, o: calls.update(["forward"]))
    model[5].register_forward_pre_hook(lambda m, a: calls.update(["pre"]))
    images = randn(gen, 3, 2, 16, 16)
    reference = copy.deepcopy(model).eval()
    before = snapshot(model)

    mirror = deconv.build_mirror(model)
    assert_same(before, snapshot(model))
    mirror.project(images, layer="7", channel=1)
    mirror.project(images, layer="2", channel=0, position="map")
    mirror.project(images, target_class=2)
    list(mirror.projections(images, [(0, "4", 1, 2, 3)], crop=True))
    mirror.describe()
    assert_same(before, snapshot(model))
    assert torch.is_grad_enabled()

    model.eval()
    assert torch.equal(model(images), reference(images))
    assert calls["forward"] > 0  # the hooks stayed registered (and the mirror's forward walk ran them)


def test_projections_match_the_oracle_for_a_training_model(gen: torch.Generator) -> None:
    """Projections use the model in eval mode (running statistics, no dropout) whatever its flag."""
    torch.manual_seed(6)
    model = (
        nn.Sequential(nn.Conv2d(2, 4, 3), batch_norm(4, gen), nn.ReLU(), nn.Dropout(0.9), nn.MaxPool2d(2))
        .double()
        .train()
    )
    images = randn(gen, 2, 2, 12, 12)
    selections = oracle.selections_at(model, images, ["1", "3", "4"], 3, gen)
    actual = deconv.build_mirror(model).project_many(images, selections)
    assert model.training
    oracle.assert_matches(actual, oracle.project(model, images, selections))


def test_projections_are_plain_tensors(zfnet: Arch) -> None:
    """No autograd graph behind the results: it would hold every chunk's intermediate windows alive."""
    mirror = deconv.build_mirror(zfnet.model)
    results = [
        mirror.project(zfnet.images, layer="4", channel=1),
        mirror.project(zfnet.images, layer="4", channel=1, position="map"),
        mirror.project_many(zfnet.images, [(0, "8", 2, 1, 1), (1, "15", 0)]),
        *(crops for _, crops in mirror.projections(zfnet.images, [(0, "3", 2, 1, 1)], crop=True)),
    ]
    assert [(r.requires_grad, r.grad_fn) for r in results] == [(False, None)] * len(results)


def test_a_failing_forward_walk_restores_the_training_flags(gen: torch.Generator) -> None:
    torch.manual_seed(8)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Dropout(), nn.ReLU(), nn.Conv2d(3, 3, 3), nn.ReLU()).double().train()
    with torch.no_grad():
        model[3].weight[1, 0, 0, 0] = float("inf")
    mirror = deconv.build_mirror(model)
    with pytest.raises(deconv.NonFiniteError) as error:
        mirror.project(randn(gen, 2, 2, 9, 9), layer="4", channel=1)
    message = str(error.value)
    assert ("'3'" in message or "'4'" in message) and "image 0" in message, (
        message
    )  # where it starts or where it was asked
    assert all(m.training for m in model.modules())


# ---------------------------------------------------------------- errors
@pytest.fixture
def small(gen: torch.Generator) -> tuple[deconv.Mirror, torch.Tensor]:
    torch.manual_seed(7)
    model = (
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(144, 5)).double().eval()
    )
    return deconv.build_mirror(model), randn(gen, 2, 3, 14, 14)


def test_unknown_layer_lists_the_valid_ones(small) -> None:
    mirror, images = small
    with pytest.raises(deconv.SelectionError, match=r"'conv9'.*'?0'?, '?1'?, '?2'?, '?3'?, '?4'?") as error:
        mirror.project(images, layer="conv9", channel=0)
    assert "\n" not in str(error.value)
    with pytest.raises(deconv.SelectionError, match="conv9"):
        mirror.project_many(images, [(0, "conv9", 0, 0, 0)])
    with pytest.raises(deconv.SelectionError, match="conv9"):
        mirror.receptive_field("conv9", 0, 0)


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda m, x: m.project(x, layer="0", channel=4, position=(0, 0)), ["channel 4", "'0'", "4 channels", "0..3"]),
        (lambda m, x: m.project(x, layer="0", channel=-1), ["channel -1", "0..3"]),
        (lambda m, x: m.project(x, layer="4", channel=5), ["channel 5", "'4'", "0..4"]),
        (lambda m, x: m.project(x, layer="0", channel=0, position=(12, 0)), ["(12, 0)", "'0'", "12x12", "0..11"]),
        (lambda m, x: m.project_many(x, [(0, "2", 0, 2, -1)]), ["(2, -1)", "'2'", "6x6", "0..5"]),
        (lambda m, x: m.project_many(x, [(0, "2", 0)]), ["(None, None)", "'2'"]),
        (lambda m, x: m.project(x, layer="4", channel=0, position=(0, 0)), ["'4'", "vectors", "position"]),
        (lambda m, x: m.project(x, layer="3", channel=0, position="map"), ["'3'", "vectors"]),
        (lambda m, x: m.project_many(x, [(0, "4", 1, 0, 0)]), ["'4'", "vectors"]),
        (lambda m, x: m.project_many(x, [(2, "0", 1, 0, 0)]), ["image index 2", "2 images", "0..1"]),
        (lambda m, x: m.project(x, layer="4", channel=0, target_class=1), ["target_class"]),
        (lambda m, x: m.project(x, target_class=1, position=(0, 0)), ["target_class", "position"]),
        (lambda m, x: m.project(x, target_class=5), ["channel 5", "0..4"]),
        (lambda m, x: m.project(x, layer="0", channel=1.5), ["channel", "integer", "1.5"]),
        (lambda m, x: m.project(x, layer="0", channel="3"), ["channel", "integer", "'3'"]),
        (lambda m, x: m.project(x, layer="0", channel=True), ["channel", "integer", "True"]),
        (lambda m, x: m.project(x, layer="0", channel=0, position=(1.5, 2.0)), ["position y", "integer", "1.5"]),
        (lambda m, x: m.project(x, layer="0", channel=0, position="1,2"), ["position", "'1,2'", "(y, x)"]),
        (lambda m, x: m.project(x, layer="0", channel=0, position=(1,)), ["position", "(1,)", "(y, x)"]),
        (lambda m, x: m.project_many(x, [(0, "0")]), ["selection", "(image, layer, channel", "(0, '0')"]),
        (lambda m, x: m.project_many(x, [(0, 3, 0)]), ["unknown layer 3", "valid layers"]),
    ],
)
def test_selection_errors_name_the_thing_and_what_is_valid(small, call, words: list[str]) -> None:
    mirror, images = small
    with pytest.raises(deconv.SelectionError) as error:
        call(mirror, images)
    message = str(error.value)
    assert "\n" not in message and all(w in message for w in words), message


@pytest.mark.parametrize(
    "images, error, words",
    [
        (
            torch.zeros(3, 14, 14, dtype=torch.float64),
            deconv.InputError,
            ["(3, 14, 14)", "(N, C, H, W)", "images[None]"],
        ),
        (torch.zeros(2, 1, 14, 14, dtype=torch.float64), deconv.InputError, ["1 channels", "'0'", "3"]),
        (torch.zeros(2, 3, 14, 14, dtype=torch.uint8), deconv.InputError, ["torch.uint8", "float"]),
        (torch.zeros(2, 3, 14, 14, dtype=torch.int64), deconv.InputError, ["torch.int64", "float"]),
        (
            torch.zeros(2, 3, 14, 14).index_fill_(0, torch.tensor([1]), float("nan")),
            deconv.NonFiniteError,
            ["NaN", "image 1"],
        ),
        (
            torch.zeros(2, 3, 14, 14).index_fill_(0, torch.tensor([0]), float("inf")),
            deconv.NonFiniteError,
            ["inf", "image 0"],
        ),
        (torch.zeros(2, 3, 14, 14, device="meta"), deconv.InputError, ["meta device"]),
        (torch.zeros(2, 3, 1, 1, dtype=torch.float64), deconv.InputError, ["layer '", "3, 1, 1)", "Kernel size"]),
    ],
)
def test_bad_images_raise_input_errors(small, images: torch.Tensor, error: type, words: list[str]) -> None:
    mirror, _ = small
    for call in (
        lambda: mirror.project(images, layer="1", channel=0),
        lambda: mirror.project_many(images, [(0, "1", 0, 0, 0)]),
    ):
        with pytest.raises(error) as raised:
            call()
        message = str(raised.value)
        assert "\n" not in message and all(w in message for w in words), message
    assert issubclass(deconv.NonFiniteError, deconv.InputError) and issubclass(deconv.InputError, ValueError)


# ---------------------------------------------------------------- dtype and device
@pytest.mark.parametrize(
    "model_dtype, image_dtype",
    [(torch.float64, torch.float32), (torch.float32, torch.float64), (torch.float64, torch.float16)],
)
def test_results_follow_the_model_dtype_and_device(
    zfnet: Arch, model_dtype: torch.dtype, image_dtype: torch.dtype
) -> None:
    model = zfnet.model.to(model_dtype)
    images = zfnet.images.to(image_dtype)
    mirror = deconv.build_mirror(model)
    device = next(model.parameters()).device
    for result in (
        mirror.project(images, layer="4", channel=1),
        mirror.project_many(images, [(1, "15", 3)]),
        next(mirror.projections(images, [(0, "3", 2, 1, 1)], crop=True))[1],
    ):
        assert result.dtype == model_dtype and result.device == device
    if model_dtype == torch.float64:  # the float32/float16 images were converted, not projected at low precision
        selections = [(0, "4", 1, 2, 2), (2, "8", 3, 1, 1)]
        oracle.assert_matches(
            mirror.project_many(images, selections), oracle.project(model, images.double(), selections)
        )


# ---------------------------------------------------------------- memory budget and order
def test_memory_budget_and_shuffled_order(zfnet: Arch, gen: torch.Generator) -> None:
    model = zfnet.model
    images = torch.cat([zfnet.images, randn(gen, 3, 3, 48, 48)])
    mirror = deconv.build_mirror(model)
    selections = oracle.selections_at(model, images, ["0", "2", "3", "6", "10", "13", "15"], 3, gen)
    selections += selections[:3]  # the same activation twice gives the same projection twice
    order = torch.randperm(len(selections), generator=gen).tolist()
    selections = [selections[k] for k in order]
    assert len({s[0] for s in selections}) == 6
    expected = oracle.project(model, images, selections)
    default = mirror.project_many(images, selections)
    oracle.assert_matches(default, expected)
    chunkings = set()
    for budget in (1, 400_000, 1_500_000, 6_000_000):
        parts = list(mirror.projections(images, selections, memory_budget=budget))
        where = torch.cat([w for w, _ in parts]).tolist()
        assert sorted(where) == list(range(len(selections)))
        images_per_part = [len({selections[k][0] for k in w.tolist()}) for w, _ in parts]
        chunkings.add((len(parts), max(images_per_part)))
        actual = mirror.project_many(images, selections, memory_budget=budget)
        torch.testing.assert_close(actual, default, rtol=0, atol=1e-13 * float(default.detach().abs().max()))
    assert (len(selections), 1) in chunkings  # one selection at a time
    assert any(1 < n < len(selections) and most > 1 for n, most in chunkings), chunkings  # several images per chunk


def test_parts_put_selections_with_the_same_receptive_field_extent_together(zfnet: Arch) -> None:
    """Parts are sorted by how much of each receptive field lies in the image, not by position, so that
    selections cut by the image's borders do not share a part (and its window size) with whole ones."""
    mirror = deconv.build_mirror(zfnet.model)
    positions = [(0, 0), (5, 5), (10, 10), (0, 5), (5, 0), (10, 5), (5, 10), (3, 3)]  # layer "0": 22x22 maps

    def extent(y: int, x: int) -> tuple[int, int]:
        box = mirror.receptive_field("0", y, x, image_shape=(3, 48, 48))
        return min(box.bottom, 48) - max(box.top, 0), min(box.right, 48) - max(box.left, 0)

    assert len({extent(y, x) for y, x in positions}) > 2  # the corners' boxes are cut, the centre's are not
    selections = [(0, "0", c, y, x) for c, (y, x) in enumerate(positions)]
    done = torch.cat([where for where, _ in mirror.projections(zfnet.images, selections)]).tolist()
    assert sorted(done) == list(range(len(positions)))
    extents = [extent(*positions[k]) for k in done]
    assert extents == sorted(extents), extents


def test_windows_reach_the_transposed_filters_channels_last(zfnet: Arch, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine keeps windows channels-last, the layout oneDNN convolves fastest; a convolution of
    1x1 windows (a selection's own) returns the default layout, and everything below it would inherit it."""
    from deconv.layers.transposed_filter import TransposedFilter

    mirror = deconv.build_mirror(zfnet.model)
    seen = []
    forward = TransposedFilter.forward

    def spy(self, signal, *args, **kwargs):
        if signal.shape[-2:] != (1, 1):
            seen.append(signal.is_contiguous(memory_format=torch.channels_last))
        return forward(self, signal, *args, **kwargs)

    monkeypatch.setattr(TransposedFilter, "forward", spy)
    list(mirror.projections(zfnet.images, [(0, "9", c, 1, 1) for c in range(4)], crop=True))  # 3x3 maps
    assert seen and all(seen), seen


def test_empty_selections_give_an_empty_batch(zfnet: Arch) -> None:
    out = deconv.build_mirror(zfnet.model).project_many(zfnet.images, [])
    assert out.shape == (0, 3, 48, 48) and out.dtype == torch.float64


class _Scaled(nn.Module):
    """A layer scale as ConvNeXt has one: the signal times a view of a parameter (a constant of a function call)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.gamma = nn.Parameter(torch.rand(3) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x) * self.gamma.reshape(1, -1, 1, 1))


def test_the_mirror_follows_a_replaced_parameter_that_a_function_call_reads(gen: torch.Generator) -> None:
    model = _Scaled().double().eval()
    images = torch.randn(2, 2, 7, 7, generator=gen, dtype=torch.float64)
    mirror = deconv.build_mirror(model)
    before = mirror.project(images, layer="relu", channel=1)
    model.gamma = nn.Parameter(torch.rand(3, dtype=torch.float64) + 2.0)
    after = mirror.project(images, layer="relu", channel=1)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, deconv.build_mirror(model).project(images, layer="relu", channel=1))
