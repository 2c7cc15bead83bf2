"""Writers of tiny dataset files in the real on-disk formats, shared by the reader and training
tests (nothing is downloaded). Each is written independently of the reader it feeds: from the
format's description, not with the reader's code.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from opzo.data.neuromorphic import CIFAR10DVS_CLASSES

# ----------------------------------------------------------------------------------- N-MNIST


def encode_nmnist(x: list[int], y: list[int], p: list[int], t: list[int]) -> bytes:
    """Events in the N-MNIST ``.bin`` format (Orchard et al. 2015): 5 bytes per event, ``x``,
    ``y``, then polarity in bit 7 and a 23-bit microsecond timestamp in the remaining bits."""
    out = bytearray()
    for xi, yi, pi, ti in zip(x, y, p, t):
        out += bytes([xi, yi, (pi << 7) | ((ti >> 16) & 0x7F), (ti >> 8) & 0xFF, ti & 0xFF])
    return bytes(out)


def write_nmnist_tree(root: Path, per_split: dict[str, int], count: int, t_max: int) -> None:
    """A tiny N-MNIST tree in the official archive's layout, ``root/<split>/<digit>/<k>.bin``
    (``per_split``: ``{"Train": n, "Test": m}`` files per digit), each file ``count`` events
    (:func:`encode_nmnist`) with times below ``t_max`` microseconds, in a band of x that
    depends on the digit (so the classes are learnable)."""
    g = torch.Generator().manual_seed(0)
    for split, n in per_split.items():
        for digit in range(10):
            folder = root / split / str(digit)
            folder.mkdir(parents=True)
            for k in range(n):
                x = (torch.randint(0, 7, (count,), generator=g) + 3 * digit).tolist()
                y = torch.randint(0, 34, (count,), generator=g).tolist()
                p = torch.randint(0, 2, (count,), generator=g).tolist()
                t = sorted(torch.randint(0, t_max, (count,), generator=g).tolist())
                (folder / f"{k:05d}.bin").write_bytes(encode_nmnist(x, y, p, t))


# ----------------------------------------------------------------------------- DVS Gesture


def gesture_events(n: int, x0: int) -> np.ndarray:
    """One DVS128 Gesture sample as tonic stores it (save it with ``np.save`` as
    ``<label>.npy``): a 2-D float array with columns ``(x, y, p, t)``, ``t`` in milliseconds;
    ``n`` events at ``x = x0 + i % 3``, ``y = 60``, alternating polarity, 0.5 ms apart."""
    rows = [(x0 + (i % 3), 60, i % 2, 0.5 * i) for i in range(n)]
    return np.asarray(rows, dtype=np.float64)


# ----------------------------------------------------------------------------- CIFAR10-DVS


def write_cifar10dvs(root: Path, indices: tuple[int, ...] = (2, 10, 1)) -> None:
    """CIFAR10-DVS as SpikingJelly converts it: ``root/<class>/cifar10_<class>_<i>.npz`` for the
    10 classes, each an ``.npz`` with 1-D arrays ``t, x, y, p``; sample ``i`` has ``i + 10``
    events at x = 60 + i, y = 64, alternating polarity."""
    for name in CIFAR10DVS_CLASSES:
        folder = root / name
        folder.mkdir(parents=True)
        for i in indices:
            n = i + 10
            np.savez(
                folder / f"cifar10_{name}_{i}.npz",
                t=np.arange(n, dtype=np.int64) * 10,
                x=np.full(n, 60 + i, dtype=np.int16),
                y=np.full(n, 64, dtype=np.int16),
                p=(np.arange(n) % 2).astype(np.int8),
            )


# ------------------------------------------------------------------------------- SHD / SSC


def write_shd_h5(path: Path, times: list[list[float]], units: list[list[int]],
                 labels: list[int]) -> None:
    """An SHD / SSC HDF5 file (Cramer et al. 2020): ragged ``spikes/times`` (float32 seconds)
    and ``spikes/units`` (uint16), one array per sample, and ``labels`` (uint16). Skips the
    test when h5py is not installed."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        t_ds = f.create_dataset("spikes/times", (len(times),), dtype=h5py.vlen_dtype(np.float32))
        u_ds = f.create_dataset("spikes/units", (len(units),), dtype=h5py.vlen_dtype(np.uint16))
        for i, (t, u) in enumerate(zip(times, units)):
            t_ds[i] = np.asarray(t, dtype=np.float32)
            u_ds[i] = np.asarray(u, dtype=np.uint16)
        f.create_dataset("labels", data=np.asarray(labels, dtype=np.uint16))


