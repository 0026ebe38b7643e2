"""What the commands share: the model, data and output settings and how they become objects."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from ..builders import rules as registered_rules
from ..data import Preprocess, open_dataset
from ..errors import ConfigError, OutputError
from ..zoo.models import ASSETS, FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_model
from .config import Option, Settings, with_options
from .distributed import local_device
from .run_folder import RunFolder

__all__ = [
    "MODEL",
    "DATA",
    "RUN",
    "RULE",
    "RULES",
    "Model",
    "Data",
    "Output",
    "rules_from",
    "model_from",
    "preprocess_from",
    "dataset_from",
    "device_from",
    "run_folder",
    "require_at_least",
]

BUNDLED = ASSETS / "t10k-images-idx3-ubyte.gz"

MODEL = (
    Option(
        "model",
        str,
        "",
        "the model as 'package.module:function' or 'file.py:function' "
        "(a file relative to the config file's folder; empty: the embedded default)",
    ),
    Option(
        "model_args",
        dict,
        {},
        "keyword arguments for the model function, e.g. weights=IMAGENET1K_V1 (a table in a config)",
    ),
    Option(
        "checkpoint",
        str,
        "",
        "weights for the model: a state_dict (a whole saved model needs --trust-checkpoint) (empty: none)",
    ),
    Option(
        "trust_checkpoint",
        bool,
        False,
        "allow checkpoints that are whole pickled models: unpickling runs code from the file, "
        "so only for files you trust",
    ),
    Option("device", str, "auto", "'cpu', 'cuda', 'cuda:1', ... or 'auto' (cuda when available)"),
)
DATA = (
    Option(
        "data",
        str,
        "",
        "a folder of images (searched recursively) or an idx file (empty: the bundled Fashion-MNIST test split)",
    ),
    Option("image_channels", int, 0, "1 (grey) or 3 (RGB); 0: what the model's first convolution takes"),
    Option("resize", int, 0, "resize images so the shorter side has this many pixels (0: keep)"),
    Option("crop", int, 0, "centre-crop images to this square size (0: keep)"),
    Option(
        "mean",
        list,
        [],
        "per-channel mean to subtract, on the 0-1 scale (0-pixel_scale if set; empty: the embedded model's, or 0)",
        item=float,
    ),
    Option(
        "std",
        list,
        [],
        "per-channel standard deviation to divide by, on the same scale (empty: the embedded model's, or 1)",
        item=float,
    ),
    Option("pixel_scale", float, 1.0, "pixel values run 0..pixel_scale before mean/std (255 for Caffe-style weights)"),
    Option(
        "channel_order",
        str,
        "RGB",
        "channel order the model takes ('BGR' for Caffe-style weights)",
        choices=("RGB", "BGR"),
    ),
    Option("batch_size", int, 256, "images per forward pass"),
    Option("workers", int, 0, "data-loading worker processes (at most the CPU cores deconv may use)"),
)
RUN = (
    Option("out", str, "runs/default", "output folder"),
    Option("overwrite", bool, False, "replace the outputs of another run in the output folder"),
    Option("progress", bool, True, "show progress bars"),
)

RULE = Option(
    "rule",
    str,
    "deconvnet",
    f"what the projection does at each ReLU: {', '.join(registered_rules())} "
    "or a rule registered by the model's module (docs/rules.md)",
)
RULES = Option(
    "rules",
    list,
    [],
    "several rules drawn side by side, one column or row each (overrides 'rule'; empty: only 'rule')",
    item=str,
)


@with_options(*MODEL)
class Model(Settings):
    """Which model, with which weights, on which device."""

    model: str
    model_args: dict[str, Any]
    checkpoint: str
    trust_checkpoint: bool
    device: str

    @property
    def embedded(self) -> bool:
        """Whether the model is the embedded default."""
        return not self.model


@with_options(*DATA)
class Data(Settings):
    """Which images, preprocessed how, loaded how many at a time."""

    data: str
    image_channels: int
    resize: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pixel_scale: float
    channel_order: str
    batch_size: int
    workers: int


@with_options(*RUN)
class Output(Settings):
    """Where a run writes, and how."""

    out: str
    overwrite: bool
    progress: bool


def rules_from(rule: str, rules: Sequence[str] = ()) -> list[str]:
    """The rules to draw: ``rules`` if given, else ``[rule]``; ``ConfigError`` naming an unknown one and the
    registered ones (read after the model is loaded, so that its module may register its own)."""
    key = "rules" if rules else "rule"
    chosen = list(dict.fromkeys(rules or [rule]))
    for name in chosen:
        if name not in registered_rules():
            raise ConfigError(f"key {key!r}: unknown rule {name!r}; valid rules: {', '.join(registered_rules())}")
    return chosen


def require_at_least(settings: Settings, **minimums: int) -> None:
    """``ConfigError`` naming the first key whose value is below its minimum."""
    values = settings.values()
    for key, minimum in minimums.items():
        if values[key] < minimum:
            raise ConfigError(f"key {key!r} must be >= {minimum}, got {values[key]!r}")


def device_from(settings: Model) -> torch.device:
    """The configured device; under torchrun a CUDA device is this process's GPU."""
    name = settings.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = local_device(torch.device(name))
    except RuntimeError:
        raise ConfigError(f"key 'device': unknown device {name!r} (valid: auto, cpu, cuda, cuda:N)") from None
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"key 'device': {name!r} is not available here (valid: auto, cpu, cuda, cuda:N)")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"key 'device': deconv cannot compute on {name!r} (valid: auto, cpu, cuda, cuda:N)")
    if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
        raise ConfigError(f"key 'device': {name!r} is not available here ({torch.cuda.device_count()} CUDA devices)")
    return device


