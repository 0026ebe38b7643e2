"""VGG16 (configuration D) with torchvision's module layout, random weights, no downloads.

``features`` / ``avgpool`` / ``flatten`` / ``classifier`` as in ``torchvision.models.vgg16`` so that
module names (``features.29`` is the ReLU after conv5_3) are the same; the state_dict keys match too.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["VGG16", "vgg16", "PROBES"]

CFG_D = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]

# Paper-style name -> torchvision module name of the ReLU output.
PROBES = {"conv1_2": "features.3", "conv3_3": "features.15", "conv5_3": "features.29"}


class VGG16(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for v in CFG_D:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(4096, num_classes),
        )
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = self.flatten(x)
        return self.classifier(x)


def vgg16(seed: int = 0) -> VGG16:
    """Random-weight VGG16 in eval mode (torchvision's if importable is not used: no downloads, same layout)."""
    torch.manual_seed(seed)
    return VGG16().eval()
