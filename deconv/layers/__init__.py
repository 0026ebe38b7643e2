"""The deconvnet's modules: each maps a reconstruction at a layer's output back to its input."""
from .base import POINTWISE, Geometry, MirrorModule
from .channel_scale import ChannelScale
from .pass_through import PassThrough
from .rectify import Rectify
from .transposed_average import TransposedAverage
from .transposed_filter import TransposedFilter
from .transposed_linear import TransposedLinear
from .unflatten import Unflatten
from .unpool import Unpool2d

__all__ = [
    "Geometry",
    "POINTWISE",
    "MirrorModule",
    "Unpool2d",
    "Rectify",
    "TransposedFilter",
    "TransposedLinear",
    "Unflatten",
    "ChannelScale",
    "TransposedAverage",
    "PassThrough",
]
