"""The reverse pass: a signal goes down the graph of mirrors, from a node to pixel space.

Each node's output collects the signals that come back from its uses (fan-out sums), then its
mirror maps them to its inputs. A signal is either whole maps or a *window* per selection: the
cone of positions its activation can reach, cut to the map, of one size shared by the K selections
(:mod:`deconv.engine.windows`). Each mirror maps its window to the whole input window its geometry reads, and
the part of that outside the map or the cone is cut away, so no position outside a map is ever
computed on. Where branches meet, their windows merge into the box that holds both.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch

from ..layers.base import POINTWISE, layout
from .field import descend, union
from .graph import IMAGES, Graph, Trace
from .windows import add_at, clip, place, reach, shift, window

__all__ = ["Window", "reverse"]

WASTE = 2.0
"""Selections go on in groups where one shared window would be this much bigger than their own."""


@dataclass
class Window:
    """The signal at a node's output: ``signal`` ``(K, C, h, w)`` at ``origin`` ``(K, 2)`` in maps of
    ``(H, W)`` (whole maps where ``origin`` is ``None``), and the geometric cone it lies in. ``owned``:
    nothing else holds ``signal``, so it may change in place; ``rectified``: already through a ReLU;
    ``factors`` ``(C,)``: per-channel factors still to multiply ``signal`` by (left for a mirror to take)."""

    signal: torch.Tensor
    origin: torch.Tensor | None
    size: tuple[int, int]
    cone: torch.Tensor | None
    cone_size: tuple[int, int]
    owned: bool = True
    rectified: bool = False
    factors: torch.Tensor | None = None


def _select(memory: Any, image: torch.Tensor) -> Any:
    """A memory entry for the traced images ``image``: per-image tensors are picked (a view where the trace holds
    one image: K selections of one image share its memory), the rest kept."""
    if not isinstance(memory, torch.Tensor):
        return memory
    return memory.expand(len(image), *memory.shape[1:]) if memory.shape[0] == 1 else memory.index_select(0, image)


def _whole(w: Window, shape: tuple[int, ...]) -> Window:
    if w.origin is None:
        return w
    return Window(place(w.signal, w.origin, tuple(shape[-2:])), None, w.size, w.cone, w.cone_size, factors=w.factors)


def _settle(w: Window) -> Window:
    """Multiplies in pending channel factors (in place on a signal of our own)."""
    if w.factors is not None:
        factors = w.factors.view(-1, *([1] * (w.signal.dim() - 2)))
        w.signal = w.signal.mul_(factors) if w.owned else w.signal * factors
        w.owned, w.rectified, w.factors = True, False, None
    return w


def _merge(a: Window, b: Window, shape: tuple[int, ...]) -> Window:
    """Two signals at one node's output, added: windows into the box that holds both, in place
    in one that is our own and already that box."""
    a, b = _settle(a), _settle(b)
    if a.origin is None or b.origin is None:
        a, b = _whole(a, shape), _whole(b, shape)
        if b.owned and not a.owned:
            a, b = b, a
        return Window(a.signal.add_(b.signal) if a.owned else a.signal + b.signal, None, a.size, a.cone, a.cone_size)
    lo, size = union((a.origin, a.size), (b.origin, b.size))  # type: ignore[misc]
    lo = torch.minimum(lo, lo.new_tensor([shape[-2] - size[0], shape[-1] - size[1]]))  # stay in the map
    cone, cone_size = union((a.cone, a.cone_size), (b.cone, b.cone_size))  # type: ignore[arg-type,misc]

    def fills(w: Window) -> bool:
        return w.owned and w.size == size and bool((w.origin == lo).all())

    if fills(b) and not fills(a):
        a, b = b, a
    if fills(a):
        signal = a.signal
    else:
        k, c = a.signal.shape[:2]
        signal = torch.empty(
            k, c, *size, dtype=a.signal.dtype, device=a.signal.device, memory_format=torch.channels_last
        ).zero_()
        add_at(signal, a.signal, a.origin - lo)
    return Window(add_at(signal, b.signal, b.origin - lo), lo, size, cone, cone_size)


@torch.no_grad()  # a projection is not differentiated: keep no graph (and no saved windows)
def reverse(
    graph: Graph,
    trace: Trace,
    rule: str,
    top: int,
    image: torch.Tensor,
    signal: torch.Tensor,
    origin: torch.Tensor | None,
    work_bytes: int | None = None,
) -> list[tuple[torch.Tensor, Window]]:
    """Runs the mirrors from the output of node ``top`` down to pixels under ``rule``.

    ``signal`` is ``(K, C, h, w)`` windows at ``origin`` ``(K, 2)``, or whole outputs with
    ``origin=None``; ``image`` ``(K,)`` says which traced image each belongs to. Returns the signal
    at the images, a window in the receptive field or whole images, in parts: which selections
    ``(k,)`` and their window. The selections go on in halves where a step would write a tensor over
    ``work_bytes``, and in groups of like windows where one shared window would waste work (:data:`WASTE`).
    Denormal numbers are flushed to zero on the way (:func:`_no_denormals`).
    """
    if origin is not None:
        signal = signal.contiguous(memory_format=torch.channels_last)
    size = (signal.shape[-2], signal.shape[-1])
    pending = {top: Window(signal, origin, size, origin, size)}
    mirrors = tuple(node.mirror_for(rule) for node in graph.nodes[: top + 1])
    which = torch.arange(len(image), device=image.device)
    with _no_denormals():
        return _Pass(graph, trace, rule, mirrors, work_bytes).run(pending, top, image, which)


@contextmanager
def _no_denormals() -> Iterator[None]:
    """Flushes denormal numbers (below 1.2e-38 in float32, 2.2e-308 in float64) to zero on the CPU, then restores
    the caller's setting. A cone's rim holds signals that shrink by a factor at every block (ConvNeXt's layer scale
    starts at 1e-6) until they are denormal, and arithmetic on those is 4-5x slower on the CPU."""
    before = bool(torch.tensor([1e-39]).mul(1.0).item() == 0.0)  # the CPU flushes already
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


def _written(geometry: Any, w: Window, ins: Sequence[tuple[int, ...]]) -> int:
    """Elements per selection of the largest tensor a step writes from window ``w``: each input's
    window (what the geometry reads, cut to the map), or its whole map."""
    largest = 0
    for s in ins:
        n = int(torch.Size(s).numel())
        if w.origin is not None and geometry is not None and len(s) == 3:
            read = geometry.reads(w.size)
            n = s[0] * min(read[0], s[1]) * min(read[1], s[2])
        largest = max(largest, n)
    return largest


def _part(w: Window, which: slice | torch.Tensor) -> Window:
    """Some of a window's selections (a slice: views, the parts hold disjoint memory)."""

    def cut(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t[which]

    return Window(w.signal[which], cut(w.origin), w.size, cut(w.cone), w.cone_size, w.owned, w.rectified, w.factors)


def _groups(geometry: Any, w: Window, ins: Sequence[tuple[int, ...]], k: int, work_bytes: int | None) -> list[Any]:
    """How a step's selections go on: together (``[]``), in halves where it would write a tensor over
    ``work_bytes``, or in two groups by window area where their shared input window wastes work."""
    if k < 2:
        return []
    if work_bytes is not None and k * _written(geometry, w, ins) * w.signal.element_size() > work_bytes:
        return [slice(0, k // 2), slice(k // 2, k)]
    if w.origin is None or geometry is None or geometry == POINTWISE or any(len(s) != 3 for s in ins):
        return []
    read, read_size = descend(geometry, w.origin, w.size)
    cone, cone_size = descend(geometry, w.cone, w.cone_size)
    reached = (reach(cone, cone_size, read, read_size, s[-2:]) for s in ins)
    extent = torch.stack([hi - lo for lo, hi in reached]).clamp(min=1).amax(0)  # (K, 2)
    area = extent.prod(1)  # (K,) what each selection needs, against k times the shared window
    if k * int(extent.amax(0).prod()) <= WASTE * int(area.sum()):
        return []
    order = area.argsort(stable=True)
    return [order[: k // 2], order[k // 2 :]]


@dataclass(frozen=True)
class _Pass:
    """One reverse pass under ``rule`` down ``graph`` through its nodes' ``mirrors`` under that rule (in forward
    order, from the first node to the top), reading the forward ``trace``; ``work_bytes`` bounds its largest
    tensor (see :func:`reverse`)."""

    graph: Graph
    trace: Trace
    rule: str
    mirrors: tuple[Any, ...]
    work_bytes: int | None

    def run(
        self, pending: dict[int, Window], start: int, image: torch.Tensor, which: torch.Tensor
    ) -> list[tuple[torch.Tensor, Window]]:
        """Goes down from node ``start`` with the signals ``pending`` at node outputs, for selections ``which``
        ``(K,)`` of traced images ``image`` ``(K,)``; parts of the selections go on alone where they must."""
        for i in range(start, -1, -1):
            w = pending.get(i)
            if w is None:
                continue
            geometry = self.mirrors[i].geometry
            groups = _groups(geometry, w, self.trace.inputs[i], len(image), self.work_bytes)
            if groups:
                return [
                    part
                    for g in groups
                    for part in self.run({j: _part(v, g) for j, v in pending.items()}, i, image[g], which[g])
                ]
            del pending[i]
            self._step(i, w, image, pending)
        return [(which, _settle(pending[IMAGES]))]

    def _step(self, i: int, w: Window, image: torch.Tensor, pending: dict[int, Window]) -> None:
        """Node ``i``'s mirror takes the signal ``w`` at its output to its inputs, where it joins ``pending``."""
        node = self.graph.nodes[i]
        mirror = self.mirrors[i]
        ins, out_shape = self.trace.inputs[i], self.trace.shapes[i]
        geometry = mirror.geometry
        reached = [s for k, s in enumerate(ins) if k not in mirror.silent]
        if w.origin is not None and (
            geometry is None
            or any(len(s) != 3 for s in reached)
            or (geometry == POINTWISE and any(s[-2:] != out_shape[-2:] for s in reached))
        ):
            w = _whole(w, out_shape)
        factors = mirror.channel_factors()
        if factors is not None and len(node.inputs) == 1:  # left pending for the mirror below to take
            if w.factors is not None:
                factors = factors * w.factors
            below = Window(w.signal, w.origin, w.size, w.cone, w.cone_size, w.owned, factors=factors)
            _send(pending, node.inputs[0], below, ins[0])
            return
        takes = {"factors": w.factors} if w.factors is not None and mirror.takes_factors else {}
        if not takes:
            _settle(w)
        if mirror.rectifies:  # pointwise: windows stay; in place on a signal of our own
            if not w.rectified:
                _rectify(w)
            _send(pending, node.inputs[0], Window(w.signal, w.origin, w.size, w.cone, w.cone_size, w.owned), ins[0])
            return
        rectified = False
        if mirror.disjoint and not takes and len(node.inputs) == 1 and node.inputs[0] != IMAGES:
            below = node.inputs[0]
            if self.mirrors[below].rectifies and len(self.graph.nodes[below].fx_node.users) == 1:
                _rectify(w)  # relu commutes with placing apart
                rectified = True
        sent = self._apply(i, w, image, takes)
        storage = [None if p is None else _storage(p.signal) for p in sent]
        for k, (j, piece) in enumerate(zip(node.inputs, sent)):
            if piece is None:  # a silent input: no signal goes down there
                continue
            # a signal may change in place if no other holds its memory: not the pending one (unless
            # that was ours), nor a sibling (fan-out sends one tensor twice, a split sends views)
            piece.owned = (w.owned or storage[k] != _storage(w.signal)) and storage.count(storage[k]) == 1
            piece.rectified = rectified
            _send(pending, j, piece, ins[k])

    def _apply(self, i: int, w: Window, image: torch.Tensor, takes: dict[str, Any]) -> list[Window | None]:
        """Node ``i``'s mirror on ``w``: the signal for each of its inputs, whole maps or windows cut to the cone
        (``None`` for a silent input)."""
        node = self.graph.nodes[i]
        mirror = self.mirrors[i]
        memory = self.trace.memory[i][self.rule]
        geometry = mirror.geometry
        if w.origin is None:
            out = mirror(w.signal, *(_select(m, image) for m in memory), **takes)
            outs = out if isinstance(out, tuple) else (out,)
            return [None if t is None else Window(t, None, w.size, w.cone, w.cone_size) for t in outs]
        cut = tuple(
            window(m, image, w.origin, w.size, channels_last=True)
            if isinstance(m, torch.Tensor) and m.dim() == 4
            else _select(m, image)
            for m in memory
        )
        if geometry == POINTWISE:  # windows stay where they are
            out = mirror(w.signal, *mirror.restrict(cut, w.origin, w.size), **takes)
            outs = out if isinstance(out, tuple) else (out,)
            return [None if t is None else Window(t, w.origin, w.size, w.cone, w.cone_size) for t in outs]
        read, read_size = descend(geometry, w.origin, w.size)
        cone, cone_size = descend(geometry, w.cone, w.cone_size)
        out = mirror(w.signal, *mirror.restrict(cut, read, read_size), **takes)
        sent: list[Window | None] = []
        for j, t, shape in zip(node.inputs, out if isinstance(out, tuple) else (out,), self.trace.inputs[i]):
            if t is None:
                sent.append(None)
                continue
            o, s = clip(cone, cone_size, read, read_size, tuple(shape[-2:]))
            sent.append(Window(shift(t if j == IMAGES else _channels_last(t), o - read, s), o, s, cone, cone_size))
        return sent


def _rectify(w: Window) -> None:
    """``relu`` of the signal: in place on a compact signal of our own, else into a compact new one (a
    window cut from a bigger one would otherwise be copied again by the convolution it goes to)."""
    if w.owned and w.signal.is_contiguous(memory_format=layout(w.signal)):
        w.signal.relu_()
    else:
        w.signal, w.owned = torch.relu(w.signal), True


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    """Windows stay channels-last, the layout oneDNN's convolutions run fastest on: a mirror's compact
    output in the default layout is laid out again (a convolution of 1x1 windows returns one)."""
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 and t.is_contiguous() else t


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _send(pending: dict[int, Window], j: int, w: Window, shape: tuple[int, ...]) -> None:
    """Adds ``w`` to what node ``j``'s output has received."""
    pending[j] = _merge(pending[j], w, shape) if j in pending else w
