"""The forward graph of a CNN, each node with its mirrors, and the forward trace that projections go down.

A :class:`Graph` is the model's ``torch.fx`` graph with every node that carries the signal (every
tensor computed from the images) turned into a :class:`Node` with its mirror module per rule.
Nodes are numbered in forward (topological) order; the other fx nodes (shape queries, sizes,
parameters) are only computed. :meth:`Graph.run` walks the graph over images and keeps what the
mirrors need to go back: a :class:`Trace`.
"""

from __future__ import annotations

import contextlib
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Container, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..errors import InputError, NonFiniteError, one_line
from ..layers.base import Shared

__all__ = [
    "IMAGES",
    "Computed",
    "Node",
    "Graph",
    "Trace",
    "attribute",
    "call",
    "channels_last",
    "evaluating",
    "first_non_finite",
    "model_runs_on",
]

IMAGES = -1
"""The index that stands for the images in :attr:`Node.inputs`."""

# in-place calls run out of place: the walk keeps its inputs (switches, kept outputs, other users)
_OUT_OF_PLACE = {
    operator.iadd: operator.add,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
    torch.relu_: torch.relu,
    F.relu_: F.relu,
    "relu_": "relu",
    "add_": "add",
    "mul_": "mul",
    "div_": "div",
}


@dataclass(eq=False)
class Node:
    """One operation of the forward pass that carries the signal, with its mirror per rule.

    ``name`` is its probe name (the module's name, ``name:1`` for a module's second call, the fx
    name of a function); ``aliases`` the containers whose output it is (``layer3.1``). ``layer``
    is the module it calls or stands for (``nn.ReLU()`` for ``F.relu``), ``None`` for other
    functions. ``inputs`` are the nodes (or :data:`IMAGES`) of its tensor inputs, in order, and
    ``sources`` their fx nodes. ``builtin``: torch's own operation, which takes any memory layout.
    ``mirror`` is its mirror under the default rule; ``make`` builds the one under a rule by name, which
    :meth:`mirror_for` does once per rule, keeping the mirrors built so far in ``mirrors``.
    """

    name: str
    aliases: list[str]
    layer: nn.Module | None
    mirror: nn.Module
    inputs: tuple[int, ...]
    builtin: bool
    fx_node: fx.Node = field(repr=False)
    sources: tuple[fx.Node, ...] = field(repr=False, default=())
    make: Callable[[str], nn.Module] | None = field(repr=False, default=None)
    mirrors: dict[str, nn.Module] = field(repr=False, default_factory=dict)

    def mirror_for(self, rule: str) -> nn.Module:
        """The mirror under the rule named ``rule``, built on first use."""
        mirror = self.mirrors.get(rule)
        if mirror is None:
            if self.make is None:
                raise KeyError(f"layer {self.name!r} has no mirror under rule {rule!r}")
            mirror = self.mirrors[rule] = self.make(rule)
        return mirror


@dataclass
class Trace:
    """What a forward walk keeps, per node: its input shapes and output shape (batch left out), the
    mirrors' memory per rule; and the outputs of the nodes asked for."""

    inputs: list[tuple[tuple[int, ...], ...]]
    shapes: list[tuple[int, ...]]
    memory: list[dict[str, tuple[Any, ...]]]
    outputs: dict[int, torch.Tensor]
    images: int


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


@contextlib.contextmanager
def model_runs_on(what: str) -> Iterator[None]:
    """Turns errors from running the model on ``what`` (``"dataset images 0..7 of shape (1, 3, 3)"``;
    torch's own, or a layer's failure the walk named) into one :class:`InputError` naming it."""
    try:
        yield
    except NonFiniteError:
        raise
    except (RuntimeError, InputError) as error:
        reason = one_line(error, 200)
        raise InputError(f"the model fails on {what}: {type(error).__name__}: {reason}") from None


def first_non_finite(x: torch.Tensor) -> int | None:
    """The first image of ``x`` ``(N, ...)`` holding NaN or inf, or ``None``: one cheap sum, then a closer look."""
    if bool(torch.isfinite(x.sum())):
        return None
    bad = (~torch.isfinite(x).flatten(1).all(1)).nonzero()
    return int(bad[0]) if len(bad) else None  # a finite sum that overflowed


def attribute(model: nn.Module, target: str) -> Any:
    """What an fx ``get_attr`` node reads: the model's parameter, buffer or constant at dotted ``target``."""
    value: Any = model
    for part in target.split("."):
        value = getattr(value, part)
    return value


