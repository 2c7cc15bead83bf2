"""The datasets of issue 26 item 5: N-Caltech-101 and N-CARS in tonic's layouts, ImageNet /
ImageNet-100 in class folders; tiny files written in the real formats (tests/writers.py)."""

import math

import numpy as np
import pytest
import torch

from opzo.config import TrainConfig
from opzo.data import DATASETS, DatasetError
from opzo.data.imagenet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    imagenet_source,
    random_resized_box,
)
from opzo.data.neuromorphic import NCaltech101, NCars, read_ncaltech_bin, read_prophesee_dat

from .writers import encode_ncaltech, encode_prophesee_dat, write_image

# ------------------------------------------------------------------------------ N-Caltech-101


def test_ncaltech_bin_reads_events_and_timestamp_overflows(tmp_path):
    events = [(3, 4, 1, 100), (233, 173, 0, 8000), (7, 9, 1, 50), (8, 9, 0, 60)]
    path = tmp_path / "image_0001.bin"
    path.write_bytes(encode_ncaltech(events, overflow_after=(1, 2)))
    got = read_ncaltech_bin(path)
    assert got["x"].tolist() == [3, 233, 7, 8] and got["y"].tolist() == [4, 173, 9, 9]
    assert got["p"].tolist() == [1, 0, 1, 0]
    # one overflow before the third event, two before the fourth: + 2^13 us each
    assert got["t"].tolist() == [100, 8000, 50 + 8192, 60 + 2 * 8192]


def _ncaltech_tree(root, classes=("BACKGROUND_Google", "accordion"), per_class=5):
    for c, name in enumerate(classes):
        folder = root / "NCALTECH101" / "Caltech101" / name
        folder.mkdir(parents=True)
        for k in range(per_class):
            ev = [(10 * c + i % 5, 20 + i % 3, i % 2, 10 * i) for i in range(30 + k)]
            (folder / f"image_{k + 1:04d}.bin").write_bytes(encode_ncaltech(ev))


def test_ncaltech101_folder_split_and_frames(tmp_path):
    _ncaltech_tree(tmp_path)
    train = NCaltech101(tmp_path, "train", n_frames=10)
    test = NCaltech101(tmp_path, "test", n_frames=10)
    # 80/20 per class: the 5th file of each class (sorted) is the test sample
    assert len(train) == 8 and len(test) == 2
    assert [f.name for f in test.files] == ["image_0005.bin", "image_0005.bin"]
    assert test.targets == [0, 1] and train.targets == [0] * 4 + [1] * 4
    frames, label = train[5]
    assert frames.shape == (10, 2, 48, 48) and label == 1
    raw = train.bin(read_ncaltech_bin(train.files[5]))
    assert raw.shape == (10, 2, 180, 240) and raw.sum() == 30 + 1  # every event, binned once
    assert (raw.sum(axis=(1, 2, 3)) == 3).sum() >= 9  # 31 events in 10 slices of 3 or 4


def test_ncaltech101_missing_folder_names_the_paths(tmp_path):
    with pytest.raises(DatasetError) as info:
        NCaltech101(tmp_path / "nowhere", "train")
    msg = str(info.value)
    assert str((tmp_path / "nowhere" / "NCALTECH101" / "Caltech101").absolute()) in msg
    assert "<class>/*.bin" in msg and "never downloads" in msg


# ----------------------------------------------------------------------------------- N-CARS


@pytest.mark.parametrize("version", [2, None])
def test_prophesee_dat_reads_both_address_layouts(tmp_path, version):
    t, x, y, p = [5, 17, 400000], [0, 119, 64], [99, 0, 50], [1, 0, 1]
    path = tmp_path / "obj_004396_td.dat"
    path.write_bytes(encode_prophesee_dat(t, x, y, p, version=version))
    got = read_prophesee_dat(path)
    assert got["t"].tolist() == t and got["x"].tolist() == x
    assert got["y"].tolist() == y and got["p"].tolist() == p


