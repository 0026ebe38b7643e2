#!/usr/bin/env python
"""timm's ResNet-50, EfficientNet-B0 and ConvNeXt-T at their stage outputs, side by side in one run (issue 20).

    python benchmarks/timm_stages.py                # 224x224, 5 reps (about 10 minutes on one thread)
    python benchmarks/timm_stages.py --quick        # 64x64, 1 rep, 8 selections: proves the script and the agreement
    python benchmarks/timm_stages.py --threads 1 --markdown out.md

Per model (random weights and batch-norm statistics, ``timm.create_model(name, pretrained=False)``) and
stage output, one image, its K = 64 strongest activations (any channel, any position) as the selections,
interleaved rep by rep so that load on a shared machine hits every column alike:

* ``Captum``: ``NeuronGradient(model, stage).attribute(image, neuron)``, one neuron a call (the whole model);
* ``gradient``: ``mirror.projections(image, K selections, rule="gradient")`` over K, forward pass included;
* ``deconvnet``: the same under the deconvnet rule, and beside it torchvision's ResNet-50 at the same stage.

Targets: Captum / deconv gradient >= 2x at every stage; timm's ResNet-50 / torchvision's ResNet-50 (deconvnet,
per projection) <= 1.2x. Agreement: under the gradient rule a projection is its activation's value times the
gradient of the activation, so ``projection / value`` must equal Captum's attribution (max abs difference /
max abs of Captum's, at most 1e-5 in float32), checked on several selections of every stage.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import deconv  # noqa: E402

TOLERANCE = 1e-5
CAPTUM_TARGET = 2.0  # Captum's NeuronGradient / deconv's gradient rule, per projection, at every stage
RESNET_TARGET = 1.2  # timm resnet50 / torchvision resnet50, deconvnet rule, per projection
# The stage outputs, by their module names (timm's resnet50 keeps torchvision's names).
STAGES = {
    "resnet50": [f"layer{i}" for i in range(1, 5)],
    "efficientnet_b0": [f"blocks.{i}" for i in range(7)],
    "convnext_tiny": [f"stages.{i}" for i in range(4)],
}


def randomized(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with random batch-norm scales and statistics (fresh ones are the identity)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
    return model.eval()


def timm_model(name: str) -> nn.Module:
    import timm

    torch.manual_seed(0)
    return randomized(timm.create_model(name, pretrained=False))


def torchvision_resnet50() -> nn.Module:
    from torchvision.models import resnet50

    torch.manual_seed(0)
    return randomized(resnet50(weights=None))


def neuron_gradient(model: nn.Module, stage: str, image: torch.Tensor, neuron: tuple[int, int, int]) -> torch.Tensor:
    """Captum's ``NeuronGradient`` of one neuron of ``stage``'s output, as its users call it: ``(1, C, H, W)``."""
    from captum.attr import NeuronGradient

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Input Tensor 0 did not already require gradients"
        return NeuronGradient(model, model.get_submodule(stage)).attribute(image, neuron_selector=neuron)


@dataclass
class Stage:
    """One stage output's measurements (seconds per projection, one entry per rep)."""

    model: str
    stage: str
    shape: tuple[int, ...]
    k: int
    captum: list[float] = field(default_factory=list)
    gradient: list[float] = field(default_factory=list)
    deconvnet: list[float] = field(default_factory=list)
    error: float = 0.0


