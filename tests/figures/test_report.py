"""The HTML report: thumbnails cut exactly from the sheets, every link resolving, every image
rendering in a real headless browser (Debian's chromium), from the file system."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
import torch
from PIL import Image

from deconv.commands.main import main
from deconv.figures.report import sheet_panels, write_report

NET = """
from torch import nn

def make():
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, stride=2, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
        nn.Conv2d(6, 10, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(10 * 7 * 7, 3),
    )
"""


class Links(HTMLParser):
    """Every ``href`` and ``src`` of a page, and every ``id``."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.links += [found[k] for k in ("href", "src") if found.get(k) is not None]
        if found.get("id"):
            self.ids.add(found["id"])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder where top9 (two rules), occlusion, evolution and project (top classes) all wrote, with its report."""
    root = tmp_path_factory.mktemp("report")
    (root / "net.py").write_text(NET)
    g = torch.Generator().manual_seed(0)
    for n in range(24):  # an image folder, so that records link to their files
        (root / "data" / f"kind{n % 2}").mkdir(parents=True, exist_ok=True)
        pixels = (torch.rand(28, 28, generator=g) * 255).byte().numpy()
        Image.fromarray(pixels, "L").save(root / "data" / f"kind{n % 2}" / f"im {n}.png")
    checkpoints = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        namespace: dict = {}
        exec(NET, namespace)
        checkpoints.append(str(root / f"step{seed}.pt"))
        torch.save(namespace["make"]().state_dict(), checkpoints[-1])
    out = root / "run"
    model = ["--model", f"{root / 'net.py'}:make", "--data", str(root / "data"), "--out", str(out), "--no-progress"]
    image = str(root / "data" / "kind0" / "im 0.png")
    assert main(["top9", *model, "--layers", "1", "4", "--per-sheet", "4", "--rules", "deconvnet", "guided"]) == 0
    write_report(out)  # what top9 does at its end
    assert main(["occlusion", *model, "--image", image, "--square", "6", "--stride", "3"]) == 0
    assert main(["evolution", *model, "--checkpoints", *checkpoints, "--layer", "4", "--channels", "0", "3"]) == 0
    assert main(["project", *model, "--image", image, "--top-classes", "3"]) == 0
    return out


def test_thumbnails_are_the_panels_where_the_sheets_manifest_puts_them(run: Path, tmp_path: Path) -> None:
    """top9 writes sheets.json beside its sheets (where it drew each channel's panel) and a thumbnail per panel
    as it draws; the report cuts the same thumbnails from the sheet files by that manifest where they are missing."""
    manifest = json.loads((run / "sheets.json").read_text())
    assert sorted(e["sheet"] for e in manifest) == sorted(f"sheets/{p.name}" for p in (run / "sheets").glob("*.png"))
    records = json.loads((run / "top9.json").read_text())
    for layer in ("1", "4"):
        panels = sheet_panels(run, layer)
        assert sorted(panels) == sorted({r["channel"] for r in records if r["layer"] == layer})
        for channel, panel in panels.items():
            with Image.open(run / panel.sheet) as sheet:
                assert sheet.size == panel.size
                cut = np.asarray(sheet.convert("RGB").crop(panel.box))
            active = any(r["value"] > 0 for r in records if (r["layer"], r["channel"]) == (layer, channel))
            assert (cut[:17] != 255).any() and (cut[17:] != 255).any() == active  # the rules' captions, the grids
            label = np.asarray(sheet.convert("RGB").crop((panel.box[0], panel.box[1] - 19, panel.box[2], panel.box[1])))
            assert (label != 255).any()  # the panel's label is just above its box
            assert list(panel.rules) == ["deconvnet", "guided"] and panel.patches[2] == panel.box[2]
            with Image.open(run / panel.thumb) as thumb:
                assert thumb.width == min(240, cut.shape[1])
    copy = shutil.copytree(run, tmp_path / "copy")
    shutil.rmtree(copy / "thumbs")
    write_report(copy)  # the thumbnails cut again, from the sheet files
    for thumb in (run / "thumbs").rglob("*.jpg"):
        assert (copy / thumb.relative_to(run)).read_bytes() == thumb.read_bytes(), thumb


def test_a_run_without_a_manifest_shows_no_panels_and_says_why(run: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(run, tmp_path / "old")
    (copy / "sheets.json").unlink()
    shutil.rmtree(copy / "thumbs")
    page = write_report(copy).read_text()
    assert "No panels to show" in page and "thumbs/" not in page
    assert not (copy / "thumbs").exists()


def test_report_shows_every_output_and_its_links_resolve(run: Path) -> None:
    page = (run / "index.html").read_text()
    parser = Links()
    parser.feed(page)
    records = json.loads((run / "top9.json").read_text())
    channels = {(r["layer"], r["channel"]) for r in records}
    assert len(channels) == 6 + 10
    assert {f"{layer}/{channel}" for layer, channel in channels} <= parser.ids  # one detail per channel
    assert {
        f"{layer}/{channel}/{rule}" for layer, channel in channels for rule in ("deconvnet", "guided")
    } <= parser.ids  # and per rule
    assert {f"#{layer}/{channel}/guided" for layer, channel in channels} <= set(map(unquote, parser.links))
    for name in ("occlusion/im 0.png", "evolution/4.png", "project-im 0-top3.png", "sheets/4-3.png"):
        assert any(unquote(link) == name for link in parser.links), name
    assert any(unquote(link).endswith("data/kind0/im 0.png") for link in parser.links)  # a record's image file
    for link in parser.links:
        parts = urlsplit(link)
        assert not parts.scheme and not parts.netloc, f"not a relative link: {link}"
        if parts.path:
            assert (run / unquote(parts.path)).is_file(), f"broken link: {link}"
        if parts.fragment:
            assert unquote(parts.fragment) in parser.ids, f"no such anchor: {link}"


CHROMIUM = shutil.which("chromium")
CHECK = """<!doctype html><body><iframe id="page" src="{page}" width="1200" height="900"></iframe><script>
addEventListener("load", () => {{
  const images = [...document.getElementById("page").contentDocument.images];
  const result = document.createElement("pre");
  result.id = "result";
  result.textContent = JSON.stringify(
    images.map(i => [i.getAttribute("src"), i.complete, i.naturalWidth, i.naturalHeight]));
  document.body.append(result);
}});
</script></body>"""


def _images_in_browser(page: Path, scratch: Path) -> list[list]:
    """``[src, complete, naturalWidth, naturalHeight]`` of every image of ``page``, as headless chromium
    renders it from the file system (a checking page frames it and writes what it sees into the DOM)."""
    check = scratch / "check.html"
    check.write_text(CHECK.format(page=page.resolve().as_uri()))
    profile = scratch / "profile"
    shutil.rmtree(profile, ignore_errors=True)
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--allow-file-access-from-files",
            "--dump-dom",
            check.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    start = done.stdout.find('<pre id="result">')
    assert start >= 0, f"chromium did not render the page: {done.stderr[-2000:]}"
    text = done.stdout[start + len('<pre id="result">') : done.stdout.index("</pre>", start)]
    return json.loads(text.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"'))


def test_every_image_renders_in_a_real_browser(run: Path, tmp_path: Path) -> None:
    assert CHROMIUM, "needs Debian's chromium: scripts/system-packages.sh (run by `make test`) installs it"
    images = _images_in_browser(run / "index.html", tmp_path)
    thumbnails = [src for src, *_ in images if src.startswith("thumbs/")]
    assert len(set(thumbnails)) == 6 + 10
    assert len(images) >= 2 * 16 + 3
    broken = [image for image in images if not (image[1] and image[2] > 0 and image[3] > 0)]
    assert not broken, f"images that did not load: {broken[:5]}"
    copy = shutil.copytree(run, tmp_path / "copy")
    (copy / unquote(thumbnails[0])).unlink()  # the check itself sees a missing image
    images = _images_in_browser(copy / "index.html", tmp_path)
    assert {src for src, _, width, _ in images if width == 0} == {thumbnails[0]}
