"""Tests for deconv.zoo.train: a tiny training run on synthetic idx files."""

from __future__ import annotations

import gzip
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import deconv.zoo.train as train_module
from deconv.zoo.models import ZFNet28, load_model
from deconv.zoo.train import Training, main, train


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes()))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """512 train and 64 test images: class k is a bright horizontal band at row 2k."""
    root = tmp_path_factory.mktemp("fashion")
    rng = np.random.default_rng(0)
    for split, n in (("train", 512), ("t10k", 64)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, 4 + 2 * label : 6 + 2 * label, 4:24] = 250
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


def test_tiny_run_writes_checkpoints_atomically(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replaced: list[tuple[Path, Path]] = []
    real_replace = os.replace

    def recording_replace(src: str, dst: str | Path) -> None:
        assert not Path(dst).exists(), f"{dst} written twice"
        replaced.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", recording_replace)
    out = tmp_path / "run"
    metrics = train(
        Training(out, epochs=2, batch_size=64, data_dir=data_dir, checkpoint_epochs=(1,), threads=1, progress=False)
    )

    assert sorted(p.name for p in out.iterdir()) == ["epoch1.pt", "epoch2.pt", "final.pt", "metrics.json"]
    assert [dst.name for _, dst in replaced] == ["epoch1.pt", "epoch2.pt", "final.pt", "metrics.json"]
    for src, dst in replaced:
        assert src.parent == dst.parent and src.name != dst.name and not src.exists()

    saved = json.loads((out / "metrics.json").read_text())
    assert saved == metrics
    assert saved["torch_version"] == torch.__version__ and saved["train_images"] == 512
    assert [e["epoch"] for e in saved["per_epoch"]] == [1, 2]
    assert all(0 <= e["test_accuracy"] <= 1 and e["seconds"] > 0 for e in saved["per_epoch"])
    assert saved["final_test_accuracy"] == saved["per_epoch"][-1]["test_accuracy"]

    final = torch.load(out / "final.pt", weights_only=True)
    assert final.keys() == ZFNet28().state_dict().keys()
    assert all(v.dtype == torch.float32 for v in final.values())
    assert not torch.equal(
        torch.load(out / "epoch1.pt", weights_only=True)["features.0.weight"], final["features.0.weight"]
    )
    model = load_model(None, out / "epoch2.pt")
    assert torch.equal(model.features[0].weight, final["features.0.weight"])


def test_failed_save_leaves_no_partial_file(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_save(obj: object, file) -> None:
        file.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(train_module.torch, "save", failing_save)
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    with pytest.raises(OSError, match="disk full"):
        train(
            Training(out, epochs=1, batch_size=128, data_dir=data_dir, limit=128, threads=threads + 1, progress=False)
        )
    assert list(out.iterdir()) == []
    assert torch.get_num_threads() == threads


def test_deterministic_given_seed(tmp_path: Path, data_dir: Path) -> None:
    runs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        train(
            Training(
                tmp_path / name,
                epochs=1,
                batch_size=64,
                seed=seed,
                data_dir=data_dir,
                limit=128,
                threads=1,
                progress=False,
            )
        )
        runs.append(torch.load(tmp_path / name / "final.pt", weights_only=True))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not torch.equal(runs[0]["features.0.weight"], runs[2]["features.0.weight"])


def test_main_command_line(tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "1",
        "--data-dir",
        str(data_dir),
        "--limit",
        "64",
        "--threads",
        "1",
    ]
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train_images"] == 64 and metrics["epochs"] == 1

    assert main(["--out", str(tmp_path / "bad"), "--epochs", "1", "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "train-images-idx3-ubyte.gz" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "x"), "--checkpoint-epochs", "one"])


def test_a_log_gets_one_line_per_epoch(tmp_path: Path, data_dir: Path, capsys) -> None:
    """With progress on and standard error a log (not a terminal), each epoch reports once: its record."""
    train(Training(tmp_path / "run", epochs=2, batch_size=64, data_dir=data_dir, limit=128, threads=1, progress=True))
    lines = capsys.readouterr().err.splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2], lines
