"""Rules in the commands: ``rule``/``rules`` settings, top9's one grid per rule from one scan, project's
one row per rule, and top9.json and the report naming the rules. The projections themselves are
checked against their oracles in test_rules.py; here the sheets are checked against the mirror."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import deconv
from deconv.analyses.top9 import Projected, Record, project_top
from deconv.commands.main import main
from deconv.figures.draw import label_strip
from deconv.figures.sheet import GAP, display_tiles
from deconv.mirror import Selection
from deconv.zoo.models import default_preprocess

ROOT = Path(__file__).parents[2]
CONFIG = str(ROOT / "configs" / "default.toml")
SMALL = [
    "top9",
    "--config",
    CONFIG,
    "--limit",
    "120",
    "--no-progress",
    "--layers",
    "features.11",
    "--channels",
    "features.11=3-5",
]
RULES = ["deconvnet", "guided", "gradient"]


@pytest.fixture(scope="module")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    image, _ = deconv.default_dataset()[0]
    path = tmp_path_factory.mktemp("img") / "boot.png"
    Image.fromarray(((image[0] * 0.3530242 + 0.2860406).clamp(0, 1) * 255).round().byte().numpy(), "L").save(path)
    return path


@pytest.fixture(scope="module")
def several(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A top9 run of the three rules, with the full-resolution projections saved."""
    out = tmp_path_factory.mktemp("rules") / "run"
    assert main([*SMALL, "--rules", *RULES, "--save-projections", "npy", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize(
    "command",
    [
        ["top9", "--config", CONFIG, "--limit", "20", "--rule", "bogus"],
        ["top9", "--config", CONFIG, "--limit", "20", "--rules", "guided", "bogus"],
        ["project", "--config", CONFIG, "--layer", "features.4", "--rule", "bogus"],
        ["project", "--config", CONFIG, "--layer", "features.4", "--rules", "deconvnet", "bogus"],
        ["occlusion", "--config", CONFIG, "--rule", "bogus"],
        ["evolution", "--config", CONFIG, "--limit", "20", "--rule", "bogus"],
    ],
)
def test_an_unknown_rule_is_one_line_naming_the_registered_rules(command, image_file, tmp_path, capsys) -> None:
    if command[0] in ("project", "occlusion"):
        command = [*command, "--image", str(image_file)]
    assert main([*command, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert (
        "\n" not in error and "unknown rule 'bogus'" in error and f"valid rules: {', '.join(deconv.rules())}" in error
    )
    assert not (tmp_path / "out").exists()


def test_a_registered_rule_is_a_valid_setting_and_is_drawn(image_file, tmp_path) -> None:
    class Halved(deconv.layers.MirrorModule):
        def forward(self, signal: torch.Tensor) -> torch.Tensor:
            return 0.5 * torch.relu(signal)

    deconv.register_mirror(nn.ReLU, rule="halved")(lambda relu: Halved())
    try:
        config = tmp_path / "halved.toml"
        config.write_text(Path(CONFIG).read_text() + '\nrule = "halved"\n')  # the config key
        args = [
            "project",
            "--config",
            str(config),
            "--image",
            str(image_file),
            "--layer",
            "features.4",
            "--out",
            str(tmp_path / "out"),
        ]
        assert main(args) == 0
        assert [p.name for p in (tmp_path / "out").glob("project-*.png")] == [
            "project-boot-features.4-c" + _strongest(image_file) + "-halved.png"
        ]
    finally:
        deconv.unregister_mirror(nn.ReLU, rule="halved")


def _strongest(image_file: Path) -> str:
    from deconv.commands.project import _strongest_channel
    from deconv.data import load_image

    image = load_image(str(image_file), default_preprocess())[None]
    return str(_strongest_channel(deconv.build_mirror(deconv.default_model()), image, "features.4"))


def test_the_rule_setting_reaches_the_records_and_the_sheet(tmp_path: Path) -> None:
    config = tmp_path / "guided.toml"
    config.write_text(Path(CONFIG).read_text() + '\nrule = "guided"\n')
    out = tmp_path / "run"
    assert main(["top9", "--config", str(config), *SMALL[3:], "--out", str(out)]) == 0
    assert {r["rule"] for r in json.loads((out / "top9.json").read_text())} == {"guided"}
    assert 'rule = "guided"' in (out / "config.toml").read_text()
    assert "rule guided" in (out / "index.html").read_text()
    _assert_panel_is_the_mirrors(out, ["guided"])


def test_several_rules_scan_once_and_record_what_one_rule_does(several: Path, tmp_path: Path) -> None:
    out = tmp_path / "one"
    assert main([*SMALL, "--out", str(out)]) == 0
    one = json.loads((out / "top9.json").read_text())
    records = json.loads((several / "top9.json").read_text())
    assert [r["rule"] for r in one] == ["deconvnet"] * len(one)
    assert [r["rule"] for r in records] == [RULES] * len(records)
    assert [{**r, "rule": None} for r in records] == [{**r, "rule": None} for r in one]  # the same selection
    assert "rules = [" in (several / "config.toml").read_text()


def test_each_rules_grid_is_the_mirrors_projection_under_that_rule(several: Path) -> None:
    _assert_panel_is_the_mirrors(several, RULES)


def test_saved_projections_of_each_rule_are_the_mirrors(several: Path) -> None:
    r = json.loads((several / "top9.json").read_text())[-1]
    images = deconv.default_dataset()[r["index"]][0][None]
    mirror = deconv.build_mirror(deconv.default_model())
    for rule in RULES:
        ((_, expected),) = mirror.projections(
            images, [Selection(0, r["layer"], r["channel"], r["y"], r["x"])], crop=True, rule=rule
        )
        saved = np.load(several / "projections" / rule / r["layer"] / f"{r['channel']}-{r['rank']}.npy")
        torch.testing.assert_close(torch.from_numpy(saved), expected[0])


def _assert_panel_is_the_mirrors(out: Path, rules: list[str]) -> None:
    """The last channel's panel on its sheet: rule ``n``'s grid holds the display tiles of
    ``mirror.projections(..., rule=rule, crop=True)`` of the channel's records, best first."""
    records = [
        Record(**{k: v for k, v in r.items() if k != "rule"}) for r in json.loads((out / "top9.json").read_text())
    ]
    channels = sorted({r.channel for r in records})
    mine = sorted((r for r in records if r.channel == channels[-1]), key=lambda r: r.rank)
    dataset, preprocess = deconv.default_dataset(), default_preprocess()
    mirror = deconv.build_mirror(deconv.default_model())
    (patches,) = project_top(mirror, dataset, mine, progress=False)  # the rule-free parts: patches, where inside
    order = [patches.records.index(r) for r in mine]
    images = torch.stack([dataset[r.index][0] for r in mine])
    sheet = torch.from_numpy(np.array(Image.open(out / "sheets" / "features.11-1.png"))).permute(2, 0, 1)
    (entry,) = [e for e in json.loads((out / "sheets.json").read_text()) if e["sheet"] == "sheets/features.11-1.png"]
    assert [p["channel"] for p in entry["panels"]] == channels and entry["size"] == [sheet.shape[2], sheet.shape[1]]
    panel = entry["panels"][-1]  # where the sheet's own layout put the last channel's panel
    left, top, right, _ = panel["panel"]
    top += label_strip(Image.new("RGB", (1, 1)), "", size=11).height - 1 if len(rules) > 1 else 0  # the rules' captions
    assert list(panel["rules"]) == rules and panel["patches"][2] == right
    for n, rule in enumerate(rules):
        selections = [Selection(k, r.layer, r.channel, r.y, r.x) for k, r in enumerate(mine)]
        chunks = list(mirror.projections(images, selections, crop=True, rule=rule))
        projections = torch.cat([p for _, p in chunks])[torch.cat([where for where, _ in chunks]).argsort()]
        chunk = Projected(mine, projections, patches.patches[order], patches.inside[order], patches.image_size)
        tiles = display_tiles(chunk, preprocess.denormalize, 80, preprocess.channel_order)
        h, w = tiles[0].projection.shape[-2:]
        side = 3 * (w + 2) - 2
        assert right - left == (len(rules) + 1) * side + len(rules) * GAP
        for i, tile in enumerate(tiles):
            y, x = top + (i // 3) * (h + 2), left + n * (side + GAP) + (i % 3) * (w + 2)
            assert panel["rules"][rule][0] == left + n * (side + GAP)
            assert torch.equal(sheet[:, y : y + h, x : x + w], tile.projection), (rule, i)


def test_project_draws_one_row_per_rule(image_file: Path, tmp_path: Path) -> None:
    base = ["project", "--config", CONFIG, "--image", str(image_file), "--layer", "features.11", "--channel", "3"]
    assert main([*base, "--out", str(tmp_path / "one")]) == 0
    assert main([*base, "--rules", *RULES, "--out", str(tmp_path / "three")]) == 0
    (one,) = (tmp_path / "one").glob("project-*.png")
    (three,) = (tmp_path / "three").glob("project-*.png")
    assert (
        one.name == "project-boot-features.11-c3.png"
        and three.name == "project-boot-features.11-c3-deconvnet-guided-gradient.png"
    )
    single, rows = np.asarray(Image.open(one)), np.asarray(Image.open(three))
    row = single.shape[0]
    assert rows.shape == (3 * row + 2 * 12, single.shape[1], 3)  # render.column's gap
    assert (rows[:row] == single).all()  # the deconvnet row is the single-rule figure
    mirror = deconv.build_mirror(deconv.default_model())
    image = deconv.default_dataset()[0][0][None]
    drawn = [rows[n * (row + 12) : n * (row + 12) + row] for n in range(3)]
    label = label_strip(Image.new("RGB", (1, 1)), "").height - 1
    for rule, strip in zip(RULES, drawn):
        projection = deconv.figures.draw.show_projection(mirror.project(image, "features.11", 3, rule=rule))[0]
        factor = strip.shape[1] // 2 // projection.shape[-1]
        expected = (deconv.figures.draw.upscale(projection, factor).permute(1, 2, 0) * 255).round().byte().numpy()
        assert (strip[label : label + expected.shape[0], : expected.shape[1]] == expected).all(), rule
    assert not (drawn[1] == drawn[2]).all()


def test_project_refuses_several_rules_with_top_classes(image_file: Path, tmp_path: Path, capsys) -> None:
    args = [
        "project",
        "--config",
        CONFIG,
        "--image",
        str(image_file),
        "--top-classes",
        "3",
        "--rules",
        "deconvnet",
        "guided",
    ]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_the_report_lets_a_reader_switch_rules(several: Path) -> None:
    page = (several / "index.html").read_text()
    assert "rules deconvnet, guided, gradient" in page
    for rule in RULES:
        assert f'id="features.11/5/{rule}"' in page and f'href="#features.11/5/{rule}"' in page


def test_occlusion_projects_its_map_by_the_rule(image_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [
        "occlusion",
        "--config",
        CONFIG,
        "--image",
        str(image_file),
        "--layer",
        "features.11",
        "--channel",
        "3",
        "--stride",
        "7",
    ]
    assert main([*args, "--rule", "guided", "--out", str(out), "--no-progress"]) == 0
    saved = torch.from_numpy(np.load(out / "occlusion" / "boot" / "projection.npy"))
    image = deconv.default_dataset()[0][0][None]
    mirror = deconv.build_mirror(deconv.default_model())
    torch.testing.assert_close(saved, mirror.project(image, "features.11", 3, "map", rule="guided")[0])
    assert not torch.allclose(saved, mirror.project(image, "features.11", 3, "map")[0])


def test_evolve_projects_by_the_rule() -> None:
    from deconv.analyses.evolution import evolve

    model, dataset = deconv.default_model(), deconv.default_dataset()

    def run(mirror: deconv.Mirror, **kw):
        return evolve([mirror], dataset, "features.11", [0, 1], indices=range(60), progress=False, **kw)

    guided = run(deconv.build_mirror(model), rule="guided")
    torch.testing.assert_close(guided.projections, run(deconv.build_mirror(model, rule="guided")).projections)
    assert not torch.allclose(guided.projections, run(deconv.build_mirror(model)).projections)
