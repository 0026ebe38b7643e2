"""The deconvnet's modules: each maps a reconstruction at a layer's output back to its input."""

from .activation_gradient import ActivationGradient, VectorJacobian
from .base import POINTWISE, Geometry, MirrorModule
from .channel_scale import ChannelScale
from .distribute import Distribute
from .embed import Embed
from .gradient import ReLUGradient
from .guided import GuidedRectify
from .linear_transpose import LinearTranspose
from .normalize import Normalize
from .pass_through import PassThrough
from .product import Gated, Product, Ungated
from .rectify import Rectify
from .scale import Scale
from .split import Split
from .transposed_average import TransposedAverage
from .transposed_filter import TransposedFilter, TransposedFilter1d
from .transposed_linear import TransposedLinear
from .transposed_mean import TransposedMean
from .unflatten import Unflatten
from .unpermute import Unpermute
from .unpool import Unpool2d

__all__ = [
    "Geometry",
    "POINTWISE",
    "MirrorModule",
    "Unpool2d",
    "Rectify",
    "TransposedFilter",
    "TransposedFilter1d",
    "TransposedLinear",
    "Unflatten",
    "ChannelScale",
    "TransposedAverage",
    "PassThrough",
    "GuidedRectify",
    "ReLUGradient",
    "ActivationGradient",
    "VectorJacobian",
    "Normalize",
    "LinearTranspose",
    "Gated",
    "Product",
    "Ungated",
    "Distribute",
    "Split",
    "Embed",
    "Scale",
    "Unpermute",
    "TransposedMean",
]
