"""The unit pages and layer pages of the static report: a page per channel of a top9 run's census and a
sortable table of each layer's channels, written beside ``index.html`` (no server, no network).

A unit page (``units/LAYER/CHANNEL.html``) shows the channel's top and bottom entries (their panels cut from
the run's sheets where ``sheets.json`` puts them, and their records), the histogram of its per-image maximum
with the quantiles marked, its class statistics and where on the map it fires (inline SVG drawn from the
census), its receptive field, and links to the previous and next channel and to its layer. Viewed through
``deconv serve --run`` (at ``/run/``), each entry also links to the live page. A layer page
(``layers/LAYER.html``) lists the layer's channels with their statistics; a click on a heading sorts by it.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence
from urllib.parse import quote

import numpy as np
import torch

from ..census import Census, ClassStats, Unit
from .draw import encode_png
from .report import DETAIL, _crop, _Panel, layer_page, sheet_panels, unit_page

if TYPE_CHECKING:
    from ..analyses.top9 import Record
    from ..mirror import Mirror

__all__ = ["LAYER_INFO", "layer_info", "write_pages", "histogram_svg", "classes_svg", "hits_image"]

LAYER_INFO = "layers.json"  # beside census.json: per layer its receptive field and the probe point before it
STYLESHEET = "pages.css"  # the pages' shared style, beside index.html
LIVE = "/run/"  # where deconv serve serves a run folder: pages seen there link to the live page
STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 24px 48px;color:#222;background:#fafafa;max-width:1200px}
h1{margin:16px 0 4px;font-size:22px}h2{margin:24px 0 8px;border-bottom:1px solid #ccc;font-size:17px}
nav{margin:6px 0}nav a{margin-right:14px}.note{color:#555}.live[hidden]{display:none}
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ddd;padding:2px 8px;text-align:right}
th{background:#f0f0f0}thead th{position:sticky;top:0}.stats td:first-child{text-align:left}
.row{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}.panel{overflow:hidden;max-width:100%}
.panel img{image-rendering:pixelated;max-width:none}svg{background:#fff;border:1px solid #ddd}
svg text{font:11px system-ui,sans-serif;fill:#333}img.hits{image-rendering:pixelated;border:1px solid #ddd}
table.sort th{cursor:pointer;user-select:none}table.sort th:hover{background:#dde6f7}
table.sort td:nth-child(2){text-align:left}td img{display:block}
"""
LIVE_SCRIPT = (
    "<script>if(location.pathname.startsWith(" + json.dumps(LIVE) + "))"
    'for(const a of document.querySelectorAll("a.live")){a.href="/?"+a.dataset.q;a.hidden=false;}</script>'
)
SORT_SCRIPT = """<script>
for (const th of document.querySelectorAll("table.sort th")) th.addEventListener("click", () => {
  const table = th.closest("table"), body = table.tBodies[0], n = th.cellIndex;
  const down = table.dataset.by === String(n) && table.dataset.order !== "down";
  const rows = [...body.rows].sort((a, b) => (+a.cells[n].dataset.v - +b.cells[n].dataset.v) * (down ? -1 : 1));
  body.append(...rows);
  table.dataset.by = n; table.dataset.order = down ? "down" : "up";
  for (const h of table.tHead.rows[0].cells) h.textContent = h.textContent.replace(/ [\u25b2\u25bc]$/, "");
  th.textContent += down ? " \u25bc" : " \u25b2";
});
</script>"""
COLUMNS = (  # a layer page's columns: key of Census.table (or "top_class"), heading, what it is
    ("active", "active", "the fraction of images where the channel's maximum is > 0"),
    ("mean", "mean max", "the mean of the per-image maximum"),
    ("std", "std", "the standard deviation of the per-image maximum"),
    ("max", "strongest", "the largest activation over the dataset"),
    ("min", "lowest", "the most negative activation (the per-image minimum's smallest)"),
    ("selectivity", "class-selective", "how much the best class's mean exceeds the other classes' (0: not at all)"),
)


