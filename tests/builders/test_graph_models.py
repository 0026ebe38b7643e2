"""torchvision's branching CNNs (random weights, random batch-norm statistics, no downloads) against the oracle.

Every ReLU CNN classifier of torchvision: the mirror walks its fx graph (residual additions, dense
concatenations, Inception branches, Fire modules, ShuffleNet's chunks and channel shuffles) and
must equal autograd with the rule's ReLU backward, seeded with each activation's own value, at
block outputs, at a leaf inside a block and for a class projection. float64 at small input sizes.
"""

from __future__ import annotations

import oracle
import pytest
import torch
import torchvision
from torch import nn

import deconv
from builders.test_torchvision import materialized


def real(name: str) -> nn.Module:
    """torchvision's ``name`` with random float64 weights and random batch-norm statistics, made on the
    meta device first (no slow initialisation), aux heads off."""
    kw = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    with torch.device("meta"):
        model = getattr(torchvision.models, name)(weights=None, **kw)
    return materialized(model)


# name: (image size, a leaf inside a block, blocks to probe)
MODELS = {
    "resnet18": (32, "layer1.0.relu:1", ["layer1.0", "layer2.1", "layer3.0", "layer4.1"]),
    "resnet34": (32, "layer2.0.downsample.1", ["layer1.2", "layer3.5", "layer4.2"]),
    "resnet50": (32, "layer3.2.relu:2", ["layer1.0", "layer2.3", "layer3.5", "layer4.2"]),
    "resnet101": (32, "layer3.20.conv2", ["layer1.2", "layer3.22", "layer4.2"]),
    "resnet152": (32, "layer3.30.bn3", ["layer2.7", "layer3.35", "layer4.2"]),
    "resnext50_32x4d": (32, "layer2.1.conv2", ["layer1.2", "layer3.5", "layer4.2"]),
    "wide_resnet50_2": (32, "layer1.1.relu", ["layer1.2", "layer4.2"]),
    "densenet121": (
        32,
        "features.denseblock2.denselayer3.conv1",
        ["features.denseblock1", "features.transition2", "features.denseblock4"],
    ),
    "densenet161": (32, "features.denseblock1.denselayer2", ["features.denseblock1", "features.denseblock3"]),
    "densenet169": (32, "features.transition1.pool", ["features.denseblock2", "features.denseblock4"]),
    "densenet201": (32, "features.denseblock3.denselayer40.relu2", ["features.transition1", "features.denseblock3"]),
    "googlenet": (40, "inception4a.branch2.1", ["conv1", "inception3a", "inception4c", "inception5b"]),
    "inception_v3": (75, "Mixed_5b.branch3x3dbl_2", ["Conv2d_2b_3x3", "Mixed_5b", "Mixed_6b", "Mixed_7c"]),
    "squeezenet1_0": (48, "features.4.expand3x3_activation", ["features.3", "features.7", "features.12"]),
    "squeezenet1_1": (48, "features.3.squeeze", ["features.3", "features.10", "features.12"]),
    "shufflenet_v2_x0_5": (32, "stage2.1.branch2.7", ["stage2.0", "stage3.1", "stage4.3", "conv5"]),
    "shufflenet_v2_x1_0": (32, "stage3.0.branch1.4", ["stage2.2", "stage4.0"]),
    "shufflenet_v2_x1_5": (32, "stage2.0.branch2.2", ["stage3.3", "stage4.3"]),
    "shufflenet_v2_x2_0": (32, "stage4.1.branch2.4", ["stage2.1", "stage4.2"]),
    # ReLU6, Hardswish, SiLU, squeeze-excite gates, LayerNorm, GELU, layer scale
    "mobilenet_v2": (32, "features.3.conv.0.2", ["features.2", "features.10", "features.17"]),
    "mobilenet_v3_small": (32, "features.4.block.2.fc2", ["features.1", "features.4", "features.11"]),
    "efficientnet_b0": (32, "features.2.0.block.2.fc1", ["features.1.0", "features.4.1", "features.7.0"]),
    "convnext_tiny": (32, "features.1.0.block.2", ["features.1.0", "features.3.2", "features.7.2"]),
}


