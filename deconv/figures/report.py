"""``index.html``: a static page over a run folder, opened from the file system (no server, no network).

It shows what the commands left in the folder: per layer of ``top9.json`` every channel as a
thumbnail of its panel on its Fig. 2 sheet, where the sheet's own layout in ``sheets.json`` puts it
(a click shows it enlarged with its records and a link to the sheet; a run of several rules shows each
rule's projections beside the patches on its own, one link per rule), then the figures of
``deconv occlusion``, ``deconv evolution`` and ``deconv project``.
All links are relative; the page has no scripts.
"""

from __future__ import annotations

import html
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

import numpy as np
from PIL import Image

from ..io import write_text
from .sheet import MANIFEST

__all__ = ["write_report", "write_thumbnails", "read_manifest", "sheet_panels", "sheet_name", "unit_page", "layer_page"]

THUMB = 240  # widest thumbnail, in pixels: a few tens of KB as JPEG
DETAIL = 1000  # a channel's detail view is enlarged by an integer factor up to about this width
FIGURES = (  # section id, heading, the files it shows
    ("occlusion", "Occlusion sensitivity (Fig. 7)", "occlusion/*.png"),
    ("evolution", "Feature evolution (Fig. 4)", "evolution/*.png"),
    ("projections", "Projections", "project-*.png"),
)
INTRO = (
    "<p>Per channel, the projections of its strongest activations over the dataset (left; {rules}) beside the "
    "image patches that caused them (right), best first, with the largest activation. Click a channel "
    "for its page (or, in a run without a census, for it enlarged, its records and its sheet).</p>"
)
STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 24px 48px;color:#222;background:#fafafa}
h1{margin:16px 0 4px}h2{margin:28px 0 8px;border-bottom:1px solid #ccc}h2 small{font-weight:normal;color:#666}
nav a{margin-right:12px}pre{background:#fff;border:1px solid #ddd;padding:8px;overflow:auto}
.grid{display:flex;flex-wrap:wrap;gap:10px}
.thumb{display:block;color:#333;background:#fff;border:1px solid #ddd;padding:4px;font-size:12px}
.thumb:hover{border-color:#36c}.thumb img{display:block}
.detail{display:none;position:fixed;inset:0;background:rgba(0,0,0,.55);overflow:auto}
.detail:target{display:block}\
.detail>div{background:#fff;margin:32px auto;padding:16px 24px;max-width:1100px;overflow:auto}
.detail img{image-rendering:pixelated;max-width:none}.panel{overflow:hidden;max-width:100%}.close{float:right}
table{border-collapse:collapse;margin-top:8px}td,th{border:1px solid #ddd;padding:2px 8px;text-align:right}
figure{margin:0 0 20px}figure img{max-width:100%;border:1px solid #ddd;background:#fff}
"""


def _href(path: Path | str) -> str:
    return html.escape(quote(os.fsencode(Path(path).as_posix())))  # a name that is not UTF-8 keeps its bytes


def _save_thumbnail(image: Image.Image, path: Path) -> None:
    """Writes a panel as a small JPEG thumbnail (at most ``THUMB`` wide; Pillow's Lanczos filter),
    quickly (no fsync), yet never half-written (temp file, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if image.width > THUMB:
        image = image.resize((THUMB, max(1, round(image.height * THUMB / image.width))), Image.Resampling.LANCZOS)
    temp = path.with_name(f".{path.name}.tmp")
    image.save(temp, "JPEG", quality=85)
    os.replace(temp, path)


def unit_page(layer: str, channel: int) -> Path:
    """A unit page's file (:mod:`deconv.figures.pages`), relative to the run folder."""
    return Path("units") / layer / f"{channel}.html"


def layer_page(layer: str) -> Path:
    """A layer page's file (:mod:`deconv.figures.pages`), relative to the run folder."""
    return Path("layers") / f"{layer}.html"


def _thumb(layer: str, channel: int) -> Path:
    return Path("thumbs") / layer / f"{channel}.jpg"


def write_thumbnails(out: Path, entry: dict, pixels: np.ndarray) -> None:
    """Writes the thumbnail of each panel of a sheet's ``sheets.json`` ``entry`` into ``out/thumbs/``, cut
    from the sheet's ``(H, W, 3)`` uint8 ``pixels`` (``deconv top9`` does so while it holds them), two at a
    time (Pillow releases the GIL while it resizes and encodes)."""

    def one(panel: dict) -> None:
        left, top, right, bottom = panel["panel"]
        image = Image.fromarray(np.ascontiguousarray(pixels[top:bottom, left:right]), "RGB")
        _save_thumbnail(image, out / _thumb(entry["layer"], panel["channel"]))

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one, entry["panels"]))


def read_manifest(out: Path) -> list[dict]:
    """The entries of ``out/sheets.json``, one per sheet (:meth:`~deconv.figures.sheet.Sheet.manifest`);
    none for a run without one (drawn before sheets had it)."""
    path = Path(out) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else []


class _Panel(NamedTuple):
    """Where a channel's panel is: its ``thumb``-nail, its ``sheet`` (paths relative to the run folder), the
    sheet's ``size``, its ``box`` ``(left, top, right, bottom)`` on the sheet (below its label) and the boxes of
    the panel's columns: its ``rules``' projection grids, by name, and its ``patches``."""

    thumb: Path
    sheet: Path
    size: tuple[int, int]
    box: tuple[int, int, int, int]
    rules: dict[str, tuple[int, int, int, int]]
    patches: tuple[int, int, int, int]


def sheet_name(layer: str, n: int, which: str = "top") -> str:
    """The file of sheet ``n`` of ``layer``'s ``which`` records (``"top"``: ``sheets/LAYER-N.png``; ``"bottom"``:
    ``sheets/LAYER-N.bottom.png``, which no top sheet's name ends with), relative to the run folder."""
    return f"sheets/{layer}-{n}.png" if which == "top" else f"sheets/{layer}-{n}.{which}.png"


def sheet_panels(out: Path, layer: str, which: str = "top") -> dict[int, _Panel]:
    """Where each channel's panel of ``layer``'s ``which`` records (``"top"`` or ``"bottom"``) is, as the run's
    ``sheets.json`` says: ``{channel: panel}``, for the sheets that exist in ``out`` (an entry without ``which``,
    from before bottom sheets, is a top sheet's)."""
    found = {}
    for entry in read_manifest(out):
        sheet = Path(entry["sheet"])
        if sheet.parent != Path("sheets") or sheet.suffix != ".png":  # only the run's own sheets are opened
            raise ValueError(f"{MANIFEST} names {entry['sheet']!r}, not a PNG in the run's sheets/")
        if entry["layer"] != layer or entry.get("which", "top") != which or not (Path(out) / sheet).is_file():
            continue
        for p in entry["panels"]:
            found[p["channel"]] = _Panel(
                _thumb(layer, p["channel"]),
                Path(entry["sheet"]),
                tuple(entry["size"]),
                tuple(p["panel"]),
                {rule: tuple(box) for rule, box in p["rules"].items()},
                tuple(p["patches"]),
            )
    return found


def _thumbnails(out: Path, layer: str) -> dict[int, _Panel]:
    """Each channel's panel of the layer's sheets, with a thumbnail in ``thumbs/``: ``deconv top9`` writes them
    as it draws each sheet (and its run folder replaces them with the sheets); one that is missing is cut from
    its sheet here."""
    panels = sheet_panels(out, layer)
    missing = [p for p in panels.values() if not (out / p.thumb).is_file()]
    for sheet in dict.fromkeys(p.sheet for p in missing):
        with Image.open(out / sheet) as image:
            for p in missing:
                if p.sheet == sheet:
                    _save_thumbnail(image.crop(p.box), out / p.thumb)
    return panels


def _layer(out: Path, layer: str, records: list[dict], rules: list[str]) -> tuple[str, str]:
    """The gallery section of one layer and its channels' detail overlays (one more per rule when the run
    drew several)."""
    by_channel: dict[int, list[dict]] = {}
    for record in sorted(records, key=lambda r: (r["channel"], r["rank"])):
        by_channel.setdefault(record["channel"], []).append(record)
    panels = {c: p for c, p in _thumbnails(out, layer).items() if c in by_channel}
    sheets = dict.fromkeys(panel.sheet for panel in panels.values())
    links = " ".join(f'<a href="{_href(sheet)}">sheet {n}</a>' for n, sheet in enumerate(sheets, 1))
    pages = {c: unit_page(layer, c) for c in panels if (out / unit_page(layer, c)).is_file()}
    cells = "".join(
        _cell(layer, channel, panel, by_channel[channel], pages.get(channel)) for channel, panel in panels.items()
    )
    if (out / layer_page(layer)).is_file():
        links = f'<a href="{_href(layer_page(layer))}">all channels, sortable</a> ' + links
    details = "".join(
        _detail(out, layer, channel, panel, by_channel[channel], rules)
        + _rule_details(layer, channel, panel, len(by_channel[channel]), rules)
        for channel, panel in panels.items()
    )
    missing = (
        ""
        if panels
        else f"<p>No panels to show: no sheet of this layer is listed in {MANIFEST} (a run drawn before sheets had "
        "it, or its sheets were removed); run <code>deconv top9</code> again.</p>"
    )
    section = (
        f'<section id="layer-{html.escape(layer)}"><h2>{html.escape(layer)} <small>{len(by_channel)} channels &middot; '
        f'{links}</small></h2>{missing}<div class="grid">{cells}</div></section>'
    )
    return section, details


def _cell(layer: str, channel: int, panel: _Panel, records: list[dict], page: Path | None) -> str:
    """A channel's thumbnail in its layer's gallery, linking to its unit ``page`` (where the run has one) and
    to its detail overlay."""
    width, height = panel.box[2] - panel.box[0], panel.box[3] - panel.box[1]
    small = (min(width, THUMB), round(height * min(width, THUMB) / width))
    overlay = html.escape(f"#{layer}/{channel}")
    image = (
        f'<a href="{_href(page) if page else overlay}"><img src="{_href(panel.thumb)}" width="{small[0]}" '
        f'height="{small[1]}" alt="channel {channel}"></a>'
    )
    return (
        f'<div class="thumb" title="{html.escape(layer)} channel {channel}">{image}'
        f"<b>{channel}</b> top {records[0]['value']:.3g}"
        + (f' &middot; <a href="{overlay}">enlarge</a>' if page else "")
        + "</div>"
    )


def _close(layer: str) -> str:
    return f'<a class="close" href="#layer-{html.escape(layer)}">close &times;</a>'


def _detail(out: Path, layer: str, channel: int, panel: _Panel, records: list[dict], rules: list[str]) -> str:
    """A channel's detail overlay: its panel enlarged, a link to its sheet and its records."""
    f = max(1, DETAIL // (panel.box[2] - panel.box[0]))  # the panel cut from its sheet, enlarged f times
    files = "<th>image file</th>" if records[0]["path"] is not None else ""
    return (
        f'<section class="detail" id="{html.escape(f"{layer}/{channel}")}"><div>{_close(layer)}'
        f"<h3>{html.escape(layer)} channel {channel}</h3>{_switch(layer, channel, rules, '')}"
        f"{_crop(panel.sheet, panel.size, panel.box, f, f'channel {channel}, enlarged {f}x')}"
        f"<p>Projections of the top {len(records)} activations ({_named(rules)}) beside the image patches "
        f'that caused them; <a href="{_href(panel.sheet)}">the full sheet</a>.</p>'
        f"<table><tr><th>rank</th><th>activation</th><th>image index</th><th>y, x</th>{files}</tr>"
        f"{''.join(_row(out, r) for r in records)}</table></div></section>"
    )


def _rule_details(layer: str, channel: int, panel: _Panel, top: int, rules: list[str]) -> str:
    """Where the run drew several rules, one overlay per rule: its grid of the ``top`` projections beside the
    patches, cut from the panel and enlarged; nothing for one rule."""
    side = max((b[2] - b[0] for b in panel.rules.values()), default=1)
    g = max(1, DETAIL // (2 * side))
    overlays = []
    for rule in rules if len(rules) > 1 else ():
        columns = [panel.rules[rule], panel.patches]
        crops = "".join(
            _crop(panel.sheet, panel.size, c, g, f"channel {channel}, {rule}, enlarged {g}x") for c in columns
        )
        overlays.append(
            f'<section class="detail" id="{html.escape(f"{layer}/{channel}")}/{html.escape(rule)}"><div>'
            f"{_close(layer)}<h3>{html.escape(layer)} channel {channel}: {html.escape(rule)}</h3>"
            f'{_switch(layer, channel, rules, rule)}<div class="grid">{crops}</div>'
            f"<p>Projections of the top {top} activations by the {html.escape(rule)} rule beside the image "
            "patches that caused them.</p></div></section>"
        )
    return "".join(overlays)


def _crop(sheet: Path, size: tuple[int, int], box: tuple[int, int, int, int], f: int, alt: str) -> str:
    """The ``box`` of a ``sheet`` of ``size`` enlarged ``f`` times by the browser."""
    return (
        f'<div class="panel" style="width:{(box[2] - box[0]) * f}px;height:{(box[3] - box[1]) * f}px">'
        f'<img src="{_href(sheet)}" width="{size[0] * f}" height="{size[1] * f}" '
        f'style="margin:{-box[1] * f}px 0 0 {-box[0] * f}px" alt="{html.escape(alt)}"></div>'
    )


def _switch(layer: str, channel: int, rules: list[str], current: str) -> str:
    """Links between a channel's views when the run drew several rules: all side by side, or one rule."""
    if len(rules) < 2:
        return ""
    views = [("", "all rules"), *((r, r) for r in rules)]
    links = (
        f"<b>{html.escape(name)}</b>"
        if view == current
        else f'<a href="#{html.escape(f"{layer}/{channel}" + (f"/{view}" if view else ""))}">{html.escape(name)}</a>'
        for view, name in views
    )
    return f"<nav>rule: {' '.join(links)}</nav>"


def _named(rules: list[str]) -> str:
    return f"rule {rules[0]}" if len(rules) == 1 else f"rules {', '.join(rules)}, left to right"


def _rules(records: list[dict]) -> list[str]:
    """The rules a top9 run drew, from its records (runs from before rules were named: the deconvnet)."""
    rule = records[0].get("rule", "deconvnet") if records else "deconvnet"
    return [rule] if isinstance(rule, str) else list(rule)


def _row(out: Path, record: dict) -> str:
    """One record of ``top9.json`` as a table row, linking to its image file where it has one."""
    where = "" if record["y"] is None else f"{record['y']}, {record['x']}"
    path = record["path"]
    source = (
        ""
        if path is None
        else f'<td><a href="{_href(os.path.relpath(path, out))}">{html.escape(Path(path).name)}</a></td>'
    )
    return (
        f"<tr><td>{record['rank'] + 1}</td><td>{record['value']:.4g}</td><td>{record['index']}</td>"
        f"<td>{where}</td>{source}</tr>"
    )


def _figures(out: Path, pattern: str) -> str:
    """Each PNG matching ``pattern`` as a figure linking to itself, with the raw data beside it
    (the ``.npy`` files in the folder named after it)."""
    figures = []
    for path in sorted(out.glob(pattern)):
        relative = path.relative_to(out)
        data = sorted(path.with_suffix("").glob("*.npy"))
        raw = ", ".join(f'<a href="{_href(p.relative_to(out))}">{html.escape(p.name)}</a>' for p in data)
        with Image.open(path) as image:
            width, height = image.size
        figures.append(
            f'<figure><a href="{_href(relative)}"><img src="{_href(relative)}" width="{width}" height="{height}" '
            f'alt="{html.escape(path.stem)}"></a><figcaption>{html.escape(relative.as_posix())}'
            f"{' &middot; raw: ' + raw if raw else ''}</figcaption></figure>"
        )
    return "".join(figures)


def write_report(out_dir: Path) -> Path:
    """Writes ``out_dir/index.html`` (and per-channel thumbnails in ``out_dir/thumbs/``) from the
    ``top9.json``, ``sheets/``, ``config.toml`` and figures found in ``out_dir``; returns its path."""
    out = Path(out_dir)
    config = (out / "config.toml").read_text() if (out / "config.toml").is_file() else ""
    records = json.loads((out / "top9.json").read_text()) if (out / "top9.json").is_file() else []
    layers: dict[str, list[dict]] = {}
    for record in records:
        layers.setdefault(record["layer"], []).append(record)
    sections, details, nav = [], [], []
    for layer, rs in layers.items():
        section, detail = _layer(out, layer, rs, _rules(records))
        sections.append(section)
        details.append(detail)
        nav.append(f'<a href="#layer-{html.escape(layer)}">{html.escape(layer)}</a>')
    for key, heading, pattern in FIGURES:
        figures = _figures(out, pattern)
        if figures:
            sections.append(f'<section id="{key}"><h2>{heading}</h2>{figures}</section>')
            nav.append(f'<a href="#{key}">{heading}</a>')
    settings = (
        f"<details><summary>settings (config.toml)</summary><pre>{html.escape(config)}</pre></details>"
        if config
        else ""
    )
    name = html.escape(out.resolve().name)
    intro = INTRO.format(rules=html.escape(_named(_rules(records)))) if layers else ""
    page = (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>deconv: {name}</title>'
        f"<style>{STYLE}</style></head><body><h1>deconv: {name}</h1>"
        f"<nav>{''.join(nav)}</nav>{settings}{intro}{''.join(sections)}{''.join(details)}</body></html>\n"
    )
    return write_text(out / "index.html", page.encode("utf-8", "replace").decode())  # shows such a name's bytes as "?"