def test_prophesee_dat_refuses_truncated_records(tmp_path):
    path = tmp_path / "bad.dat"
    path.write_bytes(encode_prophesee_dat([1, 2], [3, 4], [5, 6], [0, 1])[:-3])
    with pytest.raises(DatasetError, match="trailing bytes"):
        read_prophesee_dat(path)


def _ncars_tree(root, per_class=3):
    for split in ("train", "test"):
        for label, name in enumerate(("background", "cars")):
            folder = root / "NCARS" / f"n-cars_{split}" / name
            folder.mkdir(parents=True)
            for k in range(per_class):
                n = 20 + k
                xs = [(60 * label + i) % 120 for i in range(n)]
                (folder / f"obj_{k:06d}_td.dat").write_bytes(encode_prophesee_dat(
                    list(range(0, 100 * n, 100)), xs, [i % 100 for i in range(n)],
                    [i % 2 for i in range(n)]))


def test_ncars_folder_labels_and_frames(tmp_path):
    _ncars_tree(tmp_path)
    data = NCars(tmp_path, "train", n_frames=10)
    assert len(data) == 6 and data.targets == [0, 0, 0, 1, 1, 1]
    frames, label = data[4]
    assert frames.shape == (10, 2, 48, 48) and label == 1
    assert data.bin(read_prophesee_dat(data.files[4])).sum() == 21


def test_ncars_missing_split_names_the_paths(tmp_path):
    with pytest.raises(DatasetError) as info:
        NCars(tmp_path, "test")
    msg = str(info.value)
    assert str((tmp_path / "NCARS" / "n-cars_test").absolute()) in msg
    assert "<background|cars>/*.dat" in msg


def test_ncars_trains_from_the_command_line(tmp_path, capsys):
    from opzo.cli import main

    _ncars_tree(tmp_path / "data", per_class=2)
    rc = main(["train", "--dataset", "ncars", "--data-root", str(tmp_path / "data"),
               "--net", "4C3-AP4-FC", "--T", "10", "--epochs", "1", "--batch-size", "2",
               "--threads", "1", "--out", str(tmp_path / "run")])
    assert rc == 0, capsys.readouterr().err
    assert "ncars" in capsys.readouterr().out


# ---------------------------------------------------------------------------------- ImageNet


def _imagenet_tree(root, suffix=".JPEG"):
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 1)):
        for c in ("n01440764", "n01443537"):
            for k in range(n):
                pixels = rng.integers(0, 256, (300 + 20 * k, 260, 3), dtype=np.uint8)
                write_image(root / split / c / f"{c}_{k}{suffix}", pixels)


def _cfg(root, dataset="imagenet", **kw):
    return TrainConfig.from_dict({"dataset": dataset, "data_root": str(root), "T": 2, **kw})


def test_imagenet_val_is_resize_256_and_central_crop_224(tmp_path):
    """A PNG (exact pixels) 1024 wide and 512 high, red for x < 384, blue after: resized to
    512x256 (shorter side 256) the edge is at x = 192, and the central 224 columns start at
    144, so columns 0..47 of the crop are red and 48..223 blue, normalised with ImageNet's
    mean and std."""
    pixels = np.zeros((512, 1024, 3), dtype=np.uint8)
    pixels[:, :384, 0] = 255
    pixels[:, 384:, 2] = 255
    write_image(tmp_path / "train" / "a" / "x.png", pixels)
    write_image(tmp_path / "val" / "a" / "x.png", pixels)
    src = imagenet_source(_cfg(tmp_path), "test")
    assert src.input_shape == (3, 224, 224) and src.classes == 1
    x, y = next(src.batches(1, T=2))
    img = x.view(3, 224, 224)
    red = [(1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], -IMAGENET_MEAN[1] / IMAGENET_STD[1],
           -IMAGENET_MEAN[2] / IMAGENET_STD[2]]
    blue = [-IMAGENET_MEAN[0] / IMAGENET_STD[0], -IMAGENET_MEAN[1] / IMAGENET_STD[1],
            (1 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]]
    for ch in range(3):
        assert torch.allclose(img[ch, :, :46], torch.full((224, 46), red[ch]), atol=1e-5)
        assert torch.allclose(img[ch, :, 50:], torch.full((224, 174), blue[ch]), atol=1e-5)
    assert y.tolist() == [0]


