"""Tests for deconv.data: idx files, image folders, preprocessing and fault-tolerant batching."""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deconv.data import (
    MAX_PIXELS,
    Batch,
    IdxDataset,
    ImageFolder,
    Preprocess,
    UnreadableImage,
    batches,
    load_image,
    open_dataset,
    read_idx,
)
from deconv.errors import DatasetError, SelectionError


def idx_bytes(array: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, code: int = 0x08, compress: bool = False) -> Path:
    data = idx_bytes(array, code)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def save(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


# --------------------------------------------------------------------------------------------- idx


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_uint8_raw_and_gzip(tmp_path: Path, compress: bool) -> None:
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    # A misleading name: the format is detected from the magic bytes, not from ".gz".
    path = write_idx(tmp_path / "images.gz" if not compress else tmp_path / "images.bin", images, compress=compress)
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (3, 4, 5)
    np.testing.assert_array_equal(out, images)


def test_read_idx_big_endian_types(tmp_path: Path) -> None:
    ints = np.array([1, -2, 70000], dtype=">i4")
    floats = np.array([[0.5, -1.25]], dtype=">f4")
    out_i = read_idx(write_idx(tmp_path / "i", ints, code=0x0C))
    out_f = read_idx(write_idx(tmp_path / "f", floats, code=0x0D))
    assert out_i.tolist() == [1, -2, 70000] and out_i.dtype == np.int32
    assert out_f.tolist() == [[0.5, -1.25]] and out_f.dtype == np.float32


def test_read_idx_bad_magic(tmp_path: Path) -> None:
    path = tmp_path / "x.idx"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    with pytest.raises(DatasetError, match=r"x\.idx: not an idx file.*89 50 4e 47"):
        read_idx(path)


def test_read_idx_unknown_dtype(tmp_path: Path) -> None:
    path = tmp_path / "x.idx"
    path.write_bytes(bytes([0, 0, 0x07, 1]) + struct.pack(">I", 2) + bytes(2))
    with pytest.raises(DatasetError, match="unknown idx dtype code 0x07"):
        read_idx(path)


def test_read_idx_dims_do_not_match_length(tmp_path: Path) -> None:
    path = tmp_path / "x.idx"
    path.write_bytes(idx_bytes(np.zeros((2, 3, 3), np.uint8), 0x08)[:-1])
    with pytest.raises(DatasetError, match=r"x\.idx: idx header declares shape \(2, 3, 3\) \(18 bytes.*holds 17 bytes"):
        read_idx(path)


def test_read_idx_header_cut_short(tmp_path: Path) -> None:
    path = tmp_path / "x.idx"
    path.write_bytes(bytes([0, 0, 0x08, 3, 0, 0]))
    with pytest.raises(DatasetError, match="declares 3 dimensions but the file ends inside the header"):
        read_idx(path)


def test_read_idx_truncated_gzip(tmp_path: Path) -> None:
    data = gzip.compress(idx_bytes(np.arange(1000, dtype=np.uint8).reshape(10, 10, 10), 0x08))
    path = tmp_path / "x-images-idx3-ubyte.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"x-images-idx3-ubyte\.gz: truncated or corrupt gzip"):
        read_idx(path)


def test_read_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nope.idx: cannot read idx file"):
        read_idx(tmp_path / "nope.idx")


def test_idx_dataset_items_and_labels(tmp_path: Path) -> None:
    images = np.zeros((4, 6, 6), np.uint8)
    images[1] = 255
    write_idx(tmp_path / "t-images-idx3-ubyte.gz", images, compress=True)
    write_idx(tmp_path / "t-labels-idx1-ubyte.gz", np.array([3, 1, 4, 1], np.uint8), compress=True)
    dataset = open_dataset(tmp_path / "t-images-idx3-ubyte.gz", Preprocess(channels=1, mean=(0.5,), std=(0.5,)))
    assert isinstance(dataset, IdxDataset) and len(dataset) == 4
    image, label = dataset[1]
    assert image.shape == (1, 6, 6) and image.dtype == torch.float32 and label == 1
    assert torch.allclose(image, torch.ones(1, 6, 6))
    assert torch.allclose(dataset[0][0], -torch.ones(1, 6, 6))
    assert [dataset[i][1] for i in range(4)] == [3, 1, 4, 1]
    assert dataset.path(0) is None
    # Three channels from greyscale: the same values repeated.
    rgb = IdxDataset(tmp_path / "t-images-idx3-ubyte.gz", None, Preprocess())
    assert rgb[1][0].shape == (3, 6, 6) and rgb[1][1] == -1


def test_idx_dataset_without_labels_file(tmp_path: Path) -> None:
    write_idx(tmp_path / "x-images-idx3-ubyte", np.zeros((2, 3, 3), np.uint8))
    dataset = open_dataset(tmp_path / "x-images-idx3-ubyte", Preprocess(channels=1))
    assert [dataset[i][1] for i in range(2)] == [-1, -1]


def test_idx_dataset_count_mismatch(tmp_path: Path) -> None:
    write_idx(tmp_path / "a-images-idx3-ubyte", np.zeros((3, 2, 2), np.uint8))
    write_idx(tmp_path / "a-labels-idx1-ubyte", np.zeros(2, np.uint8))
    with pytest.raises(DatasetError, match="holds 2 labels but .* holds 3 images"):
        open_dataset(tmp_path / "a-images-idx3-ubyte", Preprocess())


def test_idx_dataset_wrong_image_rank(tmp_path: Path) -> None:
    write_idx(tmp_path / "flat", np.zeros(5, np.uint8))
    with pytest.raises(DatasetError, match=r"expected uint8 images of shape \(N, H, W\)"):
        IdxDataset(tmp_path / "flat", None, Preprocess())


# ------------------------------------------------------------------------------------ image folder


def make_tree(root: Path) -> None:
    save(root / "top.png", Image.new("L", (8, 8), 10))
    save(root / "cats" / "b.PNG", Image.new("RGB", (8, 8), (255, 0, 0)))
    save(root / "cats" / "a.jpg", Image.new("RGB", (8, 8), (0, 255, 0)))
    save(root / "cats" / "deep" / "er" / "c.bmp", Image.new("RGB", (8, 8), (0, 0, 255)))
    save(root / "dogs" / "d.gif", Image.new("P", (8, 8), 0))
    save(root / "dogs" / "e.TIFF", Image.new("L", (8, 8), 200))
    save(root / "dogs" / "f.webp", Image.new("RGB", (8, 8), (9, 9, 9)))
    (root / "dogs" / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    save(root / ".hidden" / "g.png", Image.new("L", (8, 8)))


def test_image_folder_order_labels_classes(tmp_path: Path) -> None:
    make_tree(tmp_path)
    dataset = open_dataset(tmp_path, Preprocess())
    assert isinstance(dataset, ImageFolder)
    assert dataset.files == [
        "cats/a.jpg",
        "cats/b.PNG",
        "cats/deep/er/c.bmp",
        "dogs/d.gif",
        "dogs/e.TIFF",
        "dogs/f.webp",
        "top.png",
    ]
    assert dataset.classes == ["cats", "dogs"]
    assert [dataset[i][1] for i in range(len(dataset))] == [0, 0, 0, 1, 1, 1, -1]
    assert dataset.path(2) == str(tmp_path / "cats" / "deep" / "er" / "c.bmp")
    red = dataset[1][0]
    assert red.shape == (3, 8, 8) and torch.allclose(red[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))


def test_image_folder_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"nowhere: no such folder .*\.png .*\.webp"):
        ImageFolder(tmp_path / "nowhere", Preprocess())


def test_image_folder_root_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"file\.txt: not a folder"):
        ImageFolder(tmp_path / "file.txt", Preprocess())


