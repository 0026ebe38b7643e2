"""Walks a model's forward pass into a :class:`~deconv.engine.graph.Graph` of mirrored nodes, traced with
``torch.fx``.

Containers (``nn.Sequential``, ResNet blocks, DenseNet blocks, Inception modules) are traced
through; registered modules and torch's own layers stay whole. Every operation on a tensor computed
from the images becomes a node with a mirror from the registry: the default rule's at once, another
rule's when a pass first uses it. Names:

- a module called once: its module name (``features.3``); called again: ``name:1``, ``name:2``, ...
- a container whose output is a node: an alias of that node (``layer3.1``, ``features.denseblock2``);
- a function with no module: its fx node name (``add_3``, ``cat``).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import operator
import os
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass, field, is_dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.proxy import TraceError

from ..engine.graph import IMAGES, Computed, Graph, Node, attribute
from ..errors import DeconvError, InputError, UnsupportedGraphError, UnsupportedModuleError, one_line
from .builtins import _FunctionalMaxPool
from .registry import SIGNAL, Call, changed_base, find_mirror_factory

__all__ = ["walk"]

_TORCH = os.path.dirname(torch.__file__)
_HERE = os.path.dirname(__file__)


def _pool(module_type: type[nn.Module]) -> Callable[..., nn.Module]:
    def make(*args: Any, return_indices: bool = False, **kwargs: Any) -> nn.Module:
        return module_type(*args, **kwargs)

    return make


# Functions that stand for one of torch's modules: their mirror is that module's (under every rule).
_STAND_INS: dict[Any, Callable[..., nn.Module]] = {
    **dict.fromkeys([F.relu, torch.relu, torch.relu_, F.relu_, "relu", "relu_"], lambda *a, **k: nn.ReLU()),
    **dict.fromkeys([F.max_pool2d, torch.max_pool2d], _pool(_FunctionalMaxPool)),
    **dict.fromkeys([F.adaptive_max_pool2d], _pool(nn.AdaptiveMaxPool2d)),
    **dict.fromkeys([F.avg_pool2d, torch._C._nn.avg_pool2d], nn.AvgPool2d),
    **dict.fromkeys([F.adaptive_avg_pool2d, torch._C._nn.adaptive_avg_pool2d], nn.AdaptiveAvgPool2d),
}
_PIECES = {torch.chunk, torch.split, torch.unbind, "chunk", "split", "unbind"}  # calls that return several tensors
_LAYOUT_BOUND = {torch.Tensor.view, "view"}  # need the default memory layout
_RESHAPES = {"view", "reshape", "expand", "expand_as", "unsqueeze", "squeeze", "flatten", torch.flatten, torch.reshape}
"""Calls that only reshape: a :class:`Call`'s ``producers`` are seen through them."""


def _is_shape_query(node: fx.Node) -> bool:
    """``x.size(0)``, ``x.shape[0]``, ``x.dim()``: reads a shape, is not a layer."""
    if node.op == "call_method" and node.target in ("size", "dim"):
        return True
    if node.op == "call_function" and node.target is getattr and node.args[1] in ("shape", "ndim", "dtype", "device"):
        return True
    return node.op == "call_function" and node.target is operator.getitem and _is_shape_query(node.args[0])


_UNKNOWN = object()
"""The value of an fx node the tracer could not compute on meta tensors."""


class _Proxy(fx.Proxy):
    """A proxy that gives its Python value (a length, an integer) where a forward pass asks for one, as the tracer
    does at a branch (:meth:`_Tracer.to_bool`): a value computed from the shapes of the images it traces for."""

    def __len__(self) -> int:
        return self.tracer.fixed(self, "takes the length of", len)

    def __index__(self) -> int:
        return self.tracer.fixed(self, "takes an integer from", operator.index)

    def __int__(self) -> int:
        return self.tracer.fixed(self, "takes an integer from", int)

    def __float__(self) -> float:
        return self.tracer.fixed(self, "takes a number from", float)

    def __ceil__(self) -> int:
        return self.tracer.fixed(self, "rounds", math.ceil)

    def __floor__(self) -> int:
        return self.tracer.fixed(self, "rounds", math.floor)

    def __trunc__(self) -> int:
        return self.tracer.fixed(self, "rounds", math.trunc)

    def __round__(self, digits: int | None = None) -> Any:
        return self.tracer.fixed(self, "rounds", lambda v: round(v, digits))


