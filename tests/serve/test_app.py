"""``deconv serve``: the HTTP contract through starlette's TestClient (token, one-line 4xx errors, the
projection PNG equal to deconv's renderer on ``mirror.project``), the command, and a top9 run's panels."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from starlette.testclient import TestClient

from deconv.commands.main import main
from deconv.figures.draw import colormap, show_patch, show_projection, to_pil, upscale
from deconv.mirror import build_mirror
from deconv.serve.app import MAX_UPLOAD_BYTES, create_app
from deconv.serve.session import Session, Viewed
from deconv.zoo.models import default_dataset, default_model, default_preprocess

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"token {TOKEN}"}


@pytest.fixture(scope="module")
def served() -> tuple[TestClient, Session]:
    model = default_model()
    session = Session(build_mirror(model), default_dataset(), default_preprocess(), model.classes)
    return TestClient(create_app(session, TOKEN)), session


@pytest.fixture(scope="module")
def client(served: tuple[TestClient, Session]) -> TestClient:
    return served[0]


def expected_png(image: int, **selection) -> np.ndarray:
    """The oracle: a fresh mirror of a fresh default model projects the dataset image; deconv's renderer draws it."""
    images = default_dataset()[image][0][None]
    projection = build_mirror(default_model()).project(images, **selection)
    return np.asarray(to_pil(show_projection(projection)[0]))


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize(
    "path", ["/", "/api/layers", "/api/project.png?image=0&layer=features.4&channel=1&y=2&x=3", "/api/nothing"]
)
def test_every_request_without_the_token_is_refused(client: TestClient, path: str) -> None:
    for headers, extra in [
        ({}, ""),
        ({"Authorization": "token wrong"}, ""),
        ({}, "&token=wrong" if "?" in path else "?token=wrong"),
    ]:
        response = client.get(path + extra, headers=headers)
        assert response.status_code == 403
        assert "token" in response.json()["error"]
    assert client.get("/api/layers", headers=AUTH).status_code == 200
    assert client.get(f"/api/layers?token={TOKEN}").status_code == 200


def test_layers_are_the_mirror_layers(client: TestClient, served: tuple[TestClient, Session]) -> None:
    got = client.get("/api/layers", headers=AUTH).json()
    mirror = served[1].mirror
    assert [layer["name"] for layer in got["layers"]] == mirror.layer_names
    assert got["layers"][4] == {"name": "features.4", "kind": "ReLU", "shape": [64, 7, 7], "receptive_field": [27, 27]}
    assert got["rules"] == list(mirror.rules) and got["rules"][0] == "deconvnet"


@pytest.mark.parametrize(
    "query, status, names",
    [
        ("image=0&layer=nope&channel=1&y=0&x=0", 400, "'nope'"),
        ("image=0&layer=features.4&channel=64&y=0&x=0", 400, "channel 64"),
        ("image=0&layer=features.4&channel=-1&y=0&x=0", 400, "channel -1"),
        ("image=0&layer=features.4&channel=1&y=7&x=0", 400, "position (7, 0)"),
        ("image=0&layer=features.4&channel=1&y=2", 400, "both y and x"),
        ("image=0&layer=classifier.6&channel=1&y=0&x=0", 400, "no positions"),
        ("image=10000&layer=features.4&channel=1", 400, "image '10000'"),
        ("image=upload-0123&layer=features.4&channel=1", 400, "no such upload"),
        ("image=0&layer=features.4&channel=one", 400, "'channel' must be an integer"),
        ("image=0&channel=1", 400, "missing query parameter 'layer'"),
        ("image=0&target_class=10", 400, "channel 10"),
        ("image=0&layer=features.4&channel=1&y=0&x=0&rule=nope", 400, "unknown rule 'nope'"),
    ],
)
def test_a_bad_selection_is_a_one_line_json_4xx(client: TestClient, query: str, status: int, names: str) -> None:
    response = client.get(f"/api/project.png?{query}", headers=AUTH)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert names in error and "\n" not in error


