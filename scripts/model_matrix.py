"""The coverage matrix of issue 20: every timm CNN family and Hugging Face's ResNet, RegNet and ConvNeXt,
each either refused in one line naming the operation, or checked against the independent oracle
(tests/oracle.py) under every rule.

Each model is built offline with random weights (``timm.create_model(name, pretrained=False)``; Hugging
Face's from a small config of its config class), in float64, eval mode, with random batch-norm statistics,
on one thread. An accepted model is projected at a middle block, its deepest spatial block and its class
output, under the deconvnet, guided and gradient rules, and every projection must be within ``RTOL`` of
the oracle's, relative to that projection's largest value (``oracle.assert_matches``). A disagreement is
a bug: deconv accepted the model and drew a wrong picture.

    PYTHONPATH=$PWD:$PWD/tests python scripts/model_matrix.py            # all models -> docs/models.md
    PYTHONPATH=$PWD:$PWD/tests python scripts/model_matrix.py resnet18   # just these, printed only

tests/builders/test_timm.py runs the same check on a subset.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(ROOT), str(ROOT / "tests")) if p not in sys.path]

import oracle  # noqa: E402  (tests/oracle.py, found through the path set above)

import deconv  # noqa: E402
from deconv.errors import one_line  # noqa: E402

RULES = ("deconvnet", "guided", "gradient")
RTOL = 1e-9  # float64: each projection within 1e-9 of the oracle's, relative to its own largest value
IMAGES = 2
PER_LAYER = 3  # random positive activations per probe point, besides the largest


@dataclass(frozen=True)
class Entry:
    """One model of the matrix: ``name`` is timm's, or ``hf:<Class>`` for a Hugging Face one."""

    family: str
    name: str
    size: int = 64  # input height and width


MODELS = [
    Entry("resnet", "resnet18"),
    Entry("resnet", "resnet18d"),
    Entry("resnetv2", "resnetv2_50"),
    Entry("regnetx", "regnetx_002"),
    Entry("regnety", "regnety_002"),
    Entry("regnetz", "regnetz_005"),
    Entry("densenet", "densenet121"),
    Entry("inception_v3", "inception_v3", 96),
    Entry("inception_v4", "inception_v4", 96),
    Entry("inception_resnet_v2", "inception_resnet_v2", 96),
    Entry("dpn", "dpn48b"),
    Entry("dpn", "dpn68"),
    Entry("xception", "xception41"),
    Entry("vovnet", "ese_vovnet19b_dw"),
    Entry("gernet", "gernet_s"),
    Entry("vgg", "vgg11", 32),
    Entry("repvgg", "repvgg_a0"),
    Entry("mobileone", "mobileone_s0"),
    Entry("mnasnet", "mnasnet_050"),
    Entry("mobilenetv1", "mobilenetv1_100"),
    Entry("mobilenetv2", "mobilenetv2_050"),
    Entry("mobilenetv3", "mobilenetv3_small_050"),
    Entry("efficientnet", "efficientnet_b0"),
    Entry("efficientnet", "efficientnet_lite0"),
    Entry("tf_efficientnet", "tf_efficientnet_b0"),
    Entry("tf_efficientnet", "tf_efficientnet_lite0"),
    Entry("ghostnet", "ghostnet_050"),
    Entry("hrnet", "hrnet_w18_small"),
    Entry("cspresnet", "cspresnet50"),
    Entry("cspdarknet", "cspdarknet53"),
    Entry("cspdarknet", "cs3darknet_s"),
    Entry("darknet", "darknet17"),
    Entry("seresnet", "seresnet18"),
    Entry("ecaresnet", "ecaresnet26t"),
    Entry("skresnet", "skresnet18"),
    Entry("resnest", "resnest14d"),
    Entry("resnetrs", "resnetrs50"),
    Entry("nf_resnet", "nf_resnet26"),
    Entry("nfnet", "dm_nfnet_f0"),
    Entry("convnext", "convnext_atto"),
    Entry("selecsls", "selecsls42b"),
    Entry("dla", "dla34"),
    Entry("res2net", "res2net50_14w_8s"),
    Entry("rexnet", "rexnet_100"),
    Entry("lcnet", "lcnet_050"),
    Entry("hgnetv2", "hgnetv2_b0"),
    Entry("tresnet", "tresnet_m"),
    Entry("fbnet", "fbnetc_100"),
    Entry("spnasnet", "spnasnet_100"),
    Entry("Hugging Face ResNet", "hf:ResNetForImageClassification"),
    Entry("Hugging Face RegNet", "hf:RegNetForImageClassification"),
    Entry("Hugging Face ConvNeXt", "hf:ConvNextForImageClassification"),
    Entry("vit (attention: refused)", "vit_tiny_patch16_224", 224),
    Entry("swin (attention: refused)", "swin_tiny_patch4_window7_224", 224),
]
ATTENTION = {"vit_tiny_patch16_224", "swin_tiny_patch4_window7_224"}
"""Models of attention over tokens: refused by name, never mirrored."""