class _Tracer(fx.Tracer):
    """Keeps registered modules, leaves and torch's own layers whole; traces through containers and
    records which node each container returns.

    Given ``images`` (two meta tensors ``(1, C, H, W)`` and ``(2, C, H, W)``), it also computes each node's values
    for both on meta tensors, so that a forward pass may branch on (or round, or take the length of) a value computed
    from tensors' shapes, and so that such a value that is the same for both batches (it does not depend on the
    batch size) is a constant of the operation on tensors it is handed to (timm's "same" padding, ``F.pad(x,
    [pad_w // 2, ...])``). ``branches`` lists each such place (``module 'x' (type) at FILE:LINE``) with its value:
    the graph is the one for images of this shape. A branch on a tensor's values, or on the batch size, is
    refused."""

    def __init__(self, images: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.returned: dict[fx.Node, list[str]] = defaultdict(list)
        self._calls: Counter[str] = Counter()
        self._made: dict[fx.Node, int] = {}  # when each node was made
        self.failed_in: tuple[str, type] | None = None
        self.images = images
        self.values: dict[fx.Node, Any] = {}  # a pair: the node's values for each of the images
        self.branches: list[tuple[str, Any]] = []
        self._computing = False

    def create_args_for_root(self, root_fn: Callable[..., Any], is_module: bool, concrete_args: Any = None) -> Any:
        """The root's ``forward`` called with the images and an input for each other argument that has no default;
        the others keep their defaults (a Hugging Face model's ``labels=None``, ``return_dict``), also through
        ``functools.wraps`` decorators that take ``**kwargs``."""
        parameters = list(inspect.signature(inspect.unwrap(root_fn)).parameters.values())[1:]
        inputs = [
            self.create_proxy("placeholder", p.name, (), {})
            for i, p in enumerate(parameters)
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and (i == 0 or p.default is p.empty)
        ]
        return root_fn, [self.root, *inputs]

    def create_node(self, *args: Any, **kwargs: Any) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        self._made[node] = len(self._made)
        return node

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _Proxy(node, self)

    def create_proxy(self, kind: str, target: Any, args: Any, kwargs: Any, *rest: Any, **named: Any) -> fx.Proxy:
        if self.images is not None and kind in ("call_function", "call_method", "call_module"):
            args, kwargs = self._folded(args), self._folded(kwargs)
        proxy = super().create_proxy(kind, target, args, kwargs, *rest, **named)
        if self.images is not None:
            self.values[proxy.node] = self._value(kind, target, args, kwargs)
        return proxy

    def _folded(self, args: Any) -> Any:
        """``args`` of an operation on tensors with each value computed from shapes alone that is the same for both
        batches in its place (recorded as a branch); ``args`` as they are for an operation on shapes alone."""
        proxies: list[fx.Proxy] = []
        fx.node.map_aggregate(args, lambda a: proxies.append(a) if isinstance(a, fx.Proxy) else None)
        if all(_from_shapes(a.node) for a in proxies):
            return args

        def fold(a: Any) -> Any:
            if not isinstance(a, fx.Proxy) or not _from_shapes(a.node):
                return a
            one, two = self.values.get(a.node, (_UNKNOWN, _UNKNOWN))
            if one is _UNKNOWN or isinstance(one, torch.Tensor) or one != two:
                return a
            self.branches.append((self._where(), one))
            return one

        return fx.node.map_aggregate(args, fold)

    def _value(self, kind: str, target: Any, args: Any, kwargs: Any) -> Any:
        """What a node computes for each of the meta images (a pair): tensors on the meta device, shapes and numbers
        as they are; ``_UNKNOWN`` where an operation cannot run on meta tensors."""
        if kind == "placeholder":
            return self.images if not self.values else (args[0],) * 2 if args else _UNKNOWN  # a default
        try:
            return tuple(self._compute(kind, target, args, kwargs, i) for i in range(2))
        except Exception:  # an operation meta tensors do not support: a branch on this value cannot be followed
            return _UNKNOWN

    def _compute(self, kind: str, target: Any, args: Any, kwargs: Any, i: int) -> Any:
        """The value of a node for the ``i``-th meta images; raises where it cannot be computed."""

        def value_of(a: Any) -> Any:
            if isinstance(a, fx.Proxy):
                a = self.values.get(a.node, _UNKNOWN)
                if a is _UNKNOWN:
                    raise LookupError("an unknown value")
                a = a[i]
            return a.to("meta") if isinstance(a, torch.Tensor) else a

        args, kwargs = fx.node.map_aggregate(args, value_of), fx.node.map_aggregate(kwargs, value_of)
        self._computing = True  # modules called run as they are, parameters read are the modules' own
        try:
            with torch.no_grad():
                if kind == "get_attr":
                    return value_of(attribute(self.root, target))
                if kind == "call_module":
                    module = self.root.get_submodule(target)
                    state = {k: v.to("meta") for k, v in (*module.named_parameters(), *module.named_buffers())}
                    return torch.func.functional_call(module, state, tuple(args), dict(kwargs))
                if kind == "call_method":
                    return getattr(args[0], target)(*args[1:], **kwargs)
                return target(*args, **kwargs)
        finally:
            self._computing = False

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        return attr_val if self._computing else super().getattr(attr, attr_val, parameter_proxy_cache)

    def fixed(self, proxy: fx.Proxy, how: str, take: Callable[[Any], Any]) -> Any:
        """``take`` of the value of ``proxy`` for the traced images (``bool``, ``len``, ``int``), recorded as a branch
        of the trace; a one-line ``UnsupportedGraphError`` where it is not computed from shapes (a length of a
        tensor is), it depends on the batch size, or there are no images to trace for."""
        where = self._where()
        values = self.values.get(proxy.node, _UNKNOWN)
        if values is not _UNKNOWN and isinstance(values[0], torch.Tensor) and take is not len:
            raise UnsupportedGraphError(
                f"cannot trace {where}: it {how} a tensor's values; mirrors need a forward pass without "
                "data-dependent control flow"
            )
        if values is _UNKNOWN:
            if self.images is None and (take is len or _from_shapes(proxy.node)):
                raise UnsupportedGraphError(
                    f"cannot trace {where} without the images' shape: its control flow depends on a tensor's shape "
                    f"(it {how} it); pass "
                    "build_mirror(model, shape=(C, H, W)) with the shape of the images the mirror will see"
                )
            raise TraceError(f"the forward pass {how} a value torch.fx cannot compute")
        if take is not len and not _from_shapes(proxy.node):
            raise UnsupportedGraphError(
                f"cannot trace {where}: it {how} a value computed from more than tensors' shapes (a device, say); "
                "mirrors need a forward pass without data-dependent control flow"
            )
        taken, other = take(values[0]), take(values[1])
        if taken != other:
            raise UnsupportedGraphError(
                f"cannot trace {where}: it {how} the batch size; mirrors need a forward pass that computes each "
                "image on its own"
            )
        self.branches.append((where, taken))
        return taken

    def to_bool(self, obj: fx.Proxy) -> bool:
        return self.fixed(obj, "branches on", bool)

    def iter(self, obj: fx.Proxy) -> Iterator[Any]:
        return iter([obj[i] for i in range(self.fixed(obj, "iterates over", len))])

    def _where(self) -> str:
        """``module 'NAME' (TYPE) at FILE:LINE``: the module being traced and the line of its code that runs."""
        path, kind = next(reversed(self.module_stack.values()), ("", type(self.root)))
        module = f"module {path!r} ({_qualified(kind)})" if path else f"{type(self.root).__name__}.forward"
        return module + _outside(traceback.extract_stack())

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        """Registered modules and torch's own layers stay whole; every other module (containers, a user's or a
        library's layers, a subclass that computes otherwise than its registered class) is traced through, so
        that each operation it computes is mirrored or refused by name."""
        if find_mirror_factory(m) is not None:
            return True
        plain = isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict))
        return m.__module__.startswith("torch.nn") and not plain and changed_base(m) is None

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        if self._computing:
            return forward(*args, **kwargs)
        name = self.path_of_module(m)
        before = len(self._made)
        try:
            out = super().call_module(m, forward, args, kwargs)
        except Exception:
            self.failed_in = self.failed_in or (name, type(m))  # the innermost module whose forward failed
            raise
        # a container whose output it computed itself (an empty Sequential returns its input)
        if not self.is_leaf_module(m, name) and isinstance(out, fx.Proxy) and self._made.get(out.node, -1) >= before:
            calls = self._calls[name]
            self._calls[name] += 1
            self.returned[out.node].append(name if not calls else f"{name}:{calls}")
        return out