def call(model: nn.Module, fx_node: fx.Node, args: Any, kwargs: Any) -> Any:
    """What one fx node of ``model``'s graph computes on the values ``args``, ``kwargs`` of its arguments; in-place
    functions run out of place."""
    target = _OUT_OF_PLACE.get(fx_node.target, fx_node.target) if fx_node.op != "call_module" else fx_node.target
    if fx_node.op == "call_module":
        return model.get_submodule(target)(*args, **kwargs)
    if fx_node.op == "get_attr":
        return attribute(model, str(target))
    if kwargs.get("inplace"):
        kwargs = {**kwargs, "inplace": False}
    if fx_node.op == "call_method":
        return getattr(args[0], target)(*args[1:], **kwargs)
    return target(*args, **kwargs)


@dataclass(frozen=True, eq=False)
class Computed:
    """A tensor of the forward pass computed from ``model``'s parameters, buffers and constants alone (the filters of
    a weight-standardised convolution): ``computed()`` evaluates its fx ``node`` from their current values at every
    call, so it never holds a stale copy. ``steps``: the node and what it is computed from, in graph order."""

    model: nn.Module
    node: fx.Node
    steps: tuple[fx.Node, ...]

    @classmethod
    def of(cls, model: nn.Module, node: fx.Node, signal: Container[fx.Node] = ()) -> Computed | None:
        """``node`` as a :class:`Computed` if it is a tensor computed by functions and tensor methods from no input
        of the forward pass (nor from any of the nodes ``signal``), else ``None``."""
        if node.op == "call_module":
            return None
        found, todo = {node}, [node]
        while todo:
            for n in todo.pop().all_input_nodes:
                if n.op in ("placeholder", "call_module") or n in signal:  # a module may keep state or have a mode
                    return None
                if n not in found:
                    found.add(n)
                    todo.append(n)
        order = {n: i for i, n in enumerate(node.graph.nodes)}
        computed = cls(model, node, tuple(sorted(found, key=order.__getitem__)))
        with torch.no_grad():
            return computed if isinstance(computed(), torch.Tensor) else None

    def __call__(self) -> Any:
        values: dict[fx.Node, Any] = {}
        for n in self.steps:
            args, kwargs = fx.node.map_arg((n.args, n.kwargs), values.__getitem__)
            values[n] = call(self.model, n, args, kwargs)
        return values[self.node]

    def __repr__(self) -> str:
        return self.node.name


def channels_last(images: torch.Tensor) -> torch.Tensor:
    """``images`` ``(N, C, H, W)`` laid out channels-last, also for ``C = 1`` (whose contiguous strides
    would pass for both layouts and keep torch's kernels in the default one)."""
    n, c, h, w = images.shape
    return torch.empty_strided(images.shape, (c * h * w, 1, w * c, c), dtype=images.dtype, device=images.device).copy_(
        images
    )


class Graph:
    """The model's forward graph: ``nodes`` in forward order, and the fx graph they came from."""

    def __init__(self, model: nn.Module, graph: fx.Graph, nodes: list[Node]) -> None:
        self.model = model
        self.fx_graph = graph
        self.nodes = nodes
        self._index = {n.fx_node: i for i, n in enumerate(nodes)}
        order = {n: i for i, n in enumerate(graph.nodes)}
        # the fx position after which each fx node's value is no longer read
        self._last_use = {n: max((order[u] for u in n.users), default=order[n]) for n in graph.nodes}
        for node in nodes:  # a piece of a chunk reads the chunked tensor itself (its remember does)
            for source in node.sources:
                self._last_use[source] = max(self._last_use[source], order[node.fx_node])
        self.output = self._index[next(n for n in graph.nodes if n.op == "output").args[0]]
        """The node whose output is the model's."""

    def run(
        self,
        images: torch.Tensor,
        keep: Iterable[int] = (),
        until: int | None = None,
        rules: Iterable[str] = (),
        check: bool = True,
    ) -> Trace:
        """Forward walk over checked ``images`` up to node ``until`` (default: the output).

        Keeps the outputs of nodes ``keep`` and the memory of each node's mirror for ``rules`` (names; none:
        a walk only for activations). With ``check``, raises ``NonFiniteError`` naming the
        layer and image where a kept output is not finite. A layer that fails on the images (too
        small for a kernel, say) raises ``InputError`` naming it and the shape it got.
        """
        keep = set(keep)
        run = _Run(
            self, keep, {self.nodes[i].fx_node for i in keep}, tuple(rules), check, _trace(len(self.nodes), images)
        )
        until = self.output if until is None else until
        with evaluating(self.model):
            for position, fx_node in enumerate(self.fx_graph.nodes):
                if fx_node.op == "output":
                    break
                if fx_node.op == "placeholder":
                    run.env[fx_node] = images if not run.env else None  # extra inputs (defaults) stay None
                    continue
                i = self._index.get(fx_node)
                if i is None:
                    run.env[fx_node] = call(self.model, fx_node, *run.arguments(fx_node))
                else:
                    run.node(i, position)
                    if i >= until:
                        break
                run.free(fx_node, i, position)
        return run.trace


