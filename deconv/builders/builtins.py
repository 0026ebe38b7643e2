"""Mirrors of the layers a real CNN has, registered the way users register theirs."""
from __future__ import annotations

from torch import nn

from ..errors import UnsupportedModuleError
from ..layers import (
    ChannelScale,
    PassThrough,
    Rectify,
    TransposedAverage,
    TransposedFilter,
    TransposedLinear,
    Unflatten,
    Unpool2d,
)
from ..layers.base import pair
from ..layers.transposed_average import adaptive_axis_pool, average_axis_pool
from .registry import register_mirror


@register_mirror(nn.Conv2d)
def _conv(conv: nn.Conv2d) -> TransposedFilter:
    if conv.padding_mode != "zeros":
        raise UnsupportedModuleError(f"Conv2d with padding_mode={conv.padding_mode!r} (only 'zeros' can be mirrored)")
    return TransposedFilter(conv)


@register_mirror(nn.ReLU)
def _relu(relu: nn.ReLU) -> Rectify:
    return Rectify()


@register_mirror(nn.MaxPool2d)
def _max_pool(pool: nn.MaxPool2d) -> Unpool2d:
    return Unpool2d(pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode)


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
