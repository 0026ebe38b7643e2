"""``deconv occlusion``: the paper's Fig. 7 for one image, maps as PNG and .npy."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..analyses.occlusion import occlude
from ..data import load_image
from ..engine.graph import model_runs_on
from ..errors import ConfigError
from ..figures.draw import class_name, save_png, show_patch
from ..figures.occlusion import figure7
from ..io import atomic_write
from ..mirror import build_mirror
from . import command
from .common import (
    DATA,
    MODEL,
    RULE,
    RUN,
    model_from,
    preprocess_from,
    require_at_least,
    rules_from,
    run_folder,
)
from .config import option
from .run_folder import open_run
from .top9 import conv_layers

OPTIONS = (
    MODEL
    + DATA
    + RUN
    + (
        option("image", str, "", "the image file to occlude"),
        option(
            "layer",
            str,
            "",
            "the layer whose strongest feature map is watched (empty: the last convolution's rectified output)",
        ),
        option("channel", int, -1, "the feature map to watch (-1: the strongest in the unoccluded image)"),
        option("label", int, -1, "the image's true class (-1: the class the model predicts for it)"),
        option(
            "square", int, 7, "side of the grey square in pixels (grey: the configured mean, 0 after normalisation)"
        ),
        option("stride", int, 1, "pixels between square positions"),
        RULE,
    )
)


@command(
    "occlusion",
    "occlusion sensitivity of one image: activation and class maps as a grey square slides over it (Fig. 7)",
    OPTIONS,
)
def run(settings: dict[str, Any]) -> int:
    if not settings["image"]:
        raise ConfigError("key 'image' is required: the image file to occlude")
    require_at_least(settings, square=1, stride=1, batch_size=1)
    stem = Path(settings["image"]).stem
    figure = f"occlusion/{stem}.png"
    model = model_from(settings)
    preprocess = preprocess_from(settings, model)
    image = load_image(settings["image"], preprocess)
    if settings["stride"] > min(image.shape[-2:]):
        raise ConfigError(
            f"key 'stride' must be at most the image's side, {min(image.shape[-2:])} pixels, got {settings['stride']}"
        )
    mirror = build_mirror(model, rule=rules_from(settings)[0])  # the rule of the projected panel (c)
    layer = settings["layer"] or conv_layers(mirror)[-1]
    maps = ("activation", "probability", "predicted", "projection")
    with open_run(
        run_folder(settings, "occlusion", figure, outputs=tuple(f"occlusion/{stem}/{m}.npy" for m in maps))
    ) as folder:
        start = time.perf_counter()
        with model_runs_on(f"{Path(settings['image']).name} of shape {tuple(image.shape)}"):
            result = occlude(
                mirror,
                image,
                layer,
                square=settings["square"],
                stride=settings["stride"],
                channel=settings["channel"] if settings["channel"] >= 0 else None,
                label=settings["label"] if settings["label"] >= 0 else None,
                batch_size=settings["batch_size"],
            )
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
        f"lowest {float(result.probability.min()):.3f}; wrote {path}, {path.with_suffix('')}/{{{','.join(maps)}}}.npy and {report}"
    )
    return 0
