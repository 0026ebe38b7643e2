"""The mirror of a CNN: its deconvnet, run from any activation down to pixel space."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Literal, NamedTuple, Sequence

import torch
from torch import nn

from .builders import find_mirror_factory, walk
from .cone import clip, descend, place, shift, window
from .errors import InputError, NonFiniteError, SelectionError, UnsupportedModuleError
from .layers import ChannelScale, Rectify, TransposedFilter, Unpool2d
from .layers.base import Geometry, pair

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "Box",
    "LayerInfo",
    "Mirror",
    "ReceptiveField",
    "Selection",
    "Step",
    "Trace",
    "build_mirror",
]

DEFAULT_MEMORY_BUDGET = 2 * 1024**3
"""Bytes that batched projections may hold at once (about 2 GB)."""

WORK_TENSOR_BYTES = 16 * 1024**2
"""Batched work is also cut into chunks whose largest tensor is about this big (if one image or one
selection allows): glibc's malloc serves blocks under 32 MB from its heap and reuses them once freed,
while bigger ones are mapped fresh from the OS and page-faulted in on every use, which on CPU costs
more than the arithmetic. Small chunks also stay in cache and lose nothing in the convolutions."""

Position = tuple[int, int] | Literal["map"] | None


class Selection(NamedTuple):
    """One activation: channel ``channel`` of ``layer`` at ``(y, x)`` for image ``image``.

    ``y`` and ``x`` are ``None`` for layers that output vectors ``(N, F)``.
    """

    image: int
    layer: str
    channel: int
    y: int | None = None
    x: int | None = None


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
    """A probe-able layer: its name, type, mirror, output shape ``(C, H, W)`` or ``(F,)``, receptive field."""

    name: str
    kind: str
    mirror: str
    shape: tuple[int, ...]
    receptive_field: ReceptiveField | None


@dataclass(frozen=True)
class Step:
    """One layer of the forward chain with its mirror."""

    name: str
    layer: nn.Module
    mirror: nn.Module


@dataclass
class Trace:
    """What a forward walk keeps: per step the input shape and the mirror's memory; chosen outputs."""

    shapes: list[tuple[int, ...]]
    memory: list[tuple[Any, ...]]
    outputs: dict[int, torch.Tensor]


def build_mirror(model: nn.Module) -> Mirror:
    """The deconvnet of ``model``: one mirror module per layer, sharing the model's own weights.

    ``model`` is left exactly as it was. Raises ``UnsupportedModuleError`` (a ``TypeError``) naming
    a layer with no registered mirror, ``UnsupportedGraphError`` where the forward pass branches.
    """
    steps = []
    for name, layer in walk(model):
        factory = find_mirror_factory(layer)
        kind = type(layer).__qualname__
        if factory is None:
            raise UnsupportedModuleError(
                f"layer {name!r} is a {type(layer).__module__}.{kind}, which has no mirror; register one with "
                f"@deconv.register_mirror({kind}) on a function ({kind}) -> nn.Module"
            )
        try:
            mirror = factory(layer)
        except UnsupportedModuleError as error:
            raise UnsupportedModuleError(f"layer {name!r}: {error}") from None
        steps.append(Step(name, layer, mirror))
    if not steps:
        raise UnsupportedModuleError(f"{type(model).__name__} has no layers to mirror")
    return Mirror(model, steps)


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Runs the block with ``model`` in eval mode and no autograd, then restores every module's flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, flag in flags:
            m.training = flag


def first_non_finite(x: torch.Tensor) -> int | None:
    """The first image of ``x`` ``(N, ...)`` holding NaN or inf, or ``None``: one cheap sum, then a closer look."""
    if bool(torch.isfinite(x.sum())):
        return None
    bad = (~torch.isfinite(x).flatten(1).all(1)).nonzero()
    return int(bad[0]) if len(bad) else None  # a finite sum that overflowed


def _pools_like(layer: nn.Module, mirror: nn.Module) -> bool:
    """Whether ``mirror`` (an :class:`Unpool2d`) pools exactly as ``layer``, a plain ``nn.MaxPool2d``, does."""
    if type(layer) is not nn.MaxPool2d or layer.return_indices or not isinstance(mirror, Unpool2d):
        return False
    g = mirror.geometry
    return g is not None and mirror.ceil_mode == layer.ceil_mode and g == Geometry(
        pair(layer.kernel_size), pair(layer.stride or layer.kernel_size), pair(layer.padding), pair(layer.dilation)
    )


