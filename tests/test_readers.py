"""Tests for the event/frame utilities and the neuromorphic and CIFAR readers.

Every reader is exercised on tiny files in the real on-disk format (written by
tests/writers.py); binning is checked against hand-computed counts. Nothing is downloaded.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from opzo.data.cifar import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CUTOUT_SIZE,
    cutout,
    load_cifar,
    load_cifar10,
    load_cifar100,
    normalize,
    random_crop,
    random_horizontal_flip,
)
from opzo.data.errors import DatasetError
from opzo.data.events import (
    EVENT_DTYPE,
    bin_by_count,
    bin_by_time,
    bin_units_by_time,
    make_events,
    resize_frames,
)
from opzo.data.neuromorphic import (
    CIFAR10DVS,
    CIFAR10DVS_CLASSES,
    DVSGesture,
    NMNISTFolder,
    SpikingHeidelbergDigits,
    SpikingSpeechCommands,
    compute_mean_std,
    read_cifar10dvs_npz,
    read_gesture_npy,
    read_nmnist_bin,
)

from .writers import (
    cifar_images,
    encode_nmnist,
    gesture_events,
    write_cifar10dvs,
    write_cifar_pickle,
    write_shd_h5,
)

NMNIST_SAMPLE = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "nmnist-sample" / "sample_nmnist.bin"
)


# ------------------------------------------------------------------------------ events


def test_bin_by_time_hand_computed() -> None:
    # sensor W=4, H=3; bins of 3000 us: t=0 and 2999 -> bin 0, 3000 -> 1, 8999 -> 2,
    # 9000 -> bin 3 (dropped with n_bins=3); events are deliberately not time-sorted.
    events = make_events(
        t=[3000, 0, 9000, 2999, 8999],
        x=[1, 3, 0, 3, 2],
        y=[2, 0, 0, 0, 1],
        p=[0, 1, 1, 1, 0],
    )
    frames = bin_by_time(events, (4, 3, 2), bin_us=3000, n_bins=3)
    assert frames.shape == (3, 2, 3, 4) and frames.dtype == np.float32
    expected = np.zeros((3, 2, 3, 4), dtype=np.float32)
    expected[0, 1, 0, 3] = 2  # t=0 and t=2999 at (x=3, y=0), polarity 1
    expected[1, 0, 2, 1] = 1  # t=3000
    expected[2, 0, 1, 2] = 1  # t=8999
    np.testing.assert_array_equal(frames, expected)


def test_bin_by_time_t0_and_float_bin() -> None:
    events = make_events(t=[100, 250, 400, 1000], x=[0, 0, 0, 0], y=[0, 0, 0, 0], p=[0, 0, 1, 1])
    # t0=200: t=100 is before the window (dropped); 250 -> bin 0; 400 -> bin 1; 1000 -> bin 5.
    frames = bin_by_time(events, (1, 1, 2), bin_us=150.0, n_bins=6, t0=200)
    assert frames[:, 0, 0, 0].tolist() == [1, 0, 0, 0, 0, 0]
    assert frames[:, 1, 0, 0].tolist() == [0, 1, 0, 0, 0, 1]


def test_bin_by_count_equal_slices() -> None:
    # N=7, n=3: edges floor(j*7/3) = 0, 2, 4, 7 -> slices of 2, 2 and 3 events.
    events = make_events(t=np.arange(7), x=np.arange(7), y=[0] * 7, p=[0, 1, 0, 1, 0, 1, 0])
    frames = bin_by_count(events, (7, 1, 2), n_bins=3)
    expected = np.zeros((3, 2, 1, 7), dtype=np.float32)
    for i, (j, p) in enumerate(zip([0, 0, 1, 1, 2, 2, 2], [0, 1, 0, 1, 0, 1, 0])):
        expected[j, p, 0, i] = 1
    np.testing.assert_array_equal(frames, expected)


def test_bin_by_count_fewer_events_than_bins() -> None:
    # N=2, n=4: edges 0, 0, 1, 1, 2 -> slices 0 and 2 empty, event 0 in 1, event 1 in 3.
    events = make_events(t=[5, 9], x=[0, 1], y=[0, 0], p=[1, 1])
    frames = bin_by_count(events, (2, 1, 2), n_bins=4)
    assert frames.sum(axis=(1, 2, 3)).tolist() == [0, 1, 0, 1]
    assert frames[1, 1, 0, 0] == 1 and frames[3, 1, 0, 1] == 1
    assert bin_by_count(np.empty(0, dtype=EVENT_DTYPE), (2, 1, 2), 3).sum() == 0


def test_binning_rejects_bad_input() -> None:
    events = make_events(t=[0, 1], x=[0, 4], y=[0, 0], p=[0, 1])
    with pytest.raises(ValueError, match=r"\(x=4, y=0\) lies outside the 4x3 sensor"):
        bin_by_time(events, (4, 3, 2), 10, 2)
    with pytest.raises(ValueError, match="polarity 2"):
        bin_by_count(make_events([0], [0], [0], [2]), (4, 3, 2), 2)
    with pytest.raises(ValueError, match=r"\(W, H, 2\)"):
        bin_by_count(events, (4, 3), 2)
    with pytest.raises(ValueError, match="bin_us must be positive"):
        bin_by_time(events, (5, 3, 2), 0, 2)
    with pytest.raises(ValueError, match="fields t, x, y, p"):
        bin_by_count(np.zeros((3, 4)), (5, 3, 2), 2)


def test_bin_units_by_time_hand_computed() -> None:
    # 50 bins over 1 s = 20 ms bins: 0.0 -> 0, 0.019 -> 0, 0.021 -> 1, 0.5 -> 25, 0.999 -> 49,
    # 1.2 s is after the window (dropped).
    times = [0.5, 0.0, 0.019, 0.021, 0.999, 1.2]
    units = [699, 3, 3, 10, 0, 5]
    counts = bin_units_by_time(times, units, n_units=700, n_bins=50, duration_s=1.0)
    assert counts.shape == (50, 700) and counts.dtype == np.float32
    assert counts[0, 3] == 2 and counts[1, 10] == 1 and counts[25, 699] == 1
    assert counts[49, 0] == 1 and counts.sum() == 5
    with pytest.raises(ValueError, match="units must lie in 0..699"):
        bin_units_by_time([0.1], [700], 700, 50, 1.0)
    with pytest.raises(ValueError, match="finite and >= 0"):
        bin_units_by_time([-0.1], [1], 700, 50, 1.0)
    with pytest.raises(ValueError, match="same length"):
        bin_units_by_time([0.1, 0.2], [1], 700, 50, 1.0)


def test_resize_frames_area_and_bilinear() -> None:
    frames = np.zeros((1, 2, 4, 4), dtype=np.float32)
    frames[0, 0, :2, :2] = [[1, 2], [3, 6]]  # top-left 2x2 block averages to 3
    frames[0, 1, 2:, 2:] = 8
    out = resize_frames(frames, 2, mode="area")
    assert isinstance(out, np.ndarray) and out.shape == (1, 2, 2, 2)
    np.testing.assert_allclose(out[0, 0], [[3, 0], [0, 0]])
    np.testing.assert_allclose(out[0, 1], [[0, 0], [0, 8]])
    out_t = resize_frames(torch.from_numpy(frames), (3, 5), mode="bilinear")
    assert isinstance(out_t, torch.Tensor) and out_t.shape == (1, 2, 3, 5)
    with pytest.raises(ValueError, match="unknown resize mode"):
        resize_frames(frames, 2, mode="nearest")


# ----------------------------------------------------------------------------- N-MNIST


def test_read_nmnist_bin_round_trip(tmp_path: Path) -> None:
    x, y, p, t = [0, 33, 17], [5, 0, 33], [1, 0, 1], [0, 70000, 8388607]
    path = tmp_path / "00001.bin"
    path.write_bytes(encode_nmnist(x, y, p, t))
    events = read_nmnist_bin(path)
    assert events.dtype == EVENT_DTYPE
    assert events["x"].tolist() == x and events["y"].tolist() == y
    assert events["p"].tolist() == p and events["t"].tolist() == t


def test_read_nmnist_bin_rejects_truncated(tmp_path: Path) -> None:
    path = tmp_path / "cut.bin"
    path.write_bytes(encode_nmnist([1, 2], [1, 2], [0, 1], [10, 20])[:8])
    with pytest.raises(DatasetError) as info:
        read_nmnist_bin(path)
    message = str(info.value)
    assert str(path) in message and "8 bytes" in message
    assert "multiple of 5" in message and "truncated" in message
    with pytest.raises(DatasetError, match="not found"):
        read_nmnist_bin(tmp_path / "absent.bin")


@pytest.mark.parametrize("tonic_layout", [True, False])
def test_nmnist_folder(tmp_path: Path, tonic_layout: bool) -> None:
    base = tmp_path / "NMNIST" if tonic_layout else tmp_path
    for digit, n in ((3, 2), (7, 1)):
        folder = base / "Train" / str(digit)
        folder.mkdir(parents=True)
        for i in range(n):
            # 3 ms bins: t=100 -> 0, 3000 -> 1, 89999 -> 29, 90000 -> dropped (bin 30)
            data = encode_nmnist(
                [i, 2, 3, 4], [1, 2, 3, 4], [1, 0, 1, 1], [100, 3000, 89999, 90000]
            )
            (folder / f"{i:05d}.bin").write_bytes(data)
    dataset = NMNISTFolder(tmp_path, "train")
    assert len(dataset) == 3 and dataset.targets == [3, 3, 7]
    frames, label = dataset[1]
    assert label == 3 and frames.shape == (30, 2, 34, 34) and frames.dtype == torch.float32
    assert frames.sum() == 3
    assert frames[0, 1, 1, 1] == 1 and frames[1, 0, 2, 2] == 1 and frames[29, 1, 3, 3] == 1


def test_nmnist_folder_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        NMNISTFolder(tmp_path, "test")
    message = str(info.value)
    assert str(tmp_path / "NMNIST" / "Test") in message and str(tmp_path / "Test") in message
    assert "<digit 0-9>/*.bin" in message and "never downloads" in message
    assert "garrickorchard.com/datasets/n-mnist" in message


def test_nmnist_folder_bad_coordinates(tmp_path: Path) -> None:
    folder = tmp_path / "Train" / "0"
    folder.mkdir(parents=True)
    (folder / "a.bin").write_bytes(encode_nmnist([40], [1], [0], [5]))
    with pytest.raises(DatasetError, match=r"a\.bin.*outside the 34x34 sensor"):
        NMNISTFolder(tmp_path, "train")[0]


@pytest.mark.skipif(not NMNIST_SAMPLE.is_file(), reason=f"{NMNIST_SAMPLE} not present")
def test_read_real_nmnist_sample() -> None:
    events = read_nmnist_bin(NMNIST_SAMPLE)
    assert events.shape == (4325,)
    assert events["x"].min() >= 0 and events["x"].max() <= 33
    assert events["y"].min() >= 0 and events["y"].max() <= 33
    assert set(events["p"].tolist()) == {0, 1}
    assert events["t"].min() >= 0 and events["t"].max() <= 330_000
    frames = bin_by_time(events, (34, 34, 2), 3000, 30)
    assert frames.sum() == int((events["t"] < 90_000).sum())


# ------------------------------------------------------------------------- DVS Gesture


def test_dvs_gesture_tonic_layout(tmp_path: Path) -> None:
    session = tmp_path / "DVSGesture" / "ibmGestureTrain" / "user01_fluorescent"
    session.mkdir(parents=True)
    np.save(session / "10.npy", gesture_events(40, 100))
    np.save(session / "2.npy", gesture_events(20, 10))
    structured = np.zeros(20, dtype=[("x", "<i2"), ("y", "<i2"), ("p", "?"), ("t", "<i8")])
    structured["x"], structured["y"], structured["t"] = 127, np.arange(20), np.arange(20) * 7
    np.save(session / "0.npy", structured)

    dataset = DVSGesture(tmp_path, "train")
    assert len(dataset) == 3 and dataset.targets == [0, 2, 10]
    frames, label = dataset[2]
    assert label == 10 and frames.shape == (20, 2, 48, 48) and frames.dtype == torch.float32

    events = read_gesture_npy(session / "10.npy")
    assert events["t"].tolist()[:3] == [0, 500, 1000]  # ms -> us
    assert events["x"].tolist()[:4] == [100, 101, 102, 100]

    exact = DVSGesture(tmp_path, "train", size=128)  # same size: the resize is the identity
    frames, _ = exact[2]
    # 40 events in 20 slices -> 2 per slice: event 2j (p=0) and 2j+1 (p=1)
    assert frames.sum(dim=(1, 2, 3)).tolist() == [2.0] * 20
    assert frames[0, 0, 60, 100] == 1 and frames[0, 1, 60, 101] == 1
    assert frames[19, 0, 60, 102] == 1 and frames[19, 1, 60, 100] == 1  # events 38, 39
    structured_frames, _ = exact[0]
    assert structured_frames[:, 0, :, 127].sum() == 20 and structured_frames[5, 0, 5, 127] == 1


def test_dvs_gesture_rejects_bad_files(tmp_path: Path) -> None:
    session = tmp_path / "ibmGestureTest" / "user24_led"
    session.mkdir(parents=True)
    bad = session / "3.npy"
    np.save(bad, np.zeros((5, 3)))
    with pytest.raises(DatasetError) as info:
        DVSGesture(tmp_path, "test")[0]
    assert str(bad) in str(info.value) and "columns (x, y, p, t)" in str(info.value)

    np.save(bad, gesture_events(10, 0))
    bad.write_bytes(bad.read_bytes()[:-30])
    with pytest.raises(DatasetError, match=r"3\.npy.*truncated"):
        DVSGesture(tmp_path, "test")[0]

    np.save(session / "11.npy", gesture_events(10, 0))
    with pytest.raises(DatasetError, match=r"11\.npy: the file name must be the label"):
        DVSGesture(tmp_path, "test")


def test_dvs_gesture_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        DVSGesture(tmp_path, "train")
    message = str(info.value)
    assert str(tmp_path / "DVSGesture" / "ibmGestureTrain") in message
    assert "<user_session>/<label 0-10>.npy" in message and "never downloads" in message
    assert "research.ibm.com/interactive/dvsgesture" in message


# ------------------------------------------------------------------------- CIFAR10-DVS


def test_cifar10dvs_split_and_frames(tmp_path: Path) -> None:
    write_cifar10dvs(tmp_path)
    train = CIFAR10DVS(tmp_path, "train", train_per_class=2)
    test = CIFAR10DVS(tmp_path, "test", train_per_class=2)
    assert len(train) == 20 and len(test) == 10
    # numeric order 1, 2, 10 (not lexicographic 1, 10, 2): 1 and 2 train, 10 test
    assert [f.name for f in train.files[:2]] == ["cifar10_airplane_1.npz", "cifar10_airplane_2.npz"]
    assert test.files[9].name == "cifar10_truck_10.npz"
    assert train.targets == [c for c in range(10) for _ in range(2)]
    assert test.targets == list(range(10))
    frames, label = test[3]
    assert label == 3 and frames.shape == (10, 2, 48, 48) and frames.dtype == torch.float32

    events = read_cifar10dvs_npz(test.files[3])
    assert events.size == 20 and events["x"].tolist() == [70] * 20

    exact = CIFAR10DVS(tmp_path, "test", train_per_class=2, size=128)
    frames, _ = exact[0]  # 20 events in 10 slices: slice j holds events 2j (p=0), 2j+1 (p=1)
    assert frames.sum(dim=(1, 2, 3)).tolist() == [2.0] * 10
    assert (
        frames[:, 0, 64, 70].tolist() == [1.0] * 10 and frames[:, 1, 64, 70].tolist() == [1.0] * 10
    )


def test_cifar10dvs_crop_and_normalization(tmp_path: Path) -> None:
    write_cifar10dvs(tmp_path)
    plain = CIFAR10DVS(tmp_path, "train", train_per_class=2)
    mean, std = compute_mean_std(plain)
    stacked = torch.stack([plain[i][0] for i in range(len(plain))]).double()
    assert mean == pytest.approx(stacked.mean().item())
    assert std == pytest.approx(stacked.std(unbiased=False).item())

    def make(seed: int) -> CIFAR10DVS:
        gen = torch.Generator().manual_seed(seed)
        return CIFAR10DVS(
            tmp_path, "train", train_per_class=2, augment=True, generator=gen, mean=mean, std=std
        )

    normed = CIFAR10DVS(tmp_path, "train", train_per_class=2, mean=mean, std=std)
    a, b = make(5), make(5)
    moved = 0
    for i in range(4):
        fa, la = a[i]
        fb, _ = b[i]
        assert torch.equal(fa, fb) and la == plain.targets[i]
        moved += not torch.allclose(fa, normed[i][0])
        raw = fa * std + mean  # undo normalisation; events sit mid-sensor, so none is cropped
        assert raw.sum().item() == pytest.approx(plain.raw_frames(i).sum().item(), rel=1e-5)
    assert moved > 0  # the crop shifted at least one sample
    normalized = torch.stack([normed[i][0] for i in range(len(normed))])
    assert normalized.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert normalized.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)


def test_cifar10dvs_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        CIFAR10DVS(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and str(tmp_path / "events_np") in message
    assert "<class>/<index>.npz" in message and "airplane, automobile" in message
    assert "never downloads" in message and "figshare" in message and "Li et al. 2017" in message

    write_cifar10dvs(tmp_path)
    with pytest.raises(DatasetError, match=r"holds 3 \.npz files.*first 900"):
        CIFAR10DVS(tmp_path)

    bad = tmp_path / "cat" / "cifar10_cat_1.npz"
    np.savez(bad, t=np.zeros(3), x=np.zeros(3))
    with pytest.raises(DatasetError) as info:
        read_cifar10dvs_npz(bad)
    assert str(bad) in str(info.value) and "missing arrays y, p" in str(info.value)

    bad.write_bytes(b"PK\x03\x04 this is not a complete zip archive")
    with pytest.raises(DatasetError, match=r"cifar10_cat_1\.npz: cannot read.*truncated"):
        read_cifar10dvs_npz(bad)

    (tmp_path / "truck" / "cifar10_truck_1.npz").unlink()
    for name in CIFAR10DVS_CLASSES[:9]:
        for f in (tmp_path / name).iterdir():
            f.unlink()
        (tmp_path / name).rmdir()
    with pytest.raises(DatasetError, match="class folders airplane, .*ship are missing"):
        CIFAR10DVS(tmp_path)


# ----------------------------------------------------------------------------- SHD / SSC


def test_shd_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "shd_train.h5"
    # 50 bins over 1 s: 0.01 -> bin 0, 0.03 -> 1, 0.5 -> 25; 1.3 s is dropped
    write_shd_h5(path, [[0.01, 0.03, 0.5, 1.3], [], [0.99]], [[0, 699, 699, 1], [], [42]],
                 [0, 19, 7])
    with SpikingHeidelbergDigits(tmp_path, n_bins=50, duration_s=1.0) as shd:
        assert len(shd) == 3 and shd.targets == [0, 19, 7]
        counts, label = shd[0]
        assert label == 0 and counts.shape == (50, 700) and counts.dtype == torch.float32
        assert counts[0, 0] == 1 and counts[1, 699] == 1 and counts[25, 699] == 1
        assert counts.sum() == 3
        assert shd[1][0].sum() == 0 and shd[2][0][49, 42] == 1
    coarse = SpikingHeidelbergDigits(path, n_bins=2, duration_s=1.4)  # bins of 0.7 s
    assert coarse[0][0][:, 699].tolist() == [2.0, 0.0] and coarse[0][0][1, 1] == 1
    coarse.close()


def test_ssc_and_bad_h5(tmp_path: Path) -> None:
    path = tmp_path / "ssc_valid.h5"
    write_shd_h5(path, [[0.1]], [[5]], [34])
    ssc = SpikingSpeechCommands(tmp_path, split="valid")
    assert ssc[0][1] == 34 and ssc[0][0][5, 5] == 1
    ssc.close()
    with pytest.raises(DatasetError, match=r"labels range from 34 to 34, expected 0..19"):
        SpikingHeidelbergDigits(path)

    bad_unit = tmp_path / "bad_unit.h5"
    write_shd_h5(bad_unit, [[0.1]], [[700]], [1])
    with pytest.raises(DatasetError, match=r"bad_unit\.h5: sample 0: .*0..699"):
        SpikingHeidelbergDigits(bad_unit)[0]

    h5py = pytest.importorskip("h5py")
    no_units = tmp_path / "no_units.h5"
    with h5py.File(no_units, "w") as f:
        f.create_dataset("labels", data=np.zeros(1, dtype=np.uint16))
        f.create_dataset("spikes/times", data=np.zeros(1))
    with pytest.raises(DatasetError) as info:
        SpikingHeidelbergDigits(no_units)
    assert str(no_units) in str(info.value) and "missing spikes/units" in str(info.value)

    garbage = tmp_path / "shd_test.h5"
    garbage.write_bytes(b"\x1f\x8b not hdf5")
    with pytest.raises(DatasetError, match=r"shd_test\.h5: not a readable HDF5 file"):
        SpikingHeidelbergDigits(garbage)


def test_shd_missing_file_and_missing_h5py(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(DatasetError) as info:
        SpikingHeidelbergDigits(tmp_path, split="test")
    message = str(info.value)
    assert str(tmp_path / "shd_test.h5") in message and "spikes/times" in message
    assert "never downloads" in message
    assert "zenkelab.org/resources/spiking-heidelberg-datasets-shd" in message

    present = tmp_path / "shd_train.h5"
    present.write_bytes(b"placeholder")
    monkeypatch.setitem(sys.modules, "h5py", None)  # makes `import h5py` raise ImportError
    with pytest.raises(DatasetError, match=r"needs the optional package h5py.*pip install h5py"):
        SpikingHeidelbergDigits(present)


# ------------------------------------------------------------------------------- CIFAR


def test_load_cifar10_round_trip(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = [cifar_images(2, i) for i in range(5)]
    for i, data in enumerate(batches):
        write_cifar_pickle(folder / f"data_batch_{i + 1}", data, [i, 9 - i], b"labels")
    write_cifar_pickle(folder / "test_batch", cifar_images(3, 9), [1, 2, 3], b"labels")
    images, labels = load_cifar10(tmp_path, "train")
    assert images.shape == (10, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64
    assert labels.tolist() == [0, 9, 1, 8, 2, 7, 3, 6, 4, 5]
    flat = batches[1][1]  # image 3: red plane first, row-major
    assert images[3, 0, 0, 1].item() == flat[1] and images[3, 1, 0, 0].item() == flat[1024]
    assert images[3, 2, 31, 31].item() == flat[3071]
    test_images, test_labels = load_cifar(name="CIFAR-10", root=folder, split="test")
    assert test_images.shape == (3, 3, 32, 32) and test_labels.tolist() == [1, 2, 3]


def test_load_cifar100_round_trip(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    write_cifar_pickle(folder / "train", cifar_images(4, 0), [0, 99, 50, 3], b"fine_labels")
    write_cifar_pickle(folder / "test", cifar_images(1, 1), [42], b"fine_labels")
    images, labels = load_cifar100(tmp_path, "train")
    assert images.shape == (4, 3, 32, 32) and labels.tolist() == [0, 99, 50, 3]
    assert load_cifar100(folder, "test")[1].tolist() == [42]


def test_cifar_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        load_cifar10(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in message and "data_batch_1" in message
    assert "never downloads" in message and "cs.toronto.edu/~kriz/cifar.html" in message

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in (1, 2, 4, 5):
        write_cifar_pickle(folder / f"data_batch_{i}", cifar_images(1, i), [0], b"labels")
    with pytest.raises(DatasetError, match="missing data_batch_3"):
        load_cifar10(tmp_path)

    write_cifar_pickle(folder / "data_batch_3", cifar_images(1, 3), [0], b"labels")
    full = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(full[: len(full) // 2])
    with pytest.raises(DatasetError) as info:
        load_cifar10(tmp_path)
    assert str(folder / "data_batch_3") in str(info.value) and "b'data'" in str(info.value)
    assert "truncated" in str(info.value)

    write_cifar_pickle(folder / "data_batch_3", cifar_images(1, 3), [0], b"fine_labels")
    with pytest.raises(DatasetError, match=r"data_batch_3: expected .*b'labels'"):
        load_cifar10(tmp_path)
    write_cifar_pickle(folder / "data_batch_3", cifar_images(1, 3), [10], b"labels")
    with pytest.raises(DatasetError, match=r"labels must lie in 0..9"):
        load_cifar10(tmp_path)


def test_random_crop_matches_shifted_window() -> None:
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.int64).reshape(2, 3, 8, 8) + 1
    out = random_crop(images, padding=2, generator=torch.Generator().manual_seed(3))
    redraw = torch.Generator().manual_seed(3)
    off_y = torch.randint(0, 5, (2,), generator=redraw)
    off_x = torch.randint(0, 5, (2,), generator=redraw)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for n in range(2):
        oy, ox = int(off_y[n]), int(off_x[n])
        assert torch.equal(out[n], padded[n, :, oy : oy + 8, ox : ox + 8])
    single = random_crop(images[0], 0, torch.Generator().manual_seed(0))
    assert torch.equal(single, images[0])


def test_flip_and_cutout() -> None:
    images = torch.arange(4 * 1 * 4 * 4, dtype=torch.float32).reshape(4, 1, 4, 4)
    assert torch.equal(random_horizontal_flip(images, p=1.0), images.flip(-1))
    assert torch.equal(random_horizontal_flip(images, p=0.0), images)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    flipped = random_horizontal_flip(images, g1)
    assert torch.equal(flipped, random_horizontal_flip(images, g2))
    for n in range(4):
        assert torch.equal(flipped[n], images[n]) or torch.equal(flipped[n], images[n].flip(-1))

    ones = torch.ones(8, 3, 32, 32, dtype=torch.uint8)
    out = cutout(ones, CUTOUT_SIZE["cifar10"], torch.Generator().manual_seed(0))
    redraw = torch.Generator().manual_seed(0)
    cy = torch.randint(0, 32, (8,), generator=redraw)
    cx = torch.randint(0, 32, (8,), generator=redraw)
    for n in range(8):
        expected = torch.ones(32, 32, dtype=torch.uint8)
        y0, x0 = max(int(cy[n]) - 8, 0), max(int(cx[n]) - 8, 0)
        expected[y0 : int(cy[n]) + 8, x0 : int(cx[n]) + 8] = 0
        for c in range(3):
            assert torch.equal(out[n, c], expected)
    assert CUTOUT_SIZE["cifar100"] == 8


def test_normalize_constants() -> None:
    mean_pixel = torch.tensor([round(m * 255) for m in CIFAR10_MEAN], dtype=torch.uint8)
    images = mean_pixel[None, :, None, None].expand(2, 3, 4, 4).contiguous()
    out = normalize(images, CIFAR10_MEAN, CIFAR10_STD)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 4, 4)
    assert out.abs().max().item() < 0.01
    white = normalize(torch.full((3, 1, 1), 255, dtype=torch.uint8))
    expected = [(1 - m) / s for m, s in zip(CIFAR10_MEAN, CIFAR10_STD)]
    assert white.flatten().tolist() == pytest.approx(expected, rel=1e-5)