def hf_model(name: str) -> nn.Module:
    """A Hugging Face image classifier from a small config of its own config class (random weights)."""
    import transformers

    small = {"num_labels": 10, "hidden_sizes": [16, 32, 48, 64], "depths": [1, 1, 2, 1]}
    configs = {
        "ResNetForImageClassification": transformers.ResNetConfig(embedding_size=16, **small),
        "RegNetForImageClassification": transformers.RegNetConfig(embedding_size=16, groups_width=8, **small),
        "ConvNextForImageClassification": transformers.ConvNextConfig(**small),
    }
    return getattr(transformers, name)(configs[name])


def build(entry: Entry) -> nn.Module:
    """The model in float64 and eval mode, with random weights and random normalisation statistics.

    Batch norms get weights in [0.5, 1.5], biases and running means from N(0, 0.5^2), running variances in
    [0.5, 2]; every other parameter of at most one dimension whose entries are all equal (zero-initialised
    biases and gains, constant layer scales) is redrawn from N(0, 0.5^2), so that no path is switched off.
    """
    torch.manual_seed(0)
    if entry.name.startswith("hf:"):
        model = hf_model(entry.name[3:])
    else:
        import timm

        model = timm.create_model(entry.name, pretrained=False, num_classes=10)
    model = model.to(torch.float64).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        norms = set()
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_var is not None:
                module.running_mean.normal_(0.0, 0.5, generator=gen)
                module.running_var.uniform_(0.5, 2.0, generator=gen)
                if module.affine:
                    module.weight.uniform_(0.5, 1.5, generator=gen)
                    module.bias.normal_(0.0, 0.5, generator=gen)
                    norms |= {module.weight, module.bias}
        for parameter in model.parameters():
            flat = parameter.flatten()
            if parameter.dim() <= 1 and parameter not in norms and len(flat) and bool((flat == flat[0]).all()):
                parameter.normal_(0.0, 0.5, generator=gen)
    return model


def logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Oracle tap for the class output: the model's output, or its ``logits`` field (a ``ModelOutput``)."""
    out = model(images)
    return out if isinstance(out, torch.Tensor) else out["logits"]