def _call_name(node: fx.Node) -> str:
    target = node.target
    return (
        f"tensor.{target}"
        if isinstance(target, str)
        else f"{getattr(target, '__module__', '')}.{getattr(target, '__name__', target)}"
    )


@contextlib.contextmanager
def _kept_as_it_was(model: nn.Module) -> Iterator[None]:
    """Runs the block (a trace, which runs the model's Python ``forward``) and then puts back what it changed
    on the model: every module's ``training`` flag, buffers (``self.calls += 1``), plain attributes (numbers,
    strings) and which tensors its parameters and buffers are (``torch.fx`` hands ``forward`` proxies of the
    parameters, so those are never changed in place)."""
    modules = list(model.modules())
    attributes = [
        (m, {k: v for k, v in vars(m).items() if isinstance(v, (bool, int, float, str, type(None)))}) for m in modules
    ]
    tensors = [(m, dict(m._parameters), dict(m._buffers)) for m in modules]
    buffers = {id(b): b.detach().clone() for _, _, bs in tensors for b in bs.values() if b is not None}
    try:
        yield
    finally:
        for m, plain in attributes:
            vars(m).update(plain)
        for m, parameters, own_buffers in tensors:
            m._parameters.clear()
            m._parameters.update(parameters)
            m._buffers.clear()
            m._buffers.update(own_buffers)
            with torch.no_grad():
                for b in own_buffers.values():
                    if b is not None and not torch.equal(b, buffers[id(b)]):
                        b.copy_(buffers[id(b)])


