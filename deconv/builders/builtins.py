"""Mirrors of the layers a real CNN has, registered the way users register theirs."""

from __future__ import annotations

import inspect
import operator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..engine.graph import Computed
from ..errors import UnsupportedModuleError
from ..layers import (
    ActivationGradient,
    ChannelScale,
    Distribute,
    Embed,
    Gated,
    GuidedRectify,
    LinearTranspose,
    Normalize,
    PassThrough,
    Product,
    Rectify,
    ReLUGradient,
    Scale,
    Split,
    TransposedAverage,
    TransposedFilter,
    TransposedFilter1d,
    TransposedLinear,
    TransposedMean,
    Unflatten,
    Ungated,
    Unpermute,
    Unpool2d,
    VectorJacobian,
)
from ..layers.base import pair
from ..layers.transposed_average import adaptive_axis_pool, average_axis_pool
from .registry import SIGNAL, Call, Rule, register_mirror

GUIDED = Rule("guided", "guided backpropagation: rectify the signal and keep only where the forward input was positive")
GRADIENT = Rule("gradient", "the gradient: pass the signal only where the forward input was positive")


@register_mirror(nn.Conv2d, nn.Conv1d)
def _conv(conv: nn.Conv2d | nn.Conv1d) -> TransposedFilter | TransposedFilter1d:
    if conv.padding_mode != "zeros":
        raise UnsupportedModuleError(
            f"{type(conv).__name__} with padding_mode={conv.padding_mode!r} (only 'zeros' can be mirrored)"
        )
    return TransposedFilter1d(conv) if isinstance(conv, nn.Conv1d) else TransposedFilter(conv)


@register_mirror(nn.ReLU)
def _relu(relu: nn.ReLU) -> Rectify:
    return Rectify()


@register_mirror(nn.ReLU, rule=GUIDED)
def _relu_guided(relu: nn.ReLU) -> GuidedRectify:
    return GuidedRectify()


@register_mirror(nn.ReLU, rule=GRADIENT)
def _relu_gradient(relu: nn.ReLU) -> ReLUGradient:
    return ReLUGradient()


ACTIVATIONS = (nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SiLU, nn.GELU, nn.Mish, nn.Hardswish, nn.Hardtanh)
"""Pointwise activations other than the ReLU: rectified as a ReLU is under the deconvnet rule; under the guided
and gradient rules the signal is multiplied by the activation's own derivative at the forward input."""
ACTIVATION_FUNCTIONS = (F.relu6, F.leaky_relu, F.elu, F.silu, F.gelu, F.mish, F.hardswish, F.hardtanh)


@dataclass(frozen=True)
class _Applied:
    """A function of the forward pass applied to its input alone, its other arguments fixed."""

    function: Callable[..., torch.Tensor]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x, *self.args, **self.kwargs)


def _activation(target: nn.Module | Call) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    """The activation as a function of its input alone, and its name."""
    if isinstance(target, nn.Module):
        return target, type(target).__name__
    if target.signals != 1 or target.args[:1] != (SIGNAL,):
        raise UnsupportedModuleError(f"{_qualified(target.target)} of a computed argument other than its input")
    function = getattr(torch.Tensor, target.target) if isinstance(target.target, str) else target.target
    return _Applied(function, target.args[1:], target.kwargs), function.__name__


@register_mirror(*ACTIVATIONS, *ACTIVATION_FUNCTIONS)
def _activation_deconvnet(target: nn.Module | Call) -> Rectify:
    _activation(target)  # refuses what it cannot take
    return Rectify()


@register_mirror(*ACTIVATIONS, *ACTIVATION_FUNCTIONS, rule=GUIDED)
def _activation_guided(target: nn.Module | Call) -> ActivationGradient:
    return ActivationGradient(*_activation(target), rectify=True)


@register_mirror(*ACTIVATIONS, *ACTIVATION_FUNCTIONS, rule=GRADIENT)
def _activation_gradient(target: nn.Module | Call) -> ActivationGradient:
    return ActivationGradient(*_activation(target), rectify=False)


@register_mirror(nn.MaxPool2d)
def _max_pool(pool: nn.MaxPool2d) -> Unpool2d:
    mirror = Unpool2d(pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode)
    # a plain max pool is exactly the mirror's own pooling: let the walk pool and record switches at once
    mirror.computes_forward = type(pool) in (nn.MaxPool2d, _FunctionalMaxPool) and not pool.return_indices
    return mirror


