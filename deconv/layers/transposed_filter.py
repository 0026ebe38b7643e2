"""Filtering in reverse: transposed convolution with the convolution's own filters."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import Geometry, MirrorModule, Shared, fit, layout, pair

__all__ = ["TransposedFilter", "TransposedFilter1d"]

SUB_PIXEL_CHANNELS = 4
"""A strided transposed convolution that writes at most this many channels (the one into the image)
runs as one ordinary convolution of all its output phases: oneDNN's transposed convolution is 2-3x
slower when it writes so few channels."""


def _sub_pixel(signal: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """``conv_transpose2d(signal, weight, stride=stride)``, uncropped, as a convolution per output phase.

    Output row ``s * q + r`` takes taps ``r, r + s, ...`` of the filters from input rows ``q, q - 1, ...``;
    one convolution computes all ``s_y * s_x`` phases as channels, interleaved afterwards.
    ``(N, C_out, h, w) -> (N, C_in, (h - 1) * s_y + k_y, (w - 1) * s_x + k_x)``.
    """
    c_out, c_in, k_y, k_x = weight.shape
    (s_y, s_x), n, _, h, w = stride, *signal.shape
    m_y, m_x = -(-k_y // s_y), -(-k_x // s_x)  # taps per phase
    taps = F.pad(weight, (0, m_x * s_x - k_x, 0, m_y * s_y - k_y)).view(c_out, c_in, m_y, s_y, m_x, s_x)
    phases = taps.flip(2, 4).permute(1, 3, 5, 0, 2, 4).reshape(c_in * s_y * s_x, c_out, m_y, m_x)
    out = F.conv2d(signal, phases, padding=(m_y - 1, m_x - 1))  # (N, C_in * s_y * s_x, h + m_y - 1, w + m_x - 1)
    rows, cols = out.shape[-2:]
    out = out.view(n, c_in, s_y, s_x, rows, cols).permute(0, 1, 4, 2, 5, 3).reshape(n, c_in, rows * s_y, cols * s_x)
    return out[..., : (h - 1) * s_y + k_y, : (w - 1) * s_x + k_x]


def _spread(signal: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """Values ``stride`` apart in zeros: ``(N, C, h, w) -> (N, C, (h - 1) * s_y + 1, (w - 1) * s_x + 1)``,
    same layout."""
    n, c, h, w = signal.shape
    size = ((h - 1) * stride[0] + 1, (w - 1) * stride[1] + 1)
    out = torch.empty(n, c, *size, dtype=signal.dtype, device=signal.device, memory_format=layout(signal))
    out.zero_()[..., :: stride[0], :: stride[1]] = signal
    return out


class TransposedFilter(MirrorModule):
    """Convolves the signal with the transposed filters of ``conv``; no bias.

    ``weight`` *is* ``conv.weight`` (shared, never copied, read at every call). Any stride, padding, dilation, groups
    and kernel shape; the output has exactly the size of the conv's input in the forward pass.
    Takes per-channel ``factors`` of its signal into its filters. ``(N, C_out, H_out, W_out) -> (N, C_in, H_in, W_in)``.
    """

    takes_factors = True

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if isinstance(conv.padding, str):  # "same" / "valid": resolve to numbers
            padding = (
                (0, 0)
                if conv.padding == "valid"
                else tuple(d * (k - 1) // 2 for k, d in zip(conv.kernel_size, conv.dilation))
            )
        else:
            padding = pair(conv.padding)
        object.__setattr__(self, "conv", conv)  # read, not owned: no copy, no submodule
        self.constants = tuple(getattr(conv, "constants", ()))  # filters computed in the forward pass
        self.groups = conv.groups
        self.in_channels = conv.in_channels
        self.geometry = Geometry(pair(conv.kernel_size), pair(conv.stride), padding, pair(conv.dilation))

    @property
    def weight(self) -> torch.Tensor:
        """The convolution's filters, read at every call: shared, and a parameter replaced on the model is used."""
        return self.conv.weight

    def remember(self, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, ...]:
        return tuple(x.shape[-2:]), self.geometry.padding

    def restrict(self, memory: tuple[Any, ...], origin: torch.Tensor, size: tuple[int, int]) -> tuple[Any, ...]:
        return size, (0, 0), *memory[2:]

    def forward(
        self,
        signal: torch.Tensor,
        input_size: tuple[int, int],
        padding: tuple[int, int],
        *filters: Shared,
        factors: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``padding``: rows and columns of the full transposed output that lie before the input's first;
        ``filters``: the forward pass's, where it computed them (else ``weight``); ``factors`` ``(C_out,)``: what the
        signal's channels are multiplied by first."""
        g = self.geometry
        weight = filters[0].value if filters else self.weight
        weight = weight if factors is None else weight * factors.view(-1, 1, 1, 1)
        if g.stride != (1, 1) and g.kernel == (1, 1):  # taps apart: filter at stride 1, then spread out
            return fit(_spread(F.conv_transpose2d(signal, weight, groups=self.groups), g.stride), padding, input_size)
        if weight.shape[1] <= SUB_PIXEL_CHANNELS and g.stride != (1, 1) and self.groups == 1 and g.dilation == (1, 1):
            return fit(_sub_pixel(signal, weight, g.stride), padding, input_size)
        extra = [input_size[a] - ((signal.shape[2 + a] - 1) * g.stride[a] - 2 * padding[a] + g.span(a)) for a in (0, 1)]
        cut = [min(e, 0) for e in extra]  # conv padding "same" can ask for a smaller output than full
        out = F.conv_transpose2d(
            signal,
            weight,
            None,
            g.stride,
            padding,
            [max(e, 0) for e in extra],
            self.groups,
            g.dilation,
        )
        if cut != [0, 0]:
            out = out[..., : input_size[0], : input_size[1]]
        return out

    def extra_repr(self) -> str:
        g = self.geometry
        return (
            f"{self.weight.shape[0]}->{self.weight.shape[1] * self.groups}, kernel={g.kernel}, "
            f"stride={g.stride}, padding={g.padding}, dilation={g.dilation}, groups={self.groups}"
        )


def _one(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


class _Rows:
    """A 1-D convolution seen as a 2-D one over maps of one row: filters ``(C_out, C_in / groups, 1, k)``, a view of
    the convolution's own, taken at every read."""

    def __init__(self, conv: nn.Conv1d) -> None:
        object.__setattr__(self, "conv", conv)
        self.kernel_size = (1, *_one(conv.kernel_size))
        self.stride = (1, *_one(conv.stride))
        self.padding = conv.padding if isinstance(conv.padding, str) else (0, *_one(conv.padding))
        self.dilation = (1, *_one(conv.dilation))
        self.groups = conv.groups
        self.in_channels = conv.in_channels

    @property
    def weight(self) -> torch.Tensor:
        return self.conv.weight.unsqueeze(2)


class TransposedFilter1d(MirrorModule):
    """A 1-D convolution in reverse (timm's ECA gate): :class:`TransposedFilter` of the convolution seen as a 2-D one
    over maps of one row, so the filters are the convolution's own (shared, read at every call). Takes per-channel
    ``factors``. The engine's windows are 2-D: whole signals. ``(N, C_out, L_out) -> (N, C_in, L_in)``.
    """

    geometry = None
    takes_factors = True

    def __init__(self, conv: nn.Conv1d) -> None:
        super().__init__()
        object.__setattr__(self, "conv", conv)  # read, not owned
        self.filter = TransposedFilter(_Rows(conv))  # type: ignore[arg-type]
        self.constants = tuple(getattr(conv, "constants", ()))
        self.in_channels = conv.in_channels

    @property
    def weight(self) -> torch.Tensor:
        """The convolution's filters ``(C_out, C_in / groups, k)``, read at every call."""
        return self.conv.weight

    def remember(self, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, ...]:
        return self.filter.remember(x.unsqueeze(2), y.unsqueeze(2))

    def forward(self, signal: torch.Tensor, *memory: Any, factors: torch.Tensor | None = None) -> torch.Tensor:
        rows = (*memory[:2], *(Shared(f.value.unsqueeze(2)) for f in memory[2:]))  # filters of one row
        return self.filter(signal.unsqueeze(2), *rows, factors=factors).squeeze(2)
