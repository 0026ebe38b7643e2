"""``deconv top9``: the paper's Fig. 2 for every channel of the chosen layers over a dataset."""
from __future__ import annotations

import itertools
import time
from typing import Any

from torch import nn

from ..config import dump_toml, option
from ..io import write_json, write_text
from ..mirror import Mirror, build_mirror
from ..render import figure2, save_png
from ..scan import project_top, scan
from . import command
from .common import DATA, MODEL, RUN, dataset_from, model_from, out_dir, preprocess_from

OPTIONS = MODEL + DATA + RUN + (
    option("layers", list, [], "layers to visualise (empty: the rectified output of every convolution)", item=str),
    option("top", int, 9, "activations kept per channel"),
    option("limit", int, 0, "scan only the first N images of the dataset (0: all)"),
    option("memory_budget_mb", int, 2048, "memory that batched projections may use at once, in MB"),
    option("per_sheet", int, 64, "channels per PNG sheet"),
)


def conv_layers(mirror: Mirror) -> list[str]:
    """The rectified output of each convolution (the ReLU right after it), else the convolution itself."""
    names = []
    steps = mirror.steps
    for i, step in enumerate(steps):
        if isinstance(step.layer, nn.Conv2d):
            after = next((s for s in steps[i + 1 : i + 3] if isinstance(s.layer, nn.ReLU)), step)
            names.append(after.name)
    return names


@command("top9", "top activations per channel over a dataset, projected to pixels (Fig. 2)", OPTIONS)
def run(settings: dict[str, Any]) -> int:
    start = time.perf_counter()
    out = out_dir(settings, "top9.json")
    model = model_from(settings)
    preprocess = preprocess_from(settings, model)
    dataset = dataset_from(settings, preprocess)
    mirror = build_mirror(model)
    layers = settings["layers"] or conv_layers(mirror)
    for layer in layers:
        mirror.index(layer)
    write_text(out / "config.toml", dump_toml(settings, "deconv top9: the resolved settings of this run"))
    total = len(dataset) if not settings["limit"] else min(settings["limit"], len(dataset))
    state = scan(
        mirror, dataset, layers, k=settings["top"], batch_size=settings["batch_size"],
        num_workers=settings["workers"], indices=range(total), progress=settings["progress"],
    )
    records = state.records(dataset)
    write_json(out / "top9.json", [r.to_json() for r in records])
    chunks = project_top(
        mirror, dataset, records, batch_size=settings["batch_size"], num_workers=settings["workers"],
        memory_budget=settings["memory_budget_mb"] * 2**20, progress=settings["progress"],
    )
    written = []
    for layer, group in itertools.groupby(chunks, key=lambda c: c.records[0].layer):
        for n, sheet in enumerate(figure2(group, preprocess.denormalize, settings["per_sheet"]), 1):
            path = out / "sheets" / f"{layer}-{n}.png"
            save_png(sheet, path)
            written.append(path)
    print(
        f"scanned {state.images} images ({len(state.skipped)} unreadable skipped) in "
        f"{time.perf_counter() - start:.1f} s; {len(records)} records in {out / 'top9.json'}, "
        f"{len(written)} sheets in {out / 'sheets'}"
    )
    return 0
