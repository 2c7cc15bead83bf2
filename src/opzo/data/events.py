"""Event streams as numpy structured arrays, and their conversion to frames.

A vision event stream (N-MNIST, DVS128 Gesture, CIFAR10-DVS) is a 1-D numpy structured array
with the fields of :data:`EVENT_DTYPE`:

* ``t`` (``int64``): timestamp in microseconds,
* ``x``, ``y`` (``int16``): pixel column and row, ``0 <= x < W``, ``0 <= y < H``,
* ``p`` (``int8``): polarity, 0 (OFF) or 1 (ON).

An audio-like stream (SHD / SSC) uses :data:`AUDIO_EVENT_DTYPE`: ``t`` (``int64``
microseconds) and ``unit`` (``int16``, the input channel). Timestamps need not be sorted.

Sensor sizes follow tonic's convention ``(W, H, 2)``; frames are ``(n_bins, 2, H, W)`` float32
event counts, channel 0 holding polarity 0 and channel 1 polarity 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "AUDIO_EVENT_DTYPE",
    "EVENT_DTYPE",
    "RESIZE_MODES",
    "bin_by_count",
    "bin_by_time",
    "bin_units_by_time",
    "make_events",
    "resize_frames",
]

#: dtype of a vision event stream: time (us), column, row, polarity (0/1).
EVENT_DTYPE = np.dtype([("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "i1")])
#: dtype of an audio-like event stream (SHD/SSC): time (us), input unit.
AUDIO_EVENT_DTYPE = np.dtype([("t", "<i8"), ("unit", "<i2")])
#: Interpolation modes accepted by :func:`resize_frames`.
RESIZE_MODES: tuple[str, ...] = ("area", "bilinear")

_FIELDS = ("t", "x", "y", "p")


def make_events(
    t: Sequence[int] | np.ndarray,
    x: Sequence[int] | np.ndarray,
    y: Sequence[int] | np.ndarray,
    p: Sequence[int] | np.ndarray,
) -> np.ndarray:
    """Build an :data:`EVENT_DTYPE` structured array from four equally long sequences.

    Raises:
        ValueError: the sequences differ in length or are not 1-D.
    """
    columns = [np.asarray(c) for c in (t, x, y, p)]
    lengths = {c.shape for c in columns}
    if len(lengths) != 1 or columns[0].ndim != 1:
        shapes = ", ".join(f"{n}={c.shape}" for n, c in zip(_FIELDS, columns))
        raise ValueError(f"make_events needs four 1-D sequences of equal length, got {shapes}")
    events = np.empty(columns[0].shape[0], dtype=EVENT_DTYPE)
    for name, column in zip(_FIELDS, columns):
        events[name] = column
    return events


def _check_sensor(sensor_size: Sequence[int]) -> tuple[int, int]:
    """Validate a ``(W, H, 2)`` sensor size and return ``(W, H)``."""
    if len(sensor_size) != 3 or int(sensor_size[2]) != 2:
        raise ValueError(
            f"sensor_size must be (W, H, 2) (width, height, two polarities), got {sensor_size!r}"
        )
    width, height = int(sensor_size[0]), int(sensor_size[1])
    if width <= 0 or height <= 0:
        raise ValueError(f"sensor width and height must be positive, got {sensor_size!r}")
    return width, height


def _check_positive(name: str, value: int | float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")


def _columns(
    events: np.ndarray, width: int, height: int, need_t: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return validated int64 ``x, y, p`` columns of a vision event array."""
    names = getattr(events.dtype, "names", None) or ()
    required = ("t", "x", "y", "p") if need_t else ("x", "y", "p")
    missing = [f for f in required if f not in names]
    if events.ndim != 1 or missing:
        raise ValueError(
            f"expected a 1-D structured event array with fields t, x, y, p; got dtype "
            f"{events.dtype} with shape {events.shape}"
            + (f" (missing fields: {', '.join(missing)})" if missing else "")
        )
    x = events["x"].astype(np.int64)
    y = events["y"].astype(np.int64)
    p = events["p"].astype(np.int64)
    if x.size:
        bad_x = (x < 0) | (x >= width)
        bad_y = (y < 0) | (y >= height)
        if bad_x.any() or bad_y.any():
            i = int(np.flatnonzero(bad_x | bad_y)[0])
            raise ValueError(
                f"event {i} at (x={x[i]}, y={y[i]}) lies outside the {width}x{height} sensor "
                f"(expected 0 <= x < {width} and 0 <= y < {height}); "
                f"{int((bad_x | bad_y).sum())} of {x.size} events are out of range"
            )
        bad_p = (p != 0) & (p != 1)
        if bad_p.any():
            i = int(np.flatnonzero(bad_p)[0])
            raise ValueError(
                f"event {i} has polarity {p[i]}; polarities must be 0 or 1 "
                f"({int(bad_p.sum())} of {p.size} events are invalid)"
            )
    return x, y, p


