"""A top9 run folder seen by ``deconv serve``: its records per channel and each channel's panel from its sheets.

Files are opened only where the run's own ``top9.json`` and layout put them; nothing a client sends names a file.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from ..errors import ConfigError, SelectionError, one_line
from ..figures.report import panels_per_sheet, sheet_panels

__all__ = ["Run"]

FIELDS = ("layer", "channel", "rank", "index", "y", "x", "value")  # what clients see: no file paths


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
        self.records: dict[tuple[str, int], list[dict]] = {}
        try:
            for r in records:
                if r["layer"] not in layers:
                    raise ConfigError(
                        f"key 'run': {file} has records of layer {r['layer']!r}, which the served model does not have"
                    )
                if not 0 <= r["index"] < images:
                    raise ConfigError(
                        f"key 'run': {file} has a record of image {r['index']}, beyond the served dataset's {images}"
                    )
                self.records.setdefault((r["layer"], r["channel"]), []).append({k: r[k] for k in FIELDS})
        except (KeyError, TypeError) as error:
            raise ConfigError(
                f"key 'run': {file} is not a list of top9 records ({type(error).__name__}: {error})"
            ) from None
        for rs in self.records.values():
            rs.sort(key=lambda r: r["rank"])
        self.per_sheet = panels_per_sheet(self.out)

    def channels(self, layer: str) -> list[int]:
        """The channels of ``layer`` the run recorded, in order."""
        return sorted(c for recorded, c in self.records if recorded == layer)

    def of(self, layer: str, channel: int) -> list[dict]:
        """The records of one channel, best first."""
        if (layer, channel) not in self.records:
            raise SelectionError(f"the run has no records of layer {layer!r} channel {channel}")
        return self.records[(layer, channel)]

    def panel(self, layer: str, channel: int) -> Image.Image:
        """The channel's top-9 panel, cut from the run's sheet of its layer."""
        self.of(layer, channel)
        for _, image, boxes in sheet_panels(self.out, layer, self.channels(layer), self.per_sheet):
            if channel in boxes:
                return image.crop(boxes[channel])
        raise SelectionError(f"the run has no sheet with layer {layer!r} channel {channel}")