def _from_shapes(node: fx.Node) -> bool:
    """Whether ``node`` is computed from tensors' shapes and dtypes alone (``x.shape[1] != 3``), not from their
    values or their device (the meta device, while tracing)."""
    if node.op == "call_function" and node.target is getattr and node.args[1] == "device":
        return False
    if _is_shape_query(node) or (node.op == "call_method" and node.target == "numel"):
        return True
    inputs = node.all_input_nodes
    return node.op in ("call_function", "call_method") and bool(inputs) and all(_from_shapes(n) for n in inputs)


@dataclass(frozen=True)
class Traced:
    """A model's fx graph, the node each container returns, and where its forward pass took a value computed from
    the images' shapes (a branch, a rounding, a padding; each ``module 'x' (type) at FILE:LINE``, in order). With
    any such place, the graph is the one for images of ``shape`` ``(C, H, W)`` alone."""

    graph: fx.Graph
    returned: dict[fx.Node, list[str]]
    branches: tuple[str, ...]
    shape: tuple[int, ...] | None


def image_shape(shape: Any) -> tuple[int, int, int] | None:
    """``shape`` as the images' ``(C, H, W)``; ``InputError`` in one line where it is not three positive integers."""
    if shape is not None and (
        not isinstance(shape, (tuple, list, torch.Size))
        or len(shape) != 3
        or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
    ):
        raise InputError(f"shape must be the images' (C, H, W), three positive integers, got {shape!r}")
    return None if shape is None else (shape[0], shape[1], shape[2])


