"""TransposedFilter: transposed convolution with the conv's own filters, output sized like the conv's input."""

import pytest
import torch
from torch import nn

import deconv
from deconv.layers import TransposedFilter, TransposedFilter1d

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")


def conv_with(weight: list, **kwargs) -> nn.Conv2d:
    w = torch.tensor(weight, dtype=torch.float64)[None, None]
    conv = nn.Conv2d(1, 1, tuple(w.shape[2:]), bias=False, **kwargs).double()
    with torch.no_grad():
        conv.weight.copy_(w)
    return conv


def test_transposed_filter_by_hand_stride_one() -> None:
    conv = conv_with([[1, 2], [3, 4]])
    mirror = TransposedFilter(conv)
    x = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    signal = torch.tensor([[[[1.0, 0.0], [0.0, 2.0]]]], dtype=torch.float64)
    out = mirror(signal, *mirror.remember(x, conv(x)))
    assert out[0, 0].tolist() == [[1, 2, 0], [3, 6, 4], [0, 6, 8]]


def test_transposed_filter_by_hand_strided_and_padded() -> None:
    conv = conv_with([[1, 2, 3], [4, 5, 6], [7, 8, 9]], stride=2, padding=1)
    mirror = TransposedFilter(conv)
    x = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    memory = mirror.remember(x, conv(x))
    corner = mirror(torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]], dtype=torch.float64), *memory)
    assert corner[0, 0].tolist() == [[5, 6, 0], [8, 9, 0], [0, 0, 0]]  # output (0, 0) reads rows/cols -1..1
    far = mirror(torch.tensor([[[[0.0, 0.0], [0.0, 1.0]]]], dtype=torch.float64), *memory)
    assert far[0, 0].tolist() == [[0, 0, 0], [0, 1, 2], [0, 4, 5]]  # output (1, 1) reads rows/cols 1..3


def test_transposed_filter_shares_the_weight() -> None:
    conv = nn.Conv2d(3, 4, 3)
    mirror = deconv.builders.find_mirror_factory(conv)(conv)
    assert isinstance(mirror, TransposedFilter) and mirror.weight is conv.weight


ADJOINT_CASES = {
    "strided-padded": dict(cin=3, cout=4, kernel_size=3, stride=2, padding=1, size=(9, 8)),
    "non-square": dict(cin=2, cout=3, kernel_size=(2, 5), stride=(2, 1), padding=(1, 2), size=(7, 10)),
    "dilated": dict(cin=2, cout=2, kernel_size=3, dilation=(2, 3), padding=(2, 1), size=(11, 12)),
    "grouped": dict(cin=4, cout=6, kernel_size=3, groups=2, stride=2, size=(8, 9)),
    "depthwise": dict(cin=3, cout=3, kernel_size=(3, 1), groups=3, padding=(1, 0), size=(6, 5)),
    "same-even": dict(cin=2, cout=3, kernel_size=(4, 2), padding="same", size=(7, 6)),
    "same-even-dilated": dict(
        cin=2, cout=4, kernel_size=(2, 3), padding="same", dilation=(3, 2), groups=2, size=(9, 8)
    ),
    "valid": dict(cin=2, cout=2, kernel_size=3, padding="valid", size=(6, 7)),
    "output-padding": dict(cin=1, cout=2, kernel_size=3, stride=3, size=(10, 14)),  # 10 = 9 + 1, 14 = 12 + 2
    "stride-over-kernel": dict(cin=1, cout=2, kernel_size=2, stride=4, size=(11, 13)),  # unread rows and columns
    "everything": dict(
        cin=2, cout=2, kernel_size=(3, 2), stride=(4, 3), padding=(1, 1), dilation=(2, 1), size=(13, 12)
    ),
    # strided filters into few channels run as one sub-pixel convolution; 1x1 strided ones spread their output
    "image-layer": dict(cin=3, cout=8, kernel_size=7, stride=2, padding=3, size=(15, 16)),  # ResNet's stem
    "image-layer-wide-stride": dict(
        cin=3, cout=5, kernel_size=11, stride=4, padding=2, size=(31, 29)
    ),  # AlexNet's conv1
    "pointwise-strided": dict(cin=6, cout=4, kernel_size=1, stride=2, size=(9, 8)),  # ResNet's downsample
    "pointwise-strided-grouped-padded": dict(
        cin=4, cout=6, kernel_size=1, stride=(2, 3), padding=1, groups=2, size=(9, 10)
    ),
}