def _accumulate(
    bins: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    p: np.ndarray,
    n_bins: int,
    width: int,
    height: int,
) -> np.ndarray:
    """Count events per (bin, polarity, y, x) into a float32 ``(n_bins, 2, H, W)`` array."""
    flat = ((bins * 2 + p) * height + y) * width + x
    counts = np.bincount(flat, minlength=n_bins * 2 * height * width)
    return counts.astype(np.float32).reshape(n_bins, 2, height, width)


def bin_by_time(
    events: np.ndarray,
    sensor_size: Sequence[int],
    bin_us: int | float,
    n_bins: int,
    t0: int = 0,
) -> np.ndarray:
    """Count events in fixed-duration time bins.

    Event ``i`` goes to bin ``floor((t_i - t0) / bin_us)``; events with a bin outside
    ``0 .. n_bins-1`` (before ``t0`` or after ``t0 + n_bins * bin_us``) are dropped.

    Args:
        events: structured array with fields ``t`` (microseconds), ``x``, ``y``, ``p``.
        sensor_size: ``(W, H, 2)``.
        bin_us: bin duration in microseconds (> 0).
        n_bins: number of bins (> 0).
        t0: start time of bin 0 in microseconds (default 0: time is measured from the
            recording's origin, not from its first event).

    Returns:
        float32 array ``(n_bins, 2, H, W)`` of event counts.

    Raises:
        ValueError: bad sensor size, non-positive ``bin_us``/``n_bins``, events outside the
            sensor or polarities other than 0/1.
    """
    width, height = _check_sensor(sensor_size)
    _check_positive("bin_us", bin_us)
    _check_positive("n_bins", n_bins)
    n_bins = int(n_bins)
    x, y, p = _columns(events, width, height, need_t=True)
    t = events["t"].astype(np.int64) - int(t0)
    if isinstance(bin_us, (int, np.integer)):
        bins = np.floor_divide(t, int(bin_us))
    else:
        bins = np.floor(t / float(bin_us)).astype(np.int64)
    keep = (bins >= 0) & (bins < n_bins)
    return _accumulate(bins[keep], x[keep], y[keep], p[keep], n_bins, width, height)


def bin_by_count(events: np.ndarray, sensor_size: Sequence[int], n_bins: int) -> np.ndarray:
    """Split events into ``n_bins`` slices holding (almost) equal event counts.

    With ``N`` events taken in array order (recordings are stored in time order), slice ``j``
    holds events ``floor(j * N / n_bins) .. floor((j + 1) * N / n_bins) - 1``, so slice sizes
    differ by at most one and every event is used. This is the "number" split of SpikingJelly's
    frame integration (up to how a remainder ``N mod n_bins`` is spread over the slices).

    Args:
        events: structured array with fields ``x``, ``y``, ``p`` (``t`` is not used).
        sensor_size: ``(W, H, 2)``.
        n_bins: number of slices (> 0).

    Returns:
        float32 array ``(n_bins, 2, H, W)`` of event counts.

    Raises:
        ValueError: bad sensor size or ``n_bins``, events outside the sensor, bad polarity.
    """
    width, height = _check_sensor(sensor_size)
    _check_positive("n_bins", n_bins)
    n_bins = int(n_bins)
    x, y, p = _columns(events, width, height)
    n = x.size
    # Event i belongs to slice j iff floor(j*N/n) <= i < floor((j+1)*N/n).
    edges = (np.arange(n_bins + 1, dtype=np.int64) * n) // n_bins
    bins = np.searchsorted(edges, np.arange(n, dtype=np.int64), side="right") - 1
    return _accumulate(bins, x, y, p, n_bins, width, height)


