"""``opzo train`` on CIFAR-10/100, DVS128 Gesture, CIFAR10-DVS, SHD and SSC.

Each dataset is written here in its real on-disk format (the writers of tests/writers.py),
then built through :func:`opzo.build.make_source` as ``opzo train --dataset NAME`` does, with the
preprocessing of the OPZO paper, appendix C.3.1. Each registered factory's first batch is also
compared with the reader built by hand. Nothing is downloaded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from opzo.build import make_source
from opzo.cli import main
from opzo.config import ConfigError, TrainConfig
from opzo.data import (
    DATASETS,
    batch_generator,
    batch_seed,
    epoch_permutation,
    load_dataset,
    normalization_stats,
    randman,
)
from opzo.data.cifar import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    cifar_source,
    cutout,
    load_cifar10,
    load_cifar100,
    normalize,
    random_crop,
    random_horizontal_flip,
)
from opzo.data.datasets import image_source
from opzo.data.encoders import direct
from opzo.data.errors import DatasetError
from opzo.data.neuromorphic import (
    CIFAR10DVS,
    DVSGesture,
    NMNISTFolder,
    SpikingHeidelbergDigits,
    SpikingSpeechCommands,
    cifar10dvs,
    cifar10dvs_source,
    compute_mean_std,
    dvs_gesture,
    dvs_gesture_source,
    nmnist_source,
    shd_source,
    ssc_source,
)
from opzo.data.sources import ColorImageSource
from opzo.train import Interrupted, run_training

from .writers import (
    cifar_images,
    gesture_events,
    write_cifar10dvs,
    write_cifar_pickle,
    write_nmnist_tree,
    write_shd_h5,
)

QUIET = dict(progress=False, log=lambda *_: None)


def _cfg(**kw) -> TrainConfig:
    base = dict(threads=1, epochs=1, eval_batch_size=64)
    base.update(kw)
    return TrainConfig.from_dict(base)


def _rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in rows]


# ------------------------------------------------------------------------------ CIFAR


def _write_cifar10(root: Path, per_batch: int = 5, n_test: int = 4,
                   data: np.ndarray | None = None) -> Path:
    """The official layout: cifar-10-batches-py/data_batch_1..5 and test_batch (pickles)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(5):
        images = cifar_images(per_batch, i) if data is None else data[:per_batch]
        labels = [(i * per_batch + k) % 10 for k in range(per_batch)]
        write_cifar_pickle(folder / f"data_batch_{i + 1}", images, labels, b"labels")
    test = cifar_images(n_test, 99) if data is None else data[:n_test]
    write_cifar_pickle(folder / "test_batch", test, [k % 10 for k in range(n_test)], b"labels")
    return folder


def test_batch_seed_is_a_function_of_seed_epoch_and_batch() -> None:
    assert batch_seed(3, 1, 2) == batch_seed(3, 1, 2)
    seeds = {batch_seed(s, e, b) for s in (0, 1) for e in (0, 1) for b in (0, 1, 2)}
    assert len(seeds) == 12  # all distinct
    a = torch.rand(4, generator=batch_generator(0, 2, 5))
    assert torch.equal(a, torch.rand(4, generator=batch_generator(0, 2, 5)))
    with pytest.raises(ValueError, match="must be >= 0"):
        batch_seed(0, 0, -1)


