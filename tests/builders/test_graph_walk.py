"""Hand-written branching nets: functional additions, concatenations, chunks, slices, permutes, reshapes,
constant products and means, fan-out, against the oracle; random branching nets from hypothesis; refusals."""

from __future__ import annotations

import oracle
import pytest
import torch
import torch.nn.functional as F
from conftest import batch_norm
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import deconv


class TutorialNet(nn.Module):
    """The official PyTorch CIFAR-10 tutorial's CNN, as written there (``x.view(-1, 16 * 5 * 5)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 16 * 5 * 5)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class Branchy(nn.Module):
    """Every graph operation the mirror knows, between convolutions, pools and ReLUs."""

    def __init__(self, gen: torch.Generator) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.left = nn.Conv2d(8, 8, 3, padding=1)
        self.right = nn.Conv2d(8, 8, 1)
        self.bn = batch_norm(16, gen)
        self.mix = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.head = nn.Linear(12 * 2, 5)
        self.register_buffer("gain", torch.linspace(0.5, 1.5, 12).view(1, 12, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        a, b = torch.chunk(x, 2, dim=1)  # pieces, used twice each below
        y = torch.cat([F.relu(self.left(x)) + torch.cat([a, a], 1), self.right(x) * 0.5], 1)  # fan-out, add, cat
        y = F.relu(self.bn(y))
        n, c, h, w = y.size()
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)  # channel shuffle
        y = y[:, :8] + torch.add(
            y[:, 8:].permute(0, 1, 3, 2).permute(0, 1, 3, 2), b.mean(1, keepdim=True)
        )  # slices, permutes, broadcast
        z = F.relu(self.mix(y)) * self.gain  # a constant buffer
        z = self.pool(z)
        v = z.mean((2, 3), keepdim=True)
        v = torch.cat([v.squeeze(3).squeeze(2), z[:, :, 0, 0] / 2], 1)  # squeeze, a slice of one position
        return self.head(v.unsqueeze(2).flatten(1))


def test_the_pytorch_tutorial_cnn(gen: torch.Generator) -> None:
    model = TutorialNet().double().eval()
    images = torch.randn(3, 3, 32, 32, generator=gen, dtype=torch.float64)
    mirror = deconv.build_mirror(model)
    assert "view" in mirror.layer_names
    layers = ["conv1", "pool", "pool:1", "fc1", "fc3"]
    selections = oracle.selections_at(model, images, layers, 2, gen)
    oracle.assert_matches(
        mirror.project_many(images, selections), oracle.project(model, images, selections), min_nonzero=0.8
    )


@pytest.mark.parametrize("rule", ["deconvnet", "guided", "gradient"])
def test_every_graph_operation_against_the_oracle(rule: str, gen: torch.Generator) -> None:
    torch.manual_seed(0)
    model = Branchy(gen).double().eval()
    images = torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64)
    mirror = deconv.build_mirror(model)
    for name in ["stem", "left", "right", "bn", "mix", "pool", "head"]:
        assert name in mirror.layer_names
    taps = {"add_1": oracle.Call(torch.add), "cat_1": oracle.Call(torch.cat, 1)}
    layers = ["stem", "left", "right", "bn", "add_1", "mix", "pool", "head"]
    assert set(layers) <= set(mirror.layer_names), set(layers) - set(mirror.layer_names)
    selections = oracle.selections_at(model, images, layers, 2, gen, taps)
    expected = oracle.project(model, images, selections, taps, rule=rule)
    oracle.assert_matches(mirror.project_many(images, selections, rule=rule), expected, min_nonzero=0.8)
    k = int(oracle.activation(model, images, "")[1].argmax())
    expected = oracle.project(model, images[1:], [(0, "out", k)], {"out": ""}, rule=rule)
    oracle.assert_matches(mirror.project(images[1:], target_class=k, rule=rule), expected, min_nonzero=1.0)


# ------------------------------------------------------------------ random branching nets
class RandomNet(nn.Module):
    """A net drawn by hypothesis: a stem, then blocks that each add, concatenate, fan out or chunk."""

    def __init__(self, plan: list[str], widths: list[int], pool: str) -> None:
        super().__init__()
        self.plan, self.pool_kind = plan, pool
        self.stem = nn.Conv2d(2, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        c = widths[0]
        for kind, w in zip(plan, widths[1:]):
            if kind == "residual":
                self.blocks.append(nn.ModuleList([nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 1)]))
            elif kind == "concat":
                self.blocks.append(nn.ModuleList([nn.Conv2d(c, w, 3, padding=1), nn.Conv2d(c, w, 1, stride=1)]))
                c = 2 * w
            elif kind == "chunk":
                even = c + c % 2
                self.blocks.append(
                    nn.ModuleList([nn.Conv2d(c, even, 1), nn.Conv2d(even // 2, even // 2, 3, padding=1)])
                )
                c = even
            else:  # "down"
                self.blocks.append(nn.ModuleList([nn.Conv2d(c, w, 3, stride=2, padding=1)]))
                c = w
        self.out_channels = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        for kind, convs in zip(self.plan, self.blocks):
            if kind == "residual":
                x = F.relu(convs[1](F.relu(convs[0](x))) + x)
            elif kind == "concat":
                x = torch.cat([F.relu(convs[0](x)), F.relu(convs[1](x))], 1)
            elif kind == "chunk":
                x = F.relu(convs[0](x))
                a, b = x.chunk(2, 1)
                x = torch.cat([F.relu(convs[1](b)), a], 1)
            else:
                x = F.relu(convs[0](x))
        if self.pool_kind == "max":
            x = F.max_pool2d(x, 3, 2, 1)
        return x


@given(
    plan=st.lists(st.sampled_from(["residual", "concat", "chunk", "down"]), min_size=1, max_size=4),
    widths=st.lists(st.integers(2, 5), min_size=5, max_size=5),
    pool=st.sampled_from(["max", "none"]),
    size=st.integers(5, 11),
    seed=st.integers(0, 2**16),
)
def test_random_branching_nets(plan: list[str], widths: list[int], pool: str, size: int, seed: int) -> None:
    torch.manual_seed(seed)
    model = RandomNet(plan, widths, pool).double().eval()
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 2, size, size, generator=gen, dtype=torch.float64)
    mirror = deconv.build_mirror(model)
    top = mirror.output_layer
    h = oracle.activation(model, images, "")
    sites = oracle.positive_sites(h, 3, gen)
    selections = [(s[0], top, *s[1:]) for s in sites]
    if selections:
        expected = oracle.project(model, images, selections, {top: ""})
        oracle.assert_matches(mirror.project_many(images, selections), expected, min_nonzero=1.0)


# ------------------------------------------------------------------ refusals and registration
class Gate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y * F.relu(y)  # a gate: the product of two input-dependent tensors


class Softplus(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.conv(x))


def test_attention_is_refused_naming_its_module_until_one_is_registered() -> None:
    """A CNN with an attention block (MobileNetV2's ReLU6 and V3's gates are mirrored; attention is not)."""
    model = SelfAttention().eval()
    with pytest.raises(deconv.UnsupportedModuleError) as error:
        deconv.build_mirror(model)
    message = str(error.value)
    assert "\n" not in message and "'attention'" in message and "MultiheadAttention" in message, message
    assert "register_mirror" in message, message


class SelfAttention(nn.Module):
    """Convolution, then self-attention over the positions of its maps."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.attention = nn.Conv2d(3, 8, 3), nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        tokens = y.view(y.shape[0], 8, -1).transpose(1, 2)
        return self.attention(tokens, tokens, tokens)[0]


@pytest.mark.parametrize(
    "model, words",
    [
        (Gate(), ["'mul'", "input-dependent", "gate"]),
        (Softplus(), ["'softplus'", "softplus", "register_mirror"]),
    ],
)
def test_operations_without_a_mirror_are_named(model: nn.Module, words: list[str]) -> None:
    with pytest.raises(deconv.UnsupportedModuleError) as error:
        deconv.build_mirror(model)
    message = str(error.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_a_function_registered_by_a_user_is_mirrored() -> None:
    """``register_mirror`` takes functions as it takes module types (the factory gets a ``deconv.Call``)."""
    seen = []

    @deconv.register_mirror(F.softplus)
    def _(call: deconv.Call) -> nn.Module:
        seen.append(call)
        return deconv.layers.Rectify()

    try:
        mirror = deconv.build_mirror(Softplus().eval())
        assert mirror.layer_names == ["conv", "softplus"] and seen[0].target is F.softplus
        assert mirror.project(torch.randn(1, 3, 6, 6), layer="softplus", channel=1).shape == (1, 3, 6, 6)
    finally:
        deconv.unregister_mirror(F.softplus)
    with pytest.raises(ValueError, match="already registered"):
        deconv.register_mirror(torch.cat)(lambda call: nn.Identity())
