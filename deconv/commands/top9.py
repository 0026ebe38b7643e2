"""``deconv top9``: the paper's Fig. 2 for every channel of the chosen layers over a dataset.

Under torchrun every process scans every ``size``-th batch, the per-channel rankings are merged,
every process projects every ``size``-th batch of each layer's top images and rank 0 draws and
writes the sheets: the outputs are those of a single process. Each process saves its scan state
in ``.deconv-partial/state/`` of the output folder while the run lasts (``state/`` once it has
succeeded); ``--resume`` continues from it.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..analyses.checkpoint import Checkpoint, fingerprint
from ..analyses.top9 import Record, ScanState, project_top, scan
from ..data import Preprocess
from ..engine.graph import model_runs_on
from ..errors import ConfigError, DatasetError
from ..figures.draw import save_png
from ..figures.sheet import display_tiles, figure2, save_projections
from ..io import write_json, write_text
from ..mirror import Mirror, build_mirror
from ..progress import Clock, progress_bar
from . import command
from .common import (
    DATA,
    MODEL,
    RULE,
    RULES,
    RUN,
    dataset_from,
    device_from,
    model_from,
    preprocess_from,
    require_at_least,
    rules_from,
    run_folder,
)
from .config import dump_toml, option
from .distributed import Group, process_group
from .run_folder import open_run

OPTIONS = (
    MODEL
    + DATA
    + RUN
    + (
        option("layers", list, [], "layers to visualise (empty: the rectified output of every convolution)", item=str),
        option("top", int, 9, "activations kept per channel"),
        option("limit", int, 0, "scan only the first N images of the dataset (0: all)"),
        option("memory_budget_mb", int, 2048, "memory that batched projections may use at once, in MB"),
        option("per_sheet", int, 64, "channels per PNG sheet"),
        option(
            "tile_px",
            int,
            80,
            "display size of a tile's longer side in pixels (80: a 64-channel sheet is about 4,000 px wide)",
        ),
        option(
            "channels",
            dict,
            {},
            "channels to draw per layer, e.g. features.29=0-63,100 (a table in a config; empty: all)",
        ),
        option(
            "save_projections",
            str,
            "",
            "also write each full-resolution projection: 'npy' or 'png' (empty: no)",
            choices=("", "npy", "png"),
        ),
        option("save_every", int, 50, "save the scan state every N batches (0: only at the end and on SIGINT/SIGTERM)"),
        option("resume", bool, False, "continue the scan whose state is saved in the output folder"),
        option("strict", bool, False, "stop at the first unreadable image instead of skipping it"),
        RULE,
        RULES,
    )
)

MAX_TOP = 1000  # a channel's sheet shows its top images side by side
MAX_TILE_PX = 256  # a 64-channel sheet of 256 px tiles is about 13,000 x 7,000 px, near what image viewers open
STATE = "state"  # the folder of the per-process scan states, in the output folder


def conv_layers(mirror: Mirror) -> list[str]:
    """The layers to draw by default: the outermost blocks of a branching model (ResNet blocks,
    DenseNet blocks, Inception modules), else the rectified output of each convolution (the ReLU
    right after it, or the convolution itself)."""
    blocks = mirror.blocks()
    if blocks:
        return blocks
    names = []
    steps = mirror.steps
    for i, step in enumerate(steps):
        if isinstance(step.layer, nn.Conv2d):
            after = next((s for s in steps[i + 1 : i + 3] if isinstance(s.layer, nn.ReLU)), step)
            names.append(after.name)
    return names


@command("top9", "top activations per channel over a dataset, projected to pixels (Fig. 2)", OPTIONS)
def run(settings: dict[str, Any]) -> int:
    clock = Clock()
    require_at_least(
        settings, top=1, limit=0, batch_size=1, workers=0, memory_budget_mb=1, per_sheet=1, save_every=0, tile_px=8
    )
    if settings["top"] > MAX_TOP:
        raise ConfigError(f"key 'top' must be <= {MAX_TOP} (activations kept per channel), got {settings['top']}")
    if settings["tile_px"] > MAX_TILE_PX:
        raise ConfigError(
            f"key 'tile_px' must be <= {MAX_TILE_PX} (a sheet's size grows with it), got {settings['tile_px']}"
        )
    device = device_from(settings)
    with process_group(device) as group:
        model = model_from(settings)
        preprocess = preprocess_from(settings, model)
        dataset = dataset_from(settings, preprocess)
        rules = rules_from(settings)
        mirror = build_mirror(model)
        layers = settings["layers"] or conv_layers(mirror)
        wanted = {layer: channel_list(spec, layer) for layer, spec in settings["channels"].items()}
        if set(wanted) - set(layers):
            raise ConfigError(
                f"key 'channels': layer {sorted(set(wanted) - set(layers))[0]!r} is not scanned (layers: {', '.join(layers)})"
            )
        total = len(dataset) if not settings["limit"] else min(settings["limit"], len(dataset))  # type: ignore[arg-type]
        clock.expect("setup", "scan", *(f"projections {layer}" for layer in layers), "rendering", "report")
        _rehearse(mirror, dataset, layers, total)
        folder = run_folder(
            settings, "top9", "top9.json", STATE, outputs=("config.toml", "skipped.json"), replace_all=True
        )
        with open_run(folder, group.main, lambda: group.all_gather(None)):
            clock.add("setup", clock.now() - clock.start)  # the model, data, mirror, rehearsal and output folder
            out = folder.partial
            with clock("scan"):
                state = _scan(settings, group, out, model, preprocess, dataset, mirror, layers, total)
            records = _chosen(state, dataset, wanted)
            if group.main:
                write_text(out / "config.toml", dump_toml(settings, "deconv top9: the resolved settings of this run"))
                write_json(out / "skipped.json", [{"index": i, "path": p, "reason": r} for i, p, r in state.skipped])
                rule = rules[0] if len(rules) == 1 else rules  # the records are those of every rule: one scan
                write_json(out / "top9.json", [{**r.to_json(), "rule": rule} for r in records])
            sheets = _sheets(settings, group, out, mirror, dataset, preprocess, layers, records, rules, clock)
            committing = clock.now()
        clock.add("report", clock.now() - committing)  # moving the files in, the report, the manifest
        out = folder.path
    if not state.images:  # the run is kept: its skipped.json says why
        raise DatasetError(
            f"none of the {len(state.skipped)} images of {settings['data']} could be read "
            f"(the first, {state.skipped[0][1]}: {state.skipped[0][2]}); all are listed with their reasons in {out / 'skipped.json'}"
        )
    if group.main:
        report = folder.report
        print(
            f"scanned {state.images} images"
            + (f" on {group.size} processes" if group.size > 1 else "")
            + f"; {len(records)} records in {out / 'top9.json'}, {sheets} sheets in {out / 'sheets'}; open {report}"
            + f"\ntime: {clock.summary()}"
        )
        if state.skipped:
            shown = ", ".join(p for _, p, _ in state.skipped[:5]) + (" ..." if len(state.skipped) > 5 else "")
            print(f"skipped {len(state.skipped)} unreadable images ({shown}); all listed in {out / 'skipped.json'}")
    return 0


def _rehearse(mirror: Mirror, dataset: Dataset, layers: list[str], total: int) -> None:
    """Scans and projects channel 0 of every layer for the first readable of the first few images, so
    that unknown layers and images the model cannot run on are refused before the scan, not after it."""
    state = scan(mirror, dataset, layers, k=1, batch_size=8, indices=range(min(total, 8)), progress=False)
    for r in [r for r in state.records(dataset) if r.channel == 0][: len(layers)]:
        image = torch.as_tensor(dataset[r.index][0])[None]
        with model_runs_on(f"dataset image {r.index} of shape {tuple(image.shape[1:])}"):
            for _ in mirror.projections(mirror.check_images(image), [(0, r.layer, 0, r.y, r.x)], crop=True):
                pass


def channel_list(spec: Any, layer: str) -> list[int]:
    """Channels from ``"0-63,100"``, ``5`` or ``[0, 1, 2]``; ``ConfigError`` naming the layer otherwise."""
    items = spec if isinstance(spec, list) else [spec] if isinstance(spec, int) else str(spec).split(",")
    out: list[int] = []
    for item in items:
        text = str(item).strip()
        first, dash, last = text.partition("-")
        if (
            isinstance(item, bool)
            or not (first.isdigit() and (not dash or last.isdigit()))
            or (dash and int(last) < int(first))
        ):
            raise ConfigError(
                f"key 'channels': {layer}={spec!r}: expected channel numbers and ranges like 0-63,100, got {text!r}"
            )
        out.extend(range(int(first), int(last if dash else first) + 1))
    return sorted(set(out))


def _chosen(state: ScanState, dataset: Dataset, wanted: dict[str, list[int]]) -> list[Record]:
    """The scan's records, only the ``wanted`` channels of the layers that name some; ``ConfigError`` for a
    channel the layer does not have."""
    for layer, channels in wanted.items():
        count = state.tops[layer].values.shape[0] if layer in state.tops else 0
        if count and channels[-1] >= count:
            raise ConfigError(
                f"key 'channels': layer {layer!r} has {count} channels (0-{count - 1}), got channel {channels[-1]}"
            )
    return [r for r in state.records(dataset) if r.layer not in wanted or r.channel in wanted[r.layer]]


def _scan(
    settings: dict[str, Any],
    group: Group,
    out: Path,
    model: nn.Module,
    preprocess: Preprocess,
    dataset: Dataset,
    mirror: Mirror,
    layers: list[str],
    total: int,
) -> ScanState:
    """This process's shard scanned (or resumed), saved, and merged with the other processes' shards."""
    checkpoint = Checkpoint(
        out / STATE / f"rank{group.rank}.pt",
        fingerprint(
            model,
            dataset,
            preprocess,
            layers=layers,
            top=settings["top"],
            limit=total,
            batch_size=settings["batch_size"],
            processes=group.size,
            rank=group.rank,
        ),
        settings["save_every"],
    )
    state = checkpoint.load() if settings["resume"] else None
    with checkpoint:
        state = scan(
            mirror,
            dataset,
            layers,
            k=min(settings["top"], total),
            batch_size=settings["batch_size"],
            num_workers=settings["workers"],
            indices=group.shard(range(total), settings["batch_size"]),
            state=state,
            checkpoint=checkpoint,
            strict=settings["strict"],
            progress=settings["progress"] and group.main,
        )
        checkpoint.save(state)
    merged = ScanState({})
    for part in group.all_gather(state.state_dict()):
        merged.merge(ScanState.from_state_dict(part))
    return merged


def _sheets(
    settings: dict[str, Any],
    group: Group,
    out: Path,
    mirror: Mirror,
    dataset: Dataset,
    preprocess: Preprocess,
    layers: list[str],
    records: list[Record],
    rules: list[str],
    clock: Clock,
) -> int:
    """Projects and draws the sheets one at a time: each process projects its share of a sheet's
    records under each of ``rules`` and turns them into display tiles at once; rank 0 gathers that
    sheet's tiles, draws and writes it (one projection grid per rule), and frees it before the next.
    Returns the number of sheets. ``clock`` collects the time of each phase.
    """
    written = []
    per_sheet = settings["per_sheet"]
    named = f"rule {rules[0]}" if len(rules) == 1 else f"rules {', '.join(rules)}"
    for layer in layers:
        of_layer = [r for r in records if r.layer == layer]
        channels = sorted({r.channel for r in of_layer})
        parts = [set(channels[i : i + per_sheet]) for i in range(0, len(channels), per_sheet)]
        images = set(group.shard(sorted({r.index for r in of_layer}), settings["batch_size"]))
        mine = [r for r in of_layer if r.index in images]
        bar = progress_bar(
            total=len(mine) * len(rules),
            desc=f"project {layer}",
            unit="proj",
            enabled=settings["progress"] and group.main,
        )
        with bar:
            for n, part in enumerate(parts, 1):
                tiles: dict[str, list] = {rule: [] for rule in rules}
                for rule in rules:
                    chunks = project_top(
                        mirror,
                        dataset,
                        [r for r in mine if r.channel in part],
                        batch_size=settings["batch_size"],
                        num_workers=settings["workers"],
                        memory_budget=settings["memory_budget_mb"] * 2**20,
                        progress=False,
                        rule=rule,
                    )
                    # on the host inside the phase: a device's queued work is waited for here, not while rendering
                    for chunk in clock.timed(f"projections {layer}", (c.cpu() for c in chunks)):
                        with clock("rendering"):
                            tiles[rule] += display_tiles(
                                chunk, preprocess.denormalize, settings["tile_px"], preprocess.channel_order
                            )
                            if settings["save_projections"]:
                                save_projections(
                                    chunk,
                                    preprocess.denormalize,
                                    out / "projections" / (rule if len(rules) > 1 else ""),
                                    settings["save_projections"],
                                    preprocess.channel_order,
                                )
                        bar.update(len(chunk.records))
                with clock(f"projections {layer}"):  # rank 0 waits for the other processes' projections
                    gathered = group.gather(tiles)
                del tiles
                if gathered is not None:
                    with clock("rendering"):
                        title = f"{layer}: top {settings['top']} activations per channel, {named}" + (
                            f" (sheet {n} of {len(parts)})" if len(parts) > 1 else ""
                        )
                        path = out / "sheets" / f"{layer}-{n}.png"
                        merged = {rule: itertools.chain(*(part[rule] for part in gathered)) for rule in rules}
                        save_png(figure2(merged if len(rules) > 1 else merged[rules[0]], title), path)
                        written.append(path)
                    del gathered
    return len(written)
