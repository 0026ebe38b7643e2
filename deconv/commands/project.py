"""``deconv project``: one image's projection from one activation or class, beside the image."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from ..data import load_image
from ..engine.graph import model_runs_on
from ..errors import ConfigError
from ..figures.draw import (
    class_name,
    column,
    label_strip,
    row,
    save_png,
    show_patch,
    show_projection,
    to_pil,
    upscale,
)
from ..mirror import Mirror, Selection, build_mirror
from . import command
from .common import (
    DATA,
    MODEL,
    RULE,
    RULES,
    RUN,
    model_from,
    preprocess_from,
    require_at_least,
    rules_from,
    run_folder,
)
from .config import option
from .run_folder import open_run

OPTIONS = (
    MODEL
    + DATA
    + RUN
    + (
        option("image", str, "", "the image file to project"),
        option("layer", str, "", "the layer to project from (see `deconv layers`)"),
        option("channel", int, -1, "the channel of that layer (-1: the image's strongest channel there)"),
        option("position", str, "", "'Y,X' for one activation, 'map' for the whole feature map (empty: the strongest)"),
        option("target_class", int, -1, "project from this class output instead of a layer (-1: no)"),
        option(
            "top_classes", int, 0, "instead, a sheet of the projections of the image's N most probable classes (0: no)"
        ),
        RULE,
        RULES,
    )
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


@command(
    "project", "project one activation, class or the top classes of one image to pixels, beside the image", OPTIONS
)
def run(settings: dict[str, Any]) -> int:
    if not settings["image"]:
        raise ConfigError("key 'image' is required: the image file to project")
    require_at_least(settings, top_classes=0)
    target = settings["target_class"] if settings["target_class"] >= 0 else None
    top = settings["top_classes"]
    if not top and target is None and not settings["layer"]:
        raise ConfigError(
            "give --layer [--channel C] (with --position Y,X or map), --target-class K or --top-classes N"
        )
    if settings["position"] and (target is not None or top):
        raise ConfigError("--position goes with --layer/--channel, not with --target-class or --top-classes")
    model = model_from(settings)
    rules = rules_from(settings)
    if top and len(rules) > 1:
        raise ConfigError("--rules goes with --layer or --target-class; --top-classes draws one rule (--rule)")
    preprocess = preprocess_from(settings, model)
    image = load_image(settings["image"], preprocess)[None]
    mirror = build_mirror(model, rule=rules[0])
    names = getattr(model, "classes", None)
    file = Path(settings["image"])
    runs_on = f"{file.name} of shape {tuple(image.shape[1:])}"
    if top or target is not None:
        with model_runs_on(runs_on):
            output = mirror.shapes(tuple(image.shape[1:]))[mirror.output]
        if len(output) != 1:
            flag = "--top-classes" if top else "--target-class"
            raise ConfigError(
                f"{flag} needs a model whose output is a class vector (N, K); this one outputs (N, {', '.join(map(str, output))}): "
                "project a feature map with --layer and --channel instead"
            )
    if not top and target is None and settings["channel"] < 0:  # the image's strongest channel at the layer
        with model_runs_on(runs_on):
            settings = {**settings, "channel": _strongest_channel(mirror, image, settings["layer"])}
    shown = show_patch(image.cpu(), preprocess.denormalize)
    if top:
        name = f"project-{file.stem}-top{top}"
    elif target is None:
        name = f"project-{file.stem}-{settings['layer']}-c{settings['channel']}"
    else:
        name = f"project-{file.stem}-class{target}"
    name += ("" if rules == ["deconvnet"] else "-" + "-".join(rules)) + ".png"  # the paper's rule keeps the plain name
    with open_run(run_folder(settings, "project", outputs=(name,))) as folder, model_runs_on(runs_on):
        if top:
            save_png(
                _top_classes(mirror, image, shown, top, names, file.name, preprocess.channel_order),
                folder.partial / name,
            )
        else:
            if target is None:
                what = f"{settings['layer']} channel {settings['channel']}" + (
                    f" at {settings['position']}" if settings["position"] else ""
                )
                source = {
                    "layer": settings["layer"],
                    "channel": settings["channel"],
                    "position": _position(settings["position"]),
                }
            else:
                what = f"class {target}" + (f" ({names[target]})" if names and target < len(names) else "")
                source = {"target_class": target}
            strips = []
            for rule in rules:  # one row per rule
                shown_projection = show_projection(
                    mirror.project(image, **source, rule=rule).cpu(), preprocess.channel_order
                )
                both = upscale(torch.cat([shown_projection, shown], 3), math.ceil(256 / image.shape[-2]))
                strips.append(label_strip(to_pil(both[0]), f"{file.name}: projection of {what} ({rule})  |  image"))
            save_png(column(strips), folder.partial / name)
    print(f"wrote {folder.path / name} and {folder.report}")
    return 0


def _strongest_channel(mirror: Mirror, image: torch.Tensor, layer: str) -> int:
    """The channel of ``layer`` with the largest activation for ``image`` ``(1, C, H, W)``."""
    top = mirror.index(layer)
    out = mirror.run(mirror.check_images(image), keep=[top], until=top, remember=False).outputs[top][0]
    return int(out.flatten(1).amax(1).argmax()) if out.dim() == 3 else int(out.argmax())


def _top_classes(
    mirror: Mirror,
    image: torch.Tensor,
    shown: torch.Tensor,
    top: int,
    names: Sequence[str] | None,
    title: str,
    channel_order: str = "RGB",
) -> Image.Image:
    """The image ``shown`` ``(1, 3, H, W)`` beside the projections of its ``top`` most probable classes
    (shown as RGB for a model that takes ``channel_order`` "BGR"), best first, each captioned with its
    probability (the captions are printed too)."""
    last = mirror.output
    scores = mirror.run(mirror.check_images(image), keep=[last], remember=False).outputs[last]
    probabilities, classes = scores.float().softmax(1)[0].topk(min(top, scores.shape[1]))
    projections = mirror.project_many(image, [Selection(0, mirror.steps[last].name, int(k)) for k in classes])
    captions = [
        f"{n}. {class_name(int(k), names)}  {float(p):.1%}" for n, (k, p) in enumerate(zip(classes, probabilities), 1)
    ]
    print("\n".join(captions))
    tiles = upscale(
        torch.cat([shown, show_projection(projections.cpu(), channel_order)]), math.ceil(160 / image.shape[-2])
    )
    sheet = row([label_strip(to_pil(t), c) for t, c in zip(tiles, [title, *captions])])
    return label_strip(
        sheet,
        f"projections of the {len(classes)} most probable classes, from the class output down (rule: {mirror.rule})",
        size=15,
    )
