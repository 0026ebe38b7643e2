"""``deconv evolution``: the paper's Fig. 4, features of one layer across training checkpoints."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from ..analyses.evolution import evolve
from ..errors import ConfigError
from ..figures.draw import save_png
from ..figures.evolution import figure4
from ..mirror import build_mirror
from ..zoo.models import ASSETS, WEIGHTS
from . import command
from .common import (
    RULE,
    Data,
    Model,
    Output,
    dataset_from,
    model_from,
    preprocess_from,
    require_at_least,
    rules_from,
    run_folder,
)
from .config import Option, Settings, with_options
from .run_folder import open_run
from .top9 import conv_layers

SHIPPED = ASSETS / "checkpoints"
STRONGEST = 8


@with_options(
    Option(
        "checkpoints",
        list,
        [],
        "checkpoints in training order (empty: those shipped with the embedded default)",
        item=str,
    ),
    Option("layer", str, "", "the layer to follow (empty: the last convolution's rectified output)"),
    Option(
        "channels",
        list,
        [],
        f"channels to follow (empty: the {STRONGEST} strongest at the last checkpoint)",
        item=int,
    ),
    Option("limit", int, 0, "scan only the first N images of the dataset (0: all)"),
    RULE,
)
class EvolutionSettings(Settings):
    """The model and its checkpoints, the data scanned at each, the layer and channels followed."""

    model: Model
    data: Data
    output: Output
    checkpoints: tuple[str, ...]
    layer: str
    channels: tuple[int, ...]
    limit: int
    rule: str


OPTIONS = EvolutionSettings.options


def _checkpoints(paths: Sequence[str], embedded: bool) -> list[tuple[str, str]]:
    """``(label, path)`` per checkpoint, in training order: ``paths``, or for the ``embedded`` default those
    shipped with it."""
    if paths:
        return [(Path(p).stem, p) for p in paths]
    if not embedded:
        raise ConfigError("key 'checkpoints' is required for a model other than the embedded default")
    shipped = sorted(SHIPPED.glob("epoch*.pt"), key=lambda p: int(p.stem.removeprefix("epoch")))
    if not shipped:
        raise ConfigError(f"no checkpoints shipped in {SHIPPED}; pass --checkpoints a.pt b.pt ...")
    return [(f"epoch {p.stem.removeprefix('epoch')}", str(p)) for p in shipped] + [("final", str(WEIGHTS))]


@command("evolution", "how a layer's features evolve across training checkpoints (Fig. 4)", EvolutionSettings)
def run(settings: EvolutionSettings) -> int:
    start = time.perf_counter()
    require_at_least(settings, limit=0, batch_size=1, workers=0)
    checkpoints = _checkpoints(settings.checkpoints, settings.model.embedded)
    model = model_from(settings.model)
    preprocess = preprocess_from(settings.data, model, settings.model.embedded)
    dataset = dataset_from(settings.data, preprocess, settings.limit)
    rule = rules_from(settings.rule)[0]
    layer = settings.layer or conv_layers(build_mirror(model, shape=lambda: tuple(dataset[0][0].shape)))[-1]
    figure = f"evolution/{layer}.png"
    mirrors = (
        build_mirror(model_from(replace(settings.model, checkpoint=path)), shape=lambda: tuple(dataset[0][0].shape))
        for _, path in checkpoints
    )
    total = len(dataset) if not settings.limit else min(settings.limit, len(dataset))
    with open_run(run_folder(settings.output, "evolution", figure, data=settings.data)) as folder:
        result = evolve(
            mirrors,
            dataset,
            layer,
            list(settings.channels) or None,
            indices=range(total),
            batch_size=settings.data.batch_size,
            num_workers=settings.data.workers,
            progress=settings.output.progress,
            rule=rule,
        )
        if not settings.channels:
            result = result.strongest(STRONGEST)
        save_png(
            figure4(
                result,
                [label for label, _ in checkpoints],
                preprocess.denormalize,
                rule=rule,
                channel_order=preprocess.channel_order,
            ),
            folder.partial / figure,
        )
    path, report = folder.path / figure, folder.report
    print(
        f"followed {len(result.channels)} channels of {layer} through {len(checkpoints)} checkpoints "
        f"over {total} images in {time.perf_counter() - start:.1f} s; wrote {path} and {report}"
    )
    return 0