def layer_info(mirror: Mirror, layers: Sequence[str]) -> dict[str, dict]:
    """What the unit pages say of each of ``layers`` that the census does not hold: its receptive field (``size``
    ``[h, w]``, ``stride``, ``offset`` in pixels; ``None`` past a global layer) and map ``shape``, for the images
    the mirror last saw, and ``before``: the probe point just before it (``None`` for the first), where a
    rectified layer's units can go below zero. The content of :data:`LAYER_INFO`."""
    infos = {info.name: info for info in mirror.describe()}
    names = mirror.layer_names
    out = {}
    for layer in layers:
        i = mirror.index(layer)
        field = infos[layer].receptive_field
        before = next((n for n in names if mirror.index(n) == i - 1), None)
        out[layer] = {
            "size": list(field.size) if field else None,
            "stride": list(field.stride) if field else None,
            "offset": list(field.offset) if field else None,
            "shape": list(infos[layer].shape),
            "before": before,
        }
    return out


def _up(page: Path) -> str:
    """The way from ``page`` back to the run folder, as a relative link prefix."""
    return "../" * (len(page.parts) - 1)


def _link(page: Path, target: Path | str) -> str:
    """The link from ``page`` to ``target`` (both relative to the run folder)."""
    return html.escape(quote(os.fsencode(_up(page) + (target if isinstance(target, str) else target.as_posix()))))


def _g(value: float) -> str:
    return f"{value:.4g}"


def _head(page: Path, title: str) -> str:
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f'<link rel="stylesheet" href="{_link(page, STYLESHEET)}"></head><body>'
    )


# ------------------------------------------------------------------------------------------ charts


def histogram_svg(edges: torch.Tensor, counts: torch.Tensor, quantiles: dict[float, float]) -> str:
    """The histogram of a unit's per-image maximum, ``counts`` ``(B,)`` over ``edges`` ``(B + 1,)``, with the
    ``quantiles`` marked, as inline SVG: the bars one path, the counts in its ``data-counts``."""
    width, height, left, right, top, bottom = 520, 210, 46, 12, 50, 36
    low, high = float(edges[0]), float(edges[-1])
    span = high - low or 1.0
    peak = max(int(counts.max()), 1)
    x = lambda v: left + (float(v) - low) / span * (width - left - right)  # noqa: E731
    base, scale = height - bottom, (height - top - bottom) / peak
    bars = "".join(
        f"M{x(a):.1f} {base}v{-n * scale:.1f}h{max(x(b) - x(a) - 0.5, 0.5):.1f}V{base}z"
        for a, b, n in zip(edges[:-1].tolist(), edges[1:].tolist(), counts.tolist())
        if n
    )
    groups: list[list[tuple[float, float, float]]] = []  # quantiles drawn within 24 px of each other share a label
    for q, v in quantiles.items():
        at = min(max(x(v), left), width - right)
        if groups and at - groups[-1][0][2] < 24:
            groups[-1].append((q, v, at))
        else:
            groups.append([(q, v, at)])
    marks = []
    for n, group in enumerate(groups):
        label = ", ".join(f"{q:.0%}" for q, _, _ in group)
        at, row = group[0][2], top - 36 + 12 * (n % 3)
        end = at > width - 60
        lines = "".join(
            f'<line x1="{a:.1f}" x2="{a:.1f}" y1="{row}" y2="{base}"><title>quantile {q:g}: {_g(v)}</title></line>'
            for q, v, a in group
        )
        marks.append(
            f'{lines}<text x="{at - 2 if end else at + 2:.1f}" y="{row - 2}" fill="#c33" stroke="none" '
            f'text-anchor="{"end" if end else "start"}">{label}</text>'
        )
    ticks = [(low, "start"), (high, "end")] + ([(0.0, "middle")] if low < 0 < high else [])
    axis = "".join(f'<text x="{x(v):.1f}" y="{base + 14}" text-anchor="{anchor}">{_g(v)}</text>' for v, anchor in ticks)
    return (
        f'<svg class="histogram" width="{width}" height="{height}" role="img" aria-label="histogram of the per-image '
        f'maximum" data-counts="{" ".join(str(int(n)) for n in counts.tolist())}">'
        f'<path d="{bars}" fill="#6b8fd6"/><g stroke="#c33" stroke-dasharray="3 2">{"".join(marks)}</g>'
        f'<path d="M{left} {base}H{width - right}" stroke="#333"/>'
        f'{axis}<text x="{left - 4}" y="{top + 4}" text-anchor="end">{peak}</text>'
        f'<text x="{left - 4}" y="{base}" text-anchor="end">0</text>'
        f'<text x="{(left + width - right) / 2}" y="{height - 6}" text-anchor="middle">per-image maximum '
        f"(images per bin; red: quantiles)</text></svg>"
    )


