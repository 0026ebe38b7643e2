"""Distributed top-9 scans: torchrun with 2 gloo processes gives exactly the single-process outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deconv.analyses.checkpoint import Checkpoint
from deconv.analyses.top9 import ScanState, TopK
from deconv.commands.distributed import Group
from deconv.commands.main import main
from deconv.errors import StateError
from deconv.zoo.models import default_dataset

ROOT = Path(__file__).parents[2]
MODEL = """
import torch
from torch import nn


def make():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 5, 2, 2), nn.ReLU(), nn.MaxPool2d(3, 2, 1), nn.Conv2d(8, 12, 3, 1, 1), nn.ReLU(),
        nn.Flatten(), nn.Linear(12 * 7 * 7, 10),
    )
"""


def torchrun(*args: str, processes: int = 2) -> subprocess.Popen:
    """``torchrun --nproc_per_node processes -m deconv top9 args`` on this machine (gloo)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(processes),
        "-m",
        "deconv",
        "top9",
        *args,
    ]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("model") / "tiny.py"
    path.write_text(MODEL)
    return f"{path}:make"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 Fashion-MNIST images as PNG files in two class folders, plus an unreadable and a truncated one."""
    root = tmp_path_factory.mktemp("images")
    images = default_dataset().images
    for i in range(300):
        path = root / ("bags" if i % 3 else "boots") / f"{i:04d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(images[i]).save(path)
    (root / "bags" / "0100.png").write_bytes((root / "bags" / "0100.png").read_bytes()[:60])  # truncated
    (root / "boots" / "notes.jpg").write_text("not an image")
    return root


def outputs(out: Path) -> dict[str, bytes]:
    files = ["top9.json", "skipped.json"] + [f"sheets/{p.name}" for p in sorted((out / "sheets").glob("*.png"))]
    return {name: (out / name).read_bytes() for name in files}


def test_two_gloo_processes_write_exactly_the_single_process_outputs(
    tmp_path: Path, model_file: str, folder: Path
) -> None:
    args = [
        "--model",
        model_file,
        "--data",
        str(folder),
        "--layers",
        "1",
        "4",
        "6",
        "--batch-size",
        "16",
        "--per-sheet",
        "5",
        "--no-progress",
    ]
    code, out, err = finish(torchrun(*args, "--out", str(tmp_path / "two")))
    assert code == 0, err
    assert "on 2 processes" in out and out.count("scanned") == 1  # only rank 0 reports
    assert main(["top9", *args, "--out", str(tmp_path / "one")]) == 0
    one, two = outputs(tmp_path / "one"), outputs(tmp_path / "two")
    assert len(one) > 5 and one.keys() == two.keys()
    for name in one:
        assert one[name] == two[name], name  # byte-identical, PNG sheets included
    skipped = json.loads(one["skipped.json"])
    assert [Path(s["path"]).name for s in skipped] == ["0100.png", "notes.jpg"]
    assert sorted(p.name for p in (tmp_path / "two" / "state").iterdir()) == ["rank0.pt", "rank1.pt"]


def test_interrupted_distributed_scan_resumes_per_rank_to_the_same_result(tmp_path: Path, model_file: str) -> None:
    args = [
        "--model",
        model_file,
        "--limit",
        "3000",
        "--layers",
        "1",
        "4",
        "6",
        "--batch-size",
        "8",
        "--save-every",
        "1",
        "--no-progress",
    ]
    two = ("--out", str(tmp_path / "two"))
    states = [tmp_path / "two" / ".deconv-partial" / "state" / f"rank{r}.pt" for r in (0, 1)]
    running = torchrun(*args, *two)
    deadline = time.monotonic() + 120
    while not all(s.exists() for s in states) and running.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    running.send_signal(signal.SIGTERM)  # torchrun forwards it to both processes
    code, _, err = finish(running)
    assert code != 0 and err.count("scan state saved to") == 2, err
    positions = [torch.load(s, weights_only=True)["state"]["position"] for s in states]
    assert all(0 < p < 1500 for p in positions), positions  # stopped part-way through each shard

    code, _, err = finish(torchrun(*args, *two, "--resume"))
    assert code == 0, err
    assert main(["top9", *args, "--out", str(tmp_path / "one")]) == 0
    assert outputs(tmp_path / "one") == outputs(tmp_path / "two")


def test_a_state_from_another_process_count_is_refused(tmp_path: Path) -> None:
    saved = Checkpoint(tmp_path / "rank0.pt", {"processes": 2, "rank": 0})
    saved.save(ScanState({}))
    with pytest.raises(StateError, match="processes differs"):
        Checkpoint(tmp_path / "rank0.pt", {"processes": 1, "rank": 0}).load()


@pytest.mark.parametrize("size", [1, 2, 3, 5])
@pytest.mark.parametrize("items", [0, 1, 7, 16, 50])
def test_shards_are_whole_batches_that_cover_every_item_once(size: int, items: int) -> None:
    batch = 4
    shards = [Group(rank, size).shard(range(items), batch) for rank in range(size)]
    assert sorted(i for s in shards for i in s) == list(range(items))
    whole = [list(range(items))[i : i + batch] for i in range(0, items, batch)]
    for rank, shard in enumerate(shards):
        assert [shard[i : i + batch] for i in range(0, len(shard), batch)] == whole[rank::size]


def test_merged_scan_state_equals_one_scan_with_empty_and_skipping_shards() -> None:
    def state(values: list[float], index: list[int], skipped: list[tuple[int, str, str]]) -> ScanState:
        top = TopK(2, k=3)
        v = torch.tensor([values, [-x for x in values]])
        zeros = torch.zeros_like(v, dtype=torch.long)
        top.update(v, torch.tensor(index), zeros, zeros)
        return ScanState({"a": top}, len(index) + len(skipped), len(index), skipped)

    whole = state([1.0, 5.0, 5.0, 2.0], [0, 1, 3, 4], [(2, "c", "bad")])
    merged = ScanState({})
    for part in (ScanState({}), state([5.0, 2.0], [3, 4], [(2, "c", "bad")]), state([1.0, 5.0], [0, 1], [])):
        merged.merge(part)
    assert merged.skipped == whole.skipped and merged.images == whole.images and merged.position == whole.position
    for a, b in zip(whole.tops["a"].state_dict().values(), merged.tops["a"].state_dict().values()):
        assert torch.equal(a, b)
    assert np.array_equal(merged.tops["a"].index[0].numpy(), [1, 3, 4])
