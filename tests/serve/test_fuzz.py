"""Fuzzing ``deconv serve``'s HTTP API (issue 22): random query strings (odd, huge, negative and conflicting
values, random text) and random upload bodies on every endpoint. Each answer is a 200 or a one-line JSON
4xx, never a 500."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from starlette.testclient import TestClient

from deconv.mirror import build_mirror
from deconv.serve.app import create_app
from deconv.serve.records import Run
from deconv.serve.session import Session
from deconv.zoo.models import default_dataset, default_model, default_preprocess

TOKEN = "fuzz-token"
AUTH = {"Authorization": f"token {TOKEN}"}
ENDPOINTS = [
    "/api/dataset",
    "/api/images",
    "/api/layers",
    "/api/image.png",
    "/api/patch.png",
    "/api/classes",
    "/api/maps",
    "/api/maps.png",
    "/api/map.png",
    "/api/project.png",
    "/api/top9",
    "/api/top9.png",
]
NUMBERS = st.one_of(
    st.integers(-3, 12),
    st.sampled_from([2**31, 2**63, -(2**63) - 1, 10**18 - 1, 10**18, 10**20, -(10**20), 9999, 10000]),
).map(str)
ODD = st.sampled_from(
    [
        "",
        " 1",
        "1_0",
        "+1",
        "0x1",
        "1e3",
        "1.0",
        "nan",
        "inf",
        "\uff11",  # a full-width 1
        "\u00b2",
        "\x00",
        "-",
        "--1",
        "9" * 5000,
        "-" + "9" * 5000,
        "0" * 30 + "1",
        "upload-0123456789abcdef",
        "upload-",
        "../top9.json",
        "features.1",
        "features.4",
        "features.11",
        "classifier.6",
        "flatten",
        "nope",
        "deconvnet",
        "guided",
        "gradient",
        "x" * 300,
    ]
)
VALUES = st.one_of(NUMBERS, ODD, st.text(max_size=12))
VALID = {"image": "3", "layer": "features.4", "channel": "1", "y": "1", "x": "2", "rule": "guided", "top": "5"}
VALID |= {"start": "0", "count": "4", "class": "2", "map": "1", "target_class": "4"}
BASE = [(name, value) for name, value in VALID.items() if name not in ("map", "target_class")]  # a position


def mutated(changes: list[tuple[str, str, str | None]]) -> list[tuple[str, str]]:
    """``BASE`` with each change applied: a parameter set to a value (``None``: dropped) or added once more."""
    query = dict(BASE)
    extra = []
    for how, name, value in changes:
        if how == "add" and value is not None:
            extra.append((name, value))
        elif value is None:
            query.pop(name, None)
        else:
            query[name] = value
    return [*query.items(), *extra]


QUERIES = st.lists(
    st.tuples(st.sampled_from(["set", "add"]), st.sampled_from(list(VALID)), st.one_of(st.none(), VALUES)), max_size=4
).map(mutated)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    out = tmp_path_factory.mktemp("run")
    record = {"layer": "features.4", "channel": 1, "rank": 0, "index": 3, "path": None, "y": 1, "x": 2, "value": 2.5}
    (out / "top9.json").write_text(json.dumps([record, {**record, "rank": 1, "index": 5}]))
    (out / "sheets").mkdir()
    Image.new("RGB", (120, 130), "gray").save(out / "sheets" / "features.4-1.png")
    model = default_model()
    mirror = build_mirror(model)
    session = Session(mirror, default_dataset(), default_preprocess(), model.classes)
    return TestClient(create_app(session, TOKEN, Run(out, mirror.layer_names, 10000)), raise_server_exceptions=False)


def check(response, what: str) -> None:
    """A 200 (JSON or PNG) or a one-line JSON 4xx."""
    kind = response.headers.get("content-type", "")
    assert response.status_code == 200 or 400 <= response.status_code < 500, (what, response.status_code, response.text)
    if response.status_code == 200:
        assert kind in ("application/json", "image/png"), (what, kind)
    else:
        assert kind == "application/json", (what, kind)
        error = response.json()["error"]
        assert error and "\n" not in error, (what, error)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(endpoint=st.sampled_from(ENDPOINTS), query=QUERIES)
def test_any_query_is_200_or_one_line_json_4xx(client: TestClient, endpoint: str, query: list) -> None:
    path = f"{endpoint}?{urlencode(query)}"
    check(client.get(path, headers=AUTH), path)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(st.binary(max_size=64), st.sampled_from([b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b"GIF89a"])))
def test_any_upload_is_200_or_one_line_json_4xx(client: TestClient, body: bytes) -> None:
    check(client.post("/api/upload", content=body, headers=AUTH), repr(body[:20]))