def _trace(n: int, images: torch.Tensor) -> Trace:
    """An empty trace of ``n`` nodes over ``images``."""
    return Trace([()] * n, [()] * n, [{} for _ in range(n)], {}, images.shape[0])


@dataclass
class _Run:
    """One forward walk down ``graph``: it keeps the outputs of nodes ``keep`` (fx nodes ``kept``) and the
    mirrors' memory for ``rules``, checking kept outputs with ``check``, into ``trace``; ``env`` holds the
    values of fx nodes still to be read."""

    graph: Graph
    keep: set[int]
    kept: set[fx.Node]
    rules: tuple[str, ...]
    check: bool
    trace: Trace
    env: dict[fx.Node, Any] = field(default_factory=dict)

    def arguments(self, fx_node: fx.Node) -> tuple[Any, Any]:
        """``fx_node``'s args and kwargs, with the values computed so far."""
        return fx.node.map_arg(fx_node.args, self.env.__getitem__), fx.node.map_arg(
            fx_node.kwargs, self.env.__getitem__
        )

    def node(self, i: int, position: int) -> None:
        """Runs node ``i`` (at fx ``position``), recording its shapes, its mirrors' memory and a kept output."""
        node = self.graph.nodes[i]
        tensors = [self.env[a] for a in node.sources]
        self.env[node.fx_node] = y = self._step(i, position, tensors)
        trace = self.trace
        trace.inputs[i] = tuple(tuple(t.shape[1:]) for t in tensors)
        trace.shapes[i] = tuple(y.shape[1:])
        if i in self.keep:
            bad = first_non_finite(y) if self.check else None
            if bad is not None:
                raise NonFiniteError(f"layer {node.name!r} has NaN or inf activations for image {bad}")
            trace.outputs[i] = y

    def free(self, fx_node: fx.Node, i: int | None, position: int) -> None:
        """Drops what nothing after ``position`` reads (a chunk's pieces read the chunked tensor)."""
        last_use = self.graph._last_use
        read = fx_node.all_input_nodes + (list(self.graph.nodes[i].sources) if i is not None else [])
        for used in read:
            if last_use[used] <= position and used not in self.kept:
                self.env.pop(used, None)

    def _step(self, i: int, position: int, tensors: list[torch.Tensor]) -> torch.Tensor:
        """Runs signal node ``i`` on its input ``tensors`` and records its mirrors' memory."""
        node = self.graph.nodes[i]
        mirrors = {rule: node.mirror_for(rule) for rule in self.rules}
        computing = next((m for m in mirrors.values() if m.computes_forward), None)
        try:
            if computing is not None:
                y, remembered = computing.remember_forward(tensors[0])
            else:
                reads = any(m.reads_inputs for m in mirrors.values())
                y, remembered = self._forward(node, position, reads), None
            if not isinstance(y, torch.Tensor):
                raise InputError(f"layer {node.name!r} returned a {type(y).__name__}, not a tensor")
            done: dict[int, tuple[Any, ...]] = {}
            memory = self.trace.memory[i]
            for rule, mirror in mirrors.items():
                if id(mirror) not in done:
                    kept = remembered if mirror is computing else tuple(mirror.remember(*tensors, y))
                    done[id(mirror)] = (*kept, *(Shared(self.env[c.node]) for c in mirror.constants))
                memory[rule] = done[id(mirror)]
        except InputError as error:  # from a mirror's remember: a batch-mixing reshape, say
            raise InputError(f"layer {node.name!r}: {error}") from None
        except RuntimeError as error:
            shapes = ", ".join(str(tuple(t.shape)) for t in tensors)
            reason = one_line(error, 200)
            raise InputError(f"layer {node.name!r} fails on its input of shape {shapes}: {reason}") from None
        return y

    def _forward(self, node: Node, position: int, reads: bool) -> Any:
        """What the node's fx node computes; the input of an in-place module is copied unless nothing reads it
        again (``reads``: its mirrors' ``remember`` does)."""
        fx_node = node.fx_node
        args, kwargs = self.arguments(fx_node)
        if getattr(node.layer, "inplace", False) and fx_node.op == "call_module":
            source = fx_node.all_input_nodes[0]
            later = self.graph._last_use[source] > position or source in self.kept or source.op == "placeholder"
            if reads or later:
                args = (args[0].clone(), *args[1:])
        return call(self.graph.model, fx_node, args, kwargs)
