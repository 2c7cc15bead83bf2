"""MNIST-like datasets (MNIST, Fashion-MNIST) from local idx files, and the embedded subset.

opzo never downloads data. :func:`load_mnist_like` reads the four official idx files from a
folder the user provides; :func:`load_dataset` also offers ``"embedded-mnist"``, a small
class-balanced MNIST subset shipped inside the package (see ``embedded/LICENSE-MNIST.txt``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..registry import Options
from .arrays import ArrayDataset
from .errors import DatasetError
from .idx import read_idx

if TYPE_CHECKING:
    from .sources import ImageSource

__all__ = [
    "DATASET_NAMES",
    "EMBEDDED_FILE",
    "KNOWN_LABELS",
    "ArrayDataset",
    "canonical_dataset_name",
    "image_source",
    "labels_digest",
    "load_dataset",
    "load_embedded_mnist",
    "load_mnist_like",
]

#: Names accepted by :func:`load_dataset`.
DATASET_NAMES: tuple[str, ...] = ("mnist", "fashion-mnist", "embedded-mnist")
#: File name of the embedded subset inside ``opzo/data/embedded/``.
EMBEDDED_FILE = "mnist_subset.npz"

_SPLITS: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_ALIASES: dict[str, str] = {
    "mnist": "mnist",
    "fashion-mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "embedded-mnist": "embedded-mnist",
}
# canonical name -> (torchvision folder name, human-readable name, where to obtain the files)
_INFO: dict[str, tuple[str, str, str]] = {
    "mnist": (
        "MNIST",
        "MNIST",
        "from http://yann.lecun.com/exdb/mnist/ or any mirror of it",
    ),
    "fashion-mnist": (
        "FashionMNIST",
        "Fashion-MNIST",
        "from https://github.com/zalandoresearch/fashion-mnist, or on Debian with "
        "`apt-get install dataset-fashion-mnist` "
        "(files land in /usr/share/datasets/fashion-mnist/)",
    ),
}

#: What the official files of each MNIST-like dataset hold: sha256 (first 16 hex digits) of
#: the first 1000 labels of each split as bytes, :func:`labels_digest`. Computed once from
#: the official idx files (tests/test_faults_errors.py recomputes them from ../shared/data):
#:   labels_digest(load_mnist_like(ROOT, split, name).labels) for ROOT holding the files.
#: MNIST and Fashion-MNIST share file names, sizes and shapes; their labels tell them apart.
KNOWN_LABELS: dict[tuple[str, str], str] = {
    ("mnist", "train"): "b03ead2884240483",
    ("mnist", "test"): "d14ba0a1a3818ede",
    ("fashion-mnist", "train"): "a2d1512599a9270a",
    ("fashion-mnist", "test"): "86fea14d645de73e",
}


def labels_digest(labels: torch.Tensor | np.ndarray) -> str:
    """sha256 (16 hex digits) of the first 1000 labels as one byte each: what
    :data:`KNOWN_LABELS` holds for the official files."""
    head = np.asarray(labels[:1000]).astype(np.uint8)
    return hashlib.sha256(head.tobytes()).hexdigest()[:16]


def _check_identity(labels: np.ndarray, name: str, split: str, folder: Path) -> None:
    """Refuse files that are recognisably another known dataset's (Fashion-MNIST's files
    given as MNIST, or the reverse): the run would train on one and record the other."""
    digest = labels_digest(labels)
    for (other, other_split), known in KNOWN_LABELS.items():
        if known == digest and other != name:
            raise DatasetError(
                f"{folder.absolute()} holds {_INFO[other][1]} ({other_split} split), not "
                f"{_INFO[name][1]}: give --dataset {other} to use it, or a folder with the "
                f"{_INFO[name][1]} files")


def _no_registry() -> list[str]:
    return list(DATASET_NAMES)


#: every registered dataset's name, now (:data:`opzo.data.DATASETS`, which sets this when it is
#: built: this module sits below the registry and does not import it)
registered_names: Callable[[], list[str]] = _no_registry


def canonical_dataset_name(name: str) -> str:
    """Normalise a dataset name (case, ``_`` vs ``-``) to one of :data:`DATASET_NAMES`.

    Raises:
        DatasetError: unknown name; the message lists the allowed names.
    """
    key = name.strip().lower().replace("_", "-")
    if key not in _ALIASES:
        raise DatasetError(
            f"{name!r} is not an MNIST-like dataset: load_dataset reads "
            f"{', '.join(DATASET_NAMES)}; the datasets of opzo are "
            f"{', '.join(registered_names())}: read the others with "
            f"opzo.build.make_source, as 'opzo train --dataset NAME' does")
    return _ALIASES[key]


def _check_split(split: str) -> str:
    if split not in _SPLITS:
        raise DatasetError(f"unknown split {split!r}; allowed: {', '.join(_SPLITS)}")
    return split


def _find(folder: Path, base: str) -> Path | None:
    """Return ``folder/base`` or ``folder/base.gz`` (uncompressed preferred), or None."""
    for candidate in (folder / base, folder / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _how_to_obtain(name: str) -> str:
    tv_folder, pretty, where = _INFO[name]
    return (
        f"opzo never downloads data. Obtain the four official {pretty} idx files {where}, and put "
        f"them (gzip-compressed or not) directly in one folder, or use torchvision's layout "
        f"ROOT/{tv_folder}/raw/. For a quick offline run use the packaged subset: "
        f"load_dataset('embedded-mnist')."
    )


def _validate(images: np.ndarray, labels: np.ndarray, name: str, paths: tuple[Path, Path]) -> None:
    img_path, lbl_path = paths
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DatasetError(
            f"{img_path}: expected uint8 images of shape (N, 28, 28) but found "
            f"{images.dtype} {images.shape}. Is this really an {name} image file?"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DatasetError(
            f"{lbl_path}: expected uint8 labels of shape (N,) but found {labels.dtype} "
            f"{labels.shape}. Is this really an {name} label file?"
        )
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{name}: {images.shape[0]} images in {img_path} but {labels.shape[0]} labels in "
            f"{lbl_path}; the files do not belong together or one is incomplete."
        )
    if labels.size and int(labels.max()) > 9:
        raise DatasetError(
            f"{lbl_path}: labels must be in 0..9 but found {int(labels.max())}; the file is "
            f"probably corrupt or not a {name} label file."
        )


def load_mnist_like(
    root: str | os.PathLike[str], split: str = "train", name: str = "mnist"
) -> ArrayDataset:
    """Load MNIST or Fashion-MNIST from the official idx files under ``root``.

    Folders searched, in order (the first one holding either file of the split is used):
    ``root`` itself (the four files directly in it, or root *is* torchvision's raw folder),
    ``root/raw``, ``root/MNIST/raw`` (``root/FashionMNIST/raw`` for Fashion-MNIST) and
    ``root/mnist`` (``root/fashion-mnist``). Each file may be gzip-compressed (``.gz``) or not.

    Args:
        root: folder holding the data (see above).
        split: ``"train"`` or ``"test"``.
        name: ``"mnist"`` or ``"fashion-mnist"``.

    Returns:
        An :class:`ArrayDataset` with uint8 images ``(N, 28, 28)`` and int64 labels ``(N,)``.

    Raises:
        DatasetError: missing or invalid files; the message names the folders searched, the
            exact file names expected, and where to obtain the files.
    """
    name = canonical_dataset_name(name)
    if name not in _INFO:
        raise DatasetError(
            f"load_mnist_like reads {' or '.join(_INFO)} only, not {name!r}; use load_dataset"
        )
    split = _check_split(split)
    img_base, lbl_base = _SPLITS[split]
    root = Path(root).expanduser()
    tv_folder = _INFO[name][0]
    if not root.is_dir():
        raise DatasetError(
            f"{_INFO[name][1]} root folder does not exist or is not a folder: {root.absolute()}. "
            + _how_to_obtain(name)
        )
    candidates = [root, root / "raw", root / tv_folder / "raw", root / name]
    expected = f"{img_base} and {lbl_base} (each optionally with .gz)"
    for folder in candidates:
        img_path, lbl_path = _find(folder, img_base), _find(folder, lbl_base)
        if img_path is None and lbl_path is None:
            continue
        if img_path is None or lbl_path is None:
            missing = img_base if img_path is None else lbl_base
            present = lbl_path if img_path is None else img_path
            raise DatasetError(
                f"incomplete {_INFO[name][1]} {split} split in {folder.absolute()}: found "
                f"{present.name} but not {missing} or {missing}.gz. Expected {expected}. "
                + _how_to_obtain(name)
            )
        images = read_idx(img_path)
        labels = read_idx(lbl_path)
        _validate(images, labels, name, (img_path, lbl_path))
        _check_identity(labels, name, split, folder)
        return ArrayDataset(
            images=torch.from_numpy(images),
            labels=torch.from_numpy(labels.astype(np.int64)),
            name=name,
            classes=10,
        )
    searched = "; ".join(str(f.absolute()) for f in candidates)
    raise DatasetError(
        f"{_INFO[name][1]} {split} files not found. Searched the folders: {searched}. Expected "
        f"{expected}. " + _how_to_obtain(name)
    )


@functools.lru_cache(maxsize=1)
def _embedded_arrays() -> dict[str, np.ndarray]:
    ref = importlib.resources.files("opzo.data").joinpath("embedded", EMBEDDED_FILE)
    try:
        with importlib.resources.as_file(ref) as path, np.load(path) as npz:
            return {key: npz[key] for key in npz.files}
    except FileNotFoundError as exc:
        raise DatasetError(
            f"the embedded MNIST subset opzo/data/embedded/{EMBEDDED_FILE} is missing from the "
            f"installed package; reinstall opzo, or rebuild it with tools/make_embedded_mnist.py"
        ) from exc


def load_embedded_mnist(split: str = "train") -> ArrayDataset:
    """Load the MNIST subset packaged with opzo (6000 train, 1000 test images; no root needed).

    The train split holds 600 images per class; the test split is the first 1000 images of the
    official test set in official order. See ``opzo/data/embedded/LICENSE-MNIST.txt``.
    """
    split = _check_split(split)
    arrays = _embedded_arrays()
    return ArrayDataset(
        images=torch.from_numpy(arrays[f"{split}_images"].copy()),
        labels=torch.from_numpy(arrays[f"{split}_labels"].astype(np.int64)),
        name="embedded-mnist",
        classes=10,
    )


def load_dataset(
    name: str, root: str | os.PathLike[str] | None = None, split: str = "train"
) -> ArrayDataset:
    """Load a dataset by name.

    Args:
        name: one of :data:`DATASET_NAMES` (``"mnist"``, ``"fashion-mnist"``,
            ``"embedded-mnist"``).
        root: folder with the idx files (see :func:`load_mnist_like`); required except for
            ``"embedded-mnist"``, which ignores it.
        split: ``"train"`` or ``"test"``.

    Raises:
        DatasetError: unknown name (the message lists the allowed names), missing root or files.
    """
    name = canonical_dataset_name(name)
    if name == "embedded-mnist":
        return load_embedded_mnist(split)
    if root is None:
        raise DatasetError(
            f"dataset {name!r} needs a root folder holding its idx files. " + _how_to_obtain(name)
        )
    return load_mnist_like(root, split=split, name=name)


def image_source(cfg: Options, split: str) -> ImageSource:
    """MNIST, Fashion-MNIST or the embedded MNIST subset (``cfg.dataset``, read by
    :func:`load_dataset` from ``cfg.data_root``) with the config's input encoder
    (``cfg.encoding``: direct current normalised by the dataset's statistics, Bernoulli rate
    or latency spikes with ``cfg.latency_tau``, ``cfg.latency_theta``)."""
    # imported here: opzo.data.encoders and opzo.data.sources import this module
    from .encoders import make_encoder
    from .sources import ImageSource

    return ImageSource(load_dataset(cfg.dataset, cfg.data_root, split),
                       make_encoder(cfg.encoding, cfg.dataset, cfg.latency_tau,
                                    cfg.latency_theta))
