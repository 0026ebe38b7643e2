#!/usr/bin/env python
"""deconv against Captum's NeuronDeconvolution, side by side in one run: one command, one table.

    python benchmarks/run.py            # the full table (5 to 30 minutes on 2 cores, load permitting)
    python benchmarks/run.py --quick    # tiny sizes, under a minute: proves the script and the agreement

Per model and layer it measures, interleaved rep by rep so that load on a shared machine hits all
columns alike (medians are reported, with the spread of the per-projection times):

* ``forward``: the bare forward pass of the model's layers up to the probed one (no_grad);
* ``Captum``: ``NeuronDeconvolution(model, layer).attribute(image, neuron)``, as its users call
  it (the whole model; one neuron per call);
* ``single``: ``mirror.projections(image, [one selection])``: one projection, its forward pass included;
* ``batched``: ``mirror.projections(image, K selections)`` (one per channel, at its strongest
  position) divided by K, forward pass included;
* the ratios, and the peak RSS of the batched call (VmHWM, reset before it).

Every row also checks that the outputs agree: Captum returns the modified gradient of the neuron,
``deconv`` the projection of the activation's value, so ``projection / value`` must equal Captum's
attribution (max abs difference / max abs of Captum's, at most 1e-5 in float32). Without captum
installed the reference is the same modified backward pass done here with autograd hooks.

timm's ResNet-50, EfficientNet-B0 and ConvNeXt-T at their stage outputs against Captum's NeuronGradient
follow (``benchmarks/timm_stages.py``, which also runs alone; ``--no-timm`` skips them).

The memory rows run in a fresh subprocess each (peak RSS from the child's own ``VmHWM``): the top 9
images of every channel of VGG16's conv5_3 (512 x 9 = 4,608 projections), through
``mirror.projections(..., crop=True)``, each chunk dropped as it comes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import deconv  # noqa: E402
from deconv.mirror import DEFAULT_MEMORY_BUDGET  # noqa: E402

TOLERANCE = 1e-5
VGG_PROBES = {"conv1_2": "features.3", "conv3_3": "features.15", "conv5_3": "features.29"}
RESNET_PROBES = {"layer1": "layer1", "layer2": "layer2", "layer3": "layer3", "layer4": "layer4"}  # block outputs
ZF_PROBES = {"conv1": "features.1", "conv2": "features.4", "conv5": "features.11"}
# The issues' targets: Captum's time per projection over deconv's (batched), per model and layer.
TARGETS = {
    ("VGG16", "conv1_2"): 100,
    ("VGG16", "conv3_3"): 50,
    ("VGG16", "conv5_3"): 5,
    ("ResNet-50", "layer1"): 50,
    ("ResNet-50", "layer2"): 20,
    ("ResNet-50", "layer3"): 5,
    ("ResNet-50", "layer4"): 2,
}
RULE_COST = 1.3  # guided and gradient projections cost at most this much more than deconvnet ones


# ------------------------------------------------------------------------------------------- models
def vgg16_model() -> tuple[nn.Module, str]:
    """VGG16 with random weights: torchvision's if importable, else the same layout built here."""
    torch.manual_seed(0)
    try:
        import torchvision  # noqa: F401
        from torchvision.models import vgg16

        return vgg16(weights=None).eval(), f"torchvision {torchvision.__version__} vgg16(weights=None)"
    except Exception:  # noqa: BLE001 - any import problem: use our own copy of the architecture
        from vgg import vgg16 as own_vgg16

        return own_vgg16(0), "benchmarks/vgg.py VGG16 (torchvision layout)"


def resnet50_model() -> tuple[nn.Module, str]:
    """torchvision's ResNet-50 with random weights and random batch-norm statistics (no downloads)."""
    import torchvision
    from torchvision.models import resnet50

    torch.manual_seed(0)
    model = resnet50(weights=None)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
    return model.eval(), f"torchvision {torchvision.__version__} resnet50(weights=None)"


def default_model() -> tuple[nn.Module, str]:
    """The embedded default (trained ZFNet28) if its weights exist, else the untrained architecture."""
    from deconv.zoo import models

    if models.WEIGHTS.is_file():
        return models.default_model(), "deconv.zoo.models.default_model() (trained)"
    torch.manual_seed(0)
    return models.ZFNet28().eval(), "ZFNet28, untrained (zfnet28_fashion.pt not there yet)"


def default_image() -> torch.Tensor:
    try:
        from deconv.zoo.models import default_dataset

        return default_dataset()[0][0][None]
    except Exception:  # noqa: BLE001
        return torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------- reference
