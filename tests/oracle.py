"""A reference deconvnet for the tests, written without any of ``deconv``.

The deconvnet of an activation equals the input gradient that autograd computes through the
model's own forward pass when every ReLU's backward is replaced by ``clamp(min=0)`` of the incoming
gradient (the paper's "rectify the reconstruction"), seeded with the activation's own value:
torch's ``max_pool2d`` backward routes each value to the window's argmax and *sums* where
windows overlap, convolutions and linear layers back-propagate with their transposed weights,
eval-mode batch norm with ``weight / sqrt(running_var + eps)``, pools with their transposes.

Everything runs the model in eval mode (restoring every module's flag afterwards) and leaves it
otherwise untouched. Use float64 models and images.

A *tap* says where an activation is read:
``"features.3"`` the output of that module, ``"relu:1"`` its second call, ``"<classifier"`` the
input of a module, ``""`` the model's output, ``Call(F.max_pool2d, 1)`` the output of the second
call of a function (or tensor method) in the forward pass, or a callable ``(model, images) -> activation``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode


@dataclass(frozen=True)
class Call:
    """Tap: the output of call number ``occurrence`` (from 0) of ``function`` in the forward pass."""

    function: Any
    occurrence: int = 0


Tap = Union[str, Call, Callable[[nn.Module, torch.Tensor], torch.Tensor]]


class RectifiedGrad(torch.autograd.Function):
    """ReLU going up, ReLU of the gradient going down (the deconvnet rule)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.clamp(min=0)


def _gated(rectify: bool) -> type[torch.autograd.Function]:
    """ReLU going up; going down, the gradient (rectified with ``rectify``) where the input was positive."""

    class Gated(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x: torch.Tensor) -> torch.Tensor:
            ctx.save_for_backward(x)
            return x.clamp(min=0)

        @staticmethod
        def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
            (x,) = ctx.saved_tensors
            return (grad.clamp(min=0) if rectify else grad) * (x > 0)

    return Gated


GuidedGrad = _gated(True)  # guided backpropagation: relu(g) * (x > 0)
PlainGrad = _gated(False)  # plain autograd, written out: g * (x > 0)

RULES = {"deconvnet": RectifiedGrad, "guided": GuidedGrad, "gradient": PlainGrad}


_RELUS = {F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}
_ACTIVATIONS = {F.hardtanh, F.relu6, F.leaky_relu, F.elu, F.silu, F.gelu, F.mish, F.hardswish, F.prelu}
"""Other pointwise activations: going down, the deconvnet rule rectifies the gradient as at a ReLU; the
guided rule multiplies the rectified gradient by f'(x); the gradient rule is plain autograd."""
_GATES = {torch.sigmoid, F.sigmoid, torch.Tensor.sigmoid, F.hardsigmoid, torch.tanh, F.tanh, torch.Tensor.tanh}
_GATES |= {torch.softmax, F.softmax, torch.Tensor.softmax}
"""What a gate's factor comes out of: under the deconvnet and guided rules it keeps its forward value as a
constant (no gradient enters the gate's branch); under the gradient rule, plain autograd."""


