"""Bad input on the command line: exit status 2, one line naming the thing, no traceback, nothing lost.

Every case runs ``python -m deconv`` in a subprocess (a few at a time) into its own copy of a
previous run's output folder, which must come out untouched.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import deconv
from deconv.analyses.top9 import scan
from deconv.commands.main import main
from deconv.errors import NonFiniteError

ROOT = Path(__file__).parents[2]
MODELS = '''
import torch
from torch import nn


def small():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3), nn.ReLU())


def overflows_on_white():
    """Activations overflow to inf where the image is white (4 pixels x 3e38)."""
    conv = nn.Conv2d(1, 1, 2, bias=False)
    nn.init.constant_(conv.weight, 3e38)
    return nn.Sequential(conv, nn.ReLU())
'''
PREVIOUS = {
    "top9.json": b'[{"old": 1}]\n',
    "config.toml": b"top = 3\n",
    "skipped.json": b"[]\n",
    "sheets/features.1-1.png": b"old png",
}
PREVIOUS["deconv-run.json"] = json.dumps(
    {"deconv": "0.1.0", "commands": ["top9"], "files": dict.fromkeys(PREVIOUS, "top9")}
).encode()
Files = SimpleNamespace


def _png(path: Path, value: int = 128, size: int = 10) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


def _files(root: Path) -> Files:
    """Everything the cases point at: models, checkpoints, datasets, configs."""
    (root / "models.py").write_text(MODELS)
    (root / "imports_badly.py").write_text("import no_such_package_for_deconv\n")
    models: dict = {}
    exec(MODELS, models)
    unfit = models["small"]().state_dict()
    del unfit["0.bias"]
    unfit["extra.weight"] = torch.zeros(1)
    unfit["3.weight"] = torch.zeros(6, 4, 5, 5)
    torch.save(unfit, root / "unfit.pt")
    (root / "garbage.pt").write_bytes(b"\x80\x04 not a checkpoint")
    images = root / "images"
    for i in range(6):
        _png(images / f"{i}.png", value=255 if i == 2 else 0)
    (images / "3.png").write_bytes((images / "3.png").read_bytes()[:40])  # truncated
    (images / "notes.png").write_text("not an image")
    (root / "empty").mkdir()
    (root / "empty" / "readme.txt").write_text("no images here")
    (root / "bad-header-idx3-ubyte").write_bytes(b"\x00\x00\x07\x03" + b"\x00" * 12)
    (root / "empty-idx3-ubyte.gz").write_bytes(
        gzip.compress(b"\x00\x00\x08\x03" + bytes(4) + (28).to_bytes(4, "big") * 2)
    )
    (root / "unknown.toml").write_text("top = 9\n\nbatchsize = 8\n")
    (root / "wrong.toml").write_text('top = 9\nper_sheet = "many"\n')
    (root / "invalid.toml").write_text("top = 9\nper_sheet = = 4\nlayers = []\n")
    (root / "a-file").write_text("x")
    return Files(root=root, small=f"{root / 'models.py'}:small", images=images)


def _top9(*args: str) -> list[str]:
    return ["top9", "--layers", "1", "--limit", "50", "--batch-size", "4", "--no-progress", *args]


SMALL = ("--model", "{small}", "--data", "{images}", "--crop", "8")
CASES: dict[str, tuple[list[str], list[str]]] = {
    # name: (arguments, words the one-line message must hold); "{x}" is a file of _files
    "unreadable image with --strict": (_top9(*SMALL, "--strict"), ["3.png", "cannot read image"]),
    "dataset folder missing": (_top9(*SMALL[:2], "--data", "{root}/nowhere"), ["nowhere", "no such file or folder"]),
    "dataset folder without images": (_top9(*SMALL[:2], "--data", "{root}/empty"), ["empty", "no images found"]),
    "idx file with a bad header": (
        _top9(*SMALL[:2], "--data", "{root}/bad-header-idx3-ubyte"),
        ["bad-header-idx3-ubyte", "dtype code 0x07"],
    ),
    "checkpoint that does not fit": (
        _top9(*SMALL, "--checkpoint", "{root}/unfit.pt"),
        ["unfit.pt", "missing keys: 0.bias", "unexpected keys: extra.weight", "mis-shaped keys: 3.weight"],
    ),
    "model module that does not exist": (
        _top9("--model", "no_such_module_for_deconv:make"),
        ["no_such_module_for_deconv", "ModuleNotFoundError"],
    ),
    "model file whose import fails": (
        _top9("--model", "{root}/imports_badly.py:make"),
        ["imports_badly", "no_such_package_for_deconv"],
    ),
    "config with an unknown key": (
        _top9(*SMALL, "--config", "{root}/unknown.toml"),
        ["unknown.toml, line 3", "unknown key 'batchsize'"],
    ),
    "config with a wrong type": (
        _top9(*SMALL, "--config", "{root}/wrong.toml"),
        ["wrong.toml, line 2", "'per_sheet'", "an integer"],
    ),
    "config that is not TOML": (
        _top9(*SMALL, "--config", "{root}/invalid.toml"),
        ["invalid.toml", "invalid TOML", "line 2"],
    ),
    "layer that does not exist": (_top9(*SMALL, "--layers", "9"), ["unknown layer '9'", "valid layers"]),
    "channel that does not exist": (
        ["project", "--model", "{small}", "--image", "{images}/0.png", "--layer", "1", "--channel", "4"],
        ["channel 4", "layer '1'", "0..3"],
    ),
    "position that does not exist": (
        [
            "project",
            "--model",
            "{small}",
            "--image",
            "{images}/0.png",
            "--layer",
            "1",
            "--channel",
            "0",
            "--position",
            "8,0",
        ],
        ["position (8, 0)", "layer '1'"],
    ),
    "NaN or inf activations": (
        _top9("--model", "{root}/models.py:overflows_on_white", "--data", "{images}", "--layers", "0"),
        ["layer '0'", "dataset image 2", "2.png"],
    ),
}


def _fill(args: list[str], files: Files) -> list[str]:
    return [a.format(**vars(files)) for a in args]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "deconv", *args], capture_output=True, text=True, env=env, timeout=300)


def _previous(out: Path) -> Path:
    for name, content in PREVIOUS.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(content)
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    return _files(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def results(
    files: Files, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """Every case's run, a few at a time: the bad inputs into a copy of a previous run with ``--overwrite``,
    then a run with unreadable images and one into a previous run without ``--overwrite``."""
    runs = {
        name: (args + ["--overwrite"], _previous(tmp_path_factory.mktemp("out"))) for name, (args, _) in CASES.items()
    }
    runs["skipping"] = (_top9(*SMALL), files.root / "skipping")
    runs["another run"] = (_top9(*SMALL), _previous(tmp_path_factory.mktemp("out")))
    with ThreadPoolExecutor(3) as pool:
        done = pool.map(_run, [_fill(args, files) + ["--out", str(out)] for args, out in runs.values()])
    return {name: (result, out) for (name, (_, out)), result in zip(runs.items(), done)}


def _assert_refused(result: subprocess.CompletedProcess, words: list[str], command: str = "top9") -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"deconv {command}: error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def _untouched(out: Path) -> None:
    for name, content in PREVIOUS.items():
        assert (out / name).read_bytes() == content, name
    assert sorted(p.name for p in out.iterdir() if p.name != ".deconv-lock") == [
        "config.toml",
        "deconv-run.json",
        "sheets",
        "skipped.json",
        "top9.json",
    ]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_naming_it_and_nothing_is_lost(case: str, results: dict, files: Files) -> None:
    args, words = CASES[case]
    result, out = results[case]
    _assert_refused(result, [w.format(**vars(files)) for w in words], args[0])
    _untouched(out)


def test_unreadable_images_are_skipped_counted_and_listed(results: dict, files: Files) -> None:
    result, out = results["skipping"]
    assert result.returncode == 0, result.stderr
    assert "skipped 2 unreadable images" in result.stdout and "3.png" in result.stdout and "notes.png" in result.stdout
    skipped = json.loads((out / "skipped.json").read_text())
    assert [(s["index"], Path(s["path"]).name) for s in skipped] == [(3, "3.png"), (6, "notes.png")]
    assert all(s["reason"] for s in skipped)
    assert {r["index"] for r in json.loads((out / "top9.json").read_text())} == {0, 1, 2, 4, 5}


def test_an_output_folder_with_another_run_is_refused(results: dict) -> None:
    result, out = results["another run"]
    _assert_refused(result, [str(out), "holds another top9 run (top9.json)", "--overwrite"])
    _untouched(out)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--checkpoint", "{root}/garbage.pt"], ["garbage.pt", "cannot read checkpoint"]),
        (["--model", "{root}/models.py:large"], ["models.py", "no attribute 'large'"]),
        (["--data", "{root}/empty-idx3-ubyte.gz"], ["empty-idx3-ubyte.gz", "holds no images"]),
        (["--crop", "3", "--layers", "4"], ["the model fails on dataset images 0..", "of shape (1, 3, 3)"]),
        (["--top", "0"], ["key 'top' must be >= 1, got 0"]),
        (["--batch-size", "-1"], ["key 'batch_size' must be >= 1"]),
        (["--device", "cuda:3"], ["key 'device'", "'cuda:3' is not available"]),
        (["--device", "gpu"], ["key 'device'", "unknown device 'gpu'"]),
        (["--out", "{root}/a-file"], ["a-file", "not a folder"]),
        (["--out", ""], ["key 'out'"]),
    ],
)
def test_more_bad_settings_in_process(args: list[str], words: list[str], files: Files, tmp_path: Path, capsys) -> None:
    out = _previous(tmp_path / "out")
    assert main(_fill(_top9(*SMALL, "--out", str(out), "--overwrite", *args), files)) == 2
    (line,) = capsys.readouterr().err.splitlines()
    for word in words:
        assert word.format(**vars(files)) in line, line
    _untouched(out)
    assert (files.root / "a-file").read_text() == "x"


def test_with_overwrite_a_finished_run_replaces_the_old_outputs(tmp_path: Path, files: Files) -> None:
    out = _previous(tmp_path / "out")
    assert main(_fill(_top9(*SMALL), files) + ["--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "top9.json").read_text())[0]["layer"] == "1"
    assert sorted(p.name for p in (out / "sheets").iterdir()) == ["1-1.png"]  # the old sheet is gone


def test_nan_in_the_data_names_the_dataset_image_in_python() -> None:
    class Data(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 30

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            return torch.full((1, 8, 8), float("nan") if i == 17 else 1.0), 0

    mirror = deconv.build_mirror(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU()))
    with pytest.raises(NonFiniteError, match="dataset image 17 holds NaN or inf"):
        scan(mirror, Data(), ["1"], batch_size=8, progress=False)