def _trace(model: nn.Module, shape: tuple[int, ...] | Callable[[], Any] | None = None, values: bool = False) -> Traced:
    """``model``'s eval-mode forward pass traced with ``torch.fx``; where that fails (or with ``values``) and
    ``shape`` ``(C, H, W)`` is given (or a function returning it, called then), traced again with values for images
    of that shape, which lets it branch on tensors' shapes (each value computed for one image and for two: a branch
    on the batch size is refused, naming it)."""
    with _kept_as_it_was(model):
        model.eval()  # the mirror runs the model in eval mode: trace that forward pass (no auxiliary heads)
        tracer = _Tracer()
        try:
            if not values:
                return Traced(_traced(tracer, model), tracer.returned, (), None)
        except UnsupportedGraphError:
            if shape is None:
                raise
        shape = image_shape(shape() if callable(shape) else shape)
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.get_default_dtype())
        one, two = (torch.empty(n, *shape, dtype=dtype, device="meta") for n in (1, 2))
        tracer = _Tracer((one, two))
        graph = _traced(tracer, model)
        return Traced(graph, tracer.returned, tuple(dict.fromkeys(w for w, _ in tracer.branches)), shape)


def _traced(tracer: _Tracer, model: nn.Module) -> fx.Graph:
    """The graph ``tracer`` traces of ``model``; one-line ``UnsupportedGraphError`` naming the module and the line
    that cannot be traced."""
    try:
        return tracer.trace(model)
    except DeconvError:
        raise
    except Exception as error:  # fx raises many types for untraceable code
        name, kind = tracer.failed_in or ("", type(model))
        where = f"module {name!r} ({_qualified(kind)})" if name else f"{type(model).__name__}.forward"
        raise UnsupportedGraphError(
            f"cannot trace {where} with torch.fx{_source_line(error)} ({type(error).__name__}: "
            f"{one_line(error, 300)}); mirrors need a forward pass without data-dependent control flow"
        ) from None


def walk(
    model: nn.Module,
    rule: str,
    output: str | int | None = None,
    shape: tuple[int, ...] | Callable[[], Any] | None = None,
) -> tuple[Graph, Traced]:
    """The model's forward pass as a :class:`Graph` of nodes in forward order, each with its mirror under
    ``rule`` (the node's default), and under any other rule when a pass first asks for it; and its trace.

    ``output`` picks the field of a forward pass that returns a dict, a ``ModelOutput`` (default ``"logits"``
    where there is one) or a tuple (an index). ``shape`` ``(C, H, W)``: the images' shape (or a function returning
    it), for a forward pass that branches on it. Raises ``UnsupportedModuleError`` naming a node with no mirror,
    ``UnsupportedGraphError`` where the forward pass cannot be traced or does not return one tensor.
    """
    traced = _trace(model, shape)
    try:
        return _walked(model, rule, output, traced)
    except _ShapeValued as needed:
        if shape is None or traced.shape is not None:
            raise UnsupportedGraphError(
                f"{needed}; pass build_mirror(model, shape=(C, H, W)) to trace it for the images' shape"
            ) from None
        return _walked(model, rule, output, _trace(model, shape, values=True))


class _ShapeValued(Exception):
    """A call of the plain fx graph takes a value computed from a tensor's shape (``F.pad(x, [0, x.shape[-1] % 2])``):
    its mirror needs the value, so the model is traced with values for the images' shape instead."""


def _walked(model: nn.Module, rule: str, output: str | int | None, traced: Traced) -> tuple[Graph, Traced]:
    graph = traced.graph
    _follow_in_place(graph)
    for fx_node in graph.nodes:  # an operation of the model's own forward pass is named as in it (see _layer)
        if not fx_node.meta.get("nn_module_stack"):
            fx_node.meta["nn_module_stack"] = {"": ("", type(model))}
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if not placeholders:
        raise UnsupportedGraphError(f"the forward pass of {type(model).__name__} takes no input")
    output_node = next(n for n in graph.nodes if n.op == "output")
    returned = output_node.args[0]
    output_node.args = (_field(returned, output, type(model).__name__),)
    if isinstance(returned, fx.Node) and not returned.users:  # a dataclass built only to be returned
        graph.erase_node(returned)
    state = _Walk(model, rule, traced.returned, {placeholders[0]}, {placeholders[0]: IMAGES})
    for fx_node in graph.nodes:
        state.visit(fx_node)
    if not state.nodes:
        raise UnsupportedModuleError(f"{type(model).__name__} has no layers to mirror")
    returns = output_node.args[0]
    if not isinstance(returns, fx.Node) or returns not in state.index or state.index[returns] == IMAGES:
        raise UnsupportedGraphError(
            f"the forward pass of {type(model).__name__} returns {returns!r}; "
            "mirrors need a model that returns one tensor"
        )
    _check_stops(state.nodes, state.index[returns])
    return Graph(model, graph, state.nodes), traced


