"""CIFAR10-DVS (Li et al. 2017) in SpikingJelly's ``.npz`` layout: :func:`read_cifar10dvs_npz`
reads one sample, :class:`CIFAR10DVS` gives ``(10, 2, 48, 48)`` frames with the 9000/1000
split, optional random crop and normalisation, and :func:`cifar10dvs_source` is the training
source of ``opzo train`` (the OPZO paper's preprocessing, appendix C.3.1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...registry import Options
from ..cifar import random_crop
from ..errors import DatasetError
from ..sources import FrameSource
from .base import (
    _NEVER,
    EVENT_FRAME_SIZE,
    EqualCountDataset,
    PathLike,
    _as_events,
    _data_root,
    _stem_key,
    cached_mean_std,
)

__all__ = [
    "CIFAR10DVS",
    "CIFAR10DVS_CLASSES",
    "CIFAR10DVS_SENSOR",
    "CIFAR10DVS_TRAIN_PER_CLASS",
    "cifar10dvs_source",
    "read_cifar10dvs_npz",
]

#: CIFAR10-DVS sensor size.
CIFAR10DVS_SENSOR: tuple[int, int, int] = (128, 128, 2)
#: CIFAR10-DVS class folder names; the label is the index in this tuple.
CIFAR10DVS_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
#: CIFAR10-DVS samples per class in the training split (the common 9000/1000 split); tests
#: lower it to split a handful of files (:func:`cifar10dvs_source` reads it at each call)
CIFAR10DVS_TRAIN_PER_CLASS = 900

_CIFAR10DVS_URL = (
    "figshare (Li et al. 2017, https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671)"
)
_CIFAR10DVS_FORMAT = "an .npz archive with 1-D arrays t, x, y, p (SpikingJelly's converted events)"


def read_cifar10dvs_npz(path: PathLike) -> np.ndarray:
    """Read one CIFAR10-DVS sample converted by SpikingJelly (``.npz`` with ``t, x, y, p``).

    Returns:
        :data:`~opzo.data.events.EVENT_DTYPE` array in file order.

    Raises:
        DatasetError: missing, unreadable or incomplete file.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"file not found: {path.absolute()}; expected {_CIFAR10DVS_FORMAT}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in "txyp" if k not in npz.files]
            if missing:
                raise DatasetError(
                    f"{path}: missing arrays {', '.join(missing)} (found: "
                    f"{', '.join(npz.files) or 'none'}); expected {_CIFAR10DVS_FORMAT}"
                )
            columns = {k: npz[k] for k in "txyp"}
    except DatasetError:
        raise
    except Exception as exc:  # zipfile, zlib and numpy raise many types for corrupt archives
        raise DatasetError(
            f"{path}: cannot read the file ({type(exc).__name__}: {exc}); expected "
            f"{_CIFAR10DVS_FORMAT}. The file is probably truncated or corrupt."
        ) from exc
    return _as_events(
        path, columns["t"], columns["x"], columns["y"], columns["p"], _CIFAR10DVS_FORMAT
    )


