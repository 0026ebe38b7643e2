"""Traces a model's eval-mode forward pass with ``torch.fx`` into the graph the walk mirrors (:func:`trace`).

Registered modules and torch's own layers stay whole; containers and every other module are traced through, and
the tracer records which node each container returns. Where plain tracing fails and the images' shape is known,
the model is traced again with meta values for that shape, so that a forward pass may branch on tensors' shapes
(timm's "same" padding, Hugging Face's embedders): each such place is recorded, and branches on values, on the
batch size or on the device are refused, naming the module and the model's own line.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import operator
import os
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import fx, nn
from torch.fx.proxy import TraceError

from ..engine.graph import attribute
from ..errors import DeconvError, InputError, UnsupportedGraphError, one_line
from .registry import changed_base, find_mirror_factory

__all__ = ["Traced", "from_shapes", "image_shape", "is_shape_query", "qualified", "trace"]

_TORCH = os.path.dirname(torch.__file__)
_HERE = os.path.dirname(__file__)


def is_shape_query(node: fx.Node) -> bool:
    """``x.size(0)``, ``x.shape[0]``, ``x.dim()``: reads a shape, is not a layer."""
    if node.op == "call_method" and node.target in ("size", "dim"):
        return True
    if node.op == "call_function" and node.target is getattr and node.args[1] in ("shape", "ndim", "dtype", "device"):
        return True
    return node.op == "call_function" and node.target is operator.getitem and is_shape_query(node.args[0])


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
        if all(self._shaped(a) for a in proxies):
            return args

        def fold(a: Any) -> Any:
            if not isinstance(a, fx.Proxy) or not self._shaped(a):
                return a
            one, two = self.values.get(a.node, (_UNKNOWN, _UNKNOWN))
            if one is _UNKNOWN or isinstance(one, torch.Tensor) or one != two:
                return a
            self.branches.append((self._where(), one))
            return one

        return fx.node.map_aggregate(args, fold)

    def _shaped(self, proxy: fx.Proxy) -> bool:
        """:func:`from_shapes` of ``proxy``'s node, at once false for a tensor (not walked back to the images)."""
        values = self.values.get(proxy.node, _UNKNOWN)
        return not (values is not _UNKNOWN and isinstance(values[0], torch.Tensor)) and from_shapes(proxy.node)

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
            if self.images is None and (take is len or from_shapes(proxy.node)):
                raise UnsupportedGraphError(
                    f"cannot trace {where} without the images' shape: its control flow depends on a tensor's shape "
                    f"(it {how} it); pass "
                    "build_mirror(model, shape=(C, H, W)) with the shape of the images the mirror will see"
                )
            raise TraceError(f"the forward pass {how} a value torch.fx cannot compute")
        if take is not len and not from_shapes(proxy.node):
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
        module = f"module {path!r} ({qualified(kind)})" if path else f"{type(self.root).__name__}.forward"
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


def from_shapes(node: fx.Node) -> bool:
    """Whether ``node`` is computed from tensors' shapes and dtypes alone (``x.shape[1] != 3``), not from their
    values or their device (the meta device, while tracing)."""
    if node.op == "call_function" and node.target is getattr and node.args[1] == "device":
        return False
    if is_shape_query(node) or (node.op == "call_method" and node.target == "numel"):
        return True
    inputs = node.all_input_nodes
    return node.op in ("call_function", "call_method") and bool(inputs) and all(from_shapes(n) for n in inputs)


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


def trace(model: nn.Module, shape: tuple[int, ...] | Callable[[], Any] | None = None, values: bool = False) -> Traced:
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
        where = f"module {name!r} ({qualified(kind)})" if name else f"{type(model).__name__}.forward"
        raise UnsupportedGraphError(
            f"cannot trace {where} with torch.fx{_source_line(error)} ({type(error).__name__}: "
            f"{one_line(error, 300)}); mirrors need a forward pass without data-dependent control flow"
        ) from None


def qualified(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


def _source_line(error: BaseException) -> str:
    """`` at FILE:LINE`` of the innermost frame of the error's traceback in the model's own code, or ""."""
    return _outside(traceback.extract_tb(error.__traceback__))


def _outside(frames: traceback.StackSummary) -> str:
    """`` at FILE:LINE`` of the innermost of ``frames`` outside torch and this package (the model's code), or ""."""
    outside = [f for f in frames if not f.filename.startswith((_TORCH, _HERE))]
    return f" at {outside[-1].filename}:{outside[-1].lineno}" if outside else ""
