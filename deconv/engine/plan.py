"""The chunk plan: how many images one forward walk takes and how many selections one reverse pass,
so that batched projections stay inside a memory budget and their work tensors stay small.

Estimates are rough upper bounds: a forward walk costs what one image's trace measurably keeps
plus its largest step; a reverse pass what its largest step reads and writes inside its cone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch

from .field import cones
from .graph import IMAGES, Graph, Trace

__all__ = ["WORK_TENSOR_BYTES", "PART_TENSORS", "Chunk", "Footprint", "selection_bytes", "chunks"]

WORK_TENSOR_BYTES = 16 * 1024**2
"""Batched work is also cut so that its largest tensor is about this big (if one image or one selection
allows): forward walks into chunks of images, reverse passes into halves where a step would write more
(:func:`deconv.engine.reverse.reverse`), so that the small steps near the top run on all selections at once.
glibc's malloc serves blocks under 32 MB from its heap and reuses them once freed,
while bigger ones are mapped fresh from the OS and page-faulted in on every use, which on CPU costs
more than the arithmetic. Small chunks also stay in cache and lose nothing in the convolutions."""

PART_TENSORS = 4
"""A reverse pass takes at most as many selections as this many work tensors hold at its largest step:
enough to run the small steps near the top on many selections at once, few enough that what the
pass holds while its halves run (and its output) stays small."""


@dataclass(frozen=True)
class Chunk:
    """One forward walk over ``images`` (indices into the caller's images) and its reverse passes:
    per part, a node and the selections (indices into the caller's list) projected from it at once."""

    images: list[int]
    parts: list[tuple[Any, list[int]]]


def _numel(shape: Sequence[int]) -> int:
    return int(torch.Size(shape).numel())


@dataclass(frozen=True)
class Footprint:
    """What a one-image walk measured: each node's input shapes and output shape (batch left out)
    and the bytes its memory takes under each rule."""

    inputs: list[tuple[tuple[int, ...], ...]]
    shapes: list[tuple[int, ...]]
    memory: list[dict[str, int]]

    @classmethod
    def of(cls, trace: Trace) -> Footprint:
        memory = [
            {
                rule: sum(m.numel() * m.element_size() for m in entry if isinstance(m, torch.Tensor))
                for rule, entry in node.items()
            }
            for node in trace.memory
        ]
        return cls(trace.inputs, trace.shapes, memory)

    def image_bytes(self, rule: str, until: int, keep: Sequence[int], item: int) -> tuple[int, int]:
        """Bytes one image costs a walk to node ``until`` that keeps ``keep`` and ``rule``'s memory (plus
        its largest step's input, output and a copy), and the bytes of its largest tensor."""
        kept = sum(_numel(self.shapes[i]) for i in set(keep)) * item
        memory = sum(m.get(rule, 0) for m in self.memory[: until + 1])
        largest = max(
            [_numel(s) for s in self.shapes[: until + 1]] + [_numel(s) for ins in self.inputs[: until + 1] for s in ins]
        )
        return memory + kept + 3 * 2 * largest * item, largest * item


def selection_bytes(
    graph: Graph, trace: Footprint, top: int, item: int, crop: bool, whole: bool = False, rule: str | None = None
) -> tuple[int, int]:
    """Rough peak bytes one selection's reverse pass from node ``top`` costs (its largest step with
    the window it reads, the windows it writes and copies), and the bytes of the largest tensor it writes.
    ``whole``: the selection is a whole feature map, not one activation."""
    shape = trace.shapes[top]
    origin = torch.tensor([[shape[-2] // 2, shape[-1] // 2]]) if len(shape) == 3 and not whole else None
    boxes = cones(graph, top, origin, (1, 1), rule)

    def held(i: int, shape: tuple[int, ...]) -> int:  # a window at the output of node i (or IMAGES)
        box = boxes.get(i)
        if box is None or len(shape) != 3:
            return _numel(shape)
        return shape[0] * min(box[1][0], shape[1]) * min(box[1][1], shape[2])

    worst = largest = 0
    for i in range(top, -1, -1):
        if i not in boxes:
            continue
        node = graph.nodes[i]
        reading = held(i, trace.shapes[i])
        written = [held(j, s) for j, s in zip(node.inputs, trace.inputs[i])]
        worst = max(worst, reading + 4 * sum(written))
        largest = max([largest, *written])  # each input's signal is a tensor of its own
    if not crop:  # the projection in a whole image, and the window it is placed from
        images = next(
            s for i, node in enumerate(graph.nodes) for j, s in zip(node.inputs, trace.inputs[i]) if j == IMAGES
        )
        worst, largest = max(worst, 2 * _numel(images) + held(IMAGES, images)), max(largest, _numel(images))
    return max(1, worst * item), max(1, largest * item)


def chunks(
    images: Sequence[int],
    tops: Sequence[Any],
    per_image: tuple[int, int],
    per_selection: dict[Any, tuple[int, int]],
    budget: int,
    keys: Sequence[tuple[int, ...]],
) -> Iterator[Chunk]:
    """Groups selections (given by their ``images`` and ``tops``, a node or a sortable key per node; sorted by
    ``keys`` within one, so that selections whose windows have the same size go together) into chunks: a forward
    walk over at most as many images as half the ``budget`` holds (each of its tensors kept to
    :data:`WORK_TENSOR_BYTES`), and reverse passes over as many selections as the rest holds, at most
    :data:`PART_TENSORS` work tensors' worth of their largest step (the pass goes on in halves below that,
    :func:`deconv.engine.reverse.reverse`)."""
    order = sorted(range(len(images)), key=lambda k: (images[k], tops[k]))  # chunks share forward passes
    image_bytes, image_largest = per_image
    per_chunk = max(1, min(budget // 2 // image_bytes, WORK_TENSOR_BYTES // image_largest))
    start = 0
    while start < len(order):
        mine: list[int] = []
        end = start
        while end < len(order) and (images[order[end]] in mine[-1:] or len(mine) < per_chunk):
            if images[order[end]] not in mine[-1:]:
                mine.append(images[order[end]])
            end += 1
        chosen = order[start:end]
        start = end
        spare = max(budget // 2, budget - image_bytes * len(mine))
        parts = []
        for top in sorted({tops[k] for k in chosen}):
            here = sorted((k for k in chosen if tops[k] == top), key=lambda k: keys[k])
            size, largest = per_selection[top]
            step = max(1, min(spare // size, PART_TENSORS * WORK_TENSOR_BYTES // largest))
            parts += [(top, here[i : i + step]) for i in range(0, len(here), step)]
        yield Chunk(mine, parts)