class CIFAR10DVS(EqualCountDataset):
    """CIFAR10-DVS in SpikingJelly's ``.npz`` layout, with the 9000/1000 split (the OPZO paper's
    preprocessing, appendix C.3.1: 10 frames of equal event counts, 48x48, random crop,
    normalised by the training split's mean and std).

    Layout: ``root/<class_name>/<index>.npz`` (or under ``root/events_np/``, SpikingJelly's
    folder), one folder per class of :data:`CIFAR10DVS_CLASSES` (label = position in that
    alphabetical tuple). Within a class the files are sorted by the integer ending their stem
    (e.g. ``cifar10_cat_17.npz`` -> 17); the first ``train_per_class`` (900) are the training
    set, the rest (100) the test set.

    Each item is ``(frames, label)``, frames ``(n_frames, 2, size, size)`` float32: events split
    into ``n_frames`` slices of equal counts on the 128x128 sensor, resized to ``size`` (mode
    ``resize_mode``); then, if ``augment``, a random crop (4 zero pixels of padding, same crop
    for all frames, drawn from ``generator``); then, if ``mean`` and ``std`` are given,
    ``(frames - mean) / std`` (global scalars, see
    :func:`~opzo.data.neuromorphic.compute_mean_std`). Cropping comes before normalisation, so
    padded pixels hold zero events.
    """

    pretty = "CIFAR10-DVS"
    n_classes = len(CIFAR10DVS_CLASSES)
    sensor = CIFAR10DVS_SENSOR

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        n_frames: int = 10,
        size: int = 48,
        train_per_class: int = 900,
        augment: bool = False,
        generator: torch.Generator | None = None,
        mean: float | None = None,
        std: float | None = None,
        resize_mode: str = "area",
        crop_padding: int = 4,
    ) -> None:
        super().__init__(
            split, n_frames, size, resize_mode,
            layout=(
                f"ROOT/<class>/<index>.npz for the classes {', '.join(CIFAR10DVS_CLASSES)} (or "
                f"ROOT/events_np/<class>/, SpikingJelly's layout), each file {_CIFAR10DVS_FORMAT}"
            ),
            where=(
                f"{_NEVER} Get CIFAR10-DVS from {_CIFAR10DVS_URL} and convert the .aedat files "
                f"to .npz (spikingjelly.datasets.cifar10_dvs.CIFAR10DVS does this)."
            ),
        )
        if (mean is None) != (std is None) or (std is not None and not std > 0):
            raise ValueError(f"give both mean and a positive std, or neither (got {mean}, {std})")
        self.augment, self.generator, self.crop_padding = augment, generator, int(crop_padding)
        self.mean, self.std = mean, std
        root = Path(root).expanduser()
        candidates = [root, root / "events_np", root / "CIFAR10DVS", root / "CIFAR10DVS/events_np"]
        folder = None
        for candidate in candidates:  # the first folder holding the class folders, all of them
            present = [c for c in CIFAR10DVS_CLASSES if (candidate / c).is_dir()]
            if len(present) == len(CIFAR10DVS_CLASSES):
                folder = candidate
                break
            if present:
                missing = [c for c in CIFAR10DVS_CLASSES if c not in present]
                raise DatasetError(
                    f"incomplete CIFAR10-DVS folder {candidate.absolute()}: class folders "
                    f"{', '.join(missing)} are missing; expected {self.layout}. {self.where}"
                )
        if folder is None:
            raise self._not_found("CIFAR10-DVS", candidates)
        self.folder = folder
        for label, name in enumerate(CIFAR10DVS_CLASSES):
            found = sorted((folder / name).glob("*.npz"), key=_stem_key)
            if len(found) <= train_per_class:
                raise DatasetError(
                    f"{(folder / name).absolute()} holds {len(found)} .npz files, but the split "
                    f"uses the first {train_per_class} of each class for training and the rest "
                    f"for testing (the full dataset has 1000 per class: 900 train, 100 test). "
                    f"The conversion is incomplete? Expected {self.layout}. {self.where}"
                )
            self._add(found[:train_per_class] if split == "train" else found[train_per_class:],
                      label)

    def read(self, path: Path) -> np.ndarray:
        return read_cifar10dvs_npz(path)

    def transform(self, frames: torch.Tensor) -> torch.Tensor:
        """The random crop (if ``augment``), then the normalisation (if ``mean``, ``std``)."""
        if self.augment:
            t, c, h, w = frames.shape
            cropped = random_crop(frames.reshape(1, t * c, h, w), self.crop_padding, self.generator)
            frames = cropped.reshape(t, c, h, w)
        if self.mean is not None and self.std is not None:
            frames = (frames - self.mean) / self.std
        return frames



# -------------------------------------------------------------------------- training source


def cifar10dvs_source(cfg: Options, split: str) -> FrameSource:
    """CIFAR10-DVS as the OPZO paper preprocesses it (appendix C.3.1): ``cfg.T`` frames of
    equal event counts (paper: 10), 48x48, the 9000/1000 split, normalised by the global mean
    and std of all frames of the training split (:func:`cached_mean_std`), random crop (4
    pixels of padding) on the training split when ``cfg.augment``, drawn per batch from
    ``(cfg.seed, epoch, batch)``."""
    root = _data_root(cfg, CIFAR10DVS.pretty)
    common: dict[str, Any] = dict(n_frames=cfg.T, size=EVENT_FRAME_SIZE,
                                  train_per_class=CIFAR10DVS_TRAIN_PER_CLASS)
    mean, std = cached_mean_std(CIFAR10DVS(root, "train", **common))
    if not std > 0:
        raise DatasetError(f"CIFAR10-DVS training frames in {root} are all equal "
                           f"(mean {mean}, std 0): cannot normalise them")
    augment = split == "train" and cfg.augment
    # the reader's own generator is replaced per batch by FrameSource (augment_seed); a fixed
    # one here keeps the first read (the frame shape) off torch's global generator
    data = CIFAR10DVS(root, split, augment=augment, mean=mean, std=std,
                      generator=torch.Generator().manual_seed(cfg.seed), **common)
    return FrameSource(data, classes=data.n_classes, augment_seed=cfg.seed if augment else None)