def _field(returns: Any, output: str | int | None, model: str) -> Any:
    """The field ``output`` of what the forward pass of ``model`` returns (fx's arguments of its output node): a
    dict's or ``ModelOutput``'s key (default ``"logits"``), a named tuple's name, a tuple's or list's index;
    ``returns`` itself where it is not one of these and ``output`` is ``None``."""
    if isinstance(returns, fx.Node) and isinstance(returns.target, type) and is_dataclass(returns.target):
        fields: dict[Any, Any] = dict(returns.kwargs)  # a dataclass built in the forward pass
    elif isinstance(returns, dict):
        fields = dict(returns)
    elif isinstance(returns, tuple) and hasattr(returns, "_fields"):
        fields = dict(zip(returns._fields, returns))
    elif isinstance(returns, (tuple, list)):
        fields = dict(enumerate(returns))
    elif output is None:
        return returns
    else:
        raise UnsupportedGraphError(
            f"output={output!r}, but the forward pass of {model} returns one value, not a dict or tuple; "
            "leave output unset"
        )
    chosen = ("logits" if "logits" in fields else None) if output is None else output
    if isinstance(chosen, bool) or chosen not in fields or fields[chosen] is None:
        what = (
            f"output={output!r} is not a field of what the forward pass of {model} returns"
            if output is not None
            else f"the forward pass of {model} returns several values, none of them 'logits'"
        )
        valid = ", ".join(repr(k) for k, v in fields.items() if v is not None)
        raise UnsupportedGraphError(f"{what}; pass build_mirror(model, output=...) with one of: {valid}")
    return fields[chosen]


def _check_stops(nodes: list[Node], output: int) -> None:
    """Refuses a node whose mirror ``stops`` the signal (a gate's function under the default rule) where the signal
    from the model's output reaches it: through anything but a ``silent`` input (a gate's branch)."""
    reached = {output}
    for i in range(output, -1, -1):
        if i not in reached:
            continue
        node = nodes[i]
        if node.mirror.stops:
            what = f"a {_qualified(type(node.layer))}" if node.layer is not None else _call_name(node.fx_node)
            raise UnsupportedModuleError(
                f"{_layer(node.name, node.fx_node)} is {what}, which the signal reaches outside a gate "
                "(x * gate(...)); under the deconvnet and guided rules only gates are mirrored: register a mirror "
                "of your own with @deconv.register_mirror(..., override=True)"
            )
        reached.update(j for k, j in enumerate(node.inputs) if k not in node.mirror.silent and j != IMAGES)


