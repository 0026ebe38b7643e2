"""Tests for deconv.zoo.models: the bundled model and data, and loading user models and checkpoints."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from deconv.data import IdxDataset, batches
from deconv.errors import CheckpointError, ModelLoadError
from deconv.zoo.models import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    ZFNet28,
    default_dataset,
    default_model,
    default_preprocess,
    load_model,
)


class Tiny(nn.Module):
    """A module that is importable (from this test module) so it can be pickled whole."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


@pytest.fixture()
def model_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user's model file; ``sys.path`` and ``sys.modules`` are restored after the test."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "user_models", raising=False)
    path = tmp_path / "user_models.py"
    path.write_text(
        textwrap.dedent(
            """
            import torch.nn as nn

            class Custom(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.fc = nn.Linear(2, 2)

            def build():
                return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())

            def custom():
                return Custom()

            def broken():
                raise RuntimeError("no weights here")

            def not_a_module():
                return 42

            answer = 7
            """
        )
    )
    return path


# ---------------------------------------------------------------------------------- bundled model


def test_zfnet28_layer_shapes() -> None:
    model = ZFNet28().eval()
    x = torch.zeros(2, 1, 28, 28)
    shapes = []
    for layer in model.features:
        x = layer(x)
        shapes.append(tuple(x.shape[1:]))
    assert shapes == [
        (32, 14, 14), (32, 14, 14), (32, 7, 7),
        (64, 7, 7), (64, 7, 7), (64, 4, 4),
        (96, 4, 4), (96, 4, 4), (96, 4, 4), (96, 4, 4), (64, 4, 4), (64, 4, 4), (64, 2, 2),
    ]  # fmt: skip
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_default_model_classifies_bundled_images() -> None:
    model = default_model()
    assert not model.training and model.classes == FASHION_MNIST_CLASSES
    dataset = default_dataset()
    assert isinstance(dataset, IdxDataset) and len(dataset) == 10_000
    assert dataset.classes == list(FASHION_MNIST_CLASSES)
    correct = total = 0
    with torch.no_grad():
        for batch in batches(dataset, batch_size=250, indices=range(1000)):
            assert batch.images.shape[1:] == (1, 28, 28)
            correct += int((model(batch.images).argmax(1) == batch.labels).sum())
            total += len(batch)
    assert total == 1000
    assert correct / total >= 0.85


def test_default_preprocess_and_dataset_statistics() -> None:
    pre = default_preprocess()
    assert pre.channels == 1 and pre.size is None and pre.crop is None
    assert pre.mean == FASHION_MNIST_MEAN and pre.std == FASHION_MNIST_STD
    dataset = default_dataset()
    images = torch.stack([dataset[i][0] for i in range(500)])
    # Test-split images normalised with the train statistics: close to mean 0, std 1.
    assert abs(float(images.mean())) < 0.1 and abs(float(images.std()) - 1) < 0.1


def test_load_model_default() -> None:
    model = load_model(None, None)
    assert isinstance(model, ZFNet28) and not model.training
    reference = default_model()
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)


# --------------------------------------------------------------------------------------- specs


def test_spec_from_file(model_file: Path, tmp_path: Path) -> None:
    model = load_model(f"{model_file}:build", None)
    assert isinstance(model, nn.Sequential) and not model.training
    # Classes of the file live in a module named after it, so whole-module checkpoints round-trip.
    custom = load_model(f"{model_file}:custom", None)
    assert type(custom).__module__ == "user_models"
    torch.save(custom, tmp_path / "custom.pt")
    again = load_model(None, tmp_path / "custom.pt", trust_checkpoint=True)
    assert type(again) is type(custom) and torch.equal(again.fc.weight, custom.fc.weight)


def test_spec_from_package(model_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(model_file.parent))
    model = load_model("user_models:build", None)
    assert isinstance(model[0], nn.Conv2d)


@pytest.mark.parametrize(
    ("suffix", "message"),
    [
        (":missing", r"has no attribute 'missing'"),
        (":broken", r"calling broken\(\) failed: RuntimeError: no weights here"),
        (":not_a_module", r"not_a_module\(\) returned int, expected a torch.nn.Module"),
        (":answer", r"answer is a int, not a function"),
    ],
)
def test_spec_errors_in_file(model_file: Path, suffix: str, message: str) -> None:
    spec = f"{model_file}{suffix}"
    with pytest.raises(ModelLoadError, match=message) as info:
        load_model(spec, None)
    assert spec in str(info.value)


def test_spec_errors_import(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"'no_colon_here': expected 'package.module:function'"):
        load_model("no_colon_here", None)
    with pytest.raises(ModelLoadError, match=r"importing surely_not_a_module_x9 failed: ModuleNotFoundError"):
        load_model("surely_not_a_module_x9:build", None)
    with pytest.raises(ModelLoadError, match=r"no such Python file .*absent\.py"):
        load_model(f"{tmp_path / 'absent.py'}:build", None)
    bad = tmp_path / "bad_syntax.py"
    bad.write_text("def build(:\n")
    with pytest.raises(ModelLoadError, match=r"importing .*bad_syntax\.py failed: SyntaxError") as info:
        load_model(f"{bad}:build", None)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------- checkpoints


