"""Progress bars on standard error: counts and rates for long work; the time of each phase."""
from __future__ import annotations

import contextlib
import time
from typing import Any, Iterable, Iterator, TypeVar

from tqdm import tqdm

__all__ = ["progress_bar", "Clock"]

T = TypeVar("T")


def progress_bar(total: int, desc: str, unit: str, initial: int = 0, enabled: bool = True) -> tqdm:
    """A ``tqdm`` bar (a context manager with ``update(n)``); silent when not ``enabled``."""
    kwargs: dict[str, Any] = {"dynamic_ncols": True, "mininterval": 0.5, "smoothing": 0.1}
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, **kwargs)


class Clock:
    """Wall time per named phase, summed over every time it is entered."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases[phase] = self.phases.get(phase, 0.0) + time.perf_counter() - start

    def timed(self, phase: str, items: Iterable[T]) -> Iterator[T]:
        """``items``, the time spent producing each counted to ``phase`` (not the time spent on it by the caller)."""
        it = iter(items)
        while True:
            with self(phase):
                item = next(it, _END)
            if item is _END:
                return
            yield item  # type: ignore[misc]

    def summary(self) -> str:
        """``"scan 7.1 s, projections 402.3 s, ..."`` in the order the phases were first entered."""
        return ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in self.phases.items())


_END = object()
