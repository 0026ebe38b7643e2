"""A smooth or piecewise activation (SiLU, GELU, ReLU6, LeakyReLU, ...) going down under the guided or gradient rule."""

from __future__ import annotations

from typing import Any, Callable

import torch

from .base import MirrorModule

__all__ = ["ActivationGradient", "VectorJacobian"]


class ActivationGradient(MirrorModule):
    """``R_{l-1} = R_l * f'(x)`` (the gradient rule: the exact vector-Jacobian product of a pointwise ``f``), or
    with ``rectify`` ``relu(R_l) * f'(x)`` (guided backpropagation). Remembers ``f'(x)`` of the forward input,
    computed by autograd on ``f`` itself. Shape: any, unchanged.
    """

    per_position = True
    reads_inputs = True

    def __init__(self, f: Callable[[torch.Tensor], torch.Tensor], name: str, rectify: bool) -> None:
        super().__init__()
        object.__setattr__(self, "f", f)  # read, not owned: a module's parameters stay the model's
        self.rectify = rectify
        self.name = name

    def remember(self, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, ...]:
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            (slope,) = torch.autograd.grad(self.f(leaf + 0).sum(), leaf)  # a copy: f may work in place
        return (slope,)

    def forward(self, signal: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
        return (signal.clamp(min=0) if self.rectify else signal) * slope

    def extra_repr(self) -> str:
        return f"{self.name}, {'guided' if self.rectify else 'gradient'}"


class VectorJacobian(MirrorModule):
    """``R_x = R J_f(x)``: the exact vector-Jacobian product of ``f`` at the forward input, by autograd on ``f``
    itself, for an operation that mixes along a dimension (softmax under the gradient rule). Remembers ``x``.
    Shape: any, unchanged."""

    reads_inputs = True

    def __init__(self, f: Callable[[torch.Tensor], torch.Tensor], name: str) -> None:
        super().__init__()
        object.__setattr__(self, "f", f)  # read, not owned
        self.name = name

    def remember(self, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, ...]:
        return (x.detach(),)

    def forward(self, signal: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.f(leaf + 0), leaf, signal)
        return grad

    def extra_repr(self) -> str:
        return f"{self.name}, gradient"