@pytest.mark.parametrize("case", ADJOINT_CASES.values(), ids=ADJOINT_CASES.keys())
def test_transposed_filter_is_the_adjoint_of_the_conv(case: dict, gen: torch.Generator) -> None:
    """<conv(x), y> == <x, mirror(y)> for the conv without its bias, and the sizes match exactly."""
    case = dict(case)
    cin, cout, size = case.pop("cin"), case.pop("cout"), case.pop("size")
    conv = nn.Conv2d(cin, cout, **case).double()
    mirror = deconv.builders.find_mirror_factory(conv)(conv)
    for _ in range(3):
        x = torch.randn(2, cin, *size, generator=gen, dtype=torch.float64)
        out = conv(x)
        y = torch.randn(out.shape, generator=gen, dtype=torch.float64)
        back = mirror(y, *mirror.remember(x, out))
        assert back.shape == x.shape
        left = ((out - conv.bias.view(-1, 1, 1)) * y).sum()
        torch.testing.assert_close(left, (x * back).sum(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("how", ["setattr", "load_state_dict(assign=True)"])
def test_the_mirror_follows_parameters_replaced_on_the_model(how: str) -> None:
    """A parameter replaced after build_mirror (not changed in place) is the one projections use."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).double().eval()
    images = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    mirror = deconv.build_mirror(model)
    before = mirror.project(images, target_class=1)
    fresh = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    if how == "setattr":
        model[0].weight = nn.Parameter(fresh["0.weight"])
        model[3].weight = nn.Parameter(fresh["3.weight"])
        model[0].bias, model[3].bias = nn.Parameter(fresh["0.bias"]), nn.Parameter(fresh["3.bias"])
    else:
        model.load_state_dict(fresh, assign=True)
    assert mirror.steps[0].mirror.weight is model[0].weight and mirror.steps[3].mirror.weight is model[3].weight
    after = mirror.project(images, target_class=1)
    expected = deconv.build_mirror(model).project(images, target_class=1)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, expected, rtol=0, atol=1e-12)


ADJOINT_CASES_1D = {
    "plain": dict(cin=1, cout=1, kernel_size=3, padding=1, size=9),  # timm's ECA gate
    "strided-padded": dict(cin=3, cout=4, kernel_size=3, stride=2, padding=1, size=10),
    "dilated-grouped": dict(cin=4, cout=6, kernel_size=2, dilation=3, groups=2, padding=2, size=11),
    "same-even": dict(cin=2, cout=3, kernel_size=4, padding="same", size=7),
    "output-padding": dict(cin=2, cout=2, kernel_size=3, stride=3, size=14),
}


@pytest.mark.parametrize("case", ADJOINT_CASES_1D.values(), ids=ADJOINT_CASES_1D.keys())
def test_the_1d_transposed_filter_is_the_adjoint_of_the_conv(case: dict, gen: torch.Generator) -> None:
    """<conv1d(x), y> == <x, mirror(y)> without the bias, sizes exact; the filters are the conv's own."""
    case = dict(case)
    cin, cout, size = case.pop("cin"), case.pop("cout"), case.pop("size")
    conv = nn.Conv1d(cin, cout, **case).double()
    mirror = deconv.builders.find_mirror_factory(conv)(conv)
    assert isinstance(mirror, TransposedFilter1d) and mirror.weight is conv.weight
    for _ in range(3):
        x = torch.randn(2, cin, size, generator=gen, dtype=torch.float64)
        out = conv(x)
        y = torch.randn(out.shape, generator=gen, dtype=torch.float64)
        back = mirror(y, *mirror.remember(x, out))
        assert back.shape == x.shape
        left = ((out - conv.bias.view(-1, 1)) * y).sum()
        torch.testing.assert_close(left, (x * back).sum(), rtol=1e-12, atol=0)
        factors = torch.rand(cout, generator=gen, dtype=torch.float64)  # taken into the filters
        torch.testing.assert_close(
            mirror(y, *mirror.remember(x, out), factors=factors),
            mirror(y * factors.view(-1, 1), *mirror.remember(x, out)),
            rtol=1e-12,
            atol=1e-15,
        )
