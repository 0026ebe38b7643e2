"""A dataset of tensors for tests: items ``(image, 0)``, with a made-up file path per item."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class Tensors(Dataset):
    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], 0

    def path(self, i: int) -> str:
        return f"image{i}.png"