def model_from(settings: Model) -> nn.Module:
    """The configured model, in eval mode, on the configured device."""
    model = load_model(
        settings.model or None,
        settings.checkpoint or None,
        settings.model_args,
        trust_checkpoint=settings.trust_checkpoint,
    )
    return model.to(device_from(settings))


def _first_conv_channels(model: nn.Module) -> int:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return 3 if conv is None else conv.in_channels


def preprocess_from(settings: Data, model: nn.Module, embedded: bool) -> Preprocess:
    """The configured preprocessing; empty mean/std mean the ``embedded`` default model's own (or 0 and 1)."""
    mean = list(settings.mean) or (list(FASHION_MNIST_MEAN) if embedded else [0.0])
    std = list(settings.std) or (list(FASHION_MNIST_STD) if embedded else [1.0])
    if settings.pixel_scale == 1 and max(mean) > 1:
        print(
            f"warning: mean {mean} is above 1 but pixels run 0..1: a 0..255 (Caffe-style) mean needs "
            "pixel_scale = 255; on the 0..1 scale ImageNet's mean is [0.485, 0.456, 0.406]",
            file=sys.stderr,
        )
    try:
        return Preprocess(
            channels=settings.image_channels or _first_conv_channels(model),
            size=settings.resize or None,
            crop=settings.crop or None,
            mean=tuple(mean),
            std=tuple(std),
            pixel_scale=settings.pixel_scale,
            channel_order=settings.channel_order,
        )
    except ValueError as error:
        raise ConfigError(f"preprocessing: {error}") from None


def cores() -> int:
    """The CPU cores this process may run on: the bound of ``workers``."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def dataset_from(settings: Data, preprocess: Preprocess, limit: int = 0) -> Dataset:
    """The configured dataset (the bundled Fashion-MNIST test split when ``data`` is empty); of an idx
    file only the first ``limit`` images are read (0: all). ``ConfigError`` for more ``workers`` than
    :func:`cores` (more processes than cores only slow the loading down)."""
    if settings.workers > cores():
        raise ConfigError(
            f"key 'workers' must be <= {cores()} (the CPU cores deconv may use here), got {settings.workers}"
        )
    return open_dataset(settings.data or BUNDLED, preprocess, limit=limit or None)


def run_folder(
    settings: Output,
    command: str,
    *markers: str,
    outputs: tuple[str, ...] = (),
    replace_all: bool = False,
    resume: bool = False,
    data: Data | None = None,
) -> RunFolder:
    """The configured output folder as a :class:`~deconv.commands.run_folder.RunFolder` of ``command`` (see there);
    ``OutputError`` for one inside the folder of the ``data`` read (later scans of it would read the run)."""
    if not settings.out:
        raise ConfigError("key 'out' must name an output folder, got ''")
    if data is not None and data.data and Path(data.data).is_dir():
        folder, out = Path(data.data).resolve(), Path(settings.out).resolve()
        if out.is_relative_to(folder):
            raise OutputError(
                f"--out {settings.out} is inside --data {data.data}: scans of the data would read the run's "
                "sheets as images; choose an --out outside the data folder"
            )
    return RunFolder(
        settings.out,
        command,
        markers=markers,
        outputs=outputs,
        overwrite=settings.overwrite,
        resume=resume,
        replace_all=replace_all,
    )
