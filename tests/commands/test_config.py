"""Config files and flags: one table of options, errors that name the file and the key."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from deconv.commands import COMMANDS, all_options
from deconv.commands.config import Option, Settings, dump_toml, load_config, resolve, with_options
from deconv.commands.main import main
from deconv.errors import ConfigError

OPTIONS = [
    Option("batch_size", int, 256, ""),
    Option("mean", list, [], "", item=float),
    Option("layers", list, [], "", item=str),
    Option("overwrite", bool, False, ""),
    Option("data", str, "", ""),
    Option("scale", float, 1.0, ""),
    Option("mode", str, "a", "", choices=("a", "b")),
]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_valid_file_is_read_and_converted(tmp_path: Path) -> None:
    path = write(tmp_path, 'batch_size = 8\nmean = [0, 0.5]\nlayers = ["a"]\noverwrite = true\nscale = 2\n')
    assert load_config(path, OPTIONS) == {
        "batch_size": 8,
        "mean": [0.0, 0.5],
        "layers": ["a"],
        "overwrite": True,
        "scale": 2.0,
    }


@pytest.mark.parametrize(
    "text, words",
    [
        ("batchsize = 8\n", ["c.toml", "unknown key 'batchsize'", "batch_size"]),
        ('batch_size = "8"\n', ["c.toml", "'batch_size'", "an integer", "str '8'"]),
        ("batch_size = true\n", ["'batch_size'", "an integer", "bool"]),
        ("overwrite = 1\n", ["'overwrite'", "true or false"]),
        ('mean = ["x"]\n', ["'mean'", "a number"]),
        ("layers = 3\n", ["'layers'", "a list"]),
        ('mode = "c"\n', ["'mode'", "'a', 'b'"]),
        ("batch_size = = 8\n", ["c.toml", "invalid TOML", "line 1"]),
    ],
)
def test_bad_files_name_file_and_key(tmp_path: Path, text: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text), OPTIONS)
    message = str(error.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.toml"):
        load_config(tmp_path / "nope.toml", OPTIONS)


def test_flags_win_over_file_over_defaults() -> None:
    settings = resolve(OPTIONS, {"batch_size": 8, "data": "x"}, {"batch_size": 4, "data": None, "unrelated": 1})
    assert settings["batch_size"] == 4 and settings["data"] == "x" and settings["scale"] == 1.0
    assert "unrelated" not in settings


def test_dump_round_trips() -> None:
    settings = {
        "batch_size": 8,
        "mean": [0.25],
        "layers": ['a"b', "c"],
        "overwrite": False,
        "data": "p/q",
        "none": None,
    }
    assert tomllib.loads(dump_toml(settings, "header\nline")) == {k: v for k, v in settings.items() if v is not None}


def test_each_commands_settings_hold_its_resolved_options_typed_and_give_them_back() -> None:
    for command in COMMANDS.values():
        resolved = resolve(command.options, {}, {})
        settings = command.settings.of(resolved)
        assert settings.values() == resolved and list(settings.values()) == [o.key for o in command.options]
    top9 = COMMANDS["top9"].settings.of(resolve(COMMANDS["top9"].options, {}, {"layers": ["a"], "batch_size": 8}))
    assert top9.layers == ("a",) and top9.data.batch_size == 8 and top9.output.out == "runs/default"


def test_settings_that_drift_from_their_options_are_refused() -> None:
    with pytest.raises(TypeError, match="batch"):

        @with_options(Option("batch_size", int, 256, ""))
        class Misspelt(Settings):
            batch: int

    with pytest.raises(TypeError, match="batch_size"):

        @with_options(Option("batch_size", int, 256, ""))
        class Mistyped(Settings):
            batch_size: str


CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.toml"))


def test_the_repositorys_configs_are_found() -> None:
    assert [p.name for p in CONFIGS] == [
        "default.toml",
        "imagenet-model.toml",
        "timm-convnext_tiny.toml",
        "timm-efficientnet_b0.toml",
        "vgg16-hed.toml",
    ]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_each_shipped_config_is_a_valid_top9_config(path: Path) -> None:
    """Every key is kept with the file's value, the settings of top9 take them, and a model file is beside it."""
    written = tomllib.loads(path.read_text())
    loaded = load_config(path, all_options())
    assert loaded and loaded == written
    top9 = COMMANDS["top9"]
    values = top9.settings.of(resolve(top9.options, loaded, {})).values()
    assert {key: values[key] for key in loaded} == loaded
    module = loaded.get("model", "").partition(":")[0]
    if module.endswith(".py"):
        assert (path.parent / module).is_file(), module


# top9's `channels` is a table of layers (issue 12: `--channels features.29=0-63,100`); evolution's, of one
# layer, a list. A config file is checked with the types of the command that reads it.
PER_COMMAND = {"channels"}


def test_every_command_flag_is_a_config_key_of_one_type() -> None:
    seen: dict[str, type] = {}
    for command in COMMANDS.values():
        for o in command.options:
            assert o.key in PER_COMMAND or seen.setdefault(o.key, o.type) is o.type, o.key
            assert o.check(o.default, "defaults") == o.default


def test_a_key_of_two_types_is_checked_with_the_type_of_the_command_that_reads_it(tmp_path: Path, capsys) -> None:
    config = tmp_path / "c.toml"
    config.write_text('channels = { "features.11" = "0-1" }\nlimit = 50\n')
    assert main(["top9", "--config", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert {
        r["channel"] for r in json.loads((tmp_path / "run" / "top9.json").read_text()) if r["layer"] == "features.11"
    } == {0, 1}
    capsys.readouterr()
    assert main(["evolution", "--config", str(config), "--out", str(tmp_path / "evo"), "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert "channels" in error and "must be a list of an integer" in error and "\n" not in error