@dataclass
class _Walk:
    """One walk over ``model``'s fx graph under the default ``rule``: which fx nodes carry the signal, the
    index of each one that became a node (the images: :data:`IMAGES`), and the nodes so far."""

    model: nn.Module
    rule: str
    returned: dict[fx.Node, list[str]]
    signal: set[fx.Node]
    index: dict[fx.Node, int]
    nodes: list[Node] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)

    def visit(self, fx_node: fx.Node) -> None:
        """Makes ``fx_node`` a node if it is an operation on the signal."""
        if fx_node.op in ("placeholder", "output") or _is_shape_query(fx_node):
            return
        if not any(n in self.signal for n in fx_node.all_input_nodes):
            return  # a constant: parameters, sizes and what is computed from them
        self.signal.add(fx_node)
        if fx_node.target in _PIECES and fx_node.op != "call_module":
            return  # several tensors: each piece taken with [i] is a node
        pieces = fx_node.target is operator.getitem and fx_node.args[0].target in _PIECES
        call_node = fx_node.args[0] if pieces else fx_node
        sources = tuple(n for n in _arguments(call_node) if n in self.signal)
        name, layer, target = self._operation(fx_node, call_node, pieces)
        mirrors = _Mirrors(target, name, call_node)
        default = mirrors(self.rule)
        builtin = (
            type(layer).__module__.startswith("torch.nn")
            if fx_node.op == "call_module"
            else call_node.target not in _LAYOUT_BOUND
        )
        self.index[fx_node] = len(self.nodes)
        inputs = tuple(self.index[s] for s in sources)
        aliases = self.returned.get(fx_node, [])
        node = Node(name, aliases, layer, default, inputs, builtin, fx_node, sources, mirrors, {self.rule: default})
        self.nodes.append(node)

    def _operation(self, fx_node: fx.Node, call_node: fx.Node, pieces: bool) -> tuple[str, nn.Module | None, Any]:
        """The node's name, the module it calls or stands for, and what its mirror factory takes: the module, or
        the :class:`Call`."""
        name = fx_node.name
        if fx_node.op == "call_module":
            name = str(fx_node.target)
            self.calls[name] += 1
            if self.calls[name] > 1:  # one module used several times
                name = f"{name}:{self.calls[name] - 1}"
            layer = self.model.get_submodule(str(fx_node.target))
            return name, layer, layer
        if call_node.target in _STAND_INS:
            args = [a for a in call_node.args[1:]]
            kwargs = {k: v for k, v in call_node.kwargs.items() if k not in ("input", "inplace", "training", "p")}
            try:
                layer = _STAND_INS[call_node.target](*args, **kwargs)
            except (TypeError, ValueError, UnsupportedModuleError) as error:
                raise UnsupportedModuleError(f"layer {name!r}: {error}") from None
            return name, layer, layer
        sized = next((n for n in _arguments(call_node) if _from_shapes(n)), None)
        if sized is not None and call_node.target not in _SHAPE_FREE:
            raise _ShapeValued(
                f"layer {name!r} ({_call_name(call_node)}) takes a value computed from a tensor's shape ({sized.name})"
            )
        call = Call(
            call_node.target,
            fx.node.map_arg(call_node.args, lambda n: _constant(self.model, n, self.signal)),
            dict(fx.node.map_arg(call_node.kwargs, lambda n: _constant(self.model, n, self.signal))),
            fx_node.args[1] if pieces else None,
            name,
            tuple(self._producer(n) for n in _arguments(call_node) if n in self.signal),
        )
        return name, None, call

    def _producer(self, node: fx.Node) -> Any:
        """What computed ``node``, seen through reshapes: a module's type, a function or a tensor method."""
        while node.op != "call_module" and node.target in _RESHAPES and isinstance(node.args[0], fx.Node):
            node = node.args[0]
        if node.op == "call_module":
            return type(self.model.get_submodule(str(node.target)))
        return getattr(torch.Tensor, node.target) if node.op == "call_method" else node.target


_SHAPE_FREE = _RESHAPES - {"expand", "expand_as"}
"""Calls whose mirror reads no argument but the signal (it restores the shape the signal had): sizes computed from
shapes (``x.view(x.size(0), -1)``) are theirs to take."""


def _in_place(node: fx.Node) -> bool:
    """``x.mul_(g)``, ``torch.relu_(x)``, ``F.relu(x, inplace=True)``: a call that changes its first argument."""
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    named = isinstance(name, str) and name.endswith("_") and not name.startswith("_")
    return node.op in ("call_method", "call_function") and (named or node.kwargs.get("inplace") is True)


def _follow_in_place(graph: fx.Graph) -> None:
    """Makes each use of a tensor after an in-place call on it read the call's result, as the forward pass does:
    fx records ``out.mul_(g)`` as a node whose result nothing uses, and ``out * alpha`` after it as a use of
    ``out`` before the product (timm's NF-Nets scale their blocks' outputs so)."""
    order = {node: n for n, node in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        if _in_place(node) and node.args and isinstance(node.args[0], fx.Node):
            changed = node.args[0]
            for user in list(changed.users):
                if order[user] > order[node]:
                    user.replace_input_with(changed, node)


def _arguments(node: fx.Node) -> list[fx.Node]:
    """The nodes among a call's arguments in order, repeats included (``torch.cat([a, a], 1)``)."""
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), found.append)
    return found


