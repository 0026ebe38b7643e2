"""``deconv project``: one image's projection from one activation or class, beside the image."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import option
from ..data import load_image
from ..errors import ConfigError
from ..mirror import build_mirror
from ..render import label_strip, save_png, show_patch, show_projection, to_pil, upscale
from . import command
from .common import DATA, MODEL, RUN, model_from, preprocess_from

OPTIONS = MODEL + DATA + RUN + (
    option("image", str, "", "the image file to project"),
    option("layer", str, "", "the layer to project from (see `deconv layers`)"),
    option("channel", int, -1, "the channel of that layer"),
    option("position", str, "", "'Y,X' for one activation, 'map' for the whole feature map (empty: the strongest)"),
    option("target_class", int, -1, "project from this class output instead of a layer (-1: no)"),
)


def _position(text: str) -> tuple[int, int] | str | None:
    if not text:
        return None
    if text == "map":
        return "map"
    try:
        y, x = (int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"key 'position' must be 'Y,X' (two integers) or 'map', got {text!r}") from None
    return y, x


@command("project", "project one activation (or class) of one image to pixels, beside the image", OPTIONS)
def run(settings: dict[str, Any]) -> int:
    if not settings["image"]:
        raise ConfigError("key 'image' is required: the image file to project")
    target = settings["target_class"] if settings["target_class"] >= 0 else None
    if target is None and (not settings["layer"] or settings["channel"] < 0):
        raise ConfigError("give --layer and --channel (with --position Y,X or map), or --target-class K")
    model = model_from(settings)
    preprocess = preprocess_from(settings, model)
    image = load_image(settings["image"], preprocess)[None]
    mirror = build_mirror(model)
    if target is None:
        projection = mirror.project(image, settings["layer"], settings["channel"], _position(settings["position"]))
        what = f"{settings['layer']} channel {settings['channel']}" + (f" at {settings['position']}" if settings["position"] else "")
    else:
        if settings["position"]:
            raise ConfigError("--position goes with --layer/--channel, not with --target-class")
        projection = mirror.project(image, target_class=target)
        names = getattr(model, "classes", None)
        what = f"class {target}" + (f" ({names[target]})" if names and target < len(names) else "")
    factor = max(1, round(256 / image.shape[-2]))
    shown = upscale(torch.cat([show_projection(projection.cpu()), show_patch(image.cpu(), preprocess.denormalize)], 3), factor)
    out = Path(settings["out"])
    name = f"project-{Path(settings['image']).stem}-" + (f"class{target}" if target is not None else f"{settings['layer']}-c{settings['channel']}")
    path = out / f"{name}.png"
    save_png(label_strip(to_pil(shown[0]), f"{Path(settings['image']).name}: projection of {what}  |  image"), path)
    print(f"wrote {path}")
    return 0