def classes_svg(classes: Sequence[ClassStats], shown: int = 20) -> str:
    """A bar per class (at most ``shown``, the highest means first): the mean of the unit's per-image maximum
    over the class's images, with how many of them activate it, as inline SVG."""
    ranked = sorted(classes, key=lambda c: -c.mean)[:shown]
    row, left, bar_width, right = 18, 130, 260, 190
    width, height = left + bar_width + right, row * len(ranked) + 8
    scale = max((abs(c.mean) for c in ranked), default=0.0) or 1.0
    zero = left + (bar_width / 2 if any(c.mean < 0 for c in ranked) else 0)
    reach = bar_width - (zero - left)
    names, bars, notes = [], [], []
    for n, c in enumerate(ranked):
        y = 4 + n * row
        end = zero + c.mean / scale * reach
        names.append(f'<text x="{left - 6}" y="{y + 12}">{html.escape(c.name[:20])}</text>')
        bars.append(
            f"M{min(zero, end):.1f} {y + 2}h{max(abs(end - zero), 0.5):.1f}v{row - 5}h{-max(abs(end - zero), 0.5):.1f}z"
        )
        notes.append(
            f'<text x="{left + bar_width + 6}" y="{y + 12}">{_g(c.mean)} &middot; {c.active} of {c.images} '
            "active</text>"
        )
    return (
        f'<svg class="classes" width="{width}" height="{height}" role="img" aria-label="mean of the per-image '
        f'maximum per class"><g text-anchor="end">{"".join(names)}</g><path d="{"".join(bars)}" fill="#e0904a"/>'
        f'{"".join(notes)}<path d="M{zero:.1f} 2V{height - 2}" stroke="#333"/></svg>'
    )