def test_checkpoint_state_dict_variants(tmp_path: Path) -> None:
    source = ZFNet28()
    state = source.state_dict()
    variants = {
        "plain.pt": state,
        "wrapped.pt": {"state_dict": state, "epoch": 3},
        "model.pt": {"model": state},
        "parallel.pt": {f"module.{k}": v for k, v in state.items()},
    }
    for name, obj in variants.items():
        torch.save(obj, tmp_path / name)
        model = load_model(None, tmp_path / name)
        assert isinstance(model, ZFNet28) and not model.training
        assert torch.equal(model.features[0].weight, source.features[0].weight), name


def test_checkpoint_into_spec_model(tmp_path: Path, model_file: Path) -> None:
    source = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
    torch.save(source.state_dict(), tmp_path / "w.pt")
    model = load_model(f"{model_file}:build", str(tmp_path / "w.pt"))
    assert torch.equal(model[0].weight, source[0].weight)


def test_checkpoint_wrong_keys_are_named(tmp_path: Path) -> None:
    state = ZFNet28().state_dict()
    del state["classifier.6.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(CheckpointError) as info:
        load_model(None, tmp_path / "w.pt")
    message = str(info.value)
    assert "w.pt does not fit ZFNet28" in message
    assert "missing keys: classifier.6.bias" in message and "unexpected keys: extra.weight" in message
    assert "\n" not in message


def test_checkpoint_misshaped_key_names_shapes(tmp_path: Path) -> None:
    state = ZFNet28().state_dict()
    state["features.0.weight"] = torch.zeros(32, 1, 5, 5)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(
        CheckpointError,
        match=r"mis-shaped keys: features\.0\.weight \(checkpoint \[32, 1, 5, 5\], model \[32, 1, 7, 7\]\)",
    ):
        load_model(None, tmp_path / "w.pt")


def test_checkpoint_long_key_lists_are_truncated(tmp_path: Path) -> None:
    torch.save({f"layer{i}.weight": torch.zeros(1) for i in range(20)}, tmp_path / "w.pt")
    with pytest.raises(
        CheckpointError,
        match=r"missing keys: features\.0\.weight, .*\(\+8 more\); unexpected keys: layer0\.weight, .*\(\+12 more\)",
    ):
        load_model(None, tmp_path / "w.pt")


def test_whole_module_checkpoint(tmp_path: Path, model_file: Path) -> None:
    source = Tiny()
    torch.save(source, tmp_path / "whole.pt")
    model = load_model(None, tmp_path / "whole.pt", trust_checkpoint=True)
    assert isinstance(model, Tiny) and not model.training
    assert torch.equal(model.fc.weight, source.fc.weight)
    # With a spec, the whole module's weights go into the spec's model, and must fit it.
    with pytest.raises(
        CheckpointError, match=r"missing keys: 0\.weight, 0\.bias; unexpected keys: fc\.weight, fc\.bias"
    ):
        load_model(f"{model_file}:build", tmp_path / "whole.pt", trust_checkpoint=True)
    zf = ZFNet28()
    torch.save(zf, tmp_path / "zf.pt")
    assert torch.equal(
        load_model("deconv.zoo.models:ZFNet28", tmp_path / "zf.pt", trust_checkpoint=True).features[3].weight,
        zf.features[3].weight,
    )


def test_unreadable_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"absent\.pt: no such checkpoint file"):
        load_model(None, tmp_path / "absent.pt")
    (tmp_path / "text.pt").write_text("hello, I am not a checkpoint")
    with pytest.raises(CheckpointError, match=r"text\.pt: cannot read checkpoint, corrupt"):
        load_model(None, tmp_path / "text.pt")
    torch.save(ZFNet28().state_dict(), tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt: cannot read checkpoint, corrupt") as info:
        load_model(None, tmp_path / "cut.pt")
    assert "\n" not in str(info.value) and len(str(info.value)) < 400
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"list\.pt: holds a list; expected a state_dict"):
        load_model(None, tmp_path / "list.pt")
    torch.save({"weight": torch.zeros(1), "note": "hi"}, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match=r"not a state_dict; entries that are not tensors: note"):
        load_model(None, tmp_path / "mixed.pt")


def test_whole_module_checkpoint_with_missing_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "gone_net_x1.py").write_text("import torch.nn as nn\nclass Net(nn.Linear):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.save(importlib.import_module("gone_net_x1").Net(2, 2), tmp_path / "whole.pt")
    monkeypatch.undo()
    del sys.modules["gone_net_x1"]
    (tmp_path / "gone_net_x1.py").unlink()
    with pytest.raises(
        CheckpointError, match=r"whole\.pt: cannot unpickle whole-module checkpoint.*ModuleNotFoundError"
    ):
        load_model(None, tmp_path / "whole.pt", trust_checkpoint=True)
