"""``deconv project``: one image's projection from one activation or class, beside the image."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

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
    RULE,
    RULES,
    Data,
    Model,
    Output,
    model_from,
    preprocess_from,
    require_at_least,
    rules_from,
    run_folder,
)
from .config import Option, Settings, with_options
from .run_folder import open_run


@with_options(
    Option("image", str, "", "the image file to project"),
    Option("layer", str, "", "the layer to project from (see `deconv layers`)"),
    Option("channel", int, -1, "the channel of that layer (-1: the image's strongest channel there)"),
    Option("position", str, "", "'Y,X' for one activation, 'map' for the whole feature map (empty: the strongest)"),
    Option("target_class", int, -1, "project from this class output instead of a layer (-1: no)"),
    Option("top_classes", int, 0, "instead, a sheet of the projections of the image's N most probable classes (0: no)"),
    RULE,
    RULES,
)
class ProjectSettings(Settings):
    """The model, the image and what of it is projected: an activation, a class or the top classes."""

    model: Model
    data: Data
    output: Output
    image: str
    layer: str
    channel: int
    position: str
    target_class: int
    top_classes: int
    rule: str
    rules: tuple[str, ...]

    @property
    def target(self) -> int | None:
        """The class projected from, if one is."""
        return self.target_class if self.target_class >= 0 else None


OPTIONS = ProjectSettings.options


@dataclass(frozen=True)
class Shown:
    """The image a projection is drawn beside: ``image`` ``(1, C, H, W)`` as the model takes it, ``shown``
    ``(1, 3, H, W)`` for display, the file's ``name`` and the ``channel_order`` the model takes."""

    image: torch.Tensor
    shown: torch.Tensor
    name: str
    channel_order: str


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


def _check(settings: ProjectSettings) -> None:
    """Refuses settings that name no image, or not exactly one thing to project."""
    if not settings.image:
        raise ConfigError("key 'image' is required: the image file to project")
    require_at_least(settings, top_classes=0)
    top = settings.top_classes
    if not top and settings.target is None and not settings.layer:
        raise ConfigError(
            "give --layer [--channel C] (with --position Y,X or map), --target-class K or --top-classes N"
        )
    if settings.position and (settings.target is not None or top):
        raise ConfigError("--position goes with --layer/--channel, not with --target-class or --top-classes")


@command(
    "project",
    "project one activation, class or the top classes of one image to pixels, beside the image",
    ProjectSettings,
)
def run(settings: ProjectSettings) -> int:
    _check(settings)
    model = model_from(settings.model)
    rules = rules_from(settings.rule, settings.rules)
    top = settings.top_classes
    if top and len(rules) > 1:
        raise ConfigError("--rules goes with --layer or --target-class; --top-classes draws one rule (--rule)")
    preprocess = preprocess_from(settings.data, model, settings.model.embedded)
    image = load_image(settings.image, preprocess)[None]
    mirror = build_mirror(model, rule=rules[0], shape=tuple(image.shape[1:]))
    names = getattr(model, "classes", None)
    file = Path(settings.image)
    runs_on = f"{file.name} of shape {tuple(image.shape[1:])}"
    with model_runs_on(runs_on):
        settings = _resolved(mirror, image, settings)
    picture = Shown(image, show_patch(image.cpu(), preprocess.denormalize), file.name, preprocess.channel_order)
    name = _file_name(settings, rules)
    with open_run(run_folder(settings.output, "project", outputs=(name,))) as folder, model_runs_on(runs_on):
        if top:
            save_png(_top_classes(mirror, picture, top, names), folder.partial / name)
        else:
            save_png(_rows(mirror, picture, settings, rules, names), folder.partial / name)
    print(f"wrote {folder.path / name} and {folder.report}")
    return 0


