"""timm's and Hugging Face's CNNs (issue 20): each is exact under every rule against the oracle, or refused in
one line naming the module; never accepted and wrong.

The models and the check are scripts/model_matrix.py's (which writes docs/models.md for all of them): random
weights and batch-norm statistics, float64, projections at a middle block, the deepest block and the class
output under the deconvnet, guided and gradient rules, each within 1e-9 of the oracle relative to its own
largest value: every model of the matrix, a few minutes on one thread.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import oracle
import pytest
import timm.layers
import torch
from timm.layers.pool2d_same import MaxPool2dSame
from torch import nn

import deconv

_path = Path(__file__).resolve().parents[2] / "scripts" / "model_matrix.py"
_spec = importlib.util.spec_from_file_location("model_matrix", _path)
matrix = importlib.util.module_from_spec(_spec)
sys.modules["model_matrix"] = matrix  # dataclasses look their module up by name
_spec.loader.exec_module(matrix)

ENTRIES = {entry.name: entry for entry in matrix.MODELS}


@pytest.mark.parametrize("name", ENTRIES)
def test_a_timm_or_hugging_face_cnn_is_exact_and_attention_is_refused_by_name(name: str) -> None:
    """Every CNN of the matrix is exact (those whose forward branches on the images' shape, traced for it, too;
    cs3darknet_s's in-place SiLUs and dm_nfnet_f0's ``out.mul_(gain)`` were once wrong); a model of attention
    over tokens is refused in one line naming the module."""
    entry = ENTRIES[name]
    result = matrix.check(entry)
    assert result.kind == ("refused" if name in matrix.ATTENTION else "exact"), result.text
    if result.kind == "refused":
        model = matrix.build(entry)
        names = [f"'{n}'" for n, _ in model.named_modules() if n] + [f"{type(model).__name__}.forward"]
        assert any(n in result.text for n in names), f"the refusal names no module: {result.text}"


def _chain(layer: nn.Module) -> nn.Module:
    """The issue's repros with timm's own layers: a convolution, the layer, a ReLU, a convolution, a ReLU."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), layer, nn.ReLU(), nn.Conv2d(6, 4, 3), nn.ReLU()).double()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=gen)
                module.bias.normal_(0.0, 0.5, generator=gen)
                module.running_mean.normal_(0.0, 0.5, generator=gen)
                module.running_var.uniform_(0.5, 2.0, generator=gen)
    return model.eval()


LAYERS = {
    "BatchNormAct2d (ReLU)": lambda: timm.layers.BatchNormAct2d(6, act_layer=nn.ReLU),
    "BatchNormAct2d (LeakyReLU)": lambda: timm.layers.BatchNormAct2d(6, act_layer=nn.LeakyReLU),
    "Conv2dSame": lambda: timm.layers.Conv2dSame(6, 6, 3, stride=2),
    "MaxPool2dSame": lambda: MaxPool2dSame(3, stride=2),
    "StdConv2d": lambda: timm.layers.StdConv2d(6, 6, 3),
    "ScaledStdConv2d": lambda: timm.layers.ScaledStdConv2d(6, 6, 3),
}


@pytest.mark.parametrize("name", LAYERS)
def test_timms_subclasses_of_torch_layers_are_exact(name: str, gen: torch.Generator) -> None:
    """Each was once mirrored as its base class, without a word: wrong by 0.42 to 1.5 relative. The "same" ones
    pad by the images' shape: traced for it, they are exact."""
    model = _chain(LAYERS[name]())
    images = torch.randn(2, 3, 13, 13, generator=gen, dtype=torch.float64)  # odd sizes: "same" pads unevenly
    mirror = deconv.build_mirror(model, shape=(3, 13, 13))
    modules = dict(model.named_modules())
    layers = [n for n in mirror.layer_names if n in modules and n]
    assert {"1", "2", "4"} <= set(layers), layers
    selections = oracle.selections_at(model, images, layers, 3, gen)
    for rule in matrix.RULES:
        expected = oracle.project(model, images, selections, rule=rule)
        oracle.assert_matches(mirror.project_many(images, selections, rule=rule), expected, rtol=matrix.RTOL)