def test_cifar10_source_normalizes_and_augments_per_batch(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    cfg = _cfg(dataset="cifar10", data_root=str(tmp_path), T=2, seed=7)
    train, test = make_source(cfg, "train"), make_source(cfg, "test")
    assert (len(train), len(test), train.classes) == (25, 4, 10)
    assert train.input_shape == (3, 32, 32) and train.num_inputs == 3072
    assert train.labels.tolist() == [k % 10 for k in range(25)]

    # test split: normalised pixels, no augmentation; one value by hand
    images, _ = load_cifar10(tmp_path, "test")
    (x, y), = list(test.batches(64, 2))
    assert x.shape == (4, 3072) and y.tolist() == [0, 1, 2, 3]
    pixel = images[2, 1, 5, 7].item()  # green channel, row 5, column 7
    assert x[2, 1024 + 5 * 32 + 7].item() == pytest.approx((pixel / 255 - 0.4822) / 0.2435)
    assert torch.allclose(x, normalize(images, CIFAR10_MEAN, CIFAR10_STD).flatten(1))

    # training split: crop, flip, normalise, cutout from the generator of (seed, epoch, batch)
    order = epoch_permutation(25, 7, 1)
    got = list(train.batches(8, 2, permutation=order, epoch=1))
    assert [x.shape for x, _ in got] == [(8, 3072)] * 3 + [(1, 3072)]
    for b, (x, labels) in enumerate(got):
        idx = order[8 * b:8 * (b + 1)]
        g = batch_generator(7, 1, b)
        expect = random_horizontal_flip(random_crop(train.images[idx], 4, g), g)
        expect = cutout(normalize(expect, CIFAR10_MEAN, CIFAR10_STD), 16, g)
        assert torch.equal(x, expect.flatten(1)) and torch.equal(labels, train.labels[idx])
    # resuming at batch 2 gives the tail; another epoch gives other draws
    tail = list(train.batches(8, 2, permutation=order, start_batch=2, epoch=1))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(tail, got[2:])) and len(tail) == 2
    other = next(iter(train.batches(8, 2, permutation=order, epoch=2)))[0]
    assert not torch.equal(other, got[0][0])
    plain = make_source(_cfg(dataset="cifar10", data_root=str(tmp_path), T=2, seed=7,
                             augment=False), "train")
    x0 = next(iter(plain.batches(8, 2, permutation=order, epoch=1)))[0]
    assert torch.equal(x0, normalize(train.images[order[:8]], CIFAR10_MEAN, CIFAR10_STD)
                       .flatten(1))
    assert not torch.equal(x0, got[0][0])


def test_cifar10_augmentation_by_its_visible_effects(tmp_path: Path) -> None:
    """Uniform grey images: after augmentation each pixel is grey, black padding (cropped in)
    or 0 (cutout, the mean); the cutout covers 64..256 pixels, the same in all channels."""
    grey = np.full((40, 3072), 200, dtype=np.uint8)
    _write_cifar10(tmp_path, per_batch=8, data=grey)
    train = make_source(_cfg(dataset="cifar10", data_root=str(tmp_path), T=1), "train")
    m, s = torch.tensor(CIFAR10_MEAN)[:, None, None], torch.tensor(CIFAR10_STD)[:, None, None]
    grey_v, black_v = (200 / 255 - m) / s, -m / s
    padded = 0
    for x, _ in train.batches(10, 1, epoch=0):
        for img in x.view(-1, 3, 32, 32):
            is_grey = torch.isclose(img, grey_v.expand_as(img))
            is_black = torch.isclose(img, black_v.expand_as(img))
            is_cut = img == 0
            assert bool((is_grey | is_black | is_cut).all())
            assert torch.equal(is_cut[0], is_cut[1]) and torch.equal(is_cut[0], is_cut[2])
            assert 64 <= int(is_cut[0].sum()) <= 256
            padded += int(is_black[0].sum())
    assert padded > 0  # some crops moved the image