def test_image_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"no images found .*\.jpeg .*\.tiff"):
        ImageFolder(tmp_path, Preprocess())


def test_open_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="missing: no such file or folder"):
        open_dataset(tmp_path / "missing", Preprocess())
    single = save(tmp_path / "one.png", Image.new("L", (4, 4)))
    with pytest.raises(DatasetError, match="a single image, not a dataset"):
        open_dataset(single, Preprocess())


def test_unreadable_file_raises_naming_it(tmp_path: Path) -> None:
    (tmp_path / "fake.jpg").write_text("this is text")
    dataset = ImageFolder(tmp_path, Preprocess())
    with pytest.raises(UnreadableImage, match=r"fake\.jpg: cannot read image") as info:
        dataset[0]
    assert isinstance(info.value, DatasetError) and info.value.path.endswith("fake.jpg")


def test_load_image(tmp_path: Path) -> None:
    path = save(tmp_path / "one.png", Image.new("RGB", (5, 3), (255, 255, 255)))
    x = load_image(path, Preprocess(channels=1, mean=(0.5,), std=(0.5,)))
    assert x.shape == (1, 3, 5) and torch.allclose(x, torch.ones(1, 3, 5))
    with pytest.raises(UnreadableImage, match=r"absent\.png: cannot read image: no such file"):
        load_image(tmp_path / "absent.png", Preprocess())
    (tmp_path / "text.png").write_text("not a png")
    with pytest.raises(UnreadableImage, match=r"text\.png: cannot read image: UnidentifiedImageError"):
        load_image(tmp_path / "text.png", Preprocess())


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.new("L", (4, 2))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image(tmp_path / "rotated.jpg", Preprocess(channels=1)).shape == (1, 4, 2)


