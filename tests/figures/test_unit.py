"""A census drawn for a notebook: a unit's picture and Fig. 2 sheets of chosen channels (deconv/figures/unit.py)."""

from __future__ import annotations

import base64
import io

import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import TensorDataset

import deconv
from deconv.errors import SelectionError


def _model() -> nn.Module:
    torch.manual_seed(5)
    conv = nn.Conv2d(1, 4, 3, 1, 1)
    dead = nn.Conv2d(4, 3, 3, 1, 1)
    with torch.no_grad():
        dead.bias[1] = -1e6  # channel 1 of layer '3' never fires
    return nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2), dead, nn.ReLU()).double().eval()


@pytest.fixture(scope="module")
def census() -> deconv.Census:
    g = torch.Generator().manual_seed(6)
    images = torch.randn(40, 1, 12, 12, generator=g, dtype=torch.float64)
    labels = torch.arange(40) % 3
    return deconv.census(_model(), TensorDataset(images, labels), layers=["0", "1", "4"], k=4, progress=False)


def test_a_unit_draws_its_bottom_entries_only_where_something_takes_it_below_zero(census: deconv.Census) -> None:
    before, after = census.unit("0", 2), census.unit("1", 2)  # the same channel before and after its ReLU
    assert not before.rectified and after.rectified
    drawn, rectified = before.figure(), after.figure()
    assert drawn.width > 300 and drawn.height > rectified.height + 4 * 40  # a second panel of 4 projections


def test_a_unit_shows_inline_as_html_with_its_picture(census: deconv.Census) -> None:
    unit = census.unit("0", 1)
    html = unit._repr_html_()
    assert html.startswith('<img alt="Unit 0 channel 1: active in')
    picture = Image.open(io.BytesIO(base64.b64decode(html.split("base64,")[1].split('"')[0])))
    assert picture.size == unit.figure().size


def test_the_census_table_counts_the_units_that_never_fire(census: deconv.Census) -> None:
    assert "<td>4</td><td>3</td><td>1</td>" in census._repr_html_()  # layer '4': 3 channels, channel 1 dead
    assert "<td>0</td><td>4</td><td>0</td>" in census._repr_html_()


def test_a_sheet_draws_a_panel_per_chosen_channel_under_each_rule(census: deconv.Census) -> None:
    one, two = census.sheet("1", channels=[0]), census.sheet("1", channels=[0, 3])
    both = census.sheet("1", channels=[0, 3], rules=["deconvnet", "guided"])
    assert two.height == one.height and two.width > one.width  # panels side by side
    assert both.width > two.width  # a projection grid per rule beside the patches


def test_drawing_projections_needs_the_mirror_and_dataset(census: deconv.Census, tmp_path) -> None:
    census.save(tmp_path)
    loaded = deconv.Census.load(tmp_path)
    with pytest.raises(SelectionError, match=r"Census.load\(run_dir, mirror=\.\.\., dataset=\.\.\.\)"):
        loaded.sheet("1", channels=[0])
    assert loaded.unit("0", 2).figure().width > 300  # its numbers still draw: statistics, histogram, classes
    with pytest.raises(SelectionError, match="no channels of layer '1'"):
        census.sheet("1", channels=[])
    with pytest.raises(SelectionError, match=r"layer '1' has 4 channels \(0-3\), got channel 4"):
        census.sheet("1", channels=[4])