@register_mirror(nn.AdaptiveMaxPool2d)
def _adaptive_max_pool(pool: nn.AdaptiveMaxPool2d) -> Unpool2d:
    size = pool.output_size  # None keeps that axis
    return Unpool2d(adaptive=(size, size) if isinstance(size, int) or size is None else tuple(size))


@register_mirror(nn.AvgPool2d)
def _avg_pool(pool: nn.AvgPool2d) -> TransposedAverage:
    kernel, stride, padding = pair(pool.kernel_size), pair(pool.stride or pool.kernel_size), pair(pool.padding)
    return TransposedAverage(
        average_axis_pool(kernel, stride, padding, pool.ceil_mode, pool.count_include_pad, pool.divisor_override),
        f"kernel={kernel}, stride={stride}, padding={padding}",
    )


@register_mirror(nn.AdaptiveAvgPool2d)
def _adaptive_avg_pool(pool: nn.AdaptiveAvgPool2d) -> TransposedAverage:
    size = pool.output_size
    size = (size, size) if isinstance(size, int) or size is None else tuple(size)
    return TransposedAverage(adaptive_axis_pool(size), f"adaptive={size}")


@register_mirror(nn.Linear)
def _linear(linear: nn.Linear) -> TransposedLinear:
    return TransposedLinear(linear)


@register_mirror(nn.Flatten)
def _flatten(flatten: nn.Flatten) -> Unflatten:
    if flatten.start_dim != 1 or flatten.end_dim != -1:
        raise UnsupportedModuleError(
            f"Flatten(start_dim={flatten.start_dim}, end_dim={flatten.end_dim}) "
            "(only flattening everything but the batch, start_dim=1 and end_dim=-1, can be mirrored)"
        )
    return Unflatten()


@register_mirror(nn.BatchNorm2d)
def _batch_norm(bn: nn.BatchNorm2d) -> ChannelScale:
    if not bn.track_running_stats or bn.running_var is None:
        raise UnsupportedModuleError("BatchNorm2d without running statistics (track_running_stats=False)")
    return ChannelScale(bn)


@register_mirror(nn.Dropout, nn.Dropout2d, nn.Identity)
def _pass_through(module: nn.Module) -> PassThrough:
    return PassThrough()


class _FunctionalMaxPool(nn.MaxPool2d):
    """What ``F.max_pool2d(x, ...)`` stands for."""


# ------------------------------------------------------------------ functions of the forward pass
def _only_signal(call: Call, what: str) -> None:
    if call.signals != 1:
        raise UnsupportedModuleError(
            f"{what} of {call.signals} input-dependent tensors is not linear in the signal (a gate); "
            "only a product with a constant can be mirrored"
        )


def _dim(call: Call, position: int, default: int) -> int:
    return call.kwargs.get("dim", call.args[position] if len(call.args) > position else default)


def _conv_signature(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):  # noqa: ANN001, ANN202
    """``F.conv1d``'s and ``F.conv2d``'s signature (builtins without one of their own)."""