@pytest.mark.parametrize(
    "path",
    [
        "/api/maps?image=0&layer=features.99",
        "/api/map.png?image=0&layer=features.4&channel=99",
        "/api/patch.png?image=0&layer=features.4&y=0&x=9",
        "/api/image.png?image=0&layer=nope&y=0&x=0",
        "/api/classes?image=-1",
        "/api/classes?image=%C2%B2",
        "/api/top9?layer=features.4&channel=0",
        "/api/nothing",
        "/api/images?start=-3",
        "/api/images?count=0",
    ],
)
def test_other_bad_requests_are_one_line_json_4xx(client: TestClient, path: str) -> None:
    response = client.get(path, headers=AUTH)
    assert 400 <= response.status_code < 500
    assert "\n" not in response.json()["error"]


@pytest.mark.parametrize(
    "image, query, selection",
    [
        (3, "layer=features.4&channel=13&y=1&x=2", {"layer": "features.4", "channel": 13, "position": (1, 2)}),
        (3, "layer=features.11&channel=10&y=3&x=0", {"layer": "features.11", "channel": 10, "position": (3, 0)}),
        (17, "layer=features.1&channel=30&map=1", {"layer": "features.1", "channel": 30, "position": "map"}),
        (17, "layer=features.7&channel=5", {"layer": "features.7", "channel": 5}),
        (3, "layer=classifier.4&channel=7", {"layer": "classifier.4", "channel": 7}),
        (42, "target_class=4", {"target_class": 4}),
        (
            3,
            "layer=features.4&channel=13&y=1&x=2&rule=guided",
            {"layer": "features.4", "channel": 13, "position": (1, 2), "rule": "guided"},
        ),
        (
            3,
            "layer=features.4&channel=13&y=1&x=2&rule=gradient",
            {"layer": "features.4", "channel": 13, "position": (1, 2), "rule": "gradient"},
        ),
        (17, "layer=features.7&channel=5&rule=gradient", {"layer": "features.7", "channel": 5, "rule": "gradient"}),
        (
            17,
            "layer=features.1&channel=30&map=1&rule=guided",
            {"layer": "features.1", "channel": 30, "position": "map", "rule": "guided"},
        ),
        (42, "target_class=4&rule=guided", {"target_class": 4, "rule": "guided"}),
    ],
)
def test_project_png_is_deconvs_renderer_on_mirror_project(
    client: TestClient, image: int, query: str, selection: dict
) -> None:
    response = client.get(f"/api/project.png?image={image}&{query}", headers=AUTH)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    got = pixels(response.content)
    assert got.shape == (28, 28, 3)
    assert (got == expected_png(image, **selection)).all()
    assert len(np.unique(got)) > 2  # a real picture, not a blank


