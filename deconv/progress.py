"""Progress bars on standard error: counts and rates for long work; the time of each phase."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any, Callable, Iterable, Iterator, TypeVar

from tqdm import tqdm

__all__ = ["progress_bar", "Line", "Clock"]

T = TypeVar("T")


def progress_bar(total: int, desc: str, unit: str, initial: int = 0, enabled: bool = True) -> tqdm | Line:
    """A bar (a context manager with ``update(n)``): ``tqdm`` on a terminal, one :class:`Line` on a
    standard error that is not one (a log); silent when not ``enabled``."""
    if enabled and not sys.stderr.isatty():
        return Line(total, desc, unit, initial)
    kwargs: dict[str, Any] = {"dynamic_ncols": True, "mininterval": 0.5, "smoothing": 0.1}
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, **kwargs)


class Line:
    """Progress for a log: counts silently and prints one line when it closes (a ``tqdm`` bar would
    print each refresh, its last twice)."""

    def __init__(self, total: int, desc: str, unit: str, initial: int = 0) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.start = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n

    def __enter__(self) -> Line:
        return self

    def __exit__(self, *exc: object) -> None:
        print(
            f"{self.desc}: {self.n}/{self.total} {self.unit} in {time.perf_counter() - self.start:.1f} s",
            file=sys.stderr,
        )


class Clock:
    """Wall time per named phase, summed over every time it is entered, from ``timer`` (seconds)."""

    def __init__(self, timer: Callable[[], float] = time.perf_counter) -> None:
        self.now = timer
        self.start = timer()
        self.phases: dict[str, float] = {}

    def expect(self, *phases: str) -> None:
        """Lists ``phases`` in the summary in this order, before any not listed (0 s until entered)."""
        self.phases = {**dict.fromkeys(phases, 0.0), **self.phases}

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = self.now()
        try:
            yield
        finally:
            self.add(phase, self.now() - start)

    def add(self, phase: str, seconds: float) -> None:
        """Counts ``seconds`` to ``phase``."""
        self.phases[phase] = self.phases.get(phase, 0.0) + seconds

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
        """``"scan 7.1 s, projections 402.3 s, ... (total 415.0 s)"``: each phase, and the time since the
        clock started."""
        phases = ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in self.phases.items())
        return f"{phases} (total {self.now() - self.start:.1f} s)"


_END = object()
