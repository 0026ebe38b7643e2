"""``deconv top9``: the paper's Fig. 2 for every channel of the chosen layers over a dataset.

Under torchrun every process scans every ``size``-th batch, the per-channel rankings are merged,
every process projects every ``size``-th batch of each layer's top images and rank 0 draws and
writes the sheets: the outputs are those of a single process. Each process saves its scan state
in ``.deconv-partial/state/`` of the output folder while the run lasts (``state/`` once it has
succeeded); ``--resume`` continues from it.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..analyses.checkpoint import Checkpoint, fingerprint
from ..analyses.top9 import ProjectOptions, Record, ScanOptions, ScanState, project_top, scan
from ..census import CENSUS_FILE, CENSUS_META, Census, check_labels, class_names
from ..data import Preprocess
from ..engine.graph import model_runs_on
from ..errors import ConfigError, DatasetError
from ..figures.draw import save_png
from ..figures.pages import LAYER_INFO, layer_info, write_pages
from ..figures.report import sheet_name, write_thumbnails
from ..figures.sheet import MANIFEST, display_tiles, figure2_sheet, save_projections
from ..io import write_json, write_text
from ..mirror import Mirror, build_mirror
from ..progress import Clock, progress_bar
from . import command
from .common import (
    RULE,
    RULES,
    Data,
    Model,
    Output,
    dataset_from,
    device_from,
    model_from,
    preprocess_from,
    require_at_least,
    rules_from,
    run_folder,
)
from .config import Option, Settings, dump_toml, with_options
from .distributed import Group, process_group
from .run_folder import RunFolder, open_run

MAX_TOP = 1000  # a channel's sheet shows its top images side by side
MAX_TILE_PX = 256  # a 64-channel sheet of 256 px tiles is about 13,000 x 7,000 px, near what image viewers open
STATE = "state"  # the folder of the per-process scan states, in the output folder


@with_options(
    Option("layers", list, [], "layers to visualise (empty: the rectified output of every convolution)", item=str),
    Option("top", int, 9, "activations kept per channel"),
    Option("limit", int, 0, "scan only the first N images of the dataset (0: all)"),
    Option("memory_budget_mb", int, 2048, "memory that batched projections may use at once, in MB"),
    Option("per_sheet", int, 64, "channels per PNG sheet"),
    Option(
        "tile_px",
        int,
        80,
        "display size of a tile's longer side in pixels (80: a 64-channel sheet is about 4,000 px wide)",
    ),
    Option(
        "channels",
        dict,
        {},
        "channels to draw per layer, e.g. features.29=0-63,100 (a table in a config; empty: all)",
    ),
    Option(
        "save_projections",
        str,
        "",
        "also write each full-resolution projection: 'npy' or 'png' (empty: no)",
        choices=("", "npy", "png"),
    ),
    Option("save_every", int, 50, "save the scan state every N batches (0: only at the end and on SIGINT/SIGTERM)"),
    Option("resume", bool, False, "continue the scan whose state is saved in the output folder"),
    Option("strict", bool, False, "stop at the first unreadable image instead of skipping it"),
    RULE,
    RULES,
)
class Top9Settings(Settings):
    """The model, the data scanned, the layers and channels drawn, the sheets and the scan's saving."""

    model: Model
    data: Data
    output: Output
    layers: tuple[str, ...]
    top: int
    limit: int
    memory_budget_mb: int
    per_sheet: int
    tile_px: int
    channels: dict[str, Any]
    save_projections: str
    save_every: int
    resume: bool
    strict: bool
    rule: str
    rules: tuple[str, ...]


OPTIONS = Top9Settings.options


@dataclass(frozen=True)
class Job:
    """What a top9 run works on, set up once from its ``settings``: this process of the ``group``, the
    ``total`` images scanned, the ``layers`` scanned, the channels ``wanted`` of some and the ``rules`` drawn."""

    settings: Top9Settings
    group: Group
    model: nn.Module
    preprocess: Preprocess
    dataset: Dataset
    mirror: Mirror
    layers: list[str]
    wanted: dict[str, list[int]]
    total: int
    rules: list[str]


