"""N-CARS (Sironi et al. 2018): one Prophesee ``.dat`` file per sample in tonic's layout, read
by :func:`read_prophesee_dat`; :class:`NCars` gives frames of equal event counts resized to
48x48 (the LocalZO paper's preparation of its event datasets, section 5.1: T = 10 frames,
2x48x48); :func:`ncars_source` is the training source of ``opzo train``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...registry import Options
from ..errors import DatasetError
from ..events import EVENT_DTYPE
from ..sources import FrameSource
from .base import _NEVER, EVENT_FRAME_SIZE, EqualCountDataset, PathLike, _data_root

__all__ = ["NCARS_CLASSES", "NCARS_SENSOR", "NCars", "ncars_source", "read_prophesee_dat"]

#: the samples are 120x100 crops of the ATIS sensor, ``(W, H, 2)``
NCARS_SENSOR: tuple[int, int, int] = (120, 100, 2)
#: class folders and labels, as tonic numbers them
NCARS_CLASSES = ("background", "cars")

_URL = "https://www.prophesee.ai/2018/03/13/dataset-n-cars/"
_FORMAT = (
    "a Prophesee .dat file: ASCII header lines starting with '%' (e.g. '% Version 2'), then one "
    "byte event type and one byte event size (8), then 8-byte little-endian records: a 32-bit "
    "microsecond timestamp and a 32-bit word holding x, y and the polarity"
)


def read_prophesee_dat(path: PathLike) -> np.ndarray:
    """Read one Prophesee ``.dat`` CD recording (the DAT format of Prophesee's documentation).

    The header is the leading lines that start with ``%``; ``% Version N`` sets the packing of
    the 32-bit address word: version 2 (and later) ``x`` = bits 0-13, ``y`` = bits 14-27,
    polarity = bit 28; before version 2 (the ATIS files, no version line = 0) ``x`` = bits 0-8,
    ``y`` = bits 9-16, polarity = bit 17. Then the event type byte and the event size byte
    (must be 8), then the records.

    Returns:
        :data:`~opzo.data.events.EVENT_DTYPE` array in file order.

    Raises:
        DatasetError: missing file, an event size other than 8, or a truncated record.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"N-CARS file not found: {path.absolute()}. {_NEVER} Get N-CARS "
                           f"from {_URL}")
    raw = path.read_bytes()
    pos, version = 0, 0
    while pos < len(raw) and raw[pos:pos + 1] == b"%":
        end = raw.find(b"\n", pos)
        end = len(raw) if end < 0 else end + 1
        words = raw[pos:end].decode("latin-1").strip("% \r\n").split()
        if len(words) >= 2 and words[0].lower() == "version" and words[1].isdigit():
            version = int(words[1])
        pos = end
    if len(raw) - pos < 2:
        raise DatasetError(f"{path}: no event type and size after the header; expected "
                           f"{_FORMAT}")
    size = raw[pos + 1]
    if size != 8:
        raise DatasetError(f"{path}: event size {size} bytes; expected {_FORMAT}")
    body = np.frombuffer(raw, dtype="<u4", offset=pos + 2,
                         count=(len(raw) - pos - 2) // 4)
    if (len(raw) - pos - 2) % 8:
        raise DatasetError(f"{path}: {(len(raw) - pos - 2) % 8} trailing bytes after the last "
                           f"8-byte record; expected {_FORMAT}. The file is truncated or corrupt")
    ts = body[0::2].astype(np.int64)
    addr = body[1::2].astype(np.int64)
    if version >= 2:
        x, y, p = addr & 0x3FFF, (addr >> 14) & 0x3FFF, (addr >> 28) & 0x1
    else:
        x, y, p = addr & 0x1FF, (addr >> 9) & 0xFF, (addr >> 17) & 0x1
    events = np.empty(ts.size, dtype=EVENT_DTYPE)
    events["t"], events["x"], events["y"], events["p"] = ts, x, y, p
    return events


class NCars(EqualCountDataset):
    """N-CARS in tonic's layout, as frames of equal event counts resized to 48x48.

    Layout: ``root/NCARS/n-cars_<split>/<background|cars>/*.dat`` (tonic), or
    ``root/n-cars_<split>/...`` or ``root/<split>/...`` (the archives unzipped), with
    ``<split>`` ``train`` or ``test``; label 0 background, 1 car. Each item is
    ``(frames, label)`` with frames ``(n_frames, 2, size, size)`` binned on the 120x100 crop.
    """

    pretty = "N-CARS"
    n_classes = 2
    sensor = NCARS_SENSOR

    def __init__(self, root: PathLike, split: str = "train", n_frames: int = 10,
                 size: int = EVENT_FRAME_SIZE, resize_mode: str = "area") -> None:
        super().__init__(
            split, n_frames, size, resize_mode,
            layout=(f"ROOT/NCARS/n-cars_{split}/<background|cars>/*.dat (tonic's layout), "
                    f"ROOT/n-cars_{split}/... or ROOT/{split}/..., each {_FORMAT}"),
            where=f"{_NEVER} Get N-CARS from {_URL} and unzip n-cars_{split}.zip.")
        root = Path(root).expanduser()
        self.folder = self._find([root / "NCARS" / f"n-cars_{split}", root / f"n-cars_{split}",
                                  root / split], f"N-CARS {split} folder")
        for label, name in enumerate(NCARS_CLASSES):
            self._add(sorted((self.folder / name).glob("*.dat")), label)
        self._require_samples(".dat samples", self.folder, "<background|cars>/")

    def read(self, path: Path) -> np.ndarray:
        return read_prophesee_dat(path)


def ncars_source(cfg: Options, split: str) -> FrameSource:
    """N-CARS as the LocalZO paper prepares it (section 5.1): ``cfg.T`` frames of equal
    event counts (paper: 10), 2x48x48."""
    data = NCars(_data_root(cfg, NCars.pretty), split, n_frames=cfg.T)
    return FrameSource(data, classes=data.n_classes)
