"""``deconv top9``: the paper's Fig. 2 for every channel of the chosen layers over a dataset.

Under torchrun every process scans every ``size``-th batch, the per-channel rankings are merged,
every process projects every ``size``-th batch of each layer's top images and rank 0 draws and
writes the sheets: the outputs are those of a single process. Each process saves its scan state
in ``.deconv-partial/state/`` of the output folder while the run lasts (``state/`` once it has
succeeded); ``--resume`` continues from it.
"""
from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from ..config import dump_toml, option
from ..data import Preprocess
from ..errors import ConfigError, DatasetError
from ..distributed import Group, process_group
from ..io import write_json, write_text
from ..mirror import Mirror, build_mirror
from ..render import figure2, save_png
from ..run_folder import open_run
from ..resume import Checkpoint, fingerprint
from ..scan import Record, ScanState, project_top, scan
from . import command
from .common import DATA, MODEL, RUN, dataset_from, device_from, model_from, preprocess_from, require_at_least, run_folder

OPTIONS = MODEL + DATA + RUN + (
    option("layers", list, [], "layers to visualise (empty: the rectified output of every convolution)", item=str),
    option("top", int, 9, "activations kept per channel"),
    option("limit", int, 0, "scan only the first N images of the dataset (0: all)"),
    option("memory_budget_mb", int, 2048, "memory that batched projections may use at once, in MB"),
    option("per_sheet", int, 64, "channels per PNG sheet"),
    option("save_every", int, 50, "save the scan state every N batches (0: only at the end and on SIGINT/SIGTERM)"),
    option("resume", bool, False, "continue the scan whose state is saved in the output folder"),
    option("strict", bool, False, "stop at the first unreadable image instead of skipping it"),
)

MAX_TOP = 1000  # a channel's sheet shows its top images side by side
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
    start = time.perf_counter()
    require_at_least(settings, top=1, limit=0, batch_size=1, workers=0, memory_budget_mb=1, per_sheet=1, save_every=0)
    if settings["top"] > MAX_TOP:
        raise ConfigError(f"key 'top' must be <= {MAX_TOP} (activations kept per channel), got {settings['top']}")
    device = device_from(settings)
    with process_group(device) as group:
        model = model_from(settings)
        preprocess = preprocess_from(settings, model)
        dataset = dataset_from(settings, preprocess)
        mirror = build_mirror(model)
        layers = settings["layers"] or conv_layers(mirror)
        total = len(dataset) if not settings["limit"] else min(settings["limit"], len(dataset))  # type: ignore[arg-type]
        _rehearse(mirror, dataset, layers, total)
        folder = run_folder(settings, "top9", "top9.json", STATE, outputs=("config.toml", "skipped.json"), replace_all=True)
        with open_run(folder, group.main, lambda: group.all_gather(None)):
            out = folder.partial
            state = _scan(settings, group, out, model, preprocess, dataset, mirror, layers, total)
            records = state.records(dataset)
            if group.main:
                write_text(out / "config.toml", dump_toml(settings, "deconv top9: the resolved settings of this run"))
                write_json(out / "skipped.json", [{"index": i, "path": p, "reason": r} for i, p, r in state.skipped])
                write_json(out / "top9.json", [r.to_json() for r in records])
            sheets = _sheets(settings, group, out, mirror, dataset, preprocess, layers, records)
        out = folder.path
    if not state.images:  # the run is kept: its skipped.json says why
        raise DatasetError(
            f"none of the {len(state.skipped)} images of {settings['data']} could be read "
            f"(the first, {state.skipped[0][1]}: {state.skipped[0][2]}); all are listed with their reasons in {out / 'skipped.json'}"
        )
    if group.main:
        report = folder.report
        print(
            f"scanned {state.images} images in {time.perf_counter() - start:.1f} s"
            + (f" on {group.size} processes" if group.size > 1 else "")
            + f"; {len(records)} records in {out / 'top9.json'}, {sheets} sheets in {out / 'sheets'}; open {report}"
        )
        if state.skipped:
            shown = ", ".join(p for _, p, _ in state.skipped[:5]) + (" ..." if len(state.skipped) > 5 else "")
            print(f"skipped {len(state.skipped)} unreadable images ({shown}); all listed in {out / 'skipped.json'}")
    return 0


def _rehearse(mirror: Mirror, dataset: Dataset, layers: list[str], total: int) -> None:
    """Scans and projects channel 0 of every layer for the first readable of the first few images, so
    that unknown layers and images the model cannot run on are refused before the scan, not after it."""
    state = scan(mirror, dataset, layers, k=1, batch_size=8, indices=range(min(total, 8)), progress=False)
    for _ in project_top(mirror, dataset, [r for r in state.records(dataset) if r.channel == 0][:len(layers)], progress=False):
        pass


def _scan(
    settings: dict[str, Any], group: Group, out: Path, model: nn.Module, preprocess: Preprocess,
    dataset: Dataset, mirror: Mirror, layers: list[str], total: int,
) -> ScanState:
    """This process's shard scanned (or resumed), saved, and merged with the other processes' shards."""
    checkpoint = Checkpoint(
        out / STATE / f"rank{group.rank}.pt",
        fingerprint(
            model, dataset, preprocess, layers=layers, top=settings["top"], limit=total,
            batch_size=settings["batch_size"], processes=group.size, rank=group.rank,
        ),
        settings["save_every"],
    )
    state = checkpoint.load() if settings["resume"] else None
    with checkpoint:
        state = scan(
            mirror, dataset, layers, k=min(settings["top"], total), batch_size=settings["batch_size"], num_workers=settings["workers"],
            indices=group.shard(range(total), settings["batch_size"]), state=state, checkpoint=checkpoint,
            strict=settings["strict"], progress=settings["progress"] and group.main,
        )
        checkpoint.save(state)
    merged = ScanState({})
    for part in group.all_gather(state.state_dict()):
        merged.merge(ScanState.from_state_dict(part))
    return merged


def _sheets(
    settings: dict[str, Any], group: Group, out: Path, mirror: Mirror, dataset: Dataset,
    preprocess: Preprocess, layers: list[str], records: list[Record],
) -> int:
    """Projects this process's share of ``records``; rank 0 draws and writes the sheets of every layer.

    Returns the number of sheets.
    """
    written = []
    for layer in layers:
        of_layer = [r for r in records if r.layer == layer]
        if not of_layer:
            continue
        images = set(group.shard(sorted({r.index for r in of_layer}), settings["batch_size"]))
        chunks = project_top(
            mirror, dataset, [r for r in of_layer if r.index in images], batch_size=settings["batch_size"],
            num_workers=settings["workers"], memory_budget=settings["memory_budget_mb"] * 2**20,
            progress=settings["progress"] and group.main,
        )
        gathered = group.gather([chunk.cpu() for chunk in chunks])
        if gathered is not None:
            for n, sheet in enumerate(figure2(itertools.chain(*gathered), preprocess.denormalize, settings["per_sheet"]), 1):
                path = out / "sheets" / f"{layer}-{n}.png"
                save_png(sheet, path)
                written.append(path)
    return len(written)
