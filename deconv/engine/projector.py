"""The one projection path: checked selections, in chunks of the plan, through forward walks and reverse passes.

Every projection of deconv goes this way, whatever asked for it: one activation, a whole feature map
(a selection without a position at a layer of maps), a class output, a batch of selections, cut to
their receptive fields or in whole images.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch

from ..selection import Selection
from .field import cones
from .graph import IMAGES, Graph, Trace
from .plan import WORK_TENSOR_BYTES, Footprint, chunks, selection_bytes
from .reverse import Window, reverse
from .windows import crop, place

__all__ = ["Projector"]


class Projector:
    """Projects selections of ``graph``'s nodes (see :meth:`projections`), and measures what one image costs."""

    def __init__(self, graph: Graph, index: dict[str, int]) -> None:
        self.graph = graph
        self.index = index
        self._dry: dict[tuple[tuple[int, ...], str | None], Footprint] = {}

    def footprint(self, image_shape: Sequence[int], rule: str | None = None) -> Footprint:
        """A walk over one zero image of ``image_shape`` ``(C, H, W)``: the shapes, and with ``rule`` what one
        image's memory under that rule costs (cached; only the rules a call uses are walked)."""
        key = (tuple(image_shape), rule)
        if key not in self._dry:
            parameter = next(self.graph.model.parameters(), None)
            kw = {} if parameter is None else {"device": parameter.device, "dtype": parameter.dtype}
            zeros = torch.zeros(1, *key[0], **kw)
            self._dry[key] = Footprint.of(self.graph.run(zeros, (), None, () if rule is None else (rule,), False))
        return self._dry[key]

    def projections(
        self,
        images: torch.Tensor,
        selections: list[Selection],
        crop: bool,
        budget: int,
        rule: str,
        trace: Trace | None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Projects checked ``selections`` of checked ``images`` chunk by chunk: ``(where (k,), (k, C, H, W))``, or
        with ``crop`` each cut to its receptive-field box ``(k, C, h, w)``. A selection at a layer of maps without
        a position projects its whole feature map. ``trace`` (of these images, for ``rule``) replaces the walks."""
        if not selections:
            return
        dry = self.footprint(images.shape[1:], rule)
        keys = [(self.index[s.layer], _whole(s, dry.shapes[self.index[s.layer]])) for s in selections]
        item = images.element_size()
        per_selection = {key: selection_bytes(self.graph, dry, key[0], item, crop, key[1], rule) for key in set(keys)}
        tops = [top for top, _ in keys]
        if trace is not None:  # one chunk: the trace holds every image
            per_image, budget = (1, 1), 2**62
        else:
            per_image = dry.image_bytes(rule, max(tops), tops, item)
        order = self._order(selections, keys, (images.shape[-2], images.shape[-1]), rule)
        for chunk in chunks([s.image for s in selections], keys, per_image, per_selection, budget, order):
            if trace is None:
                local = {image: i for i, image in enumerate(chunk.images)}
                layers = sorted({top for (top, _), _ in chunk.parts})
                walked = self.graph.run(images[chunk.images], layers, layers[-1], (rule,), True)
            else:
                local, walked = {i: i for i in range(images.shape[0])}, trace
            for (top, _), part in chunk.parts:
                selected = [selections[k] for k in part]
                where = torch.tensor(part, device=images.device)
                for which, projected in self._reverse(walked, rule, top, selected, local, crop, images.shape[1:]):
                    yield where[which], projected  # each group of the reverse pass as it is: no copy into one batch

    def _order(
        self, selections: list[Selection], keys: list[tuple[int, bool]], size: tuple[int, int], rule: str
    ) -> list[tuple[int, ...]]:
        """Sort keys that put selections with the same receptive field in the image (cut by the same
        borders) together: one part's windows share a size, the largest of its selections'."""
        order = [(0, 0, s.y or 0, s.x or 0) for s in selections]
        for top in {top for top, _ in keys}:
            mine = [k for k, (t, whole) in enumerate(keys) if t == top and selections[k].y is not None]
            if not mine:
                continue
            positions = torch.tensor([[selections[k].y, selections[k].x] for k in mine])
            field = cones(self.graph, top, positions, (1, 1), rule)[IMAGES]
            if field is None:
                continue
            lo = field[0].clamp(min=0)
            hi = (field[0] + field[0].new_tensor(field[1])).minimum(field[0].new_tensor(size))
            for k, (h, w) in zip(mine, (hi - lo).tolist()):
                order[k] = (h, w, selections[k].y, selections[k].x)
        return order

    def _reverse(
        self,
        trace: Trace,
        rule: str,
        top: int,
        part: list[Selection],
        local: dict[int, int],
        cut: bool,
        image_shape: Sequence[int],
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The projections of ``part`` (selections at node ``top``), whole images or cut to their boxes, in the
        groups the reverse pass went down in: ``(which (k_g,) indexes part, (k_g, C, H, W) or (k_g, C, h, w))``."""
        out = trace.outputs[top]
        device = out.device
        image = torch.tensor([local[s.image] for s in part], device=device)
        channel = torch.tensor([s.channel for s in part], device=device)
        batch = torch.arange(len(part), device=device)
        origin: torch.Tensor | None = None
        if out.dim() == 4 and part[0].y is not None:  # one activation each: a 1x1 window
            y = torch.tensor([s.y for s in part], device=device)
            x = torch.tensor([s.x for s in part], device=device)
            signal = out.new_zeros(len(part), out.shape[1], 1, 1)
            signal[batch, channel, 0, 0] = out[image, channel, y, x]
            origin = torch.stack([y, x], 1)
        else:  # a vector layer's entry, or a whole feature map
            signal = out.new_zeros(len(part), *out.shape[1:])
            signal[batch, channel] = out[image, channel]
        size = (image_shape[-2], image_shape[-1])
        field = cones(self.graph, top, origin, (1, 1), rule)[IMAGES] if cut and origin is not None else None

        def finished(which: torch.Tensor, result: Window) -> torch.Tensor:
            if result.origin is not None:
                if cut:  # the receptive-field box: the whole cone, zero where it leaves the image
                    return crop(result.signal, result.cone - result.origin, result.cone_size)[0]
                return place(result.signal, result.origin, size)
            if field is not None:
                return crop(result.signal, field[0][which], field[1])[0]
            return result.signal

        parts = reverse(self.graph, trace, rule, top, image, signal, origin, WORK_TENSOR_BYTES)
        return [(which, finished(which, result)) for which, result in parts]


def _whole(s: Selection, shape: tuple[int, ...]) -> bool:
    """Whether ``s`` projects a whole feature map (a layer of maps, no position)."""
    return len(shape) == 3 and s.y is None
