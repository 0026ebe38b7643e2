"""Trust and safety (issue 11): checkpoints are data, a user's files and earlier runs are never lost,
no hangs, and every refusal is one line with exit status 2."""

from __future__ import annotations

import errno
import fcntl
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

import deconv
from deconv.commands import occlusion as occlusion_command
from deconv.commands import run_folder
from deconv.commands import top9 as top9_command
from deconv.commands.main import main
from deconv.data import Preprocess, UnreadableImage, load_image, read_idx
from deconv.errors import CheckpointError, DatasetError, OutputError
from deconv.figures import sheet as sheet_module
from deconv.io import atomic_write
from deconv.zoo.models import ZFNet28, load_model

ROOT = Path(__file__).parents[2]
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
    for spec in (None, "deconv.zoo.models:ZFNet28"):
        with pytest.raises(
            CheckpointError, match=r"evil\.pt: a whole pickled object \(needs posix\.system\).*--trust-checkpoint"
        ) as info:
            load_model(spec, path)
        assert "\n" not in str(info.value)
        assert not marker.exists()


@pytest.mark.parametrize(
    "flags",
    [
        ["project", "--target-class", "1", "--checkpoint", "{evil}"],
        ["project", "--target-class", "1", "--model", "deconv.zoo.models:ZFNet28", "--checkpoint", "{evil}"],
        ["evolution", "--limit", "20", "--checkpoints", "{evil}"],
        ["top9", "--limit", "20", "--checkpoint", "{evil}"],
    ],
)
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
    args = [
        "project",
        "--config",
        CONFIG,
        "--image",
        str(image_file),
        "--target-class",
        "1",
        "--checkpoint",
        str(tmp_path / "whole.pt"),
        "--out",
        str(tmp_path / "out"),
    ]
    assert main(args) == 2
    one_line_error(capsys, "project")
    assert main([*args, "--trust-checkpoint"]) == 0
    (tmp_path / "trust.toml").write_text(Path(CONFIG).read_text() + "trust_checkpoint = true\n")
    assert main([*args, "--config", str(tmp_path / "trust.toml"), "--out", str(tmp_path / "out2")]) == 0


