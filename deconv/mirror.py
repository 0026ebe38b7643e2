"""The mirror of a CNN: its deconvnet, run from any activation down to pixel space.

This module is the public face: it checks what users pass once, then hands the work to the graph
(:mod:`deconv.engine.graph`, the forward trace), the chunk plan (:mod:`deconv.engine.plan`) and the reverse pass
(:mod:`deconv.engine.reverse`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import torch
from torch import nn

from .builders import rules as registered_rules
from .builders import walk
from .builders.registry import DEFAULT_RULE
from .engine.graph import IMAGES, Graph, Node, Trace, channels_last, evaluating, first_non_finite
from .engine.plan import WORK_TENSOR_BYTES, Footprint, chunks, selection_bytes
from .engine.reverse import Window, cones, reverse
from .engine.windows import crop as _crop
from .engine.windows import place
from .errors import InputError, NonFiniteError, SelectionError
from .selection import Position, Selection, check, integer, parse
from .selection import position as as_position

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "Box",
    "LayerInfo",
    "Mirror",
    "ReceptiveField",
    "Selection",
    "Trace",
    "build_mirror",
    "evaluating",
    "first_non_finite",
]

DEFAULT_MEMORY_BUDGET = 2 * 1024**3
"""Bytes that batched projections may hold at once (about 2 GB)."""


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


@dataclass(frozen=True)
class LayerInfo:
    """A probe point: its name, type, mirror, output shape ``(C, H, W)`` or ``(F,)``, receptive field."""

    name: str
    kind: str
    mirror: str
    shape: tuple[int, ...]
    receptive_field: ReceptiveField | None


def build_mirror(model: nn.Module, rule: str = DEFAULT_RULE) -> Mirror:
    """The deconvnet of ``model``: one mirror module per operation, sharing the model's own weights.

    ``rule`` is what the mirror does at each ReLU by default (``"deconvnet"``, the paper's;
    ``"guided"``; ``"gradient"``; or one registered with ``register_mirror(..., rule=...)``).
    ``model`` is left exactly as it was. Raises ``UnsupportedModuleError`` (a ``TypeError``) naming
    a node with no registered mirror, ``UnsupportedGraphError`` where the forward pass cannot be traced.
    """
    _check_rule(rule)
    return Mirror(walk(model, rule), rule)


def _assemble(k: int, parts: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """One ``(k, ...)`` batch from parts ``(which (k_p,), values (k_p, ...))`` that cover it."""
    parts = list(parts)
    which, values = parts[0]
    if len(parts) == 1 and bool((which == torch.arange(k, device=which.device)).all()):
        return values
    out = values.new_empty(k, *values.shape[1:])
    for which, values in parts:
        out[which] = values
    return out


def _check_rule(rule: Any) -> str:
    if rule not in registered_rules():
        raise SelectionError(f"unknown rule {rule!r}; valid rules: {', '.join(registered_rules())}")
    return rule


class Mirror(nn.Module):
    """A deconvnet attached to a CNN. Build it with :func:`build_mirror`.

    ``stack`` holds the mirror modules (of the default rule) last node first, as the signal goes
    down; ``steps`` the nodes in forward order, each with its ``layer`` and ``mirror``.
    """

    def __init__(self, graph: Graph, rule: str = DEFAULT_RULE) -> None:
        super().__init__()
        self.graph = graph
        self.rule = rule
        self.steps: tuple[Node, ...] = tuple(graph.nodes)
        self.stack = nn.ModuleList(node.mirror for node in reversed(self.steps))
        object.__setattr__(self, "model", graph.model)  # not a submodule: the mirror owns no state of its own
        self._index = {}
        for i, node in enumerate(self.steps):
            for name in (node.name, *node.aliases):
                self._index.setdefault(name, i)
        self._dry: dict[tuple[int, ...], Footprint] = {}
        self._image_shape: tuple[int, ...] | None = None

    # ---------------------------------------------------------------- layers
    @property
    def layer_names(self) -> list[str]:
        """Probe points in forward order: the model's own module names (``"features.29"``), ``name:1``
        for a module's second call, containers whose output is a node (``"layer3.1"``), fx names of functions."""
        return list(self._index)

    @property
    def output(self) -> int:
        """The index of the node whose output is the model's."""
        return self.graph.output

    @property
    def output_layer(self) -> str:
        """The probe point whose output is the model's (the class output of a classifier)."""
        return self.steps[self.graph.output].name

    def module(self, layer: str) -> nn.Module | None:
        """The module at probe point ``layer``: the layer its node calls (``nn.ReLU()`` for ``F.relu``), the
        container for a container's name (``"layer3.1"``), ``None`` for other functions."""
        node = self.steps[self.index(layer)]
        if layer != node.name:
            return self.model.get_submodule(layer.partition(":")[0])
        return node.layer

    def shape(self, layer: str, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The output shape of ``layer`` (batch left out), ``(C, H, W)`` or ``(F,)``, for images of ``image_shape``."""
        return self.shapes(tuple(image_shape))[self.index(layer)]

    def activations(self, images: torch.Tensor, layers: Sequence[str], check: bool = True) -> dict[str, torch.Tensor]:
        """The outputs of ``layers`` for ``images`` ``(N, C, H, W)``: one forward walk that stops at the deepest
        and keeps no memory for projections. Where every layer up to there is torch's own, the walk runs
        channels-last (faster on the CPU; values agree with the default layout to rounding). With ``check``,
        ``NonFiniteError`` names the layer and image of a NaN or inf activation."""
        tops = {layer: self.index(layer) for layer in layers}
        images = self.check_images(images)
        deepest = max(tops.values())
        if all(node.builtin for node in self.steps[: deepest + 1]):
            images = channels_last(images)
        outputs = self.graph.run(images, tops.values(), deepest, (), check).outputs
        return {layer: outputs[top] for layer, top in tops.items()}

    @property
    def rules(self) -> tuple[str, ...]:
        """The rules a projection can use."""
        return registered_rules()

    def index(self, layer: str) -> int:
        """Position of ``layer``'s node in forward order."""
        if not isinstance(layer, str) or layer not in self._index:
            raise SelectionError(f"unknown layer {layer!r}; valid layers: {', '.join(self.layer_names)}")
        return self._index[layer]

    def blocks(self) -> list[str]:
        """The outermost blocks whose outputs are probe points (ResNet blocks, DenseNet blocks,
        Inception and Fire modules): containers that are not plain ``Sequential``/``ModuleList``/
        ``ModuleDict``, not inside another such block. Empty for a plain chain of layers."""
        plain = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
        found = []
        for node in self.steps:
            for name in node.aliases:
                module = self.model.get_submodule(name.partition(":")[0])
                if type(module) not in plain and not any(name.startswith(b + ".") for b in found):
                    found.append(name)
        return [b for b in found if not any(b.startswith(o + ".") for o in found)]

    def __repr__(self) -> str:
        lines = [
            f"  ({n.name}) {n.layer.__class__.__name__ if n.layer is not None else n.fx_node.target} -> {n.mirror!r}"
            for n in reversed(self.steps)
        ]
        return "Mirror(\n" + "\n".join(lines) + "\n)"

    # ---------------------------------------------------------------- forward
    def check_images(self, images: torch.Tensor) -> torch.Tensor:
        """Validated images ``(N, C, H, W)`` on the model's device and in its dtype."""
        if not isinstance(images, torch.Tensor):
            raise InputError(f"images must be a float tensor (N, C, H, W), got {type(images).__name__}")
        if images.device.type == "meta":
            raise InputError("images are on the meta device, which holds no values; pass real tensors")
        if images.dim() != 4:
            hint = " (add a batch dimension with images[None])" if images.dim() == 3 else ""
            raise InputError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}{hint}")
        if not images.is_floating_point():
            raise InputError(f"images must be a floating-point tensor, got {images.dtype}")
        if images.shape[0] == 0:
            raise InputError("images hold no image (N = 0)")
        for node in self.steps:
            channels = node.mirror.in_channels
            if IMAGES in node.inputs and channels is not None and images.shape[1] != channels:
                raise InputError(
                    f"images have {images.shape[1]} channels but layer {node.name!r} "
                    f"({type(node.layer).__name__}) takes {channels}"
                )
        bad = first_non_finite(images)
        if bad is not None:
            raise NonFiniteError(f"images contain NaN or inf (image {bad})")
        parameter = next(self.model.parameters(), None)
        if parameter is not None:
            if parameter.device.type == "meta":
                raise InputError("the model's parameters are on the meta device; load real weights first")
            images = images.to(parameter.device, parameter.dtype)
        self._image_shape = tuple(images.shape[1:])
        return images

    def run(
        self,
        images: torch.Tensor,
        keep: Iterable[int] = (),
        until: int | None = None,
        remember: bool = True,
        check: bool = True,
        rules: Iterable[str] | None = None,
    ) -> Trace:
        """Forward walk over checked ``images`` up to node ``until`` (default: the output), keeping
        the outputs of nodes ``keep`` and, with ``remember``, the memory of the mirrors of ``rules``
        (default: the mirror's rule). See :meth:`deconv.engine.graph.Graph.run`."""
        wanted = (self.rule,) if rules is None else tuple(_check_rule(r) for r in rules)
        return self.graph.run(images, keep, until, wanted if remember else (), check)

    def trace(self, images: torch.Tensor, layers: Sequence[str] | None = None) -> Trace:
        """The forward trace of ``images`` ``(N, C, H, W)`` for projections under every rule: switches,
        masks and the outputs of ``layers`` (default: every probe point). Pass it as ``trace=`` to
        :meth:`project_many` or :meth:`projections` to project from these images without another forward walk."""
        images = self.check_images(images)
        keep = range(len(self.steps)) if layers is None else [self.index(layer) for layer in layers]
        return self.graph.run(images, keep, None, self.rules, True)

    def _dry_run(self, image_shape: Sequence[int]) -> Footprint:
        """A walk over one zero image of ``image_shape`` ``(C, H, W)`` with the memory of every rule:
        the shapes, and what one image costs (cached)."""
        image_shape = tuple(image_shape)
        if image_shape not in self._dry:
            parameter = next(self.model.parameters(), None)
            kw = {} if parameter is None else {"device": parameter.device, "dtype": parameter.dtype}
            zeros = torch.zeros(1, *image_shape, **kw)
            self._dry[image_shape] = Footprint.of(self.graph.run(zeros, (), None, self.rules, False))
        return self._dry[image_shape]

    def shapes(self, image_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Output shape of every node for images of ``image_shape`` ``(C, H, W)`` (one dry run, cached)."""
        return self._dry_run(image_shape).shapes

    def _image_shape_or(self, image_shape: tuple[int, ...] | None) -> tuple[int, ...]:
        shape = image_shape or self._image_shape
        if shape is None:
            raise InputError("pass image_shape=(C, H, W): this mirror has not seen any images yet")
        return tuple(shape)

    # ---------------------------------------------------------------- geometry
    def describe(self, image_shape: tuple[int, ...] | None = None) -> list[LayerInfo]:
        """Every probe point with its output shape and receptive field in pixels."""
        shapes = self.shapes(self._image_shape_or(image_shape))
        infos = []
        for name in self.layer_names:
            i = self._index[name]
            node, field = self.steps[i], None
            if len(shapes[i]) == 3:
                one = cones(self.graph, i, torch.zeros(1, 2, dtype=torch.long), (1, 1))[IMAGES]
                two = cones(self.graph, i, torch.ones(1, 2, dtype=torch.long), (1, 1))[IMAGES]
                if one is not None and two is not None:
                    offset = tuple(int(v) for v in one[0][0])
                    stride = tuple(int(b - a) for a, b in zip(one[0][0], two[0][0]))
                    field = ReceptiveField(one[1], stride, offset)  # type: ignore[arg-type]
            kind = (
                type(node.layer).__name__
                if node.layer is not None
                else getattr(node.fx_node.target, "__name__", str(node.fx_node.target))
            )
            if name != node.name:
                kind = type(self.model.get_submodule(name.partition(":")[0])).__name__
            infos.append(LayerInfo(name, kind, type(node.mirror).__name__, shapes[i], field))
        return infos

    def receptive_field(self, layer: str, y: int, x: int, image_shape: tuple[int, ...] | None = None) -> Box:
        """Pixel box of activation ``(y, x)`` of ``layer`` (the whole image for layers past a global one)."""
        check(Selection(0, layer, 0, y, x), self.shapes(self._image_shape_or(image_shape))[self.index(layer)], 1)
        origin, (h, w) = self.receptive_fields(layer, torch.tensor([[y, x]]), image_shape)
        top, left = origin[0].tolist()
        return Box(top, left, top + h, left + w)

    def receptive_fields(
        self, layer: str, positions: torch.Tensor, image_shape: tuple[int, ...] | None = None
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Pixel boxes of many activations of ``layer`` at ``positions`` ``(K, 2)`` (y, x): their
        top-left corners ``(K, 2)`` and their shared size ``(h, w)``; the whole image past a global layer."""
        field = cones(self.graph, self.index(layer), positions, (1, 1))[IMAGES]
        if field is None:
            shape = self._image_shape_or(image_shape)
            return torch.zeros_like(positions), (shape[-2], shape[-1])
        return field

    # ---------------------------------------------------------------- projection
    def project(
        self,
        images: torch.Tensor,
        layer: str | None = None,
        channel: int | None = None,
        position: Position = None,
        target_class: int | None = None,
        rule: str | None = None,
        trace: Trace | None = None,
    ) -> torch.Tensor:
        """Projects one activation per image to pixel space: ``(N, C, H, W) -> (N, C, H, W)``.

        ``position``: ``None`` for the image's strongest activation in ``channel``, ``(y, x)`` for
        one, ``"map"`` for the whole feature map. ``target_class`` projects from the model's output
        (all other outputs zeroed) instead of ``layer``/``channel``. ``rule`` overrides the mirror's;
        ``trace`` (from :meth:`trace` on the same ``images``) skips the forward walk.
        """
        rule = self.rule if rule is None else _check_rule(rule)
        if target_class is not None:
            if layer is not None or channel is not None or position is not None:
                raise SelectionError(
                    "target_class projects from the class output; do not also pass layer, channel or position"
                )
            layer, channel = self.steps[self.output].name, integer(target_class, "target_class")
        elif layer is None or channel is None:
            raise SelectionError("pass layer= and channel= (or target_class=)")
        images = self.check_images(images)
        top = self.index(layer)
        channel = integer(channel, "channel")
        shape = self.shapes(tuple(images.shape[1:]))[top]
        n = images.shape[0]
        check(Selection(0, layer, channel), shape, n, need_position=False)
        if trace is not None:
            self._check_trace(trace, images, [top], rule)
        if isinstance(position, str) and position == "map":
            if len(shape) != 3:
                raise SelectionError(
                    f"layer {layer!r} outputs vectors {shape}; it has no feature maps to project whole"
                )
            trace = trace or self.run(images, keep=[top], until=top, rules=(rule,))
            signal = torch.zeros_like(trace.outputs[top])
            signal[:, channel] = trace.outputs[top][:, channel]
            parts = reverse(
                self.graph, trace, rule, top, torch.arange(n, device=images.device), signal, None, WORK_TENSOR_BYTES
            )
            return _assemble(n, ((which, w.signal) for which, w in parts))
        if position is not None:
            if len(shape) != 3:
                raise SelectionError(
                    f"layer {layer!r} outputs vectors {shape}; it has no positions (leave position=None)"
                )
            y, x = as_position(position)
            selections = [Selection(i, layer, channel, y, x) for i in range(n)]
        else:
            out = (trace or self.run(images, keep=[top], until=top, remember=False)).outputs[top][:, channel]
            if out.dim() == 3:
                flat = out.flatten(1).argmax(1).tolist()
                selections = [
                    Selection(i, layer, channel, f // out.shape[2], f % out.shape[2]) for i, f in enumerate(flat)
                ]
            else:
                selections = [Selection(i, layer, channel) for i in range(n)]
        return self._project_many(images, self._parse(images, selections), DEFAULT_MEMORY_BUDGET, rule, trace)

    @staticmethod
    def _check_trace(trace: Trace, images: torch.Tensor, tops: Iterable[int], rule: str) -> None:
        if trace.images != images.shape[0] or any(
            top not in trace.outputs or rule not in trace.memory[top] for top in tops
        ):
            raise SelectionError("trace= must come from mirror.trace(images) of these images and layers")

    def project_many(
        self,
        images: torch.Tensor,
        selections: Sequence[Selection | tuple],
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        rule: str | None = None,
        trace: Trace | None = None,
    ) -> torch.Tensor:
        """Projects K selections ``(image_index, layer, channel, y, x)`` sharing forward passes:
        ``(K, C, H, W)``. ``trace`` (from :meth:`trace` on the same ``images``) skips the forward walk."""
        rule = self.rule if rule is None else _check_rule(rule)
        images = self.check_images(images)
        return self._project_many(images, self._parse(images, selections), memory_budget, rule, trace)

    def _project_many(
        self, images: torch.Tensor, parsed: list[Selection], budget: int, rule: str, trace: Trace | None
    ) -> torch.Tensor:
        out = images.new_zeros(len(parsed), *images.shape[1:])
        for where, projections in self._projections(images, parsed, False, budget, rule, trace):
            out[where] = projections
        return out

    def projections(
        self,
        images: torch.Tensor,
        selections: Sequence[Selection | tuple],
        crop: bool = False,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        rule: str | None = None,
        trace: Trace | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Projects selections chunk by chunk in bounded memory, yielding ``(where, projections)``.

        ``where`` ``(k,)`` indexes ``selections``; ``projections`` is ``(k, C, H, W)``, or with ``crop``
        each projection's receptive-field box ``(k, C, h, w)`` (zero where the box leaves the image;
        the whole image for layers past a global one). Each reverse pass only computes the cone of
        positions its activation can reach. Chunks hold at most ``memory_budget`` bytes of work.
        """
        rule = self.rule if rule is None else _check_rule(rule)
        images = self.check_images(images)
        parsed = self._parse(images, selections)
        return self._projections(images, parsed, crop, memory_budget, rule, trace)

    def _parse(self, images: torch.Tensor, selections: Sequence[Selection | tuple]) -> list[Selection]:
        """Selections as :class:`Selection`, each checked against the layers and ``images``: one-line errors."""
        shapes = self.shapes(tuple(images.shape[1:]))
        parsed = []
        for s in map(parse, selections):
            check(s, shapes[self.index(s.layer)], images.shape[0])
            parsed.append(s)
        return parsed

    def _projections(
        self, images: torch.Tensor, parsed: list[Selection], crop: bool, budget: int, rule: str, trace: Trace | None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if not parsed:
            return
        device, item = images.device, images.element_size()
        tops = [self.index(s.layer) for s in parsed]
        dry = self._dry_run(images.shape[1:])
        per_selection = {top: selection_bytes(self.graph, dry, top, item, crop) for top in set(tops)}
        if trace is not None:  # one chunk: the trace holds every image
            self._check_trace(trace, images, tops, rule)
            per_image = (1, 1)
        else:
            per_image = dry.image_bytes(rule, max(tops), tops, item)
        plan = chunks(
            [s.image for s in parsed],
            tops,
            per_image,
            per_selection,
            budget if trace is None else 2**62,
            self._order(parsed, tops, tuple(images.shape[-2:])),
        )
        for chunk in plan:
            if trace is None:
                local = {image: i for i, image in enumerate(chunk.images)}
                layers = sorted({top for top, _ in chunk.parts})
                walked = self.run(images[chunk.images], keep=layers, until=layers[-1], rules=(rule,))
            else:
                local, walked = {i: i for i in range(images.shape[0])}, trace
            for top, part in chunk.parts:
                selected = [parsed[k] for k in part]
                yield (
                    torch.tensor(part, device=device),
                    self._reverse(walked, rule, top, selected, local, crop, images.shape[1:]),
                )

    def _order(self, parsed: list[Selection], tops: list[int], size: tuple[int, int]) -> list[tuple[int, ...]]:
        """Sort keys that put selections with the same receptive field in the image (cut by the same
        borders) together: one part's windows share a size, the largest of its selections'."""
        keys = [(0, 0, s.y or 0, s.x or 0) for s in parsed]
        for top in set(tops):
            mine = [k for k, t in enumerate(tops) if t == top and parsed[k].y is not None]
            field = (
                cones(self.graph, top, torch.tensor([[parsed[k].y, parsed[k].x] for k in mine]), (1, 1))[IMAGES]
                if mine
                else None
            )
            if field is not None:
                lo, hi = (
                    field[0].clamp(min=0),
                    (field[0] + field[0].new_tensor(field[1])).minimum(field[0].new_tensor(size)),
                )
                for k, (h, w) in zip(mine, (hi - lo).tolist()):
                    keys[k] = (h, w, parsed[k].y, parsed[k].x)
        return keys

    def _reverse(
        self,
        trace: Trace,
        rule: str,
        top: int,
        part: list[Selection],
        local: dict[int, int],
        crop: bool,
        image_shape: Sequence[int],
    ) -> torch.Tensor:
        """The projections of ``part`` (selections at node ``top``), whole images or cut to their boxes."""
        out = trace.outputs[top]
        device = out.device
        image = torch.tensor([local[s.image] for s in part], device=device)
        channel = torch.tensor([s.channel for s in part], device=device)
        batch = torch.arange(len(part), device=device)
        if out.dim() == 4:
            y = torch.tensor([s.y for s in part], device=device)
            x = torch.tensor([s.x for s in part], device=device)
            signal = out.new_zeros(len(part), out.shape[1], 1, 1)
            signal[batch, channel, 0, 0] = out[image, channel, y, x]
            origin: torch.Tensor | None = torch.stack([y, x], 1)
        else:
            signal = out.new_zeros(len(part), *out.shape[1:])
            signal[batch, channel] = out[image, channel]
            origin = None
        field = cones(self.graph, top, origin, (1, 1))[IMAGES] if crop and origin is not None else None

        def finished(which: torch.Tensor, result: Window) -> torch.Tensor:
            if result.origin is not None:
                if crop:  # the receptive-field box: the whole cone, zero where it leaves the image
                    return _crop(result.signal, result.cone - result.origin, result.cone_size)[0]
                return place(result.signal, result.origin, tuple(image_shape[-2:]))
            if field is not None:
                return _crop(result.signal, field[0][which], field[1])[0]
            return result.signal

        parts = reverse(self.graph, trace, rule, top, image, signal, origin, WORK_TENSOR_BYTES)
        return _assemble(len(part), ((which, finished(which, result)) for which, result in parts))
