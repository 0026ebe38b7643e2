"""The command line end to end: `deconv` and `python -m deconv` on the embedded default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import deconv
from deconv.commands.main import main

ROOT = Path(__file__).parents[2]
CONFIG = str(ROOT / "configs" / "default.toml")


def run_module(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "deconv", *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    image, _ = deconv.default_dataset()[0]
    path = tmp_path_factory.mktemp("img") / "boot.png"
    pixels = ((image[0] * 0.3530242 + 0.2860406).clamp(0, 1) * 255).round().byte().numpy()
    Image.fromarray(pixels, "L").save(path)
    return path


def test_layers_lists_shapes_and_receptive_fields(capsys) -> None:
    assert main(["layers", "--config", CONFIG]) == 0
    out = capsys.readouterr().out
    assert "features.0" in out and "32x14x14" in out and "7x7 / 2 / -3,-3" in out
    assert "classifier.6" in out and "whole image" in out


def test_top9_small_run_writes_sheets_and_records(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [
        "top9",
        "--config",
        CONFIG,
        "--limit",
        "300",
        "--layers",
        "features.1",
        "features.11",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0
    records = json.loads((out / "top9.json").read_text())
    assert len(records) == (32 + 64) * 9
    assert set(records[0]) == {"layer", "channel", "rank", "index", "path", "y", "x", "value", "rule"}
    assert {r["rule"] for r in records} == {"deconvnet"}
    assert sorted({r["rank"] for r in records}) == list(range(9))
    assert all(0 <= r["index"] < 300 for r in records)
    for layer in ("features.1", "features.11"):
        sheet = Image.open(out / "sheets" / f"{layer}-1.png")
        assert sheet.width > 500 and sheet.height > 300
    resolved = (out / "config.toml").read_text()
    assert "limit = 300" in resolved
    # a second run into the same folder is refused without --overwrite, and nothing is lost
    before = (out / "top9.json").read_bytes()
    assert main(args) == 2
    assert (out / "top9.json").read_bytes() == before


def test_project_writes_one_png_per_call(tmp_path: Path, image_file: Path) -> None:
    assert (
        main(
            [
                "project",
                "--config",
                CONFIG,
                "--image",
                str(image_file),
                "--layer",
                "features.4",
                "--channel",
                "3",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "project",
                "--config",
                CONFIG,
                "--image",
                str(image_file),
                "--layer",
                "features.4",
                "--channel",
                "3",
                "--position",
                "2,4",
                "--out",
                str(tmp_path / "p"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "project",
                "--config",
                CONFIG,
                "--image",
                str(image_file),
                "--target-class",
                "9",
                "--out",
                str(tmp_path / "c"),
            ]
        )
        == 0
    )
    for folder in (tmp_path, tmp_path / "p", tmp_path / "c"):
        (png,) = folder.glob("*.png")
        image = Image.open(png)
        assert image.width >= 2 * 256 and image.height >= 256


def test_python_m_deconv_is_the_same_command(image_file: Path) -> None:
    done = run_module("layers", "--config", CONFIG)
    assert done.returncode == 0, done.stderr
    assert "features.11" in done.stdout
    bad = run_module(
        "project", "--config", CONFIG, "--image", str(image_file), "--layer", "features.99", "--channel", "0"
    )
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    assert "unknown layer 'features.99'" in bad.stderr and "features.11" in bad.stderr
