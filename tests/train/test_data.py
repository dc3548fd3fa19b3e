"""Datasets: the embedded MNIST split, .npz files, image folders, ADM crop, and the resumable data order."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from fractalgen.data import EpochBatches, load_dataset, mnist_split, stack
from fractalgen.errors import UserError
from fractalgen.images import fit_picture as center_crop_adm


def test_mnist_split_is_fixed_disjoint_and_complete():
    train_images, _ = mnist_split("train")
    val_images, val_labels = mnist_split("val")
    assert train_images.shape == (4500, 28, 28) and val_images.shape == (500, 28, 28)
    again, _ = mnist_split("val")
    assert np.array_equal(val_images, again)  # the same split every time
    seen = {a.tobytes() for a in train_images}
    assert sum(a.tobytes() in seen for a in val_images) == 0
    assert set(np.unique(val_labels)) == set(range(10))


def test_mnist_dataset_at_model_size_and_channels():
    ds = load_dataset("mnist", "val", 28, 1)
    image, label = ds[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.uint8 and 0 <= int(label) < 10
    assert ds.num_classes == 10
    rgb = load_dataset("mnist", "val", 32, 3)  # padded to 32 and replicated to RGB
    image, _ = rgb[0]
    assert image.shape == (3, 32, 32)
    assert torch.equal(image[0], image[2]) and image[:, :2].sum() == 0


def test_npz_channels_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", images=rgb, labels=np.arange(5) % 2)
    ds = load_dataset(str(tmp_path / "rgb.npz"), "train", 8, 1)
    images, labels = stack(ds)
    luma = np.round(rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32))
    assert np.array_equal(images[:, 0].numpy(), luma.astype(np.uint8))
    assert labels.tolist() == [0, 1, 0, 1, 0] and ds.num_classes == 2
    np.savez(tmp_path / "gray.npz", images=rgb[..., 0])
    ds = load_dataset(str(tmp_path / "gray.npz"), "train", 8, 3)
    assert ds.num_classes == 0 and ds[0][0].shape == (3, 8, 8)


@pytest.mark.parametrize("make, message", [
    (lambda p: np.savez(p, images=np.zeros((2, 9, 9), np.uint8)), "9x9"),
    (lambda p: np.savez(p, images=np.zeros((2, 8, 8), np.float32)), "uint8"),
    (lambda p: np.savez(p, pictures=np.zeros((2, 8, 8), np.uint8)), "no 'images'"),
    (lambda p: p.write_bytes(b"not a zip file"), "cannot read"),
    (lambda p: np.savez(p, images=np.zeros((2, 8, 8), np.uint8), labels=np.zeros(3)), "labels"),
])
def test_bad_npz_files_are_user_errors(tmp_path, make, message):
    path = tmp_path / "bad.npz"
    make(path)
    with pytest.raises(UserError, match=message):
        load_dataset(str(path), "train", 8, 1)


def write_png(path, size=(12, 10), value=0, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, value, value)).save(path)


def test_image_folder_official_layout(tmp_path, capsys):
    for c in ("cat", "dog"):
        for i in range(2):
            write_png(tmp_path / "train" / c / f"{i}.png", value=100 if c == "cat" else 200)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    ds = load_dataset(str(tmp_path), "train", 8, 3)
    assert len(ds) == 4 and ds.num_classes == 2 and ds.classes == ["cat", "dog"]
    assert "skipped 1 non-image" in capsys.readouterr().err
    image, label = ds[3]
    assert image.shape == (3, 8, 8) and int(label) == 1 and int(image.float().mean()) == 200
    with pytest.raises(UserError, match="no val/ folder"):
        load_dataset(str(tmp_path), "val", 8, 3)


def test_corrupt_image_is_replaced_and_counted(tmp_path, capsys):
    write_png(tmp_path / "a" / "0.png", value=50)
    (tmp_path / "a" / "1.png").write_bytes(b"\x89PNG broken")
    ds = load_dataset(str(tmp_path), "train", 8, 1)
    image, _ = ds[1]  # the broken file: the next readable image stands in
    assert int(image.float().mean()) == 50 and ds.bad == 1
    assert "unreadable image" in capsys.readouterr().err


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        load_dataset(str(tmp_path / "empty"), "train", 8, 1)
    with pytest.raises(UserError, match="not found"):
        load_dataset(str(tmp_path / "nowhere"), "train", 8, 1)


def test_adm_centre_crop_sizes():
    wide = Image.new("RGB", (100, 60))
    assert center_crop_adm(wide, 16).size == (16, 16)
    small = Image.new("RGB", (10, 12))
    assert center_crop_adm(small, 16).size == (16, 16)  # upsampled when smaller


def test_epoch_batches_resume_and_ranks():
    full = EpochBatches(10, 4, rank=0, world=1, seed=3, flip=True)
    first = [b for _, b in zip(range(7), full, strict=False)]
    resumed = EpochBatches(10, 4, rank=0, world=1, seed=3, flip=True, start=3)
    assert [b for _, b in zip(range(4), resumed, strict=False)] == first[3:]
    assert len({i for b in first[:2] for i, _ in b}) == 8  # an epoch never repeats an image
    ranks = [EpochBatches(10, 4, rank=r, world=2, seed=3, flip=True) for r in range(2)]
    assert next(iter(ranks[0])) + next(iter(ranks[1])) == first[0]
    with pytest.raises(UserError, match="larger than the dataset"):
        EpochBatches(3, 4, 0, 1, 0, False)


def _mapped_ranges(path) -> list[tuple[int, int]]:
    """Address ranges this process has mapped from `path` (Linux /proc/self/maps)."""
    ranges = []
    with open("/proc/self/maps") as f:
        for line in f:
            if line.rstrip().endswith(str(path)):
                start, end = line.split()[0].split("-")
                ranges.append((int(start, 16), int(end, 16)))
    return ranges


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads Linux's /proc/self/maps")
def test_an_uncompressed_npz_is_mapped_not_copied(tmp_path):
    """np.savez stores members uncompressed: the training images are the file's pages, not a copy of
    them; a compressed archive still loads (read into memory). Both give the same pixels."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(64) % 4
    np.savez(tmp_path / "plain.npz", images=images, labels=labels)
    np.savez_compressed(tmp_path / "packed.npz", images=images, labels=labels)
    plain = load_dataset(str(tmp_path / "plain.npz"), "train", 8, 3)
    packed = load_dataset(str(tmp_path / "packed.npz"), "train", 8, 3)
    expected = torch.from_numpy(images).permute(0, 3, 1, 2)
    assert torch.equal(plain.images, expected) and torch.equal(packed.images, expected)
    assert torch.equal(plain.labels, torch.from_numpy(labels))
    pointer = plain.images.data_ptr()
    assert any(start <= pointer < end for start, end in _mapped_ranges(tmp_path / "plain.npz"))
    assert not _mapped_ranges(tmp_path / "packed.npz")
    image, label = plain[(5, True)]
    assert torch.equal(image, expected[5].flip(-1)) and int(label) == 1
    batch, _ = stack(plain, 4)
    assert batch.is_contiguous() and torch.equal(batch, expected[:4])
    plain.images[0] += 1  # copy-on-write: the file keeps its pixels
    assert np.array_equal(np.load(tmp_path / "plain.npz")["images"], images)


def test_mnist_heldout_is_the_val_split_in_the_librarys_layout():
    import fractalgen
    from fractalgen.data import mnist_split

    images, labels = fractalgen.mnist_heldout()
    val_images, val_labels = mnist_split("val")
    assert images.dtype == np.uint8 and images.shape == (len(val_images), 1, 28, 28)
    assert labels.dtype == np.int64 and np.array_equal(labels, val_labels)
    assert np.array_equal(images[:, 0], val_images)
    assert not set(map(bytes, images[:, 0])) & set(map(bytes, mnist_split("train")[0][:2000]))
