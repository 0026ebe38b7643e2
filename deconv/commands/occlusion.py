"""``deconv occlusion``: the paper's Fig. 7 for one image, maps as PNG and .npy."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..analyses.occlusion import OcclusionOptions, occlude
from ..data import load_image
from ..engine.graph import model_runs_on
from ..errors import ConfigError
from ..figures.draw import class_name, save_png, show_patch
from ..figures.occlusion import figure7
from ..io import atomic_write
from ..mirror import build_mirror
from . import command
from .common import (
    RULE,
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
from .top9 import conv_layers


@with_options(
    Option("image", str, "", "the image file to occlude"),
    Option(
        "layer",
        str,
        "",
        "the layer whose strongest feature map is watched (empty: the last convolution's rectified output)",
    ),
    Option("channel", int, -1, "the feature map to watch (-1: the strongest in the unoccluded image)"),
    Option("label", int, -1, "the image's true class (-1: the class the model predicts for it)"),
    Option("square", int, 7, "side of the grey square in pixels (grey: the configured mean, 0 after normalisation)"),
    Option("stride", int, 1, "pixels between square positions"),
    RULE,
)
class OcclusionSettings(Settings):
    """The model, the image, the layer and class watched, the square and its steps."""

    model: Model
    data: Data
    output: Output
    image: str
    layer: str
    channel: int
    label: int
    square: int
    stride: int
    rule: str


OPTIONS = OcclusionSettings.options


@command(
    "occlusion",
    "occlusion sensitivity of one image: activation and class maps as a grey square slides over it (Fig. 7)",
    OcclusionSettings,
)
def run(settings: OcclusionSettings) -> int:
    if not settings.image:
        raise ConfigError("key 'image' is required: the image file to occlude")
    require_at_least(settings, square=1, stride=1, batch_size=1)
    stem = Path(settings.image).stem
    figure = f"occlusion/{stem}.png"
    model = model_from(settings.model)
    preprocess = preprocess_from(settings.data, model, settings.model.embedded)
    image = load_image(settings.image, preprocess)
    if settings.stride > min(image.shape[-2:]):
        raise ConfigError(
            f"key 'stride' must be at most the image's side, {min(image.shape[-2:])} pixels, got {settings.stride}"
        )
    mirror = build_mirror(model, rule=rules_from(settings.rule)[0], shape=tuple(image.shape))  # panel (c)'s rule
    layer = settings.layer or conv_layers(mirror)[-1]
    maps = ("activation", "probability", "predicted", "projection")
    outputs = tuple(f"occlusion/{stem}/{m}.npy" for m in maps)
    with open_run(run_folder(settings.output, "occlusion", figure, outputs=outputs)) as folder:
        start = time.perf_counter()
        with model_runs_on(f"{Path(settings.image).name} of shape {tuple(image.shape)}"):
            result = occlude(mirror, image, layer, _occluding(settings))
        seconds = time.perf_counter() - start
        names = getattr(model, "classes", None)
        shown = show_patch(image[None], preprocess.denormalize)[0]
        save_png(
            figure7(shown, result, names, rule=mirror.rule, channel_order=preprocess.channel_order),
            folder.partial / figure,
        )
        for name in maps:
            atomic_write(
                folder.partial / "occlusion" / stem / f"{name}.npy",
                lambda f, v=getattr(result, name): np.save(f, v.numpy()),
            )
    path, report = folder.path / figure, folder.report
    positions = result.activation.numel()
    print(
        f"{positions} square positions in {seconds:.2f} s ({positions / seconds:.0f}/s); {layer} map {result.channel}; "
        f"p({class_name(result.label, names)}) unoccluded {float(result.clean_probabilities[result.label]):.3f}, "
        f"lowest {float(result.probability.min()):.3f}; "
        f"wrote {path}, {path.with_suffix('')}/{{{','.join(maps)}}}.npy and {report}"
    )
    return 0


def _occluding(settings: OcclusionSettings) -> OcclusionOptions:
    """The square, its steps and what it watches (-1: the analysis's default)."""
    return OcclusionOptions(
        square=settings.square,
        stride=settings.stride,
        channel=settings.channel if settings.channel >= 0 else None,
        label=settings.label if settings.label >= 0 else None,
        batch_size=settings.data.batch_size,
    )
