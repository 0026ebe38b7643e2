"""Walks a model's forward pass into a straight chain of layers, tracing it with ``torch.fx``.

Nested ``nn.Sequential``s and models whose ``forward`` chains modules and functions
(torchvision's VGG and AlexNet: ``features``, ``avgpool``, ``torch.flatten(x, 1)``, ``classifier``)
become one list of ``(name, layer)`` in forward order. Functions become the modules they stand for.
"""
from __future__ import annotations

import operator
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..errors import UnsupportedGraphError, UnsupportedModuleError
from .registry import find_mirror_factory

__all__ = ["walk"]


def _flatten(start_dim: int = 0, end_dim: int = -1) -> nn.Module:
    return nn.Flatten(start_dim, end_dim)


def _view(*shape: Any) -> nn.Module:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    if len(shape) == 2 and isinstance(shape[0], fx.Node) and shape[1] == -1:  # x.view(x.size(0), -1)
        return nn.Flatten()
    raise UnsupportedModuleError(f"reshape to {shape} (only x.view(x.size(0), -1) and x.reshape(x.shape[0], -1) can be mirrored)")


def _pool(module_type: type[nn.Module]) -> Callable[..., nn.Module]:
    def make(*args: Any, return_indices: bool = False, **kwargs: Any) -> nn.Module:
        return module_type(*args, **kwargs)

    return make


# What a traced call stands for: function (or tensor method name) -> module factory taking the call's
# arguments after the input tensor.
_CALLS: dict[Any, Callable[..., nn.Module]] = {
    **dict.fromkeys([F.relu, torch.relu, torch.relu_, F.relu_, "relu", "relu_"], lambda *a, **k: nn.ReLU()),
    **dict.fromkeys([F.max_pool2d, torch.max_pool2d], _pool(nn.MaxPool2d)),
    **dict.fromkeys([F.adaptive_max_pool2d], _pool(nn.AdaptiveMaxPool2d)),
    **dict.fromkeys([F.avg_pool2d, torch._C._nn.avg_pool2d], nn.AvgPool2d),
    **dict.fromkeys([F.adaptive_avg_pool2d, torch._C._nn.adaptive_avg_pool2d], nn.AdaptiveAvgPool2d),
    **dict.fromkeys([F.dropout, F.dropout2d, "contiguous"], lambda *a, **k: nn.Identity()),
    **dict.fromkeys([torch.flatten, "flatten"], _flatten),
    **dict.fromkeys([torch.reshape, "view", "reshape"], _view),
}


def _is_shape_query(node: fx.Node) -> bool:
    """``x.size(0)``, ``x.shape[0]``, ``x.dim()``: reads a shape, is not a layer."""
    if node.op == "call_method" and node.target in ("size", "dim"):
        return True
    if node.op == "call_function" and node.target is getattr and node.args[1] in ("shape", "ndim"):
        return True
    return node.op == "call_function" and node.target is operator.getitem and _is_shape_query(node.args[0])


class _Tracer(fx.Tracer):
    """Keeps registered modules, leaves and torch's own layers whole; traces through containers."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if find_mirror_factory(m) is not None:
            return True
        if isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            return False
        return next(m.children(), None) is None or m.__module__.startswith("torch.nn")


def _call_name(node: fx.Node) -> str:
    target = node.target
    return f"tensor.{target}" if isinstance(target, str) else f"{getattr(target, '__module__', '')}.{getattr(target, '__name__', target)}"


def walk(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's forward pass as ``[(name, layer), ...]`` in order; names are the model's module names.

    Raises ``UnsupportedGraphError`` where the forward pass branches or cannot be traced.
    """
    try:
        graph = _Tracer().trace(model)
    except Exception as error:  # fx raises many types for untraceable code
        raise UnsupportedGraphError(
            f"cannot trace {type(model).__name__}.forward with torch.fx ({type(error).__name__}: {error}); "
            "mirrors need a forward pass that is a straight chain of modules and functions"
        ) from None
    chain: list[tuple[str, nn.Module]] = []
    seen: dict[str, int] = {}
    previous: fx.Node | None = None
    for node in graph.nodes:
        if node.op == "placeholder":
            if previous is None:
                previous = node
            continue
        if _is_shape_query(node):
            continue
        inputs = [n for n in node.all_input_nodes if not _is_shape_query(n)]
        if inputs != [previous]:
            names = ", ".join(repr(n.name) for n in inputs) or "no tensor"
            raise UnsupportedGraphError(
                f"the forward pass of {type(model).__name__} branches at node {node.name!r} "
                f"(its inputs are {names}, not just {previous.name!r}); only straight chains of layers can be mirrored"
            )
        if node.op == "output":
            return chain
        if node.op == "call_module":
            name = str(node.target)
            layer = model.get_submodule(name)
            seen[name] = seen.get(name, 0) + 1
            if seen[name] > 1:  # one module used several times
                name = f"{name}:{seen[name] - 1}"
        elif node.op in ("call_function", "call_method") and node.target in _CALLS:
            name = node.name
            args = [a for a in node.args[1:]]
            kwargs = {k: v for k, v in node.kwargs.items() if k not in ("input", "inplace", "training", "p")}
            try:
                layer = _CALLS[node.target](*args, **kwargs)
            except UnsupportedModuleError as error:
                raise UnsupportedModuleError(f"layer {name!r}: {error}") from None
        else:
            raise UnsupportedModuleError(
                f"layer {node.name!r} calls {_call_name(node) if node.op != 'get_attr' else 'a parameter directly'}, "
                "which has no mirror; wrap it in an nn.Module and register a mirror for it with "
                "@deconv.register_mirror(YourModule)"
            )
        chain.append((name, layer))
        previous = node
    raise UnsupportedGraphError(f"the forward pass of {type(model).__name__} has no output")