def conv_layers(mirror: Mirror) -> list[str]:
    """The layers to draw by default: the outermost blocks of a branching model (ResNet blocks,
    DenseNet blocks, Inception modules), else the rectified output of each convolution (the ReLU
    right after it, or the convolution itself)."""
    blocks = mirror.blocks()
    if blocks:
        return blocks
    names = mirror.layer_names
    containers = {name[:i] for name in names for i, char in enumerate(name) if char == "."}
    steps = [name for name in names if name not in containers]  # a plain container's name is no step of its own
    modules = [mirror.module(name) for name in steps]
    found = []
    for i, module in enumerate(modules):
        if isinstance(module, nn.Conv2d):
            after = next((j for j in range(i + 1, min(i + 3, len(steps))) if isinstance(modules[j], nn.ReLU)), i)
            found.append(steps[after])
    return found


@command("top9", "top activations per channel over a dataset, projected to pixels (Fig. 2)", Top9Settings)
def run(settings: Top9Settings) -> int:
    clock = Clock()
    _check(settings)
    with process_group(device_from(settings.model)) as group:
        job = _setup(settings, group)
        clock.expect("setup", "scan", *(f"projections {layer}" for layer in job.layers), "rendering", "report")
        _rehearse(job.mirror, job.dataset, job.layers, job.total)
        folder = run_folder(
            settings.output,
            "top9",
            "top9.json",
            STATE,
            outputs=("config.toml", "skipped.json", CENSUS_FILE, CENSUS_META, LAYER_INFO),
            replace_all=True,
            resume=settings.resume,
            data=settings.data,
        )
        with open_run(folder, group.main, lambda: group.all_gather(None)):
            clock.add("setup", clock.now() - clock.start)  # the model, data, mirror, rehearsal and output folder
            out = folder.partial
            with clock("scan"):  # and writing its records and census
                state = _scan(job, out)
                census = _census(job, state)
                records = _chosen(state, job.dataset, job.wanted)
                bottom = _bottom(census, job.wanted)
                if group.main:
                    _write_records(job, out, state, records, census)
            sheets = _sheets(job, out, records, bottom, clock) if state.images else 0  # none readable: _summary says so
            committing = clock.now()
            if group.main and state.images:
                write_pages(out, census)
        clock.add("report", clock.now() - committing)  # the unit pages, moving the files in, the report, the manifest
    _summary(job, folder, state, records, sheets, clock)
    return 0


def _check(settings: Top9Settings) -> None:
    """Refuses counts and sizes out of range, in one line naming the key."""
    require_at_least(
        settings, top=1, limit=0, batch_size=1, workers=0, memory_budget_mb=1, per_sheet=1, save_every=0, tile_px=8
    )
    if settings.top > MAX_TOP:
        raise ConfigError(f"key 'top' must be <= {MAX_TOP} (activations kept per channel), got {settings.top}")
    if settings.tile_px > MAX_TILE_PX:
        raise ConfigError(
            f"key 'tile_px' must be <= {MAX_TILE_PX} (a sheet's size grows with it), got {settings.tile_px}"
        )


def _setup(settings: Top9Settings, group: Group) -> Job:
    """The model, data, mirror, layers and channels of the run; ``ConfigError`` for channels of a layer not scanned."""
    model = model_from(settings.model)
    preprocess = preprocess_from(settings.data, model, settings.model.embedded)
    dataset = dataset_from(settings.data, preprocess, settings.limit)
    rules = rules_from(settings.rule, settings.rules)
    mirror = build_mirror(model, shape=lambda: tuple(dataset[0][0].shape))
    layers = list(settings.layers) or conv_layers(mirror)
    wanted = {layer: channel_list(spec, layer) for layer, spec in settings.channels.items()}
    if set(wanted) - set(layers):
        raise ConfigError(
            f"key 'channels': layer {sorted(set(wanted) - set(layers))[0]!r} is not scanned "
            f"(layers: {', '.join(layers)})"
        )
    total = len(dataset) if not settings.limit else min(settings.limit, len(dataset))  # type: ignore[arg-type]
    check_labels(dataset, class_names(dataset, model))
    return Job(settings, group, model, preprocess, dataset, mirror, layers, wanted, total, rules)


def _census(job: Job, state: ScanState) -> Census:
    """The census of the merged scan (every process holds it: each projects its share of the bottom records);
    ``DatasetError`` naming the first label that does not fit the class names."""
    classes = class_names(job.dataset, job.model)
    check_labels(job.dataset, classes, state)
    labels = None if job.group.main else {}  # the other processes only project bottom records: no labels to read
    k = min(job.settings.top, job.total)
    return Census(state, k, mirror=job.mirror, dataset=job.dataset, classes=classes, labels=labels)