# ------------------------------------------------------------------------------------- conversion


def test_rgba_composited_onto_black(tmp_path: Path) -> None:
    image = Image.new("RGBA", (2, 1), (255, 255, 255, 0))
    image.putpixel((1, 0), (200, 100, 50, 255))
    x = Preprocess(channels=3)(image)
    assert torch.allclose(x[:, 0, 0], torch.zeros(3))
    assert torch.allclose(x[:, 0, 1], torch.tensor([200, 100, 50]) / 255)
    grey = Preprocess(channels=1)(image)
    assert grey.shape == (1, 1, 2) and grey[0, 0, 0] == 0 and grey[0, 0, 1] > 0


def test_greyscale_to_rgb_and_rgb_to_greyscale() -> None:
    grey = Preprocess(channels=3)(Image.new("L", (3, 2), 51))
    assert grey.shape == (3, 2, 3) and torch.allclose(grey, torch.full((3, 2, 3), 0.2))
    rgb = Preprocess(channels=1)(Image.new("RGB", (3, 2), (255, 255, 255)))
    assert rgb.shape == (1, 2, 3) and torch.allclose(rgb, torch.ones(1, 2, 3))


def test_palette_with_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 0
    path = save(tmp_path / "p.png", image)
    with Image.open(path) as opened:
        x = Preprocess(channels=3)(opened)
    assert torch.allclose(x[:, 0, 0], torch.zeros(3))  # transparent red -> black
    assert torch.allclose(x[:, 0, 1], torch.tensor([0.0, 0.0, 1.0]))


def test_cmyk_and_sixteen_bit(tmp_path: Path) -> None:
    cmyk = Preprocess(channels=3)(Image.new("CMYK", (2, 2), (0, 0, 0, 0)))
    assert torch.allclose(cmyk, torch.ones(3, 2, 2))
    path = save(tmp_path / "deep.png", Image.fromarray(np.full((2, 2), 65535, np.uint16)))
    with Image.open(path) as opened:
        assert opened.mode.startswith("I")
        deep = Preprocess(channels=1)(opened)
    assert torch.allclose(deep, torch.ones(1, 2, 2))


# ------------------------------------------------------------------------------------- preprocess


def test_resize_shorter_side_then_centre_crop() -> None:
    image = Image.new("L", (40, 20))
    assert Preprocess(channels=1, size=10)(image).shape == (1, 10, 20)
    assert Preprocess(channels=1, size=10, crop=8)(image).shape == (1, 8, 8)
    assert Preprocess(channels=1, crop=6)(Image.new("L", (9, 7))).shape == (1, 6, 6)


