"""Readers for the neuromorphic datasets of the OPZO/OTPE papers (never downloading anything).

Every reader is an :class:`EventDataset`: a split of labelled recordings, each binned into frames
(or spike counts) on first access and kept in a :class:`FrameCache`. A reader only says where
its files are, how a file is read and how its events become frames:

* N-MNIST (Orchard et al. 2015): one ``.bin`` file per sample, read by :func:`read_nmnist_bin`;
  :class:`NMNISTFolder` gives ``(30, 2, 34, 34)`` frames of 3 ms.
* DVS128 Gesture (Amir et al. 2017) in tonic's ``.npy`` layout: :class:`DVSGesture` gives
  ``(20, 2, 48, 48)`` frames (equal event counts, resized from 128x128).
* CIFAR10-DVS (Li et al. 2017) in SpikingJelly's ``.npz`` layout: :class:`CIFAR10DVS` gives
  ``(10, 2, 48, 48)`` frames with the 9000/1000 split, optional random crop and normalisation.
* SHD / SSC (Cramer et al. 2020) HDF5 files: :class:`SpikingHeidelbergDigits` and
  :class:`SpikingSpeechCommands` give ``(n_bins, 700)`` spike counts (h5py imported lazily).

Every dataset returns ``(frames, label)`` with ``frames`` a float32 :class:`torch.Tensor` and
``label`` an ``int``. Missing or invalid files raise :class:`~opzo.data.errors.DatasetError`
naming the path, the expected layout and where to obtain the data.

The training sources of ``opzo train`` (factories ``(cfg, split) -> FrameSource``, registered
in :data:`opzo.data.DATASETS`) are at the end: :func:`nmnist_source`,
:func:`dvs_gesture_source`, :func:`cifar10dvs_source` (the OPZO paper's preprocessing, appendix
C.3.1), :func:`shd_source` and :func:`ssc_source` (the OTPE paper's, appendix A.1).
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from .cifar import random_crop
from .errors import DatasetError
from .events import EVENT_DTYPE, bin_by_count, bin_by_time, bin_units_by_time, resize_frames
from .sources import FrameSource

if TYPE_CHECKING:
    from ..config import TrainConfig

__all__ = [
    "CIFAR10DVS",
    "CIFAR10DVS_CLASSES",
    "CIFAR10DVS_SENSOR",
    "CIFAR10DVS_TRAIN_PER_CLASS",
    "DVSGESTURE_CLASSES",
    "DVSGESTURE_SENSOR",
    "EVENT_FRAME_SIZE",
    "HEIDELBERG_DURATION_S",
    "NMNIST_BIN_US",
    "NMNIST_SENSOR",
    "SHD_UNITS",
    "DVSGesture",
    "EqualCountDataset",
    "EventDataset",
    "FrameCache",
    "NMNISTFolder",
    "SpikingHeidelbergDigits",
    "SpikingSpeechCommands",
    "cached_mean_std",
    "cifar10dvs_source",
    "compute_mean_std",
    "dvs_gesture_source",
    "nmnist_source",
    "read_cifar10dvs_npz",
    "read_gesture_npy",
    "read_nmnist_bin",
    "shd_source",
    "ssc_source",
]

#: N-MNIST sensor size ``(W, H, 2)``.
NMNIST_SENSOR: tuple[int, int, int] = (34, 34, 2)
#: DVS128 Gesture sensor size.
DVSGESTURE_SENSOR: tuple[int, int, int] = (128, 128, 2)
#: Number of DVS128 Gesture classes (the 10 gestures plus "other").
DVSGESTURE_CLASSES = 11
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
#: Number of input units (cochlea channels) of SHD and SSC.
SHD_UNITS = 700

_NEVER = "opzo never downloads data."

_SPLITS = ("train", "test")
PathLike = str | os.PathLike[str]


class FrameCache:
    """Binned frames kept in memory after their first read: binning a recording gives the
    same frames every epoch, so each sample is read and binned once per dataset object (every
    :class:`EventDataset` holds one).

    Up to ``OPZO_FRAME_CACHE_MB`` MiB per dataset (default 2048; 0 turns the cache off);
    past the budget the remaining samples are binned afresh on every read. The cached
    tensors are shared: callers must not modify them in place (augmentation and
    normalisation here make new tensors).
    """

    def __init__(self) -> None:
        self.frames: dict[int, torch.Tensor] = {}
        self.nbytes = 0
        text = os.environ.get("OPZO_FRAME_CACHE_MB", "2048")
        try:
            self.budget = int(float(text) * 2**20)
        except ValueError:
            raise ValueError(f"OPZO_FRAME_CACHE_MB={text!r}: give the frame cache size in MiB, "
                             "e.g. 2048, or 0 to turn the cache off") from None

    def get(self, index: int, make: Callable[[int], torch.Tensor]) -> torch.Tensor:
        """The frames of sample ``index``: cached, or ``make(index)`` (kept if they fit)."""
        frames = self.frames.get(index)
        if frames is None:
            frames = make(index)
            size = frames.numel() * frames.element_size()
            if self.nbytes + size <= self.budget:
                self.frames[index] = frames
                self.nbytes += size
        return frames


def _check_split(split: str, allowed: Sequence[str] = _SPLITS) -> str:
    if split not in allowed:
        raise DatasetError(f"unknown split {split!r}; allowed: {', '.join(allowed)}")
    return split


def _stem_key(path: Path) -> tuple[int, str]:
    """Sort key: the integer at the end of the file stem (files without one go last)."""
    match = re.search(r"(\d+)$", path.stem)
    return (int(match.group(1)) if match else np.iinfo(np.int64).max, path.name)


def _as_events(
    path: Path, t: np.ndarray, x: np.ndarray, y: np.ndarray, p: np.ndarray, expected: str
) -> np.ndarray:
    """Assemble validated columns into an :data:`EVENT_DTYPE` array (errors name ``path``)."""
    columns = [np.asarray(c).reshape(-1) for c in (t, x, y, p)]
    if len({c.size for c in columns}) != 1:
        sizes = ", ".join(f"{n}={c.size}" for n, c in zip("txyp", columns))
        raise DatasetError(f"{path}: event columns differ in length ({sizes}); expected {expected}")
    for name, column in zip("txyp", columns):
        if column.dtype.kind not in "iubf":
            raise DatasetError(
                f"{path}: column {name} has dtype {column.dtype}; expected numbers ({expected})"
            )
        if column.dtype.kind == "f" and not np.isfinite(column).all():
            raise DatasetError(f"{path}: column {name} holds NaN or inf; expected {expected}")
    events = np.empty(columns[0].size, dtype=EVENT_DTYPE)
    t = columns[0]
    events["t"] = np.rint(t).astype(np.int64) if t.dtype.kind == "f" else t.astype(np.int64)
    for name, column in zip("xyp", columns[1:]):
        events[name] = column.astype(np.int64)
    if events.size:
        bad_p = (events["p"] != 0) & (events["p"] != 1)
        if bad_p.any():
            raise DatasetError(
                f"{path}: polarities must be 0 or 1 but {int(bad_p.sum())} events have other "
                f"values (e.g. {columns[3][np.flatnonzero(bad_p)[0]]}); expected {expected}"
            )
    return events


# ------------------------------------------------------------------------------ base classes


class EventDataset:
    """A split of labelled event recordings, each binned into float32 frames on first access.

    What the five readers share lives here; a reader (one subclass per dataset) only says

    * where its samples are: its ``__init__`` calls ``super().__init__`` with the split, the
      expected layout and where to obtain the data, finds its folder among candidate paths
      (:meth:`_find`), and lists the sample files with their labels (:meth:`_add`,
      :meth:`_require_samples`);
    * how a sample is read: :meth:`read` (one file -> events), or :meth:`events` when the
      samples are not one file each (SHD / SSC);
    * how events become frames: :meth:`bin` (events -> float32 array, time first), then
      :meth:`resize` (spatial resampling; identity by default) and, on every read,
      :meth:`transform` (augmentation, normalisation; identity by default; it must return a
      new tensor, never modify the cached one).

    Shared behaviour: the split check (``splits``), ``len``, ``dataset[i] -> (frames, label)``
    with Python-style indices (an out-of-range index raises IndexError), :meth:`raw_frames`,
    the :class:`FrameCache` (each sample is read and binned once per dataset object), and the
    errors: a missing folder names every path searched, the expected layout and where to obtain
    the data (opzo never downloads); a binning error (an event outside the sensor, ...) is a
    :class:`~opzo.data.errors.DatasetError` naming the sample (:meth:`sample_name`).

    Class attributes:
        pretty: the dataset's name in messages.
        n_classes: number of classes (labels are ``0 .. n_classes - 1``).
        splits: the allowed split names.

    Attributes:
        split: the split read.
        files: the sample files, one per sample, in sample order (empty for readers whose
            samples share one file).
        targets: the label of each sample.
        layout: the expected layout, as error messages state it.
        where: where to obtain the data, as error messages state it.
        cache: the binned frames kept so far.
    """

    pretty: ClassVar[str] = "event dataset"
    n_classes: ClassVar[int]
    splits: ClassVar[tuple[str, ...]] = _SPLITS

    def __init__(self, split: str, *, layout: str, where: str) -> None:
        self.split = _check_split(split, self.splits)
        self.layout, self.where = layout, where
        self.cache = FrameCache()
        self.files: list[Path] = []
        self.targets: list[int] = []

    # -- where the samples are (used by the readers' __init__)

    def _not_found(self, what: str, candidates: Sequence[Path]) -> DatasetError:
        """The error for ``what`` found in none of ``candidates``."""
        searched = "; ".join(str(c.absolute()) for c in candidates)
        return DatasetError(
            f"{what} not found. Searched: {searched}. Expected {self.layout}. {self.where}"
        )

    def _find(self, candidates: Sequence[Path], what: str) -> Path:
        """The first of ``candidates`` that is a folder (else a DatasetError naming all)."""
        for candidate in candidates:
            if candidate.is_dir():
                return candidate
        raise self._not_found(what, candidates)

    def _add(self, files: Sequence[Path], label: int) -> None:
        """Append samples ``files``, all of class ``label``."""
        self.files += files
        self.targets += [label] * len(files)

    def _require_samples(self, what: str, folder: Path, pattern: str) -> None:
        """Raise a DatasetError when no sample was found (``what`` in ``folder/pattern``)."""
        if not self.targets:
            raise DatasetError(
                f"no {what} in {folder.absolute()}/{pattern}; expected {self.layout}. "
                f"{self.where}"
            )

    # -- hooks of the readers

    def read(self, path: Path) -> Any:
        """The events of one sample file."""
        raise NotImplementedError(f"{type(self).__name__} does not read files")

    def events(self, index: int) -> Any:
        """The raw events of sample ``index`` (what :meth:`bin` takes)."""
        return self.read(self.files[index])

    def bin(self, events: Any) -> np.ndarray:
        """Frames (float32, time first) of one sample's events; ValueError for bad events."""
        raise NotImplementedError

    def resize(self, frames: np.ndarray) -> np.ndarray:
        """Spatial resampling of binned frames (identity)."""
        return frames

    def transform(self, frames: torch.Tensor) -> torch.Tensor:
        """Per-read change of the cached frames, e.g. augmentation (identity)."""
        return frames

    def sample_name(self, index: int) -> str:
        """How error messages name sample ``index``: its file."""
        return str(self.files[index])

    # -- shared

    def __len__(self) -> int:
        return len(self.targets)

    def _position(self, index: int) -> int:
        index = operator.index(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        return index % len(self)

    def _bin(self, index: int) -> torch.Tensor:
        events = self.events(index)
        try:
            frames = self.bin(events)
        except ValueError as exc:
            raise DatasetError(f"{self.sample_name(index)}: {exc}") from exc
        return torch.from_numpy(self.resize(frames))

    def raw_frames(self, index: int) -> torch.Tensor:
        """Frames of sample ``index`` before :meth:`transform` (no augmentation, no
        normalisation); cached, do not modify."""
        return self.cache.get(self._position(index), self._bin)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        index = self._position(index)
        return self.transform(self.raw_frames(index)), self.targets[index]


class EqualCountDataset(EventDataset):
    """Readers whose frames hold equal event counts on the ``sensor``, then resized to
    ``size x size`` (DVS128 Gesture and CIFAR10-DVS as the OPZO paper preprocesses them,
    appendix C.3.1): the events of a recording are split into ``n_frames`` slices of equal
    counts (:func:`~opzo.data.events.bin_by_count`), resized with
    :func:`~opzo.data.events.resize_frames` (``resize_mode``: ``"area"`` or ``"bilinear"``).
    """

    sensor: ClassVar[tuple[int, int, int]]

    def __init__(
        self, split: str, n_frames: int, size: int, resize_mode: str, *, layout: str, where: str
    ) -> None:
        super().__init__(split, layout=layout, where=where)
        self.n_frames, self.size, self.resize_mode = int(n_frames), int(size), resize_mode

    def bin(self, events: np.ndarray) -> np.ndarray:
        return bin_by_count(events, self.sensor, self.n_frames)

    def resize(self, frames: np.ndarray) -> np.ndarray:
        resized = resize_frames(frames, self.size, self.resize_mode)
        assert isinstance(resized, np.ndarray)
        return resized


# ----------------------------------------------------------------------------------- N-MNIST

_NMNIST_URL = "https://www.garrickorchard.com/datasets/n-mnist"
_NMNIST_FORMAT = (
    "an N-MNIST .bin file: 5 bytes per event (x, y, polarity bit 7 of byte 2 and a 23-bit "
    "microsecond timestamp in the rest of bytes 2-4)"
)


def read_nmnist_bin(path: PathLike) -> np.ndarray:
    """Read one N-MNIST ``.bin`` recording.

    Each event takes 5 bytes ``b0..b4``: ``x = b0``, ``y = b1``, polarity = bit 7 of ``b2``, and
    timestamp (microseconds) ``= ((b2 & 0x7F) << 16) | (b3 << 8) | b4``.

    Returns:
        :data:`~opzo.data.events.EVENT_DTYPE` array in file order (time order).

    Raises:
        DatasetError: missing file, or a length that is not a multiple of 5 (truncated file).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"N-MNIST file not found: {path.absolute()}. {_NEVER} Get N-MNIST from {_NMNIST_URL}"
        )
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % 5:
        raise DatasetError(
            f"{path}: length {raw.size} bytes is not a multiple of 5; expected {_NMNIST_FORMAT}. "
            f"The file is truncated or corrupt ({raw.size % 5} trailing bytes); obtain it again "
            f"from {_NMNIST_URL}"
        )
    b = raw.reshape(-1, 5).astype(np.int64)
    events = np.empty(b.shape[0], dtype=EVENT_DTYPE)
    events["x"] = b[:, 0]
    events["y"] = b[:, 1]
    events["p"] = b[:, 2] >> 7
    events["t"] = ((b[:, 2] & 0x7F) << 16) | (b[:, 3] << 8) | b[:, 4]
    return events


class NMNISTFolder(EventDataset):
    """N-MNIST from a folder of ``.bin`` files, as 3 ms event-count frames (the OPZO paper's
    preprocessing, appendix C.3.1: 30 frames of 3 ms).

    Accepted layouts (``<split>`` is ``Train`` or ``Test``, ``<digit>`` is ``0`` .. ``9``):
    tonic's ``root/NMNIST/<split>/<digit>/*.bin`` or the official archive's
    ``root/<split>/<digit>/*.bin``.

    Each item is ``(frames, label)``: frames ``(n_frames, 2, 34, 34)`` float32 counts in bins of
    ``bin_us`` microseconds starting at time 0 (default: the paper's 30 bins of 3 ms; later
    events are dropped), and the digit as an int.

    Attributes:
        folder: the split's folder found.
        files: the sample files, by digit then file name.
        targets: the label of each file.
    """

    pretty = "N-MNIST"
    n_classes = 10

    def __init__(
        self, root: PathLike, split: str = "train", bin_us: int = 3000, n_frames: int = 30
    ) -> None:
        folder_name = split.capitalize()
        super().__init__(
            split,
            layout=(
                f"ROOT/NMNIST/{folder_name}/<digit 0-9>/*.bin (tonic) or "
                f"ROOT/{folder_name}/<digit 0-9>/*.bin (the official archive, unzipped)"
            ),
            where=f"{_NEVER} Download N-MNIST from {_NMNIST_URL} and unzip {folder_name}.zip.",
        )
        self.bin_us, self.n_frames = int(bin_us), int(n_frames)
        root = Path(root).expanduser()
        self.folder = self._find(
            [root / "NMNIST" / folder_name, root / folder_name], f"N-MNIST {split} folder"
        )
        for digit in range(self.n_classes):
            sub = self.folder / str(digit)
            if sub.is_dir():
                self._add(sorted(sub.glob("*.bin")), digit)
        self._require_samples("N-MNIST .bin files", self.folder, "<digit 0-9>/")

    def read(self, path: Path) -> np.ndarray:
        return read_nmnist_bin(path)

    def bin(self, events: np.ndarray) -> np.ndarray:
        return bin_by_time(events, NMNIST_SENSOR, self.bin_us, self.n_frames)


# ----------------------------------------------------------------------------- DVS Gesture

_GESTURE_URL = "https://research.ibm.com/interactive/dvsgesture/"
_GESTURE_FORMAT = (
    "tonic's DVSGesture .npy: a 2-D array with columns (x, y, p, t), t in milliseconds, or a "
    "structured array with fields x, y, p, t (t in microseconds)"
)


def _load_npy(path: Path, expected: str) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"file not found: {path.absolute()}; expected {expected}")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DatasetError(
            f"{path}: cannot read the file ({exc}); expected {expected}. The file is probably "
            f"truncated or corrupt."
        ) from exc


def read_gesture_npy(path: PathLike) -> np.ndarray:
    """Read one DVS128 Gesture sample saved by tonic as ``.npy``.

    A 2-D array (tonic's files) has columns ``(x, y, p, t)`` with ``t`` in milliseconds (tonic
    multiplies it by 1000 when loading); it is converted to microseconds and rounded. A
    structured array with fields ``x, y, p, t`` is taken to hold microseconds already.

    Returns:
        :data:`~opzo.data.events.EVENT_DTYPE` array in file order.

    Raises:
        DatasetError: missing, unreadable or wrongly shaped file.
    """
    path = Path(path)
    array = _load_npy(path, _GESTURE_FORMAT)
    names = array.dtype.names or ()
    if names:
        missing = [f for f in "xypt" if f not in names]
        if missing or array.ndim != 1:
            raise DatasetError(
                f"{path}: structured array with fields {', '.join(names)} and shape "
                f"{array.shape}; expected {_GESTURE_FORMAT}"
            )
        return _as_events(path, array["t"], array["x"], array["y"], array["p"], _GESTURE_FORMAT)
    if array.ndim != 2 or array.shape[1] != 4 or array.dtype.kind not in "iuf":
        raise DatasetError(
            f"{path}: found a {array.dtype} array of shape {array.shape}; expected "
            f"{_GESTURE_FORMAT}"
        )
    t_us = array[:, 3].astype(np.float64) * 1000.0
    return _as_events(path, t_us, array[:, 0], array[:, 1], array[:, 2], _GESTURE_FORMAT)


class DVSGesture(EqualCountDataset):
    """DVS128 Gesture in tonic's layout, as frames of equal event counts resized to 48x48 (the
    OPZO paper's preprocessing, appendix C.3.1: 20 frames, 48x48).

    Layout: ``root/DVSGesture/ibmGestureTrain/<user_session>/<label>.npy`` (and
    ``ibmGestureTest``), or the same without the ``DVSGesture`` level; the label is the file
    stem, an integer in ``0 .. 10``. Each item is ``(frames, label)`` with frames
    ``(n_frames, 2, size, size)``: the events are split into ``n_frames`` slices of equal
    counts (:func:`~opzo.data.events.bin_by_count`) on the 128x128 sensor, then resized with
    :func:`~opzo.data.events.resize_frames` (``resize_mode``: ``"area"`` or ``"bilinear"``).

    Attributes:
        folder: the split's folder found.
        files: sample files, by session folder then label.
        targets: the label of each file.
    """

    pretty = "DVS Gesture"
    n_classes = DVSGESTURE_CLASSES
    sensor = DVSGESTURE_SENSOR

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        n_frames: int = 20,
        size: int = 48,
        resize_mode: str = "area",
    ) -> None:
        folder_name = "ibmGestureTrain" if split == "train" else "ibmGestureTest"
        super().__init__(
            split, n_frames, size, resize_mode,
            layout=(
                f"ROOT/DVSGesture/{folder_name}/<user_session>/<label 0-10>.npy (tonic's "
                f"layout) or ROOT/{folder_name}/<user_session>/<label>.npy, each .npy being "
                f"{_GESTURE_FORMAT}"
            ),
            where=(
                f"{_NEVER} Get DVS128 Gesture from {_GESTURE_URL} and convert it with tonic "
                f"(tonic.datasets.DVSGesture writes this layout)."
            ),
        )
        root = Path(root).expanduser()
        self.folder = self._find(
            [root / "DVSGesture" / folder_name, root / folder_name], f"DVS Gesture {split} folder"
        )
        for session in sorted(p for p in self.folder.iterdir() if p.is_dir()):
            for file in sorted(session.glob("*.npy"), key=_stem_key):
                if not file.stem.isdigit() or int(file.stem) >= self.n_classes:
                    raise DatasetError(
                        f"{file}: the file name must be the label, an integer in "
                        f"0..{self.n_classes - 1}; expected {self.layout}"
                    )
                self._add([file], int(file.stem))
        self._require_samples(".npy samples", self.folder, "<user_session>/")

    def read(self, path: Path) -> np.ndarray:
        return read_gesture_npy(path)


# ----------------------------------------------------------------------------- CIFAR10-DVS

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
    ``(frames - mean) / std`` (global scalars, see :func:`compute_mean_std`). Cropping comes
    before normalisation, so padded pixels hold zero events.
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


def compute_mean_std(dataset: Any) -> tuple[float, float]:
    """Global mean and (population) std of all frame values of a dataset.

    Uses ``dataset.raw_frames(i)`` when the dataset has it (no augmentation, no normalisation,
    e.g. :class:`CIFAR10DVS`), else ``dataset[i][0]``. Accumulates in float64.

    Returns:
        ``(mean, std)`` as Python floats, to pass to :class:`CIFAR10DVS` as ``mean``, ``std``.

    Raises:
        ValueError: the dataset is empty.
    """
    n = len(dataset)
    if n == 0:
        raise ValueError("cannot compute mean and std of an empty dataset")
    getter = getattr(dataset, "raw_frames", None)
    total, total_sq, count = 0.0, 0.0, 0
    for i in range(n):
        frames = getter(i) if getter is not None else dataset[i][0]
        values = torch.as_tensor(frames).to(torch.float64)
        total += float(values.sum())
        total_sq += float((values * values).sum())
        count += values.numel()
    mean = total / count
    var = max(total_sq / count - mean * mean, 0.0)
    return mean, var**0.5


def _cache_dir() -> Path:
    """``$OPZO_CACHE_DIR``, else ``$XDG_CACHE_HOME/opzo``, else ``~/.cache/opzo``."""
    if os.environ.get("OPZO_CACHE_DIR"):
        return Path(os.environ["OPZO_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "opzo"


def cached_mean_std(dataset: Any) -> tuple[float, float]:
    """:func:`compute_mean_std` of a file-backed dataset, remembered in a small JSON file.

    The statistics of the full CIFAR10-DVS training split take minutes to compute (every
    sample is read and binned), and every run (and ``opzo eval``) needs them. The key hashes
    the dataset's class, its preprocessing (``n_frames``, ``size``, ``resize_mode``) and the
    name, size and modification time of each of its ``files``, so changed or added files are
    noticed. The file lives in :func:`_cache_dir` (``$OPZO_CACHE_DIR`` overrides it); when it
    cannot be written the statistics are simply computed again next time.

    Returns:
        ``(mean, std)`` as :func:`compute_mean_std` returns them.
    """
    key = hashlib.sha256()
    params = {k: getattr(dataset, k, None) for k in ("n_frames", "size", "resize_mode")}
    key.update(json.dumps([type(dataset).__name__, params]).encode())
    for file in dataset.files:
        stat = Path(file).stat()
        key.update(f"{Path(file).absolute()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    path = _cache_dir() / f"mean-std-{type(dataset).__name__.lower()}-{key.hexdigest()[:20]}.json"
    try:
        cached = json.loads(path.read_text())
        return float(cached["mean"]), float(cached["std"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    mean, std = compute_mean_std(dataset)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"mean": mean, "std": std, "samples": len(dataset),
                                   "params": params}) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass
    return mean, std


# ------------------------------------------------------------------------------- SHD / SSC

_SHD_URL = "https://zenkelab.org/resources/spiking-heidelberg-datasets-shd/"
_H5_LAYOUT = (
    "an HDF5 file with datasets spikes/times (ragged, seconds), spikes/units (ragged, 0..699) "
    "and labels"
)


def _import_h5py() -> Any:
    """Import h5py, or raise a DatasetError telling how to install it."""
    try:
        import h5py
    except ImportError as exc:
        raise DatasetError(
            "reading SHD/SSC needs the optional package h5py, which is not installed: run "
            "`pip install h5py`"
        ) from exc
    return h5py


class SpikingHeidelbergDigits(EventDataset):
    """Spiking Heidelberg Digits (SHD) from its HDF5 file, as ``(n_bins, 700)`` spike counts
    (the OTPE paper's preprocessing, appendix A.1: the spikes binned in time steps).

    The file (``shd_train.h5`` / ``shd_test.h5``, decompressed) holds ``spikes/times``
    (per-sample arrays of spike times in seconds), ``spikes/units`` (the matching input units,
    0..699) and ``labels``. Each item is ``(counts, label)``: the window ``[0, duration_s)`` is
    cut into ``n_bins`` equal bins (:func:`~opzo.data.events.bin_units_by_time`; later spikes
    are dropped). h5py is imported only here; the file is opened on first access (and again in
    each DataLoader worker, since the open handle is not pickled). All samples live in the one
    file ``path``, so ``files`` is empty.

    Args:
        path: the ``.h5`` file, or a folder holding ``shd_<split>.h5``.
        n_bins: number of time bins.
        duration_s: window length in seconds.
        split: used only when ``path`` is a folder.
    """

    n_classes = 20
    #: file names are ``<prefix>_<split>.h5``
    prefix: ClassVar[str] = "shd"
    pretty = "SHD"
    splits: ClassVar[tuple[str, ...]] = ("train", "test")

    def __init__(
        self, path: PathLike, n_bins: int = 50, duration_s: float = 1.0, split: str = "train"
    ) -> None:
        self.n_bins, self.duration_s = int(n_bins), float(duration_s)
        if self.n_bins <= 0 or not self.duration_s > 0:
            raise ValueError(f"n_bins and duration_s must be positive, got {n_bins}, {duration_s}")
        name = f"{self.prefix}_{split}.h5"
        super().__init__(
            split,
            layout=_H5_LAYOUT,
            where=f"{_NEVER} Download {name}.gz from {_SHD_URL} and decompress it "
                  f"(gunzip {name}.gz).",
        )
        path = Path(path).expanduser()
        if path.is_dir():
            path = path / name
        if not path.is_file():
            gz = path.with_name(path.name + ".gz")
            hint = f" Found {gz}: decompress it first (gunzip)." if gz.is_file() else ""
            raise DatasetError(
                f"{self.pretty} file not found: {path.absolute()}. Expected {self.layout} "
                f"(e.g. {name}).{hint} {self.where}"
            )
        self.path = path
        h5py = _import_h5py()
        try:
            with h5py.File(path, "r") as f:
                missing = [k for k in ("spikes/times", "spikes/units", "labels") if k not in f]
                if missing:
                    raise DatasetError(
                        f"{path}: missing {', '.join(missing)}; expected {self.layout}. "
                        f"{self.where}"
                    )
                labels = np.asarray(f["labels"][()]).reshape(-1)
                n_times, n_units = len(f["spikes/times"]), len(f["spikes/units"])
        except DatasetError:
            raise
        except OSError as exc:
            gz = " It looks gzip-compressed: run gunzip on it." if path.suffix == ".gz" else ""
            raise DatasetError(
                f"{path}: not a readable HDF5 file ({exc}); expected {self.layout}. The file "
                f"may be truncated or corrupt.{gz} {self.where}"
            ) from exc
        if not (n_times == n_units == labels.size):
            raise DatasetError(
                f"{path}: {n_times} spike-time arrays, {n_units} unit arrays and {labels.size} "
                f"labels; expected equal counts ({self.layout})"
            )
        if labels.size and (labels.min() < 0 or labels.max() >= self.n_classes):
            raise DatasetError(
                f"{path}: labels range from {labels.min()} to {labels.max()}, expected "
                f"0..{self.n_classes - 1} for {self.pretty}"
            )
        self.targets = [int(v) for v in labels]
        self._file: Any = None

    def _h5(self) -> Any:
        if self._file is None:
            self._file = _import_h5py().File(self.path, "r")
        return self._file

    def spikes(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Spike times (seconds, float64) and units (int64) of sample ``index``."""
        f = self._h5()
        times = np.asarray(f["spikes/times"][index], dtype=np.float64)
        units = np.asarray(f["spikes/units"][index]).astype(np.int64)
        return times, units

    def events(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The spikes of sample ``index``: :meth:`spikes`."""
        return self.spikes(index)

    def bin(self, events: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        times, units = events
        return bin_units_by_time(times, units, SHD_UNITS, self.n_bins, self.duration_s)

    def sample_name(self, index: int) -> str:
        return f"{self.path}: sample {index}"

    def close(self) -> None:
        """Close the HDF5 file (it is reopened on the next access)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> SpikingHeidelbergDigits:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None
        return state


class SpikingSpeechCommands(SpikingHeidelbergDigits):
    """Spiking Speech Commands (SSC): same format as SHD with 35 classes.

    Files ``ssc_train.h5``, ``ssc_valid.h5``, ``ssc_test.h5`` (decompressed), from the same page
    as SHD. See :class:`SpikingHeidelbergDigits`.
    """

    n_classes = 35
    prefix = "ssc"
    pretty = "SSC"
    splits = ("train", "valid", "test")


# ------------------------------------------------------------------------- training sources

#: N-MNIST frame length in microseconds (OPZO paper appendix C.3.1: frames of 3 ms)
NMNIST_BIN_US = 3000
#: frame size of DVS128 Gesture and CIFAR10-DVS (OPZO paper appendix C.3.1: 48x48)
EVENT_FRAME_SIZE = 48
#: CIFAR10-DVS samples per class in the training split (the common 9000/1000 split); tests
#: lower it to split a handful of files (:func:`cifar10dvs_source` reads it at each call)
CIFAR10DVS_TRAIN_PER_CLASS = 900
#: SHD / SSC: the T time bins cover the first second of each recording (later spikes dropped)
HEIDELBERG_DURATION_S = 1.0


def _data_root(cfg: TrainConfig, pretty: str) -> str:
    if cfg.data_root is None:
        raise DatasetError(f"{pretty} needs data_root, the folder holding its files. {_NEVER}")
    return cfg.data_root


def nmnist_source(cfg: TrainConfig, split: str) -> FrameSource:
    """N-MNIST as the OPZO paper preprocesses it (appendix C.3.1): frames of 3 ms, the first
    ``cfg.T`` of them (paper: 30), 2x34x34, read from ``cfg.data_root``."""
    data = NMNISTFolder(_data_root(cfg, NMNISTFolder.pretty), split, bin_us=NMNIST_BIN_US,
                        n_frames=cfg.T)
    return FrameSource(data, classes=data.n_classes)


def dvs_gesture_source(cfg: TrainConfig, split: str) -> FrameSource:
    """DVS128 Gesture as the OPZO paper preprocesses it (appendix C.3.1): each recording
    integrated into ``cfg.T`` frames of equal event counts (paper: 20), 48x48."""
    data = DVSGesture(_data_root(cfg, DVSGesture.pretty), split, n_frames=cfg.T,
                      size=EVENT_FRAME_SIZE)
    return FrameSource(data, classes=data.n_classes)


def cifar10dvs_source(cfg: TrainConfig, split: str) -> FrameSource:
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


def _heidelberg_source(cls: type[SpikingHeidelbergDigits], cfg: TrainConfig,
                       split: str) -> FrameSource:
    """SHD / SSC as the OTPE paper preprocesses them (appendix A.1): the 700 input units'
    spike counts in ``cfg.T`` time bins (paper: 50) over the first second."""
    root = _data_root(cfg, cls.pretty)
    if Path(root).expanduser().is_file():
        raise DatasetError(
            f"{cls.pretty} data_root must be the folder holding {cls.prefix}_train.h5 and "
            f"{cls.prefix}_test.h5, not the file {root}")
    data = cls(root, n_bins=cfg.T, duration_s=HEIDELBERG_DURATION_S, split=split)
    return FrameSource(data, classes=cls.n_classes)


def shd_source(cfg: TrainConfig, split: str) -> FrameSource:
    """SHD (``shd_<split>.h5`` in ``cfg.data_root``) as the OTPE paper preprocesses it
    (appendix A.1): spike counts of the 700 units in ``cfg.T`` bins over the first second."""
    return _heidelberg_source(SpikingHeidelbergDigits, cfg, split)


def ssc_source(cfg: TrainConfig, split: str) -> FrameSource:
    """SSC (``ssc_<split>.h5`` in ``cfg.data_root``), preprocessed as :func:`shd_source`."""
    return _heidelberg_source(SpikingSpeechCommands, cfg, split)
