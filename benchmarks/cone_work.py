#!/usr/bin/env python
"""Where conv5_3's projection cost goes, counted rather than timed (so load on the machine does not matter).

For a set of selections it replays the reverse pass's window geometry (``deconv.engine.windows``: every step
reads the window its output window needs, cut to the cone and the map; the selections of one part
share one window size, the largest of theirs in each dimension) and sums the multiply-adds of the
transposed convolutions: per part, ``K x (window area read) x (weight size)`` at every convolution.
It compares the job's own conv5_3 selections (HED weights on photos, from a top9.json) with the
random-weight benchmark's, each as the engine groups them (sorted by position, in parts) and each
alone (its own window), to show how much of the cost is the position of the activations and how
much the sharing of one window size.

    python benchmarks/cone_work.py RUN/top9.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import torch  # noqa: E402
from torch import nn  # noqa: E402
from vgg import vgg16  # noqa: E402

import deconv  # noqa: E402
from deconv.engine.field import descend  # noqa: E402
from deconv.engine.windows import clip  # noqa: E402
from deconv.selection import Selection  # noqa: E402

LAYER = "features.29"
PART = 64  # selections per part, about what the default memory budget gives at conv5_3


def work(mirror: deconv.Mirror, positions: torch.Tensor, shape: tuple[int, int, int]) -> float:
    """Multiply-adds of one part's reverse pass from ``LAYER`` for ``positions`` ``(K, 2)`` sharing windows."""
    shapes = [mirror.shape(step.name, shape) for step in mirror.steps]
    top = mirror.index(LAYER)
    origin, size = positions, (1, 1)
    cone, cone_size = origin, size
    total = 0.0
    for i in range(top, -1, -1):
        step = mirror.steps[i]
        geometry = getattr(step.mirror, "geometry", None)
        if geometry is None:
            continue
        below = shapes[i - 1] if i else shape
        read, read_size = descend(geometry, origin, size)
        cone, cone_size = descend(geometry, cone, cone_size)
        if isinstance(step.layer, nn.Conv2d):
            total += len(positions) * size[0] * size[1] * step.layer.weight.numel()
        origin, size = clip(cone, cone_size, read, read_size, tuple(below[-2:]))
    return total


def grouped(mirror: deconv.Mirror, selections: list[Selection], shape: tuple[int, int, int]) -> float:
    """As the engine groups them: by image, then sorted by position, in parts of ``PART``."""
    ordered = sorted(selections, key=lambda s: (s.y, s.x))
    return sum(
        work(mirror, torch.tensor([[s.y, s.x] for s in ordered[i : i + PART]]), shape)
        for i in range(0, len(ordered), PART)
    )


def alone(mirror: deconv.Mirror, selections: list[Selection], shape: tuple[int, int, int]) -> float:
    return sum(work(mirror, torch.tensor([[s.y, s.x]]), shape) for s in selections)


def main() -> None:
    records = json.loads(Path(sys.argv[1]).read_text())
    own = [Selection(r["index"], LAYER, r["channel"], r["y"], r["x"]) for r in records if r["layer"] == LAYER]
    mirror = deconv.build_mirror(vgg16())  # the geometry is VGG16's whatever the weights
    shape = (3, 224, 224)
    top = mirror.index(LAYER)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(
        16, 3, 224, 224, generator=g
    )  # benchmarks/run.py's memory case: top 9 of 512 over 16 noise images
    out = torch.cat([mirror.graph.run(noise[i : i + 4], [top], top).outputs[top] for i in range(0, 16, 4)])
    best, where = out.flatten(2).max(2)
    rand = [
        Selection(int(n), LAYER, c, int(where[n, c]) // 14, int(where[n, c]) % 14)
        for c in range(out.shape[1])
        for n in best[:, c].topk(9).indices
    ]
    one = rand[:0]
    single = out[0].flatten(1).max(1)
    one = [
        Selection(0, LAYER, c, int(single.indices[c]) // 14, int(single.indices[c]) % 14)
        for c in single.values.argsort(descending=True)[:64].tolist()
    ]
    centre = alone(mirror, [own[0]._replace(y=7, x=7)], shape)
    print(f"one centred conv5_3 projection: {centre / 1e9:.2f} G multiply-adds (the unit below)")
    print("| selections | on the border | work per projection, as the engine groups them | alone (own window) |")
    print("|---|---|---|---|")
    for name, sel in (
        ("HED weights, 20 photos: the job's conv5_3 selections", own),
        ("random weights, 16 noise images, top 9 of 512 (the memory table's 63.4 ms)", rand),
        ("random weights, one noise image, 64 strongest channels (the per-layer table's 69.3 ms)", one),
    ):
        edge = sum(s.y in (0, 13) or s.x in (0, 13) for s in sel) / len(sel)
        by_image: dict[int, list[Selection]] = {}
        for s in sel:
            by_image.setdefault(s.image, []).append(s)
        # the engine runs chunks of images; parts never mix chunks. All of a chunk's selections sorted together:
        print(
            f"| {name} ({len(sel):,}) | {edge:.0%} | {grouped(mirror, sel, shape) / len(sel) / centre:.2f} "
            f"| {alone(mirror, sel, shape) / len(sel) / centre:.2f} |"
        )


if __name__ == "__main__":
    main()
