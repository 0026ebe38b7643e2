"""A selection: the one activation a projection starts from, parsed and checked once for every caller.

Every range check on an image index, a channel or a position lives here, so that the mirror, the
commands and ``deconv serve`` refuse the same things with the same one-line :class:`SelectionError`.
"""

from __future__ import annotations

import numbers
from typing import Any, Literal, NamedTuple

import torch

from .errors import SelectionError

__all__ = ["Position", "Selection", "integer", "check_channel", "check", "parse", "position"]

Position = tuple[int, int] | Literal["map"] | None
"""Where in a channel's map: ``None`` for the strongest activation, ``(y, x)``, or ``"map"`` for all of it."""


class Selection(NamedTuple):
    """One activation: channel ``channel`` of ``layer`` at ``(y, x)`` for image ``image``.

    ``y`` and ``x`` are ``None`` for layers that output vectors ``(N, F)``, and for the whole feature map.
    """

    image: int
    layer: str
    channel: int
    y: int | None = None
    x: int | None = None


def integer(value: Any, what: str) -> int:
    """``value`` as an int, refusing bools, floats and strings in one line."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if (
            isinstance(value, torch.Tensor)
            and value.numel() == 1
            and not value.is_floating_point()
            and value.dtype != torch.bool
        ):
            return int(value)
        raise SelectionError(f"{what} must be an integer, got {value!r} ({type(value).__name__})")
    return int(value)


def check_channel(layer: str, channel: int, count: int) -> None:
    """Raises ``SelectionError`` unless ``0 <= channel < count``, the channels of ``layer``."""
    if not 0 <= channel < count:
        raise SelectionError(
            f"channel {channel} is out of range for layer {layer!r} with {count} channels (valid: 0..{count - 1})"
        )


def check(s: Selection, shape: tuple[int, ...], n: int, need_position: bool = True) -> None:
    """Raises ``SelectionError`` for an image, channel or position out of range of ``n`` images and a layer
    whose output is ``shape`` ``(C, H, W)`` or ``(F,)``. ``need_position``: a map's selection names ``(y, x)``."""
    if not 0 <= s.image < n:
        raise SelectionError(f"image index {s.image} is out of range for {n} images (valid: 0..{n - 1})")
    check_channel(s.layer, s.channel, shape[0])
    given = s.y is not None or s.x is not None
    if len(shape) == 1 and given:
        raise SelectionError(f"layer {s.layer!r} outputs vectors {shape}; it has no positions (leave them None)")
    if (
        len(shape) == 3
        and (given or need_position)
        and not (s.y is not None and s.x is not None and 0 <= s.y < shape[1] and 0 <= s.x < shape[2])
    ):
        raise SelectionError(
            f"position ({s.y}, {s.x}) is out of range for layer {s.layer!r} whose maps are "
            f"{shape[1]}x{shape[2]} (valid: y in 0..{shape[1] - 1}, x in 0..{shape[2] - 1})"
        )


def parse(s: Any) -> Selection:
    """A :class:`Selection` from ``(image, layer, channel[, y, x])``, its numbers checked to be integers."""
    if not isinstance(s, (tuple, list)) or not 3 <= len(s) <= 5:
        raise SelectionError(f"a selection is (image, layer, channel[, y, x]), got {s!r}")
    y = None if len(s) < 4 or s[3] is None else integer(s[3], "y")
    x = None if len(s) < 5 or s[4] is None else integer(s[4], "x")
    return Selection(integer(s[0], "image index"), s[1], integer(s[2], "channel"), y, x)


def position(value: Any) -> tuple[int, int]:
    """A position ``(y, x)`` of integers, or ``SelectionError``."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise SelectionError(f"position must be None, 'map' or a pair (y, x) of integers, got {value!r}")
    return integer(value[0], "position y"), integer(value[1], "position x")
