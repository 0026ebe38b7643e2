"""``deconv layers``: the probe-able layers with output shapes and receptive fields."""

from __future__ import annotations

import torch

from ..mirror import build_mirror
from . import command
from .common import Data, Model, dataset_from, model_from, preprocess_from
from .config import Settings, with_options


@with_options()
class LayersSettings(Settings):
    """The model, and the data whose first image sets the shapes."""

    model: Model
    data: Data


@command("layers", "list the probe-able layers with output shapes and receptive fields", LayersSettings)
def run(settings: LayersSettings) -> int:
    model = model_from(settings.model)
    dataset = dataset_from(settings.data, preprocess_from(settings.data, model, settings.model.embedded))
    image, _ = dataset[0]
    mirror = build_mirror(model, shape=tuple(torch.as_tensor(image).shape))
    rows = [("layer", "type", "mirror", "output", "receptive field (size / stride / offset)")]
    for info in mirror.describe(tuple(torch.as_tensor(image).shape)):
        field = info.receptive_field
        rf = (
            "whole image"
            if field is None
            else (f"{field.size[0]}x{field.size[1]} / {field.stride[0]} / {field.offset[0]},{field.offset[1]}")
        )
        rows.append((info.name, info.kind, info.mirror, "x".join(map(str, info.shape)), rf))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0
