"""Feature evolution (Fig. 4): strips in checkpoint order, each cell the checkpoint's own strongest activation."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from PIL import Image
from tensor_dataset import Tensors
from torch import nn

import deconv
from deconv.analyses.evolution import evolve
from deconv.commands import evolution as command
from deconv.commands.main import main


def _model() -> nn.Sequential:
    torch.manual_seed(6)
    return (
        nn.Sequential(
            nn.Conv2d(1, 5, 3, padding=1, bias=False),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(5, 6, 3, padding=1, bias=False),
            nn.ReLU(),
        )
        .double()
        .eval()
    )


def _checkpoint(model: nn.Module, seed: int) -> nn.Module:
    """``model`` with its second convolution's weights replaced: a later point of "training"."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        other[3].weight.normal_(generator=torch.Generator().manual_seed(seed))
    return other


def test_strips_follow_the_checkpoints_in_the_order_given(gen: torch.Generator) -> None:
    images = torch.randn(23, 1, 12, 12, generator=gen, dtype=torch.float64)
    dataset = Tensors(images)
    models = [_checkpoint(_model(), seed) for seed in (3, 1, 2)]
    result = evolve((deconv.build_mirror(m) for m in models), dataset, "4", [4, 0, 2], batch_size=10, progress=False)
    assert result.channels == [4, 0, 2]
    assert result.projections.shape[:2] == result.patches.shape[:2] == (3, 3)
    for t, model in enumerate(models):  # column t is checkpoint t: its own strongest activation, projected
        with torch.no_grad():
            out = model(images)
        mirror = deconv.build_mirror(model)
        for k, channel in enumerate(result.channels):
            record = result.records[k][t]
            best = out[:, channel].flatten(1).amax(1)
            assert record.channel == channel and record.index == int(best.argmax())
            assert record.value == pytest.approx(float(best.max()))
            assert out[record.index, channel, record.y, record.x] == best.max()
            box = mirror.receptive_field("4", record.y, record.x, (1, 12, 12))
            assert box.bottom - box.top == 8  # as in Fig. 2: the box, zero (and marked) where it leaves the image
            full = mirror.project(images[record.index][None], "4", channel, (record.y, record.x))[0]
            pad = torch.nn.functional.pad  # the image with 8 zero pixels around: every box lies inside
            window = (slice(None), slice(box.top + 8, box.bottom + 8), slice(box.left + 8, box.right + 8))
            torch.testing.assert_close(result.projections[k, t], pad(full, (8, 8, 8, 8))[window])
            torch.testing.assert_close(result.patches[k, t], pad(images[record.index], (8, 8, 8, 8))[window])
            assert torch.equal(
                result.inside[k, t, 0], pad(torch.ones(12, 12, dtype=torch.bool), (8, 8, 8, 8))[window[1:]]
            )


def test_fields_larger_than_the_image_hold_the_whole_image(gen: torch.Generator) -> None:
    images = torch.randn(5, 1, 6, 6, generator=gen, dtype=torch.float64)
    mirror = deconv.build_mirror(_model())
    result = evolve([mirror], Tensors(images), "4", [1], progress=False)
    record = result.records[0][0]
    full = mirror.project(images[record.index][None], "4", 1, (record.y, record.x))[0]
    box = mirror.receptive_field("4", record.y, record.x, (1, 6, 6))
    assert result.projections.shape[-2:] == (8, 8) and box.bottom - box.top == 8  # the box, not cut to the image
    pad = torch.nn.functional.pad
    window = (slice(None), slice(box.top + 8, box.bottom + 8), slice(box.left + 8, box.right + 8))
    torch.testing.assert_close(result.projections[0, 0], pad(full, (8, 8, 8, 8))[window])
    torch.testing.assert_close(result.patches[0, 0], pad(images[record.index], (8, 8, 8, 8))[window])
    assert int(result.inside[0, 0].sum()) == int(pad(torch.ones(6, 6), (8, 8, 8, 8))[window[1:]].sum())


def test_strongest_keeps_the_channels_largest_at_the_last_checkpoint(gen: torch.Generator) -> None:
    images = torch.randn(9, 1, 12, 12, generator=gen, dtype=torch.float64)
    models = [_checkpoint(_model(), seed) for seed in (1, 2)]
    result = evolve((deconv.build_mirror(m) for m in models), Tensors(images), "4", progress=False)
    assert result.channels == list(range(6))
    last = [strip[-1].value for strip in result.records]
    chosen = result.strongest(2)
    assert chosen.channels == sorted(sorted(range(6), key=lambda c: -last[c])[:2])
    assert chosen.projections.shape[:2] == (2, 2)
    torch.testing.assert_close(chosen.projections[0], result.projections[chosen.channels[0]])


def test_bad_channels_are_refused(gen: torch.Generator) -> None:
    images = torch.randn(4, 1, 12, 12, generator=gen, dtype=torch.float64)
    with pytest.raises(deconv.SelectionError, match=r"\[6\]"):
        evolve([deconv.build_mirror(_model())], Tensors(images), "4", [1, 6], progress=False)


def test_default_checkpoints_are_the_shipped_ones_in_epoch_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for epoch in (10, 2, 1):
        (tmp_path / f"epoch{epoch}.pt").touch()
    monkeypatch.setattr(command, "SHIPPED", tmp_path)
    found = command._checkpoints([], embedded=True)
    assert [label for label, _ in found] == ["epoch 1", "epoch 2", "epoch 10", "final"]
    assert found[-1][1] == str(command.WEIGHTS)
    assert command._checkpoints(["b.pt", "a.pt"], embedded=False) == [("b", "b.pt"), ("a", "a.pt")]
    with pytest.raises(deconv.ConfigError, match="checkpoints"):
        command._checkpoints([], embedded=False)


def test_command_with_user_checkpoints(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(
        "from torch import nn\n"
        "def make():\n"
        "    return nn.Sequential(nn.Conv2d(1, 4, 5, stride=2, padding=2), nn.ReLU(), nn.MaxPool2d(2),\n"
        "                         nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 7 * 7, 10))\n"
    )
    paths = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Conv2d(1, 4, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 6, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(6 * 7 * 7, 10),
        )
        paths.append(str(tmp_path / f"step{seed}.pt"))
        torch.save(model.state_dict(), paths[-1])
    out = tmp_path / "run"
    args = [
        "evolution",
        "--model",
        f"{tmp_path / 'net.py'}:make",
        "--checkpoints",
        *paths,
        "--layer",
        "4",
        "--channels",
        "5",
        "1",
        "--limit",
        "64",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    figure = Image.open(out / "evolution" / "4.png")
    assert figure.width > 3 * 100 and figure.height > 2 * 60
    assert "evolution/4.png" in (out / "index.html").read_text()


def test_each_checkpoints_scan_is_its_own_progress_line(gen: torch.Generator, capsys) -> None:
    """In a log each checkpoint's scan prints one line, named by its checkpoint: no line looks printed twice."""
    images = torch.randn(12, 1, 12, 12, generator=gen, dtype=torch.float64)
    models = [_checkpoint(_model(), seed) for seed in (3, 1)]
    evolve((deconv.build_mirror(m) for m in models), Tensors(images), "4", [0], batch_size=5)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in lines] == ["scan at checkpoint 1", "scan at checkpoint 2"], lines
