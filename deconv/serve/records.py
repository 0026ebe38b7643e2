"""A top9 run folder seen by ``deconv serve``: its records per channel and each channel's panel from its sheets.

Files are opened only where the run's own ``top9.json`` and layout put them; nothing a client sends names a file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from PIL import Image

from ..errors import ConfigError, InputError, SelectionError, one_line
from ..figures.report import sheet_panels
from ..figures.sheet import MANIFEST

__all__ = ["Run", "REPORT_TYPES"]

REPORT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css",
    ".png": "image/png",
    ".jpg": "image/jpeg",
}  # the report's files
RUN_MANIFEST = "deconv-run.json"  # the run folder's list of the files deconv wrote (deconv.commands.run_folder)

TYPES = {  # what clients see (no file paths) and the JSON types each may have
    "layer": (str,),
    "channel": (int,),
    "rank": (int,),
    "index": (int,),
    "y": (int, type(None)),
    "x": (int, type(None)),
    "value": (int, float),
}


class Run:
    """The records of a top9 run in folder ``out``, checked against the served ``layers`` and dataset size
    ``images``."""

    def __init__(self, out: str | Path, layers: list[str], images: int) -> None:
        self.out = Path(out)
        file = self.out / "top9.json"
        try:
            records = json.loads(file.read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"key 'run': {self.out} holds no top9.json (give the folder of a `deconv top9` run)"
            ) from None
        except (OSError, ValueError) as error:
            raise ConfigError(f"key 'run': cannot read {file} ({one_line(error)})") from None
        if not isinstance(records, list):
            raise ConfigError(f"key 'run': {file} is not a list of top9 records (it holds a {type(records).__name__})")
        self.records: dict[tuple[str, int], list[dict]] = {}
        for n, r in enumerate(records):
            if not isinstance(r, dict):
                raise ConfigError(
                    f"key 'run': {file} is not a list of top9 records: record {n} is a {type(r).__name__}"
                )
            wrong = [k for k, types in TYPES.items() if type(r.get(k, ...)) not in types]
            if wrong or not math.isfinite(r["value"]):
                raise ConfigError(
                    f"key 'run': {file} is not a list of top9 records: record {n} has a missing or wrong "
                    f"{', '.join(wrong) or 'value (not finite)'} ({one_line(json.dumps(r), 200)})"
                )
            if r["layer"] not in layers:
                raise ConfigError(
                    f"key 'run': {file} has records of layer {r['layer']!r}, which the served model does not have"
                )
            if not 0 <= r["index"] < images:
                raise ConfigError(
                    f"key 'run': {file} has a record of image {r['index']}, beyond the served dataset's {images}"
                )
            self.records.setdefault((r["layer"], r["channel"]), []).append({k: r[k] for k in TYPES})
        for rs in self.records.values():
            rs.sort(key=lambda r: r["rank"])
        try:  # where the sheets' panels are, as top9 drew them
            self.panels = {layer: sheet_panels(self.out, layer) for layer in {layer for layer, _ in self.records}}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ConfigError(f"key 'run': cannot read {self.out / MANIFEST} ({one_line(repr(error))})") from None

    def channels(self, layer: str) -> list[int]:
        """The channels of ``layer`` the run recorded, in order."""
        return sorted(c for recorded, c in self.records if recorded == layer)

    def of(self, layer: str, channel: int) -> list[dict]:
        """The records of one channel, best first."""
        if (layer, channel) not in self.records:
            raise SelectionError(f"the run has no records of layer {layer!r} channel {channel}")
        return self.records[(layer, channel)]

    def report_file(self, name: str) -> tuple[bytes, str]:
        """A file of the run's static report (``index.html``, the unit and layer pages, sheets and thumbnails) and
        its media type: only one that the run folder's own list of what deconv wrote names, with a suffix of
        :data:`REPORT_TYPES`; ``SelectionError`` for any other name (nothing else in the folder is opened)."""
        try:
            written = json.loads((self.out / RUN_MANIFEST).read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            written = {}
        kind = REPORT_TYPES.get(Path(name).suffix)
        if name not in written or kind is None or ".." in Path(name).parts:
            raise SelectionError(f"the run's report has no file {name!r}")
        try:
            return (self.out / name).read_bytes(), kind
        except OSError as error:
            raise InputError(f"the run's report file {name!r} cannot be read ({type(error).__name__})") from None

    def panel(self, layer: str, channel: int) -> Image.Image:
        """The channel's top-9 panel, cut from the run's sheet of its layer."""
        self.of(layer, channel)
        panel = self.panels[layer].get(channel)
        if panel is None:
            raise SelectionError(f"the run has no sheet with layer {layer!r} channel {channel}")
        try:
            with Image.open(self.out / panel.sheet) as image:
                return image.crop(panel.box)
        except OSError as error:  # a damaged sheet: named by layer, not by its server path
            raise InputError(f"the run's sheet of layer {layer!r} cannot be read ({type(error).__name__})") from None