class Probe:
    """A model's mirror, one image and the K strongest activations of each stage output."""

    def __init__(self, name: str, model: nn.Module, stages: list[str], image: torch.Tensor, k: int) -> None:
        self.name, self.model, self.image = name, model, image
        self.mirror = deconv.build_mirror(model)
        self.images = self.mirror.check_images(image)
        self.selections: dict[str, list[deconv.Selection]] = {}
        self.values: dict[str, torch.Tensor] = {}
        self.rows: dict[str, Stage] = {}
        tops = [self.mirror.index(s) for s in stages]
        outputs = self.mirror.graph.run(self.images, tops, max(tops)).outputs
        for stage, top in zip(stages, tops):
            out = outputs[top][0]  # (C, H, W)
            _, height, width = out.shape
            values, flat = out.flatten().topk(min(k, out.numel()))
            self.values[stage] = values
            self.selections[stage] = [
                deconv.Selection(0, stage, i // (height * width), i % (height * width) // width, i % width)
                for i in flat.tolist()
            ]
            self.rows[stage] = Stage(name, stage, tuple(out.shape), len(flat))

    def project(self, stage: str, rule: str) -> tuple[float, torch.Tensor]:
        """Seconds per projection of the stage's K selections under ``rule``, and the projections ``(K, C, H, W)``."""
        selections = self.selections[stage]
        out = self.images.new_zeros(len(selections), *self.images.shape[1:])
        start = time.perf_counter()
        for where, projections in self.mirror.projections(self.images, selections, rule=rule):
            out[where] = projections
        return (time.perf_counter() - start) / len(selections), out

    def captum(self, stage: str, which: int) -> tuple[float, torch.Tensor]:
        s = self.selections[stage][which]
        start = time.perf_counter()
        attribution = neuron_gradient(self.model, stage, self.image, (s.channel, s.y, s.x))
        return time.perf_counter() - start, attribution[0]

    def rep(self, stage: str, rep: int, checks: int, with_captum: bool = True) -> None:
        """One interleaved repetition at ``stage``: Captum (one neuron), then deconv's two rules (K each)."""
        row = self.rows[stage]
        which = rep % min(checks, row.k)
        if with_captum:
            seconds, reference = self.captum(stage, which)
            row.captum.append(seconds)
        seconds, projections = self.project(stage, "gradient")
        row.gradient.append(seconds)
        if with_captum:
            ours = projections[which] / self.values[stage][which]
            error = float((ours - reference).abs().max() / reference.abs().max().clamp_min(1e-30))
            row.error = max(row.error, error)
        row.deconvnet.append(self.project(stage, "deconvnet")[0])

    def warm_up(self) -> None:
        for stage, selections in self.selections.items():
            for rule in ("gradient", "deconvnet"):
                for _ in self.mirror.projections(self.images, selections[:2], rule=rule):
                    pass
            neuron_gradient(self.model, stage, self.image, tuple(selections[0][2:]))


def ms(seconds: float) -> str:
    value = seconds * 1e3
    return f"{value:.0f} ms" if value >= 100 else (f"{value:.1f} ms" if value >= 1 else f"{value:.2f} ms")


def ratio(numerator: list[float], denominator: list[float]) -> float:
    """The median over reps of the per-rep ratio (each rep measures both back to back, under the same load)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def measure(size: int, k: int, reps: int, checks: int, judge: bool = True) -> tuple[list[str], float, bool]:
    """The tables (markdown lines), the largest relative error against Captum, and whether every target was met."""
    image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    probes = [Probe(name, timm_model(name), stages, image, k) for name, stages in STAGES.items()]
    reference = Probe("torchvision resnet50", torchvision_resnet50(), STAGES["resnet50"], image, k)
    for probe in [*probes, reference]:
        probe.warm_up()
    for rep in range(reps):
        for probe in probes:
            for stage in probe.rows:
                probe.rep(stage, rep, checks)
                if probe.name == "resnet50":  # torchvision's beside it, under the same load
                    reference.rep(stage, rep, checks, with_captum=False)
    met = True
    rows = []
    for probe in probes:
        for stage, row in probe.rows.items():
            speedup = ratio(row.captum, row.gradient)
            ok = speedup >= CAPTUM_TARGET
            met &= ok or not judge
            cells = [
                f"timm {probe.name}",
                f"`{stage}` {'x'.join(map(str, row.shape))}",
                ms(statistics.median(row.captum)),
                ms(statistics.median(row.gradient)),
                f"**{speedup:.2f}x**" + (f" ({'met' if ok else 'MISSED'})" if judge else ""),
                ms(statistics.median(row.deconvnet)),
            ]
            if probe.name == "resnet50":
                theirs = reference.rows[stage]
                slower = ratio(row.deconvnet, theirs.deconvnet)
                ok = slower <= RESNET_TARGET
                met &= ok or not judge
                cells += [
                    ms(statistics.median(theirs.deconvnet)),
                    f"**{slower:.2f}x**" + (f" ({'met' if ok else 'MISSED'})" if judge else ""),
                ]
            else:
                cells += ["", ""]
            rows.append(cells + [f"{row.error:.1e}"])
    worst = max(row.error for probe in probes for row in probe.rows.values())
    header = [
        "model",
        "stage output (C x H x W)",
        "Captum NeuronGradient / projection",
        "deconv gradient / projection",
        f"Captum / deconv gradient (target >= {CAPTUM_TARGET:g}x)",
        "deconv deconvnet / projection",
        "torchvision resnet50 deconvnet / projection",
        f"timm / torchvision (target <= {RESNET_TARGET:g}x)",
        "max rel err vs Captum",
    ]
    lines = [
        f"timm's resnet50, efficientnet_b0 and convnext_tiny and torchvision's resnet50, random weights and batch-norm "
        f"statistics, one {size}x{size} image, its K={k} strongest activations at each stage output; medians of "
        f"{reps} interleaved repetition(s), ratios the medians of the per-rep ratios; the deconv columns are the "
        "batched time over K, forward pass included; Captum: one neuron a call.",
        "",
        table(header, rows),
    ]
    return lines, worst, met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="64x64, 1 rep, K=8 (seconds): proves the script works")
    parser.add_argument("--reps", type=int, help="repetitions (default 5, quick 1)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import captum

    started = time.perf_counter()
    lines, worst, met = measure(
        64 if args.quick else 224, 8 if args.quick else 64, args.reps or (1 if args.quick else 5), 3, not args.quick
    )
    ok = worst <= TOLERANCE
    lines += [
        "",
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), Captum {captum.__version__}; "
        f"agreement: {'OK' if ok else 'FAILED'}: max relative error vs Captum {worst:.1e} (tolerance {TOLERANCE:g}); "
        f"targets: {'all met' if met else 'MISSED (see the table)'}; total time {time.perf_counter() - started:.0f} s",
    ]
    text = "\n".join(lines)
    print(text, flush=True)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
