"""The mirror of a CNN: its deconvnet, run from any activation down to pixel space.

This module is the public face. It checks what users pass, once, and hands the work to the engine
(:mod:`deconv.engine`): the forward graph and its trace, the projection path and the receptive field.
Analyses, figures, commands and ``deconv serve`` use the engine only through the methods below:
:meth:`Mirror.activations`, :meth:`Mirror.trace`, :meth:`Mirror.project` and its batched forms,
:meth:`Mirror.receptive_fields` and :meth:`Mirror.patches`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from .builders import rules as registered_rules
from .builders import walk
from .builders.registry import DEFAULT_RULE, Rule, resolve_rule
from .builders.trace import Traced, image_shape
from .engine import field
from .engine.field import Box, ReceptiveField
from .engine.graph import IMAGES, Graph, Node, Trace, channels_last, evaluating, first_non_finite
from .engine.projector import Projector
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


@dataclass(frozen=True)
class LayerInfo:
    """A probe point: its name, type, mirror, output shape ``(C, H, W)`` or ``(F,)``, receptive field."""

    name: str
    kind: str
    mirror: str
    shape: tuple[int, ...]
    receptive_field: ReceptiveField | None


def build_mirror(
    model: nn.Module,
    rule: str | Rule = DEFAULT_RULE,
    *,
    output: str | int | None = None,
    shape: tuple[int, int, int] | Callable[[], tuple[int, int, int]] | None = None,
) -> Mirror:
    """The deconvnet of ``model``: one mirror module per operation, sharing the model's own weights.

    ``rule`` is what the mirror does at each ReLU by default (``"deconvnet"``, the paper's;
    ``"guided"``; ``"gradient"``; or one registered with ``register_mirror(..., rule=...)``; a name or a
    :class:`~deconv.Rule`). Each node's mirror under another rule is built when a projection first uses it.
    ``output``: the field mirrored of a forward pass that returns a dict or a Hugging Face ``ModelOutput`` (default
    ``"logits"`` where it has one) or a tuple (an index). ``shape`` ``(C, H, W)``: the shape of the images, for a
    forward pass that branches on tensors' shapes (timm's ``Conv2dSame``, Hugging Face's embedders), or a function
    that returns it, called only if the forward pass needs it; such a mirror traces the model again for images of
    another shape. ``model`` is left exactly as it was. Raises
    ``UnsupportedModuleError`` (a ``TypeError``) naming a node with no registered mirror, ``UnsupportedGraphError``
    where the forward pass cannot be traced (naming the module and the line).
    """
    if not callable(shape):
        shape = image_shape(shape)
    name = _rule(rule)
    return Mirror(*walk(model, name, output, shape), name, output)


def _rule(rule: str | Rule) -> str:
    """The name of the registered rule ``rule``: ``SelectionError`` naming the valid ones if there is none."""
    return resolve_rule(rule).name


_PLAIN = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
"""Plain containers: no blocks of their own (see :meth:`Mirror.blocks`)."""


class Mirror(nn.Module):
    """A deconvnet attached to a CNN. Build it with :func:`build_mirror`.

    ``stack`` holds the mirror modules (of the default rule) last node first, as the signal goes
    down. ``graph``, ``steps`` (its nodes in forward order, each with its ``layer`` and ``mirror``) and
    :meth:`index` are the engine's own handles, for its tests.
    """

    def __init__(
        self, graph: Graph, traced: Traced, rule: str | Rule = DEFAULT_RULE, output: str | int | None = None
    ) -> None:
        super().__init__()
        self.rule = str(rule)
        self._output = output
        object.__setattr__(self, "model", graph.model)  # not a submodule: the mirror owns no state of its own
        self._attach(graph, traced)
        self._image_shape: tuple[int, ...] | None = None

    def _attach(self, graph: Graph, traced: Traced) -> None:
        """Takes ``graph``'s nodes as the mirror's, and notes which tensors the model's parameters and buffers are
        and which images' shape the graph holds the branches for (``traced``)."""
        self.graph = graph
        self._traced = traced
        self.steps: tuple[Node, ...] = tuple(graph.nodes)
        self.stack = nn.ModuleList(node.mirror for node in reversed(self.steps))
        self._index: dict[str, int] = {}
        for i, node in enumerate(self.steps):
            for name in (node.name, *node.aliases):
                self._index.setdefault(name, i)
        self._projector = Projector(graph, self._index)
        self._tensors = self._model_tensors()

    def _model_tensors(self) -> tuple[int, ...]:
        return tuple(id(t) for t in (*self.model.parameters(), *self.model.buffers()))

    def _follow(self) -> None:
        """Walks the model again where a parameter or buffer was replaced since (``load_state_dict(assign=True)``,
        ``model.conv.weight = nn.Parameter(...)``): projections always use the model's tensors of the moment."""
        if self._model_tensors() != self._tensors:
            self._attach(*walk(self.model, self.rule, self._output, self._traced.shape))

    def _for_shape(self, image_shape: Sequence[int]) -> None:
        """Traces the model again for images of ``image_shape`` ``(C, H, W)`` if its forward pass branched on the
        shape of the images it was traced for and those had another shape."""
        shape = tuple(image_shape)
        if self._traced.branches and shape != self._traced.shape:
            self._attach(*walk(self.model, self.rule, self._output, shape))

    # ---------------------------------------------------------------- probe points
    @property
    def layer_names(self) -> list[str]:
        """Probe points in forward order: the model's own module names (``"features.29"``), ``name:1``
        for a module's second call, containers whose output is a node (``"layer3.1"``), fx names of functions."""
        return list(self._index)

    @property
    def output_layer(self) -> str:
        """The probe point whose output is the model's (the class output of a classifier)."""
        return self.steps[self.graph.output].name

    @property
    def rules(self) -> tuple[str, ...]:
        """The rules a projection can use."""
        return registered_rules()

    def index(self, layer: str) -> int:
        """Position of ``layer``'s node in forward order."""
        if not isinstance(layer, str) or layer not in self._index:
            raise SelectionError(f"unknown layer {layer!r}; valid layers: {', '.join(self.layer_names)}")
        return self._index[layer]

    def module(self, layer: str) -> nn.Module | None:
        """The module at probe point ``layer``: the layer its node calls (``nn.ReLU()`` for ``F.relu``), the
        container for a container's name (``"layer3.1"``), ``None`` for other functions."""
        node = self.steps[self.index(layer)]
        return node.layer if layer == node.name else self.model.get_submodule(layer.partition(":")[0])

    def blocks(self) -> list[str]:
        """The blocks whose outputs are probe points, in forward order: the outermost containers that are not plain
        ``Sequential``/``ModuleList``/``ModuleDict`` and hold a convolution (ResNet blocks, DenseNet blocks and
        transitions, Inception and Fire modules; not a pooling or classifier head, nor a norm traced through). A
        stage whose output is the last of a chain of repeated blocks inside it (timm's ``stages.0``, ending in
        ``stages.0.blocks.2``) gives those blocks instead. Empty for a plain chain of layers."""
        found = []
        for node in self.steps:
            for name in node.aliases:
                module = self.model.get_submodule(name.partition(":")[0])
                if type(module) not in _PLAIN and not any(name.startswith(b + ".") for b in found):
                    found.append(name)
        outermost = [b for b in found if not any(b.startswith(o + ".") for o in found)]
        last = len(self.steps) - 1  # the model's output: a classifier head, not a block
        kept = [b for b in outermost if self._index[b] != last and self._convolves(self.model.get_submodule(b))]
        users: dict[int, list[int]] = {}
        for i, node in enumerate(self.steps):
            for j in node.inputs:
                users.setdefault(j, []).append(i)
        return [inner for b in kept for inner in self._chain_in(b, users)]

    def _chain_in(self, stage: str, users: dict[int, list[int]]) -> list[str]:
        """The repeated blocks of ``stage`` (a probe point) that end in its output, or ``[stage]``: children of one
        module inside it, of one class, each a probe point holding a convolution, each output used only by the
        next one's nodes (a chain: not DenseNet's concatenated layers), each after the first merging two of its own
        signals (a residual, a gate: not a stem's conv-norm-act units), the last one's output the stage's.
        ``users``: the nodes that read each node's output."""
        end = self._index[stage]
        for parent, module in self.model.get_submodule(stage).named_modules(prefix=stage):
            kids = [(f"{parent}.{n}", m) for n, m in module.named_children() if f"{parent}.{n}" in self._index]
            if not kids or self._index[kids[-1][0]] != end:
                continue
            run = [kids[-1]]
            for name, child in reversed(kids[:-1]):
                here, after = self._index[name], self._index[run[0][0]]
                chained = all(here < u <= after for u in users.get(here, []))
                merges = any(  # inside the block: a residual, a gate
                    len(self.steps[i].inputs) > 1 and all(here <= j <= after for j in self.steps[i].inputs)
                    for i in range(here + 1, after + 1)
                )
                if type(child) is not type(run[0][1]) or not chained or not merges:
                    break
                run.insert(0, (name, child))
            if len(run) > 1 and type(run[0][1]) not in _PLAIN and self._convolves(run[0][1]):
                return [name for name, _ in run]
        return [stage]

    @staticmethod
    def _convolves(module: nn.Module) -> bool:
        """Whether ``module`` holds a convolution (a block, not a norm, pooling or classifier head)."""
        return any(isinstance(m, nn.modules.conv._ConvNd) for m in module.modules())

    def shape(self, layer: str, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The output shape of ``layer`` (batch left out), ``(C, H, W)`` or ``(F,)``, for images of ``image_shape``."""
        return self._shapes(image_shape)[self.index(layer)]

    def describe(self, image_shape: tuple[int, ...] | None = None) -> list[LayerInfo]:
        """Every probe point with its output shape and receptive field in pixels."""
        shapes = self._shapes(self._image_shape_or(image_shape))
        infos = []
        for name, i in self._index.items():
            node = self.steps[i]
            rf = field.receptive_field(self.graph, i) if len(shapes[i]) == 3 else None
            module = self.module(name)
            target = node.fx_node.target
            kind = type(module).__name__ if module is not None else getattr(target, "__name__", str(target))
            infos.append(LayerInfo(name, kind, type(node.mirror).__name__, shapes[i], rf))
        return infos

    def __repr__(self) -> str:
        lines = [
            f"  ({n.name}) {n.layer.__class__.__name__ if n.layer is not None else n.fx_node.target} -> {n.mirror!r}"
            for n in reversed(self.steps)
        ]
        return "Mirror(\n" + "\n".join(lines) + "\n)"

    # ---------------------------------------------------------------- forward
    def check_images(self, images: torch.Tensor) -> torch.Tensor:
        """Validated images ``(N, C, H, W)`` on the model's device and in its dtype (the mirror following the model's
        tensors of the moment)."""
        self._follow()
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
        self._for_shape(images.shape[1:])
        self._image_shape = tuple(images.shape[1:])
        return images

    def activations(
        self, images: torch.Tensor, layers: Sequence[str], check: bool = True, any_layout: bool = False
    ) -> dict[str, torch.Tensor]:
        """The outputs of ``layers`` for ``images`` ``(N, C, H, W)``: one forward walk that stops at the deepest
        and keeps no memory for projections. With ``check``, ``NonFiniteError`` names the layer and image of a
        NaN or inf activation. With ``any_layout``, the walk runs channels-last where every layer up to the
        deepest is torch's own (faster on the CPU; values agree with the model's own layout to rounding)."""
        tops = {layer: self.index(layer) for layer in layers}
        images = self.check_images(images)
        deepest = max(tops.values())
        if any_layout and all(node.builtin for node in self.steps[: deepest + 1]):
            images = channels_last(images)
        outputs = self.graph.run(images, tops.values(), deepest, (), check).outputs
        return {layer: outputs[top] for layer, top in tops.items()}

    def trace(self, images: torch.Tensor, layers: Sequence[str] | None = None) -> Trace:
        """The forward trace of ``images`` ``(N, C, H, W)`` for projections under every rule: switches,
        masks and the outputs of ``layers`` (default: every probe point). Pass it as ``trace=`` to
        :meth:`project_many` or :meth:`projections` to project from these images without another forward walk."""
        images = self.check_images(images)
        keep = range(len(self.steps)) if layers is None else [self.index(layer) for layer in layers]
        return self.graph.run(images, keep, None, self.rules, True)

    def traced(self, trace: Trace, layer: str) -> torch.Tensor:
        """The output of ``layer`` kept in ``trace`` (from :meth:`trace`): ``(N, C, H, W)`` or ``(N, F)``."""
        top = self.index(layer)
        if top not in trace.outputs:
            raise SelectionError(f"the trace keeps no output of layer {layer!r}; trace it with layers=[{layer!r}]")
        return trace.outputs[top]

    def _shapes(self, image_shape: Sequence[int]) -> list[tuple[int, ...]]:
        """Output shape of every node for images of ``image_shape`` ``(C, H, W)`` (one dry run, cached)."""
        self._for_shape(image_shape)
        return self._projector.footprint(image_shape).shapes

    def _image_shape_or(self, image_shape: tuple[int, ...] | None) -> tuple[int, ...]:
        shape = image_shape or self._image_shape
        if shape is None:
            raise InputError("pass image_shape=(C, H, W): this mirror has not seen any images yet")
        return tuple(shape)

    # ---------------------------------------------------------------- receptive fields
    def receptive_field(self, layer: str, y: int, x: int, image_shape: tuple[int, ...] | None = None) -> Box:
        """Pixel box of activation ``(y, x)`` of ``layer`` (the whole image for layers past a global one)."""
        check(Selection(0, layer, 0, y, x), self._shapes(self._image_shape_or(image_shape))[self.index(layer)], 1)
        origin, (h, w) = self.receptive_fields(layer, torch.tensor([[y, x]]), image_shape)
        top, left = origin[0].tolist()
        return Box(top, left, top + h, left + w)

    def receptive_fields(
        self, layer: str, positions: torch.Tensor, image_shape: tuple[int, ...] | None = None
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Pixel boxes of many activations of ``layer`` at ``positions`` ``(K, 2)`` (y, x): their
        top-left corners ``(K, 2)`` and their shared size ``(h, w)``; the whole image past a global layer."""
        shape = image_shape or self._image_shape
        if shape is not None and len(shape) == 3:
            self._for_shape(shape)
        return field.boxes(self.graph, self.index(layer), positions, None if shape is None else tuple(shape[-2:]))

    def patches(
        self, images: torch.Tensor, layer: str, positions: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The receptive-field boxes of activations of ``layer`` at ``positions`` ``(K, 2)`` cut from ``images``
        ``(K, C, H, W)``, one image each: ``(K, C, h, w)``, zero outside the image, and the mask of pixels inside
        ``(K, 1, h, w)``. Whole images for a vector layer (``positions=None``) or past a global one."""
        self._for_shape(images.shape[1:])
        return field.patches(self.graph, self.index(layer), images, positions)

    # ---------------------------------------------------------------- projection
    def project(
        self,
        images: torch.Tensor,
        layer: str | None = None,
        channel: int | None = None,
        position: Position = None,
        target_class: int | None = None,
        rule: str | Rule | None = None,
        trace: Trace | None = None,
    ) -> torch.Tensor:
        """Projects one activation per image to pixel space: ``(N, C, H, W) -> (N, C, H, W)``.

        ``position``: ``None`` for the image's strongest activation in ``channel``, ``(y, x)`` for
        one, ``"map"`` for the whole feature map. ``target_class`` projects from the model's output
        (all other outputs zeroed) instead of ``layer``/``channel``. ``rule`` overrides the mirror's;
        ``trace`` (from :meth:`trace` on the same ``images``) skips the forward walk.
        """
        rule = self.rule if rule is None else _rule(rule)
        if target_class is not None:
            if layer is not None or channel is not None or position is not None:
                raise SelectionError(
                    "target_class projects from the class output; do not also pass layer, channel or position"
                )
            layer, channel = self.output_layer, integer(target_class, "target_class")
        elif layer is None or channel is None:
            raise SelectionError("pass layer= and channel= (or target_class=)")
        images = self.check_images(images)
        top = self.index(layer)
        channel = integer(channel, "channel")
        shape = self._shapes(tuple(images.shape[1:]))[top]
        check(Selection(0, layer, channel), shape, images.shape[0], need_position=False)
        if trace is not None:
            self._check_trace(trace, images, [top], rule)
        selections = self._per_image(images, layer, channel, position, shape, trace)
        return self._project_many(images, selections, DEFAULT_MEMORY_BUDGET, rule, trace)

    def _per_image(
        self,
        images: torch.Tensor,
        layer: str,
        channel: int,
        position: Position,
        shape: tuple[int, ...],
        trace: Trace | None,
    ) -> list[Selection]:
        """One selection per image for :meth:`project`: at ``position``, the whole map, or the strongest."""
        n = images.shape[0]
        if isinstance(position, str) and position == "map":
            if len(shape) != 3:
                raise SelectionError(
                    f"layer {layer!r} outputs vectors {shape}; it has no feature maps to project whole"
                )
            return [Selection(i, layer, channel) for i in range(n)]
        if position is not None:
            if len(shape) != 3:
                raise SelectionError(
                    f"layer {layer!r} outputs vectors {shape}; it has no positions (leave position=None)"
                )
            y, x = as_position(position)
            selections = [Selection(i, layer, channel, y, x) for i in range(n)]
            check(selections[0], shape, n)
            return selections
        top = self.index(layer)
        out = (trace or self.graph.run(images, [top], top, (), True)).outputs[top][:, channel]
        if out.dim() != 3:  # a vector layer
            return [Selection(i, layer, channel) for i in range(n)]
        flat = out.flatten(1).argmax(1).tolist()
        return [Selection(i, layer, channel, f // out.shape[2], f % out.shape[2]) for i, f in enumerate(flat)]

    def project_many(
        self,
        images: torch.Tensor,
        selections: Sequence[Selection | tuple],
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        rule: str | Rule | None = None,
        trace: Trace | None = None,
    ) -> torch.Tensor:
        """Projects K selections ``(image_index, layer, channel, y, x)`` sharing forward passes:
        ``(K, C, H, W)``. ``trace`` (from :meth:`trace` on the same ``images``) skips the forward walk."""
        rule = self.rule if rule is None else _rule(rule)
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
        rule: str | Rule | None = None,
        trace: Trace | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Projects selections chunk by chunk in bounded memory, yielding ``(where, projections)``.

        ``where`` ``(k,)`` indexes ``selections``; ``projections`` is ``(k, C, H, W)``, or with ``crop``
        each projection's receptive-field box ``(k, C, h, w)`` (zero where the box leaves the image;
        the whole image for layers past a global one). Each reverse pass only computes the cone of
        positions its activation can reach. Chunks hold at most ``memory_budget`` bytes of work.
        """
        rule = self.rule if rule is None else _rule(rule)
        images = self.check_images(images)
        parsed = self._parse(images, selections)
        return self._projections(images, parsed, crop, memory_budget, rule, trace)

    def _parse(self, images: torch.Tensor, selections: Sequence[Selection | tuple]) -> list[Selection]:
        """Selections as :class:`Selection`, each checked against the layers and ``images``: one-line errors."""
        shapes = self._shapes(tuple(images.shape[1:]))
        parsed = []
        for s in map(parse, selections):
            check(s, shapes[self.index(s.layer)], images.shape[0])
            parsed.append(s)
        return parsed

    def _projections(
        self, images: torch.Tensor, parsed: list[Selection], crop: bool, budget: int, rule: str, trace: Trace | None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if trace is not None and parsed:
            self._check_trace(trace, images, [self.index(s.layer) for s in parsed], rule)
        return self._projector.projections(images, parsed, crop, budget, rule, trace)

    @staticmethod
    def _check_trace(trace: Trace, images: torch.Tensor, tops: Iterable[int], rule: str) -> None:
        if trace.images != images.shape[0] or any(
            top not in trace.outputs or rule not in trace.memory[top] for top in tops
        ):
            raise SelectionError("trace= must come from mirror.trace(images) of these images and layers")