def test_cifar100_source_and_spike_encodings(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    write_cifar_pickle(folder / "train", cifar_images(6, 0), [0, 99, 50, 3, 7, 8], b"fine_labels")
    write_cifar_pickle(folder / "test", cifar_images(2, 1), [42, 5], b"fine_labels")
    cfg = _cfg(dataset="cifar100", data_root=str(tmp_path), T=3)
    test = make_source(cfg, "test")
    assert (test.classes, test.input_shape, len(test)) == (100, (3, 32, 32), 2)
    x, y = next(iter(test.batches(2, 3)))
    assert y.tolist() == [42, 5]
    assert torch.allclose(x, normalize(test.images, CIFAR100_MEAN, CIFAR100_STD).flatten(1))
    assert make_source(cfg, "train").cutout_size == 8  # DeVries & Taylor: 8 for CIFAR-100

    rate = make_source(_cfg(dataset="cifar100", data_root=str(tmp_path), T=3, encoding="rate",
                            augment=False), "train")
    x, _ = next(iter(rate.batches(6, 3)))
    assert x.shape == (3, 6, 3072) and set(x.unique().tolist()) <= {0.0, 1.0}
    latency = make_source(_cfg(dataset="cifar100", data_root=str(tmp_path), T=300,
                               encoding="latency", augment=False), "test")
    x, _ = next(iter(latency.batches(2, 300)))
    # one spike per pixel brighter than θ = 0.2, none for the others
    bright = (latency.images.flatten(1).float() / 255 > 0.2).float()
    assert torch.equal(x.sum(0), bright)


@pytest.mark.parametrize("stop", [3, 9])
def test_cifar10_training_resume_equals_uninterrupted(tmp_path: Path, monkeypatch,
                                                      stop: int) -> None:
    """7 batches per epoch: stop 3 is mid epoch 1, stop 9 mid epoch 2 (other draws)."""
    data = tmp_path / "data"
    _write_cifar10(data)
    base = dict(dataset="cifar10", data_root=str(data), T=2, net="4C3-AP2-FC", epochs=2,
                batch_size=4, limit_test=4, eval_batch_size=4, dropout=0.2, seed=3)
    calls: list[tuple[int, int]] = []
    batches = ColorImageSource.batches

    def spy(self, *args, **kw):
        if self.augment_seed is not None:
            calls.append((kw.get("epoch", 0), kw.get("start_batch", 0)))
        return batches(self, *args, **kw)

    monkeypatch.setattr(ColorImageSource, "batches", spy)
    run_training(_cfg(**base), tmp_path / "full", **QUIET)
    assert calls == [(0, 0), (1, 0)]  # the loop tells the source its epoch
    with pytest.raises(Interrupted):
        run_training(_cfg(**base), tmp_path / "cut", stop_after_batches=stop, **QUIET)
    torch.manual_seed(1234)  # whatever happens in between must not matter
    run_training(_cfg(**base), tmp_path / "cut", resume=True, **QUIET)
    assert _rows(tmp_path / "full") == _rows(tmp_path / "cut")
    assert [r["epoch"] for r in _rows(tmp_path / "full")] == [1, 2]
    full = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)["model"]
    cut = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)["model"]
    assert full["hidden.0.weight"].shape == (4, 3, 3, 3)
    for k in full:
        assert torch.equal(full[k], cut[k]), k
    if stop == 3:  # the augmentation is part of the run: without it the weights differ
        run_training(_cfg(**base, augment=False), tmp_path / "plain", **QUIET)
        plain = torch.load(tmp_path / "plain" / "checkpoint.pt", weights_only=False)["model"]
        assert not torch.equal(plain["hidden.0.weight"], full["hidden.0.weight"])


# ------------------------------------------------------------------------ DVS Gesture


def _write_gesture(root: Path) -> None:
    """tonic's layout; sample (session s, label l) has 40 + 4 l events at x = 20 + 8 l."""
    for split, sessions in (("ibmGestureTrain", ("user01_led", "user02_natural")),
                            ("ibmGestureTest", ("user24_led",))):
        for s, name in enumerate(sessions):
            folder = root / "DVSGesture" / split / name
            folder.mkdir(parents=True)
            for label in range(11) if split.endswith("Train") else (s, 5, 10):
                np.save(folder / f"{label}.npy", gesture_events(40 + 4 * label, 20 + 8 * label))


@pytest.mark.parametrize("budget_mb,reads", [(None, 3), ("0", 6)])
def test_event_frames_are_binned_once(tmp_path: Path, monkeypatch, budget_mb, reads) -> None:
    """Each recording is read and binned once per dataset object (FrameCache); with
    OPZO_FRAME_CACHE_MB=0 on every access; the frames are the same either way."""
    _write_gesture(tmp_path / "data")
    if budget_mb is not None:
        monkeypatch.setenv("OPZO_FRAME_CACHE_MB", budget_mb)
    calls = []
    real = dvs_gesture.read_gesture_npy  # patched where DVSGesture.read looks it up
    monkeypatch.setattr(dvs_gesture, "read_gesture_npy",
                        lambda path: calls.append(path) or real(path))
    data = DVSGesture(tmp_path / "data", "test", n_frames=4)
    first = [data[i][0].clone() for i in range(3)]
    second = [data[i][0] for i in range(3)]
    assert len(calls) == reads
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert data.cache.nbytes == (0 if budget_mb == "0" else 3 * 4 * 2 * 48 * 48 * 4)
    monkeypatch.setenv("OPZO_FRAME_CACHE_MB", "lots")
    with pytest.raises(ValueError, match="size in MiB"):
        DVSGesture(tmp_path / "data", "test", n_frames=4)


