"""What every mirror module shares: its geometry and the memory it keeps from the forward pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Geometry", "POINTWISE", "MirrorModule", "Shared", "fit", "layout", "pair"]


def pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    """``3 -> (3, 3)``; ``(3, 5) -> (3, 5)``."""
    if isinstance(value, int):
        return (value, value)
    if len(value) == 1:
        return (value[0], value[0])
    return (int(value[0]), int(value[1]))


@dataclass(frozen=True)
class Geometry:
    """How output positions of a layer see its input, per axis ``(h, w)``.

    Output row ``o`` reads input rows ``o * stride - padding + t * dilation`` for ``t < kernel``.
    A mirror whose ``geometry`` is ``None`` mixes all positions (``Linear``, ``Flatten``).
    """

    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)

    def span(self, axis: int) -> int:
        """Input rows (or columns) one output position reads: ``dilation * (kernel - 1) + 1``."""
        return self.dilation[axis] * (self.kernel[axis] - 1) + 1

    def reads(self, size: tuple[int, int]) -> tuple[int, int]:
        """The size of the input window an output window of ``size`` reads."""
        return (size[0] - 1) * self.stride[0] + self.span(0), (size[1] - 1) * self.stride[1] + self.span(1)


POINTWISE = Geometry()


def layout(t: torch.Tensor) -> torch.memory_format:
    """``torch.channels_last`` for a 4-D tensor whose channels lie innermost (a channels-last tensor or a
    window of one) and that is not also contiguous, else the default."""
    channels_last = t.dim() == 4 and t.stride(1) == 1 and t.shape[1] > 1 and not t.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


def fit(full: torch.Tensor, padding: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """The input's rows and columns of a full transposed output: ``padding`` cut before, zeros after
    where no tap reaches (``ceil_mode``, ``output_padding``)."""
    out = full[..., padding[0] : padding[0] + size[0], padding[1] : padding[1] + size[1]]
    short = (size[0] - out.shape[-2], size[1] - out.shape[-1])
    return F.pad(out, (0, short[1], 0, short[0])) if short != (0, 0) else out


@dataclass(frozen=True, eq=False)
class Shared:
    """A tensor in a mirror's memory that is the same for every image (filters the forward pass computed from the
    parameters): kept as it is, never picked per image nor cut to a window."""

    value: torch.Tensor


class MirrorModule(nn.Module):
    """Maps a reconstruction of a layer's output ``(N, C_out, ...)`` back to its input ``(N, C_in, ...)``.

    ``remember(*inputs, output)`` runs beside the forward pass and returns what ``forward`` needs to
    go back (the *memory*): tensors in it are per image, batch first and laid out like the layer's
    output ``(N, C, H_out, W_out)``; anything else (sizes) is shared by all images.
    ``forward(signal, *memory)`` returns the signal for the layer's input, or a tuple of signals,
    one per input tensor, for layers of several inputs (``torch.cat``, ``x + y``).

    The engine asks a mirror what it can do through these attributes, never through its type:

    - ``geometry``: how output positions read input positions (``POINTWISE`` keeps windows as they
      are; ``None`` mixes all positions, so the engine hands it whole maps), for maps laid out ``(N, C, H, W)``;
    - ``per_position``: its layer acts at each position of a map on its own, whatever axis the channels lie on
      (elementwise, or along the last axis alone: a ``Linear``, a ``LayerNorm`` over the last dimension), so on a
      map laid out channels-last, ``(N, H, W, C)``, it reads only the positions it writes (the receptive field
      stays local through ConvNeXt's ``permute -> LayerNorm -> Linear -> permute``; the reverse pass, whose
      windows cut the last two axes, goes on in whole maps past a permutation);
    - ``permutation(ndim)``: the axes its layer permutes a tensor of ``ndim`` dimensions into (``permute``,
      ``transpose``), or ``None``;
    - ``constants``: the tensors ``forward`` reads that the forward pass computes from parameters alone (a
      weight-standardised convolution's filters, :class:`deconv.engine.graph.Computed`): their values in that
      pass follow the memory, each as a :class:`Shared`;
    - ``in_channels``: the channels its layer takes, where known (checked against the images);
    - ``rectifies``: ``forward`` is ``relu(signal)``, nothing else;
    - ``disjoint``: it places values apart, never adding two, so ``relu`` commutes with it;
    - ``computes_forward``: ``remember_forward(x)`` gives the layer's output with the memory;
    - ``channel_factors()``: ``(C,)`` factors where ``forward`` multiplies channels by them, nothing
      else (the engine leaves them pending and hands them to the next mirror that takes them);
    - ``takes_factors``: ``forward(signal, *memory, factors=f)`` computes ``forward(signal * f)``
      (channels on axis 1), folding ``f`` into its own work;
    - ``reads_inputs``: ``remember`` reads the values of the layer's inputs, not only their shapes (the engine
      keeps an in-place layer's input intact for it);
    - ``stops``: no signal may pass through it (a gate's own function under the deconvnet rule): the walk refuses
      a model where its output is used other than by a ``silent`` input;
    - ``silent``: the inputs (by position) that get no signal (``forward`` returns ``None`` for them): a gate's
      branch under the deconvnet rule. The engine neither sends anything down a silent input nor counts it
      in the cone.
    """

    geometry: Geometry | None = POINTWISE
    per_position: bool = False
    constants: tuple[Any, ...] = ()
    in_channels: int | None = None
    rectifies: bool = False
    disjoint: bool = False
    computes_forward: bool = False
    takes_factors: bool = False
    reads_inputs: bool = False
    stops: bool = False
    silent: tuple[int, ...] = ()

    def permutation(self, ndim: int) -> tuple[int, ...] | None:
        """Output axis ``k`` is input axis ``permutation(ndim)[k]`` (a permute or transpose); ``None`` otherwise."""
        return None

    def channel_factors(self) -> torch.Tensor | None:
        """``(C,)`` factors if ``forward`` is ``signal`` times them per channel (axis 1); else ``None``."""
        return None

    def remember(self, *tensors: torch.Tensor) -> tuple[Any, ...]:
        """Memory of one forward step: ``remember(*inputs, output)``; nothing by default."""
        return ()

    def remember_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[Any, ...]]:
        """The layer's output on ``x`` and the memory, in one go (where ``computes_forward``)."""
        raise NotImplementedError(f"{type(self).__name__} does not compute its layer's output")

    def restrict(self, memory: tuple[Any, ...], origin: torch.Tensor, size: tuple[int, int]) -> tuple[Any, ...]:
        """Memory for a window of the input: ``origin`` ``(K, 2)`` its top-left in the input map, ``size`` ``(h, w)``.

        Per-image maps arrive already cut to the matching output window ``(K, C, h_out, w_out)``.
        Only mirrors with a local ``geometry`` and non-empty memory need to change anything.
        """
        return memory
