"""``deconv serve`` in a real browser: Debian's headless chromium driven through Selenium and chromedriver.

The page is opened with the token; an image, a layer, a channel (in the grid) and a position (in the
enlarged map) are picked by clicks; the projection that appears must equal, pixel for pixel, deconv's
renderer on ``mirror.project`` for that selection. Without the token the server refuses. With ``--run``, the
run's static report is served at ``/run/`` and a unit page's entries open the live page.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from deconv.commands.main import main
from deconv.figures.draw import show_projection, to_pil
from deconv.mirror import build_mirror
from deconv.serve.app import create_app
from deconv.serve.records import Run
from deconv.serve.session import Session
from deconv.zoo.models import default_dataset, default_model, default_preprocess

from .test_app import ROOT, TOKEN, start_server

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1500,1000",
)
PIXELS = """
const img = document.getElementById(arguments[0]);
const canvas = document.createElement("canvas");
canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
const context = canvas.getContext("2d");
context.drawImage(img, 0, 0);
return [img.naturalWidth, img.naturalHeight, Array.from(context.getImageData(0, 0, canvas.width, canvas.height).data)];
"""


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    assert CHROMIUM and CHROMEDRIVER, (
        "needs Debian's chromium and chromium-driver: scripts/system-packages.sh (run by `make test`) installs them"
    )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: Any, condition: str, *args: Any, timeout: float = 60) -> Any:
    """Waits until the JavaScript expression ``condition`` (``arguments`` are ``args``) is truthy."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: d.execute_script(f"return {condition};", *args))


def click_at(driver: Any, element_id: str, x: float, y: float) -> None:
    """Clicks the element at ``(x, y)`` CSS pixels from its top-left corner."""
    from selenium.webdriver.common.action_chains import ActionChains

    element = driver.find_element("id", element_id)
    width, height = element.size["width"], element.size["height"]
    ActionChains(driver).move_to_element_with_offset(element, x - width / 2, y - height / 2).click().perform()


def ready(driver: Any, element_id: str) -> None:
    wait(driver, "document.getElementById(arguments[0]).dataset.ready", element_id)


def test_pick_image_layer_channel_position_and_see_the_projection(browser: Any) -> None:
    process, url = start_server()
    try:
        base, token = url.split("/?token=")
        browser.get(url)
        wait(browser, "document.getElementById('layer').options.length > 0")
        ready(browser, "grid")

        index = browser.find_element("id", "index")  # pick an image by its index
        index.clear()
        index.send_keys("21\t")
        wait(browser, "document.getElementById('imagename').textContent === '#21'")

        from selenium.webdriver.support.ui import Select

        Select(browser.find_element("id", "layer")).select_by_value("features.4")
        with urllib.request.urlopen(f"{base}/api/maps?image=21&layer=features.4&token={token}", timeout=60) as response:
            layout = json.loads(response.read())
        wait(
            browser,
            "document.getElementById('grid').dataset.ready"
            " && document.getElementById('grid').naturalWidth === arguments[0]",
            layout["columns"] * (layout["tile"][1] + layout["gap"]) - layout["gap"],
        )

        rank = 1  # the second strongest feature map: click the middle of its tile
        row, column = divmod(rank, layout["columns"])
        (th, tw), gap = layout["tile"], layout["gap"]
        grid = browser.find_element("id", "grid")
        s = grid.size["width"] / browser.execute_script("return document.getElementById('grid').naturalWidth")
        click_at(browser, "grid", (column * (tw + gap) + tw / 2) * s, (row * (th + gap) + th / 2) * s)
        channel = layout["channels"][rank]
        wait(browser, "document.getElementById('channelname').textContent === arguments[0]", str(channel))
        ready(browser, "map")

        h, w = layout["map_shape"]
        image = default_dataset()[21][0][None]
        mirror = build_mirror(default_model())
        maps = mirror.activations(image, ["features.4"])["features.4"][0, channel]
        y, x = divmod(int(maps.argmax()), w)  # click the strongest position in the enlarged map
        shown = browser.find_element("id", "map").size
        click_at(browser, "map", (x + 0.5) * shown["width"] / w, (y + 0.5) * shown["height"] / h)
        wait(browser, "document.getElementById('projcap').textContent.endsWith(arguments[0])", f"at ({y}, {x})")
        for view in ("projection", "patch", "boxed"):
            ready(browser, view)
        assert f"y={y}" in browser.current_url and f"channel={channel}" in browser.current_url

        width, height, data = browser.execute_script(PIXELS, "projection")
        got = np.array(data, dtype=np.uint8).reshape(height, width, 4)
        projection = mirror.project(image, "features.4", channel, (y, x))
        expected = np.asarray(to_pil(show_projection(projection)[0]))
        assert (got[..., 3] == 255).all()
        assert (got[..., :3] == expected).all(), (
            "the projection in the page differs from deconv's renderer on mirror.project"
        )
        assert len(np.unique(expected)) > 2

        browser.get(base + "/")  # without the token
        assert "403" not in browser.title
        body = browser.find_element("tag name", "body").text
        assert "missing or wrong token" in body
        assert browser.execute_script("return document.getElementById('grid') === null")
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A top9 run of the default over 60 images: a ReLU's channels, with their unit pages."""
    out = tmp_path_factory.mktemp("live") / "run"
    config = str(ROOT / "configs/default.toml")
    flags = ["--layers", "features.4", "--limit", "60", "--no-progress", "--out", str(out)]
    assert main(["top9", "--config", config, *flags]) == 0
    return out


