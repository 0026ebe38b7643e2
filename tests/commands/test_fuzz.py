"""Fuzzing the command line (issue 11): random flags and config files with wrong types, extreme
numbers, odd strings and odd paths. Every run succeeds or exits 2 with one line, never shows a
traceback, and changes no file outside its output folder."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import deconv
from deconv.commands import COMMANDS as COMMAND_OPTIONS
from deconv.commands.main import main

ROOT = Path(__file__).parents[2]
CONFIG = ROOT / "configs" / "default.toml"

ODD_TEXT = st.sampled_from(
    [
        "",
        " ",
        "abc",
        "-1",
        "0",
        "1e999",
        "nan",
        "inf",
        "99999999999999999999",
        "features.1",
        "features.99",
        "../escape",
        "/dev/null",
        "a,b",
        "1,2",
        "map",
        "ünï",
        "\t",
        "x" * 300,
    ]
)
NUMBERS = st.one_of(st.integers(-3, 40), st.sampled_from([0, -1, 2**31, 2**63, 10**20]))
FLAGS = {  # flag -> values worth trying (as command-line text)
    "--top": NUMBERS,
    "--limit": st.integers(-2, 24),
    "--batch-size": NUMBERS,
    "--per-sheet": NUMBERS,
    "--memory-budget-mb": NUMBERS,
    "--save-every": NUMBERS,
    "--workers": st.sampled_from([-1, 0]),
    "--resize": NUMBERS,
    "--crop": NUMBERS,
    "--image-channels": st.sampled_from([-1, 0, 1, 2, 3, 4]),
    "--layers": st.sampled_from(["features.1", "features.4", "classifier.6", "flatten", "nope", ""]),
    "--layer": st.sampled_from(["features.1", "features.11", "classifier.6", "nope", "../x", ""]),
    "--channel": NUMBERS,
    "--position": ODD_TEXT,
    "--target-class": NUMBERS,
    "--top-classes": st.integers(-1, 12),
    "--square": NUMBERS,
    "--stride": NUMBERS,
    "--label": NUMBERS,
    "--mean": st.sampled_from(["0.5", "nan", "abc", "1e999"]),
    "--std": st.sampled_from(["0", "-1", "0.3", "inf"]),
    "--device": st.sampled_from(["cpu", "auto", "meta", "mps", "cuda:7", "gpu"]),
    "--checkpoint": st.sampled_from(["{garbage}", "{missing}", "{folder}", ""]),
    "--data": st.sampled_from(["{folder}", "{garbage}", "{missing}", "{image}", ""]),
    "--image": st.sampled_from(["{image}", "{tiny}", "{garbage}", "{missing}", "{folder}"]),
    "--model": st.sampled_from(["", "nope:x", "deconv.zoo.models:ZFNet28", "os:getcwd"]),
}
TOML_VALUES = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.booleans(),
    st.text(max_size=8),
    st.lists(st.integers(-5, 5), max_size=3),
    st.lists(st.text(max_size=3), max_size=2),
)
CONFIG_KEYS = [
    "top",
    "limit",
    "batch_size",
    "layers",
    "mean",
    "std",
    "crop",
    "device",
    "per_sheet",
    "overwrite",
    "progress",
    "nope",
]
COMMANDS = {
    "top9": ["--limit", "16", "--layers", "features.1"],
    "project": ["--image", "{image}", "--target-class", "1"],
    "occlusion": ["--image", "{image}", "--stride", "7"],
    "layers": [],
    "evolution": ["--limit", "8"],
}


def snapshot(root: Path, skip: Path) -> dict[str, tuple[int, bytes]]:
    return {
        p.relative_to(root).as_posix(): (p.stat().st_mode, p.read_bytes() if p.is_file() else b"")
        for p in sorted(root.rglob("*"))
        if not p.is_relative_to(skip) and not p.is_fifo()
    }


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("fuzz")
    image, _ = deconv.default_dataset()[0]
    Image.fromarray(((image[0] * 0.353 + 0.286).clamp(0, 1) * 255).byte().numpy()).save(root / "boot.png")
    Image.new("L", (1, 1)).save(root / "tiny.png")
    (root / "garbage.pt").write_bytes(b"\x80\x04 not a checkpoint")
    (root / "folder").mkdir()
    for i in range(3):
        Image.new("L", (28, 28), 80 * i).save(root / "folder" / f"{i}.png")
    (root / "folder" / "broken.png").write_text("no")
    os.mkfifo(root / "folder" / "fifo.png")
    return {
        "root": str(root),
        "image": str(root / "boot.png"),
        "tiny": str(root / "tiny.png"),
        "garbage": str(root / "garbage.pt"),
        "missing": str(root / "missing"),
        "folder": str(root / "folder"),
    }


@st.composite
def invocations(draw: st.DrawFn) -> tuple[list[str], dict]:
    command = draw(st.sampled_from(sorted(COMMANDS)))
    argv = [command, "--no-progress"] if command != "layers" else [command]
    argv += COMMANDS[command]
    own = {o.flag for o in COMMAND_OPTIONS[command].options}
    for flag in draw(st.lists(st.sampled_from(sorted(f for f in FLAGS if f in own)), max_size=4, unique=True)):
        argv += [flag, str(draw(FLAGS[flag]))]
    config = {k: draw(TOML_VALUES) for k in draw(st.lists(st.sampled_from(CONFIG_KEYS), max_size=2, unique=True))}
    return argv, config


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value) if isinstance(value, str) else repr(value)


@settings(max_examples=40)
@given(invocation=invocations(), out_kind=st.sampled_from(["new", "again", "file", "nested"]))
def test_any_command_line_succeeds_or_exits_2_in_one_line_touching_nothing_else(
    sandbox: dict[str, str], invocation: tuple[list[str], dict], out_kind: str
) -> None:
    argv, config = invocation
    root = Path(sandbox["root"])
    out = root / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.unlink(missing_ok=True)
    if out_kind == "file":
        out.write_text("a file")
    target = out / "sub" if out_kind == "nested" else out
    keys = {**tomllib.loads(CONFIG.read_text()), "out": str(target), **config}
    (root / "fuzz.toml").write_text("".join(f"{k} = {_toml(v)}\n" for k, v in keys.items()))
    argv = [a.format(**sandbox) for a in argv] + ["--config", str(root / "fuzz.toml")]
    if argv[0] != "layers":
        argv += ["--out", str(target)]
    before = snapshot(root, out)
    cwd = os.getcwd()
    os.chdir(root)  # relative paths land in the sandbox
    try:
        for _ in range(2 if out_kind == "again" else 1):  # again: the same run into its own earlier run
            _run_once(argv)
    finally:
        os.chdir(cwd)
    assert snapshot(root, out) == before, argv


def _run_once(argv: list[str]) -> None:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exit:  # argparse's usage errors
            code = exit.code
    lines = stderr.getvalue().strip().splitlines()
    assert code in (0, 2), (argv, stderr.getvalue())
    assert "Traceback" not in stderr.getvalue()
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("deconv") and ": error: " in lines[0], (argv, lines)
