"""DVS128 Gesture (Amir et al. 2017) in tonic's ``.npy`` layout: :func:`read_gesture_npy` reads
one sample, :class:`DVSGesture` gives ``(20, 2, 48, 48)`` frames (equal event counts, resized
from 128x128), and :func:`dvs_gesture_source` is the training source of ``opzo train`` (the OPZO
paper's preprocessing, appendix C.3.1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...registry import Options
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
)

__all__ = [
    "DVSGESTURE_CLASSES",
    "DVSGESTURE_SENSOR",
    "DVSGesture",
    "dvs_gesture_source",
    "read_gesture_npy",
]

#: DVS128 Gesture sensor size.
DVSGESTURE_SENSOR: tuple[int, int, int] = (128, 128, 2)
#: Number of DVS128 Gesture classes (the 10 gestures plus "other").
DVSGESTURE_CLASSES = 11

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



# -------------------------------------------------------------------------- training source


def dvs_gesture_source(cfg: Options, split: str) -> FrameSource:
    """DVS128 Gesture as the OPZO paper preprocesses it (appendix C.3.1): each recording
    integrated into ``cfg.T`` frames of equal event counts (paper: 20), 48x48."""
    data = DVSGesture(_data_root(cfg, DVSGesture.pretty), split, n_frames=cfg.T,
                      size=EVENT_FRAME_SIZE)
    return FrameSource(data, classes=data.n_classes)