def test_dvs_gesture_source_and_training(tmp_path: Path) -> None:
    _write_gesture(tmp_path / "data")
    cfg = _cfg(dataset="dvs-gesture", data_root=str(tmp_path / "data"), T=4, hidden=[16],
               batch_size=8)
    train, test = make_source(cfg, "train"), make_source(cfg, "test")
    assert (len(train), len(test), train.classes) == (22, 3, 11)
    assert train.input_shape == (2, 48, 48) and train.num_inputs == 2 * 48 * 48
    assert train.data.targets == list(range(11)) * 2 and test.data.targets == [0, 5, 10]
    x, y = next(iter(test.batches(3, 4)))
    assert x.shape == (4, 3, 2 * 48 * 48) and y.tolist() == [0, 5, 10]
    # T is the number of frames of equal event counts, 48x48 (appendix C.3.1)
    exact = DVSGesture(tmp_path / "data", "test", n_frames=4, size=48)
    assert torch.equal(x[:, 1], exact[1][0].flatten(1))
    full = DVSGesture(tmp_path / "data", "test", n_frames=4, size=128)[1][0]
    assert full.sum(dim=(1, 2, 3)).tolist() == [15.0] * 4  # 60 events in 4 slices
    with pytest.raises(ValueError, match="frames hold 4 time steps, not T=20"):
        next(iter(test.batches(3, 20)))

    summary = run_training(cfg, tmp_path / "run", **QUIET)
    rows = _rows(tmp_path / "run")
    assert len(rows) == 1 and summary["final_test_acc"] == rows[0]["test_acc"]
    assert round(rows[0]["test_acc"] * 3 / 100, 3) in (0, 1, 2, 3)  # 3 test samples
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert ckpt["model"]["hidden.0.weight"].shape == (16, 2 * 48 * 48)
    assert ckpt["model"]["readout.weight"].shape == (11, 16)


# ------------------------------------------------------------------------ CIFAR10-DVS


def test_cifar10_dvs_source_normalization_crop_and_training(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(cifar10dvs, "CIFAR10DVS_TRAIN_PER_CLASS", 2)  # 3 files per class
    monkeypatch.setenv("OPZO_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "data"
    write_cifar10dvs(root)
    base = dict(dataset="cifar10-dvs", data_root=str(root), T=10, batch_size=6, seed=2)
    train, test = make_source(_cfg(**base), "train"), make_source(_cfg(**base), "test")
    assert (len(train), len(test), train.classes) == (20, 10, 10)
    assert train.input_shape == (2, 48, 48) and train.augment_seed == 2
    assert test.augment_seed is None and not test.data.augment
    assert test.data.targets == list(range(10))

    # global mean / std of all frames of the training split, remembered in the cache
    raw = CIFAR10DVS(root, "train", n_frames=10, size=48, train_per_class=2)
    stacked = torch.stack([raw.raw_frames(i) for i in range(20)]).double()
    mean, std = stacked.mean().item(), stacked.std(unbiased=False).item()
    assert train.data.mean == pytest.approx(mean) and train.data.std == pytest.approx(std)
    assert test.data.mean == train.data.mean and test.data.std == train.data.std
    (cached,) = (tmp_path / "cache").glob("mean-std-cifar10dvs-*.json")
    assert json.loads(cached.read_text())["mean"] == pytest.approx(mean)
    plain = make_source(_cfg(**base, augment=False), "train")
    x = torch.cat([x for x, _ in plain.batches(6, 10)], dim=1)
    assert x.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert x.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)

    # random crop per (seed, epoch, batch), before the normalisation: no event is lost
    order = epoch_permutation(20, 2, 0)
    first = list(train.batches(6, 10, permutation=order, epoch=0))
    again = list(train.batches(6, 10, permutation=order, start_batch=1, epoch=0))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first[1:], again))
    unaugmented = list(plain.batches(6, 10, permutation=order, epoch=0))
    assert not torch.equal(first[0][0], unaugmented[0][0])
    assert torch.equal(first[0][1], unaugmented[0][1])
    for (xa, _), (xp, _) in zip(first, unaugmented):
        events_a = (xa.double() * std + mean).sum(dim=(0, 2))
        events_p = (xp.double() * std + mean).sum(dim=(0, 2))
        assert torch.allclose(events_a, events_p, rtol=1e-4)
    epoch1 = next(iter(train.batches(6, 10, permutation=order, epoch=1)))[0]
    assert not torch.equal(epoch1, first[0][0])

    summary = run_training(_cfg(**base, net="4C3-AP4-FC"), tmp_path / "run", **QUIET)
    assert len(_rows(tmp_path / "run")) == 1 and 0 <= summary["final_test_acc"] <= 100
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert ckpt["model"]["hidden.0.weight"].shape == (4, 2, 3, 3)
    assert ckpt["model"]["readout.weight"].shape == (10, 4 * 12 * 12)