def reference() -> tuple[Callable[..., torch.Tensor], str]:
    """``attribute(model, layer_module, image, neuron) -> (1, C, H, W)``: Captum's NeuronDeconvolution,
    or (without captum) the same modified backward pass with autograd hooks."""
    try:
        import captum
        from captum.attr import NeuronDeconvolution

        def attribute(model: nn.Module, layer: nn.Module, image: torch.Tensor, neuron: tuple) -> torch.Tensor:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return NeuronDeconvolution(model, layer).attribute(image, neuron_selector=neuron)

        return attribute, f"Captum {captum.__version__} NeuronDeconvolution"
    except ImportError:
        return _hooked_deconvolution, "autograd hooks (captum not installed)"


def rule_references() -> dict[str, Callable[..., torch.Tensor]]:
    """Captum's reference for each rule, ``attribute(model, layer_module, image, neuron)``: its
    ``NeuronDeconvolution``, ``Saliency`` (``abs=False``) of the neuron's value, ``NeuronGuidedBackprop``."""
    from captum.attr import NeuronDeconvolution, NeuronGuidedBackprop, Saliency

    def neuron_value(model: nn.Module, layer: nn.Module, neuron: tuple) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(x: torch.Tensor) -> torch.Tensor:
            return run_until(model, layer, x)[(slice(None), *neuron)]

        return forward

    def quiet(make: Callable[[], torch.Tensor]) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return make()

    return {
        "deconvnet": lambda m, layer, x, n: quiet(
            lambda: NeuronDeconvolution(m, layer).attribute(x, neuron_selector=n)
        ),
        "gradient": lambda m, layer, x, n: quiet(lambda: Saliency(neuron_value(m, layer, n)).attribute(x, abs=False)),
        "guided": lambda m, layer, x, n: quiet(lambda: NeuronGuidedBackprop(m, layer).attribute(x, neuron_selector=n)),
    }


class _Stop(Exception):
    pass


