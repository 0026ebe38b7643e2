#!/usr/bin/env python
"""The census's cost beside the top-9 scan alone: the default job's scan (ZFNet28 over the bundled
10,000 Fashion-MNIST test images, its five layers, batches of 500), with and without ``census=True``,
interleaved run by run so that the machine's load falls on both alike. Prints the medians and their ratio, in wall
time and in this process's CPU time (at ``--threads 1`` the CPU time hardly moves with the load of a shared machine).

    python benchmarks/census.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import deconv
from deconv.analyses.top9 import scan

LAYERS = ["features.1", "features.4", "features.7", "features.9", "features.11"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    mirror, dataset = deconv.build_mirror(deconv.default_model()), deconv.default_dataset()
    times: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    for census in (False, True):  # warm-up
        scan(mirror, dataset, LAYERS, batch_size=500, progress=False, census=census, indices=range(1000))
    for _ in range(args.repeats):
        for census in (False, True):
            start, used = time.perf_counter(), time.process_time()
            scan(mirror, dataset, LAYERS, batch_size=500, progress=False, census=census)
            times[census].append(time.perf_counter() - start)
            cpu[census].append(time.process_time() - used)
    alone, census = statistics.median(times[False]), statistics.median(times[True])
    alone_cpu, census_cpu = statistics.median(cpu[False]), statistics.median(cpu[True])
    print(f"{'scan':<26}{'median s':>10}{'CPU s':>10}")
    print(f"{'top-9 scan alone':<26}{alone:>10.3f}{alone_cpu:>10.3f}")
    print(f"{'census (top-9 included)':<26}{census:>10.3f}{census_cpu:>10.3f}")
    print(
        f"census / scan: {census / alone:.2f}x wall, {census_cpu / alone_cpu:.2f}x CPU  (target <= 1.15x; "
        f"{args.threads} threads, {args.repeats} runs, load average {os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    main()
