"""Any operation linear in its input tensors (padding, upsampling, stacking, summing), in reverse: its transpose."""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..errors import InputError
from .base import MirrorModule

__all__ = ["LinearTranspose"]


class LinearTranspose(MirrorModule):
    """The transpose of ``f``, linear in its input tensors: ``R_i = d<f(x_1, ..., x_n), R> / dx_i``, computed by
    autograd on ``f`` itself at zero inputs of the forward pass's shapes (exact: for a linear map the
    vector-Jacobian product is its transpose, under every rule). Inputs ``silent`` give ``f`` only their shape
    (``expand_as``'s second): no signal goes to them (``None``). Mixes positions as ``f`` may: whole maps.
    ``(N, ...) -> (N, ...)``, or a tuple, one per input.
    """

    geometry = None

    def __init__(self, f: Callable[..., torch.Tensor], name: str, silent: tuple[int, ...] = ()) -> None:
        super().__init__()
        object.__setattr__(self, "f", f)  # may hold the model's modules: read, not owned
        self.name = name
        self.silent = silent

    def remember(self, *tensors: torch.Tensor) -> tuple[Any, ...]:
        *inputs, output = tensors
        if any(t.shape[0] != output.shape[0] for t in inputs):
            raise InputError(
                f"{self.name} mixes the images of a batch (batch {inputs[0].shape[0]} -> {output.shape[0]})"
            )
        return (tuple(tuple(t.shape[1:]) for t in inputs),)

    def forward(self, signal: torch.Tensor, shapes: tuple[tuple[int, ...], ...]) -> Any:
        with torch.enable_grad():
            zeros = [signal.new_zeros(signal.shape[0], *shape, requires_grad=True) for shape in shapes]
            taken = [z for k, z in enumerate(zeros) if k not in self.silent]
            grads = iter(torch.autograd.grad(self.f(*zeros), taken, signal))
        out = tuple(None if k in self.silent else next(grads) for k in range(len(zeros)))
        return out[0] if len(out) == 1 else out

    def extra_repr(self) -> str:
        return self.name