def probes(mirror: deconv.Mirror, model: nn.Module, image_shape: tuple[int, ...]) -> list[str]:
    """A middle block, the deepest block and the class output. Blocks are the mirror's blocks that are module
    names (the oracle taps modules) with a feature map larger than 1x1; if there are fewer than two, every
    such probe point instead."""
    modules = dict(model.named_modules())

    def spatial(names: list[str]) -> list[str]:
        shapes = {n: mirror.shape(n, image_shape) for n in names if n and n in modules}
        return [n for n, shape in shapes.items() if len(shape) == 3 and shape[1] * shape[2] > 1]

    blocks = spatial(mirror.blocks())
    if len(blocks) < 2:
        blocks = spatial(mirror.layer_names)
    return [blocks[len(blocks) // 2], blocks[-1], mirror.output_layer]


@dataclass
class Result:
    """``kind`` is "exact", "refused", "wrong" (accepted, but a projection disagrees with the oracle) or
    "error" (an exception other than a refusal, or a refusal that is not one line)."""

    kind: str
    text: str
    seconds: float


REFUSALS = (deconv.UnsupportedModuleError, deconv.UnsupportedGraphError)


def check(entry: Entry, progress: Callable[[str], None] = lambda _: None) -> Result:
    """Builds ``entry``'s model and its mirror; checks the mirror against the oracle under every rule."""
    start = time.perf_counter()

    def result(kind: str, text: str) -> Result:
        return Result(kind, text, time.perf_counter() - start)

    model = build(entry)
    gen = torch.Generator().manual_seed(2)
    images = torch.randn(IMAGES, 3, entry.size, entry.size, generator=gen, dtype=torch.float64)
    try:
        mirror = deconv.build_mirror(model, shape=tuple(images.shape[1:]))
    except REFUSALS as error:
        message = str(error)
        if "\n" in message:
            return result("error", f"a refusal of {len(message.splitlines())} lines: {one_line(message)}")
        return result("refused", re.sub(r"\S*site-packages/", "", message.split("; register one with")[0]))
    layers = probes(mirror, model, tuple(images.shape[1:]))
    taps = {mirror.output_layer: logits}
    selections = oracle.selections_at(model, images, layers, PER_LAYER, gen, taps)
    failures = []
    for rule in RULES:
        progress(rule)
        actual = mirror.project_many(images, selections, rule=rule)
        expected = oracle.project(model, images, selections, taps, rule=rule)
        for layer in layers:
            rows = [k for k, s in enumerate(selections) if s[1] == layer]
            try:
                oracle.assert_matches(actual[rows], expected[rows], rtol=RTOL)
            except AssertionError as error:
                scale = expected[rows].abs().flatten(1).amax(1)
                off = (actual[rows] - expected[rows]).abs().flatten(1).amax(1) / scale.clamp_min(1e-300)
                bad = int((off > RTOL).sum())
                if not bad and not bool(actual[rows].abs().amax() > 0):
                    continue  # the signal died out (random weights, a rectifying rule): both are zero, they agree
                how = f"{bad}/{len(rows)} projections off, up to {float(off.max()):.2g} relative" if bad else error
                failures.append(f"{rule} at `{layer}`: {one_line(how)}")
    where = f"(at {', '.join(f'`{n}`' for n in layers)}; {len(selections)} projections per rule)"
    if failures:
        return result("wrong", f"**WRONG** {where}: " + "; ".join(failures))
    return result("exact", f"exact under {', '.join(RULES)} {where}")


def table(rows: list[tuple[Entry, Result]]) -> str:
    counts = {kind: sum(r.kind == kind for _, r in rows) for kind in ("exact", "refused", "wrong", "error")}
    lines = [
        "# Coverage: timm and Hugging Face CNNs",
        "",
        "Written by `scripts/model_matrix.py` (run it again to update this page); `tests/builders/test_timm.py`",
        "runs the same check on a subset. Random weights and batch-norm statistics, float64, eval mode, one thread,",
        f"{IMAGES} random images. An accepted model is projected at a middle block, its deepest block and its class",
        f"output, {PER_LAYER} random positive activations and the largest at each, under every rule; each",
        f"projection must be within {RTOL:g} of the oracle's (`tests/oracle.py`, plain autograd with each rule's",
        "backward definitions), relative to its own largest value. Any other model is refused in one line: the",
        "refusal's message is shown without its hint on registering a mirror, with paths from site-packages.",
        "",
        f"**{len(rows)} models: {counts['exact']} exact under all three rules, {counts['refused']} refused, "
        f"{counts['wrong']} wrong, {counts['error']} errors.**",
        "",
    ]
    bad = [f"`{entry.name}`" for entry, r in rows if r.kind in ("wrong", "error")]
    if bad:
        lines += [f"**Bugs: {', '.join(bad)} (see their rows).**", ""]
    lines += [
        "| family | model | input | result | time |",
        "|---|---|---|---|---|",
    ]
    for entry, r in rows:
        text = r.text.replace("|", "\\|")
        if r.kind == "refused":
            text = f"refused: {text}"
        elif r.kind == "error":
            text = f"**ERROR**: {text}"
        lines.append(f"| {entry.family} | `{entry.name}` | {entry.size}x{entry.size} | {text} | {r.seconds:.1f} s |")
    return "\n".join(lines) + "\n"


def main(names: list[str]) -> int:
    torch.set_num_threads(1)
    unknown = set(names) - {e.name for e in MODELS}
    if unknown:
        print(f"unknown models: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    rows = []
    for entry in MODELS:
        if names and entry.name not in names:
            continue
        print(f"{entry.name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            r = check(entry, lambda rule: print(f"  {rule}", file=sys.stderr, flush=True))
        except Exception as error:  # a crash is an entry of the matrix too, and the matrix goes on
            r = Result("error", f"{type(error).__name__}: {one_line(error, 300)}", time.perf_counter() - start)
        rows.append((entry, r))
    text = table(rows)
    print(text)
    if not names:
        (ROOT / "docs" / "models.md").write_text(text)
    return 1 if any(r.kind in ("wrong", "error") for _, r in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
