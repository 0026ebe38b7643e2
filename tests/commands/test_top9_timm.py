"""``deconv top9`` on a timm model named in a config (``model = "timm:create_model"``), end to end: the sheets,
``top9.json`` and the report are named by the model's blocks. A ConvNeXt built small, six 32x32 photos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from deconv.commands.main import main

BLOCKS = [f"stages.{i}.blocks.{j}" for i in range(4) for j in range(2)]


def test_top9_on_a_timm_convnext_draws_its_blocks(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for n in range(6):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(photos / f"{n}.png")
    config = tmp_path / "timm.toml"
    config.write_text(
        'model = "timm:create_model"\n'
        'model_args = { model_name = "convnext_tiny", depths = [2, 2, 2, 2], dims = [8, 8, 8, 8], num_classes = 5 }\n'
        f'data = "{photos}"\n'
        "mean = [0.485, 0.456, 0.406]\n"
        "std = [0.229, 0.224, 0.225]\n"
        "batch_size = 6\n"
        "tile_px = 32\n"
    )
    out = tmp_path / "run"
    assert main(["top9", "--config", str(config), "--out", str(out), "--no-progress"]) == 0
    records = json.loads((out / "top9.json").read_text())
    assert list(dict.fromkeys(r["layer"] for r in records)) == BLOCKS  # the blocks, in forward order
    assert {(r["layer"], r["channel"]) for r in records} == {(b, c) for b in BLOCKS for c in range(8)}
    # ConvNeXt's block outputs go below zero (no ReLU after them): each block's bottom entries get a sheet too
    drawn = sorted(p.name for p in (out / "sheets").iterdir())
    assert drawn == sorted([f"{b}-1.png" for b in BLOCKS] + [f"{b}-1.bottom.png" for b in BLOCKS])
    assert all((out / "units" / b / "7.html").is_file() and (out / "layers" / f"{b}.html").is_file() for b in BLOCKS)
    report = (out / "index.html").read_text()
    assert all(b in report for b in BLOCKS) and "stem.1" not in report and "downsample" not in report
