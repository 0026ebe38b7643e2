"""The receptive field, by hand: descend, boxes, receptive_field and patches on a small chain."""

import torch
from torch import nn

import deconv
from deconv.engine.field import ReceptiveField, boxes, descend, patches, receptive_field
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
