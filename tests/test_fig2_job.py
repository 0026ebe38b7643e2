"""The Fig. 2 job's pipeline: sheets stream one at a time, only chosen channels are projected, the
summary gives each phase's time and each progress bar is printed once. (Sizes, speed and memory of a
real job are measured in benchmarks/fig2_job.py, not here.)"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deconv.cli import main
from deconv.commands import top9

ROOT = Path(__file__).parents[1]
CONFIG = str(ROOT / "configs" / "default.toml")
SMALL = ["top9", "--config", CONFIG, "--limit", "120", "--no-progress"]


def test_each_sheet_is_projected_drawn_and_freed_before_the_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[tuple[str, set[int]]] = []
    project_top, figure2 = top9.project_top, top9.figure2

    def projecting(mirror, dataset, records, **kw):
        events.append(("project", {r.channel for r in records}))
        return project_top(mirror, dataset, records, **kw)

    def drawing(tiles, title):
        tiles = list(tiles)
        assert all(t.projection.dtype == torch.uint8 and t.patch.dtype == torch.uint8 for t in tiles)  # display tiles only
        events.append(("draw", {t.record.channel for t in tiles}))
        return figure2(tiles, title)

    monkeypatch.setattr(top9, "project_top", projecting)
    monkeypatch.setattr(top9, "figure2", drawing)
    out = tmp_path / "run"
    assert main([*SMALL, "--layers", "features.4", "--per-sheet", "20", "--out", str(out)]) == 0
    # 64 channels, 20 a sheet: four sheets, each drawn right after its own channels were projected
    assert [kind for kind, _ in events] == ["project", "draw"] * 4
    chunks = [set(range(s, min(s + 20, 64))) for s in range(0, 64, 20)]
    assert [channels for _, channels in events] == [c for c in chunks for _ in range(2)]
    assert sorted(p.name for p in (out / "sheets").iterdir()) == [f"features.4-{n}.png" for n in range(1, 5)]


def test_channels_selects_what_is_projected_and_drawn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    projected: list[tuple[str, int]] = []
    project_top = top9.project_top

    def projecting(mirror, dataset, records, **kw):
        projected.extend((r.layer, r.channel) for r in records)
        return project_top(mirror, dataset, records, **kw)

    monkeypatch.setattr(top9, "project_top", projecting)
    out = tmp_path / "run"
    flags = ["--layers", "features.1", "features.11", "--channels", "features.11=0-3,40", "features.1=7", "--out", str(out)]
    assert main([*SMALL, *flags]) == 0
    assert set(projected) == {("features.11", c) for c in (0, 1, 2, 3, 40)} | {("features.1", 7)}
    records = json.loads((out / "top9.json").read_text())
    assert {(r["layer"], r["channel"]) for r in records} == set(projected)
    assert sorted(p.name for p in (out / "sheets").iterdir()) == ["features.1-1.png", "features.11-1.png"]
    assert len(list((out / "thumbs" / "features.11").iterdir())) == 5


@pytest.mark.parametrize("spec, message", [
    ("features.11=0-x", "expected channel numbers and ranges like 0-63,100, got '0-x'"),
    ("features.11=5-2", "got '5-2'"),
    ("features.11=64", "layer 'features.11' has 64 channels (0-63), got channel 64"),
    ("features.4=1", "layer 'features.4' is not scanned"),
    ("features.11", "--channels: expected KEY=VALUE, got 'features.11'"),
])
def test_bad_channel_choices_are_one_line_errors(tmp_path: Path, capsys, spec: str, message: str) -> None:
    assert main([*SMALL, "--layers", "features.11", "--channels", spec, "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error


def test_summary_times_each_phase_and_each_progress_bar_prints_once(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = ["top9", "--config", CONFIG, "--limit", "120", "--layers", "features.1", "features.4", "--out", str(tmp_path / "run"), "--progress"]
    done = subprocess.run([sys.executable, "-m", "deconv", *args], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("time: ")]
    phases = re.findall(r"([a-z][a-z0-9. ]*?) ([0-9.]+) s", line[len("time: "):])
    assert [name for name, _ in phases] == ["scan", "projections features.1", "rendering", "projections features.4", "report"]
    bars = [x.split(":")[0] for x in done.stderr.splitlines() if x.strip()]
    assert bars == ["scan", "project features.1", "project features.4"], done.stderr  # one line each, in a log
    assert "120/120 img" in done.stderr


def test_full_resolution_projections_are_written_only_on_request(tmp_path: Path) -> None:
    import numpy as np

    import deconv
    from deconv.mirror import Selection

    flags = ["--layers", "features.11", "--channels", "features.11=3-4"]
    assert main([*SMALL, *flags, "--out", str(tmp_path / "none")]) == 0
    assert not (tmp_path / "none" / "projections").exists()
    assert main([*SMALL, *flags, "--save-projections", "png", "--out", str(tmp_path / "png")]) == 0
    assert len(list((tmp_path / "png" / "projections" / "features.11").glob("*.png"))) == 2 * 9
    out = tmp_path / "npy"
    assert main([*SMALL, *flags, "--save-projections", "npy", "--out", str(out)]) == 0
    records = json.loads((out / "top9.json").read_text())
    assert sorted(p.name for p in (out / "projections" / "features.11").iterdir()) == sorted(
        f"{r['channel']}-{r['rank']}.npy" for r in records
    )
    r = records[-1]  # the last one, against its own projection cut to its receptive field
    images = torch.stack([deconv.default_dataset()[r["index"]][0]])
    mirror = deconv.build_mirror(deconv.default_model())
    ((_, expected),) = mirror.projections(images, [Selection(0, r["layer"], r["channel"], r["y"], r["x"])], crop=True)
    saved = np.load(out / "projections" / "features.11" / f"{r['channel']}-{r['rank']}.npy")
    torch.testing.assert_close(torch.from_numpy(saved), expected[0])