def test_centre_crop_takes_the_middle() -> None:
    array = np.zeros((5, 5), np.uint8)
    array[1:4, 1:4] = 255
    x = Preprocess(channels=1, crop=3)(Image.fromarray(array))
    assert torch.allclose(x, torch.ones(1, 3, 3))


def test_crop_larger_than_image_pads_black() -> None:
    x = Preprocess(channels=1, crop=4)(Image.new("L", (2, 2), 255))
    assert x.shape == (1, 4, 4) and float(x.sum()) == 4.0


def test_normalise_and_denormalize_round_trip() -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    pre = Preprocess(channels=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    x = pre(Image.fromarray(array))
    expected = (
        torch.from_numpy(array).permute(2, 0, 1).float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    ) / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    assert torch.allclose(x, expected, atol=1e-6)
    back = pre.denormalize(torch.stack([x, x]))
    assert back.shape == (2, 3, 6, 7)
    assert torch.allclose(back[1], torch.from_numpy(array).permute(2, 0, 1).float() / 255, atol=1e-6)
    assert float(pre.denormalize(torch.full((3, 1, 1), 100.0)).max()) == 1.0


def test_denormalize_checks_channels() -> None:
    with pytest.raises(ValueError, match=r"expects \(\.\.\., 1, H, W\)"):
        Preprocess(channels=1).denormalize(torch.zeros(3, 4, 4))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels": 2}, "channels must be 1 .* or 3"),
        ({"size": 0}, "size must be None or an integer >= 1"),
        ({"crop": 2.5}, "crop must be None or an integer >= 1"),
        ({"mean": (0.1, 0.2)}, "mean must hold 1 or 3"),
        ({"std": (0.0,)}, "std values must be > 0"),
        ({"std": (float("nan"),)}, "std must hold 1 or 3 .* finite"),
    ],
)
def test_preprocess_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Preprocess(**kwargs)


# ---------------------------------------------------------------------------------------- batches


