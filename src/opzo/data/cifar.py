"""CIFAR-10 / CIFAR-100 from the official "python version" pickle batches, and augmentations.

opzo never downloads data. Obtain ``cifar-10-python.tar.gz`` or ``cifar-100-python.tar.gz`` from
https://www.cs.toronto.edu/~kriz/cifar.html and extract it; the readers look in ``root`` and in
``root/cifar-10-batches-py`` (``root/cifar-100-python``), the folder the archive extracts to.

Files and keys:

* CIFAR-10: ``data_batch_1`` .. ``data_batch_5`` (train, 10000 images each) and ``test_batch``;
  each is a pickled dict with ``b"data"`` (``(N, 3072)`` uint8: 1024 red, then 1024 green, then
  1024 blue values, each a row-major 32x32 plane) and ``b"labels"`` (N ints in 0..9).
* CIFAR-100: ``train`` (50000) and ``test`` (10000) with ``b"data"`` and ``b"fine_labels"``
  (0..99; the 20 ``b"coarse_labels"`` are not used).

The batches are Python pickles: unpickling can execute code, so only read files obtained from the
official source. All augmentations act on a batch ``(N, C, H, W)`` (or one image ``(C, H, W)``),
draw one set of random parameters per image from an explicit :class:`torch.Generator` and work for
any dtype.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..registry import Option, Options
from .augment import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    cutout,
    normalize,
    random_crop,
    random_horizontal_flip,
)
from .errors import DatasetError

if TYPE_CHECKING:
    from .sources import ColorImageSource

#: the option of the readers that augment their training split (cifar10, cifar100, cifar10-dvs)
AUGMENT_OPTION = Option(
    "augment", True, "training-split augmentation of cifar10 / cifar100 (random crop with 4 "
    "pixels of padding, horizontal flip, cutout) and cifar10-dvs (random crop), drawn per "
    "batch from (seed, epoch, batch) (OPZO paper appendix C.3.1)")

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR10_STD_LEGACY",
    "CIFAR_NAMES",
    "CIFAR_STATS",
    "CUTOUT_SIZE",
    "cifar_source",
    "cutout",
    "load_cifar",
    "load_cifar10",
    "load_cifar100",
    "normalize",
    "random_crop",
    "random_horizontal_flip",
]

#: Dataset names accepted by :func:`load_cifar`.
CIFAR_NAMES: tuple[str, ...] = ("cifar10", "cifar100")

# CIFAR10_MEAN, CIFAR10_STD: the per-channel (R, G, B) mean and population std of the
# CIFAR-10 training images, pixels scaled to [0, 1] (in opzo.data.augment, normalize's defaults)
#: The std constant found in many CIFAR-10 code bases (smaller than the per-channel std of the
#: training pixels); pass it to :func:`normalize` to reproduce code that uses it.
CIFAR10_STD_LEGACY: tuple[float, float, float] = (0.2023, 0.1994, 0.2010)
#: Per-channel mean of the CIFAR-100 training images, pixels scaled to [0, 1].
CIFAR100_MEAN: tuple[float, float, float] = (0.5071, 0.4865, 0.4409)
#: Per-channel std of the CIFAR-100 training images.
CIFAR100_STD: tuple[float, float, float] = (0.2673, 0.2564, 0.2762)
#: Cutout square side used by DeVries & Taylor (2017): 16 for CIFAR-10, 8 for CIFAR-100.
CUTOUT_SIZE: dict[str, int] = {"cifar10": 16, "cifar100": 8}
#: Per-channel normalisation ``(mean, std)`` of each dataset, as :func:`cifar_source` uses it.
CIFAR_STATS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
}

_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
# name -> (folder the archive extracts to, archive name, train files, test files, label key,
#          number of classes, pretty name)
_LAYOUT: dict[str, tuple[str, str, tuple[str, ...], tuple[str, ...], bytes, int, str]] = {
    "cifar10": (
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        b"labels",
        10,
        "CIFAR-10",
    ),
    "cifar100": (
        "cifar-100-python",
        "cifar-100-python.tar.gz",
        ("train",),
        ("test",),
        b"fine_labels",
        100,
        "CIFAR-100",
    ),
}


def _canonical(name: str) -> str:
    key = name.strip().lower().replace("-", "").replace("_", "")
    if key not in _LAYOUT:
        raise DatasetError(f"unknown CIFAR dataset {name!r}; allowed: {', '.join(CIFAR_NAMES)}")
    return key


def _how_to_obtain(name: str) -> str:
    folder, archive, *_ = _LAYOUT[name]
    return (
        f"opzo never downloads data. Download {archive} (the 'python version') from {_URL} and "
        f"extract it (tar xzf {archive}); pass the folder holding {folder}/ or {folder}/ itself "
        f"as root."
    )


def _get(batch: dict, key: bytes) -> object:
    """Look ``key`` up as bytes (official pickles) or as str (re-pickled under Python 3)."""
    if key in batch:
        return batch[key]
    return batch.get(key.decode(), None)


def _read_batch(path: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one pickle batch, returning ``(N, 3, 32, 32)`` uint8 images and int64 labels."""
    _, _, _, _, label_key, classes, pretty = _LAYOUT[name]
    expected = (
        f"a pickled dict with b'data' (N x 3072 uint8) and {label_key!r} (N labels in "
        f"0..{classes - 1}), as in the official {pretty} python version"
    )
    try:
        with path.open("rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
    except Exception as exc:  # corrupt pickles raise many different exception types
        raise DatasetError(
            f"{path}: cannot unpickle the file ({type(exc).__name__}: {exc}); expected {expected}. "
            f"The file is probably truncated or corrupt; delete it and extract the archive "
            f"again. " + _how_to_obtain(name)
        ) from exc
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: expected {expected}, found a {type(batch).__name__}")
    data, labels = _get(batch, b"data"), _get(batch, label_key)
    if data is None or labels is None:
        keys = ", ".join(repr(k) for k in batch)
        raise DatasetError(f"{path}: expected {expected}; the dict has keys {keys}")
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetError(
            f"{path}: expected b'data' of shape (N, 3072) uint8, found {data.dtype} {data.shape}"
        )
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or labels.dtype.kind not in "iu":
        raise DatasetError(
            f"{path}: expected {data.shape[0]} integer labels under {label_key!r}, found "
            f"{labels.dtype} {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise DatasetError(
            f"{path}: labels must lie in 0..{classes - 1} but range from {labels.min()} to "
            f"{labels.max()}; is this really a {pretty} file?"
        )
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar(
    name: str, root: str | os.PathLike[str], split: str = "train"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load CIFAR-10 or CIFAR-100 from the official python pickle batches.

    Args:
        name: ``"cifar10"`` or ``"cifar100"`` (``"CIFAR-10"`` etc. also accepted).
        root: folder holding the extracted batch folder, or the batch folder itself.
        split: ``"train"`` or ``"test"``.

    Returns:
        ``(images, labels)``: uint8 tensor ``(N, 3, 32, 32)`` (RGB) and int64 tensor ``(N,)``.

    Raises:
        DatasetError: unknown name or split, missing, truncated or invalid files; the message
            names the folders searched, the files expected and where to get them.
    """
    name = _canonical(name)
    folder_name, archive, train_files, test_files, _, _, pretty = _LAYOUT[name]
    if split not in ("train", "test"):
        raise DatasetError(f"unknown split {split!r}; allowed: train, test")
    files = train_files if split == "train" else test_files
    root = Path(root).expanduser()
    candidates = [root / folder_name, root]
    expected = f"{', '.join(files)} (from {archive})"
    for folder in candidates:
        present = [f for f in files if (folder / f).is_file()]
        if not present:
            continue
        missing = [f for f in files if f not in present]
        if missing:
            raise DatasetError(
                f"incomplete {pretty} {split} split in {folder.absolute()}: missing "
                f"{', '.join(missing)}; expected {expected}. " + _how_to_obtain(name)
            )
        parts = [_read_batch(folder / f, name) for f in files]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        return torch.from_numpy(images), torch.from_numpy(labels)
    searched = "; ".join(str(f.absolute()) for f in candidates)
    hint = ""
    if (root / archive).is_file():
        hint = f" Found the archive {root / archive}: extract it first (tar xzf {archive})."
    raise DatasetError(
        f"{pretty} {split} files not found. Searched the folders: {searched}. Expected "
        f"{expected}.{hint} " + _how_to_obtain(name)
    )


def load_cifar10(
    root: str | os.PathLike[str], split: str = "train"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load CIFAR-10 (``cifar-10-batches-py``); see :func:`load_cifar`."""
    return load_cifar("cifar10", root, split)


def load_cifar100(
    root: str | os.PathLike[str], split: str = "train"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load CIFAR-100 with the 100 fine labels (``cifar-100-python``); see :func:`load_cifar`."""
    return load_cifar("cifar100", root, split)


def cifar_source(cfg: Options, split: str) -> ColorImageSource:
    """CIFAR-10 or CIFAR-100 (``cfg.dataset``) as the OPZO paper preprocesses it (appendix
    C.3.1): per-channel normalisation (:data:`CIFAR_STATS`) and, on the training split when
    ``cfg.augment``, random crop (4 pixels of padding), horizontal flip and cutout
    (:data:`CUTOUT_SIZE`), drawn per batch from ``(cfg.seed, epoch, batch)``; the pixels are
    fed directly or spike-encoded (``cfg.encoding``, ``cfg.latency_tau``,
    ``cfg.latency_theta``). Read from ``cfg.data_root`` (:func:`load_cifar`)."""
    # imported here: opzo.data.sources imports this module's augmentations
    from .encoders import Encoder
    from .sources import ColorImageSource

    name = _canonical(cfg.dataset)
    if cfg.data_root is None:
        raise DatasetError(f"{_LAYOUT[name][6]} needs data_root, the folder holding its "
                           "files. " + _how_to_obtain(name))
    images, labels = load_cifar(name, cfg.data_root, split)
    mean, std = CIFAR_STATS[name]
    augment = split == "train" and cfg.augment
    return ColorImageSource(
        images, labels, classes=_LAYOUT[name][5],
        encoder=Encoder(cfg.encoding, tau=cfg.latency_tau, theta=cfg.latency_theta),
        mean=mean, std=std, augment_seed=cfg.seed if augment else None,
        crop_padding=4, cutout_size=CUTOUT_SIZE[name])