def _bottom(census: Census, wanted: dict[str, list[int]]) -> list[Record]:
    """The bottom records to project: those below zero (each projected with its own negative value) of the
    ``wanted`` channels; none of a layer whose units never went below zero (as after a ReLU)."""
    return [
        r for r in census.records("bottom") if r.value < 0 and (r.layer not in wanted or r.channel in wanted[r.layer])
    ]


def _write_records(job: Job, out: Path, state: ScanState, records: list[Record], census: Census) -> None:
    """The run's resolved settings, the images it skipped, its records, its census and what the unit pages
    say of each layer (rank 0 only)."""
    header = "deconv top9: the resolved settings of this run"
    write_text(out / "config.toml", dump_toml(job.settings.values(), header))
    write_json(out / "skipped.json", [{"index": i, "path": p, "reason": r} for i, p, r in state.skipped])
    rule = job.rules[0] if len(job.rules) == 1 else job.rules  # the records are those of every rule: one scan
    write_json(out / "top9.json", [{**r.to_json(), "rule": rule} for r in records])
    census.write(out)
    if state.images:  # the mirror has seen the images' shape
        write_json(out / LAYER_INFO, layer_info(job.mirror, job.layers))


def _summary(job: Job, folder: RunFolder, state: ScanState, records: list[Record], sheets: int, clock: Clock) -> None:
    """``DatasetError`` when no image could be read (the run is kept: its skipped.json says why), else
    what the run did and wrote, and its time per phase (rank 0 only)."""
    out, skipped = folder.path, state.skipped
    if not state.images:
        raise DatasetError(
            f"none of the {len(skipped)} images of {job.settings.data.data} could be read "
            f"(the first, {skipped[0][1]}: {skipped[0][2]}); "
            f"all are listed with their reasons in {out / 'skipped.json'}"
        )
    if not job.group.main:
        return
    print(
        f"scanned {state.images} images"
        + (f" on {job.group.size} processes" if job.group.size > 1 else "")
        + f"; {len(records)} records in {out / 'top9.json'}, {sheets} sheets in {out / 'sheets'}; open {folder.report}"
        + f"\ntime: {clock.summary()}"
    )
    if skipped:
        shown = ", ".join(p for _, p, _ in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        print(f"skipped {len(skipped)} unreadable images ({shown}); all listed in {out / 'skipped.json'}")


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


def _scan(job: Job, out: Path) -> ScanState:
    """This process's shard scanned (or resumed), saved, and merged with the other processes' shards."""
    settings, group, data = job.settings, job.group, job.settings.data
    checkpoint = Checkpoint(
        out / STATE / f"rank{group.rank}.pt",
        fingerprint(
            job.model,
            job.dataset,
            job.preprocess,
            layers=job.layers,
            top=settings.top,
            limit=job.total,
            batch_size=data.batch_size,
            processes=group.size,
            rank=group.rank,
        ),
        settings.save_every,
    )
    state = checkpoint.load() if settings.resume else None
    options = ScanOptions(
        k=min(settings.top, job.total),
        batch_size=data.batch_size,
        num_workers=data.workers,
        indices=group.shard(range(job.total), data.batch_size),
        strict=settings.strict,
        progress=settings.output.progress and group.main,
        census=True,
    )
    with checkpoint:
        state = scan(job.mirror, job.dataset, job.layers, options, state=state, checkpoint=checkpoint)
        checkpoint.save(state)
    merged = ScanState({})
    for part in group.all_gather(state.state_dict()):
        merged.merge(ScanState.from_state_dict(part))
    return merged


def _sheets(job: Job, out: Path, records: list[Record], bottom: list[Record], clock: Clock) -> int:
    """Projects and draws the sheets one at a time, per layer its top records' then its ``bottom`` records'
    (``sheets/LAYER-N.png``, ``sheets/LAYER-N.bottom.png``): each process projects its share of a sheet's
    records under each rule and turns them into display tiles at once; rank 0 gathers that sheet's
    tiles, draws and writes it (one projection grid per rule) with its panels' thumbnails (of the top
    sheets), and frees it before the next; then the layouts the sheets were drawn by, in ``sheets.json``.
    Returns the number of sheets. ``clock`` collects the time of each phase.
    """
    manifest = []
    for layer in job.layers:
        for which, chosen in (("top", records), ("bottom", bottom)):
            manifest += _layer_sheets(job, out, layer, which, [r for r in chosen if r.layer == layer], clock)
    if job.group.main:
        write_json(out / MANIFEST, manifest)
    return len(manifest)


def _layer_sheets(job: Job, out: Path, layer: str, which: str, of_layer: list[Record], clock: Clock) -> list[dict]:
    """The sheets of ``layer``'s ``which`` (``"top"`` or ``"bottom"``) records ``of_layer``: their entries of
    ``sheets.json`` (rank 0; none elsewhere)."""
    per_sheet, group, manifest = job.settings.per_sheet, job.group, []
    channels = sorted({r.channel for r in of_layer})
    parts = [set(channels[i : i + per_sheet]) for i in range(0, len(channels), per_sheet)]
    images = set(group.shard(sorted({r.index for r in of_layer}), job.settings.data.batch_size))
    mine = [r for r in of_layer if r.index in images]
    bar = progress_bar(
        total=len(mine) * len(job.rules),
        desc=f"project {layer}" + (" bottom" if which == "bottom" else ""),
        unit="proj",
        enabled=job.settings.output.progress and group.main and bool(of_layer),
    )
    with bar:
        for n, part in enumerate(parts, 1):
            tiles = _tiles(job, out, layer, which, [r for r in mine if r.channel in part], clock, bar)
            with clock(f"projections {layer}"):  # rank 0 waits for the other processes' projections
                gathered = group.gather(tiles)
            del tiles
            if gathered is not None:
                with clock("rendering"):
                    manifest.append(_draw(job, out, layer, which, n, len(parts), gathered))
                del gathered
    return manifest


def _tiles(
    job: Job, out: Path, layer: str, which: str, records: list[Record], clock: Clock, bar: Any
) -> dict[str, list]:
    """This process's display tiles of ``records`` (its share of one sheet of ``layer``'s ``which`` records)
    under each rule, and their full-resolution projections written on request (``projections/``, the bottom
    records' in ``projections-bottom/``). A bottom entry is below zero: it is always drawn."""
    settings, preprocess = job.settings, job.preprocess
    options = ProjectOptions(
        batch_size=settings.data.batch_size,
        num_workers=settings.data.workers,
        memory_budget=settings.memory_budget_mb * 2**20,
        progress=False,
    )
    tiles: dict[str, list] = {rule: [] for rule in job.rules}
    for rule in job.rules:
        chunks = project_top(job.mirror, job.dataset, records, options=replace(options, rule=rule))
        # on the host inside the phase: a device's queued work is waited for here, not while rendering
        for chunk in clock.timed(f"projections {layer}", (c.cpu() for c in chunks)):
            with clock("rendering"):
                shown = display_tiles(chunk, preprocess.denormalize, settings.tile_px, preprocess.channel_order)
                tiles[rule] += shown if which == "top" else [t._replace(active=True) for t in shown]
                if settings.save_projections:
                    save_projections(
                        chunk,
                        preprocess.denormalize,
                        out
                        / ("projections" if which == "top" else "projections-bottom")
                        / (rule if len(job.rules) > 1 else ""),
                        settings.save_projections,
                        preprocess.channel_order,
                    )
            bar.update(len(chunk.records))
    return tiles


def _title(job: Job, layer: str, which: str, n: int, sheets: int) -> str:
    """The title of sheet ``n`` of ``sheets`` of ``layer``'s ``which`` records."""
    rules = job.rules
    named = f"rule {rules[0]}" if len(rules) == 1 else f"rules {', '.join(rules)}"
    what = "activations" if which == "top" else "minima (most negative first)"
    return f"{layer}: {which} {job.settings.top} {what} per channel, {named}" + (
        f" (sheet {n} of {sheets})" if sheets > 1 else ""
    )


def _draw(job: Job, out: Path, layer: str, which: str, n: int, sheets: int, gathered: list[dict[str, list]]) -> dict:
    """Draws and writes sheet ``n`` of ``sheets`` of ``layer``'s ``which`` records from every process's tiles,
    one projection grid per rule, and the thumbnails of a top sheet's panels; returns its entry of ``sheets.json``
    (its ``which`` beside :meth:`~deconv.figures.sheet.Sheet.manifest`'s keys)."""
    rules = job.rules
    merged = {rule: itertools.chain(*(part[rule] for part in gathered)) for rule in rules}
    sheet = figure2_sheet(merged if len(rules) > 1 else merged[rules[0]], _title(job, layer, which, n, sheets))
    name = sheet_name(layer, n, which)
    entry = {**sheet.manifest(name, layer, rules), "which": which}
    with ThreadPoolExecutor(1) as writer:  # zlib and Pillow release the GIL: the PNG beside the thumbnails
        png = writer.submit(save_png, sheet.pixels, out / name)
        if which == "top":
            write_thumbnails(out, entry, sheet.pixels)
        png.result()
    return entry