def run_until(model: nn.Module, layer: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """The model's own forward pass, stopped as soon as ``layer`` has computed its output."""
    seen: list[torch.Tensor] = []

    def stop(module: nn.Module, args: Any, out: torch.Tensor) -> None:
        seen.append(out)
        raise _Stop

    handle = layer.register_forward_hook(stop)
    try:
        model(image)
    except _Stop:
        pass
    finally:
        handle.remove()
    return seen[0]


def _hooked_deconvolution(model: nn.Module, layer: nn.Module, image: torch.Tensor, neuron: tuple) -> torch.Tensor:
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    flags = [m.inplace for m in relus]
    saved: list[torch.Tensor] = []
    hooks = [m.register_full_backward_hook(lambda m, gi, go: (torch.relu(go[0]),)) for m in relus]
    hooks.append(layer.register_forward_hook(lambda m, i, o: saved.append(o)))
    try:
        for m in relus:
            m.inplace = False
        x = image.clone().requires_grad_(True)
        model(x)
        (grad,) = torch.autograd.grad(saved[0][(0, *neuron)], x)
    finally:
        for h in hooks:
            h.remove()
        for m, flag in zip(relus, flags):
            m.inplace = flag
    return grad


# ------------------------------------------------------------------------------------------ helpers
def peak_reset() -> bool:
    """Resets this process's peak RSS (VmHWM); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_kb(key: str = "VmHWM") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import captum

        captum_version = captum.__version__
    except ImportError:
        captum_version = "not installed"
    mem = "?"
    try:
        kb = int(
            next(
                line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
            ).split()[1]
        )
        mem = f"{kb / 1024**2:.0f} GB"
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "captum": captum_version,
        "python": platform.python_version(),
        "load": load,
    }


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.0f} ms" if ms >= 100 else (f"{ms:.1f} ms" if ms >= 1 else f"{ms:.2f} ms")


@dataclass
class Row:
    model: str
    layer: str
    name: str
    k: int
    forward: list[float] = field(default_factory=list)
    reference: list[float] = field(default_factory=list)
    single: list[float] = field(default_factory=list)
    batched: list[float] = field(default_factory=list)
    peak_mb: float = float("nan")
    peak_delta_mb: float = float("nan")
    error: float = 0.0
    target: float | None = None

    def med(self, xs: list[float]) -> float:
        return statistics.median(xs) if xs else float("nan")

    def cells(self) -> list[str]:
        ref, single, batched = self.med(self.reference), self.med(self.single), self.med(self.batched)
        spread = f" ({fmt_ms(min(self.batched))}-{fmt_ms(max(self.batched))})" if len(self.batched) > 1 else ""
        # median of the per-rep ratios: each rep measures both back to back, under the same load
        ratio = statistics.median(r / b for r, b in zip(self.reference, self.batched))
        ratio_single = statistics.median(r / s for r, s in zip(self.reference, self.single))
        verdict = (
            ""
            if self.target is None
            else (f" >= {self.target:g}x met" if ratio >= self.target else f" < {self.target:g}x MISSED")
        )
        return [
            self.model,
            f"{self.name} (`{self.layer}`)",
            fmt_ms(self.med(self.forward)),
            fmt_ms(ref),
            fmt_ms(single),
            f"{fmt_ms(batched)}{spread}, K={self.k}",
            f"{ratio_single:.1f}x",
            f"**{ratio:.3g}x**{verdict}",
            f"{self.peak_mb:.0f} MB (+{self.peak_delta_mb:.0f})",
            f"{self.error:.1e}",
        ]


HEADER = [
    "model",
    "layer",
    "forward to layer",
    "{ref} / projection",
    "deconv single",
    "deconv batched / projection",
    "ref / single",
    "ref / batched",
    "peak RSS batched (+ over before)",
    "max rel err vs ref",
]


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- measurements
def measure_layer(
    model: nn.Module,
    mirror: deconv.Mirror,
    image: torch.Tensor,
    model_name: str,
    name: str,
    layer: str,
    k: int,
    reps: int,
    references: int,
    attribute: Callable[..., torch.Tensor],
    targets: bool = True,
) -> Row:
    images = mirror.check_images(image)
    top = mirror.index(layer)
    out = mirror.graph.run(images, [top], top).outputs[top][0]
    channels, height, width = out.shape
    best, where = out.flatten(1).max(1)
    live = [c for c in best.argsort(descending=True).tolist() if best[c] > 0][:k]
    selections = [deconv.Selection(0, layer, c, int(where[c]) // width, int(where[c]) % width) for c in live]
    values = [float(best[c]) for c in live]
    module = dict(model.named_modules())[layer]
    row = Row(model_name, layer, name, len(selections), target=TARGETS.get((model_name, name)) if targets else None)

    def run_projections(sels: list) -> None:
        for _ in mirror.projections(images, sels):
            pass

    # warm up: caches (shapes), first-touch allocations, thread pools
    run_projections(selections[:1])
    attribute(model, module, image, tuple(selections[0][2:]))
    errors = []
    for rep in range(reps):
        with torch.no_grad():
            t = time.perf_counter()
            run_until(model, module, image)
            row.forward.append(time.perf_counter() - t)
        s = selections[rep % min(references, len(selections))]
        t = time.perf_counter()
        ref = attribute(model, module, image, tuple(s[2:]))
        row.reference.append(time.perf_counter() - t)
        t = time.perf_counter()
        run_projections([s])
        row.single.append(time.perf_counter() - t)
        before = rss_kb("VmRSS")
        reset = peak_reset()
        t = time.perf_counter()
        run_projections(selections)
        row.batched.append((time.perf_counter() - t) / len(selections))
        if reset:
            row.peak_mb = rss_kb("VmHWM") / 1024
            row.peak_delta_mb = row.peak_mb - before / 1024
        if rep < references:
            ours = next(mirror.projections(images, [s]))[1][0] / values[rep % len(values)]
            errors.append(float((ours - ref[0]).abs().max() / ref.abs().max().clamp_min(1e-30)))
    row.error = max(errors)
    return row


def measure_rules(
    model: nn.Module,
    mirror: deconv.Mirror,
    image: torch.Tensor,
    name: str,
    layer: str,
    k: int,
    reps: int,
) -> list[str]:
    """Per rule, the batched time per projection (K strongest channels, interleaved rep by rep), its
    ratio to the deconvnet rule's, and the largest relative difference from Captum's reference."""
    images = mirror.check_images(image)
    top = mirror.index(layer)
    out = mirror.graph.run(images, [top], top).outputs[top][0]
    best, where = out.flatten(1).max(1)
    live = [c for c in best.argsort(descending=True).tolist() if best[c] > 0][:k]
    width = out.shape[-1]
    selections = [deconv.Selection(0, layer, c, int(where[c]) // width, int(where[c]) % width) for c in live]
    module = dict(model.named_modules())[layer]
    references = rule_references()
    times: dict[str, list[float]] = {rule: [] for rule in references}
    for rule in references:  # warm up
        for _ in mirror.projections(images, selections[:1], rule=rule):
            pass
    for _ in range(reps):
        for rule in references:
            t = time.perf_counter()
            for _ in mirror.projections(images, selections, rule=rule):
                pass
            times[rule].append((time.perf_counter() - t) / len(selections))
    cells = [f"VGG16 {name} (`{layer}`), K={len(selections)}"]
    for rule, attribute in references.items():
        s = selections[0]
        ours = mirror.project_many(images, [s], rule=rule)[0] / float(best[s.channel])
        ref = attribute(model, module, image, tuple(s[2:]))[0]
        error = float((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
        ratio = statistics.median(t / d for t, d in zip(times[rule], times["deconvnet"]))
        verdict = "" if rule == "deconvnet" else (" met" if ratio <= RULE_COST else " MISSED")
        cells.append(f"{fmt_ms(statistics.median(times[rule]))} ({ratio:.2f}x{verdict}; err {error:.1e})")
    return cells


MEMORY_CHILD = "--memory-child"


def memory_child(args: argparse.Namespace) -> None:
    """In a fresh process: top 9 images of every channel of VGG16 conv5_3 over a pool, all projected."""
    torch.manual_seed(1)
    model, _ = vgg16_model()
    mirror = deconv.build_mirror(model)
    layer = VGG_PROBES["conv5_3"]
    top = mirror.index(layer)
    pool = torch.randn(args.pool, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    pool = mirror.check_images(pool)
    best = []
    for start in range(0, len(pool), 8):
        out = mirror.graph.run(pool[start : start + 8], [top], top).outputs[top]
        best.append(out.flatten(2).max(2))  # values and positions (n, C)
    values = torch.cat([b.values for b in best])
    positions = torch.cat([b.indices for b in best])
    width = out.shape[-1]
    k = min(args.top, len(pool))
    channels = min(args.channels, values.shape[1])
    selections = []
    for c in range(channels):
        for n in values[:, c].topk(k).indices.tolist():
            p = int(positions[n, c])
            selections.append(deconv.Selection(n, layer, c, p // width, p % width))
    del best, out
    baseline = rss_kb("VmHWM")  # this process's own peak (ru_maxrss would include the parent's: it survives exec)
    t = time.perf_counter()
    done = 0
    for where, crops in mirror.projections(pool, selections, crop=True, memory_budget=args.budget):
        done += len(where)
        del crops
    elapsed = time.perf_counter() - t
    peak = rss_kb("VmHWM")
    print(json.dumps({"projections": done, "seconds": elapsed, "baseline_kb": baseline, "peak_kb": peak}))


def measure_memory(size: int, pool: int, channels: int, top: int, budget: int) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        MEMORY_CHILD,
        "--size",
        str(size),
        "--pool",
        str(pool),
        "--channels",
        str(channels),
        "--top",
        str(top),
        "--budget",
        str(budget),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ the Fig. 2 job
def measure_fig2(reps: int, quick: bool) -> list[str]:
    """The whole Fig. 2 job on the embedded default (every conv layer, top 9, the bundled images) beside
    bare forward passes over the same images, all read through the same loader. The scan runs its
    forward pass channels-last, so the bare forward is timed in both layouts: the model's own
    (the target's baseline) and channels-last (the stricter one: what the scan itself adds)."""
    import itertools

    from deconv.analyses.top9 import project_top, scan
    from deconv.data import batches
    from deconv.engine.graph import channels_last
    from deconv.figures.sheet import display_tiles, figure2

    model, dataset = deconv.default_model(), deconv.default_dataset()
    mirror = deconv.build_mirror(model)
    layers = ["features.1", "features.4", "features.7", "features.9", "features.11"]
    indices = range(1000 if quick else len(dataset))
    deepest = model.features[: mirror.index(layers[-1]) + 1]

    def forward(net: nn.Module, layout: Callable[[torch.Tensor], torch.Tensor] = lambda x: x) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                for batch in batches(dataset, 500, indices=indices):
                    net(layout(batch.images))

        return run

    found: dict[str, Any] = {}

    def scanning() -> None:
        found["state"] = scan(mirror, dataset, layers, batch_size=500, indices=indices, progress=False)

    def projecting() -> None:
        records = found["state"].records(dataset)
        found["chunks"] = list(project_top(mirror, dataset, records, batch_size=500, progress=False))

    def rendering() -> None:
        for layer, group in itertools.groupby(found["chunks"], key=lambda c: c.records[0].layer):
            tiles = [t for chunk in group for t in display_tiles(chunk, dataset.preprocess.denormalize)]
            figure2(tiles, layer)

    steps = {
        "forward, whole model": forward(model),
        "forward, whole model, channels-last": forward(model, channels_last),
        "forward to features.11": forward(deepest),
        "forward to features.11, channels-last": forward(deepest, channels_last),
        "scan (top 9, 5 layers)": scanning,
        "project 3,168 selections": projecting,
        "render the sheets": rendering,
    }
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(reps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)

    def ratio(parts: list[str], over: str) -> float:
        """Median over the reps of the per-rep ratio: each rep measures all steps back to back."""
        return statistics.median(sum(times[p][r] for p in parts) / times[over][r] for r in range(reps))

    def judged(value: float, target: float) -> str:
        return f"**{value:.2f}x** (target {target:g}x: {'met' if value <= target else 'MISSED'})"

    scan_, job = ["scan (top 9, 5 layers)"], ["scan (top 9, 5 layers)", "project 3,168 selections"]
    rows = [[name, f"{statistics.median(v):.2f} s"] for name, v in times.items()]
    rows += [
        ["scan / forward to features.11", judged(ratio(scan_, "forward to features.11"), 1.10)],
        [
            "scan / forward to features.11, channels-last",
            f"{ratio(scan_, 'forward to features.11, channels-last'):.2f}x",
        ],
        ["scan + project / forward, whole model", judged(ratio(job, "forward, whole model"), 2)],
        [
            "scan + project / forward, whole model, channels-last",
            f"{ratio(job, 'forward, whole model, channels-last'):.2f}x",
        ],
        [
            "scan + project + render / forward, whole model",
            f"{ratio(job + ['render the sheets'], 'forward, whole model'):.2f}x",
        ],
    ]
    return [
        "",
        f"The Fig. 2 job on the embedded default over {len(indices):,} bundled images, batch 500, medians of {reps} "
        "(ratios: medians of the per-rep ratios); every pass reads the images through the same loader:",
        "",
        table(["step", "time"], rows),
    ]


# --------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (< 60 s): proves the script works")
    parser.add_argument("--reps", type=int, help="repetitions per measurement (default 5, quick 1)")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocess rows")
    parser.add_argument("--no-fig2", action="store_true", help="skip the Fig. 2 job rows")
    parser.add_argument("--no-timm", action="store_true", help="skip timm's stage rows (benchmarks/timm_stages.py)")
    parser.add_argument(MEMORY_CHILD, action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=224, help=argparse.SUPPRESS)
    parser.add_argument("--pool", type=int, default=16, help=argparse.SUPPRESS)
    parser.add_argument("--channels", type=int, default=512, help=argparse.SUPPRESS)
    parser.add_argument("--top", type=int, default=9, help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=int, default=DEFAULT_MEMORY_BUDGET, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(args)
        return 0

    quick = args.quick
    reps = args.reps or (1 if quick else 5)
    size = 64 if quick else 224
    references = 1 if quick else 3
    attribute, ref_name = reference()
    info = machine()
    started = time.perf_counter()
    print(
        f"machine: {info['nproc']} cores, {info['cpu']}, {info['memory']} RAM; torch {info['torch']} "
        f"({info['threads']} threads), python {info['python']}; reference: {ref_name}; "
        f"load average at start {info['load']:.1f}",
        flush=True,
    )

    rows: list[Row] = []
    vgg, vgg_name = vgg16_model()
    vgg_mirror = deconv.build_mirror(vgg)
    image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    ks = {"conv1_2": 64, "conv3_3": 256, "conv5_3": 64} if not quick else {"conv1_2": 16, "conv3_3": 16, "conv5_3": 8}
    for name, layer in VGG_PROBES.items():
        rows.append(
            measure_layer(
                vgg, vgg_mirror, image, "VGG16", name, layer, ks[name], reps, references, attribute, not quick
            )
        )
        print(f"  measured VGG16 {name}", flush=True)
    rule_rows = [
        measure_rules(vgg, vgg_mirror, image, name, layer, ks[name] if quick else 32, reps)
        for name, layer in VGG_PROBES.items()
    ]
    print("  measured the rules", flush=True)
    del vgg, vgg_mirror
    resnet, resnet_name = resnet50_model()
    resnet_mirror = deconv.build_mirror(resnet)
    for name, layer in RESNET_PROBES.items():
        rows.append(
            measure_layer(
                resnet,
                resnet_mirror,
                image,
                "ResNet-50",
                name,
                layer,
                64 if not quick else 8,
                reps,
                references,
                attribute,
                not quick,
            )
        )
        print(f"  measured ResNet-50 {name}", flush=True)
    del resnet, resnet_mirror
    zf, zf_name = default_model()
    zf_mirror = deconv.build_mirror(zf)
    zf_image = default_image()
    for name, layer in ZF_PROBES.items():
        rows.append(measure_layer(zf, zf_mirror, zf_image, "default", name, layer, 64, reps, references, attribute))
    print("  measured the embedded default", flush=True)

    short = ref_name.split(" NeuronDeconvolution")[0].split(" (")[0]
    header = [h.replace("{ref}", short) for h in HEADER]
    header = [h.replace("ref /", f"{short} /").replace("vs ref", f"vs {short}") for h in header]
    out = [
        f"VGG16: {vgg_name}, random weights; ResNet-50: {resnet_name}, random weights and batch-norm statistics; "
        f"one {size}x{size} image; default: {zf_name}, one 28x28 Fashion-MNIST image.",
        f"Medians of {reps} interleaved repetition(s); batched spread in brackets; ratios are medians of the per-rep "
        "ratios. K = selections in the batched call (one per channel, the K strongest channels, each at its "
        "strongest position).",
        "",
        table(header, [r.cells() for r in rows]),
    ]

    out += [
        "",
        "Rules (batched time per projection, ratio to the deconvnet rule's, largest relative difference from "
        "Captum's NeuronDeconvolution, Saliency (abs=False) and NeuronGuidedBackprop; "
        f"target: guided and gradient <= {RULE_COST}x):",
        "",
        table(["layer", "deconvnet", "gradient", "guided"], rule_rows),
    ]
    worst_rule = max(float(c.rsplit("err ", 1)[1].rstrip(")")) for r in rule_rows for c in r[1:])

    if not args.no_memory:
        cases = (
            [(size, 4, 64, 1, DEFAULT_MEMORY_BUDGET)]
            if quick
            else [(224, 16, 512, 9, DEFAULT_MEMORY_BUDGET), (224, 4, 16, 4, 256 * 1024**2)]
        )
        mem_rows = []
        for s, pool, channels, top, budget in cases:
            r = measure_memory(s, pool, channels, top, budget)
            peak, base = r["peak_kb"] / 1024, r["baseline_kb"] / 1024
            target = (
                " (target < 2.5 GB: " + ("met" if peak < 2560 else "MISSED") + ")" if r["projections"] == 4608 else ""
            )
            mem_rows.append(
                [
                    f"VGG16 conv5_3, top {top} of {channels} channels over {pool} images ({s}x{s})",
                    f"{r['projections']:,}",
                    f"{budget / 1024**2:.0f} MB",
                    f"{r['seconds']:.1f} s",
                    fmt_ms(r["seconds"] / r["projections"]),
                    f"{base:.0f} MB",
                    f"**{peak:.0f} MB**{target}",
                ]
            )
            print(f"  measured memory case {r['projections']} projections", flush=True)
        out += [
            "",
            "Peak memory, each case in a fresh process (`mirror.projections(..., crop=True)`, chunks dropped):",
            "",
            table(
                [
                    "case",
                    "projections",
                    "memory_budget",
                    "time",
                    "per projection",
                    "RSS before (model, images, top-9 scan)",
                    "peak RSS",
                ],
                mem_rows,
            ),
        ]

    if not args.no_fig2:
        out += measure_fig2(reps, quick)
        print("  measured the Fig. 2 job", flush=True)
    timm_error = 0.0
    if not args.no_timm and not ref_name.startswith("Captum"):
        out += ["", "timm's stage rows skipped: they need Captum's NeuronGradient (the bench extra)."]
    elif not args.no_timm:
        import timm_stages

        lines, timm_error, _ = timm_stages.measure(size, 8 if quick else 64, reps, references, not quick)
        out += ["", "timm's CNNs at their stage outputs against Captum's NeuronGradient (gradient rule):", "", *lines]
        print("  measured timm's stages", flush=True)
    worst = max([r.error for r in rows] + [worst_rule, timm_error])
    ok = worst <= TOLERANCE
    out += [
        "",
        f"agreement: {'OK' if ok else 'FAILED'}: max relative error vs {short} {worst:.1e} "
        f"(tolerance {TOLERANCE:g}); total time {time.perf_counter() - started:.0f} s",
    ]
    text = "\n".join(out)
    print(text, flush=True)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