# ------------------------------------------------------------------- 2-4. run folders, overwrite, lock


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` but the lock (which a run may leave, empty of meaning), by relative path."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".deconv-lock"
    }


@pytest.fixture
def users_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "mine"
    (folder / "sheets").mkdir(parents=True)
    (folder / "index.html").write_text("<p>my page</p>")
    (folder / "config.toml").write_text("mine = 1\n")
    (folder / "sheets" / "my_figure.png").write_bytes(b"my figure")
    return folder


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_a_folder_deconv_did_not_write_is_never_written_into(
    users_folder: Path, image_file: Path, capsys: pytest.CaptureFixture, overwrite: list[str]
) -> None:
    before = snapshot(users_folder)
    out = ["--out", str(users_folder), *overwrite]
    assert main(["top9", *SMALL, *out]) == 2
    assert "holds files deconv did not write" in one_line_error(capsys, "top9")
    for command in ("project", "occlusion"):
        extra = ["--target-class", "1"] if command == "project" else []
        assert main([command, "--config", CONFIG, "--image", str(image_file), *extra, *out]) == 2
        one_line_error(capsys, command)
    assert snapshot(users_folder) == before


def test_project_and_occlusion_add_to_a_run_but_never_replace_a_users_index(
    tmp_path: Path, image_file: Path, capsys
) -> None:
    out = tmp_path / "run"
    assert (
        main(["project", "--config", CONFIG, "--image", str(image_file), "--target-class", "1", "--out", str(out)]) == 0
    )
    assert main(["occlusion", "--config", CONFIG, "--image", str(image_file), "--stride", "4", "--out", str(out)]) == 0
    manifest = json.loads((out / "deconv-run.json").read_text())
    assert manifest["commands"] == ["project", "occlusion"] and manifest["deconv"] == deconv.__version__
    assert manifest["files"]["index.html"] == "report" and manifest["files"]["occlusion/boot.png"] == "occlusion"
    assert set(manifest["files"]) == set(snapshot(out)) - {"deconv-run.json"}
    (out / "index.html").unlink()
    (out / "index.html").write_text(
        "my own index"
    )  # deconv's manifest still lists it: replace it... only if deconv wrote it
    manifest["files"].pop("index.html")
    (out / "deconv-run.json").write_text(json.dumps(manifest))
    before = snapshot(out)
    assert (
        main(["project", "--config", CONFIG, "--image", str(image_file), "--target-class", "2", "--out", str(out)]) == 2
    )
    assert "index.html was not written by deconv" in one_line_error(capsys, "project")
    assert snapshot(out) == before


def test_overwrite_deletes_only_what_deconv_wrote(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["top9", *SMALL, "--layers", "features.1", "features.4", "--out", str(out)]) == 0
    assert (out / "sheets" / "features.1-1.png").is_file() and (out / "thumbs" / "features.1").is_dir()
    (out / "sheets" / "my_figure.png").write_bytes(b"mine")
    (out / "notes.txt").write_text("mine")
    assert main(["top9", *SMALL, "--layers", "features.4", "--out", str(out)]) == 2  # no --overwrite
    assert main(["top9", *SMALL, "--layers", "features.4", "--out", str(out), "--overwrite"]) == 0
    assert (out / "sheets" / "my_figure.png").read_bytes() == b"mine" and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (out / "sheets").iterdir()) == ["features.4-1.png", "my_figure.png"]
    assert not (out / "thumbs" / "features.1").exists() and not (out / ".deconv-partial").exists()
    files = json.loads((out / "deconv-run.json").read_text())["files"]
    assert "sheets/my_figure.png" not in files and "sheets/features.1-1.png" not in files
    assert set(files) == set(snapshot(out)) - {"deconv-run.json", "sheets/my_figure.png", "notes.txt"}


def test_a_run_that_fails_late_leaves_the_earlier_run_byte_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    assert main(["top9", *SMALL, "--out", str(out)]) == 0
    before = snapshot(out)

    def fails(*args, **kwargs):
        raise OutputError("the disk is full (simulated)")

    monkeypatch.setattr(top9_command, "figure2_sheet", fails)  # after the scan, state and top9.json are written
    assert main(["top9", *SMALL, "--top", "4", "--out", str(out), "--overwrite"]) == 2
    assert "simulated" in one_line_error(capsys, "top9")
    assert snapshot(out) == before
    assert sorted(p.name for p in out.iterdir()) == sorted({".deconv-lock", *(f.split("/")[0] for f in before)})


def test_a_second_run_into_a_locked_folder_is_refused_and_a_stale_lock_does_not_block(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".deconv-lock", "w") as held:
        held.write("4242\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another run holds it (flock locks are per open file)
        assert main(["top9", *SMALL, "--out", str(out)]) == 2
        assert f"{out} is in use by another deconv run (process 4242)" in one_line_error(capsys, "top9")
        assert sorted(p.name for p in out.iterdir()) == [".deconv-lock"]
    # the holder died: its lock file remains, unlocked
    assert main(["top9", *SMALL, "--out", str(out)]) == 0
    assert (out / ".deconv-lock").read_text() == f"{os.getpid()}\n"


def test_two_concurrent_runs_into_one_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "deconv", "top9", *SMALL, "--limit", "400", "--save-every", "1", "--out", str(out)]
    first = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / ".deconv-partial" / "state").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)  # the first run is part-way through its scan
    second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert second.returncode == 2
    assert (
        second.stderr.strip() == f"deconv top9: error: {out} is in use by another deconv run (process {first.pid}); "
        "wait for it or choose another --out"
    )


def test_a_failure_that_can_be_foreseen_comes_before_the_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(top9_command, "_scan", lambda *args, **kwargs: pytest.fail("the scan ran"))
    # images too small for the projection of features.1 (its mirror runs the classifier on 5x5 images)
    assert main(["top9", *SMALL, "--crop", "5", "--layers", "features.1", "--out", str(tmp_path / "a")]) == 2
    assert "the model fails on dataset image" in one_line_error(capsys, "top9")
    # an output folder on a read-only file system
    real_open = os.open

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(run_folder.os, "open", read_only)
    assert main(["top9", *SMALL, "--out", str(tmp_path / "ro")]) == 2
    assert one_line_error(capsys, "top9").endswith(
        f"{tmp_path / 'ro'}: cannot write into the output folder (Read-only file system)"
    )


# ---------------------------------------------------------------------------------- 5. permissions


def test_outputs_get_the_permissions_of_the_umask(tmp_path: Path, image_file: Path) -> None:
    previous = os.umask(0o022)
    try:
        assert main(["top9", *SMALL, "--out", str(tmp_path / "run")]) == 0
        assert (
            main(
                [
                    "occlusion",
                    "--config",
                    CONFIG,
                    "--image",
                    str(image_file),
                    "--stride",
                    "7",
                    "--out",
                    str(tmp_path / "run"),
                ]
            )
            == 0
        )
    finally:
        os.umask(previous)
    modes = {p.relative_to(tmp_path).as_posix(): oct(p.stat().st_mode & 0o777) for p in (tmp_path / "run").rglob("*")}
    assert {m for p, m in modes.items() if (tmp_path / p).is_file()} == {oct(0o644)}, modes
    assert {m for p, m in modes.items() if (tmp_path / p).is_dir()} == {oct(0o755)}, modes


# --------------------------------------------------------------------------- 6. non-regular files


def _png(path: Path, value: int = 128, size: int = 28) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


def test_a_fifo_in_the_data_folder_is_skipped_with_its_reason_not_waited_for(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for i in range(3):
        _png(data / f"{i}.png", 60 * i)
    os.mkfifo(data / "x.png")
    os.symlink(data / "0.png", data / "link.png")  # a symlink to a regular file is read
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = ["top9", *SMALL, "--data", str(data), "--out", str(tmp_path / "run")]
    done = subprocess.run([sys.executable, "-m", "deconv", *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    skipped = json.loads((tmp_path / "run" / "skipped.json").read_text())
    assert skipped == [{"index": 4, "path": str(data / "x.png"), "reason": "not a regular file (a FIFO)"}]
    assert "skipped 1 unreadable images" in done.stdout
    with pytest.raises(UnreadableImage, match=r"x\.png: cannot read image: not a regular file \(a FIFO\)"):
        load_image(data / "x.png", Preprocess(channels=1))


# ---------------------------------------------------------------------------- 7. names not UTF-8


def test_file_names_that_are_not_utf8_go_end_to_end(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for i in range(3):
        _png(data / f"{i}.png", 60 * i)
    cafe = data / os.fsdecode(b"caf\xe9.png")
    _png(cafe, 250)
    bad = data / os.fsdecode(b"bad\xff.png")
    bad.write_bytes(b"not a png")
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LC_ALL": "C.UTF-8"}
    args = [sys.executable, "-m", "deconv", "top9", *SMALL, "--data", str(data), "--out", str(out)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "bad\\udcff.png" in done.stdout  # printed as an escape, not a crash
    records = json.loads((out / "top9.json").read_text())
    assert str(cafe) in {r["path"] for r in records}  # the name round-trips through JSON
    assert json.loads((out / "skipped.json").read_text())[0]["path"] == str(bad)
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "caf%E9.png" in page  # the link keeps the file's bytes
    resumed = subprocess.run([*args, "--resume"], env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "top9.json").read_text()) == records


@pytest.mark.parametrize("flag", ["--out", "--data", "--image"])
def test_a_setting_that_is_not_utf8_is_refused_up_front(tmp_path: Path, flag: str, capsys) -> None:
    odd = str(tmp_path / os.fsdecode(b"r\xffn"))
    assert (
        main(
            [
                "project",
                "--config",
                CONFIG,
                "--target-class",
                "1",
                "--image",
                "x.png",
                "--out",
                str(tmp_path / "o"),
                flag,
                odd,
            ]
        )
        == 2
    )
    error = one_line_error(capsys, "project")
    assert f"key '{flag[2:]}'" in error and "not UTF-8" in error
    assert sorted(os.listdir(tmp_path)) == []


# ------------------------------------------------------------------- 8. one line and exit 2, always


@pytest.mark.parametrize(
    "args, words",
    [
        (["project", "--target-class", "1", "--image", "{one}"], ["one.png of shape (1, 1, 1)", "the model fails"]),
        (["project", "--layer", "features.4", "--channel", "0", "--image", "{one}"], ["one.png of shape (1, 1, 1)"]),
        (["occlusion", "--image", "{one}"], ["one.png of shape (1, 1, 1)"]),
        (
            ["occlusion", "--image", "{boot}", "--stride", "1000"],
            ["key 'stride' must be at most the image's side, 28 pixels"],
        ),
        (["project", "--target-class", "1", "--image", "{boot}", "--out", "{file}"], ["exists and is not a folder"]),
        (["train", "--epochs", "0"], ["key 'epochs' must be >= 1, got 0"]),
        (["train", "--out", "{file}"], ["exists and is not a folder"]),
        (["layers", "--device", "meta"], ["key 'device'", "cannot compute on 'meta'"]),
        (["layers", "--device", "mps"], ["key 'device'", "'mps' is not available"]),
        (["top9", "--top", "100000000"], ["key 'top' must be <= 1000"]),
        (["top9", "--tile-px", "100000"], ["key 'tile_px' must be <= 256"]),
        (["top9", "--config", "{huge}"], ["key 'batch_size' must be between", "99999999999999999999"]),
        (["top9", "--crop", "100000"], ["crop 100000 makes every image", "choose crop <= 8192"]),
        (["top9", "--resize", "100000"], ["resize 100000 makes every image", "choose resize <= 8192"]),
        (
            ["project", "--crop", "100000", "--layer", "features.4", "--image", "{boot}"],
            ["crop 100000 makes every image", "choose crop <= 8192"],
        ),
        (["top9", "--out", "{long_name}"], ["--out: the name", "300 bytes long", "at most 255 bytes"]),
        (["top9", "--out", "{long_path}"], ["--out: the path", "bytes long", "PATH_MAX"]),
    ],
)
def test_each_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, image_file: Path, capsys: pytest.CaptureFixture, args: list[str], words: list[str]
) -> None:
    Image.new("L", (1, 1)).save(tmp_path / "one.png")
    (tmp_path / "file").write_text("a file")
    (tmp_path / "huge.toml").write_text(
        Path(CONFIG).read_text().replace("batch_size = 500", "batch_size = 99999999999999999999")
    )
    paths = {
        "one": tmp_path / "one.png",
        "boot": image_file,
        "file": tmp_path / "file",
        "huge": tmp_path / "huge.toml",
        "long_name": tmp_path / ("n" * 300),
        "long_path": tmp_path.joinpath(*["p" * 250] * 17),
    }
    command = args[0]
    config = ["--config", CONFIG] if command != "train" and "--config" not in args else []
    out = [] if "--out" in args or command == "layers" else ["--out", str(tmp_path / "out")]
    before = snapshot(tmp_path)
    assert main([command, *config, *[a.format(**paths) for a in args[1:]], *out]) == 2
    error = one_line_error(capsys, command)
    for word in words:
        assert word in error, (word, error)
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("out/")} == before


def test_top_is_sized_by_what_the_dataset_can_fill(tmp_path: Path) -> None:
    assert main(["top9", *SMALL, "--top", "1000", "--limit", "12", "--out", str(tmp_path / "run")]) == 0
    records = json.loads((tmp_path / "run" / "top9.json").read_text())
    assert len(records) == 64 * 12  # every channel of features.4 ranks all 12 images
    state = torch.load(tmp_path / "run" / "state" / "rank0.pt", weights_only=True)["state"]
    assert state["tops"]["features.4"]["values"].shape == (64, 12)  # kept: 12 per channel, not 1000


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 25000000000 bytes"),
    ],
)
def test_running_out_of_memory_names_it_and_the_settings_that_shrink_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, error: BaseException
) -> None:
    def allocate(*args, **kwargs):
        raise error

    monkeypatch.setattr(top9_command, "_scan", allocate)
    assert main(["top9", *SMALL, "--out", str(tmp_path / "run")]) == 2
    message = one_line_error(capsys, "top9")
    assert "out of memory" in message and "lower --batch-size, --memory-budget-mb, --top, --workers, --limit" in message
    assert str(error)[:40] in message


def test_the_idx_reader_reads_only_the_images_it_is_asked_for(tmp_path: Path) -> None:
    whole = (deconv.zoo.models.ASSETS / "t10k-images-idx3-ubyte.gz").read_bytes()
    cut = tmp_path / "cut-images-idx3-ubyte.gz"
    cut.write_bytes(whole[: len(whole) // 3])  # the first third of a gzip stream: its first images decompress
    assert read_idx(cut, limit=100).shape == (100, 28, 28)
    assert np.array_equal(read_idx(cut, limit=100), deconv.default_dataset().images[:100])
    with pytest.raises(DatasetError, match="truncated or corrupt gzip data"):
        read_idx(cut)
    assert main(["top9", *SMALL, "--data", str(cut), "--limit", "40", "--out", str(tmp_path / "run")]) == 0


# ----------------------------------------------------------------------- 9. nothing readable at all


def test_a_data_folder_where_no_image_is_readable_is_an_error_naming_it(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a.png", "b.jpg"):
        (data / name).write_text("not an image")
    out = tmp_path / "run"
    assert main(["top9", *SMALL, "--data", str(data), "--out", str(out)]) == 2
    error = one_line_error(capsys, "top9")
    assert f"none of the 2 images of {data} could be read" in error and str(out / "skipped.json") in error
    assert [s["path"] for s in json.loads((out / "skipped.json").read_text())] == [
        str(data / "a.png"),
        str(data / "b.jpg"),
    ]


def test_an_interrupted_run_without_a_scan_state_leaves_nothing_behind(
    tmp_path: Path, image_file: Path, monkeypatch
) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    args = [
        "occlusion",
        "--config",
        CONFIG,
        "--image",
        str(image_file),
        "--stride",
        "7",
        "--out",
        str(tmp_path / "run"),
    ]
    monkeypatch.setattr(occlusion_command, "atomic_write", interrupted)  # after the figure is drawn
    assert main(args) == 130
    assert sorted(os.listdir(tmp_path / "run")) == [".deconv-lock"]
    monkeypatch.undo()
    assert main(args) == 0  # not refused as "another occlusion run"


# ------------------------------------------------------------------- 10. limits, full disks, workers


def test_more_workers_than_cores_are_refused_in_one_line(tmp_path: Path) -> None:
    """1000 workers on 20 images ran for minutes; refused at once, naming the bound."""
    run = subprocess.Popen(
        [sys.executable, "-m", "deconv", "top9", *SMALL, "--limit", "20", "--workers", "1000", "--out", str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, err = run.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)  # its workers too
        raise
    lines = err.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1, err
    assert f"key 'workers' must be <= {len(os.sched_getaffinity(0))} (the CPU cores" in lines[0]
    assert "got 1000" in lines[0] and not (tmp_path / "deconv-run.json").exists()


@pytest.mark.parametrize("out", ["run", "a/b/run"])
def test_an_output_folder_inside_the_data_folder_is_refused(tmp_path: Path, out: str, capsys) -> None:
    data = tmp_path / "data"
    data.mkdir()
    Image.new("L", (28, 28), 128).save(data / "a.png")
    before = snapshot(data)
    assert main(["top9", *SMALL, "--data", str(data), "--out", str(data / out)]) == 2
    error = one_line_error(capsys, "top9")
    assert f"--out {data / out} is inside --data {data}" in error and "outside the data folder" in error
    assert snapshot(data) == before and sorted(os.listdir(data)) == ["a.png"]


def test_a_run_with_no_readable_image_stops_after_the_scan(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.png").write_text("not an image")
    assert main(["top9", *SMALL, "--progress", "--data", str(data), "--out", str(tmp_path / "run")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("scan: 1/1 img"), lines  # the scan's bar, no projection bars
    assert lines[1].startswith("deconv top9: error: none of the 1 images")


def _full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writing a projection fills the disk: half of it is written, then ENOSPC, as a full file system does."""
    real = atomic_write

    def fills(path, write):
        def half(file):
            file.write(b"x" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        return real(path, half)

    monkeypatch.setattr(sheet_module, "atomic_write", fills)


def test_a_full_disk_is_one_line_and_keeps_the_earlier_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    assert main(["top9", *SMALL, "--out", str(out)]) == 0
    before = snapshot(out)
    _full_disk(monkeypatch)
    assert main(["top9", *SMALL, "--out", str(out), "--overwrite", "--save-projections", "npy"]) == 2
    error = one_line_error(capsys, "top9")
    assert f"{out}: no space left on the device: the run needs more than the" in error
    assert "MB free there" in error and "the folder is as it was" in error
    assert snapshot(out) == before and not (out / run_folder.PARTIAL).exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_full_tmpfs_is_one_line_and_keeps_the_earlier_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        out = disk / "run"
        assert main(["top9", *SMALL, "--out", str(out)]) == 0
        before = snapshot(out)
        capsys.readouterr()
        assert main(["top9", *SMALL, "--out", str(out), "--overwrite", "--save-projections", "npy"]) == 2
        assert "no space left on the device" in one_line_error(capsys, "top9")
        assert snapshot(out) == before
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_system_error_outside_the_run_folder_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A full disk while committing (the report), after the run folder's own handling: still one line."""

    def full(out):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "index.html"))

    monkeypatch.setattr(run_folder, "write_report", full)
    assert main(["top9", *SMALL, "--out", str(tmp_path / "run")]) == 2
    error = one_line_error(capsys, "top9")
    assert f"{tmp_path / 'run' / 'index.html'}: No space left on device; free some space" in error
