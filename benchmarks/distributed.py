#!/usr/bin/env python
"""The default top9 job on 1 process and on 2 torchrun ranks, side by side in one run: one table.

    python benchmarks/distributed.py            # 3 reps of each, interleaved (about 3 minutes on 2 cores)
    python benchmarks/distributed.py --reps 1   # one of each

Each rep runs ``deconv top9 --config configs/default.toml`` (10k images, 5 layers, 7 sheets) once
alone and once under ``python -m torch.distributed.run --standalone --nproc_per_node 2``, alternately,
so that load on a shared machine hits both alike; medians are reported. The wall time is the whole
command's, start-up included. Every process runs the job through this script's ``--worker`` mode,
which writes its own peak RSS (``ru_maxrss``) when the job ends: the peak is per rank. The lone
process uses torch's default threads, each rank one (torchrun's default), as users run them.
The 2-rank outputs (``top9.json`` and the sheets) are checked to equal the lone process's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
JOB = ["top9", "--config", str(ROOT / "configs" / "default.toml"), "--no-progress"]
RANKS = 2


def worker(report: Path, args: list[str]) -> int:
    """Runs ``deconv args`` in this process, then writes its peak RSS in kB to ``report/rank<RANK>.json``."""
    from deconv.commands.main import main

    code = main(args)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    (report / f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps({"peak_kb": peak}))
    return code


def run(ranks: int, out: Path) -> tuple[float, list[int]]:
    """The job on ``ranks`` processes (1: no torchrun), writing to ``out``: wall seconds, peak RSS (kB) by rank."""
    report = out.with_name(out.name + "-rss")
    report.mkdir()
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
    command = [*(launch if ranks > 1 else [sys.executable]), __file__, "--worker", str(report), "--", *JOB]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run([*command, "--out", str(out)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"the job on {ranks} process(es) failed:\n{done.stderr[-3000:]}")
    return wall, [json.loads((report / f"rank{r}.json").read_text())["peak_kb"] for r in range(ranks)]


def outputs(out: Path) -> dict[str, bytes]:
    """``top9.json`` and the sheets of a run, by name."""
    files = [out / "top9.json", *sorted((out / "sheets").glob("*.png"))]
    return {path.name: path.read_bytes() for path in files}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="runs of each, interleaved")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        sys.exit(worker(options.worker, options.args))
    if options.args:
        parser.error(f"unexpected arguments: {' '.join(options.args)}")
    walls: dict[int, list[float]] = {1: [], RANKS: []}
    peaks: dict[int, list[list[int]]] = {1: [], RANKS: []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(options.reps):
            for ranks in (1, RANKS):
                wall, peak = run(ranks, Path(tmp) / f"{ranks}-{rep}")
                walls[ranks].append(wall)
                peaks[ranks].append(peak)
            if outputs(Path(tmp) / f"1-{rep}") != outputs(Path(tmp) / f"{RANKS}-{rep}"):
                sys.exit(f"rep {rep}: the {RANKS}-rank outputs differ from the single process's")
    wall = {ranks: statistics.median(times) for ranks, times in walls.items()}
    peak = {
        ranks: [statistics.median(p[r] for p in runs) / 1024 for r in range(ranks)] for ranks, runs in peaks.items()
    }
    print(f"default top9 job (10k images), {os.cpu_count()} cores, median of {options.reps}; outputs identical\n")
    print("| processes | wall time | vs 1 process | peak RSS per rank | vs 1 process (max rank) |")
    print("|---|---|---|---|---|")
    for ranks in (1, RANKS):
        per_rank = ", ".join(f"rank {r}: {mb:.0f} MB" for r, mb in enumerate(peak[ranks]))
        print(
            f"| {ranks} | {wall[ranks]:.1f} s | {wall[ranks] / wall[1]:.2f}x | {per_rank} "
            f"| {max(peak[ranks]) / peak[1][0]:.2f}x |"
        )


if __name__ == "__main__":
    main()