# ------------------------------------------------------------------------------ SHD / SSC


@pytest.mark.parametrize("name,classes", [("shd", 20), ("ssc", 35)])
def test_shd_ssc_sources(tmp_path: Path, name: str, classes: int) -> None:
    pytest.importorskip("h5py")
    # 50 bins over 1 s: 0.01 s -> bin 0, 0.03 -> 1, 0.5 -> 25; 1.3 s is dropped
    write_shd_h5(tmp_path / f"{name}_train.h5", [[0.01, 0.03, 0.5, 1.3], [], [0.99]],
              [[0, 699, 699, 1], [], [42]], [0, classes - 1, 7])
    write_shd_h5(tmp_path / f"{name}_test.h5", [[0.2]], [[3]], [4])
    cfg = _cfg(dataset=name, data_root=str(tmp_path), T=50, hidden=[16])
    train, test = make_source(cfg, "train"), make_source(cfg, "test")
    assert (len(train), len(test), train.classes) == (3, 1, classes)
    assert train.input_shape == (700,) and train.num_inputs == 700
    x, y = next(iter(train.batches(3, 50)))
    assert x.shape == (50, 3, 700) and y.tolist() == [0, classes - 1, 7]
    assert x[0, 0, 0] == 1 and x[1, 0, 699] == 1 and x[25, 0, 699] == 1 and x.sum() == 4
    assert x[49, 2, 42] == 1
    assert next(iter(test.batches(1, 50)))[0][10, 0, 3] == 1  # 0.2 s -> bin 10
    summary = run_training(cfg, tmp_path / "run", **QUIET)
    assert summary["final_test_acc"] in (0.0, 100.0)
    with pytest.raises(DatasetError, match="folder holding"):
        make_source(_cfg(dataset=name, data_root=str(tmp_path / f"{name}_test.h5")), "train")


