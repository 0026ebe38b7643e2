"""The unit pages and layer pages of a top9 run: one per channel, holding the census's numbers of that unit,
every link resolving; the bottom entries projected with their own negative values (against the oracle), a
rectified layer and an unlabelled dataset said so; and a user's clicks in a real browser (index, layer page,
sort, unit page, next and previous)."""

from __future__ import annotations

import base64
import html
import io
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
import oracle
import pytest
import torch
from PIL import Image
from serve.test_browser import browser, wait  # noqa: F401 - the fixture, used by the browser test

from deconv.census import Census
from deconv.commands.main import main
from deconv.mirror import build_mirror
from deconv.zoo.models import default_dataset, default_model

from .test_report import NET

ROOT = Path(__file__).parents[2]
CONFIG = str(ROOT / "configs" / "default.toml")


class Page(HTMLParser):
    """A page's links (``href``, ``src``), ids, the text of its table cells by table (rows of cells, each cell's
    text and ``data-v``), and its charts by class: their texts (``<title>``, ``<text>``) and attributes."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.rels: dict[str, str] = {}
        self.tables: list[dict] = []
        self.charts: dict[str, list[str]] = {}
        self.chart_attrs: dict[str, dict] = {}
        self._cell: list[str] | None = None
        self._chart: str | None = None
        self._title: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.links += [found[k] for k in ("href", "src") if found.get(k) is not None]
        if found.get("id"):
            self.ids.add(found["id"])
        if tag == "a" and found.get("rel"):
            self.rels[found["rel"]] = found["href"]
        if tag == "table":
            self.tables.append({"class": found.get("class") or "", "rows": []})
        elif tag == "tr":
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th"):
            self._cell = []
            self.tables[-1]["rows"][-1].append({"v": found.get("data-v"), "head": tag == "th"})
        if found.get("class") in ("histogram", "classes", "hits"):
            self.chart_attrs[found["class"]] = found
        if tag == "svg":
            self._chart = found.get("class") or ""
            self.charts.setdefault(self._chart, [])
        elif tag in ("title", "text") and self._chart is not None:
            self._title = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1]["rows"][-1][-1]["text"] = "".join(self._cell).strip()
            self._cell = None
        elif tag in ("title", "text") and self._title is not None:
            self.charts[self._chart].append("".join(self._title))
            self._title = None
        elif tag == "svg":
            self._chart = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._title is not None:
            self._title.append(data)

    def table(self, n: int) -> list[list[str]]:
        """Table ``n``'s body rows, as cell texts."""
        return [[c["text"] for c in row] for row in self.tables[n]["rows"] if not row[0]["head"]]


