"""Windows of feature maps, by hand: crop, inside, window, shift, clip."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from deconv.engine.windows import clip, crop, inside, shift, window


def test_crop_cuts_boxes_zero_outside_with_their_mask() -> None:
    maps = torch.arange(24.0).view(2, 1, 3, 4)
    boxes, mask = crop(maps, torch.tensor([[0, 1], [-1, 3]]), (2, 2))
    assert boxes.shape == (2, 1, 2, 2) and mask.shape == (2, 1, 2, 2) and mask.dtype == torch.bool
    assert boxes[0, 0].tolist() == [[1.0, 2.0], [5.0, 6.0]]  # map 0, rows 0-1, cols 1-2
    assert boxes[1, 0].tolist() == [[0.0, 0.0], [15.0, 0.0]]  # map 1, row -1 and col 4 lie outside
    assert mask[0].all() and mask[1, 0].tolist() == [[False, False], [True, False]]


def test_inside_masks_positions_outside_the_map() -> None:
    assert inside(torch.tensor([[0, 0], [1, 2]]), (2, 2), (3, 4)) is None
    mask = inside(torch.tensor([[-1, 3], [0, 0]]), (2, 2), (3, 4))
    assert mask.shape == (2, 1, 2, 2)
    assert mask[0, 0].tolist() == [[False, False], [True, False]] and bool(mask[1].all())


def test_window_cuts_windows_that_lie_inside_the_maps() -> None:
    maps = torch.arange(24.0).view(2, 1, 3, 4)
    image, origin = torch.tensor([1, 0]), torch.tensor([[1, 1], [0, 2]])
    for channels_last in (False, True):
        windows = window(maps, image, origin, (2, 2), channels_last=channels_last)
        assert windows.shape == (2, 1, 2, 2)
        assert windows[0, 0].tolist() == [[17.0, 18.0], [21.0, 22.0]] and windows[1, 0].tolist() == [
            [2.0, 3.0],
            [6.0, 7.0],
        ]
    whole = window(maps, torch.tensor([1, 1, 0]), torch.zeros(3, 2, dtype=torch.long), (3, 4))
    assert torch.equal(whole, maps[[1, 1, 0]])


def test_shift_takes_windows_of_windows_with_zeros_outside() -> None:
    signal = torch.tensor([[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]], [[[7.0, 8.0, 9.0], [10.0, 11.0, 12.0]]]])
    out = shift(signal, torch.tensor([[-1, 0], [0, 1]]), (2, 2))
    assert out[0, 0].tolist() == [[0.0, 0.0], [1.0, 2.0]] and out[1, 0].tolist() == [[8.0, 9.0], [11.0, 12.0]]
    same = shift(signal, torch.tensor([[1, 2], [1, 2]]), (2, 3))
    assert same[:, 0].tolist() == [[[6.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [[12.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]
    last = shift(signal.contiguous(memory_format=torch.channels_last), torch.tensor([[0, 1], [1, -1]]), (1, 2))
    assert last[:, 0].tolist() == [[[2.0, 3.0]], [[0.0, 10.0]]]


@given(
    st.lists(st.tuples(st.integers(-5, 6), st.integers(-5, 6)), min_size=1, max_size=4),
    st.tuples(st.integers(1, 5), st.integers(1, 5)),
    st.booleans(),
)
def test_shift_equals_cutting_from_zero_padded_windows(offsets, size, channels_last) -> None:
    signal = torch.randn(len(offsets), 3, 4, 5, dtype=torch.float64)
    if channels_last:
        signal = signal.contiguous(memory_format=torch.channels_last)
    out = shift(signal, torch.tensor(offsets), size)
    padded = torch.nn.functional.pad(signal, (6, 6, 6, 6))  # any window of these offsets lies inside
    for k, (y, x) in enumerate(offsets):
        assert torch.equal(out[k], padded[k, :, y + 6 : y + 6 + size[0], x + 6 : x + 6 + size[1]])
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format) or (
        len(set(offsets)) == 1  # a view of the signal
    )


def test_clip_by_hand() -> None:
    # cone rows -2..2, cols 1..3; bound rows -1..2, cols 0..5; map 3x5: the part in all three is rows 0..2, cols 1..3
    origin, size = clip(torch.tensor([[-2, 1]]), (5, 3), torch.tensor([[-1, 0]]), (4, 6), (3, 5))
    assert origin.tolist() == [[0, 1]] and size == (3, 3)


@given(
    st.lists(st.tuples(*[st.integers(-6, 12)] * 4), min_size=1, max_size=4),
    st.tuples(st.integers(1, 7), st.integers(1, 7)),
    st.tuples(st.integers(1, 9), st.integers(1, 9)),
    st.tuples(st.integers(1, 10), st.integers(1, 10)),
)
def test_clip_gives_the_smallest_shared_window_in_the_map_holding_each_cone(rows, cone_size, bound_size, shape) -> None:
    cone = torch.tensor([[a, b] for a, b, _, _ in rows])
    bound = torch.tensor([[c, d] for _, _, c, d in rows])
    origin, size = clip(cone, cone_size, bound, bound_size, shape)
    need = []
    for k in range(len(rows)):
        for axis in (0, 1):
            lo = max(int(cone[k, axis]), int(bound[k, axis]), 0)
            hi = min(int(cone[k, axis]) + cone_size[axis], int(bound[k, axis]) + bound_size[axis], shape[axis])
            assert 0 <= origin[k, axis] and origin[k, axis] + size[axis] <= shape[axis]  # inside the map
            if hi > lo:  # holds the part of the cone inside the bound and the map
                assert origin[k, axis] <= lo and hi <= origin[k, axis] + size[axis]
            need.append((axis, hi - lo))
    for axis in (0, 1):  # and is no larger than the largest such part
        assert size[axis] == max(1, *[n for a, n in need if a == axis])
