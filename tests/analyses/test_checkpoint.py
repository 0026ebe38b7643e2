"""Resumable scans: state saved every N batches and on SIGINT/SIGTERM, resumed to exactly the same result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import deconv
from deconv.analyses.checkpoint import Checkpoint, Interrupted, fingerprint
from deconv.analyses.top9 import ScanState, scan
from deconv.commands.main import main
from deconv.data import Preprocess
from deconv.errors import StateError

ROOT = Path(__file__).parents[2]
LAYERS = ["1", "4"]


class Tensors(Dataset):
    """Random images; reading item ``signal_at`` sends this process ``signals`` (once)."""

    def __init__(self, n: int = 120, signal_at: int = -1, signals: tuple[int, ...] = ()) -> None:
        self.images = torch.randn(n, 1, 12, 12, generator=torch.Generator().manual_seed(5))
        self.signal_at, self.signals = signal_at, list(signals)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if i == self.signal_at:
            while self.signals:
                os.kill(os.getpid(), self.signals.pop(0))
        return self.images[i], 0


def _model() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3), nn.ReLU()).eval()


def _same(a: ScanState, b: ScanState) -> bool:
    return (
        a.tops.keys() == b.tops.keys()
        and all(
            torch.equal(x, y)
            for layer in a.tops
            for x, y in zip(a.tops[layer].state_dict().values(), b.tops[layer].state_dict().values())
        )
        and (a.position, a.images, a.skipped) == (b.position, b.images, b.skipped)
    )


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_the_state_and_resuming_gives_the_uninterrupted_result(tmp_path: Path, signum: int) -> None:
    mirror = deconv.build_mirror(_model())
    whole = scan(mirror, Tensors(), LAYERS, batch_size=10, progress=False)
    checkpoint = Checkpoint(tmp_path / "state.pt", {"run": 1}, every=0)
    with pytest.raises(Interrupted, match=signal.Signals(signum).name):
        with checkpoint:
            scan(
                mirror,
                Tensors(signal_at=45, signals=(signum,)),
                LAYERS,
                batch_size=10,
                checkpoint=checkpoint,
                progress=False,
            )
    assert signal.getsignal(signum) is not checkpoint._handle  # handlers restored
    state = checkpoint.load()
    assert state.position == 50  # saved after the batch that was running
    resumed = scan(mirror, Tensors(), LAYERS, batch_size=10, state=state, progress=False)
    assert _same(resumed, whole)


def test_a_second_signal_stops_at_once_and_keeps_the_last_save(tmp_path: Path) -> None:
    mirror = deconv.build_mirror(_model())
    checkpoint = Checkpoint(tmp_path / "state.pt", {"run": 1}, every=2)
    with pytest.raises(KeyboardInterrupt) as stopped:
        with checkpoint:
            scan(
                mirror,
                Tensors(signal_at=45, signals=(signal.SIGINT, signal.SIGINT)),
                LAYERS,
                batch_size=10,
                checkpoint=checkpoint,
                progress=False,
            )
    assert type(stopped.value) is KeyboardInterrupt
    assert checkpoint.load().position == 40
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temporary file left behind


def test_state_is_saved_every_n_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved = []
    checkpoint = Checkpoint(tmp_path / "state.pt", {}, every=3)
    monkeypatch.setattr(checkpoint, "save", lambda state: saved.append(state.position))
    scan(deconv.build_mirror(_model()), Tensors(), LAYERS, batch_size=10, checkpoint=checkpoint, progress=False)
    assert saved == [30, 60, 90, 120]


def test_a_signal_after_the_scan_stops_at_the_end_of_the_block(tmp_path: Path) -> None:
    checkpoint = Checkpoint(tmp_path / "state.pt", {})
    with pytest.raises(Interrupted):
        with checkpoint:
            os.kill(os.getpid(), signal.SIGTERM)
            checkpoint.save(ScanState({}))
    assert checkpoint.load().position == 0


def _fingerprint(**change: object) -> dict:
    model = change.pop("model", _model())
    dataset = change.pop("dataset", deconv.zoo.models.default_dataset())
    preprocess = change.pop("preprocess", Preprocess(channels=1))
    settings = {"layers": LAYERS, "top": 9, "limit": 100, "batch_size": 10, "processes": 1, "rank": 0, **change}
    return fingerprint(model, dataset, preprocess, **settings)  # type: ignore[arg-type]


def test_a_state_from_another_model_dataset_or_config_is_refused(tmp_path: Path) -> None:
    other_weights = _model()
    with torch.no_grad():
        other_weights[0].bias[0] += 1e-6
    other_data = deconv.zoo.models.default_dataset()
    other_data.images = other_data.images.copy()
    other_data.images[3, 4, 5] ^= 1
    path = tmp_path / "state.pt"
    Checkpoint(path, _fingerprint()).save(ScanState({}))
    assert Checkpoint(path, _fingerprint()).load().position == 0
    for key, change in [
        ("model", {"model": other_weights}),
        ("dataset", {"dataset": other_data}),
        ("preprocess", {"preprocess": Preprocess(channels=1, mean=(0.5,))}),
        ("layers", {"layers": ["1"]}),
        ("top", {"top": 5}),
        ("limit", {"limit": 99}),
        ("batch_size", {"batch_size": 20}),  # it decides the shards of a distributed scan
        ("processes", {"processes": 2}),
    ]:
        with pytest.raises(StateError, match=f"its {key} differs") as refused:
            Checkpoint(path, _fingerprint(**change)).load()
        assert str(path) in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize("content", [b"", b"garbage", b"PK\x03\x04broken zip"])
def test_a_damaged_or_missing_state_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "state.pt"
    with pytest.raises(StateError, match="no saved scan state"):
        Checkpoint(path, {}).load()
    path.write_bytes(content)
    with pytest.raises(StateError, match="damaged scan state"):
        Checkpoint(path, {}).load()


def _deconv(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "deconv", "top9", *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _outputs(out: Path) -> dict[str, bytes]:
    files = ["top9.json", "skipped.json"] + [f"sheets/{p.name}" for p in sorted((out / "sheets").glob("*.png"))]
    return {name: (out / name).read_bytes() for name in files}


@pytest.fixture(scope="module")
def model_spec(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("model") / "small.py"
    path.write_text(
        "import torch\nfrom torch import nn\n\ndef make():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Conv2d(1, 8, 5, 2, 2), nn.ReLU(), nn.MaxPool2d(3, 2, 1), "
        "nn.Conv2d(8, 12, 3), nn.ReLU())\n"
    )
    return f"{path}:make"


def test_cli_scan_killed_part_way_resumes_to_the_uninterrupted_result(tmp_path: Path, model_spec: str) -> None:
    args = [
        "--model",
        model_spec,
        "--limit",
        "2000",
        "--layers",
        "1",
        "4",
        "--batch-size",
        "8",
        "--save-every",
        "1",
        "--no-progress",
    ]
    out = tmp_path / "killed"
    running = _deconv(*args, "--out", str(out))
    deadline = time.monotonic() + 60
    saved = out / ".deconv-partial" / "state" / "rank0.pt"  # a run writes into its partial folder until it succeeds
    while not saved.exists() and running.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    running.send_signal(signal.SIGINT)
    _, err = running.communicate(timeout=120)
    assert running.returncode == 130, err
    assert err.strip().splitlines() == [
        f"deconv top9: interrupted by SIGINT: scan state saved to {saved}; continue with --resume"
    ]
    assert 0 < torch.load(saved, weights_only=True)["state"]["position"] < 2000
    assert not (out / "top9.json").exists()

    # the unfinished run is neither overwritten by accident nor mixed with other settings
    assert main(["top9", *args, "--out", str(out)]) == 2
    assert main(["top9", *args, "--out", str(out), "--resume", "--top", "5"]) == 2

    resumed = _deconv(*args, "--out", str(out), "--resume")
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert main(["top9", *args, "--out", str(tmp_path / "whole")]) == 0
    assert _outputs(out) == _outputs(tmp_path / "whole")
    assert json.loads((out / "top9.json").read_text())


def test_cli_refusals_name_the_state_and_the_difference(
    tmp_path: Path, model_spec: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "--model",
        model_spec,
        "--limit",
        "20",
        "--layers",
        "1",
        "--batch-size",
        "10",
        "--no-progress",
        "--out",
        str(tmp_path),
    ]
    assert main(["top9", *args, "--resume"]) == 2
    assert "no saved scan state to resume" in capsys.readouterr().err
    assert main(["top9", *args]) == 0
    capsys.readouterr()
    assert main(["top9", *args, "--resume", "--limit", "30"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rank0.pt was saved by another run: its limit differs (saved: 20; now: 30)" in err
    assert main(["top9", *args, "--resume"]) == 0  # a finished scan resumes to its outputs again
