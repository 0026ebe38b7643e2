"""VGG16's convolution stack (conv1_1 .. conv5_3 and the pools between blocks) in torchvision's layout.

``features.N`` are the same modules as in ``torchvision.models.vgg16().features`` (``features.29`` is
the ReLU after conv5_3), without the last pool and the classifier. The pools use ``ceil_mode=True``,
as Caffe's (and HED's) do. No torchvision needed. Weights: ``scripts/port_hed_vgg16.py``.
"""

from __future__ import annotations

from torch import nn

BLOCKS = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


class VGG16Features(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for v in BLOCKS:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(channels, v, 3, padding=1), nn.ReLU(inplace=True)]
                channels = v
        self.features = nn.Sequential(*layers)

    def forward(self, x):  # (N, 3, H, W) BGR, 0..255 minus the mean -> (N, 512, H/16, W/16)
        return self.features(x)


def vgg16_features() -> VGG16Features:
    return VGG16Features()