def hits_image(hits: torch.Tensor) -> str:
    """How often each position of the map ``(H, W)`` held the unit's maximum (over the images where it is
    active): a pixel per position, darker for more, as an inline PNG enlarged crisply by the browser; the counts
    in its ``data-hits`` (row by row)."""
    h, w = hits.shape
    cell = max(2, min(40, 200 // max(h, w)))
    counts = hits.numpy().astype(np.float64)  # numpy: a map is small, torch's per-call cost would dominate
    shade = 255 * (1 - counts / max(counts.max(), 1.0)) ** 1.5
    pixels = np.stack([shade, shade, 255 - (255 - shade) / 3], -1).round().astype(np.uint8)
    return (
        f'<img class="hits" src="data:image/png;base64,{base64.b64encode(encode_png(pixels)).decode()}" '
        f'width="{w * cell}" height="{h * cell}" alt="how often each position held the maximum" '
        f'data-hits="{" ".join(map(str, hits.flatten().tolist()))}">'
    )


# ------------------------------------------------------------------------------------------ unit pages


def _records(page: Path, out: Path, records: Sequence[Record]) -> str:
    """A table of ``records``, each linking to its image file (where it has one) and, under deconv serve, live."""
    files = any(r.path is not None for r in records)
    rows = []
    for r in records:
        where = "" if r.y is None else f"{r.y}, {r.x}"
        query = f"image={r.index}&layer={r.layer}&channel={r.channel}" + ("" if r.y is None else f"&y={r.y}&x={r.x}")
        file = ""
        if files:
            file = (
                "<td></td>"
                if r.path is None
                else f'<td><a href="{_link(page, os.path.relpath(r.path, out))}">'
                f"{html.escape(Path(r.path).name)}</a></td>"
            )
        rows.append(
            f"<tr><td>{r.rank + 1}</td><td>{_g(r.value)}</td><td>{r.index}</td><td>{where}</td>{file}"
            f'<td><a class="live" hidden data-q="{html.escape(query)}">live</a></td></tr>'
        )
    head = "<th>image file</th>" if files else ""
    return (
        f"<table><tr><th>rank</th><th>activation</th><th>image</th><th>y, x</th>{head}<th></th></tr>"
        f"{''.join(rows)}</table>"
    )


def _panel(page: Path, panel: _Panel | None, what: str) -> str:
    """A unit's panel cut from its sheet (enlarged to about :data:`DETAIL` wide), or why there is none."""
    if panel is None:
        return f'<p class="note">No sheet of this run holds the {what} panel of this channel.</p>'
    f = max(1, DETAIL // (panel.box[2] - panel.box[0]))
    sheet = Path(_up(page)) / panel.sheet
    rules = list(panel.rules)
    named = f"rule {rules[0]}" if len(rules) == 1 else f"rules {', '.join(rules)}, left to right"
    return (
        _crop(sheet, panel.size, panel.box, f, f"{what} entries, projections beside their patches")
        + f'<p class="note">Projections ({html.escape(named)}) beside the image patches that caused them, in '
        f'the order of the table below; <a href="{_link(page, panel.sheet)}">the whole sheet</a>.</p>'
    )


def _stats(unit: Unit, row: dict[str, float], info: dict | None) -> str:
    """The unit's numbers: how often and how strongly it fires, its quantiles and its receptive field."""
    field = (
        ""
        if not info
        else "the whole image"
        if info["size"] is None
        else "{} x {} px, stride {}".format(
            *info["size"], info["stride"][0] if info["stride"][0] == info["stride"][1] else info["stride"]
        )
    )
    items = [
        ("images scanned", str(unit.images)),
        ("active (max &gt; 0)", f"{unit.active:.1%} ({round(unit.active * unit.images)} images)"),
        ("mean of the per-image maximum", _g(unit.mean)),
        ("its standard deviation", _g(unit.std)),
        ("strongest activation", _g(row["max"])),
        ("lowest activation", _g(row["min"])),
        *((f"quantile {q:g}", _g(v)) for q, v in unit.quantiles.items()),
        *((("receptive field", field),) if field else ()),
        *((("map", " x ".join(map(str, info["shape"][1:]))),) if info and len(info["shape"]) == 3 else ()),
    ]
    return '<table class="stats">' + "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in items) + "</table>"


def _bottom(page: Path, out: Path, unit: Unit, panel: _Panel | None, info: dict | None, k: int) -> str:
    """The bottom entries: their panel and records, or that the unit never went below zero, and where to look."""
    if not unit.rectified:
        return _panel(page, panel, "bottom") + _records(page, out, unit.bottom)
    before = info.get("before") if info else None
    where = (
        f" Probe the layer before it (<code>--layers {html.escape(before)}</code>) to see what suppresses it."
        if before
        else ""
    )
    return (
        f'<p class="note rectified">Its bottom {k} are all zero: nothing in the dataset took this unit below '
        f"zero (as after a ReLU).{where}</p>"
    )


def _unit(out: Path, census: Census, unit: Unit, top: _Panel | None, bottom: _Panel | None, info: dict | None) -> str:
    """The unit page of ``unit``, with its ``top`` and ``bottom`` panels and what ``layers.json`` says of its layer."""
    layer, channel = unit.layer, unit.channel
    page = unit_page(layer, channel)
    row = {k: float(v[channel]) for k, v in census.table(layer).items()}
    nav = [f'<a href="{_link(page, layer_page(layer))}">layer {html.escape(layer)}</a>']
    if channel > 0:
        nav.insert(
            0, f'<a rel="prev" href="{_link(page, unit_page(layer, channel - 1))}">&larr; channel {channel - 1}</a>'
        )
    if channel + 1 < census.channels(layer):
        nav.append(
            f'<a rel="next" href="{_link(page, unit_page(layer, channel + 1))}">channel {channel + 1} &rarr;</a>'
        )
    nav.append(f'<a href="{_link(page, "index.html")}">report</a>')
    if unit.top:
        best = unit.top[0]
        query = f"image={best.index}&layer={layer}&channel={channel}" + (
            "" if best.y is None else f"&y={best.y}&x={best.x}"
        )
        nav.append(f'<a class="live" hidden data-q="{html.escape(query)}">open live</a>')
    if census.labelled:
        named = ", ".join(f"{html.escape(name)} &times;{n}" for name, n in unit.top_classes)
        classes = f"<p>Classes in its top {len(unit.top)}: {named or 'none'}.</p>{classes_svg(unit.classes)}"
        if len(unit.classes) > 20:
            classes += f'<p class="note">The 20 of {len(unit.classes)} classes with the highest mean.</p>'
    else:
        classes = '<p class="note unlabelled">The dataset has no labels: no class statistics.</p>'
    hits = (
        '<p class="note">A layer of vectors: no map.</p>'
        if unit.hits is None
        else hits_image(unit.hits) + f'<p class="note">How often each position of the {unit.hits.shape[0]} x '
        f"{unit.hits.shape[1]} map held the maximum, over the images where the unit is active (darker: more; "
        "top left: y, x = 0, 0).</p>"
    )
    return (
        _head(page, f"{layer} channel {channel}")
        + f"<h1>{html.escape(layer)} channel {channel}</h1><nav>{' '.join(nav)}</nav>"
        + f'<div class="row"><div><h2>Numbers</h2>{_stats(unit, row, info)}</div>'
        + f"<div><h2>Per-image maximum</h2>{histogram_svg(*unit.histogram, unit.quantiles)}</div></div>"
        + f"<h2>Top {len(unit.top)}: the images that excite it most</h2>"
        + _panel(page, top, "top")
        + _records(page, out, unit.top)
        + "<h2>Bottom: the images that push it lowest</h2>"
        + _bottom(page, out, unit, bottom, info, census.k)
        + f'<div class="row"><div><h2>Classes</h2>{classes}</div><div><h2>Where it fires</h2>{hits}</div></div>'
        + LIVE_SCRIPT
        + "</body></html>\n"
    )


# ------------------------------------------------------------------------------------------ layer pages


def _layer(census: Census, layer: str, table: dict[str, torch.Tensor], panels: dict[int, _Panel]) -> str:
    """The layer page: a row per channel with its thumbnail and statistics, sortable by any column."""
    page = layer_page(layer)
    head = "".join(f'<th title="{html.escape(tip)}">{name}</th>' for _, name, tip in COLUMNS)
    rows = []
    for c in range(census.channels(layer)):
        link = _link(page, unit_page(layer, c))
        thumb = (
            f'<a href="{link}"><img src="{_link(page, panels[c].thumb)}" loading="lazy" height="48" '
            f'alt="channel {c}"></a>'
            if c in panels
            else ""
        )
        values = [float(table[key][c]) for key, _, _ in COLUMNS]
        cells = "".join(
            f'<td data-v="{v!r}">{v:.1%}</td>' if key == "active" else f'<td data-v="{v!r}">{_g(v)}</td>'
            for (key, _, _), v in zip(COLUMNS, values)
        )
        rows.append(f'<tr><td data-v="{c}"><a href="{link}">{c}</a></td><td data-v="{c}">{thumb}</td>{cells}</tr>')
    dead = int((table["active"] == 0).sum())
    return (
        _head(page, f"layer {layer}")
        + f'<h1>layer {html.escape(layer)}</h1><nav><a href="{_link(page, "index.html")}">report</a></nav>'
        + f"<p>{census.channels(layer)} channels over {census.images} images; {dead} never active. "
        + "Click a heading to sort by it (again: the other way).</p>"
        + f'<table class="sort" id="channels"><thead><tr><th title="channel">channel</th><th>top</th>{head}</tr>'
        + f"</thead><tbody>{''.join(rows)}</tbody></table>"
        + SORT_SCRIPT
        + "</body></html>\n"
    )


def _save(path: Path, text: str) -> Path:
    """Writes a page quickly: no fsync (there are hundreds, written into the run's partial folder, which a
    failed run discards)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", errors="replace")
    return path


def write_pages(out_dir: Path, census: Census) -> list[Path]:
    """Writes a unit page per channel and a layer page per layer of ``census`` (the census of the top9 run in
    ``out_dir``, whose sheets, ``sheets.json`` and :data:`LAYER_INFO` the pages show); returns their paths
    relative to ``out_dir``."""
    out = Path(out_dir)
    info_file = out / LAYER_INFO
    infos = json.loads(info_file.read_text()) if info_file.is_file() else {}
    written = [_save(out / STYLESHEET, STYLE.lstrip())]
    for layer in census.layers:
        tops, bottoms = sheet_panels(out, layer), sheet_panels(out, layer, "bottom")
        for c in range(census.channels(layer)):
            text = _unit(out, census, census.unit(layer, c), tops.get(c), bottoms.get(c), infos.get(layer))
            written.append(_save(out / unit_page(layer, c), text))
        written.append(_save(out / layer_page(layer), _layer(census, layer, census.table(layer), tops)))
    return [p.relative_to(out) for p in written]
