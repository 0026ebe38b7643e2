"""Distributed top-9 scans: torchrun with 2 gloo processes gives exactly the single-process outputs."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
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
from deconv.census import Census
from deconv.commands.distributed import Group, dumps
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


ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def torchrun_command(*args: str, processes: int = 2) -> list[str]:
    """``torchrun --standalone --nproc_per_node processes -m deconv top9 args`` on this machine (gloo)."""
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    return [*run, "-m", "deconv", "top9", *args]


def torchrun(*args: str, processes: int = 2) -> subprocess.Popen:
    """:func:`torchrun_command` started, its output piped."""
    command = torchrun_command(*args, processes=processes)
    return subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


def descendants(pid: int) -> list[int]:
    """The processes ``pid`` started, and theirs (torchrun starts its ranks in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    found = children.get(pid, [])
    for child in found:  # grows while it is walked
        found += children.get(child, [])
    return found


def rss_kb(pid: int) -> int:
    """``pid``'s resident memory in kB now (0 once it is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def peak_rss(command: list[str], log: Path, limit_kb: int) -> tuple[int | None, int]:
    """Runs ``command`` (its output to ``log``) and returns its exit code and the peak resident memory in kB
    of the process or any process it started (``wait4``'s ``ru_maxrss``). Once any of them holds more than
    ``limit_kb``, all are killed and the exit code is ``None``: a run that explodes fails in seconds."""
    with log.open("w") as output:
        process = subprocess.Popen(command, env=ENV, stdout=output, stderr=subprocess.STDOUT)
    killed = False
    while not (done := os.wait4(process.pid, os.WNOHANG))[0]:
        running = [process.pid, *descendants(process.pid)]
        if not killed and max(map(rss_kb, running)) > limit_kb:
            for pid in reversed(running):  # the ranks first: torchrun would restart nothing, but orphans live on
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            killed = True
        time.sleep(0.1)
    process.returncode = os.waitstatus_to_exitcode(done[1])  # reaped here, not by Popen
    return None if killed else process.returncode, done[2].ru_maxrss


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
    assert_same_census(tmp_path / "one", tmp_path / "two")
    assert Census.load(tmp_path / "one").classes == ["bags", "boots"]


def assert_same_census(one: Path, two: Path) -> None:
    """The censuses of two runs hold the same records and counts exactly, and the same sums to rounding."""
    a, b = Census.load(one), Census.load(two)
    assert a.layers == b.layers and a.images == b.images and a.classes == b.classes
    assert a.records("top") == b.records("top") and a.records("bottom") == b.records("bottom")
    for layer in a.layers:
        x, y = a.state.tallies[layer].state_dict(), b.state.tallies[layer].state_dict()
        for name in ("active", "class_images", "class_active", "class_max", "hits"):
            assert torch.equal(x[name], y[name]), (layer, name)
        for name in ("sum", "squares", "class_sum"):
            assert torch.allclose(x[name], y[name], rtol=1e-12, atol=0), (layer, name)
        for p, q in zip(a.distribution(layer), b.distribution(layer)):  # quantiles and histograms: the same sketch
            assert torch.equal(p, q), layer


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
    assert_same_census(tmp_path / "one", tmp_path / "two")  # resumed per rank: nothing counted twice or lost


def test_a_two_process_default_job_needs_no_more_memory_per_process_than_one(tmp_path: Path) -> None:
    """The default job (10k images, 5 layers, 7 sheets of up to 576 tiles): rank 0 gathers each sheet's
    tiles, once grown to 23 GB because every tile was pickled with its whole batch (issue 22)."""
    args = ["--config", str(ROOT / "configs" / "default.toml"), "--no-progress"]
    alone = [sys.executable, "-m", "deconv", "top9", *args, "--out", str(tmp_path / "one")]
    code, single = peak_rss(alone, tmp_path / "one.log", limit_kb=2**40)
    assert code == 0, (tmp_path / "one.log").read_text()
    limit = int(1.5 * single)
    code, peak = peak_rss(torchrun_command(*args, "--out", str(tmp_path / "two")), tmp_path / "two.log", limit)
    log = (tmp_path / "two.log").read_text()
    assert code is not None, f"a process of the 2-rank run held over 1.5x the single process's {single >> 10} MB"
    assert code == 0, log
    assert peak <= limit, f"peak {peak >> 10} MB per process on 2 ranks, {single >> 10} MB alone"
    assert outputs(tmp_path / "one") == outputs(tmp_path / "two")  # top9.json, skipped.json and the sheets


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


def test_views_are_pickled_with_their_own_elements_only() -> None:
    batch = torch.arange(576 * 3 * 32 * 32).to(torch.uint8).reshape(576, 3, 32, 32)  # one sheet's tiles, as views
    tiles = {"tiles": list(batch), "rows": batch[:, :, 2:5], "parameter": torch.nn.Parameter(torch.ones(2))}
    assert len(dumps(tiles)) < 2 * batch.nbytes  # torch's pickle: 577 batches
    back = pickle.loads(dumps(tiles))
    assert all(torch.equal(a, b) for a, b in zip(back["tiles"], tiles["tiles"]))
    assert torch.equal(back["rows"], tiles["rows"]) and back["parameter"].requires_grad
