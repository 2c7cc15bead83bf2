"""N-MNIST (Orchard et al. 2015): one ``.bin`` file per sample, read by :func:`read_nmnist_bin`;
:class:`NMNISTFolder` gives ``(30, 2, 34, 34)`` frames of 3 ms, and :func:`nmnist_source` is the
training source of ``opzo train`` (the OPZO paper's preprocessing, appendix C.3.1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...registry import Options
from ..errors import DatasetError
from ..events import EVENT_DTYPE, bin_by_time
from ..sources import FrameSource
from .base import _NEVER, EventDataset, PathLike, _data_root

__all__ = ["NMNIST_BIN_US", "NMNIST_SENSOR", "NMNISTFolder", "nmnist_source", "read_nmnist_bin"]

#: N-MNIST sensor size ``(W, H, 2)``.
NMNIST_SENSOR: tuple[int, int, int] = (34, 34, 2)
#: N-MNIST frame length in microseconds (OPZO paper appendix C.3.1: frames of 3 ms)
NMNIST_BIN_US = 3000

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



# -------------------------------------------------------------------------- training source


def nmnist_source(cfg: Options, split: str) -> FrameSource:
    """N-MNIST as the OPZO paper preprocesses it (appendix C.3.1): frames of 3 ms, the first
    ``cfg.T`` of them (paper: 30), 2x34x34, read from ``cfg.data_root``."""
    data = NMNISTFolder(_data_root(cfg, NMNISTFolder.pretty), split, bin_us=NMNIST_BIN_US,
                        n_frames=cfg.T)
    return FrameSource(data, classes=data.n_classes)