_VIEWS = {"reshape", "view", "unsqueeze", "squeeze", "flatten", "expand", "permute", "transpose"}
"""Tensor methods whose result shares its tensor's storage: a view of a parameter is still that parameter."""


def _constant(model: nn.Module, node: fx.Node, signal: set[fx.Node]) -> Any:
    """A call's argument as its mirror factory sees it: ``SIGNAL``, a parameter's value (or a view of one, such as
    ConvNeXt's ``gamma.reshape(1, -1, 1, 1)``, which follows the parameter as it changes in place), a tensor
    :class:`Computed` from parameters alone (a weight-standardised convolution's filters), or the fx node."""
    if node in signal:
        return SIGNAL
    if node.op == "get_attr":
        return attribute(model, str(node.target))
    if node.op == "call_method" and node.target in _VIEWS and not node.kwargs:
        base = _constant(model, node.args[0], signal) if isinstance(node.args[0], fx.Node) else None
        if isinstance(base, torch.Tensor) and not any(isinstance(a, fx.Node) for a in node.args[1:]):
            return getattr(base, str(node.target))(*node.args[1:])
    return Computed.of(model, node, signal) or node


def _qualified(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


def _source_line(error: BaseException) -> str:
    """`` at FILE:LINE`` of the innermost frame of the error's traceback in the model's own code, or ""."""
    return _outside(traceback.extract_tb(error.__traceback__))


def _outside(frames: traceback.StackSummary) -> str:
    """`` at FILE:LINE`` of the innermost of ``frames`` outside torch and this package (the model's code), or ""."""
    outside = [f for f in frames if not f.filename.startswith((_TORCH, _HERE))]
    return f" at {outside[-1].filename}:{outside[-1].lineno}" if outside else ""


def _layer(name: str, node: fx.Node) -> str:
    """``layer 'NAME'``, and the module it runs in where the walk traced through one (its name and class)."""
    stack = list(node.meta.get("nn_module_stack", {}).values())
    if not stack or node.op == "call_module":
        return f"layer {name!r}"
    path, kind = stack[-1]
    named = _qualified(kind) if isinstance(kind, type) else kind
    return f"layer {name!r} (in {named}.forward)" if not path else f"layer {name!r} (in module {path!r}, a {named})"


class _Mirrors:
    """A node's mirror under each rule, built the first time it is asked for; rules whose factory is the
    same (rules with nothing of their own fall back on ``"deconvnet"``'s) share one mirror."""

    def __init__(self, target: Any, name: str, node: fx.Node) -> None:
        self.target = target
        self.name = name
        self.node = node
        self.built: dict[Any, nn.Module] = {}

    def __call__(self, rule: str) -> nn.Module:
        target = self.target
        factory = find_mirror_factory(target if isinstance(target, nn.Module) else target.target, rule)
        if factory is None:
            raise self._unsupported()
        if factory not in self.built:
            try:
                self.built[factory] = factory(target)
            except UnsupportedModuleError as error:
                raise UnsupportedModuleError(f"{_layer(self.name, self.node)}: {error}") from None
        return self.built[factory]

    def _unsupported(self) -> UnsupportedModuleError:
        name, target = self.name, self.target
        if isinstance(target, nn.Module):
            kind = type(target).__qualname__
            return UnsupportedModuleError(
                f"{_layer(name, self.node)} is a {type(target).__module__}.{kind}, which has no mirror; "
                f"register one with @deconv.register_mirror({kind}) on a function ({kind}) -> nn.Module"
            )
        shown = _call_name(self.node) if self.node.op != "get_attr" else "a parameter directly"
        return UnsupportedModuleError(
            f"{_layer(name, self.node)} calls {shown}, which has no mirror; register one with "
            f"@deconv.register_mirror({shown.removeprefix('tensor.')}) on a function (deconv.Call) -> nn.Module"
        )
