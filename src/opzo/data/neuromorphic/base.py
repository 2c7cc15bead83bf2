"""What the neuromorphic readers share: the :class:`EventDataset` base class with its
:class:`FrameCache`, :class:`EqualCountDataset` (frames of equal event counts, resized), the
frame statistics :func:`compute_mean_std` and :func:`cached_mean_std`, the constants several
readers use and the private helpers of the reader modules (split check, file sort key, event
column validation, the ``data_root`` check of the training sources).

Every dataset returns ``(frames, label)`` with ``frames`` a float32 :class:`torch.Tensor` and
``label`` an ``int``. Missing or invalid files raise :class:`~opzo.data.errors.DatasetError`
naming the path, the expected layout and where to obtain the data.
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ...registry import Options
from ..errors import DatasetError
from ..events import EVENT_DTYPE, bin_by_count, resize_frames

__all__ = [
    "EVENT_FRAME_SIZE",
    "EqualCountDataset",
    "EventDataset",
    "FrameCache",
    "cached_mean_std",
    "compute_mean_std",
]

#: frame size of DVS128 Gesture and CIFAR10-DVS (OPZO paper appendix C.3.1: 48x48)
EVENT_FRAME_SIZE = 48

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


def compute_mean_std(dataset: Any) -> tuple[float, float]:
    """Global mean and (population) std of all frame values of a dataset.

    Uses ``dataset.raw_frames(i)`` when the dataset has it (no augmentation, no normalisation,
    e.g. :class:`~opzo.data.neuromorphic.CIFAR10DVS`), else ``dataset[i][0]``. Accumulates in
    float64.

    Returns:
        ``(mean, std)`` as Python floats, to pass to
        :class:`~opzo.data.neuromorphic.CIFAR10DVS` as ``mean``, ``std``.

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


def _data_root(cfg: Options, pretty: str) -> str:
    if cfg.data_root is None:
        raise DatasetError(f"{pretty} needs data_root, the folder holding its files. {_NEVER}")
    return cfg.data_root
