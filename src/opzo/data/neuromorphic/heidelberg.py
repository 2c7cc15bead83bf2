"""SHD / SSC (Cramer et al. 2020) HDF5 files: :class:`SpikingHeidelbergDigits` and
:class:`SpikingSpeechCommands` give ``(n_bins, 700)`` spike counts (h5py imported lazily), and
:func:`shd_source` / :func:`ssc_source` are the training sources of ``opzo train`` (the OTPE
paper's preprocessing, appendix A.1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ...registry import Options
from ..errors import DatasetError
from ..events import bin_units_by_time
from ..sources import FrameSource
from .base import _NEVER, EventDataset, PathLike, _data_root

__all__ = [
    "HEIDELBERG_DURATION_S",
    "SHD_UNITS",
    "SpikingHeidelbergDigits",
    "SpikingSpeechCommands",
    "shd_source",
    "ssc_source",
]

#: Number of input units (cochlea channels) of SHD and SSC.
SHD_UNITS = 700
#: SHD / SSC: the T time bins cover the first second of each recording (later spikes dropped)
HEIDELBERG_DURATION_S = 1.0

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


def _heidelberg_source(cls: type[SpikingHeidelbergDigits], cfg: Options,
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


def shd_source(cfg: Options, split: str) -> FrameSource:
    """SHD (``shd_<split>.h5`` in ``cfg.data_root``) as the OTPE paper preprocesses it
    (appendix A.1): spike counts of the 700 units in ``cfg.T`` bins over the first second."""
    return _heidelberg_source(SpikingHeidelbergDigits, cfg, split)


def ssc_source(cfg: Options, split: str) -> FrameSource:
    """SSC (``ssc_<split>.h5`` in ``cfg.data_root``), preprocessed as :func:`shd_source`."""
    return _heidelberg_source(SpikingSpeechCommands, cfg, split)
