"""torchvision's real VGG and AlexNet (random weights, no downloads) against the oracle at every layer.

The models are torchvision's own classes, forward passes and feature stacks. To keep a float64 run
quick they are built on the meta device and their classifier's hidden widths cut from 4096 to 32
(same layers, same order); ``test_vgg11_as_shipped`` runs one model with nothing changed.
"""

from __future__ import annotations

import oracle
import pytest
import torch
import torchvision
from torch import nn

import deconv

TAPS = {"flatten": "<classifier"}  # the torch.flatten(x, 1) in torchvision's forward


def real(builder, num_classes: int = 10, hidden: int | None = 32) -> nn.Module:
    """``builder(weights=None)`` made on the meta device (no slow initialisation of 4096-wide layers),
    its classifier's hidden widths set to ``hidden`` (``None``: as shipped), then given random float64
    weights and, for batch norms, random statistics."""
    with torch.device("meta"):
        model = builder(weights=None)
        if hidden is not None:
            linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
            width = linears[0].in_features
            for i, module in enumerate(model.classifier):
                if isinstance(module, nn.Linear):
                    out = num_classes if module is linears[-1] else hidden
                    model.classifier[i] = nn.Linear(width, out)
                    width = out
    return materialized(model)


def materialized(model: nn.Module) -> nn.Module:
    """A model made on the meta device, in float64 on the CPU with random weights and, for batch
    norms, random statistics (layer and group norms, and a model's own parameters, random too); in eval mode."""
    model = model.to(torch.float64).to_empty(device="cpu")
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.reset_parameters()
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=gen)
                module.bias.normal_(0.0, 0.5, generator=gen)
                module.running_mean.normal_(0.0, 0.5, generator=gen)
                module.running_var.uniform_(0.5, 2.0, generator=gen)
                module.num_batches_tracked.zero_()
            elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
                module.weight.uniform_(0.5, 1.5, generator=gen)
                module.bias.normal_(0.0, 0.5, generator=gen)
            elif not hasattr(module, "reset_parameters"):  # a model's own parameters (ConvNeXt's layer scale)
                for parameter in module.parameters(recurse=False):
                    parameter.uniform_(0.5, 1.5, generator=gen)
    return model.eval()


# name: (builder, image size, images, random selections per layer besides the largest)
MODELS = {
    "vgg11": (torchvision.models.vgg11, 32, 1, 1),
    "vgg11_bn": (torchvision.models.vgg11_bn, 32, 1, 1),
    "vgg16": (torchvision.models.vgg16, 32, 1, 0),
    "vgg16_bn": (torchvision.models.vgg16_bn, 32, 1, 0),
    "alexnet": (torchvision.models.alexnet, 64, 2, 2),
}


def expected_names(model: nn.Module) -> list[str]:
    features = [f"features.{i}" for i in range(len(model.features))]
    return (
        features
        + ["features", "avgpool", "flatten"]
        + [f"classifier.{i}" for i in range(len(model.classifier))]
        + ["classifier"]
    )


@pytest.mark.parametrize("name", MODELS)
def test_every_layer_of_a_torchvision_model(name: str, gen: torch.Generator) -> None:
    builder, size, count, per_layer = MODELS[name]
    model = real(builder)
    images = torch.randn(count, 3, size, size, generator=gen, dtype=torch.float64)
    mirror = deconv.build_mirror(model)
    assert mirror.layer_names == expected_names(model)
    selections = oracle.selections_at(model, images, mirror.layer_names, per_layer, gen, TAPS)
    assert {s[1] for s in selections} == set(mirror.layer_names)
    logits = oracle.activation(model, images, "")
    k = int(logits[0].argmax())
    selections += [(i, "classifier.6", k) for i in range(count)]  # and the class projection below
    expected = oracle.project(model, images, selections, TAPS)
    oracle.assert_matches(mirror.project_many(images, selections), expected, min_nonzero=0.9)
    oracle.assert_matches(mirror.project(images, target_class=k), expected[-count:], min_nonzero=1.0)


def test_vgg11_as_shipped(gen: torch.Generator) -> None:
    """torchvision.models.vgg11(weights=None) at full size: 1000 classes, 4096-wide classifier."""
    model = real(torchvision.models.vgg11, hidden=None)
    assert model.classifier[3].weight.shape == (4096, 4096) and model.classifier[6].out_features == 1000
    images = torch.randn(1, 3, 32, 32, generator=gen, dtype=torch.float64)
    mirror = deconv.build_mirror(model)
    assert mirror.layer_names == expected_names(model)
    found = oracle.activations(model, images, {"classifier.4": "classifier.4", "logits": ""})
    selections = [
        (0, "features.3", 5, 4, 9),
        (0, "features.18", 7, 1, 0),
        (0, "classifier.4", int(found["classifier.4"][0].argmax())),
        (0, "classifier.6", int(found["logits"][0].argmax())),
    ]
    oracle.assert_matches(
        mirror.project_many(images, selections), oracle.project(model, images, selections), min_nonzero=0.75
    )
