"""``deconv layers``: the probe-able layers with output shapes and receptive fields."""

from __future__ import annotations

from typing import Any

import torch

from ..mirror import build_mirror
from . import command
from .common import DATA, MODEL, dataset_from, model_from, preprocess_from


@command("layers", "list the probe-able layers with output shapes and receptive fields", MODEL + DATA)
def run(settings: dict[str, Any]) -> int:
    model = model_from(settings)
    dataset = dataset_from(settings, preprocess_from(settings, model))
    image, _ = dataset[0]
    mirror = build_mirror(model)
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
