"""Typed errors. Each message is one line naming the thing that was wrong and what would be valid.

The command line prints ``DeconvError`` messages without a traceback and exits with status 2.
"""

from __future__ import annotations

__all__ = [
    "DeconvError",
    "UnsupportedModuleError",
    "UnsupportedGraphError",
    "SelectionError",
    "InputError",
    "NonFiniteError",
    "ConfigError",
    "DatasetError",
    "CheckpointError",
    "ModelLoadError",
    "StateError",
    "OutputError",
]  # and one_line, a helper kept out of deconv's namespace


def one_line(error: BaseException | str, limit: int | None = None) -> str:
    """An exception's message (or a text) on one line (white space folded), cut to ``limit`` characters if given."""
    text = " ".join(str(error).split())
    return text if limit is None else text[:limit]


class DeconvError(Exception):
    """Base of every error ``deconv`` raises on purpose."""


class UnsupportedModuleError(DeconvError, TypeError):
    """A module (or function) in the model has no registered mirror."""


class UnsupportedGraphError(DeconvError, TypeError):
    """The model's forward is not a straight chain (it branches, or cannot be traced)."""


class SelectionError(DeconvError, ValueError):
    """A layer, channel, position or class that does not exist."""


class InputError(DeconvError, ValueError):
    """Images of the wrong rank, channel count or dtype."""


class NonFiniteError(InputError):
    """NaN or infinite values in the input or in an activation."""


class ConfigError(DeconvError, ValueError):
    """A config file or flag with an unknown key, a wrong type or invalid TOML."""


class DatasetError(DeconvError, ValueError):
    """A dataset that does not exist, holds no images, or has a bad header."""


class CheckpointError(DeconvError, ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


class ModelLoadError(DeconvError, ValueError):
    """A ``module:function`` model spec that cannot be imported or called."""


class StateError(DeconvError, ValueError):
    """A resume state file from another model, dataset or config, or a damaged one."""


class OutputError(DeconvError, ValueError):
    """An output directory that holds another run (use ``--overwrite``)."""
