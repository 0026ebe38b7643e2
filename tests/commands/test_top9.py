"""The Fig. 2 job's pipeline: sheets stream one at a time, only chosen channels are projected, the
summary gives each phase's time and each progress bar is printed once. (Sizes, speed and memory of a
real job are measured in benchmarks/fig2_job.py, not here.)"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deconv.commands import run_folder, top9
from deconv.commands.distributed import Group
from deconv.commands.main import main
from deconv.progress import Clock

ROOT = Path(__file__).parents[2]
CONFIG = str(ROOT / "configs" / "default.toml")
SMALL = ["top9", "--config", CONFIG, "--limit", "120", "--no-progress"]


def test_each_sheet_is_projected_drawn_and_freed_before_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, set[int]]] = []
    project_top, figure2_sheet = top9.project_top, top9.figure2_sheet

    def projecting(mirror, dataset, records, **kw):
        events.append(("project", {r.channel for r in records}))
        return project_top(mirror, dataset, records, **kw)

    def drawing(tiles, title):
        tiles = list(tiles)
        assert all(
            t.projection.dtype == torch.uint8 and t.patch.dtype == torch.uint8 for t in tiles
        )  # display tiles only
        events.append(("draw", {t.record.channel for t in tiles}))
        return figure2_sheet(tiles, title)

    monkeypatch.setattr(top9, "project_top", projecting)
    monkeypatch.setattr(top9, "figure2_sheet", drawing)
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
    flags = [
        "--layers",
        "features.1",
        "features.11",
        "--channels",
        "features.11=0-3,40",
        "features.1=7",
        "--out",
        str(out),
    ]
    assert main([*SMALL, *flags]) == 0
    assert set(projected) == {("features.11", c) for c in (0, 1, 2, 3, 40)} | {("features.1", 7)}
    records = json.loads((out / "top9.json").read_text())
    assert {(r["layer"], r["channel"]) for r in records} == set(projected)
    assert sorted(p.name for p in (out / "sheets").iterdir()) == ["features.1-1.png", "features.11-1.png"]
    assert len(list((out / "thumbs" / "features.11").iterdir())) == 5


def test_bottom_records_below_zero_are_projected_for_the_chosen_channels_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """features.0 (a convolution) goes below zero: its chosen channels' bottom records are projected, each with
    its own negative value, and drawn on sheets of their own; features.1 (its ReLU) never does: none of it."""
    projected: list[tuple[str, int, float]] = []
    project_top = top9.project_top

    def projecting(mirror, dataset, records, **kw):
        projected.extend((r.layer, r.channel, r.value) for r in records)
        return project_top(mirror, dataset, records, **kw)

    monkeypatch.setattr(top9, "project_top", projecting)
    out = tmp_path / "run"
    flags = ["--layers", "features.0", "features.1", "--channels", "features.0=3,9", "--out", str(out)]
    assert main([*SMALL, *flags]) == 0
    from deconv.census import Census

    census = Census.load(out)
    negative = [(r.layer, r.channel, r.value) for c in (3, 9) for r in census.bottom("features.0", c)]
    assert len(negative) == 18 and all(value < 0 for _, _, value in negative)
    assert sorted(v for v in projected if v[2] < 0) == sorted(negative)  # each with its own value, none other
    assert all(census.unit("features.1", c).rectified for c in range(32))
    assert {(layer, c) for layer, c, _ in projected} == {("features.0", 3), ("features.0", 9)} | {
        ("features.1", c) for c in range(32)
    }
    sheets = json.loads((out / "sheets.json").read_text())
    assert [(e["sheet"], e["which"]) for e in sheets] == [
        ("sheets/features.0-1.png", "top"),
        ("sheets/features.0-1.bottom.png", "bottom"),
        ("sheets/features.1-1.png", "top"),
    ]
    assert [p["channel"] for p in sheets[1]["panels"]] == [3, 9]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("features.11=0-x", "expected channel numbers and ranges like 0-63,100, got '0-x'"),
        ("features.11=5-2", "got '5-2'"),
        ("features.11=64", "layer 'features.11' has 64 channels (0-63), got channel 64"),
        ("features.4=1", "layer 'features.4' is not scanned"),
        ("features.11", "--channels: expected KEY=VALUE, got 'features.11'"),
    ],
)
def test_bad_channel_choices_are_one_line_errors(tmp_path: Path, capsys, spec: str, message: str) -> None:
    assert main([*SMALL, "--layers", "features.11", "--channels", spec, "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error


def test_summary_times_each_phase_and_each_progress_bar_prints_once(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [
        "top9",
        "--config",
        CONFIG,
        "--limit",
        "120",
        "--layers",
        "features.1",
        "features.4",
        "--out",
        str(tmp_path / "run"),
        "--progress",
    ]
    done = subprocess.run([sys.executable, "-m", "deconv", *args], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("time: ")]
    phases = re.findall(r"([a-z][a-z0-9. ]*?) ([0-9.]+) s", line[len("time: ") :])
    names = ["setup", "scan", "projections features.1", "projections features.4", "rendering", "report", "total"]
    assert [name for name, _ in phases] == names
    bars = [x.split(":")[0] for x in done.stderr.splitlines() if x.strip()]
    assert bars == ["scan", "project features.1", "project features.4"], done.stderr  # one line each, in a log
    assert "120/120 img" in done.stderr


def test_each_progress_bar_ends_as_one_line_on_a_terminal(tmp_path: Path) -> None:
    """On a terminal (tqdm redrawing its bar with carriage returns) each bar is one line: every state drawn
    is one of the run's own bars, and each leaves exactly one line, in order."""
    import fcntl
    import pty
    import struct
    import termios

    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 40 rows of 120 columns
    args = [
        *SMALL[:-1],
        "--layers",
        "features.1",
        "features.4",
        "--rules",
        "deconvnet",
        "guided",
        "--progress",
        "--out",
        str(tmp_path / "run"),
    ]
    child = subprocess.Popen(
        [sys.executable, "-m", "deconv", *args],
        stdout=subprocess.PIPE,
        stderr=secondary,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    os.close(secondary)
    drawn = b""
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:  # the terminal closed with the child
            break
        if not data:
            break
        drawn += data
    os.close(primary)
    assert child.wait(timeout=600) == 0, drawn
    lines = [line for line in drawn.decode().replace("\r\n", "\n").split("\n") if line.strip()]
    states = [state.split(":")[0] for line in lines for state in line.split("\r") if state.strip()]
    bars = ["scan", "project features.1", "project features.4"]
    assert set(states) == set(bars), lines
    assert [line.split("\r")[-1].split(":")[0] for line in lines] == bars, lines
    assert "120/120" in lines[0] and all(line.split("\r")[-1].count("100%") == 1 for line in lines), lines


class FakeTime:
    """A clock that moves only when the test says that work was done."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class OnDevice:
    """A projected chunk whose projections a device is still computing: the first read of them calls
    ``wait`` (as reading a CUDA result waits for it); otherwise the chunk itself."""

    def __init__(self, chunk, wait) -> None:
        self.chunk, self.wait = chunk, wait

    @property
    def projections(self) -> torch.Tensor:
        self.wait, wait = (lambda: None), self.wait
        wait()
        return self.chunk.projections

    def __getattr__(self, name: str):
        return getattr(self.chunk, name)

    def cpu(self):
        return dataclasses.replace(self.chunk, projections=self.projections).cpu()


def test_each_phase_gets_the_time_of_what_it_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Fake work of a known length at each step (the clock moves only there) lands in its own phase of the
    summary, and the phases add up to the total: projecting a layer (computing, waiting for the device,
    gathering the processes' tiles), rendering (display tiles, sheets), the report."""
    fake = FakeTime()
    spent: collections.Counter[str] = collections.Counter()

    def cost(phase: str, seconds: float) -> None:
        fake.now += seconds
        spent[phase] += seconds

    def costing(phase: str, seconds: float, fn):
        return lambda *args, **kw: (cost(phase, seconds), fn(*args, **kw))[1]

    def projecting(mirror, dataset, records, **kw):
        for chunk in project_top(mirror, dataset, records, **kw):
            phase, n = f"projections {chunk.records[0].layer}", len(chunk.records)
            cost(phase, 10 * n)  # computing
            yield OnDevice(chunk, lambda: cost(phase, 5 * n))  # and what the device still has to do

    def gathering(group, tiles):
        cost(f"projections {next(iter(tiles.values()))[0].record.layer}", 50)  # waiting for the other processes
        return gather(group, tiles)

    project_top, gather = top9.project_top, Group.gather
    monkeypatch.setattr(top9, "Clock", lambda: Clock(fake))
    monkeypatch.setattr(top9, "_rehearse", costing("setup", 7, top9._rehearse))
    monkeypatch.setattr(top9, "_scan", costing("scan", 1000, top9._scan))
    monkeypatch.setattr(top9, "project_top", projecting)
    monkeypatch.setattr(Group, "gather", gathering)
    monkeypatch.setattr(top9, "display_tiles", costing("rendering", 1, top9.display_tiles))
    monkeypatch.setattr(top9, "save_png", costing("rendering", 100, top9.save_png))
    monkeypatch.setattr(run_folder, "write_report", costing("report", 3000, run_folder.write_report))
    out = tmp_path / "run"
    assert main([*SMALL, "--layers", "features.1", "features.4", "--per-sheet", "40", "--out", str(out)]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("time: ")]
    phases = {name: float(s) for name, s in re.findall(r"([a-z][a-z0-9. ]*?) ([0-9.]+) s", line[len("time: ") :])}
    assert list(phases) == [
        "setup",
        "scan",
        "projections features.1",
        "projections features.4",
        "rendering",
        "report",
        "total",
    ]
    assert set(spent) == set(phases) - {"total"}
    assert {p: phases[p] for p in spent} == pytest.approx(dict(spent), abs=0.05), line  # printed to 0.1 s
    assert phases["total"] == pytest.approx(sum(spent.values()), abs=0.05)


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
