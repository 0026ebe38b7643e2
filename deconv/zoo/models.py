"""The bundled model (a small ZFNet for Fashion-MNIST), its data, and loading user models and checkpoints."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import IdxDataset, Preprocess
from ..errors import CheckpointError, ModelLoadError, one_line

__all__ = [
    "ASSETS",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "ZFNet28",
    "default_model",
    "default_preprocess",
    "default_dataset",
    "load_model",
]

ASSETS = Path(__file__).resolve().parent / "assets"
WEIGHTS = ASSETS / "zfnet28_fashion.pt"

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# Pixel mean and standard deviation of the 60k Fashion-MNIST training images, scaled to [0, 1].
FASHION_MNIST_MEAN: tuple[float, ...] = (0.2860406,)
FASHION_MNIST_STD: tuple[float, ...] = (0.3530242,)


class ZFNet28(nn.Module):
    """ZFNet (Zeiler & Fergus 2014) scaled down to 28x28 greyscale input and 10 classes.

    Input ``(B, 1, 28, 28)`` -> logits ``(B, 10)``. Like ZFNet, conv1 is 7x7 with stride 2 and the
    max pools are overlapping (3x3, stride 2); pools use padding 1 so that 14 -> 7 -> 4 -> 2.

    ====  ==========================================  ==============
    idx   features layer                              output shape
    ====  ==========================================  ==============
    0-1   Conv2d(1, 32, 7, stride 2, pad 3), ReLU     (32, 14, 14)
    2     MaxPool2d(3, stride 2, pad 1)               (32, 7, 7)
    3-4   Conv2d(32, 64, 5, pad 2), ReLU              (64, 7, 7)
    5     MaxPool2d(3, stride 2, pad 1)               (64, 4, 4)
    6-7   Conv2d(64, 96, 3, pad 1), ReLU              (96, 4, 4)
    8-9   Conv2d(96, 96, 3, pad 1), ReLU              (96, 4, 4)
    10-11 Conv2d(96, 64, 3, pad 1), ReLU              (64, 4, 4)
    12    MaxPool2d(3, stride 2, pad 1)               (64, 2, 2)
    ====  ==========================================  ==============

    classifier: Dropout, Linear(256, 256), ReLU, Dropout, Linear(256, 256), ReLU, Linear(256, 10).
    Weights start He-normal (no BatchNorm, so the scale matters), biases zero.
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.25) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=7, stride=2, padding=3),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            nn.Conv2d(32, 64, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            nn.Conv2d(64, 96, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(96, 96, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(96, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(64 * 2 * 2, 256),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(256, 256),
            nn.ReLU(),
            nn.Linear(256, num_classes),
        )
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, 28, 28)`` -> ``(B, num_classes)`` logits."""
        x = self.features(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def default_preprocess() -> Preprocess:
    """Greyscale, normalised with the Fashion-MNIST training mean/std; no resize or crop."""
    return Preprocess(channels=1, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD)


def default_dataset() -> IdxDataset:
    """The bundled Fashion-MNIST test split: 10,000 items of ``((1, 28, 28) float32, label)``."""
    return IdxDataset(
        ASSETS / "t10k-images-idx3-ubyte.gz",
        ASSETS / "t10k-labels-idx1-ubyte.gz",
        default_preprocess(),
        classes=FASHION_MNIST_CLASSES,
    )


def default_model() -> ZFNet28:
    """:class:`ZFNet28` with the shipped Fashion-MNIST weights, in eval mode, with ``classes`` set."""
    model = ZFNet28()
    _load_state_dict(model, _read_checkpoint(WEIGHTS), WEIGHTS)
    model.classes = FASHION_MNIST_CLASSES
    return model.eval()


def load_model(
    spec: str | None,
    checkpoint: str | os.PathLike[str] | None,
    args: Mapping[str, Any] | None = None,
    *,
    trust_checkpoint: bool = False,
) -> nn.Module:
    """Build a model from ``spec`` and optionally load ``checkpoint`` into it; returns it in eval mode.

    ``spec`` is None (the bundled :func:`default_model`), ``"package.module:function"`` or
    ``"path/to/file.py:function"``; the function is called with the keyword arguments ``args`` (none
    by default) and must return an ``nn.Module``. ``checkpoint`` is a state_dict or a dict with a
    ``"state_dict"`` or ``"model"`` entry, read as data only (``torch.load(weights_only=True)``). A
    whole pickled ``nn.Module`` needs ``trust_checkpoint=True``, because unpickling it runs code named
    in the file: only for files you trust. It is returned as is when ``spec`` is None; with a
    ``spec`` its weights are loaded into the spec's model.
    """
    if spec is None and args:
        raise ModelLoadError(f"model arguments {dict(args)} need a model spec; the embedded default takes none")
    model = default_model() if spec is None else _model_from_spec(spec, args or {})
    if checkpoint is None:
        return model.eval()
    loaded = _read_checkpoint(Path(checkpoint), trust=trust_checkpoint)
    if isinstance(loaded, nn.Module) and spec is None:
        return loaded.eval()
    _load_state_dict(model, loaded, Path(checkpoint))
    return model.eval()


def spec_beside(spec: str, folder: str | os.PathLike[str]) -> str:
    """A ``"file.py:function"`` spec with a relative file made relative to ``folder`` (a config file's);
    other specs unchanged."""
    module_name, colon, attribute = spec.rpartition(":")
    if (
        colon
        and (module_name.endswith(".py") or "/" in module_name or os.sep in module_name)
        and not Path(module_name).is_absolute()
    ):
        return f"{Path(folder) / module_name}:{attribute}"
    return spec


def _model_from_spec(spec: str, args: Mapping[str, Any]) -> nn.Module:
    module_name, _, attribute = spec.rpartition(":")
    if not module_name or not attribute:
        raise ModelLoadError(f"model spec {spec!r}: expected 'package.module:function' or 'path/to/file.py:function'")
    try:
        if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
            module = _import_file(Path(module_name))
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(module_name)
    except ModelLoadError:
        raise
    except (Exception, SystemExit) as error:  # noqa: BLE001 - user code may raise anything
        raise ModelLoadError(f"model spec {spec!r}: importing {module_name} failed: {_reason(error)}") from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ModelLoadError(f"model spec {spec!r}: {module_name} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ModelLoadError(f"model spec {spec!r}: {attribute} is a {type(target).__name__}, not a function")
    try:
        model = target(**args)
    except (Exception, SystemExit) as error:  # noqa: BLE001
        shown = ", ".join(f"{k}={v!r}" for k, v in args.items())
        raise ModelLoadError(f"model spec {spec!r}: calling {attribute}({shown}) failed: {_reason(error)}") from None
    if not isinstance(model, nn.Module):
        raise ModelLoadError(
            f"model spec {spec!r}: {attribute}() returned {type(model).__name__}, expected a torch.nn.Module"
        )
    return model


def _import_file(path: Path) -> Any:
    """Import a .py file as module ``path.stem`` (its folder goes on ``sys.path``, so classes in it
    pickle and unpickle by that name), or under a unique name if ``path.stem`` is already taken."""
    if not path.is_file():
        raise ModelLoadError(f"model spec: no such Python file {path}")
    path = path.resolve()
    name = path.stem
    if name in sys.modules:
        loaded = getattr(sys.modules[name], "__file__", None)
        if loaded is not None and Path(loaded).resolve() == path:
            return sys.modules[name]
        name = f"_deconv_model_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"model spec: cannot import {path} as a Python module")
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _read_checkpoint(path: Path, trust: bool = False) -> Any:
    """torch.load with ``weights_only=True``, which never runs code from the file. A checkpoint that
    needs classes outside torch's allowlist (a whole pickled module) is unpickled in full only when
    ``trust``; otherwise it is refused, naming those classes, before anything in it runs."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it in one line
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises RuntimeError, KeyError, EOFError, ... on bad files
        try:  # reads the pickle's opcodes, runs nothing
            needs_classes = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 - not a readable torch.save archive
            needs_classes = []
        if not needs_classes:
            raise CheckpointError(
                f"{path}: cannot read checkpoint, corrupt or not saved by torch.save ({_reason(error)})"
            ) from None
        if not trust:
            raise CheckpointError(
                f"{path}: a whole pickled object (needs {_names(sorted(needs_classes), 3)}), and unpickling it "
                "runs code from the file; save a state_dict instead, or pass --trust-checkpoint "
                "(config: trust_checkpoint = true) only if you trust the file"
            ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001
        raise CheckpointError(
            f"{path}: cannot unpickle whole-module checkpoint; its classes must be importable ({_reason(error)})"
        ) from None


def _reason(error: BaseException, limit: int = 160) -> str:
    """``"Type: first sentence of the message"``, at most ``limit`` characters, one line."""
    text = one_line(error).split(". ")[0]
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _names(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _load_state_dict(model: nn.Module, loaded: Any, path: Path) -> None:
    """Load a state_dict-like checkpoint into ``model``, or raise a one-line CheckpointError."""
    if isinstance(loaded, nn.Module):
        state = loaded.state_dict()
    elif isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        state = loaded["state_dict"]
    elif isinstance(loaded, Mapping) and isinstance(loaded.get("model"), (Mapping, nn.Module)):
        state = loaded["model"] if isinstance(loaded["model"], Mapping) else loaded["model"].state_dict()
    elif isinstance(loaded, Mapping):
        state = loaded
    else:
        raise CheckpointError(
            f"{path}: holds a {type(loaded).__name__}; expected a state_dict, a dict with a 'state_dict' "
            "or 'model' entry, or a whole nn.Module"
        )
    not_tensors = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path}: not a state_dict; entries that are not tensors: {_names(not_tensors)}")
    expected = model.state_dict()
    if state and all(k.startswith("module.") for k in state) and not any(k.startswith("module.") for k in expected):
        state = {k[len("module.") :]: v for k, v in state.items()}  # saved from DataParallel
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k} (checkpoint {list(v.shape)}, model {list(expected[k].shape)})"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or misshaped:
        groups = (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", misshaped))
        problems = [f"{label}: {_names(keys)}" for label, keys in groups if keys]
        raise CheckpointError(f"{path} does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state)