def test_the_report_is_served_from_the_run_files_deconv_wrote_only(run: Path) -> None:
    from starlette.testclient import TestClient

    mirror = build_mirror(default_model())
    session = Session(mirror, default_dataset(), default_preprocess())
    client = TestClient(create_app(session, TOKEN, Run(run, mirror.layer_names, 10000)))
    assert client.get("/run/index.html").status_code == 403  # no token, no cookie
    first = client.get(f"/run/index.html?token={TOKEN}")
    assert first.status_code == 200 and first.headers["content-type"].startswith("text/html")
    assert first.content == (run / "index.html").read_bytes()
    assert "HttpOnly" in first.headers["set-cookie"] and "SameSite=strict" in first.headers["set-cookie"]
    page = client.get("/run/units/features.4/37.html")  # the cookie carries on, as the report's relative links do
    assert page.status_code == 200 and page.content == (run / "units/features.4/37.html").read_bytes()
    assert client.get("/run/sheets/features.4-1.png").headers["content-type"] == "image/png"
    assert client.get("/run/pages.css").headers["content-type"].startswith("text/css")
    assert client.get("/run/thumbs/features.4/37.jpg").content == (run / "thumbs/features.4/37.jpg").read_bytes()
    assert client.get("/api/layers").status_code == 200  # the live page's requests too
    (run / "mine.html").write_text("not deconv's")
    for name in ("top9.json", "census.npz", "mine.html", "../index.html", "state/rank0.pt", "deconv-run.json"):
        refused = client.get(f"/run/{name}")
        assert refused.status_code in (403, 404) and "error" in refused.json(), name
    (run / "mine.html").unlink()
    client.cookies.clear()
    assert client.get("/run/units/features.4/37.html").status_code == 403


def test_a_unit_page_of_the_served_report_opens_its_entry_live(run: Path, browser: Any) -> None:
    process, url = start_server("--run", str(run))
    try:
        base, token = url.split("/?token=")
        browser.get(url)
        wait(browser, "document.getElementById('report') !== null")
        browser.find_element("id", "report").click()  # the live page links to the run's report
        wait(browser, "location.pathname === '/run/index.html' && document.images.length > 0")
        browser.get(f"{base}/run/units/features.4/37.html")  # the cookie, not the token, opens the pages
        wait(browser, "document.querySelectorAll('a.live:not([hidden])').length === 10")  # 9 entries, the channel
        images = browser.execute_script("return [...document.images].map(i => [i.complete, i.naturalWidth])")
        assert images and all(done and width > 0 for done, width in images)  # the sheets and the inline hit map
        styled = "return getComputedStyle(document.body).backgroundColor"
        assert browser.execute_script(styled) == "rgb(250, 250, 250)"  # the pages' stylesheet
        records = json.loads((run / "top9.json").read_text())
        second = next(r for r in records if (r["layer"], r["channel"], r["rank"]) == ("features.4", 37, 1))
        links = browser.find_elements("css selector", "table a.live")
        links[1].click()  # the second entry, live: that image, layer, channel and position
        wait(
            browser,
            "(document.getElementById('projcap') || {textContent: ''}).textContent.endsWith(arguments[0])",
            f"at ({second['y']}, {second['x']})",
        )
        assert (
            browser.execute_script("return document.getElementById('imagename').textContent") == f"#{second['index']}"
        )
        assert browser.execute_script("return document.getElementById('channelname').textContent") == "37"
        ready(browser, "projection")
    finally:
        process.terminate()
        process.wait(timeout=30)