def _close(text: str, value: float) -> bool:
    """Whether a number shown with 4 significant digits is ``value``."""
    return abs(float(text.rstrip("%")) - value) <= 5e-4 * max(abs(value), 1e-300) + 1e-12


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model over 120 labelled Fashion-MNIST images: a convolution's output (below zero too) and a
    ReLU's (rectified), 20 channels a sheet, the projections saved."""
    out = tmp_path_factory.mktemp("pages") / "run"
    flags = ["--limit", "120", "--layers", "features.0", "features.4", "--per-sheet", "20"]
    assert (
        main(["top9", "--config", CONFIG, *flags, "--save-projections", "npy", "--out", str(out), "--no-progress"]) == 0
    )
    return out


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small net over a folder of images with no class subfolders (no labels), two rules."""
    root = tmp_path_factory.mktemp("unlabelled")
    (root / "net.py").write_text(NET)
    g = torch.Generator().manual_seed(0)
    (root / "data").mkdir()
    for n in range(16):
        Image.fromarray((torch.rand(28, 28, generator=g) * 255).byte().numpy(), "L").save(root / "data" / f"{n}.png")
    out = root / "run"
    model = ["--model", f"{root / 'net.py'}:make", "--data", str(root / "data"), "--out", str(out), "--no-progress"]
    assert main(["top9", *model, "--layers", "0", "1", "--rules", "deconvnet", "guided"]) == 0
    return out


def _page(out: Path, layer: str, channel: int) -> Page:
    return Page((out / "units" / layer / f"{channel}.html").read_text())


def test_a_page_per_channel_holds_the_census_of_its_unit(labelled: Path) -> None:
    census = Census.load(labelled)
    assert census.layers == ["features.0", "features.4"] and census.labelled
    for layer in census.layers:
        pages = sorted(int(p.stem) for p in (labelled / "units" / layer).glob("*.html"))
        assert pages == list(range(census.channels(layer)))
        table = census.table(layer)
        for channel in pages:
            unit, page = census.unit(layer, channel), _page(labelled, layer, channel)
            stats = dict(page.table(0))
            assert stats["images scanned"] == "120"
            assert stats["active (max > 0)"] == f"{unit.active:.1%} ({round(unit.active * 120)} images)"
            assert _close(stats["mean of the per-image maximum"], unit.mean)
            assert _close(stats["its standard deviation"], unit.std)
            assert _close(stats["strongest activation"], float(table["max"][channel]))
            assert _close(stats["lowest activation"], float(table["min"][channel]))
            for q, value in unit.quantiles.items():
                assert _close(stats[f"quantile {q:g}"], value)
            assert stats["receptive field"] == (
                "7 x 7 px, stride 2" if layer == "features.0" else "27 x 27 px, stride 4"
            )
            tops = page.table(1)
            assert [int(r[2]) for r in tops] == [r.index for r in unit.top]
            assert all(_close(row[1], r.value) for row, r in zip(tops, unit.top))
            assert [row[3] for row in tops] == [f"{r.y}, {r.x}" for r in unit.top]
            # the histogram's bars are the census's counts; the quantiles are marked
            edges, counts = unit.histogram
            assert page.chart_attrs["histogram"]["data-counts"] == " ".join(str(int(n)) for n in counts)
            assert (
                len(page.chart_attrs["histogram"])
                and page.charts["histogram"].count("per-image maximum (images per bin; red: quantiles)") == 1
            )
            marked = [t for t in page.charts["histogram"] if t.startswith("quantile")]
            assert marked == [f"quantile {q:g}: {v:.4g}" for q, v in unit.quantiles.items()]
            # the hit map: a pixel per position, its counts row by row
            hits = page.chart_attrs["hits"]
            h, w = unit.hits.shape
            assert hits["data-hits"] == " ".join(str(int(n)) for n in unit.hits.flatten())
            with Image.open(io.BytesIO(base64.b64decode(hits["src"].split(",", 1)[1]))) as shown:
                assert shown.size == (w, h)
                darkest = np.asarray(shown.convert("L")).argmin()
            assert unit.hits.flatten()[darkest] == unit.hits.max()
            # a bar per class: its mean and how many of its images activate the unit
            texts = page.charts["classes"]
            for c in unit.classes:
                assert c.name in texts and f"{c.mean:.4g} · {c.active} of {c.images} active" in texts
            named = ", ".join(f"{name} ×{n}" for name, n in unit.top_classes)
            assert f"Classes in its top 9: {named}." in html.unescape(
                (labelled / "units" / layer / f"{channel}.html").read_text()
            )


def test_every_link_of_the_pages_resolves_and_channels_link_to_their_neighbours(labelled: Path) -> None:
    pages = [labelled / "index.html", *sorted((labelled / "layers").glob("*.html"))]
    pages += sorted((labelled / "units").rglob("*.html"))
    assert len(pages) == 1 + 2 + 32 + 64
    for path in pages:
        page = Page(path.read_text())
        for link in page.links:
            parts = urlsplit(link)
            if parts.scheme == "data":  # the hit map, inline
                assert link.startswith("data:image/png;base64,")
                continue
            assert not parts.scheme and not parts.netloc, f"{path}: not a relative link: {link}"
            if parts.path:
                assert (path.parent / unquote(parts.path)).resolve().is_file(), f"{path}: broken link {link}"
    index = Page((labelled / "index.html").read_text())
    assert {"layers/features.0.html", "layers/features.4.html"} <= set(map(unquote, index.links))
    assert {f"units/features.4/{c}.html" for c in range(64)} <= set(map(unquote, index.links))  # each thumbnail
    for c in (0, 5, 63):
        page = _page(labelled, "features.4", c)
        assert page.rels.get("prev") == (f"../../units/features.4/{c - 1}.html" if c else None)
        assert page.rels.get("next") == (f"../../units/features.4/{c + 1}.html" if c < 63 else None)
        assert "../../layers/features.4.html" in page.links
    layer = Page((labelled / "layers" / "features.4.html").read_text())
    rows = layer.tables[0]["rows"][1:]
    assert [int(row[0]["v"]) for row in rows] == list(range(64))
    table = Census.load(labelled).table("features.4")
    headings = [c["text"] for c in layer.tables[0]["rows"][0]][2:]
    keys = dict(
        zip(
            ["active", "mean max", "std", "strongest", "lowest", "class-selective"],
            ["active", "mean", "std", "max", "min", "selectivity"],
        )
    )
    for n, heading in enumerate(headings):  # each column sorts by the census's own value
        assert [float(row[n + 2]["v"]) for row in rows] == table[keys[heading]].tolist()


def test_bottom_entries_are_projected_with_their_own_negative_values(labelled: Path) -> None:
    """features.0 (a convolution) goes below zero: its bottom records are drawn on sheets of their own and each
    projection, saved at full resolution, is the oracle's deconvnet seeded with that record's negative value."""
    manifest = json.loads((labelled / "sheets.json").read_text())
    bottom = [e for e in manifest if e["which"] == "bottom"]
    assert [e["sheet"] for e in bottom] == [f"sheets/features.0-{n}.bottom.png" for n in (1, 2)]
    assert all((labelled / e["sheet"]).is_file() for e in manifest)
    assert {e["sheet"] for e in manifest if e["which"] == "top"} == {
        *(f"sheets/features.0-{n}.png" for n in (1, 2)),
        *(f"sheets/features.4-{n}.png" for n in (1, 2, 3, 4)),
    }
    census = Census.load(labelled)
    model = default_model().double()
    mirror = build_mirror(model)
    dataset = default_dataset()
    checked = 0
    for channel in (0, 7, 31):
        records = census.bottom("features.0", channel)
        assert len(records) == 9 and all(r.value < 0 for r in records)
        assert f"sheets/features.0-{1 + channel // 20}.bottom.png" in unquote(
            (labelled / "units" / "features.0" / f"{channel}.html").read_text()
        )
        for r in records:
            saved = torch.from_numpy(
                np.load(labelled / "projections-bottom" / "features.0" / f"{channel}-{r.rank}.npy")
            )
            image = dataset[r.index][0][None].double()
            assert float(oracle.activation(model, image, "features.0")[0, channel, r.y, r.x]) == pytest.approx(
                r.value, rel=1e-5
            )
            full = oracle.project(model, image, [(0, "features.0", channel, r.y, r.x)])[0]
            box = mirror.receptive_field("features.0", r.y, r.x, tuple(image.shape[1:]))
            if box.top < 0 or box.left < 0 or box.bottom > 28 or box.right > 28:
                continue  # the part beyond the image is zero in the saved box: compared inside only below
            expected = full[:, box.top : box.bottom, box.left : box.right]
            assert float(full.abs().sum()) == pytest.approx(float(expected.abs().sum()), rel=1e-12)  # all inside
            torch.testing.assert_close(saved.double(), expected, rtol=1e-4, atol=1e-6)  # float32 run
            checked += 1
    assert checked >= 10


def test_a_rectified_layer_has_no_bottom_sheet_and_its_pages_say_where_to_look(labelled: Path) -> None:
    census = Census.load(labelled)
    for channel in range(64):
        assert census.unit("features.4", channel).rectified
        text = (labelled / "units" / "features.4" / f"{channel}.html").read_text()
        assert "Its bottom 9 are all zero" in text and "<code>--layers features.3</code>" in text
        assert ".bottom.png" not in text
    text = (labelled / "units" / "features.0" / "3.html").read_text()
    assert "all zero" not in text and text.count(".bottom.png") >= 2  # the crop and the link to its sheet


def test_an_unlabelled_dataset_leaves_out_class_statistics_and_says_so(unlabelled: Path) -> None:
    census = Census.load(unlabelled)
    assert not census.labelled
    for layer in ("0", "1"):
        for channel in range(census.channels(layer)):
            text = (unlabelled / "units" / layer / f"{channel}.html").read_text()
            assert "The dataset has no labels: no class statistics." in text
            assert 'class="classes"' not in text and "Classes in its top" not in text
    page = _page(unlabelled, "0", 2)
    assert "rules deconvnet, guided, left to right" in (unlabelled / "units" / "0" / "2.html").read_text()
    assert any("0-1.bottom.png" in unquote(link) for link in page.links)  # a convolution: bottom entries drawn
    assert "Probe the layer before it (<code>--layers 0</code>)" in (unlabelled / "units" / "1" / "0.html").read_text()


def test_click_from_the_index_to_a_layer_sort_it_open_a_unit_and_step_through(labelled: Path, browser: Any) -> None:  # noqa: F811
    browser.get((labelled / "index.html").as_uri())
    browser.find_element("link text", "all channels, sortable").click()  # features.0's
    wait(browser, "document.title === 'layer features.0'")

    def column(n: int) -> list[float]:
        return browser.execute_script(
            "return [...document.querySelectorAll('#channels tbody tr')].map(r => +r.cells[arguments[0]].dataset.v)", n
        )

    heading = browser.find_element("css selector", "#channels th:nth-child(3)")
    assert heading.text == "active"
    heading.click()
    active = column(2)
    assert active == sorted(active) and len(active) == 32
    heading.click()
    assert column(2) == sorted(active, reverse=True)
    order = column(0)
    assert sorted(order) == list(range(32))
    browser.find_element("css selector", "#channels th:nth-child(4)").click()  # the mean, lowest first
    means = column(3)
    assert means == sorted(means)
    first = int(column(0)[0])
    browser.find_element("css selector", "#channels tbody tr:first-child td:first-child a").click()
    wait(browser, "document.title === arguments[0]", f"features.0 channel {first}")
    assert browser.find_element("tag name", "h1").text == f"features.0 channel {first}"
    images = browser.execute_script("return [...document.images].map(i => [i.complete, i.naturalWidth])")
    assert images and all(done and width > 0 for done, width in images)  # the sheets the panels are cut from
    assert browser.execute_script("return getComputedStyle(document.body).backgroundColor") == "rgb(250, 250, 250)"
    assert browser.execute_script("return document.querySelectorAll('a.live:not([hidden])').length") == 0  # offline
    if first < 31:
        browser.find_element("css selector", "a[rel=next]").click()
        wait(browser, "document.title === arguments[0]", f"features.0 channel {first + 1}")
        browser.find_element("css selector", "a[rel=prev]").click()
    else:
        browser.find_element("css selector", "a[rel=prev]").click()
        wait(browser, "document.title === arguments[0]", f"features.0 channel {first - 1}")
        browser.find_element("css selector", "a[rel=next]").click()
    wait(browser, "document.title === arguments[0]", f"features.0 channel {first}")