def test_imagenet_folders_classes_and_train_augmentation(tmp_path):
    _imagenet_tree(tmp_path)
    train = imagenet_source(_cfg(tmp_path, seed=3), "train")
    test = imagenet_source(_cfg(tmp_path), "test")
    assert len(train) == 6 and len(test) == 2 and train.classes == 2
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1] and test.labels.tolist() == [0, 1]
    a = next(train.batches(4, T=2, epoch=0))[0]
    b = next(train.batches(4, T=2, epoch=0))[0]
    c = next(train.batches(4, T=2, epoch=1))[0]
    assert a.shape == (4, 3 * 224 * 224)
    assert torch.equal(a, b)  # the draws are those of (seed, epoch, batch)
    assert not torch.equal(a, c)
    noaug = imagenet_source(_cfg(tmp_path, augment=False), "train")
    assert noaug.augment_seed is None and train.augment_seed == 3


def test_random_resized_box_obeys_its_scale_and_ratio():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        left, top, w, h = random_resized_box(400, 300, g)
        assert 0 <= left and left + w <= 400 and 0 <= top and top + h <= 300
        assert 0.08 * 0.9 <= w * h / (400 * 300) <= 1.0 + 1e-9
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    # a very thin image: no draw fits, the central crop of the clamped ratio
    g = torch.Generator().manual_seed(0)
    assert random_resized_box(1000, 10, g) == ((1000 - 13) // 2, 0, 13, 10)


def test_imagenet_missing_folder_names_the_path_and_layout(tmp_path):
    with pytest.raises(DatasetError) as info:
        imagenet_source(_cfg(tmp_path / "none"), "train")
    msg = str(info.value)
    assert str((tmp_path / "none" / "train").absolute()) in msg
    assert "ROOT/train/<class>/*.JPEG" in msg and "ROOT/val/<class>/*.JPEG" in msg
    (tmp_path / "x" / "train" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"x/val"):
        imagenet_source(_cfg(tmp_path / "x"), "test")


def test_datasets_are_registered_with_their_traits():
    assert DATASETS["ncaltech101"].events and DATASETS["ncars"].events
    assert not DATASETS["imagenet"].events and not DATASETS["imagenet100"].builtin
    assert math.prod((3, 224, 224)) == 150528


def test_train_crop_is_resized_and_flipped(tmp_path):
    """load_image with a given draw: the whole image as the box, resized to 224x224, and
    flipped when the draw says so (left half red, right half blue, so a flip swaps them);
    the per-image draws flip about half of the images."""
    from opzo.data.imagenet import _CropDraw, load_image

    pixels = np.zeros((100, 200, 3), dtype=np.uint8)
    pixels[:, :100, 0] = 255
    pixels[:, 100:, 2] = 255
    write_image(tmp_path / "x.png", pixels)
    for flip in (False, True):
        img = load_image(tmp_path / "x.png", 224, 256, IMAGENET_MEAN, IMAGENET_STD,
                         draw=lambda w, h, flip=flip: ((0, 0, w, h), flip))
        red_left = bool(img[0, :, :100].mean() > img[0, :, 124:].mean())
        assert img.shape == (3, 224, 224) and red_left == (not flip)
    flips = [_CropDraw(seed)(300, 200)[1] for seed in range(400)]
    assert 0.4 < sum(flips) / len(flips) < 0.6