# ------------------------------------------------------------------------------- CIFAR


def write_cifar_pickle(path: Path, data: np.ndarray, labels: list[int], key: bytes) -> None:
    """One batch of the CIFAR "python version" (``data_batch_1``, ``test_batch``, CIFAR-100's
    ``train``...): a pickled dict with ``b"data"`` (``(N, 3072)`` uint8, see
    :func:`cifar_images`) and the labels under ``key`` (``b"labels"`` for CIFAR-10,
    ``b"fine_labels"`` for CIFAR-100)."""
    with path.open("wb") as fh:
        pickle.dump({b"batch_label": b"test", b"data": data, key: labels}, fh, protocol=2)


def cifar_images(n: int, seed: int) -> np.ndarray:
    """``n`` random images as the CIFAR batches store them: ``(n, 3072)`` uint8 rows of 1024
    red, 1024 green, then 1024 blue values (row-major 32x32 planes)."""
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


# ------------------------------------------------------------------------------- N-Caltech-101


def encode_ncaltech(events: list[tuple[int, int, int, int]], overflow_after: tuple[int, ...] = ()
                    ) -> bytes:
    """Events ``(x, y, p, t)`` in N-Caltech-101's ATIS ``.bin`` format (40 bits per event as
    N-MNIST, :func:`encode_nmnist`), with a timestamp-overflow marker (``y = 240``, the other
    fields 0) written after each event index in ``overflow_after``; ``t`` is the 23-bit field
    as stored (the reader adds 2^13 us per earlier marker)."""
    out = bytearray()
    for i, (x, y, p, t) in enumerate(events):
        out += encode_nmnist([x], [y], [p], [t])
        if i in overflow_after:
            out += bytes([0, 240, 0, 0, 0])
    return bytes(out)


# ----------------------------------------------------------------------------------- N-CARS


def encode_prophesee_dat(t: list[int], x: list[int], y: list[int], p: list[int],
                         version: int | None = 2) -> bytes:
    """A Prophesee ``.dat`` CD file: '%' header lines (with '% Version N' unless ``version``
    is None), the event type (0x0C, EventCD) and size (8) bytes, then per event a little-endian
    uint32 timestamp and a uint32 address: version >= 2 x bits 0-13, y bits 14-27, p bit 28;
    older (ATIS) x bits 0-8, y bits 9-16, p bit 17."""
    header = "% Data file containing CD events\n% Date 2018-03-13 10:00:00\n"
    if version is not None:
        header += f"% Version {version}\n"
    header += "% Width 304\n% Height 240\n"
    out = bytearray(header.encode("ascii"))
    out += bytes([0x0C, 8])
    for ti, xi, yi, pi in zip(t, x, y, p):
        if version is not None and version >= 2:
            addr = xi | (yi << 14) | (pi << 28)
        else:
            addr = xi | (yi << 9) | (pi << 17)
        out += int(ti).to_bytes(4, "little") + int(addr).to_bytes(4, "little")
    return bytes(out)


# ---------------------------------------------------------------------------------- ImageNet


def write_image(path: Path, pixels: np.ndarray) -> None:
    """An image file (format from the suffix: .JPEG, .png) of ``pixels`` (H, W, 3) uint8,
    written with Pillow (the test is skipped without it)."""
    image_mod = pytest.importorskip("PIL.Image", reason="writing images needs Pillow")
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "JPEG" if path.suffix.lower() in (".jpeg", ".jpg") else "PNG"
    image_mod.fromarray(pixels, "RGB").save(path, format=fmt, quality=95)


# ------------------------------------------------------------ one small example per dataset


def _example_cifar10(root: Path, monkeypatch) -> dict:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(5):
        write_cifar_pickle(folder / f"data_batch_{i + 1}", cifar_images(3, i),
                           [(3 * i + k) % 10 for k in range(3)], b"labels")
    write_cifar_pickle(folder / "test_batch", cifar_images(4, 9), [0, 1, 2, 3], b"labels")
    return {"data_root": str(root), "T": 2}


def _example_cifar100(root: Path, monkeypatch) -> dict:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    write_cifar_pickle(folder / "train", cifar_images(6, 0), [0, 99, 50, 3, 7, 8],
                       b"fine_labels")
    write_cifar_pickle(folder / "test", cifar_images(3, 1), [42, 5, 1], b"fine_labels")
    return {"data_root": str(root), "T": 2}


