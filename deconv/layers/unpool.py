"""Unpooling with switches: the approximate inverse of max pooling."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .base import Geometry, MirrorModule, fit, layout, pair

__all__ = ["Unpool2d"]


class Unpool2d(MirrorModule):
    """Places each value at the input position its max-pool window chose (the switch).

    Where overlapping windows chose the same position their values add up (``F.max_unpool2d``
    would overwrite). ``(N, C, H_out, W_out) -> (N, C, H_in, W_in)``.

    ``adaptive`` mirrors ``AdaptiveMaxPool2d(output_size)``; otherwise ``MaxPool2d`` with the
    given kernel, stride, padding, dilation and ``ceil_mode``.
    """

    def __init__(
        self,
        kernel_size: int | tuple[int, int] = 2,
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        ceil_mode: bool = False,
        adaptive: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.adaptive = adaptive
        self.ceil_mode = ceil_mode
        if adaptive is None:
            self.geometry = Geometry(pair(kernel_size), pair(stride or kernel_size), pair(padding), pair(dilation))
        else:
            self.geometry = None

    def switches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Max pool ``x`` ``(N, C, H_in, W_in)``, returning the output and its switches (flat input indices)."""
        if self.adaptive is not None:
            return F.adaptive_max_pool2d(x, self.adaptive, return_indices=True)
        g = self.geometry
        return F.max_pool2d(x, g.kernel, g.stride, g.padding, g.dilation, self.ceil_mode, return_indices=True)

    def remember(self, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, ...]:
        """The switches: flat input indices ``(N, C, H_out, W_out)``, as ``F.max_pool2d`` gives them."""
        return self.switches(x)[1], tuple(x.shape[-2:])

    def remember_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[Any, ...]]:
        """``self``'s pooling of ``x`` and its memory: for each output position the tap of its window
        that won, ``t_y * kernel_w + t_x``, as ``uint8`` ``(N, C, H_out, W_out)`` (small, and cheap to
        cut into windows); then the input size and padding. Adaptive pools (no fixed geometry) keep
        flat switches, as ``F.max_pool2d`` gives them."""
        y, switches = self.switches(x)
        if self.geometry is None or self.geometry.kernel[0] * self.geometry.kernel[1] > 255:
            return y, (switches, tuple(x.shape[-2:]))
        g = self.geometry
        width = x.shape[-1]
        rows = torch.arange(y.shape[-2], device=x.device).view(-1, 1) * g.stride[0] - g.padding[0]
        cols = torch.arange(y.shape[-1], device=x.device).view(1, -1) * g.stride[1] - g.padding[1]
        t_y = torch.div(switches, width, rounding_mode="floor").sub_(rows)
        t_x = switches.remainder(width).sub_(cols)
        if g.dilation != (1, 1):
            t_y = t_y.div_(g.dilation[0], rounding_mode="floor")
            t_x = t_x.div_(g.dilation[1], rounding_mode="floor")
        taps = t_y.mul_(g.kernel[1]).add_(t_x).to(torch.uint8)
        return y, (taps, tuple(x.shape[-2:]), g.padding)

    def restrict(self, memory: tuple[Any, ...], origin: torch.Tensor, size: tuple[int, int]) -> tuple[Any, ...]:
        if memory[0].dtype == torch.uint8:  # taps are relative to their window: only the size changes
            return memory[0], size, (0, 0)
        switches, (_, width) = memory
        oy = origin[:, 0].view(-1, 1, 1, 1)
        ox = origin[:, 1].view(-1, 1, 1, 1)
        local = (switches // width - oy) * size[1] + (switches % width - ox)
        return local.clamp_(0, size[0] * size[1] - 1), size

    def forward(
        self,
        signal: torch.Tensor,
        switches: torch.Tensor,
        input_size: tuple[int, int],
        padding: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """``switches``: flat input indices (``int64``, as :meth:`remember` and ``F.max_pool2d`` give them),
        or ``uint8`` taps from :meth:`remember_forward` with the pool's ``padding`` (``(0, 0)`` for a
        window whose first row and column are those of its first output position's pool window)."""
        if switches.dtype == torch.uint8:
            return self._unpool_taps(signal, switches, input_size, padding or (0, 0))
        n, c = signal.shape[:2]
        out = signal.new_zeros(n, c, input_size[0] * input_size[1])
        out.scatter_add_(2, switches.flatten(2), signal.flatten(2))
        return out.view(n, c, *input_size)

    def _unpool_taps(
        self, signal: torch.Tensor, taps: torch.Tensor, input_size: tuple[int, int], padding: tuple[int, int]
    ) -> torch.Tensor:
        """Max pooling's own backward on the window the taps span (it sums where pool windows share an input)."""
        g = self.geometry
        k, c, h, w = signal.shape
        (s_y, s_x), (k_y, k_x), (d_y, d_x) = g.stride, g.kernel, g.dilation
        full = g.reads((h, w))
        t_y = torch.div(taps, k_x, rounding_mode="floor").long()
        starts = (
            torch.arange(h, device=signal.device).view(-1, 1) * (s_y * full[1])
            + torch.arange(w, device=signal.device).view(1, -1) * s_x
        )
        # tap t = t_y * k_x + t_x of output (i, j) reads full[t_y * d_y + i * s_y, t_x * d_x + j * s_x]
        index = t_y.mul_(d_y * full[1] - d_x * k_x).add_(taps.long().mul_(d_x)).add_(starts)
        like = torch.empty(k, c, *full, dtype=signal.dtype, device=signal.device, memory_format=layout(signal))
        out = torch.ops.aten.max_pool2d_with_indices_backward(
            signal, like, [k_y, k_x], [s_y, s_x], [0, 0], [d_y, d_x], False, index
        )
        return fit(out, padding, input_size)

    @property
    def disjoint(self) -> bool:  # type: ignore[override]
        """Whether no two pool windows share an input position (stride at least the window's span)."""
        g = self.geometry
        return g is not None and g.stride[0] >= g.span(0) and g.stride[1] >= g.span(1)

    def extra_repr(self) -> str:
        if self.adaptive is not None:
            return f"adaptive={self.adaptive}"
        g = self.geometry
        return (
            f"kernel={g.kernel}, stride={g.stride}, padding={g.padding}, "
            f"dilation={g.dilation}, ceil_mode={self.ceil_mode}"
        )
