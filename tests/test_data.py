"""Tests for opzo.data: idx I/O, dataset loading, embedded subset, encoders, batching."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from opzo.data import (
    DATASET_NAMES,
    ArrayDataset,
    DatasetError,
    Encoder,
    direct,
    epoch_permutation,
    epoch_seed,
    iterate_batches,
    load_dataset,
    load_mnist_like,
    make_encoder,
    num_batches,
    rate,
    read_idx,
    write_idx,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MNIST_DIR = SHARED_DATA / "mnist"
FASHION_DIR = SHARED_DATA / "fashion-mnist"
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]

needs_mnist = pytest.mark.skipif(
    not (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"real MNIST files not found in {MNIST_DIR} (expected ../shared/data/mnist/)",
)
needs_fashion = pytest.mark.skipif(
    not (FASHION_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"real Fashion-MNIST files not found in {FASHION_DIR}",
)


@pytest.fixture(scope="module")
def mnist_test_images() -> np.ndarray:
    return read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz")


def _write_split(
    folder: Path, n: int, split: str = "train", gz: bool = False, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Write a small MNIST-format split (images + labels) into ``folder``."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    prefix = "train" if split == "train" else "t10k"
    suffix = ".gz" if gz else ""
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, gzip=gz)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gzip=gz)
    return images, labels


# ----------------------------------------------------------------------------- idx, real files


@needs_mnist
def test_read_idx_real_mnist_shapes_and_counts() -> None:
    train_images = read_idx(MNIST_DIR / "train-images-idx3-ubyte.gz")
    train_labels = read_idx(MNIST_DIR / "train-labels-idx1-ubyte.gz")
    test_labels = read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    assert train_images.shape == (60000, 28, 28) and train_images.dtype == np.uint8
    assert train_labels.shape == (60000,) and test_labels.shape == (10000,)
    assert np.bincount(train_labels, minlength=10).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(test_labels, minlength=10).sum() == 10000
    assert test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


@needs_mnist
def test_real_train_images_md5() -> None:
    raw = gzip.decompress((MNIST_DIR / "train-images-idx3-ubyte.gz").read_bytes())
    assert hashlib.md5(raw).hexdigest() == "6bbc9ace898e44ae57da46a324031adb"


@needs_mnist
def test_load_dataset_real_mnist_test_split() -> None:
    ds = load_dataset("mnist", root=SHARED_DATA, split="test")  # finds root/mnist/
    assert len(ds) == 10000 and ds.images.shape == (10000, 28, 28)
    assert ds.images.dtype == torch.uint8 and ds.labels.dtype == torch.int64
    assert ds.name == "mnist" and ds.classes == 10


@needs_fashion
def test_load_real_fashion_mnist_test_split() -> None:
    ds = load_mnist_like(FASHION_DIR, split="test", name="fashion-mnist")
    assert len(ds) == 10000
    assert torch.bincount(ds.labels, minlength=10).tolist() == [1000] * 10


# ----------------------------------------------------------------------------- idx round trip


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path: Path, gz: bool, dtype: type) -> None:
    array = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype)
    path = write_idx(tmp_path / "a.idx", array, gzip=gz)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == gz
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype).newbyteorder("=") and back.shape == (2, 3, 5)
    np.testing.assert_array_equal(back, array)
    back[0, 0, 0] = 1  # writable


def test_idx_header_bytes(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x", np.zeros((3, 2), dtype=np.uint8))
    assert path.read_bytes() == bytes([0, 0, 8, 2, 0, 0, 0, 3, 0, 0, 0, 2]) + bytes(6)


def test_gzip_detected_by_magic_not_extension(tmp_path: Path) -> None:
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    gz_no_ext = write_idx(tmp_path / "compressed-without-ext", array, gzip=True)
    raw_with_ext = write_idx(tmp_path / "raw-with.gz", array, gzip=False)
    np.testing.assert_array_equal(read_idx(gz_no_ext), array)
    np.testing.assert_array_equal(read_idx(raw_with_ext), array)


# ----------------------------------------------------------------------------- idx errors


def test_missing_file_error_names_path(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "train-images-idx3-ubyte"
    with pytest.raises(DatasetError) as err:
        read_idx(path)
    assert str(path) in str(err.value) and "not found" in str(err.value)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_file_error(tmp_path: Path, gz: bool) -> None:
    good = tmp_path / "good"
    write_idx(good, np.ones((4, 28, 28), dtype=np.uint8))
    bad = tmp_path / "truncated-idx"
    raw = good.read_bytes()[:-100]
    bad.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(DatasetError) as err:
        read_idx(bad)
    msg = str(err.value)
    assert str(bad) in msg and "truncated" in msg
    assert "3136 data bytes" in msg and "only 3036 bytes" in msg
    assert "corrupt or incomplete" in msg and "obtain it again" in msg


def test_truncated_gzip_stream_error(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "a.gz", np.arange(5000, dtype=np.int32), gzip=True)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(DatasetError) as err:
        read_idx(path)
    msg = str(err.value)
    assert str(path) in msg and "gzip" in msg and "corrupt or incomplete" in msg


def test_bad_magic_error(tmp_path: Path) -> None:
    path = tmp_path / "bad-magic"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(DatasetError) as err:
        read_idx(path)
    msg = str(err.value)
    assert str(path) in msg and "magic" in msg
    assert "expected bytes 00 00" in msg and "found 50 4b 03 04" in msg
    assert "obtain it again" in msg


def test_unknown_type_code_is_bad_magic(tmp_path: Path) -> None:
    path = tmp_path / "bad-code"
    path.write_bytes(bytes([0, 0, 0x0A, 1, 0, 0, 0, 1, 7]))
    with pytest.raises(DatasetError, match="found 00 00 0a 01"):
        read_idx(path)


def test_trailing_junk_error(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "junk", np.zeros(10, dtype=np.uint8))
    path.write_bytes(path.read_bytes() + b"junk")
    with pytest.raises(DatasetError) as err:
        read_idx(path)
    msg = str(err.value)
    assert str(path) in msg and "trailing junk" in msg and "10 data bytes" in msg
    assert "14 bytes follow" in msg and "corrupt or incomplete" in msg


# ----------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("gz", [False, True])
def test_layout_files_directly_in_root(tmp_path: Path, gz: bool) -> None:
    images, labels = _write_split(tmp_path, 30, "train", gz=gz)
    ds = load_mnist_like(tmp_path, "train", "mnist")
    assert isinstance(ds, ArrayDataset) and len(ds) == 30
    np.testing.assert_array_equal(ds.images.numpy(), images)
    np.testing.assert_array_equal(ds.labels.numpy(), labels.astype(np.int64))
    assert ds.labels.dtype == torch.int64


@pytest.mark.parametrize(
    ("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")]
)
def test_layout_torchvision(tmp_path: Path, name: str, folder: str) -> None:
    raw = tmp_path / folder / "raw"
    images, _ = _write_split(raw, 12, "test", seed=3)
    for root in (tmp_path, tmp_path / folder, raw):  # torchvision root, its MNIST/, raw/ itself
        ds = load_dataset(name, root=root, split="test")
        assert ds.name == name and len(ds) == 12
        np.testing.assert_array_equal(ds.images.numpy(), images)


def test_torchvision_mnist_folder_not_used_for_fashion(tmp_path: Path) -> None:
    _write_split(tmp_path / "MNIST" / "raw", 5, "train")
    with pytest.raises(DatasetError, match="FashionMNIST"):
        load_dataset("fashion-mnist", root=tmp_path, split="train")


def test_missing_dataset_files_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as err:
        load_mnist_like(tmp_path, "train", "mnist")
    msg = str(err.value)
    assert str(tmp_path) in msg and str(tmp_path / "MNIST" / "raw") in msg
    assert "train-images-idx3-ubyte" in msg and "train-labels-idx1-ubyte" in msg and ".gz" in msg
    assert "never downloads" in msg and "http://yann.lecun.com/exdb/mnist/" in msg


def test_missing_fashion_files_error_mentions_sources(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as err:
        load_dataset("fashion-mnist", root=tmp_path, split="test")
    msg = str(err.value)
    assert "t10k-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg
    assert "https://github.com/zalandoresearch/fashion-mnist" in msg
    assert "apt-get install dataset-fashion-mnist" in msg


def test_incomplete_split_error_names_missing_file(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((2, 28, 28), np.uint8), gzip=True)
    with pytest.raises(DatasetError) as err:
        load_mnist_like(tmp_path, "train", "mnist")
    msg = str(err.value)
    assert str(tmp_path) in msg and "train-labels-idx1-ubyte" in msg and "never downloads" in msg


def test_nonexistent_root_and_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_mnist_like(tmp_path / "absent", "train", "mnist")
    with pytest.raises(DatasetError, match="needs a root folder"):
        load_dataset("mnist")


def test_count_mismatch_and_label_range(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(DatasetError, match="3 images .* but 4 labels"):
        load_mnist_like(tmp_path, "train", "mnist")
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([0, 1, 10], np.uint8))
    with pytest.raises(DatasetError, match="0..9"):
        load_mnist_like(tmp_path, "train", "mnist")


def test_unknown_dataset_name_and_split() -> None:
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar-7")
    for name in DATASET_NAMES:
        assert name in str(err.value)
    with pytest.raises(DatasetError, match="train, test"):
        load_dataset("embedded-mnist", split="valid")


# ----------------------------------------------------------------------------- embedded subset


def test_embedded_mnist_sizes_and_balance() -> None:
    train = load_dataset("embedded-mnist", split="train")
    test = load_dataset("embedded-mnist", split="test")
    assert len(train) == 6000 and len(test) == 1000
    assert train.images.shape == (6000, 28, 28) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and train.name == "embedded-mnist"
    assert torch.bincount(train.labels, minlength=10).tolist() == [600] * 10


@needs_mnist
def test_embedded_matches_official(mnist_test_images: np.ndarray) -> None:
    test = load_dataset("embedded-mnist", split="test")
    np.testing.assert_array_equal(test.images[0].numpy(), mnist_test_images[0])
    np.testing.assert_array_equal(test.images.numpy(), mnist_test_images[:1000])
    official_labels = read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")[:1000]
    np.testing.assert_array_equal(test.labels.numpy(), official_labels)


# ----------------------------------------------------------------------------- encoders


@needs_mnist
def test_direct_encoding_normalises_full_set(mnist_test_images: np.ndarray) -> None:
    x = direct(torch.from_numpy(mnist_test_images), 0.1307, 0.3081)
    assert x.shape == (10000, 784) and x.dtype == torch.float32
    assert abs(x.mean().item()) < 0.02 and abs(x.std().item() - 1.0) < 0.02


def test_direct_encoding_values() -> None:
    images = torch.tensor([[[0, 255]]], dtype=torch.uint8)
    x = direct(images, 0.5, 0.25)
    torch.testing.assert_close(x, torch.tensor([[-2.0, 2.0]]))
    with pytest.raises(TypeError, match="uint8"):
        direct(images.float(), 0.5, 0.25)


def test_rate_encoding_probability() -> None:
    levels = torch.tensor([0, 13, 64, 128, 200, 255], dtype=torch.uint8)
    images = levels.repeat(4, 1).reshape(4, 2, 3)
    g = torch.Generator().manual_seed(123)
    spikes = rate(images, 4000, generator=g)
    assert spikes.shape == (4000, 4, 6) and spikes.dtype == torch.float32
    assert set(spikes.unique().tolist()) <= {0.0, 1.0}
    freq = spikes.mean(dim=(0, 1))
    expected = levels.float() / 255.0
    torch.testing.assert_close(freq, expected, atol=0.015, rtol=0)
    assert freq[0] == 0.0 and freq[-1] == 1.0
    again = rate(images, 4000, generator=torch.Generator().manual_seed(123))
    assert torch.equal(spikes, again)


def test_make_encoder() -> None:
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    enc = make_encoder("direct", "fashion-mnist")
    assert isinstance(enc, Encoder) and enc.static and enc.name == "direct"
    assert (enc.mean, enc.std) == (0.2860, 0.3530)
    assert enc(images, 10).shape == (5, 784)
    enc_rate = make_encoder("rate", "mnist")
    assert not enc_rate.static and enc_rate(images, 7).shape == (7, 5, 784)
    assert make_encoder("direct", "embedded-mnist").mean == 0.1307
    with pytest.raises(ValueError) as err:
        make_encoder("phase", "mnist")
    assert all(name in str(err.value) for name in ("direct", "rate", "latency"))


# ----------------------------------------------------------------------------- batching


def test_epoch_permutation_deterministic() -> None:
    a = epoch_permutation(1000, seed=7, epoch=3)
    assert torch.equal(a, epoch_permutation(1000, seed=7, epoch=3))
    assert torch.equal(a.sort().values, torch.arange(1000))
    assert not torch.equal(a, epoch_permutation(1000, seed=7, epoch=4))
    assert not torch.equal(a, epoch_permutation(1000, seed=8, epoch=3))
    g = torch.Generator().manual_seed(7 * 1000003 + 3)
    assert torch.equal(a, torch.randperm(1000, generator=g))
    assert epoch_seed(7, 3) == 7 * 1000003 + 3


def _toy_dataset(n: int = 53) -> ArrayDataset:
    images = torch.arange(n, dtype=torch.int64).remainder(256).to(torch.uint8)
    images = images.view(n, 1, 1).expand(n, 28, 28).contiguous()
    return ArrayDataset(images=images, labels=torch.arange(n) % 10, name="toy")


@pytest.mark.parametrize("drop_last", [False, True])
def test_start_batch_yields_exact_tail(drop_last: bool) -> None:
    ds = _toy_dataset()
    perm = epoch_permutation(len(ds), seed=1, epoch=2)
    full = list(iterate_batches(ds, 8, shuffle=True, drop_last=drop_last, permutation=perm))
    assert len(full) == num_batches(len(ds), 8, drop_last) == (6 if drop_last else 7)
    assert full[-1][0].shape[0] == (8 if drop_last else 5)
    tail = list(
        iterate_batches(ds, 8, shuffle=True, drop_last=drop_last, permutation=perm, start_batch=4)
    )
    assert len(tail) == len(full) - 4
    for (xi, yi), (xf, yf) in zip(tail, full[4:], strict=True):
        assert torch.equal(xi, xf) and torch.equal(yi, yf)
    assert list(iterate_batches(ds, 8, start_batch=99)) == []


def test_iterate_batches_generator_and_order() -> None:
    ds = _toy_dataset()
    seen = torch.cat([y for _, y in iterate_batches(ds, 10)])
    assert torch.equal(seen, ds.labels)
    first = [x for x, _ in iterate_batches(ds, 10, True, torch.Generator().manual_seed(5))]
    second = [x for x, _ in iterate_batches(ds, 10, True, torch.Generator().manual_seed(5))]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    via_perm = [x for x, _ in iterate_batches(ds, 10, permutation=epoch_permutation(53, 2, 0))]
    via_gen = [
        x for x, _ in iterate_batches(ds, 10, True, torch.Generator().manual_seed(epoch_seed(2, 0)))
    ]
    assert all(torch.equal(a, b) for a, b in zip(via_perm, via_gen, strict=True))
    order = torch.cat([x[:, 0, 0] for x in via_perm]).to(torch.int64)
    assert torch.equal(order, epoch_permutation(53, 2, 0))
    b0 = next(iterate_batches(ds, 10))
    assert b0[0].shape == (10, 28, 28) and b0[0].dtype == torch.uint8


def test_latency_encoding_known_spike_times_and_one_spike_per_pixel():
    import math

    from opzo.data.encoders import latency

    values = [255, 0, 51, 52, 60, 128, 200]
    img = torch.tensor([values], dtype=torch.uint8)
    spikes = latency(img, 100, tau=20.0, theta=0.2)
    assert spikes.shape == (100, 1, len(values))
    assert spikes.sum(0).max() <= 1.0  # at most one spike per pixel
    for j, v in enumerate(values):
        x = v / 255
        if x <= 0.2:
            assert spikes[:, 0, j].sum() == 0  # at or below θ: never
        else:
            step = math.floor(20.0 * math.log(x / (x - 0.2)))
            assert spikes[:, 0, j].nonzero().flatten().tolist() == [step]
    # brighter pixels spike earlier; a spike time beyond T is dropped
    short = latency(img, 30)
    assert short[:, 0, 3].sum() == 0 and short[:, 0, 0].sum() == 1


def test_latency_encoder_from_make_encoder_and_bad_values():
    from opzo.data.encoders import latency

    enc = make_encoder("latency", "fashion-mnist")
    assert not enc.static
    x = enc(torch.full((2, 28, 28), 255, dtype=torch.uint8), 10)
    assert x.shape == (10, 2, 784) and x.sum() == 2 * 784
    with pytest.raises(ValueError, match="tau"):
        latency(torch.zeros(1, 4, dtype=torch.uint8), 10, tau=0.0)