def _check(name: str, rule: str, gen: torch.Generator) -> None:
    size, leaf, blocks = MODELS[name]
    model = real(name)
    images = torch.randn(2, 3, size, size, generator=gen, dtype=torch.float64)
    mirror = deconv.build_mirror(model, rule=rule)
    layers = [leaf, *blocks]
    assert set(layers) <= set(mirror.layer_names)
    selections = oracle.selections_at(model, images, layers, 1, gen)
    assert {s[1] for s in selections} == set(layers)
    logits = oracle.activation(model, images, "")
    k = int(logits[0].argmax())
    expected = oracle.project(model, images, selections, rule=rule)
    # a rectified signal can die out before the pixels (random weights): most, not all, reach them
    oracle.assert_matches(mirror.project_many(images, selections), expected, min_nonzero=0.6)
    classes = oracle.project(model, images, [(0, "out", k)], {"out": ""}, rule=rule)
    oracle.assert_matches(mirror.project(images[:1], target_class=k), classes, min_nonzero=1.0)


@pytest.mark.parametrize("name", MODELS)
def test_every_branching_torchvision_cnn_matches_the_oracle(name: str, gen: torch.Generator) -> None:
    _check(name, "deconvnet", gen)


@pytest.mark.parametrize("rule", ["guided", "gradient"])
@pytest.mark.parametrize(
    "name",
    [
        "resnet18",
        "densenet121",
        "googlenet",
        "squeezenet1_1",
        "shufflenet_v2_x0_5",
        "mobilenet_v3_small",
        "convnext_tiny",
    ],
)
def test_each_rule_on_branching_cnns(name: str, rule: str, gen: torch.Generator) -> None:
    _check(name, rule, gen)


def test_block_outputs_are_probe_points_named_as_the_model_names_them() -> None:
    mirror = deconv.build_mirror(real("resnet18"))
    names = mirror.layer_names
    assert (
        names.index("layer1.0.relu")
        < names.index("layer1.0.relu:1")
        < names.index("layer1.0")
        < names.index("layer1.1")
    )
    assert mirror.index("layer1.0") == mirror.index("layer1.0.relu:1")  # the block returns its second ReLU call
    assert mirror.blocks() == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    dense = deconv.build_mirror(real("densenet121"))
    assert dense.blocks() == [
        "features.denseblock1",
        "features.transition1",
        "features.denseblock2",
        "features.transition2",
        "features.denseblock3",
        "features.transition3",
        "features.denseblock4",
    ]
    assert "features.denseblock2.denselayer1" in dense.layer_names  # a nested block is a probe point too


def test_receptive_field_is_the_union_over_paths() -> None:
    """A ResNet block's field holds both its 3x3 convolutions' field and its shortcut's (a 1x1 conv)."""
    model = real("resnet18")
    mirror = deconv.build_mirror(model)
    shape = (3, 64, 64)
    block = mirror.describe(shape)[mirror.layer_names.index("layer2.0")].receptive_field
    main = mirror.describe(shape)[mirror.layer_names.index("layer2.0.bn2")].receptive_field
    short = mirror.describe(shape)[mirror.layer_names.index("layer2.0.downsample.1")].receptive_field
    assert block.size == main.size and block.offset == main.offset and short.size[0] < main.size[0]
    for y, x in [(0, 0), (3, 5), (7, 7)]:
        b, m, s = block.box(y, x), main.box(y, x), short.box(y, x)
        assert b.top == min(m.top, s.top) and b.bottom == max(m.bottom, s.bottom) and b.left == min(m.left, s.left)
    # the box holds everything the projection touches
    images = torch.randn(1, *shape, dtype=torch.float64)
    rec = mirror.project(images, layer="layer2.0", channel=3, position=(4, 5))
    box = mirror.receptive_field("layer2.0", 4, 5)
    nonzero = rec[0].abs().sum(0).nonzero()
    assert len(nonzero) and int(nonzero[:, 0].min()) >= max(box.top, 0) and int(nonzero[:, 0].max()) < box.bottom


