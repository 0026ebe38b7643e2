"""The receptive field: the positions of every map below, and the pixels, that one activation can reach.

An activation's *cone* at a node is the window of that node's output it can reach: a top-left
``origin`` ``(K, 2)`` per selection and one ``size`` ``(h, w)``, or ``None`` where a layer mixes all
positions (``Linear``, a global pool), which means the whole map. At the images the cone is the
receptive field. Every receptive-field computation of deconv lives here: the mirror's boxes and
``describe``, the reverse pass's cones, the chunk plan's estimates and the patches cut from images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import torch

from ..errors import InputError
from ..layers.base import POINTWISE, Geometry
from .graph import IMAGES, Graph
from .windows import crop

__all__ = ["Box", "ReceptiveField", "Cone", "descend", "union", "cones", "boxes", "receptive_field", "patches"]

Cone = tuple[torch.Tensor, tuple[int, int]] | None
"""Windows at one node: top-left corners ``(K, 2)`` and a shared size; ``None`` for whole maps."""


class Box(NamedTuple):
    """Pixel box ``[top, bottom) x [left, right)``; it may reach outside the image."""

    top: int
    left: int
    bottom: int
    right: int


@dataclass(frozen=True)
class ReceptiveField:
    """Pixels seen by the activations of a layer: activation ``(y, x)`` sees the box
    ``offset + (y, x) * stride`` of ``size``. ``None`` in place of one means the whole image."""

    size: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]

    def box(self, y: int, x: int) -> Box:
        top = self.offset[0] + y * self.stride[0]
        left = self.offset[1] + x * self.stride[1]
        return Box(top, left, top + self.size[0], left + self.size[1])


def descend(geometry: Geometry, origin: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """The input window that an output window of a layer reads. ``origin`` ``(K, 2)``."""
    stride = origin.new_tensor(geometry.stride)
    padding = origin.new_tensor(geometry.padding)
    return origin * stride - padding, geometry.reads(size)


def union(a: Cone, b: Cone) -> Cone:
    """The box that holds both (``None``, whole maps, holds everything); sizes shared over K."""
    if a is None or b is None:
        return None
    lo = torch.minimum(a[0], b[0])
    hi = torch.maximum(a[0] + a[0].new_tensor(a[1]), b[0] + b[0].new_tensor(b[1]))
    size = (hi - lo).amax(0)
    return lo, (int(size[0]), int(size[1]))


def cones(
    graph: Graph, top: int, origin: torch.Tensor | None, size: tuple[int, int], rule: str | None = None
) -> dict[int, Cone]:
    """The cone of windows at node ``top`` at every node's output below it, and at ``IMAGES`` the receptive field:
    the union over all paths the signal takes under ``rule`` (default: each node's default rule) of what each layer
    reads. Inputs a mirror leaves ``silent`` (a gate's branch) are not taken.

    At the nodes, the windows the reverse pass works in: whole maps (``None``) below a layer with no ``geometry``
    (a permute, a Linear). At the images, the positions the signal can reach, followed also through channels-last
    maps (ConvNeXt's ``permute -> LayerNorm -> Linear -> permute``), where the reverse pass goes on in whole maps
    that are zero outside it."""
    mirrors = [node.mirror if rule is None else node.mirror_for(rule) for node in graph.nodes[: top + 1]]
    found = _descend(graph, mirrors, top, origin, size, lambda i: mirrors[i].geometry)
    spatial = _layouts(graph, mirrors)
    if spatial[top] in (None, MAPS):  # a position of another layout is not an image row and column
        field = _descend(graph, mirrors, top, origin, size, lambda i: _reach(i, graph, mirrors, spatial))
        found[IMAGES] = field[IMAGES]
    return found


def _descend(
    graph: Graph,
    mirrors: list[Any],
    top: int,
    origin: torch.Tensor | None,
    size: tuple[int, int],
    reach: Callable[[int], Geometry | None],
) -> dict[int, Cone]:
    """The windows of the cone at node ``top`` below it, where node ``i`` reads its inputs as ``reach(i)`` says."""
    found: dict[int, Cone] = {top: None if origin is None else (origin, size)}
    for i in range(top, -1, -1):
        if i not in found:
            continue
        box = found[i]
        geometry = reach(i)
        below = None if box is None or geometry is None else descend(geometry, *box)
        for k, j in enumerate(graph.nodes[i].inputs):
            if k not in mirrors[i].silent:
                found[j] = union(found[j], below) if j in found else below
    return found


Layout = tuple[int, int, int] | str | None
"""Where a node's output holds its channels, rows and columns: axes ``(c, h, w)`` of a 4-D tensor (``(1, 2, 3)``
for ``(N, C, H, W)``, ``(3, 1, 2)`` channels-last); :data:`OTHER` for a tensor computed from a permuted map whose
layout is not known; ``None`` for one that is not a map of known layout but none of whose inputs were permuted
(the layers' ``geometry`` holds for it, as it always did)."""
MAPS = (1, 2, 3)
OTHER = "other"


def _layouts(graph: Graph, mirrors: list[Any]) -> dict[int, Layout]:
    """The layout of each node's output (and the images'), from the images' ``(N, C, H, W)`` forward: a permutation
    moves the axes, a ``per_position`` layer keeps any layout, a layer with a ``geometry`` keeps ``(N, C, H, W)``
    maps; anything else computed from a permuted map, or from maps laid out differently, is :data:`OTHER`."""
    found: dict[int, Layout] = {IMAGES: MAPS}
    for i, mirror in enumerate(mirrors):
        known = {found[j] for j in graph.nodes[i].inputs} - {None}
        order = mirror.permutation(4)
        layout: Layout
        if not known:
            layout = None if order is None else OTHER
        elif len(known) > 1 or OTHER in known:
            layout = OTHER
        else:
            (layout,) = known
            if order is not None:
                layout = tuple(order.index(a) for a in layout)  # type: ignore[union-attr]
            elif not mirror.per_position:
                layout = (None if mirror.geometry is None else MAPS) if layout == MAPS else OTHER
        found[i] = layout
    return found


def _reach(i: int, graph: Graph, mirrors: list[Any], spatial: dict[int, Layout]) -> Geometry | None:
    """How node ``i``'s output positions read its inputs' positions, in image rows and columns: its ``geometry`` on
    ``(N, C, H, W)`` maps (and on tensors of no permuted input, as always); a permutation between maps of known
    layouts and a ``per_position`` layer on maps of any known layout keep positions (``POINTWISE``); anything else
    on permuted maps: all positions (``None``)."""
    mirror, output = mirrors[i], spatial[i]
    if mirror.permutation(4) is not None:
        known = all(isinstance(spatial[j], tuple) for j in (i, *graph.nodes[i].inputs))
        return POINTWISE if known else None
    if output is None or output == MAPS:
        return mirror.geometry
    return POINTWISE if isinstance(output, tuple) and mirror.per_position else None


def boxes(
    graph: Graph, top: int, positions: torch.Tensor, image_size: tuple[int, int] | None, rule: str | None = None
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pixel boxes of activations of node ``top`` at ``positions`` ``(K, 2)`` (y, x) under ``rule``: their
    top-left corners ``(K, 2)`` and their shared size ``(h, w)``; the whole image (of ``image_size``) past a
    global layer."""
    field = cones(graph, top, positions, (1, 1), rule)[IMAGES]
    if field is not None:
        return field
    if image_size is None:
        raise InputError("pass image_shape=(C, H, W): this mirror has not seen any images yet")
    return torch.zeros_like(positions), image_size


def receptive_field(graph: Graph, top: int) -> ReceptiveField | None:
    """The receptive field of node ``top``'s activations (a layer of maps); ``None`` past a global layer."""
    one = cones(graph, top, torch.zeros(1, 2, dtype=torch.long), (1, 1))[IMAGES]
    two = cones(graph, top, torch.ones(1, 2, dtype=torch.long), (1, 1))[IMAGES]
    if one is None or two is None:
        return None
    offset = (int(one[0][0, 0]), int(one[0][0, 1]))
    stride = (int(two[0][0, 0] - one[0][0, 0]), int(two[0][0, 1] - one[0][0, 1]))
    return ReceptiveField(one[1], stride, offset)


def patches(
    graph: Graph, top: int, images: torch.Tensor, positions: torch.Tensor | None, rule: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The receptive-field boxes of activations of node ``top`` at ``positions`` ``(K, 2)`` cut from ``images``
    ``(K, C, H, W)`` (one image per activation): ``(K, C, h, w)``, zero where a box leaves its image, and the mask
    of pixels inside ``(K, 1, h, w)``. Whole images for a vector layer (``positions=None``) or past a global one."""
    if positions is None:
        return images, torch.ones_like(images[:, :1], dtype=torch.bool)
    origin, size = boxes(graph, top, positions, (images.shape[-2], images.shape[-1]), rule)
    return crop(images, origin, size)