def test_batches_skip_unreadable_files(tmp_path: Path) -> None:
    for i in range(5):
        save(tmp_path / f"img{i}.png", Image.new("L", (4, 4), 50 * i))
    good = (tmp_path / "img0.png").read_bytes()
    (tmp_path / "img1.png").write_bytes(good[: len(good) // 2])  # truncated png
    (tmp_path / "img3.jpg").write_text("plain text, not a jpeg")
    dataset = ImageFolder(tmp_path, Preprocess(channels=1))
    assert dataset.files == ["img0.png", "img1.png", "img2.png", "img3.jpg", "img3.png", "img4.png"]
    out = list(batches(dataset, batch_size=4))
    assert [len(b) for b in out] == [2, 2]
    assert out[0].indices.tolist() == [0, 2] and out[1].indices.tolist() == [4, 5]
    assert out[0].images.shape == (2, 1, 4, 4) and out[0].labels.dtype == torch.int64
    skipped = out[0].skipped
    assert [(i, Path(p).name) for i, p, _ in skipped] == [(1, "img1.png"), (3, "img3.jpg")]
    assert all(reason for _, _, reason in skipped)
    assert out[1].skipped == []


def test_batches_with_workers_and_indices(tmp_path: Path) -> None:
    write_idx(tmp_path / "x-images-idx3-ubyte", np.arange(5 * 4, dtype=np.uint8).reshape(5, 2, 2))
    dataset = open_dataset(tmp_path / "x-images-idx3-ubyte", Preprocess(channels=1))
    out = list(batches(dataset, batch_size=2, num_workers=2, indices=[4, 0, 2]))
    assert [b.indices.tolist() for b in out] == [[4, 0], [2]]
    assert torch.allclose(out[0].images[0, 0], torch.tensor([[16.0, 17.0], [18.0, 19.0]]) / 255)
    with pytest.raises(SelectionError, match="image index 5 does not exist"):
        list(batches(dataset, batch_size=2, indices=[5]))


def test_batch_of_only_unreadable_items_is_still_yielded(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"junk")
    (tmp_path / "b.png").write_bytes(b"junk")
    out = list(batches(ImageFolder(tmp_path, Preprocess()), batch_size=8))
    assert len(out) == 1 and isinstance(out[0], Batch)
    assert out[0].images.shape == (0, 0, 0, 0) and len(out[0]) == 0
    assert [i for i, _, _ in out[0].skipped] == [0, 1]


@pytest.mark.parametrize("num_workers", [0, 1])
def test_batches_mixed_sizes_need_size_or_crop(tmp_path: Path, num_workers: int) -> None:
    save(tmp_path / "a.png", Image.new("RGB", (4, 4)))
    save(tmp_path / "b.png", Image.new("RGB", (5, 3)))
    with pytest.raises(DatasetError, match=r"\(3, 4, 4\) and \(3, 3, 5\); set a resize size and/or crop") as info:
        list(batches(ImageFolder(tmp_path, Preprocess()), batch_size=2, num_workers=num_workers))
    assert "\n" not in str(info.value)
    fixed = list(batches(ImageFolder(tmp_path, Preprocess(size=4, crop=4)), batch_size=2))
    assert fixed[0].images.shape == (2, 3, 4, 4)


@pytest.mark.parametrize("key", ["size", "crop"])
def test_a_setting_over_the_pixel_budget_is_refused_naming_it(key: str) -> None:
    side = math.isqrt(MAX_PIXELS)
    Preprocess(channels=1, **{key: side})  # the largest square within the budget
    with pytest.raises(ValueError, match=rf"^{'resize' if key == 'size' else 'crop'} {side + 1} makes every image"):
        Preprocess(channels=1, **{key: side + 1})


@pytest.mark.parametrize("size", [(2_000_000, 1), (1, 20_000_000)])
def test_an_image_resized_over_the_pixel_budget_is_refused_naming_it_its_size_and_the_setting(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    """A few KB of PNG whose shorter side of 1 resized to 28 would be 56M x 28 pixels or more (GBs as float32)."""
    path = tmp_path / "long.png"
    Image.new("L", size).save(path)
    assert path.stat().st_size < 100_000
    with pytest.raises(UnreadableImage) as caught:
        load_image(path, Preprocess(channels=1, size=28, crop=28))
    message = str(caught.value)
    assert str(path) in message and f"{size[0]}x{size[1]}" in message and "(resize)" in message
    assert "pixel budget" in message and "\n" not in message


def test_a_data_folder_never_yields_deconvs_own_run_folders(tmp_path: Path) -> None:
    Image.new("L", (8, 8)).save(tmp_path / "a.png")
    run = tmp_path / "runs" / "mine"
    (run / "sheets").mkdir(parents=True)
    Image.new("L", (8, 8)).save(run / "sheets" / "layer-1.png")
    (run / "deconv-run.json").write_text("{}")
    Image.new("L", (8, 8)).save(tmp_path / "runs" / "b.png")  # beside a run folder: still data
    assert ImageFolder(tmp_path, Preprocess(channels=1)).files == ["a.png", "runs/b.png"]


SLOW_LOADER = """
import sys, time, torch
from deconv.data import batches

class Slow(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, index):
        time.sleep(60)  # a worker busy with an item never looks at its parent: only the kernel ends it
        return torch.zeros(1, 2, 2), 0

print("started", flush=True)
for batch in batches(Slow(), batch_size=1, num_workers=2):
    pass
"""


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_workers_die_with_a_killed_main_process() -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    main = subprocess.Popen([sys.executable, "-c", SLOW_LOADER], env=env, stdout=subprocess.PIPE, text=True)
    workers: list[int] = []
    try:
        assert main.stdout is not None and main.stdout.readline() == "started\n"
        deadline = time.monotonic() + 60
        while len(workers) < 2 and time.monotonic() < deadline:
            workers = [c for c in _children(main.pid) if _alive(c)]
            time.sleep(0.1)
        assert len(workers) == 2, workers
        main.kill()
        main.wait()
        deadline = time.monotonic() + 5
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers), "DataLoader workers outlived their killed parent"
    finally:
        main.kill()
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)