def test_cropped_cone_projections_equal_the_dense_result(gen: torch.Generator) -> None:
    """Batched cone-restricted projections, cropped to their boxes, equal the whole-map projection cut there."""
    model = real("resnet18")
    mirror = deconv.build_mirror(model)
    images = torch.randn(3, 3, 48, 48, generator=gen, dtype=torch.float64)
    selections = oracle.selections_at(model, images, ["layer1.1", "layer2.0", "layer3.1"], 3, gen)
    whole = mirror.project_many(images, selections, memory_budget=2**20)  # many small chunks
    for where, crops in mirror.projections(images, selections, crop=True, memory_budget=2**20):
        for k, crop in zip(where.tolist(), crops):
            s = selections[k]
            box = mirror.receptive_field(s[1], s[3], s[4])
            padded = torch.nn.functional.pad(
                whole[k], (max(0, -box.left), max(0, box.right - 48), max(0, -box.top), max(0, box.bottom - 48))
            )
            top, left = box.top + max(0, -box.top), box.left + max(0, -box.left)
            assert torch.allclose(crop, padded[:, top : top + crop.shape[1], left : left + crop.shape[2]], atol=1e-12)


def test_reverse_passes_split_into_parts_give_the_same_projections(
    gen: torch.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Selections go on in parts where a step would write a tensor over the work size, or where their
    shared window would waste work: the projections are those of one pass over all of them."""
    model = real("resnet18")
    mirror = deconv.build_mirror(model)
    images = torch.randn(2, 3, 48, 48, generator=gen, dtype=torch.float64)
    selections = oracle.selections_at(model, images, ["layer1.1", "layer3.1", "fc"], 4, gen)
    selections += [(0, "layer2.0", 1, 0, 0), (1, "layer2.0", 2, 3, 3), (0, "layer2.0", 3, 5, 5)]  # a corner, the centre

    def everything() -> tuple[torch.Tensor, dict[int, torch.Tensor], torch.Tensor]:
        crops = {
            k: c for where, cs in mirror.projections(images, selections, crop=True) for k, c in zip(where.tolist(), cs)
        }
        maps = mirror.project(images, layer="layer2.0", channel=3, position="map")
        return mirror.project_many(images, selections), crops, maps

    parts: list[int] = []
    part = deconv.engine.reverse._part

    def counted(w: deconv.engine.reverse.Window, which: slice | torch.Tensor) -> deconv.engine.reverse.Window:
        got = part(w, which)
        parts.append(got.signal.shape[0])
        return got

    monkeypatch.setattr(deconv.engine.reverse, "_part", counted)
    monkeypatch.setattr(deconv.engine.reverse, "WASTE", float("inf"))
    together = everything()
    assert not parts  # small images, no waste allowed for: one pass each
    monkeypatch.setattr(deconv.engine.reverse, "WASTE", 1.0)  # any waste: groups by window area
    grouped = everything()
    assert parts  # the corner's and the centre's windows differ: they go on apart
    parts.clear()
    monkeypatch.setattr(deconv.engine.projector, "WORK_TENSOR_BYTES", 1)
    halves = everything()
    assert parts and min(parts) == 1  # down to one selection per part
    for other in (grouped, halves):
        torch.testing.assert_close(other[0], together[0], rtol=0, atol=1e-12)
        torch.testing.assert_close(other[2], together[2], rtol=0, atol=1e-12)
        assert other[1].keys() == together[1].keys()
        for k in together[1]:
            torch.testing.assert_close(other[1][k], together[1][k], rtol=0, atol=1e-12)
