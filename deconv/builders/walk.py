"""Walks a model's forward pass into a :class:`~deconv.engine.graph.Graph` of mirrored nodes, traced with
``torch.fx`` (:mod:`.trace`).

Containers (``nn.Sequential``, ResNet blocks, DenseNet blocks, Inception modules) are traced
through; registered modules and torch's own layers stay whole. Every operation on a tensor computed
from the images becomes a node with a mirror from the registry: the default rule's at once, another
rule's when a pass first uses it. Names:

- a module called once: its module name (``features.3``); called again: ``name:1``, ``name:2``, ...
- a container whose output is a node: an alias of that node (``layer3.1``, ``features.denseblock2``);
- a function with no module: its fx node name (``add_3``, ``cat``).
"""

from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass, field, is_dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..engine.graph import IMAGES, Computed, Graph, Node, attribute
from ..errors import UnsupportedGraphError, UnsupportedModuleError
from .builtins import _FunctionalMaxPool
from .registry import SIGNAL, Call, find_mirror_factory
from .trace import Traced, from_shapes, is_shape_query, qualified, trace

__all__ = ["walk"]


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


def _call_name(node: fx.Node) -> str:
    target = node.target
    return (
        f"tensor.{target}"
        if isinstance(target, str)
        else f"{getattr(target, '__module__', '')}.{getattr(target, '__name__', target)}"
    )


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
    traced = trace(model, shape)
    try:
        return _walked(model, rule, output, traced)
    except _ShapeValued as needed:
        if shape is None or traced.shape is not None:
            raise UnsupportedGraphError(
                f"{needed}; pass build_mirror(model, shape=(C, H, W)) to trace it for the images' shape"
            ) from None
        return _walked(model, rule, output, trace(model, shape, values=True))


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
            what = f"a {qualified(type(node.layer))}" if node.layer is not None else _call_name(node.fx_node)
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
        if fx_node.op in ("placeholder", "output") or is_shape_query(fx_node):
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
        sized = next((n for n in _arguments(call_node) if n not in self.signal and from_shapes(n)), None)
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


def _layer(name: str, node: fx.Node) -> str:
    """``layer 'NAME'``, and the module it runs in where the walk traced through one (its name and class)."""
    stack = list(node.meta.get("nn_module_stack", {}).values())
    if not stack or node.op == "call_module":
        return f"layer {name!r}"
    path, kind = stack[-1]
    named = qualified(kind) if isinstance(kind, type) else kind
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
