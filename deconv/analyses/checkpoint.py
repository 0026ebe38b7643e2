"""Scans that survive crashes: the running state, saved atomically with the fingerprint of its run.

A :class:`Checkpoint` saves a :class:`~deconv.analyses.top9.ScanState` every few batches and when the
process gets SIGINT or SIGTERM, then stops the scan. Loading it refuses a state saved by a run
with another model, dataset or settings, so two runs are never mixed.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..data import IdxDataset, ImageFolder, Preprocess
from ..errors import StateError, one_line
from ..io import atomic_write
from .top9 import ScanState

__all__ = ["Interrupted", "Checkpoint", "fingerprint"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The scan stopped on SIGINT or SIGTERM after saving its state."""


def _model_hash(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _dataset_identity(dataset: Dataset) -> str:
    """The dataset's type and length, and a hash of its files (folder) or its pixels (idx file)."""
    digest = hashlib.sha256()
    if isinstance(dataset, ImageFolder):
        digest.update(os.fsencode(dataset.root.resolve()))
        digest.update(os.fsencode("\n".join(dataset.files)))  # names that are not UTF-8 hash as their bytes
    elif isinstance(dataset, IdxDataset):
        digest.update(dataset.images.tobytes())
    return f"{type(dataset).__name__} of {len(dataset)} items, {digest.hexdigest()}"  # type: ignore[arg-type]


def fingerprint(model: nn.Module, dataset: Dataset, preprocess: Preprocess, **settings: Any) -> dict[str, Any]:
    """What a saved state depends on: ``settings``, the model's weights, the dataset and the preprocessing
    (settings first: a refusal names a differing setting before the dataset it may have cut short)."""
    return {
        **settings,
        "model": f"{type(model).__name__} weights {_model_hash(model)}",
        "dataset": _dataset_identity(dataset),
        "preprocess": str(asdict(preprocess)),
    }


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


class Checkpoint:
    """The saved state of one scan (of one process) at ``path``, tagged with the run's ``fingerprint``.

    Called after each batch (``scan(checkpoint=...)``) it saves every ``every`` batches (0: never).
    Inside ``with checkpoint:`` the first SIGINT or SIGTERM saves after the current batch and
    raises :class:`Interrupted` (or, arriving after the scan, at the end of the block, which should
    save the final state); a second signal stops at once.
    """

    def __init__(self, path: str | Path, fingerprint: dict[str, Any], every: int = 0) -> None:
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.every = every
        self.batches = 0
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def save(self, state: ScanState) -> None:
        """Writes ``state`` atomically: a crash leaves the previous save intact."""
        payload = {"fingerprint": self.fingerprint, "state": state.state_dict()}
        atomic_write(self.path, lambda file: torch.save(payload, file))

    def load(self) -> ScanState:
        """The saved state; :class:`StateError` if it is missing, damaged or from another run."""
        if not self.path.is_file():
            raise StateError(f"{self.path}: no saved scan state to resume; run without --resume")
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
            saved, state = payload["fingerprint"], ScanState.from_state_dict(payload["state"])
        except Exception as error:  # noqa: BLE001 - torch.load raises many types on damaged files
            reason = one_line(error, 120)
            raise StateError(
                f"{self.path}: damaged scan state ({type(error).__name__}: {reason}); use --overwrite to start over"
            ) from None
        for key, value in self.fingerprint.items():
            if saved.get(key) != value:
                raise StateError(
                    f"{self.path} was saved by another run: its {key} differs (saved: {_short(saved.get(key))}; "
                    f"now: {_short(value)}); use the same settings, or --overwrite to start over"
                )
        return state

    def __call__(self, state: ScanState) -> None:
        self.batches += 1
        if self.signal is not None or (self.every and self.batches % self.every == 0):
            self.save(state)
        if self.signal is not None:
            raise self._interrupted()

    def _interrupted(self) -> Interrupted:
        name = signal.Signals(self.signal).name  # type: ignore[arg-type]  # only called once signalled
        return Interrupted(f"{name}: scan state saved to {self.path}; continue with --resume")

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum

    def __enter__(self) -> Checkpoint:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
        if self.signal is not None and kind is None:
            raise self._interrupted()
