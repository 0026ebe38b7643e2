"""Cutting and placing windows of feature maps: the tensor work behind cones (:mod:`deconv.engine.field`).

A window is a top-left ``origin`` ``(K, 2)`` per selection and a ``size`` ``(h, w)`` shared by all K
selections. :func:`crop` takes windows that may lie partly outside the map; the reverse pass keeps
its windows inside their maps and uses :func:`window`, :func:`shift` and :func:`clip`, which need no masks.
"""

from __future__ import annotations

import torch

from ..layers.base import layout

__all__ = ["crop", "inside", "window", "shift", "reach", "clip", "add_at", "place"]


def _grid(origin: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = origin[:, :1] + torch.arange(size[0], device=origin.device)
    cols = origin[:, 1:] + torch.arange(size[1], device=origin.device)
    return rows, cols  # (K, h), (K, w)


def inside(origin: torch.Tensor, size: tuple[int, int], shape: tuple[int, int]) -> torch.Tensor | None:
    """``(K, 1, h, w)`` mask of window positions inside a map of ``shape``; ``None`` if all are."""
    if bool((origin >= 0).all()) and bool((origin + origin.new_tensor(size) <= origin.new_tensor(shape)).all()):
        return None
    rows, cols = _grid(origin, size)
    ok_rows = (rows >= 0) & (rows < shape[0])
    ok_cols = (cols >= 0) & (cols < shape[1])
    return (ok_rows[:, :, None] & ok_cols[:, None, :]).unsqueeze(1)


def _gather(
    maps: torch.Tensor,
    image: torch.Tensor,
    origin: torch.Tensor,
    size: tuple[int, int],
    memory_format: torch.memory_format,
) -> torch.Tensor:
    """Windows of ``size`` at ``origin[k]`` in ``maps[image[k]]`` ``(N, C, H, W)``: ``(K, C, h, w)``, zero where
    they leave the map. One slice copy per window (on CPU, 2-3x faster than a gather from unfolded maps)."""
    (h, w), (rows, cols) = size, maps.shape[-2:]
    out = torch.empty(
        len(origin), maps.shape[1], h, w, dtype=maps.dtype, device=maps.device, memory_format=memory_format
    )
    cuts = [
        (i, y, x, max(y, 0), max(x, 0), min(y + h, rows), min(x + w, cols))
        for i, (y, x) in zip(image.tolist(), origin.tolist())
    ]
    if any((y0, x0, y1, x1) != (y, x, y + h, x + w) for _, y, x, y0, x0, y1, x1 in cuts):
        out.zero_()
    for k, (i, y, x, y0, x0, y1, x1) in enumerate(cuts):
        if y1 > y0 and x1 > x0:
            out[k, :, y0 - y : y1 - y, x0 - x : x1 - x] = maps[i, :, y0:y1, x0:x1]
    return out


def crop(maps: torch.Tensor, origin: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Receptive-field boxes: box ``k`` of ``size`` at ``origin[k]`` in ``maps[k]`` ``(K, C, H, W)``, zero
    where it leaves the map, ``(K, C, h, w)``; and the mask of its pixels inside the map ``(K, 1, h, w)``.

    The one way every projection, image patch and tile is cut to its box.
    """
    mask = inside(origin, size, tuple(maps.shape[-2:]))
    if mask is None:
        mask = torch.ones(maps.shape[0], 1, *size, dtype=torch.bool, device=maps.device)
    return shift(maps, origin, size).contiguous(), mask


def window(
    maps: torch.Tensor, image: torch.Tensor, origin: torch.Tensor, size: tuple[int, int], channels_last: bool = False
) -> torch.Tensor:
    """Windows that lie inside per-image maps: ``(N, C, H, W) -> (K, C, h, w)``, image ``image[k]`` at ``origin[k]``.

    One gather, no clamping and no masks; a window covering the whole map is just ``maps[image]``.
    """
    if size == tuple(maps.shape[-2:]):
        out = maps.index_select(0, image)
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out
    return _gather(maps, image, origin, size, torch.channels_last if channels_last else torch.contiguous_format)


def shift(signal: torch.Tensor, offset: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Windows of windows: ``(K, C, h, w) -> (K, C, size)``, window ``k`` starting at ``offset[k]`` in
    ``signal[k]``; zero where it leaves ``signal[k]``. Keeps the memory format; a view when all offsets
    agree and the windows lie inside."""
    k, _, h, w = signal.shape
    y, x = offset[0].tolist()
    if bool((offset == offset[0]).all()) and 0 <= y <= h - size[0] and 0 <= x <= w - size[1]:
        return signal[:, :, y : y + size[0], x : x + size[1]]
    return _gather(signal, torch.arange(k, device=signal.device), offset, size, layout(signal))


def reach(
    cone: torch.Tensor,
    cone_size: tuple[int, int],
    bound: torch.Tensor,
    bound_size: tuple[int, int],
    shape: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per k, the part of window ``cone[k]`` that lies inside window ``bound[k]`` and a map of ``shape``:
    its first and one-past-last positions ``(K, 2)`` each."""
    lo = torch.maximum(torch.maximum(cone, bound), torch.zeros_like(cone))
    hi = torch.minimum(
        torch.minimum(cone + cone.new_tensor(cone_size), bound + bound.new_tensor(bound_size)), cone.new_tensor(shape)
    )
    return lo, hi


def clip(
    cone: torch.Tensor,
    cone_size: tuple[int, int],
    bound: torch.Tensor,
    bound_size: tuple[int, int],
    shape: tuple[int, int],
) -> tuple[torch.Tensor, tuple[int, int]]:
    """The smallest windows of one shared size inside a map of ``shape`` that hold, for every k, the
    part of window ``cone[k]`` (of ``cone_size``) that lies inside window ``bound[k]`` and the map.

    Where it can, window k also stays inside ``bound[k]`` (so that cutting it from there needs no zeros).
    """
    limit = cone.new_tensor(shape)
    lo, hi = reach(cone, cone_size, bound, bound_size, shape)
    size = (hi - lo).clamp(min=1).amax(0)
    # any origin in [hi - size, lo] holds [lo, hi); keep it in the map, then, if possible, in the bound
    low = torch.maximum(hi - size, torch.zeros_like(hi))
    high = torch.minimum(lo, limit - size)
    origin = torch.minimum(torch.maximum(high, low), high)
    origin = torch.minimum(torch.maximum(origin, bound), (bound + bound.new_tensor(bound_size) - size))
    origin = torch.minimum(torch.maximum(origin, low), high)
    return origin, (int(size[0]), int(size[1]))


def add_at(maps: torch.Tensor, windows: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
    """Adds windows that lie inside the maps, in place: ``maps[k, :, origin[k] + (h, w)] += windows[k]``.

    ``maps`` ``(K, C, H, W)``, ``windows`` ``(K, C, h, w)``; one slice when all origins agree, else one
    per window (on CPU, faster than any scatter into windows of a map). Returns ``maps``.
    """
    h, w = windows.shape[-2:]
    first = origin[0]
    if bool((origin == first).all()):
        y, x = first.tolist()
        maps[:, :, y : y + h, x : x + w] += windows
        return maps
    for k, (y, x) in enumerate(origin.tolist()):
        maps[k, :, y : y + h, x : x + w] += windows[k]
    return maps


def place(windows: torch.Tensor, origin: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Windows that lie inside a map into zero maps: ``(K, C, h, w) -> (K, C, H, W)`` (contiguous)."""
    k, c = windows.shape[:2]
    return add_at(windows.new_zeros(k, c, shape[0], shape[1]), windows, origin)
