"""Trust and safety (issue 11): checkpoints are data, a user's files and earlier runs are never lost,
no hangs, and every refusal is one line with exit status 2."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

import deconv
from deconv.cli import main
from deconv.errors import CheckpointError
from deconv.models import ZFNet28, load_model

ROOT = Path(__file__).parents[1]
CONFIG = str(ROOT / "configs" / "default.toml")
SMALL = ["--config", CONFIG, "--limit", "40", "--batch-size", "20", "--layers", "features.4", "--no-progress"]


class Evil:
    """Unpickling this creates ``marker``: stands for any code a hostile checkpoint could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def one_line_error(capsys: pytest.CaptureFixture, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"deconv {command}: error: "), err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    image, _ = deconv.default_dataset()[0]
    path = tmp_path_factory.mktemp("img") / "boot.png"
    pixels = ((image[0] * 0.3530242 + 0.2860406).clamp(0, 1) * 255).round().byte().numpy()
    Image.fromarray(pixels, "L").save(path)
    return path


# ------------------------------------------------------------------------------ 1. checkpoints are data


@pytest.fixture
def evil(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": Evil(marker)}, path)
    return path, marker


def test_load_model_never_runs_a_checkpoints_code(evil: tuple[Path, Path]) -> None:
    path, marker = evil
    for spec in (None, "deconv.models:ZFNet28"):
        with pytest.raises(CheckpointError, match=r"evil\.pt: a whole pickled object \(needs posix\.system\).*--trust-checkpoint") as info:
            load_model(spec, path)
        assert "\n" not in str(info.value)
        assert not marker.exists()


@pytest.mark.parametrize("flags", [
    ["project", "--target-class", "1", "--checkpoint", "{evil}"],
    ["project", "--target-class", "1", "--model", "deconv.models:ZFNet28", "--checkpoint", "{evil}"],
    ["evolution", "--limit", "20", "--checkpoints", "{evil}"],
    ["top9", "--limit", "20", "--checkpoint", "{evil}"],
])
def test_the_cli_refuses_a_checkpoint_that_would_run_code_before_running_it(
    tmp_path: Path, evil: tuple[Path, Path], image_file: Path, capsys: pytest.CaptureFixture, flags: list[str]
) -> None:
    path, marker = evil
    args = [f.format(evil=path) for f in flags] + ["--config", CONFIG, "--out", str(tmp_path / "out"), "--no-progress"]
    if flags[0] == "project":
        args += ["--image", str(image_file)]
    assert main(args) == 2
    assert "--trust-checkpoint" in one_line_error(capsys, flags[0])
    assert not marker.exists()


def test_a_whole_model_loads_only_when_trusted(tmp_path: Path, image_file: Path, capsys: pytest.CaptureFixture) -> None:
    model = ZFNet28()
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        load_model(None, tmp_path / "whole.pt")
    assert isinstance(load_model(None, tmp_path / "whole.pt", trust_checkpoint=True), ZFNet28)
    args = ["project", "--config", CONFIG, "--image", str(image_file), "--target-class", "1",
            "--checkpoint", str(tmp_path / "whole.pt"), "--out", str(tmp_path / "out")]
    assert main(args) == 2
    one_line_error(capsys, "project")
    assert main([*args, "--trust-checkpoint"]) == 0
    (tmp_path / "trust.toml").write_text(Path(CONFIG).read_text() + "trust_checkpoint = true\n")
    assert main([*args, "--config", str(tmp_path / "trust.toml"), "--out", str(tmp_path / "out2")]) == 0