class Mirror(nn.Module):
    """A deconvnet attached to a CNN. Build it with :func:`build_mirror`.

    ``stack`` holds the mirror modules top (last layer) first, as the signal goes down.
    """

    def __init__(self, model: nn.Module, steps: Sequence[Step]) -> None:
        super().__init__()
        self.steps = tuple(steps)
        self.stack = nn.ModuleList(step.mirror for step in reversed(self.steps))
        object.__setattr__(self, "model", model)  # not a submodule: the mirror owns no state of its own
        self._index = {step.name: i for i, step in enumerate(self.steps)}
        self._shapes: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        self._image_shape: tuple[int, ...] | None = None

    # ---------------------------------------------------------------- layers
    @property
    def layer_names(self) -> list[str]:
        """Probe-able layers, the model's own module names in forward order (e.g. ``"features.29"``)."""
        return [step.name for step in self.steps]

    def index(self, layer: str) -> int:
        """Position of ``layer`` in the forward chain."""
        if layer not in self._index:
            raise SelectionError(f"unknown layer {layer!r}; valid layers: {', '.join(self.layer_names)}")
        return self._index[layer]

    def __repr__(self) -> str:
        lines = [f"  ({step.name}) {type(step.layer).__name__} -> {step.mirror!r}" for step in reversed(self.steps)]
        return "Mirror(\n" + "\n".join(lines) + "\n)"

    # ---------------------------------------------------------------- forward
    def check_images(self, images: torch.Tensor) -> torch.Tensor:
        """Validated images ``(N, C, H, W)`` on the model's device and in its dtype."""
        if not isinstance(images, torch.Tensor):
            raise InputError(f"images must be a float tensor (N, C, H, W), got {type(images).__name__}")
        if images.dim() != 4:
            hint = " (add a batch dimension with images[None])" if images.dim() == 3 else ""
            raise InputError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}{hint}")
        if not images.is_floating_point():
            raise InputError(f"images must be a floating-point tensor, got {images.dtype}")
        for step in self.steps:
            if isinstance(step.mirror, TransposedFilter):
                channels = step.mirror.weight.shape[1] * step.mirror.groups
                if images.shape[1] != channels:
                    raise InputError(
                        f"images have {images.shape[1]} channels but layer {step.name!r} "
                        f"({type(step.layer).__name__}) takes {channels}"
                    )
                break
        bad = first_non_finite(images)
        if bad is not None:
            raise NonFiniteError(f"images contain NaN or inf (image {bad})")
        parameter = next(self.model.parameters(), None)
        if parameter is not None:
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
    ) -> Trace:
        """Forward walk over checked ``images`` up to step ``until`` (default: the last).

        Keeps the outputs of steps ``keep`` and, with ``remember``, each mirror's memory (its
        ``remember_compact`` form where it has one: max pools keep 1-byte taps, not 8-byte switches).
        With ``check``, raises ``NonFiniteError`` naming the layer and image where a kept output is
        not finite (a caller that reduces the outputs anyway can check the reductions instead).
        """
        keep = set(keep)
        until = len(self.steps) - 1 if until is None else until
        shapes, memory, outputs = [], [], {}
        x = images
        with evaluating(self.model):
            for i, step in enumerate(self.steps[: until + 1]):
                shapes.append(tuple(x.shape[1:]))
                compact = getattr(step.mirror, "remember_compact", None) if remember else None
                if compact is not None and _pools_like(step.layer, step.mirror):
                    y, kept = compact(x)  # the pool and its switches in one go: y is the layer's output
                    memory.append(kept)
                else:
                    # an in-place layer would overwrite x: copy x unless x is a fresh output nothing else holds
                    spare = (
                        i > 0
                        and i - 1 not in keep
                        and isinstance(self.steps[i - 1].mirror, (TransposedFilter, Unpool2d, ChannelScale))
                        and (not remember or isinstance(step.mirror, Rectify))
                    )
                    y = step.layer(x.clone() if getattr(step.layer, "inplace", False) and not spare else x)
                    if compact is not None:
                        memory.append(compact(x, y)[1])
                    elif remember:
                        recall = getattr(step.mirror, "remember", None)
                        memory.append(recall(x, y) if recall else ())
                if i in keep:
                    bad = first_non_finite(y) if check else None
                    if bad is not None:
                        raise NonFiniteError(
                            f"layer {step.name!r} has NaN or inf activations for image {bad}"
                        )
                    outputs[i] = y
                x = y
        return Trace(shapes, memory, outputs)

    def shapes(self, image_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Output shape of every step for images of ``image_shape`` ``(C, H, W)`` (one dry run, cached)."""
        image_shape = tuple(image_shape)
        if image_shape not in self._shapes:
            parameter = next(self.model.parameters(), None)
            kw = {} if parameter is None else {"device": parameter.device, "dtype": parameter.dtype}
            trace = self.run(torch.zeros(1, *image_shape, **kw), keep=range(len(self.steps)), remember=False)
            self._shapes[image_shape] = [tuple(trace.outputs[i].shape[1:]) for i in range(len(self.steps))]
        return self._shapes[image_shape]

    def _image_shape_or(self, image_shape: tuple[int, ...] | None) -> tuple[int, ...]:
        shape = image_shape or self._image_shape
        if shape is None:
            raise InputError("pass image_shape=(C, H, W): this mirror has not seen any images yet")
        return tuple(shape)

    # ---------------------------------------------------------------- geometry
    def _field(self, top: int, origin: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]] | None:
        """The pixel window that a window at the output of step ``top`` reads; ``None`` if it is the whole image."""
        for step in reversed(self.steps[: top + 1]):
            geometry = getattr(step.mirror, "geometry", None)
            if geometry is None:
                return None
            origin, size = descend(geometry, origin, size)
        return origin, size

    def describe(self, image_shape: tuple[int, ...] | None = None) -> list[LayerInfo]:
        """Every probe-able layer with its output shape and receptive field in pixels."""
        shapes = self.shapes(self._image_shape_or(image_shape))
        infos = []
        for i, step in enumerate(self.steps):
            field = None
            if len(shapes[i]) == 3:
                one = self._field(i, torch.zeros(1, 2, dtype=torch.long), (1, 1))
                two = self._field(i, torch.ones(1, 2, dtype=torch.long), (1, 1))
                if one is not None:
                    offset = tuple(int(v) for v in one[0][0])
                    stride = tuple(int(b - a) for a, b in zip(one[0][0], two[0][0]))
                    field = ReceptiveField(one[1], stride, offset)
            infos.append(LayerInfo(step.name, type(step.layer).__name__, type(step.mirror).__name__, shapes[i], field))
        return infos

    def receptive_field(self, layer: str, y: int, x: int, image_shape: tuple[int, ...] | None = None) -> Box:
        """Pixel box of activation ``(y, x)`` of ``layer`` (the whole image for layers past a global one)."""
        top = self.index(layer)
        self._check(Selection(0, layer, 0, y, x), self.shapes(self._image_shape_or(image_shape))[top], 1)
        origin, (h, w) = self.receptive_fields(layer, torch.tensor([[y, x]]), image_shape)
        t, l = origin[0].tolist()
        return Box(t, l, t + h, l + w)

    def receptive_fields(
        self, layer: str, positions: torch.Tensor, image_shape: tuple[int, ...] | None = None
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Pixel boxes of many activations of ``layer`` at ``positions`` ``(K, 2)`` (y, x): their
        top-left corners ``(K, 2)`` and their shared size ``(h, w)``; the whole image past a global layer."""
        field = self._field(self.index(layer), positions, (1, 1))
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
    ) -> torch.Tensor:
        """Projects one activation per image to pixel space: ``(N, C, H, W) -> (N, C, H, W)``.

        ``position``: ``None`` for the image's strongest activation in ``channel``, ``(y, x)`` for
        one, ``"map"`` for the whole feature map. ``target_class`` projects from the model's output
        (all other outputs zeroed) instead of ``layer``/``channel``.
        """
        if target_class is not None:
            if layer is not None or channel is not None or position is not None:
                raise SelectionError("target_class projects from the class output; do not also pass layer, channel or position")
            layer, channel = self.steps[-1].name, target_class
        elif layer is None or channel is None:
            raise SelectionError("pass layer= and channel= (or target_class=)")
        images = self.check_images(images)
        top = self.index(layer)
        shape = self.shapes(images.shape[1:])[top]
        n = images.shape[0]
        if position == "map":
            self._check(Selection(0, layer, channel), shape, n, need_position=False)
            if len(shape) != 3:
                raise SelectionError(f"layer {layer!r} outputs vectors {shape}; it has no feature maps to project whole")
            trace = self.run(images, keep=[top], until=top)
            signal = torch.zeros_like(trace.outputs[top])
            signal[:, channel] = trace.outputs[top][:, channel]
            return self._reverse(trace, top, torch.arange(n, device=images.device), signal, None, crop=False)
        if position is not None and len(shape) == 3:
            y, x = position
            selections = [Selection(i, layer, channel, y, x) for i in range(n)]
        elif position is not None:
            raise SelectionError(f"layer {layer!r} outputs vectors {shape}; it has no positions (leave position=None)")
        else:
            self._check(Selection(0, layer, channel), shape, n, need_position=False)
            trace = self.run(images, keep=[top], until=top, remember=False)
            out = trace.outputs[top][:, channel]
            if out.dim() == 3:
                flat = out.flatten(1).argmax(1)
                selections = [Selection(i, layer, channel, int(f) // out.shape[2], int(f) % out.shape[2]) for i, f in enumerate(flat)]
            else:
                selections = [Selection(i, layer, channel) for i in range(n)]
        return self.project_many(images, selections)

    def project_many(
        self, images: torch.Tensor, selections: Sequence[Selection | tuple], memory_budget: int = DEFAULT_MEMORY_BUDGET
    ) -> torch.Tensor:
        """Projects K selections ``(image_index, layer, channel, y, x)`` sharing forward passes: ``(K, C, H, W)``."""
        images = self.check_images(images)
        out = images.new_zeros(len(selections), *images.shape[1:])
        for where, projections in self.projections(images, selections, memory_budget=memory_budget):
            out[where] = projections
        return out

    def projections(
        self,
        images: torch.Tensor,
        selections: Sequence[Selection | tuple],
        crop: bool = False,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Projects selections chunk by chunk in bounded memory, yielding ``(where, projections)``.

        ``where`` ``(k,)`` indexes ``selections``; ``projections`` is ``(k, C, H, W)``, or with ``crop``
        each projection's receptive-field box ``(k, C, h, w)`` (zero where the box leaves the image;
        the whole image for layers past a global one). Each reverse pass only computes the cone of
        positions its activation can reach. Chunks hold at most ``memory_budget`` bytes of work.
        """
        images = self.check_images(images)
        shapes = self.shapes(images.shape[1:])
        parsed = [Selection(*s) for s in selections]
        tops = [self.index(s.layer) for s in parsed]
        for s, top in zip(parsed, tops):
            self._check(s, shapes[top], images.shape[0])
        if not parsed:
            return
        device = images.device
        item = images.element_size()
        # by image, then layer: chunks share forward passes
        order = sorted(range(len(parsed)), key=lambda k: (parsed[k].image, tops[k]))
        per_image = self._trace_bytes(images.shape[1:], max(tops), item, sorted(set(tops)))
        largest = max(int(torch.Size(s).numel()) for s in [tuple(images.shape[1:]), *shapes[: max(tops) + 1]]) * item
        images_per_chunk = max(1, min(memory_budget // 2 // per_image, WORK_TENSOR_BYTES // largest))
        start = 0
        while start < len(order):
            # the selections of the next `images_per_chunk` distinct images
            chunk_images: list[int] = []
            end = start
            while end < len(order) and (
                parsed[order[end]].image in chunk_images[-1:] or len(chunk_images) < images_per_chunk
            ):
                if parsed[order[end]].image not in chunk_images[-1:]:
                    chunk_images.append(parsed[order[end]].image)
                end += 1
            chunk = order[start:end]
            start = end
            local = {image: i for i, image in enumerate(chunk_images)}
            layers = sorted({tops[k] for k in chunk})
            trace = self.run(images[chunk_images], keep=layers, until=layers[-1])
            spare = max(memory_budget // 2, memory_budget - per_image * len(chunk_images))
            for top in layers:
                # neighbours in a part share most of their windows: sort by position
                mine = sorted((k for k in chunk if tops[k] == top), key=lambda k: (parsed[k].y or 0, parsed[k].x or 0))
                size, largest = self._selection_bytes(top, shapes, images.shape[1:], item, crop)
                step = max(1, min(spare // size, WORK_TENSOR_BYTES // largest))
                out = trace.outputs[top]
                for i in range(0, len(mine), step):
                    part = mine[i : i + step]
                    image = torch.tensor([local[parsed[k].image] for k in part], device=device)
                    channel = torch.tensor([parsed[k].channel for k in part], device=device)
                    batch = torch.arange(len(part), device=device)
                    if out.dim() == 4:
                        y = torch.tensor([parsed[k].y for k in part], device=device)
                        x = torch.tensor([parsed[k].x for k in part], device=device)
                        signal = out.new_zeros(len(part), out.shape[1], 1, 1)
                        signal[batch, channel, 0, 0] = out[image, channel, y, x]
                        origin = torch.stack([y, x], 1)
                    else:
                        signal = out.new_zeros(len(part), *out.shape[1:])
                        signal[batch, channel] = out[image, channel]
                        origin = None
                    yield torch.tensor(part, device=device), self._reverse(trace, top, image, signal, origin, crop)
                del out
            del trace

    def _check(self, s: Selection, shape: tuple[int, ...], n: int, need_position: bool = True) -> None:
        """Raises ``SelectionError`` for an image, channel or position out of range."""
        if not 0 <= s.image < n:
            raise SelectionError(f"image index {s.image} is out of range for {n} images (valid: 0..{n - 1})")
        if not 0 <= s.channel < shape[0]:
            raise SelectionError(
                f"channel {s.channel} is out of range for layer {s.layer!r} with {shape[0]} channels (valid: 0..{shape[0] - 1})"
            )
        given = s.y is not None or s.x is not None
        if len(shape) == 1 and given:
            raise SelectionError(f"layer {s.layer!r} outputs vectors {shape}; it has no positions (leave them None)")
        if len(shape) == 3 and (given or need_position) and not (
            s.y is not None and s.x is not None and 0 <= s.y < shape[1] and 0 <= s.x < shape[2]
        ):
            raise SelectionError(
                f"position ({s.y}, {s.x}) is out of range for layer {s.layer!r} whose maps are "
                f"{shape[1]}x{shape[2]} (valid: y in 0..{shape[1] - 1}, x in 0..{shape[2] - 1})"
            )

    @torch.no_grad()  # a projection is not differentiated: keep no graph (and no saved windows)
    def _reverse(
        self,
        trace: Trace,
        top: int,
        image: torch.Tensor,
        signal: torch.Tensor,
        origin: torch.Tensor | None,
        crop: bool,
    ) -> torch.Tensor:
        """Runs the stack from the output of step ``top`` down to pixels.

        ``signal`` is ``(K, C, h, w)`` windows at ``origin`` ``(K, 2)``, or full outputs with ``origin=None``;
        ``image`` ``(K,)`` says which traced image each belongs to.

        Windows only hold the cone of positions the selection reaches, cut to the map: at every step
        a window of one shared size that lies inside its map and holds each selection's cone there.
        Each mirror maps its window to the whole input window its geometry reads; the part of that
        outside the map (or the cone) is cut away, so no position outside a map is ever computed
        on and nothing needs masking. Signals run channels-last, which the transposed convolutions
        are fastest on.
        """
        image_shape = trace.shapes[0]
        above = self.shapes(image_shape)[top]
        start = None
        if origin is not None:
            size = (signal.shape[2], signal.shape[3])
            start = (origin, size)
            cone, cone_size = origin, size
            signal = signal.contiguous(memory_format=torch.channels_last)
        rectified = False  # whether step i's rectification was already applied (before an unpooling)
        for i in range(top, -1, -1):
            mirror, memory, below = self.steps[i].mirror, trace.memory[i], trace.shapes[i]
            if type(mirror) is Rectify:  # pointwise: windows stay; in place on our own signal
                if not rectified:
                    signal = torch.relu(signal) if i == top else signal.relu_()
                rectified = False
                above = below
                continue
            if 0 < i < top and type(self.steps[i - 1].mirror) is Rectify and isinstance(mirror, Unpool2d) and mirror.disjoint:
                signal, rectified = signal.relu_(), True  # max(0, .) commutes with placing values apart
            if origin is not None:
                step = self._window_below(i, origin, size, below)
                if step is None:  # a global layer: from here on whole maps
                    signal = place(signal, origin, tuple(above[-2:]))
                    origin = None
            if origin is None:
                signal = mirror(signal, *(_select(m, image) for m in memory))
                above = below
                continue
            read, read_size = step
            cone, cone_size = descend(mirror.geometry, cone, cone_size)
            memory = tuple(
                window(m, image, origin, size, channels_last=True) if _is_map(m) else _select(m, image) for m in memory
            )
            signal = mirror(signal, *mirror.restrict(memory, read, read_size))
            origin, size = clip(cone, cone_size, read, read_size, tuple(below[-2:]))
            signal = shift(signal, origin - read, size)
            above = below
        if origin is None:
            if not crop or start is None or (field := self._field(top, *start)) is None:
                return signal
            return shift(signal, field[0], field[1]).contiguous()
        if crop:  # the receptive-field box: the whole cone, zero where it leaves the image
            return shift(signal, cone - origin, cone_size).contiguous()
        return place(signal, origin, tuple(image_shape[-2:]))

    def _window_below(
        self, i: int, origin: torch.Tensor, size: tuple[int, int], input_size: tuple[int, ...]
    ) -> tuple[torch.Tensor, tuple[int, int]] | None:
        """The input window step ``i`` reads for an output window (it may reach outside the input map),
        or ``None`` for a global step (no geometry) or an input that is not a map."""
        geometry: Geometry | None = getattr(self.steps[i].mirror, "geometry", None)
        if geometry is None or len(input_size) != 3:
            return None
        return descend(geometry, origin, size)

    # ---------------------------------------------------------------- memory estimates
    def _trace_bytes(
        self, image_shape: tuple[int, ...], until: int, item: int, keep: Sequence[int] = ()
    ) -> int:
        """Rough peak bytes one image costs in a forward walk with memory: the largest step's input,
        output and copy, the kept outputs and the mirrors' memory (pools: 1-byte taps, and their
        8-byte switches while they are made)."""
        shapes = self.shapes(image_shape)
        numels = [int(torch.Size(s).numel()) for s in shapes[: until + 1]]
        ins = [int(torch.Size(image_shape).numel())] + numels[:-1]
        peak = max(3 * max(a, b) * item + (24 * b if isinstance(self.steps[i].mirror, Unpool2d) else 0)
                   for i, (a, b) in enumerate(zip(ins, numels)))
        pools = sum(n for n, step in zip(numels, self.steps) if isinstance(step.mirror, Unpool2d))
        kept = sum(numels[i] for i in keep if i <= until)
        return peak + pools + kept * item or 1

    def _selection_bytes(
        self, top: int, shapes: list[tuple[int, ...]], image_shape: tuple[int, ...], item: int, crop: bool = True
    ) -> tuple[int, int]:
        """Rough peak bytes one selection's reverse pass costs (its largest step, with the window it
        reads, the window it writes and the copies made on the way; its cone cut to the maps; its
        output) and the bytes of the largest tensor it writes."""
        origin = torch.tensor([[shapes[top][-2] // 2, shapes[top][-1] // 2]]) if len(shapes[top]) == 3 else None
        size: tuple[int, int] = (1, 1)
        worst = largest = 0
        reading = int(torch.Size(shapes[top]).numel()) if origin is None else shapes[top][0]
        for i in range(top, -1, -1):
            below = shapes[i - 1] if i else tuple(image_shape)
            window = None if origin is None else self._window_below(i, origin, size, below)
            if window is None:
                origin = None
                writing = int(torch.Size(below).numel())
            else:
                origin, size = window
                size = (min(size[0], below[-2]), min(size[1], below[-1]))
                writing = below[0] * size[0] * size[1]
            worst = max(worst, (reading + 4 * writing) * item)
            largest = max(largest, writing * item)
            reading = writing
        if not crop:  # the projection in a whole image, and the window it is placed from
            output = int(torch.Size(image_shape).numel()) * item
            worst, largest = max(worst, 2 * output + reading * item), max(largest, output)
        return worst or 1, largest or 1


def _is_map(memory: Any) -> bool:
    """Whether a memory entry is per-image maps ``(N, C, H, W)`` to cut windows from."""
    return isinstance(memory, torch.Tensor) and memory.dim() == 4


def _select(memory: Any, image: torch.Tensor) -> Any:
    """A memory entry for the traced images ``image``: per-image tensors are picked, the rest kept."""
    return memory.index_select(0, image) if isinstance(memory, torch.Tensor) else memory
