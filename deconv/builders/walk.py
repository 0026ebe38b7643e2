"""Walks a model's forward pass into a :class:`~deconv.engine.graph.Graph` of mirrored nodes, traced with
``torch.fx``.

Containers (``nn.Sequential``, ResNet blocks, DenseNet blocks, Inception modules) are traced
through; registered modules and torch's own layers stay whole. Every operation on a tensor computed
from the images becomes a node with a mirror from the registry, under every rule. Names:

- a module called once: its module name (``features.3``); called again: ``name:1``, ``name:2``, ...
- a container whose output is a node: an alias of that node (``layer3.1``, ``features.denseblock2``);
- a function with no module: its fx node name (``add_3``, ``cat``).
"""

from __future__ import annotations

import operator
from collections import Counter, defaultdict
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..engine.graph import IMAGES, Graph, Node, attribute
from ..errors import UnsupportedGraphError, UnsupportedModuleError, one_line
from .builtins import _FunctionalMaxPool
from .registry import SIGNAL, Call, find_mirror_factory, rules

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


def _is_shape_query(node: fx.Node) -> bool:
    """``x.size(0)``, ``x.shape[0]``, ``x.dim()``: reads a shape, is not a layer."""
    if node.op == "call_method" and node.target in ("size", "dim"):
        return True
    if node.op == "call_function" and node.target is getattr and node.args[1] in ("shape", "ndim", "dtype", "device"):
        return True
    return node.op == "call_function" and node.target is operator.getitem and _is_shape_query(node.args[0])


class _Tracer(fx.Tracer):
    """Keeps registered modules, leaves and torch's own layers whole; traces through containers and
    records which node each container returns."""

    def __init__(self) -> None:
        super().__init__()
        self.returned: dict[fx.Node, list[str]] = defaultdict(list)
        self._calls: Counter[str] = Counter()
        self._made: dict[fx.Node, int] = {}  # when each node was made

    def create_node(self, *args: Any, **kwargs: Any) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        self._made[node] = len(self._made)
        return node

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if find_mirror_factory(m) is not None:
            return True
        if isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            return False
        return next(m.children(), None) is None or m.__module__.startswith("torch.nn")

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        name = self.path_of_module(m)
        before = len(self._made)
        out = super().call_module(m, forward, args, kwargs)
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


def _trace(model: nn.Module) -> tuple[fx.Graph, dict[fx.Node, list[str]]]:
    tracer = _Tracer()
    flags = [(m, m.training) for m in model.modules()]
    model.eval()  # the mirror runs the model in eval mode: trace that forward pass (no auxiliary heads)
    try:
        graph = tracer.trace(model)
    except Exception as error:  # fx raises many types for untraceable code
        raise UnsupportedGraphError(
            f"cannot trace {type(model).__name__}.forward with torch.fx "
            f"({type(error).__name__}: {one_line(error, 300)}); "
            "mirrors need a forward pass without data-dependent control flow"
        ) from None
    finally:
        for m, flag in flags:
            m.training = flag
    return graph, tracer.returned