def _resolved(mirror: Mirror, image: torch.Tensor, settings: ProjectSettings) -> ProjectSettings:
    """``settings`` with the image's strongest channel at the layer when none is given; ``ConfigError`` for
    a class projection from a model whose output is not a class vector."""
    if settings.top_classes or settings.target is not None:
        output = mirror.shape(mirror.output_layer, tuple(image.shape[1:]))
        if len(output) != 1:
            flag = "--top-classes" if settings.top_classes else "--target-class"
            raise ConfigError(
                f"{flag} needs a model whose output is a class vector (N, K); "
                f"this one outputs (N, {', '.join(map(str, output))}): "
                "project a feature map with --layer and --channel instead"
            )
        return settings
    if settings.channel < 0:
        return replace(settings, channel=_strongest_channel(mirror, image, settings.layer))
    return settings


def _file_name(settings: ProjectSettings, rules: list[str]) -> str:
    """The picture's file name: the image's, what is projected and the rules (none for the paper's)."""
    stem = Path(settings.image).stem
    if settings.top_classes:
        name = f"project-{stem}-top{settings.top_classes}"
    elif settings.target is None:
        name = f"project-{stem}-{settings.layer}-c{settings.channel}"
    else:
        name = f"project-{stem}-class{settings.target}"
    return name + ("" if rules == ["deconvnet"] else "-" + "-".join(rules)) + ".png"


def _rows(
    mirror: Mirror, picture: Shown, settings: ProjectSettings, rules: list[str], names: Sequence[str] | None
) -> Image.Image:
    """One row per rule: the projection of the activation or class that ``settings`` name, beside the image."""
    target, image = settings.target, picture.image
    if target is None:
        what = f"{settings.layer} channel {settings.channel}" + (
            f" at {settings.position}" if settings.position else ""
        )
    else:
        what = f"class {target}" + (f" ({names[target]})" if names and target < len(names) else "")
    strips = []
    for rule in rules:
        if target is None:
            projection = mirror.project(
                image, settings.layer, settings.channel, _position(settings.position), rule=rule
            )
        else:
            projection = mirror.project(image, target_class=target, rule=rule)
        both = upscale(
            torch.cat([show_projection(projection.cpu(), picture.channel_order), picture.shown], 3),
            math.ceil(256 / image.shape[-2]),
        )
        strips.append(label_strip(to_pil(both[0]), f"{picture.name}: projection of {what} ({rule})  |  image"))
    return column(strips)


def _strongest_channel(mirror: Mirror, image: torch.Tensor, layer: str) -> int:
    """The channel of ``layer`` with the largest activation for ``image`` ``(1, C, H, W)``."""
    out = mirror.activations(image, [layer])[layer][0]
    return int(out.flatten(1).amax(1).argmax()) if out.dim() == 3 else int(out.argmax())


def _top_classes(mirror: Mirror, picture: Shown, top: int, names: Sequence[str] | None) -> Image.Image:
    """The image beside the projections of its ``top`` most probable classes (shown as RGB for a model that
    takes "BGR"), best first, each captioned with its probability (the captions are printed too)."""
    image, last = picture.image, mirror.output_layer
    scores = mirror.activations(image, [last])[last]
    probabilities, classes = scores.float().softmax(1)[0].topk(min(top, scores.shape[1]))
    projections = mirror.project_many(image, [Selection(0, last, int(k)) for k in classes])
    captions = [
        f"{n}. {class_name(int(k), names)}  {float(p):.1%}" for n, (k, p) in enumerate(zip(classes, probabilities), 1)
    ]
    print("\n".join(captions))
    tiles = upscale(
        torch.cat([picture.shown, show_projection(projections.cpu(), picture.channel_order)]),
        math.ceil(160 / image.shape[-2]),
    )
    sheet = row([label_strip(to_pil(t), c) for t, c in zip(tiles, [picture.name, *captions])])
    return label_strip(
        sheet,
        f"projections of the {len(classes)} most probable classes, from the class output down (rule: {mirror.rule})",
        size=15,
    )