def _bound(call: Call, function: Callable[..., Any]) -> dict[str, Any]:
    """The call's arguments by name, as ``function`` would see them (defaults filled in)."""
    bound = inspect.signature(function).bind(*call.args, **call.kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def _constant_tensor(value: Any, what: str, call: Call) -> torch.Tensor | None:
    """A tensor argument that is a parameter or buffer (or ``None``); one computed in the forward pass is refused."""
    if value is None or isinstance(value, torch.Tensor):
        return value
    raise UnsupportedModuleError(
        f"{_qualified(call.target)} with {what} computed in the forward pass ({value!r}); "
        "only parameters and buffers can be mirrored"
    )


def _qualified(target: Any) -> str:
    return f"{getattr(target, '__module__', '')}.{getattr(target, '__name__', target)}"


@register_mirror(F.batch_norm)
def _functional_batch_norm(call: Call) -> ChannelScale:
    """``F.batch_norm`` in evaluation mode (timm's ``BatchNormAct2d`` calls it): its per-channel scale, read from
    the running variance and weight it is passed (the module's own buffers and parameters, shared)."""
    args = _bound(call, F.batch_norm)
    if args["input"] is not SIGNAL or args["training"] is not False:
        raise UnsupportedModuleError(
            f"torch.nn.functional.batch_norm with training={args['training']!r} (only evaluation mode, with running "
            "statistics, is linear in the signal)"
        )
    running_var = _constant_tensor(args["running_var"], "running_var", call)
    if running_var is None:
        raise UnsupportedModuleError("torch.nn.functional.batch_norm without running statistics")
    weight = _constant_tensor(args["weight"], "weight", call)
    return ChannelScale(
        SimpleNamespace(running_var=running_var, weight=weight, eps=args["eps"], num_features=len(running_var))
    )


class _Convolution:
    """What ``F.conv1d`` / ``F.conv2d`` is called with, read as a convolution module's attributes: ``weight`` is its
    filters, a parameter, or a tensor :class:`Computed` from parameters alone (weight standardisation), evaluated
    from the parameters' current values at every read; the mirror takes the forward pass's own from its memory."""

    def __init__(self, filters: torch.Tensor | Computed, args: dict[str, Any]) -> None:
        self.filters = filters
        self.constants = (filters,) if isinstance(filters, Computed) else ()  # the forward pass's follow the memory
        self.stride, self.padding, self.dilation, self.groups = (args[k] for k in _SETTINGS)
        shape = self.weight.shape
        self.kernel_size = tuple(shape[2:])
        self.in_channels = shape[1] * self.groups

    @property
    def weight(self) -> torch.Tensor:
        return self.filters() if isinstance(self.filters, Computed) else self.filters


_SETTINGS = ("stride", "padding", "dilation", "groups")


@register_mirror(F.conv1d, F.conv2d)
def _functional_conv(call: Call) -> TransposedFilter | TransposedFilter1d:
    """``F.conv2d`` / ``F.conv1d`` with constant filters (a ``Conv2d`` subclass's own forward; timm's
    ``StdConv2d`` and ``ScaledStdConv2d``, whose filters are standardised from the parameters): their transpose with
    those filters."""
    args = _bound(call, _conv_signature)
    weight = args["weight"]
    what = _qualified(call.target)
    if weight is SIGNAL:
        raise UnsupportedModuleError(
            f"{what} with filters computed from the images; only filters computed from parameters and buffers "
            "alone can be mirrored"
        )
    if not isinstance(weight, Computed):
        weight = _constant_tensor(weight, "filters", call)
    if args["input"] is not SIGNAL or weight is None or any(isinstance(args[k], fx.Node) for k in _SETTINGS):
        raise UnsupportedModuleError(
            f"{what} is mirrored only for a signal convolved with constant filters and settings"
        )
    conv = _Convolution(weight, args)
    return TransposedFilter1d(conv) if call.target is F.conv1d else TransposedFilter(conv)  # type: ignore[arg-type]


@register_mirror(operator.add, operator.iadd, torch.add, torch.Tensor.add, torch.Tensor.add_)
def _add(call: Call) -> Distribute:
    if call.kwargs.get("alpha", 1) != 1:
        raise UnsupportedModuleError(f"torch.add with alpha={call.kwargs['alpha']} (only alpha=1 is mirrored)")
    return Distribute()


def _linear_signature(input, weight, bias=None):  # noqa: ANN001, ANN202
    """``F.linear``'s signature (a builtin without one of its own)."""


@register_mirror(F.linear)
def _functional_linear(call: Call) -> TransposedLinear:
    """``F.linear`` with a parameter as its weight (an ``nn.Linear`` subclass's own forward): its transpose."""
    args = _bound(call, _linear_signature)
    weight = _constant_tensor(args["weight"], "weight", call)
    if args["input"] is not SIGNAL or weight is None:
        raise UnsupportedModuleError("torch.nn.functional.linear is mirrored only for a signal times a constant weight")
    return TransposedLinear(SimpleNamespace(weight=weight))


def _norm(target: nn.Module | Call, rule_is_gradient: bool) -> Normalize | ChannelScale:
    """LayerNorm, GroupNorm or InstanceNorm, as a module or ``F.layer_norm`` / ``F.group_norm``. An instance norm
    with running statistics uses them in evaluation mode: a per-channel scale, as batch norm."""
    if isinstance(target, nn.InstanceNorm2d):
        if target.track_running_stats:
            return ChannelScale(target)
        return Normalize(target.weight, target.eps, rule_is_gradient, groups=target.num_features)
    if isinstance(target, nn.LayerNorm):
        return Normalize(target.weight, target.eps, rule_is_gradient, dims=len(target.normalized_shape))
    if isinstance(target, nn.GroupNorm):
        return Normalize(target.weight, target.eps, rule_is_gradient, groups=target.num_groups)
    function = F.layer_norm if target.target is F.layer_norm else F.group_norm
    args = _bound(target, function)
    if args["input"] is not SIGNAL or any(isinstance(v, fx.Node) for k, v in args.items() if k != "input"):
        raise UnsupportedModuleError(f"{_qualified(function)} of a signal with computed settings or weights")
    weight = _constant_tensor(args["weight"], "weight", target)
    if function is F.layer_norm:
        return Normalize(weight, args["eps"], rule_is_gradient, dims=len(tuple(args["normalized_shape"])))
    return Normalize(weight, args["eps"], rule_is_gradient, groups=args["num_groups"])


NORMS = (nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm2d, F.layer_norm, F.group_norm)


@register_mirror(*NORMS)
def _normalize(target: nn.Module | Call) -> Normalize | ChannelScale:
    return _norm(target, False)


@register_mirror(*NORMS, rule=GRADIENT)
def _normalize_gradient(target: nn.Module | Call) -> Normalize | ChannelScale:
    return _norm(target, True)


@dataclass(frozen=True)
class _Substituted:
    """A call of the forward pass as a function of its input-dependent tensors alone, in their order."""

    function: Callable[..., torch.Tensor]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        given = iter(tensors)

        def put(value: Any) -> Any:
            if value is SIGNAL:
                return next(given)
            return type(value)(put(v) for v in value) if isinstance(value, (list, tuple)) else value

        return self.function(*put(self.args), **{k: put(v) for k, v in self.kwargs.items()})


def _dims(call: Call, position: int, name: str) -> tuple[int, ...] | None:
    value = call.kwargs.get(name, call.args[position] if len(call.args) > position else None)
    return None if value is None else tuple(value) if isinstance(value, (list, tuple)) else (value,)


def _keeps_batch(dims: tuple[int, ...] | None) -> bool:
    """Dimensions that are given and none of them the batch (0, or a negative one that could reach it)."""
    return dims is not None and all(isinstance(d, int) and (d > 0 or -3 <= d < 0) for d in dims)


@register_mirror(
    F.pad,
    F.interpolate,
    torch.stack,
    torch.sum,
    torch.Tensor.sum,
    torch.Tensor.expand,
    torch.Tensor.expand_as,
    nn.Upsample,
    nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d,
    nn.ZeroPad2d,
    nn.ConstantPad2d,
    nn.ReflectionPad2d,
    nn.ReplicationPad2d,
)
def _linear(target: nn.Module | Call) -> LinearTranspose:
    """Padding, upsampling, stacking and sums over dimensions: linear in their input tensors, so their mirror is
    their transpose under every rule (a constant padding value is a bias, left out like the filters' biases)."""
    if isinstance(target, nn.Module):
        return LinearTranspose(target, type(target).__name__)
    function = getattr(torch.Tensor, target.target) if isinstance(target.target, str) else target.target
    name = function.__name__
    if function is F.pad:
        pad = target.args[1] if len(target.args) > 1 else target.kwargs.get("pad", ())
        if isinstance(pad, fx.Node) or len(pad) > 4:
            raise UnsupportedModuleError(f"F.pad of {pad!r}: only padding the two spatial dimensions is mirrored")
    elif function is torch.stack and not _keeps_batch(_dims(target, 1, "dim") or (0,)):
        raise UnsupportedModuleError("torch.stack along the batch dimension mixes the images")
    elif function in (torch.sum, torch.Tensor.sum) and not _keeps_batch(_dims(target, 1, "dim")):
        raise UnsupportedModuleError("a sum over the batch (or over everything) mixes the images")
    silent = (1,) if function is torch.Tensor.expand_as and target.signals == 2 else ()  # its shape only
    return LinearTranspose(_Substituted(function, target.args, target.kwargs), name, silent)


PRODUCTS = (operator.mul, operator.imul, torch.mul, torch.Tensor.mul, torch.Tensor.mul_)
GATES = (
    nn.Sigmoid,
    nn.Hardsigmoid,
    nn.Tanh,
    nn.Softmax,
    torch.sigmoid,
    F.sigmoid,
    torch.Tensor.sigmoid,
    F.hardsigmoid,
    torch.tanh,
    F.tanh,
    torch.Tensor.tanh,
    torch.softmax,
    F.softmax,
    torch.Tensor.softmax,
)
"""What a gate's factor comes out of: in ``x * gate(...)`` (squeeze-excite, ECA, split attention)."""


def _scale(call: Call) -> Scale:
    """A product with a constant: the signal times it."""
    factor = next(a for a in call.args if a is not SIGNAL)
    if not isinstance(factor, (int, float, torch.Tensor)):
        raise UnsupportedModuleError(
            f"a product with {factor!r}, which is computed in the forward pass; only constants are mirrored"
        )
    return Scale(factor)


@register_mirror(*PRODUCTS)
def _mul(call: Call) -> Scale | Gated:
    """A product with a constant; or a gate's: the gate keeps its value, its branch gets no signal."""
    if call.signals != 2:
        _only_signal(call, "a product")
        return _scale(call)
    gates = [k for k, p in enumerate(call.producers) if p in GATES]
    if len(call.producers) != 2 or len(gates) != 1:
        raise UnsupportedModuleError(
            "a product of two input-dependent tensors, neither (or both) out of a gate's sigmoid, hardsigmoid, "
            "softmax or tanh, is not linear in the signal under the deconvnet and guided rules"
        )
    return Gated(gates[0])


@register_mirror(*PRODUCTS, rule=GRADIENT)
def _mul_gradient(call: Call) -> Scale | Product:
    """A product with a constant; or of two input-dependent tensors: the product rule."""
    if call.signals == 2 and call.args[:2].count(SIGNAL) == 2:
        return Product()
    _only_signal(call, "a product")
    return _scale(call)


@register_mirror(*GATES)
def _gate_function(target: nn.Module | Call) -> Ungated:
    return Ungated(_activation(target)[1])


@register_mirror(*GATES, rule=GRADIENT)
def _gate_function_gradient(target: nn.Module | Call) -> ActivationGradient | VectorJacobian:
    f, name = _activation(target)
    if name.lower() == "softmax":  # mixes along its dimension: the whole vector-Jacobian product
        return VectorJacobian(f, name)
    return ActivationGradient(f, name, rectify=False)


@register_mirror(operator.truediv, operator.itruediv, torch.div, torch.Tensor.div, torch.Tensor.div_)
def _div(call: Call) -> Scale:
    if (
        call.args[0] is not SIGNAL
        or call.signals != 1
        or call.kwargs.get("rounding_mode") is not None
        or not isinstance(call.args[1], (int, float, torch.Tensor))
    ):
        raise UnsupportedModuleError(
            "a division is mirrored only as an input-dependent tensor divided by a number, parameter or buffer"
        )
    return Scale(1 / call.args[1])


@register_mirror(torch.cat, torch.concat)
def _cat(call: Call) -> Split:
    dim = _dim(call, 1, 0)
    if dim == 0:
        raise UnsupportedModuleError("torch.cat along the batch dimension (dim=0) cannot be mirrored")
    if any(a is not SIGNAL for a in call.args[0]):
        raise UnsupportedModuleError("torch.cat of a constant tensor with input-dependent ones cannot be mirrored")
    return Split(dim)


@register_mirror(operator.getitem)
def _getitem(call: Call) -> Embed:
    index = call.args[1] if isinstance(call.args[1], tuple) else (call.args[1],)
    if not index or index[0] != slice(None) or not all(isinstance(i, (slice, int)) for i in index):
        raise UnsupportedModuleError(
            f"indexing with {call.args[1]!r}; only slices and integers that keep the batch (e.g. x[:, :16]) "
            "can be mirrored"
        )
    rest = index[1:]
    return Embed(lambda shape: rest, all(i == slice(None) for i in rest[1:]), f"index={rest!r}")


def _along(dim: int, where: slice) -> Callable[[tuple[int, ...]], tuple[Any, ...]]:
    """The index of ``where`` along ``dim`` (counted with the batch) of an input of ``shape`` (without it)."""
    return lambda shape: (slice(None),) * (dim % (len(shape) + 1) - 1) + (where,)


@register_mirror(torch.chunk, torch.Tensor.chunk, torch.split, torch.Tensor.split, torch.narrow, torch.Tensor.narrow)
def _piece(call: Call) -> Embed:
    target = call.target if not isinstance(call.target, str) else getattr(torch.Tensor, call.target)
    name = getattr(target, "__name__", str(target))
    if name == "narrow":
        dim, start, length = (list(call.args[1:]) + [call.kwargs.get(k) for k in ("dim", "start", "length")])[:3]
        if dim == 0:
            raise UnsupportedModuleError("narrow along the batch dimension cannot be mirrored")
        return Embed(
            _along(dim, slice(start, start + length)),
            dim in (1, -3),
            f"narrow dim={dim}, start={start}, length={length}",
        )
    if call.item is None:
        raise UnsupportedModuleError(f"{name} whose pieces are not taken one by one with [i]")
    dim = _dim(call, 2, 0)
    if dim == 0:
        raise UnsupportedModuleError(f"{name} along the batch dimension cannot be mirrored")
    parts = call.args[1] if len(call.args) > 1 else call.kwargs.get("chunks", call.kwargs.get("split_size_or_sections"))
    item = call.item

    def index(shape: tuple[int, ...]) -> tuple[Any, ...]:  # the forward pass's pieces, from the input's size
        axis = dim % (len(shape) + 1)
        pieces = (
            torch.arange(shape[axis - 1]).chunk(parts)
            if name == "chunk"
            else torch.arange(shape[axis - 1]).split(parts)
        )
        taken = pieces[item]
        return _along(dim, slice(int(taken[0]), int(taken[-1]) + 1))(shape)

    return Embed(index, dim in (1, -3), f"{name}({parts}, dim={dim})[{item}]")


@register_mirror(
    torch.Tensor.view,
    torch.reshape,
    torch.Tensor.reshape,
    torch.flatten,
    torch.Tensor.flatten,
    torch.squeeze,
    torch.Tensor.squeeze,
    torch.unsqueeze,
    torch.Tensor.unsqueeze,
)
def _reshape(call: Call) -> Unflatten:
    name = getattr(call.target, "__name__", call.target)
    if name == "flatten" and call.kwargs.get("start_dim", call.args[1] if len(call.args) > 1 else 0) == 0:
        raise UnsupportedModuleError("flatten with start_dim=0 flattens the batch; only flatten(x, 1) keeps it")
    return Unflatten()


@register_mirror("torchvision.ops.stochastic_depth.stochastic_depth")
def _stochastic_depth(call: Call) -> PassThrough:
    """torchvision's stochastic depth (EfficientNet, ConvNeXt): the identity in evaluation mode."""
    if call.kwargs.get("training", call.args[3] if len(call.args) > 3 else True) is not False:
        raise UnsupportedModuleError("stochastic_depth in training mode (it drops rows at random)")
    return PassThrough()


@register_mirror(torch.Tensor.contiguous, F.dropout, F.dropout2d, F.dropout1d, F.alpha_dropout)
def _identity(call: Call) -> PassThrough:
    return PassThrough()


@register_mirror(torch.permute, torch.Tensor.permute)
def _permute(call: Call) -> Unpermute:
    dims = call.args[1:] if len(call.args) > 2 or not isinstance(call.args[1], (tuple, list)) else tuple(call.args[1])
    dims = tuple(call.kwargs.get("dims", dims))
    return Unpermute(lambda ndim: dims, f"permute{dims}", len(dims))


@register_mirror(torch.transpose, torch.Tensor.transpose, torch.swapaxes, torch.Tensor.swapaxes)
def _transpose(call: Call) -> Unpermute:
    a, b = call.args[1:3]

    def order(ndim: int) -> tuple[int, ...]:
        dims = list(range(ndim))
        dims[a], dims[b] = dims[b], dims[a]
        return tuple(dims)

    return Unpermute(order, f"transpose({a}, {b})")


@register_mirror(torch.mean, torch.Tensor.mean)
def _mean(call: Call) -> TransposedMean:
    dims = call.kwargs.get("dim", call.args[1] if len(call.args) > 1 else None)
    dims = (dims,) if isinstance(dims, int) else tuple(dims) if dims is not None else ()
    if not dims or 0 in dims:
        raise UnsupportedModuleError("a mean over the batch dimension (or over everything) cannot be mirrored")
    return TransposedMean(dims, bool(call.kwargs.get("keepdim", call.args[2] if len(call.args) > 2 else False)))