def bin_units_by_time(
    times_s: Sequence[float] | np.ndarray,
    units: Sequence[int] | np.ndarray,
    n_units: int,
    n_bins: int,
    duration_s: float,
) -> np.ndarray:
    """Count audio-like spikes (SHD/SSC) per time bin and input unit.

    The window ``[0, duration_s)`` is cut into ``n_bins`` equal bins; a spike at time ``t``
    goes to bin ``floor(t * n_bins / duration_s)``. Spikes at ``t >= duration_s`` are dropped.

    Args:
        times_s: spike times in seconds (>= 0, any order).
        units: input unit (channel) of each spike, ``0 <= unit < n_units``.
        n_units: number of input units (700 for SHD/SSC).
        n_bins: number of time bins (> 0).
        duration_s: length of the binned window in seconds (> 0).

    Returns:
        float32 array ``(n_bins, n_units)`` of spike counts.

    Raises:
        ValueError: length mismatch, negative or non-finite times, units out of range, bad
            ``n_units``/``n_bins``/``duration_s``.
    """
    _check_positive("n_units", n_units)
    _check_positive("n_bins", n_bins)
    _check_positive("duration_s", duration_s)
    n_units, n_bins = int(n_units), int(n_bins)
    times = np.asarray(times_s, dtype=np.float64).reshape(-1)
    unit = np.asarray(units).reshape(-1)
    if times.shape != unit.shape:
        raise ValueError(
            f"times_s and units must have the same length, got {times.size} times and "
            f"{unit.size} units"
        )
    if unit.size and unit.dtype.kind not in "iub":
        raise ValueError(f"units must be integers, got dtype {unit.dtype}")
    unit = unit.astype(np.int64)
    if times.size:
        if not np.isfinite(times).all() or (times < 0).any():
            i = int(np.flatnonzero(~np.isfinite(times) | (times < 0))[0])
            raise ValueError(f"spike {i} has time {times[i]!r} s; times must be finite and >= 0")
        bad = (unit < 0) | (unit >= n_units)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"spike {i} has unit {unit[i]}; units must lie in 0..{n_units - 1} "
                f"({int(bad.sum())} of {unit.size} spikes are out of range)"
            )
    bins = np.floor(times * n_bins / float(duration_s)).astype(np.int64)
    keep = bins < n_bins
    flat = bins[keep] * n_units + unit[keep]
    counts = np.bincount(flat, minlength=n_bins * n_units)
    return counts.astype(np.float32).reshape(n_bins, n_units)


def resize_frames(
    frames: np.ndarray | torch.Tensor, size: int | tuple[int, int], mode: str = "area"
) -> np.ndarray | torch.Tensor:
    """Resize frames ``(T, C, H, W)`` spatially with :func:`torch.nn.functional.interpolate`.

    ``mode="area"`` (default) averages the input pixels covering each output pixel (adaptive
    average pooling), so the mean count per pixel is preserved and no event is dropped when
    downsampling, e.g. 128x128 -> 48x48. ``mode="bilinear"`` (``align_corners=False``, no
    antialiasing) samples the count map at the output pixel centres instead.

    Args:
        frames: ``(T, C, H, W)`` numpy array or tensor (also ``(C, H, W)``).
        size: output size, an int for square output or ``(height, width)``.
        mode: ``"area"`` or ``"bilinear"``.

    Returns:
        float32 frames ``(T, C, h, w)`` of the same kind as the input (numpy or torch).

    Raises:
        ValueError: unknown mode, bad size or bad frame shape.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; allowed: {', '.join(RESIZE_MODES)}")
    out_size = (int(size), int(size)) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(out_size) != 2 or min(out_size) <= 0:
        raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
    is_numpy = isinstance(frames, np.ndarray)
    tensor = torch.from_numpy(np.ascontiguousarray(frames)) if is_numpy else frames
    if tensor.dim() not in (3, 4):
        raise ValueError(f"expected frames (T, C, H, W) or (C, H, W), got {tuple(tensor.shape)}")
    squeeze = tensor.dim() == 3
    batch = tensor.unsqueeze(0) if squeeze else tensor
    batch = batch.to(torch.float32)
    if mode == "area":
        out = F.interpolate(batch, size=out_size, mode="area")
    else:
        out = F.interpolate(batch, size=out_size, mode="bilinear", align_corners=False)
    if squeeze:
        out = out.squeeze(0)
    return out.numpy() if is_numpy else out