class _Activation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, f: Callable[[torch.Tensor], torch.Tensor], rule: str) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.f, ctx.rule = f, rule
        with torch.no_grad():
            return f(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (x,) = ctx.saved_tensors
        if ctx.rule == "deconvnet":
            return grad.clamp(min=0), None, None
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            (slope,) = torch.autograd.grad(ctx.f(leaf).sum(), leaf)
        return (grad.clamp(min=0) if ctx.rule == "guided" else grad) * slope, None, None


def _norm_with_constant_statistics(func: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """LayerNorm or GroupNorm whose mean and variance are constants for autograd (the deconvnet and guided rules)."""
    names = (
        ("normalized_shape", "weight", "bias", "eps")
        if func is F.layer_norm
        else ("num_groups", "weight", "bias", "eps")
    )
    given = dict(zip(names, args), **kwargs)
    weight, bias, eps = given.get("weight"), given.get("bias"), given.get("eps", 1e-5)
    if func is F.layer_norm:
        dims = tuple(range(x.dim() - len(tuple(given["normalized_shape"])), x.dim()))
        flat, shape = x, None
    else:
        flat, shape, dims = x.reshape(x.shape[0], given["num_groups"], -1), x.shape, (-1,)
    var, mean = torch.var_mean(flat.detach(), dim=dims, unbiased=False, keepdim=True)
    y = (flat - mean) * torch.rsqrt(var + eps)
    if shape is not None:
        y = y.reshape(shape)
        weight = None if weight is None else weight.view(-1, *([1] * (x.dim() - 2)))
        bias = None if bias is None else bias.view(-1, *([1] * (x.dim() - 2)))
    y = y if weight is None else y * weight
    return y if bias is None else y + bias


class DeconvReLUs(TorchFunctionMode):
    """Every ReLU (``nn.ReLU`` calls ``F.relu``; functional and tensor-method calls too) becomes
    the rule's function (``RectifiedGrad`` by default); in-place ones return a new tensor instead."""

    calls = 0

    def __init__(self, rule: str = "deconvnet") -> None:
        super().__init__()
        self.rule = rule
        self.function = RULES[rule]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _RELUS:
            self.calls += 1
            return self.function.apply(args[0])
        if func in _GATES and self.rule != "gradient":
            return func(*args, **(kwargs or {})).detach()
        if func in (F.layer_norm, F.group_norm) and self.rule != "gradient":
            return _norm_with_constant_statistics(func, *args, **(kwargs or {}))
        if func in _ACTIVATIONS and self.rule != "gradient":
            rest = {k: v for k, v in (kwargs or {}).items() if k != "inplace"}
            if func in (F.hardtanh, F.relu6, F.leaky_relu, F.elu) and len(args) > 1 and isinstance(args[-1], bool):
                args = args[:-1]  # a positional inplace flag

            def f(x: torch.Tensor) -> torch.Tensor:
                return func(x, *args[1:], **rest)

            return _Activation.apply(args[0], f, self.rule)
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def deconv_mode(model: nn.Module, rule: str = "deconvnet") -> Iterator[DeconvReLUs]:
    """Eval mode and the rule's ReLU backward for the block; restores every ``training`` flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with DeconvReLUs(rule) as mode:
            yield mode
    finally:
        for m, flag in flags:
            m.training = flag


class _Stop(Exception):
    pass


class _Capture(TorchFunctionMode):
    """Records what one function returns; entered inside ``DeconvReLUs``, so ReLUs are still replaced."""

    def __init__(self, tap: Call) -> None:
        super().__init__()
        self.tap = tap
        self.seen: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is self.tap.function:
            self.seen.append(out)
            if len(self.seen) > self.tap.occurrence:
                raise _Stop
        return out


def run_to(model: nn.Module, images: torch.Tensor, tap: Tap) -> torch.Tensor:
    """The activation at ``tap``; stops the forward pass as soon as it is known."""
    if isinstance(tap, Call):
        with contextlib.suppress(_Stop), _Capture(tap) as capture:
            model(images)
        return capture.seen[tap.occurrence]
    if callable(tap):
        return tap(model, images)
    if tap == "":
        return model(images)
    want_input = tap.startswith("<")
    name, _, occurrence = tap.lstrip("<").partition(":")
    occurrence = int(occurrence or 0)
    seen: list[torch.Tensor] = []

    def record(value: torch.Tensor) -> None:
        seen.append(value)
        if len(seen) > occurrence:
            raise _Stop

    module = model.get_submodule(name)
    if want_input:
        handle = module.register_forward_pre_hook(lambda m, args: record(args[0]))
    else:
        handle = module.register_forward_hook(lambda m, args, out: record(out))
    try:
        model(images)
    except _Stop:
        pass
    finally:
        handle.remove()
    return seen[occurrence]


def activation(model: nn.Module, images: torch.Tensor, tap: Tap) -> torch.Tensor:
    """The activation at ``tap`` (eval mode, no autograd)."""
    with deconv_mode(model), torch.no_grad():
        return run_to(model, images, tap)


def project(
    model: nn.Module,
    images: torch.Tensor,
    selections: Sequence[tuple],
    taps: dict[str, Tap] | None = None,
    rule: str = "deconvnet",
) -> torch.Tensor:
    """Reference projections of ``(image, layer, channel[, y, x])`` selections: ``(K, C, H, W)``.

    Each activation keeps its own value, all others are zero; ``taps`` maps layer names that are
    not module names (functional layers) to where they are read; ``rule`` picks the ReLU backward.
    """
    taps = taps or {}
    out = images.new_zeros(len(selections), *images.shape[1:])
    layers = dict.fromkeys(s[1] for s in selections)
    for layer in layers:
        rows = [k for k, s in enumerate(selections) if s[1] == layer]
        x = images[[selections[k][0] for k in rows]].clone().requires_grad_(True)
        with deconv_mode(model, rule):
            h = run_to(model, x, taps.get(layer, layer))
        seed = torch.zeros_like(h)
        for j, k in enumerate(rows):
            index = (j, *selections[k][2:]) if h.dim() == 4 else (j, selections[k][2])
            seed[index] = h[index].detach()
        (out[rows],) = torch.autograd.grad(h, x, seed)
    return out


def project_map(
    model: nn.Module, images: torch.Tensor, tap: Tap, channel: int, rule: str = "deconvnet"
) -> torch.Tensor:
    """Reference projection of a whole feature map: the seed is the channel's map, the rest zero."""
    x = images.clone().requires_grad_(True)
    with deconv_mode(model, rule):
        h = run_to(model, x, tap)
    seed = torch.zeros_like(h)
    seed[:, channel] = h[:, channel].detach()
    return torch.autograd.grad(h, x, seed)[0]


def positive_sites(h: torch.Tensor, count: int, gen: torch.Generator) -> list[tuple[int, ...]]:
    """``count`` random positions with a positive value in ``h`` ``(N, C[, H, W])`` plus the argmax,
    as ``(image, channel[, y, x])``; fewer if there are fewer positive values."""
    positive = (h > 0).nonzero()
    if len(positive) == 0:
        return []
    picks = positive[torch.randperm(len(positive), generator=gen)[:count]].tolist()
    argmax = torch.unravel_index(h.argmax(), h.shape)
    return [tuple(p) for p in picks] + [tuple(int(i) for i in argmax)]


def activations(model: nn.Module, images: torch.Tensor, taps: dict[str, Tap]) -> dict[str, torch.Tensor]:
    """The activations at many taps ``{layer: tap}`` from one forward pass (eval mode, no autograd)."""
    found: dict[str, list[torch.Tensor]] = {layer: [] for layer in taps}
    handles, calls = [], {}
    for layer, tap in taps.items():
        if isinstance(tap, Call):
            calls.setdefault(tap.function, []).append(layer)
        elif isinstance(tap, str) and tap:
            name = tap.lstrip("<").partition(":")[0]
            module = model.get_submodule(name)
            if tap.startswith("<"):
                handles.append(module.register_forward_pre_hook(lambda m, args, _l=layer: found[_l].append(args[0])))
            else:
                handles.append(module.register_forward_hook(lambda m, args, out, _l=layer: found[_l].append(out)))

    class Record(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for layer in calls.get(func, ()):
                found[layer].append(out)
            return out

    try:
        with deconv_mode(model), torch.no_grad(), Record():
            output = model(images)
    finally:
        for handle in handles:
            handle.remove()
    result = {}
    for layer, tap in taps.items():
        if isinstance(tap, Call):
            result[layer] = found[layer][tap.occurrence]
        elif tap == "":
            result[layer] = output
        elif isinstance(tap, str):
            result[layer] = found[layer][int(tap.partition(":")[2] or 0)]
        else:
            result[layer] = activation(model, images, tap)
    return result


def selections_at(
    model: nn.Module,
    images: torch.Tensor,
    layers: Sequence[str],
    per_layer: int,
    gen: torch.Generator,
    taps: dict[str, Tap] | None = None,
) -> list[tuple]:
    """Selections ``(image, layer, channel[, y, x])`` at every layer in ``layers``: ``per_layer``
    random positive activations and the layer's largest."""
    taps = taps or {}
    found = activations(model, images, {layer: taps.get(layer, layer) for layer in layers})
    selections = []
    for layer in layers:
        selections += [(site[0], layer, *site[1:]) for site in positive_sites(found[layer], per_layer, gen)]
    return selections


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-9, min_nonzero: float = 0.5) -> None:
    """Every projection within ``rtol`` of the reference, relative to its own largest value (with a
    floor of 1e-6 of the batch's largest), same shape and dtype; and at least ``min_nonzero`` of the
    references are not all zero, so that the comparison means something."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype == torch.float64, (actual.dtype, expected.dtype)
    scale = expected.abs().flatten(1).amax(1)
    floor = 1e-6 * float(scale.max()) if len(scale) else 0.0
    error = (actual - expected).abs().flatten(1).amax(1)
    tolerance = rtol * scale.clamp_min(floor)
    bad = (error > tolerance).nonzero().flatten().tolist()
    assert not bad, (
        f"projections {bad[:10]} differ from the oracle: "
        f"error {error[bad[:5]].tolist()} > {tolerance[bad[:5]].tolist()}"
    )
    assert float((scale > 0).double().mean()) >= min_nonzero, (
        f"only {int((scale > 0).sum())}/{len(scale)} references are non-zero"
    )