def _example_gesture(root: Path, monkeypatch) -> dict:
    for split, sessions in (("ibmGestureTrain", ("user01_led",)), ("ibmGestureTest",
                                                                   ("user24_led",))):
        for name in sessions:
            folder = root / "DVSGesture" / split / name
            folder.mkdir(parents=True)
            for label in range(11):
                np.save(folder / f"{label}.npy", gesture_events(40 + 4 * label, 20 + 2 * label))
    return {"data_root": str(root), "T": 3}


def _example_cifar10dvs(root: Path, monkeypatch) -> dict:
    from opzo.data.neuromorphic import cifar10dvs

    monkeypatch.setattr(cifar10dvs, "CIFAR10DVS_TRAIN_PER_CLASS", 2)  # 3 files per class
    write_cifar10dvs(root)
    return {"data_root": str(root), "T": 3}


def _example_shd(name: str):
    def write(root: Path, monkeypatch) -> dict:
        for split, n in (("train", 6), ("test", 3)):
            times = [[0.01 * (k + 1), 0.3, 0.9] for k in range(n)]
            units = [[k, 100 + k, 699] for k in range(n)]
            write_shd_h5(root / f"{name}_{split}.h5", times, units, list(range(n)))
        return {"data_root": str(root), "T": 4}
    return write


def _example_nmnist(root: Path, monkeypatch) -> dict:
    write_nmnist_tree(root, {"Train": 1, "Test": 1}, count=30, t_max=15000)
    return {"data_root": str(root), "T": 3}


def _shared(folder: str):
    def locate(root: Path, monkeypatch) -> dict:
        from .conftest import SHARED_DATA

        path = SHARED_DATA / folder
        if not path.is_dir():
            pytest.skip(f"{path} is not there")
        return {"data_root": str(path), "T": 2}
    return locate


def _example_ncaltech101(root: Path, monkeypatch) -> dict:
    for c, name in enumerate(("BACKGROUND_Google", "accordion")):
        folder = root / "NCALTECH101" / "Caltech101" / name
        folder.mkdir(parents=True)
        for k in range(5):  # every 5th file of a class is a test sample
            ev = [(10 * c + i % 5, 20 + i % 3, i % 2, 10 * i) for i in range(30 + k)]
            (folder / f"image_{k + 1:04d}.bin").write_bytes(encode_ncaltech(ev))
    return {"data_root": str(root), "T": 2}


def _example_ncars(root: Path, monkeypatch) -> dict:
    for split in ("train", "test"):
        for label, name in enumerate(("background", "cars")):
            folder = root / "NCARS" / f"n-cars_{split}" / name
            folder.mkdir(parents=True)
            for k in range(3):
                n = 20 + k
                xs = [(60 * label + i) % 120 for i in range(n)]
                (folder / f"obj_{k:06d}_td.dat").write_bytes(encode_prophesee_dat(
                    list(range(0, 100 * n, 100)), xs, [i % 100 for i in range(n)],
                    [i % 2 for i in range(n)]))
    return {"data_root": str(root), "T": 2}


def _example_imagenet(root: Path, monkeypatch) -> dict:
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for c in ("n01440764", "n01443537"):
            for k in range(n):
                pixels = rng.integers(0, 256, (240 + 20 * k, 230, 3), dtype=np.uint8)
                write_image(root / split / c / f"{c}_{k}.JPEG", pixels)
    return {"data_root": str(root), "T": 1}


#: dataset name -> a writer of a small example in the dataset's real format under a folder
#: (``(root, monkeypatch) -> options``), returning the options that read it (datasets made
#: or shipped by the package need none; a new dataset that reads files adds its writer here)
EXAMPLES = {
    "mnist": _shared("mnist"),
    "fashion-mnist": _shared("fashion-mnist"),
    "cifar10": _example_cifar10,
    "cifar100": _example_cifar100,
    "nmnist": _example_nmnist,
    "dvs-gesture": _example_gesture,
    "cifar10-dvs": _example_cifar10dvs,
    "shd": _example_shd("shd"),
    "ssc": _example_shd("ssc"),
    "ncaltech101": _example_ncaltech101,
    "ncars": _example_ncars,
    "imagenet": _example_imagenet,
    "imagenet100": _example_imagenet,
}