def walk(model: nn.Module, rule: str) -> Graph:
    """The model's forward pass as a :class:`Graph` of nodes in forward order, each with its mirror
    under every registered rule (``rule`` is the node's default).

    Raises ``UnsupportedModuleError`` naming a node with no mirror, ``UnsupportedGraphError`` where
    the forward pass cannot be traced or does not return one tensor.
    """
    graph, returned = _trace(model)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if not placeholders:
        raise UnsupportedGraphError(f"the forward pass of {type(model).__name__} takes no input")
    signal: set[fx.Node] = {placeholders[0]}
    index: dict[fx.Node, int] = {placeholders[0]: IMAGES}
    nodes: list[Node] = []
    calls: Counter[str] = Counter()
    for fx_node in graph.nodes:
        if fx_node.op in ("placeholder", "output") or _is_shape_query(fx_node):
            continue
        if not any(n in signal for n in fx_node.all_input_nodes):
            continue  # a constant: parameters, sizes and what is computed from them
        signal.add(fx_node)
        if fx_node.target in _PIECES and fx_node.op != "call_module":
            continue  # several tensors: each piece taken with [i] is a node
        pieces = fx_node.target is operator.getitem and fx_node.args[0].target in _PIECES
        call_node = fx_node.args[0] if pieces else fx_node
        sources = tuple(n for n in _arguments(call_node) if n in signal)
        name = fx_node.name
        layer: nn.Module | None = None
        if fx_node.op == "call_module":
            name = str(fx_node.target)
            calls[name] += 1
            if calls[name] > 1:  # one module used several times
                name = f"{name}:{calls[name] - 1}"
            layer = model.get_submodule(str(fx_node.target))
            target: Any = layer
        elif call_node.target in _STAND_INS:
            args = [a for a in call_node.args[1:]]
            kwargs = {k: v for k, v in call_node.kwargs.items() if k not in ("input", "inplace", "training", "p")}
            try:
                layer = target = _STAND_INS[call_node.target](*args, **kwargs)
            except (TypeError, ValueError, UnsupportedModuleError) as error:
                raise UnsupportedModuleError(f"layer {name!r}: {error}") from None
        else:
            target = Call(
                call_node.target,
                fx.node.map_arg(call_node.args, lambda n: _constant(model, n, signal)),
                dict(fx.node.map_arg(call_node.kwargs, lambda n: _constant(model, n, signal))),
                fx_node.args[1] if pieces else None,
                name,
            )
        mirrors = _mirrors(target, name, call_node, rule)
        builtin = (
            type(layer).__module__.startswith("torch.nn")
            if fx_node.op == "call_module"
            else call_node.target not in _LAYOUT_BOUND
        )
        index[fx_node] = len(nodes)
        nodes.append(
            Node(
                name,
                returned.get(fx_node, []),
                layer,
                mirrors[rule],
                mirrors,
                tuple(index[s] for s in sources),
                builtin,
                fx_node,
                sources,
            )
        )
    output = next(n for n in graph.nodes if n.op == "output")
    if not nodes:
        raise UnsupportedModuleError(f"{type(model).__name__} has no layers to mirror")
    if not isinstance(output.args[0], fx.Node) or output.args[0] not in index or index[output.args[0]] == IMAGES:
        raise UnsupportedGraphError(
            f"the forward pass of {type(model).__name__} returns {output.args[0]!r}; "
            "mirrors need a model that returns one tensor"
        )
    return Graph(model, graph, nodes)


def _arguments(node: fx.Node) -> list[fx.Node]:
    """The nodes among a call's arguments in order, repeats included (``torch.cat([a, a], 1)``)."""
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), found.append)
    return found


def _constant(model: nn.Module, node: fx.Node, signal: set[fx.Node]) -> Any:
    """A call's argument as its mirror factory sees it: ``SIGNAL``, a parameter's value, or the fx node."""
    if node in signal:
        return SIGNAL
    if node.op == "get_attr":
        return attribute(model, str(node.target))
    return node


def _mirrors(target: Any, name: str, node: fx.Node, default: str) -> dict[str, nn.Module]:
    """The node's mirror under every rule (rules with nothing of their own share the default's)."""
    what = target if isinstance(target, nn.Module) else target.target
    factories = {rule: find_mirror_factory(what, rule) for rule in rules()}
    if factories[default] is None:
        if isinstance(target, nn.Module):
            kind = type(target).__qualname__
            raise UnsupportedModuleError(
                f"layer {name!r} is a {type(target).__module__}.{kind}, which has no mirror; register one with "
                f"@deconv.register_mirror({kind}) on a function ({kind}) -> nn.Module"
            )
        shown = _call_name(node) if node.op != "get_attr" else "a parameter directly"
        raise UnsupportedModuleError(
            f"layer {name!r} calls {shown}, which has no mirror; register one with "
            f"@deconv.register_mirror({shown.removeprefix('tensor.')}) on a function (deconv.Call) -> nn.Module"
        )
    built: dict[Any, nn.Module] = {}
    mirrors = {}
    for rule, factory in factories.items():
        if factory not in built:
            try:
                built[factory] = factory(target)
            except UnsupportedModuleError as error:
                raise UnsupportedModuleError(f"layer {name!r}: {error}") from None
        mirrors[rule] = built[factory]
    return mirrors