def test_shd_without_h5py_is_a_clean_cli_error(tmp_path: Path, monkeypatch, capsys) -> None:
    for split in ("train", "test"):
        (tmp_path / f"shd_{split}.h5").write_bytes(b"placeholder")
    monkeypatch.setitem(sys.modules, "h5py", None)  # makes `import h5py` raise ImportError
    code = main(["train", "--dataset", "shd", "--data-root", str(tmp_path), "--T", "50",
                 "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("opzo: error: ")
    assert "needs the optional package h5py" in err and "pip install h5py" in err
    assert "Traceback" not in err


# ----------------------------------------------------------- errors and config rules


@pytest.mark.parametrize("name,expected", [
    ("cifar10", ["cifar-10-batches-py", "data_batch_1", "data_batch_5"]),
    ("cifar100", ["cifar-100-python", "train"]),
    ("dvs-gesture", ["DVSGesture/ibmGestureTrain", "<label 0-10>.npy"]),
    ("cifar10-dvs", ["events_np", "airplane"]),
    ("shd", ["shd_train.h5"]),
    ("ssc", ["ssc_train.h5"]),
])
def test_missing_data_is_a_clean_cli_error(tmp_path: Path, capsys, name: str,
                                           expected: list[str]) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    code = main(["train", "--dataset", name, "--data-root", str(root), "--T", "4",
                 "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("opzo: error: ") and "Traceback" not in err
    assert str(root) in err and "never downloads" in err
    for text in expected:
        assert text in err, text
    assert not (tmp_path / "run").exists()  # no empty run folder left behind


def test_config_rules_for_the_new_datasets() -> None:
    for name in ("shd", "ssc"):
        with pytest.raises(ConfigError, match="vectors of input neurons"):
            TrainConfig.from_dict({"dataset": name, "data_root": "x", "net": "8C3-FC"})
        TrainConfig.from_dict({"dataset": name, "data_root": "x", "net": "32-FC"})  # FC: fine
    for name in ("dvs-gesture", "cifar10-dvs", "shd", "ssc"):
        with pytest.raises(ConfigError, match="fed as spike frames"):
            TrainConfig.from_dict({"dataset": name, "data_root": "x", "encoding": "rate"})
    for name in ("cifar10", "cifar100"):
        TrainConfig.from_dict({"dataset": name, "data_root": "x", "encoding": "latency"})
        with pytest.raises(ConfigError, match="needs data_root"):
            TrainConfig.from_dict({"dataset": name})
    TrainConfig.from_dict({"dataset": "dvs-gesture", "data_root": "x", "net": "8C3-AP2-FC"})


# ------------------------------------------------------- each factory against its reader


def _first_batch(source, size: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    return next(iter(source.batches(size, T)))


def _frames_batch(reader, n: int) -> torch.Tensor:
    """The first ``n`` samples of an event reader as a FrameSource batch: (T, n, features)."""
    return torch.stack([reader[i][0] for i in range(n)]).flatten(2).transpose(0, 1)


@pytest.mark.parametrize("split", ["train", "test"])
def test_event_factories_equal_hand_built_readers(tmp_path: Path, monkeypatch,
                                                  split: str) -> None:
    """Each event dataset's registered factory (opzo.data.DATASETS) gives, unlimited, the
    frames of its reader built by hand with the papers' settings."""
    monkeypatch.setenv("OPZO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cifar10dvs, "CIFAR10DVS_TRAIN_PER_CLASS", 2)
    write_nmnist_tree(tmp_path / "nmnist", {"Train": 1, "Test": 1}, count=30, t_max=9000)
    _write_gesture(tmp_path / "gesture")
    write_cifar10dvs(tmp_path / "c10dvs")
    for name in ("shd", "ssc"):
        (tmp_path / name).mkdir()
        write_shd_h5(tmp_path / name / f"{name}_train.h5", [[0.01, 0.5], [0.2]],
                     [[3, 699], [1]], [1, 0])
        write_shd_h5(tmp_path / name / f"{name}_test.h5", [[0.3]], [[7]], [4])

    def cfg(name: str, root: str, T: int, **kw) -> TrainConfig:
        return _cfg(dataset=name, data_root=str(tmp_path / root), T=T, seed=5, **kw)

    raw = CIFAR10DVS(tmp_path / "c10dvs", "train", n_frames=4, size=48, train_per_class=2)
    mean, std = compute_mean_std(raw)
    cases = [
        (nmnist_source, cfg("nmnist", "nmnist", 3),
         NMNISTFolder(tmp_path / "nmnist", split, bin_us=3000, n_frames=3), 10),
        (dvs_gesture_source, cfg("dvs-gesture", "gesture", 4),
         DVSGesture(tmp_path / "gesture", split, n_frames=4, size=48), 11),
        (cifar10dvs_source, cfg("cifar10-dvs", "c10dvs", 4, augment=False),
         CIFAR10DVS(tmp_path / "c10dvs", split, n_frames=4, size=48, train_per_class=2,
                    mean=mean, std=std), 10),
        (shd_source, cfg("shd", "shd", 50),
         SpikingHeidelbergDigits(tmp_path / "shd", n_bins=50, duration_s=1.0, split=split), 20),
        (ssc_source, cfg("ssc", "ssc", 50),
         SpikingSpeechCommands(tmp_path / "ssc", n_bins=50, duration_s=1.0, split=split), 35),
    ]
    for factory, config, reader, classes in cases:
        source = factory(config, split)
        assert DATASETS[config.dataset].factory is factory, config.dataset
        assert (len(source), source.classes) == (len(reader), classes), config.dataset
        assert source.data.targets == reader.targets, config.dataset
        n = min(len(reader), 3)
        x, y = _first_batch(source, n, config.T)
        assert torch.equal(x, _frames_batch(reader, n)), config.dataset
        assert y.tolist() == reader.targets[:n], config.dataset

    # CIFAR10-DVS training split with augmentation: batch b crops with (seed, epoch, b)
    if split == "train":
        source = cifar10dvs_source(cfg("cifar10-dvs", "c10dvs", 4), split)
        assert source.augment_seed == 5
        reader = CIFAR10DVS(tmp_path / "c10dvs", split, n_frames=4, size=48, train_per_class=2,
                            mean=mean, std=std, augment=True,
                            generator=batch_generator(5, 0, 0))
        x, _ = _first_batch(source, 6, 4)
        assert torch.equal(x, _frames_batch(reader, 6))


@pytest.mark.parametrize("split", ["train", "test"])
def test_image_factories_equal_hand_built_sources(tmp_path: Path, split: str) -> None:
    """CIFAR-10/100 and the MNIST-like datasets: the factory's first batch equals the pixels
    read by hand, normalised with the dataset's statistics (no augmentation)."""
    _write_cifar10(tmp_path)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    write_cifar_pickle(folder / "train", cifar_images(6, 0), [0, 99, 50, 3, 7, 8], b"fine_labels")
    write_cifar_pickle(folder / "test", cifar_images(2, 1), [42, 5], b"fine_labels")
    for name, load, stats, classes, cut in (
        ("cifar10", load_cifar10, (CIFAR10_MEAN, CIFAR10_STD), 10, 16),
        ("cifar100", load_cifar100, (CIFAR100_MEAN, CIFAR100_STD), 100, 8),
    ):
        cfg = _cfg(dataset=name, data_root=str(tmp_path), T=2, seed=3, augment=False)
        assert DATASETS[name].factory is cifar_source
        source = cifar_source(cfg, split)
        images, labels = load(tmp_path, split)
        assert (len(source), source.classes, source.cutout_size) == (len(labels), classes, cut)
        assert source.augment_seed is None and source.crop_padding == 4
        x, y = _first_batch(source, 4, 2)
        assert torch.equal(x, normalize(images[:4], *stats).flatten(1))
        assert torch.equal(y, labels[:4])
        augmented = cifar_source(_cfg(dataset=name, data_root=str(tmp_path), T=2, seed=3), split)
        assert augmented.augment_seed == (3 if split == "train" else None)

    assert DATASETS["embedded-mnist"].factory is image_source
    source = image_source(_cfg(dataset="embedded-mnist", T=2), split)
    data = load_dataset("embedded-mnist", split=split)
    assert len(source) == len(data.labels)
    x, y = _first_batch(source, 5, 2)
    assert torch.equal(x, direct(data.images[:5], *normalization_stats("embedded-mnist")))
    assert torch.equal(y, data.labels[:5])


def test_randman_factory_splits_the_generated_task(monkeypatch) -> None:
    """randman-time / randman-rate: the first RANDMAN_TRAIN samples of the task generated with
    the code of the name train, the rest test (the task itself is faked: generating it takes
    seconds; tests/test_randman.py checks the generator)."""
    spikes, labels = torch.rand(50, 10, 3), torch.arange(10) % 10
    codes: list[bool] = []
    monkeypatch.setattr(randman, "otpe_task",
                        lambda time_code: codes.append(time_code) or (spikes, labels))
    monkeypatch.setattr(randman, "RANDMAN_TRAIN", 7)
    for name, time_code in (("randman-time", True), ("randman-rate", False)):
        assert DATASETS[name].factory is randman.randman_source
        cfg = _cfg(dataset=name, T=50)
        train, test = randman.randman_source(cfg, "train"), randman.randman_source(cfg, "test")
        assert codes[-2:] == [time_code, time_code]
        assert (len(train), len(test), train.classes) == (7, 3, 10)
        assert torch.equal(train.spikes, spikes[:, :7]) and torch.equal(test.labels, labels[7:])
        x, y = _first_batch(test, 3, 50)
        assert torch.equal(x, spikes[:, 7:]) and torch.equal(y, labels[7:])
