"""N-Caltech-101 (Orchard et al. 2015): one ATIS ``.bin`` file per sample in tonic's layout,
read by :func:`read_ncaltech_bin`; :class:`NCaltech101` gives frames of equal event counts
resized to 48x48, as the LocalZO paper prepares its event datasets (section 5.1: T = 10
frames, 2x48x48); :func:`ncaltech101_source` is the training source of ``opzo train``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...registry import Options
from ..errors import DatasetError
from ..events import EVENT_DTYPE
from ..sources import FrameSource
from .base import _NEVER, EVENT_FRAME_SIZE, EqualCountDataset, PathLike, _data_root

__all__ = ["NCALTECH101_SENSOR", "NCaltech101", "ncaltech101_source", "read_ncaltech_bin"]

#: the frame the recordings fit in, ``(W, H, 2)`` (the saccade recordings of the Caltech-101
#: images span x < 240, y < 180 on the ATIS sensor)
NCALTECH101_SENSOR: tuple[int, int, int] = (240, 180, 2)
#: every 5th file of a class (sorted by name) is a test sample: an 80/20 split per class (ours:
#: the dataset has no official split)
NCALTECH101_TEST_EVERY = 5

_URL = "https://www.garrickorchard.com/datasets/n-caltech101"
_FORMAT = (
    "an N-Caltech-101 .bin file: 40 bits per event like N-MNIST (x, y, polarity bit 7 of byte 2, "
    "a 23-bit microsecond timestamp), y = 240 marking a timestamp overflow of 2^13 us"
)
#: an event with this y is no event but says the 23-bit timestamps wrapped (+ 2^13 us after)
_OVERFLOW_Y = 240
_OVERFLOW_US = 1 << 13


def read_ncaltech_bin(path: PathLike) -> np.ndarray:
    """Read one N-Caltech-101 ``.bin`` recording (the ATIS 40-bit format of N-MNIST).

    Each event is 5 bytes ``b0..b4``: ``x = b0``, ``y = b1``, polarity = bit 7 of ``b2``,
    timestamp ``((b2 & 0x7F) << 16) | (b3 << 8) | b4`` microseconds. An entry with
    ``y = 240`` is a timestamp-overflow marker, not an event: every later timestamp gets
    ``2^13`` microseconds added (the dataset's own reader does this), and the marker is
    dropped.

    Returns:
        :data:`~opzo.data.events.EVENT_DTYPE` array in file (time) order.

    Raises:
        DatasetError: missing file, or a length that is not a multiple of 5.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"N-Caltech-101 file not found: {path.absolute()}. {_NEVER} Get "
                           f"N-Caltech-101 from {_URL}")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % 5:
        raise DatasetError(f"{path}: length {raw.size} bytes is not a multiple of 5; expected "
                           f"{_FORMAT}. The file is truncated or corrupt")
    b = raw.reshape(-1, 5).astype(np.int64)
    t = ((b[:, 2] & 0x7F) << 16) | (b[:, 3] << 8) | b[:, 4]
    overflow = b[:, 1] == _OVERFLOW_Y
    t = t + _OVERFLOW_US * np.cumsum(overflow)
    keep = ~overflow
    events = np.empty(int(keep.sum()), dtype=EVENT_DTYPE)
    events["x"] = b[keep, 0]
    events["y"] = b[keep, 1]
    events["p"] = b[keep, 2] >> 7
    events["t"] = t[keep]
    return events


class NCaltech101(EqualCountDataset):
    """N-Caltech-101 in tonic's layout, as frames of equal event counts resized to 48x48.

    Layout: ``root/NCALTECH101/Caltech101/<class>/*.bin`` (tonic), ``root/Caltech101/<class>/``
    or ``root/<class>/`` (the archive unzipped); the classes are the class folders in sorted
    order (101 in the dataset: 100 objects and ``BACKGROUND_Google``). No official split
    exists: every :data:`NCALTECH101_TEST_EVERY`-th file of a class (sorted by name) is a
    test sample, the others train (80/20 per class; ours). Each item is ``(frames, label)``
    with frames ``(n_frames, 2, size, size)``.
    """

    pretty = "N-Caltech-101"
    n_classes = 101
    sensor = NCALTECH101_SENSOR

    def __init__(self, root: PathLike, split: str = "train", n_frames: int = 10,
                 size: int = EVENT_FRAME_SIZE, resize_mode: str = "area") -> None:
        super().__init__(
            split, n_frames, size, resize_mode,
            layout=("ROOT/NCALTECH101/Caltech101/<class>/*.bin (tonic's layout), "
                    f"ROOT/Caltech101/<class>/*.bin or ROOT/<class>/*.bin, each {_FORMAT}"),
            where=f"{_NEVER} Get N-Caltech-101 from {_URL} and unzip Caltech101.zip.")
        root = Path(root).expanduser()
        candidates = [root / "NCALTECH101" / "Caltech101", root / "Caltech101"]
        found = next((c for c in candidates if c.is_dir()), None)
        if found is None and root.is_dir() and any(root.glob("*/*.bin")):
            found = root  # the class folders themselves
        if found is None:
            raise self._not_found("N-Caltech-101 folder", [*candidates, root])
        self.folder = found
        classes = sorted(p for p in self.folder.iterdir() if p.is_dir())
        self.classes = [p.name for p in classes]
        self.n_classes = len(classes)  # type: ignore[misc]
        test = split == "test"
        for label, folder in enumerate(classes):
            files = sorted(folder.glob("*.bin"))
            self._add([f for i, f in enumerate(files)
                       if (i % NCALTECH101_TEST_EVERY == NCALTECH101_TEST_EVERY - 1) == test],
                      label)
        self._require_samples(".bin samples", self.folder, "<class>/")

    def read(self, path: Path) -> np.ndarray:
        return read_ncaltech_bin(path)


def ncaltech101_source(cfg: Options, split: str) -> FrameSource:
    """N-Caltech-101 as the LocalZO paper prepares it (section 5.1): ``cfg.T`` frames of
    equal event counts (paper: 10), 2x48x48."""
    data = NCaltech101(_data_root(cfg, NCaltech101.pretty), split, n_frames=cfg.T)
    return FrameSource(data, classes=data.n_classes)
