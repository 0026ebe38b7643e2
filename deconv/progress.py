"""Progress bars on standard error: counts and rates for long work."""
from __future__ import annotations

from typing import Any

from tqdm import tqdm

__all__ = ["progress_bar"]


def progress_bar(total: int, desc: str, unit: str, initial: int = 0, enabled: bool = True) -> tqdm:
    """A ``tqdm`` bar (a context manager with ``update(n)``); silent when not ``enabled``."""
    kwargs: dict[str, Any] = {"dynamic_ncols": True, "mininterval": 0.5, "smoothing": 0.1}
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, **kwargs)
