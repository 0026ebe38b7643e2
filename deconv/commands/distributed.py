"""One run on several processes: torch.distributed, set up from the environment torchrun provides.

``torchrun --nproc_per_node N -m deconv top9 ...`` starts N processes with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; :func:`process_group` joins them (gloo on
CPU, nccl on CUDA). Without those variables the run is a single process and nothing communicates.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist

from ..errors import DeconvError, one_line

__all__ = ["DistributedError", "Group", "dumps", "process_group", "local_device"]

T = TypeVar("T")

TIMEOUT = timedelta(hours=24)
"""How long a process waits for the others at a collective: shards of a large scan may finish hours apart."""


class DistributedError(DeconvError, RuntimeError):
    """The process group cannot be joined, or another process of the run failed."""


@dataclass(frozen=True)
class Group:
    """The processes of one run: this one is ``rank`` of ``size``. ``Group()`` is a lone process."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Whether this process writes the outputs (rank 0)."""
        return self.rank == 0

    def shard(self, items: Sequence[T], batch_size: int) -> list[T]:
        """This process's batches of ``items``: batches ``rank``, ``rank + size``, ... of ``batch_size``.

        Batched again by ``batch_size``, a shard is exactly those batches of the whole, so every
        batch is computed as in a single process.
        """
        step = self.size * batch_size
        return [
            item
            for start in range(self.rank * batch_size, len(items), step)
            for item in items[start : start + batch_size]
        ]

    def all_gather(self, obj: T) -> list[T]:
        """Every process's ``obj``, by rank, on every process; tensors are sent as by :func:`dumps`."""
        if self.size == 1:
            return [obj]
        out: list[Any] = [None] * self.size
        with _collective():
            dist.all_gather_object(out, dumps(obj))
        return [pickle.loads(part) for part in out]

    def gather(self, obj: T) -> list[T] | None:
        """Every process's ``obj``, by rank, on rank 0 (``None`` elsewhere); tensors are sent as by :func:`dumps`."""
        if self.size == 1:
            return [obj]
        out: list[Any] | None = [None] * self.size if self.main else None
        with _collective():
            dist.gather_object(dumps(obj), out, dst=0)
        return None if out is None else [pickle.loads(part) for part in out]


class _Compact(pickle.Pickler):
    """Pickles a tensor whose storage holds more than its elements (a view) as a compact copy."""

    def reducer_override(self, obj: Any) -> Any:
        if (
            type(obj) is torch.Tensor
            and obj.layout == torch.strided
            and not obj.requires_grad
            and obj.untyped_storage().nbytes() > obj.nbytes
        ):
            return obj.clone().__reduce_ex__(pickle.HIGHEST_PROTOCOL)
        return NotImplemented


def dumps(obj: Any) -> bytes:
    """``obj`` pickled with each tensor's own elements only. torch pickles a view with its whole storage,
    so ``n`` views of one ``(n, ...)`` batch would be written as ``n`` copies of the batch."""
    buffer = io.BytesIO()
    _Compact(buffer, pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


@contextlib.contextmanager
def _collective() -> Iterator[None]:
    try:
        yield
    except RuntimeError as error:  # DistBackendError and friends: a peer died or timed out
        raise DistributedError(f"another process of this run failed or timed out ({one_line(error, 200)})") from None


def local_device(device: torch.device) -> torch.device:
    """``device``, or for a CUDA device without an index under torchrun, this process's GPU (``LOCAL_RANK``)."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[Group]:
    """The processes torchrun started this one with (nccl for a CUDA ``device``, gloo otherwise),
    or a lone :class:`Group` when ``WORLD_SIZE`` is unset or 1. Leaves the group on exit."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise DistributedError(f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}") from None
    if size == 1:
        yield Group()
        return
    cuda = device.type == "cuda"
    try:
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    except (RuntimeError, ValueError) as error:
        raise DistributedError(
            f"cannot join the process group of {size} processes (start it with torchrun): {one_line(error, 200)}"
        ) from None
    try:
        yield Group(dist.get_rank(), dist.get_world_size())
    finally:
        dist.destroy_process_group()
