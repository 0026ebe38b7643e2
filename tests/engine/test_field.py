"""The receptive field, by hand: descend, boxes, receptive_field and patches on a small chain; through channels-last
maps (ConvNeXt); on a timm ConvNeXt against the oracle."""

import oracle
import pytest
import timm
import torch
from torch import nn

import deconv
from deconv.engine.field import ReceptiveField, boxes, cones, descend, patches, receptive_field
from deconv.layers.base import Geometry


def test_descend_gives_the_input_window_an_output_window_reads() -> None:
    geometry = Geometry(kernel=(3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2))
    origin, size = descend(geometry, torch.tensor([[0, 0], [2, 3]]), (2, 3))
    # rows: o*2 - 1 + t, t < 3, for o in {0, 1}: -1..3 -> (2-1)*2 + 3 = 5
    # cols: o - 0 + 2t, t < 2, for o in {0, 1, 2}: 0..4 -> (3-1)*1 + 3 = 5
    assert origin.tolist() == [[-1, 0], [3, 3]] and size == (5, 5)
    assert descend(Geometry(), torch.tensor([[4, 5]]), (2, 1))[0].tolist() == [[4, 5]]


def test_receptive_field_and_boxes_of_a_strided_chain_by_hand() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1)).eval()
    graph = deconv.build_mirror(model).graph
    # conv 1: output y reads rows 2y-1..2y+1; conv 2 (3x3, pad 1) reads y-1..y+1 of that: rows 2y-3..2y+3
    assert receptive_field(graph, 0) == ReceptiveField((3, 3), (2, 2), (-1, -1))
    assert receptive_field(graph, 2) == ReceptiveField((7, 7), (2, 2), (-3, -3))
    origin, size = boxes(graph, 2, torch.tensor([[0, 0], [2, 1]]), (8, 8))
    assert origin.tolist() == [[-3, -3], [1, -1]] and size == (7, 7)


def test_patches_cut_each_image_to_its_box_zero_outside() -> None:
    model = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1)).eval()
    graph = deconv.build_mirror(model).graph
    images = torch.arange(2 * 16.0).view(2, 1, 4, 4)
    pixels, inside = patches(graph, 0, images, torch.tensor([[0, 0], [3, 3]]))
    assert pixels.shape == (2, 1, 3, 3) and inside[0, 0].tolist() == [
        [False] * 3,
        [False, True, True],
        [False, True, True],
    ]
    assert pixels[1, 0].tolist() == [[26.0, 27.0, 0.0], [30.0, 31.0, 0.0], [0.0, 0.0, 0.0]]
    whole, everywhere = patches(graph, 0, images, None)
    assert whole is images and bool(everywhere.all())


class ChannelsLastMlp(nn.Module):
    """ConvNeXt's MLP in small: a depthwise conv, then permute -> LayerNorm -> Linear -> GELU -> Linear ->
    permute, a layer scale, and the shortcut."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw, self.norm = nn.Conv2d(c, c, 3, padding=1, groups=c), nn.LayerNorm(c)
        self.fc1, self.act, self.fc2 = nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc2(self.act(self.fc1(self.norm(self.dw(x).permute(0, 2, 3, 1))))).permute(0, 3, 1, 2)
        return x + y * self.gamma.view(1, -1, 1, 1)


def test_a_channels_last_linear_and_layer_norm_act_per_position_by_hand() -> None:
    """Each 3x3 depthwise conv widens the field by 2; the permutes, the norm over the channels and the Linears keep
    it. Positions are the image's rows and columns whatever the layout: rows and columns swapped and swapped back
    keep the field; a conv on the swapped map, or a norm over a whole row, makes it the whole image."""
    conv = nn.Conv2d(2, 4, 3, padding=1)
    model = nn.Sequential(conv, ChannelsLastMlp(4), ChannelsLastMlp(4)).eval()
    mirror = deconv.build_mirror(model)
    assert mirror.receptive_field("2", 5, 6, (2, 16, 16)) == (5 - 3, 6 - 3, 5 + 4, 6 + 4)
    found = cones(mirror.graph, mirror.index("2"), torch.tensor([[5, 6]]), (1, 1))
    assert found[mirror.index("0")] is None  # the reverse pass goes on in whole maps below a permute (the plan's)
    back = nn.Sequential(conv, Permuted((0, 1, 3, 2), nn.GELU(), back=(0, 1, 3, 2)), nn.Conv2d(4, 4, 1)).eval()
    assert receptive_field(deconv.build_mirror(back).graph, 3) == ReceptiveField((3, 3), (1, 1), (-1, -1))
    swapped = nn.Sequential(conv, Permuted((0, 1, 3, 2)), nn.Conv2d(4, 4, (3, 1))).eval()
    row = nn.Sequential(conv, Permuted((0, 2, 3, 1), nn.LayerNorm([16, 4]), back=(0, 3, 1, 2))).eval()
    for other in (swapped, row):
        graph = deconv.build_mirror(other).graph
        assert receptive_field(graph, len(graph.nodes) - 1) is None


class Permuted(nn.Module):
    """permute -> layer -> permute ``back``, if given."""

    def __init__(self, dims: tuple[int, ...], layer: nn.Module | None = None, back: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.dims, self.layer, self.back = dims, layer or nn.Identity(), back

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer(x.permute(*self.dims))
        return x.permute(*self.back) if self.back else x


@pytest.mark.parametrize("conv_mlp", [True, False], ids=["LayerNorm2d and ConvMlp", "permuted LayerNorm and Linear"])
def test_a_timm_convnext_stage_1_unit_has_a_local_receptive_field_zero_outside(conv_mlp: bool) -> None:
    """timm's convnext_atto (its MLP as 1x1 convs, or as Linears on channels-last maps): a stages.1 unit sees a box
    smaller than the image; under every rule its projection equals the oracle's and is zero outside the box, and the
    cropped projection is the box."""
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=10, conv_mlp=conv_mlp).double().eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("gamma") or (parameter.dim() == 1 and "norm" in name):  # layer scales start at 1e-6
                parameter.normal_(0.5, 0.5, generator=gen)
    images = torch.randn(1, 3, 192, 192, generator=gen, dtype=torch.float64)
    mirror = deconv.build_mirror(model)
    box = mirror.receptive_field("stages.1", 10, 10, (3, 192, 192))
    assert 0 < box.top and 0 < box.left and box.bottom < 192 and box.right < 192, box
    outside = torch.ones(192, 192, dtype=torch.bool)
    outside[box.top : box.bottom, box.left : box.right] = False
    selections = [(0, "stages.1", c, 10, 10) for c in (0, 7)]
    for rule in ("deconvnet", "guided", "gradient"):
        expected = oracle.project(model, images, selections, rule=rule)
        actual = mirror.project_many(images, selections, rule=rule)
        oracle.assert_matches(actual, expected, min_nonzero=1.0)
        assert not expected[..., outside].any() and not actual[..., outside].any()
        assert expected[..., ~outside].abs().amax() > 0
        for where, cropped in mirror.projections(images, selections, crop=True, rule=rule):
            assert cropped.shape[-2:] == (box.bottom - box.top, box.right - box.left)
            inside = actual[where][..., box.top : box.bottom, box.left : box.right]
            torch.testing.assert_close(cropped, inside, rtol=0, atol=0)
