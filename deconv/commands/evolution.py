"""``deconv evolution``: the paper's Fig. 4, features of one layer across training checkpoints."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..analyses.evolution import evolve
from ..errors import ConfigError
from ..figures.draw import save_png
from ..figures.evolution import figure4
from ..mirror import build_mirror
from ..zoo.models import ASSETS, WEIGHTS
from . import command
from .common import (
    DATA,
    MODEL,
    RULE,
    RUN,
    dataset_from,
    model_from,
    preprocess_from,
    require_at_least,
    rules_from,
    run_folder,
)
from .config import option
from .run_folder import open_run
from .top9 import conv_layers

SHIPPED = ASSETS / "checkpoints"
STRONGEST = 8

OPTIONS = (
    MODEL
    + DATA
    + RUN
    + (
        option(
            "checkpoints",
            list,
            [],
            "checkpoints in training order (empty: those shipped with the embedded default)",
            item=str,
        ),
        option("layer", str, "", "the layer to follow (empty: the last convolution's rectified output)"),
        option(
            "channels",
            list,
            [],
            f"channels to follow (empty: the {STRONGEST} strongest at the last checkpoint)",
            item=int,
        ),
        option("limit", int, 0, "scan only the first N images of the dataset (0: all)"),
        RULE,
    )
)


def _checkpoints(settings: dict[str, Any]) -> list[tuple[str, str]]:
    """``(label, path)`` per checkpoint, in training order."""
    if settings["checkpoints"]:
        return [(Path(p).stem, p) for p in settings["checkpoints"]]
    if settings["model"]:
        raise ConfigError("key 'checkpoints' is required for a model other than the embedded default")
    shipped = sorted(SHIPPED.glob("epoch*.pt"), key=lambda p: int(p.stem.removeprefix("epoch")))
    if not shipped:
        raise ConfigError(f"no checkpoints shipped in {SHIPPED}; pass --checkpoints a.pt b.pt ...")
    return [(f"epoch {p.stem.removeprefix('epoch')}", str(p)) for p in shipped] + [("final", str(WEIGHTS))]


@command("evolution", "how a layer's features evolve across training checkpoints (Fig. 4)", OPTIONS)
def run(settings: dict[str, Any]) -> int:
    start = time.perf_counter()
    require_at_least(settings, limit=0, batch_size=1, workers=0)
    checkpoints = _checkpoints(settings)
    model = model_from(settings)
    preprocess = preprocess_from(settings, model)
    dataset = dataset_from(settings, preprocess)
    rule = rules_from(settings)[0]
    layer = settings["layer"] or conv_layers(build_mirror(model))[-1]
    figure = f"evolution/{layer}.png"
    mirrors = (build_mirror(model_from({**settings, "checkpoint": path})) for _, path in checkpoints)
    total = len(dataset) if not settings["limit"] else min(settings["limit"], len(dataset))
    with open_run(run_folder(settings, "evolution", figure)) as folder:
        result = evolve(
            mirrors,
            dataset,
            layer,
            settings["channels"] or None,
            indices=range(total),
            batch_size=settings["batch_size"],
            num_workers=settings["workers"],
            progress=settings["progress"],
            rule=rule,
        )
        if not settings["channels"]:
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
        f"followed {len(result.channels)} channels of {layer} through {len(checkpoints)} checkpoints over {total} images "
        f"in {time.perf_counter() - start:.1f} s; wrote {path} and {report}"
    )
    return 0