def test_feature_maps_are_ordered_by_their_largest_activation(client: TestClient) -> None:
    model = default_model()
    outputs = {}
    model.features[7].register_forward_hook(lambda m, i, o: outputs.setdefault("x", o.clone()))
    with torch.no_grad():
        model(default_dataset()[5][0][None])
    peaks = outputs["x"][0].flatten(1).amax(1)
    got = client.get("/api/maps?image=5&layer=features.7", headers=AUTH).json()
    assert sorted(got["channels"]) == list(range(96))
    assert np.allclose(got["peaks"], peaks[got["channels"]].numpy(), atol=1e-5)
    assert got["peaks"] == sorted(got["peaks"], reverse=True) and got["peaks"][0] > got["peaks"][-1]
    assert got["map_shape"] == [4, 4] and not got["vectors"]
    grid = pixels(client.get("/api/maps.png?image=5&layer=features.7", headers=AUTH).content)
    (th, tw), gap, columns = got["tile"], got["gap"], got["columns"]
    assert grid.shape[1] == columns * (tw + gap) - gap and grid.shape[0] == -(-96 // columns) * (th + gap) - gap


@pytest.mark.parametrize("shape", [(5, 100, 60), (70, 3, 3), (3, 1, 1), (600, 14, 14)])
def test_the_grid_is_laid_out_as_its_layout_says(shape: tuple[int, int, int]) -> None:
    from deconv.serve.pictures import GAP, TILE, layout, tiles
    from deconv.serve.session import Maps

    maps = Maps(
        torch.rand(shape, generator=torch.Generator().manual_seed(0)),
        torch.arange(shape[0]),
        torch.zeros(shape[0]),
        False,
    )
    columns, (th, tw) = layout(maps)
    assert max(th, tw) <= TILE + max(shape[1:]) and min(th, tw) >= 1
    image = tiles(maps)
    rows = -(-shape[0] // columns)
    assert image.shape == (3, rows * (th + GAP) - GAP, columns * (tw + GAP) - GAP)
    if shape[1] <= TILE:  # enlarged, not resampled: the last tile is its map coloured on the layer's scale
        r, c = divmod(shape[0] - 1, columns)
        last = image[:, r * (th + GAP) : r * (th + GAP) + th, c * (tw + GAP) : c * (tw + GAP) + tw]
        expected = upscale(colormap(maps.maps[-1], 0.0, float(maps.maps.max())), th // shape[1])
        assert torch.equal(last, expected)


def test_patch_and_box_are_the_receptive_field(client: TestClient, served: tuple[TestClient, Session]) -> None:
    box = served[1].mirror.receptive_field("features.4", 0, 3, (1, 28, 28))
    assert box.top < 0  # partly outside the image: hatched
    patch = pixels(client.get("/api/patch.png?image=8&layer=features.4&y=0&x=3", headers=AUTH).content)
    image = default_dataset()[8][0][None]
    m = 13  # enough margin for this box
    padded = torch.nn.functional.pad(image, (m, m, m, m))
    valid = torch.nn.functional.pad(torch.ones_like(image, dtype=torch.bool), (m, m, m, m))
    where = (..., slice(box.top + m, box.bottom + m), slice(box.left + m, box.right + m))
    shown = show_patch(padded[where], default_preprocess().denormalize, valid[where])
    assert (patch == np.asarray(to_pil(upscale(shown, 9)[0]))).all()
    boxed = pixels(client.get("/api/image.png?image=8&layer=features.4&y=0&x=3", headers=AUTH).content)
    plain = pixels(client.get("/api/image.png?image=8", headers=AUTH).content)
    changed = np.argwhere((boxed != plain).any(2))
    assert changed[:, 0].min() == 0 and changed[:, 0].max() == box.bottom * 9 - 1
    assert changed[:, 1].min() == max(0, box.left * 9) and changed[:, 1].max() == min(251, box.right * 9 - 1)


def test_classes_and_browsing(client: TestClient) -> None:
    top = client.get("/api/classes?image=0", headers=AUTH).json()
    scores = default_model()(default_dataset()[0][0][None])[0].softmax(0)
    assert [c["class"] for c in top] == scores.topk(5).indices.tolist()
    assert top[0]["name"] == "Ankle boot"
    found = client.get("/api/images?start=10&count=4&class=2", headers=AUTH).json()
    labels = default_dataset().labels
    assert [int(f["image"]) for f in found] == [int(i) for i in np.nonzero(labels[10:] == 2)[0][:4] + 10]
    assert all(f["label"] == 2 for f in found)


def test_an_upload_projects_as_the_same_dataset_image(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.BytesIO()
    Image.fromarray(default_dataset().images[11]).save(buffer, "PNG")
    ref = client.post("/api/upload", content=buffer.getvalue(), headers=AUTH).json()["image"]
    assert ref.startswith("upload-")
    query = "layer=features.9&channel=3&y=1&x=2"
    got = client.get(f"/api/project.png?image={ref}&{query}", headers=AUTH)
    assert (pixels(got.content) == pixels(client.get(f"/api/project.png?image=11&{query}", headers=AUTH).content)).all()
    big = Image.fromarray(
        (np.arange(200 * 150 * 3) % 251).astype(np.uint8).reshape(150, 200, 3)
    )  # RGB, 200x150: fitted to 28x28
    buffer = io.BytesIO()
    big.save(buffer, "JPEG")
    ref = client.post("/api/upload", content=buffer.getvalue(), headers=AUTH).json()["image"]
    assert pixels(client.get(f"/api/image.png?image={ref}", headers=AUTH).content).shape == (252, 252, 3)

    too_big = client.post("/api/upload", content=b"\0" * (MAX_UPLOAD_BYTES + 1), headers=AUTH)
    assert too_big.status_code == 413 and "larger than" in too_big.json()["error"]
    garbage = client.post("/api/upload", content=b"not an image", headers=AUTH)
    assert garbage.status_code == 400 and garbage.json()["error"].startswith("uploaded file: cannot read image")
    assert "/tmp" not in garbage.json()["error"]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)  # Pillow's decompression-bomb limit, made small
    bomb = client.post("/api/upload", content=buffer.getvalue(), headers=AUTH)
    assert bomb.status_code == 400 and "decompression bomb" in bomb.json()["error"]


def test_the_cache_is_bounded() -> None:
    model = default_model()
    one = Session(build_mirror(model), default_dataset(), default_preprocess())
    size = one.traced("0").nbytes  # the image and its trace: every output, every rule's memory
    session = Session(build_mirror(model), default_dataset(), default_preprocess(), cache_bytes=int(2.5 * size))
    for i in range(20):
        session.maps(str(i), "features.1")
    assert len(session.views.entries) == 2
    assert [key[1] for key in session.views.entries] == ["18", "19"]


def test_a_click_walks_only_down_from_the_cached_trace(
    served: tuple[TestClient, Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, session = served
    assert client.get("/api/maps?image=30&layer=features.9", headers=AUTH).status_code == 200  # the image's trace
    walks = []
    graph_run = session.mirror.graph.run
    monkeypatch.setattr(session.mirror.graph, "run", lambda *a, **k: walks.append(1) or graph_run(*a, **k))
    for rule in ("", "&rule=guided", "&rule=gradient"):  # positions, the strongest, other rules: no forward walk
        for query in (
            "layer=features.9&channel=3&y=1&x=2",
            "layer=features.4&channel=7",
            "layer=classifier.2&channel=9",
        ):
            assert client.get(f"/api/project.png?image=30&{query}{rule}", headers=AUTH).status_code == 200
    assert client.get("/api/project.png?image=30&target_class=3&rule=guided", headers=AUTH).status_code == 200
    assert client.get("/api/classes?image=30", headers=AUTH).status_code == 200
    assert client.get("/api/maps.png?image=30&layer=features.1", headers=AUTH).status_code == 200
    assert walks == []


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serve") / "run"
    assert (
        main(
            [
                "top9",
                "--config",
                str(ROOT / "configs/default.toml"),
                "--out",
                str(out),
                "--layers",
                "features.4",
                "--limit",
                "300",
                "--per-sheet",
                "16",
                "--no-progress",
            ]
        )
        == 0
    )
    return out


def test_a_top9_run_links_each_channel_to_its_panel(run: Path) -> None:
    from deconv.serve.records import Run

    model = default_model()
    mirror = build_mirror(model)
    session = Session(mirror, default_dataset(), default_preprocess(), model.classes)
    client = TestClient(create_app(session, TOKEN, Run(run, mirror.layer_names, 10000)))
    assert client.get("/api/maps?image=0&layer=features.4", headers=AUTH).json()["top9"] == list(range(64))
    records = client.get("/api/top9?layer=features.4&channel=37", headers=AUTH).json()
    written = sorted(
        (r for r in json.loads((run / "top9.json").read_text()) if r["channel"] == 37 and r["layer"] == "features.4"),
        key=lambda r: r["rank"],
    )
    assert records == [{k: r[k] for k in ("layer", "channel", "rank", "index", "y", "x", "value")} for r in written]
    panel = pixels(client.get("/api/top9.png?layer=features.4&channel=37", headers=AUTH).content)
    from deconv.figures.report import sheet_panels

    where = sheet_panels(run, "features.4")[37]  # where sheets.json says the sheet has channel 37's panel
    with Image.open(run / where.sheet) as whole:
        assert (panel == np.asarray(whole.convert("RGB").crop(where.box))).all()  # the report's own cut of the sheet
    missing = client.get("/api/top9?layer=features.1&channel=0", headers=AUTH)
    assert missing.status_code == 400 and "no records" in missing.json()["error"]


def test_serve_without_the_extra_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'deconv[serve]'" in err


@pytest.mark.parametrize("args, names", [(["--run", "/nonexistent/run"], "top9.json"), (["--port", "70000"], "'port'")])
def test_serve_refuses_bad_settings_in_one_line(args: list[str], names: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["serve", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and names in err


def start_server(*args: str) -> tuple[subprocess.Popen, str]:
    """``deconv serve`` in a subprocess on a free loopback port: the process and the URL it printed (with the token)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "deconv", "serve", "--config", str(ROOT / "configs/default.toml"), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    line = process.stdout.readline()
    if "http://" not in line:
        process.kill()
        raise AssertionError(f"deconv serve did not print its URL: {line!r} {process.stderr.read()[-2000:]}")
    return process, line.split("open ", 1)[1].split()[0]


def test_the_command_serves_on_loopback_with_a_token() -> None:
    process, url = start_server()
    try:
        assert url.startswith("http://127.0.0.1:") and "/?token=" in url
        base, token = url.split("/?token=")
        assert len(token) >= 32
        with urllib.request.urlopen(f"{base}/api/layers?token={token}", timeout=60) as response:
            assert json.loads(response.read())["layers"][0]["name"] == "features.0"
        request = urllib.request.Request(f"{base}/api/layers", headers={"Authorization": f"token {token}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/api/layers", timeout=60)
        assert refused.value.code == 403
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_cache_counts_each_entry_once_however_full(monkeypatch: pytest.MonkeyPatch) -> None:
    model = default_model()
    size = Session(build_mirror(model), default_dataset(), default_preprocess()).traced("0").nbytes
    session = Session(build_mirror(model), default_dataset(), default_preprocess(), cache_bytes=40 * size)
    for i in range(60):  # full: 40 entries
        session.maps(str(i), "features.1")
    counted = []
    nbytes = Viewed.nbytes.fget
    monkeypatch.setattr(Viewed, "nbytes", property(lambda v: counted.append(v) or nbytes(v)))
    session.maps("60", "features.1")  # a new image: counted when made and when traced
    session.maps("60", "features.4")  # cached: not counted
    session.maps("59", "features.4")
    assert len(counted) == 2
    assert len(session.views.entries) == 40 and [key[1] for key in session.views.entries][-2:] == ["60", "59"]
    assert session.views.total == sum(nbytes(v) for v in session.views.entries.values()) <= 40 * size


FIVE_THOUSAND_DIGITS = "9" * 5000


@pytest.mark.parametrize(
    "path, names",
    [
        ("/api/images?class=99999999999999999999", "'class' must be an integer of at most 18 digits"),
        ("/api/images?class=-99999999999999999999", "'class'"),
        ("/api/images?start=99999999999999999999", "'start'"),
        ("/api/classes?image=0&top=-1", "top must be >= 1"),
        ("/api/classes?image=0&top=0", "top must be >= 1"),
        (f"/api/classes?image=0&top={FIVE_THOUSAND_DIGITS}", "'top'"),
        (f"/api/classes?image={FIVE_THOUSAND_DIGITS}", "is not in the dataset"),
        (f"/api/image.png?image={FIVE_THOUSAND_DIGITS}", "is not in the dataset"),
        (f"/api/patch.png?image={FIVE_THOUSAND_DIGITS}&layer=features.4&y=0&x=0", "is not in the dataset"),
        (f"/api/maps?image={FIVE_THOUSAND_DIGITS}&layer=features.4", "is not in the dataset"),
        (f"/api/maps.png?image={FIVE_THOUSAND_DIGITS}&layer=features.4", "is not in the dataset"),
        (f"/api/map.png?image={FIVE_THOUSAND_DIGITS}&layer=features.4&channel=0", "is not in the dataset"),
        (f"/api/project.png?image={FIVE_THOUSAND_DIGITS}&layer=features.4&channel=0", "is not in the dataset"),
        ("/api/project.png?image=0&layer=features.4&channel=1_0", "'channel' must be an integer"),
        ("/api/project.png?image=0&layer=features.4&channel=%EF%BC%91", "'channel' must be an integer"),
        ("/api/project.png?image=0&layer=features.4&channel=1&y=%201&x=0", "'y' must be an integer"),
        ("/api/project.png?image=0&layer=features.4&channel=1&map=1&y=0&x=0", "not both"),
        ("/api/project.png?image=0&target_class=1&layer=features.4&channel=2", "leave out layer, channel"),
    ],
)
def test_huge_odd_or_conflicting_numbers_are_one_line_json_4xx(client: TestClient, path: str, names: str) -> None:
    response = client.get(path, headers=AUTH)
    assert 400 <= response.status_code < 500 and response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert names in error and "\n" not in error


RECORD = {"layer": "features.4", "channel": 0, "rank": 0, "index": 1, "path": None, "y": 0, "x": 0, "value": 1.5}


@pytest.mark.parametrize(
    "top9, manifest, names",
    [
        (json.dumps([RECORD, {**RECORD, "rank": "1"}]), None, "record 1 has a missing or wrong rank"),
        (json.dumps([RECORD, {**RECORD, "rank": 1.0}]), None, "record 1 has a missing or wrong rank"),
        (json.dumps([{**RECORD, "index": 1.0}]), None, "wrong index"),
        (json.dumps([{**RECORD, "channel": True}]), None, "wrong channel"),
        (json.dumps([{**RECORD, "y": "0"}]), None, "wrong y"),
        (json.dumps([{k: v for k, v in RECORD.items() if k != "x"}]), None, "wrong x"),
        (json.dumps([{**RECORD, "value": "big"}]), None, "wrong value"),
        (json.dumps([{**RECORD, "value": float("nan")}]), None, "value (not finite)"),
        (json.dumps([RECORD, [1, 2]]), None, "record 1 is a list"),
        (json.dumps({"records": [RECORD]}), None, "it holds a dict"),
        (json.dumps([RECORD]), "[{", "cannot read"),
        (json.dumps([RECORD]), '[{"layer": "features.4"}]', "cannot read"),
        (json.dumps([RECORD]), '{"sheets": 1}', "cannot read"),
        (json.dumps([RECORD]), json.dumps([{"sheet": "../top9.png", "layer": "features.4"}]), "not a PNG in"),
    ],
)
def test_serve_refuses_a_run_with_records_of_wrong_types_in_one_line(
    top9: str, manifest: str | None, names: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import uvicorn

    monkeypatch.setattr(uvicorn.Server, "run", lambda *a, **k: pytest.fail("served a run it should refuse"))
    (tmp_path / "top9.json").write_text(top9)
    if manifest is not None:
        (tmp_path / "sheets.json").write_text(manifest)
    assert main(["serve", "--run", str(tmp_path), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and names in err


def test_a_damaged_sheet_is_a_one_line_json_4xx(tmp_path: Path) -> None:
    from deconv.serve.records import Run

    (tmp_path / "top9.json").write_text(json.dumps([RECORD]))
    (tmp_path / "sheets").mkdir()
    (tmp_path / "sheets" / "features.4-1.png").write_bytes(b"not a png")
    box = {"channel": 0, "panel": [0, 0, 4, 4], "rules": {"deconvnet": [0, 0, 2, 4]}, "patches": [2, 0, 4, 4]}
    entry = {"sheet": "sheets/features.4-1.png", "layer": "features.4", "size": [4, 4], "panels": [box]}
    (tmp_path / "sheets.json").write_text(json.dumps([entry]))
    mirror = build_mirror(default_model())
    session = Session(mirror, default_dataset(), default_preprocess())
    client = TestClient(create_app(session, TOKEN, Run(tmp_path, mirror.layer_names, 10000)))
    response = client.get("/api/top9.png?layer=features.4&channel=0", headers=AUTH)
    assert response.status_code == 400 and "sheet of layer 'features.4' cannot be read" in response.json()["error"]
    assert str(tmp_path) not in response.json()["error"]


def test_an_upload_over_the_pixel_cap_is_refused_before_any_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    from deconv.serve.session import UPLOAD_PIXELS

    mirror = build_mirror(default_model())
    session = Session(mirror, default_dataset(), replace(default_preprocess(), size=1025))
    monkeypatch.setattr(mirror, "shape", lambda *a: pytest.fail("walked an image over the cap"))
    buffer = io.BytesIO()
    Image.new("L", (1025, 1100)).save(buffer, "PNG")
    response = TestClient(create_app(session, TOKEN)).post("/api/upload", content=buffer.getvalue(), headers=AUTH)
    assert response.status_code == 400 and "1025x1100 pixels" in response.json()["error"]
    assert f"{UPLOAD_PIXELS:,}" in response.json()["error"]
