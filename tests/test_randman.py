"""Randman (spec shared/data/RANDMAN.md): manifolds, spiking sets, time and rate codes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from opzo.data import randman
from opzo.data.randman import (
    OTPE_RANDMAN,
    Randman,
    make_classification_dataset,
    make_spiking_dataset,
    otpe_preset,
    spectrum_size,
    to_spike_tensor,
)

SMALL = {"nb_classes": 3, "nb_units": 12, "nb_steps": 20, "dim_manifold": 2,
         "nb_samples": 30, "alpha": 1.0}


def test_spectrum_size():
    assert spectrum_size(2.0) == 32
    assert spectrum_size(1.0) == 1000
    assert spectrum_size(1.0, max_f_cutoff=100) == 100
    assert spectrum_size(0.5) == 1000  # capped
    assert Randman(4, 2, alpha=2.0, seed=0).f_cutoff == 32
    assert Randman(4, 2, alpha=1.0, seed=0).f_cutoff == 1000
    with pytest.raises(ValueError):
        spectrum_size(0.0)


def test_spectrum_and_parameters():
    man = Randman(5, 2, alpha=2.0, beta=0.0, seed=1)
    k = torch.arange(32, dtype=torch.float64)
    torch.testing.assert_close(man.spectrum, 1.0 / ((k + 1) ** 2 + 1))  # torch version
    assert man.spectrum[0] == 0.5
    peaked = Randman(5, 2, alpha=2.0, beta=3.0, seed=1)
    assert int(peaked.spectrum.argmax()) == 2  # |k + 1 − β| = 0 at k = 2
    assert man.params.shape == (5, 2, 3, 32)
    assert torch.all(man.params[:, :, 0, 0] == 0)  # no bias: a_0 = 0
    assert torch.all((man.params >= 0) & (man.params < 1))
    biased = Randman(5, 2, alpha=2.0, seed=1, use_bias=True)
    assert torch.all(biased.params[:, :, 0, 0] > 0)


def _reference_manifold(man: Randman, x: torch.Tensor) -> torch.Tensor:
    """The spec's formula term by term, float64, no vectorisation tricks."""
    out = torch.ones(x.shape[0], man.embedding_dim, dtype=torch.float64)
    for i in range(man.embedding_dim):
        for j in range(man.manifold_dim):
            a, f, phi = man.params[i, j]
            g = torch.zeros(x.shape[0], dtype=torch.float64)
            for k in range(man.f_cutoff):
                g += a[k] * man.spectrum[k] * torch.sin(
                    2 * math.pi * (k * x[:, j] * f[k] + phi[k])
                )
            out[:, i] *= g
    return out


@pytest.mark.parametrize(("alpha", "beta", "bias"), [(2.0, 0.0, False), (3.0, 2.0, True)])
def test_manifold_matches_spec_formula(alpha, beta, bias):
    man = Randman(4, 3, alpha=alpha, beta=beta, use_bias=bias, seed=3, dtype=torch.float64)
    x = torch.rand(7, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(man.eval_manifold(x), _reference_manifold(man, x))
    # float32 evaluation (the default) agrees to float32 accuracy
    fast = Randman(4, 3, alpha=alpha, beta=beta, use_bias=bias, seed=3)
    torch.testing.assert_close(fast.eval_manifold(x).double(), man.eval_manifold(x),
                               atol=1e-4, rtol=1e-4)


def test_manifold_chunking_is_invisible():
    man = Randman(6, 2, alpha=1.0, seed=4)
    x = torch.rand(50, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    whole = man.eval_manifold(x)
    man.chunk_elements = 1  # one sample per block
    torch.testing.assert_close(man.eval_manifold(x), whole)


def test_randman_seeding_is_local_and_reproducible():
    torch_state = torch.random.get_rng_state()
    np_state = np.random.get_state()[1].copy()
    a, b = Randman(3, 2, seed=7), Randman(3, 2, seed=7)
    assert torch.equal(a.params, b.params)
    assert not torch.equal(a.params, Randman(3, 2, seed=8).params)
    data1, labels1 = make_spiking_dataset(**SMALL, seed=5)
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state)
    data2, labels2 = make_spiking_dataset(**SMALL, seed=5)
    assert torch.equal(data1, data2) and torch.equal(labels1, labels2)
    data3, _ = make_spiking_dataset(**SMALL, seed=6)
    assert not torch.equal(data1, data3)
    # no seed: fresh entropy each call
    assert not torch.equal(Randman(3, 2).params, Randman(3, 2).params)


def test_sample_seed_gives_fresh_samples_of_the_same_task():
    kw = dict(SMALL, shuffle=False)
    a1, _ = make_spiking_dataset(**kw, seed=1, sample_seed=10)
    a2, _ = make_spiking_dataset(**kw, seed=1, sample_seed=10)
    b, _ = make_spiking_dataset(**kw, seed=1, sample_seed=11)
    assert torch.equal(a1, a2)
    assert not torch.equal(a1, b)
    # same task: the data are the standardised M_k(x) of the seed-1 manifolds for both
    seeds = np.random.default_rng(1).integers(0, np.iinfo(np.int64).max, size=(3, 1))
    for sample_seed in (10, 11):
        data, x = make_spiking_dataset(**kw, seed=1, sample_seed=sample_seed,
                                       classification=False)
        for k in range(3):
            rows = slice(k * 30, (k + 1) * 30)  # unshuffled: class k is block k
            y = Randman(12, 2, alpha=1.0, seed=int(seeds[k, 0])).eval_manifold(x[rows])
            y = y.double()
            y = (y - y.amin(0)) / (y.amax(0) - y.amin(0) + 1e-7)
            torch.testing.assert_close(data[rows, :, 0], y * 20)


def test_shapes_labels_and_standardisation():
    data, labels = make_spiking_dataset(**SMALL, seed=2, shuffle=False)
    n = SMALL["nb_classes"] * SMALL["nb_samples"]
    assert data.shape == (n, SMALL["nb_units"], 2)
    assert data.dtype == torch.float64 and labels.dtype == torch.int64
    assert torch.equal(labels.bincount(), torch.full((3,), SMALL["nb_samples"]))
    assert torch.equal(data[..., 1], torch.arange(12.0, dtype=torch.float64).expand(n, -1))
    y = data[..., 0] / SMALL["nb_steps"]
    assert torch.all((y >= 0) & (y < 1))
    for k in range(3):  # min-max per unit over each class: min exactly 0, max just below 1
        yk = y[labels == k]
        assert torch.all(yk.amin(0) == 0)
        assert torch.all(yk.amax(0) > 1 - 1e-6)
    # shuffling permutes the samples, labels follow
    shuffled, shuffled_labels = make_spiking_dataset(**SMALL, seed=2)
    assert torch.equal(shuffled_labels.bincount(), labels.bincount())
    assert not torch.equal(shuffled_labels, labels)
    key = shuffled[..., 0].sum(1).argsort()
    torch.testing.assert_close(shuffled[key], data[data[..., 0].sum(1).argsort()])


def test_step_frac_and_regression_targets():
    data, x = make_spiking_dataset(**SMALL, seed=3, step_frac=0.5, classification=False)
    assert data[..., 0].max() < 10
    assert x.shape == (90, 2) and x.dtype == torch.float64
    assert torch.all((x >= 0) & (x < 1))


def test_time_code_fires_each_unit_exactly_once():
    data, _ = make_spiking_dataset(**SMALL, seed=4)
    spikes = to_spike_tensor(data, SMALL["nb_steps"])
    assert spikes.shape == (20, 90, 12) and spikes.dtype == torch.float32
    assert torch.all(spikes.sum(0) == 1)
    # the spike is in bin ⌊time⌋ = ⌊y · nb_steps⌋
    assert torch.equal(spikes.argmax(0), data[..., 0].floor().long())
    # step_frac > 1 pushes events past the window: they are dropped
    late = data.clone()
    late[..., 0] *= 2
    assert torch.all(to_spike_tensor(late, 20).sum(0) <= 1)


def test_rate_code_counts_and_random_timing():
    data, _ = make_spiking_dataset(**SMALL, seed=5)
    gen = torch.Generator().manual_seed(0)
    spikes = to_spike_tensor(data, 20, time_code=False, generator=gen)
    assert spikes.shape == (20, 90, 12)
    assert set(spikes.unique().tolist()) <= {0.0, 1.0}
    # spikes at t <= ⌊time⌋ before the permutation: ⌊time⌋ + 1 spikes per unit
    counts = data[..., 0].floor() + 1
    assert torch.equal(spikes.sum(0).double(), counts)
    # the permutation moves spikes off the prefix 0..⌊time⌋ (random timing)
    prefix = torch.arange(20)[:, None, None] <= data[..., 0].floor().long()
    assert not torch.equal(spikes.bool(), prefix)
    # reproducible with a seeded generator; a different seed gives other timings
    again = to_spike_tensor(data, 20, time_code=False, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, spikes)
    other = to_spike_tensor(data, 20, time_code=False, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(other, spikes)
    assert torch.equal(other.sum(0), spikes.sum(0))
    # each bin is equally likely: the mean spike time is centred for full-window units
    full = torch.full((4000, 1, 2), 19.5, dtype=torch.float64)
    full[..., 1] = 0
    half = full.clone()
    half[..., 0] = 9.0  # 10 spikes among 20 bins: P(spike at t) = 1/2 for every t
    rate = to_spike_tensor(half, 20, time_code=False, generator=torch.Generator().manual_seed(2))
    per_bin = rate[:, :, 0].mean(1)
    assert torch.all((per_bin - 0.5).abs() < 5 * math.sqrt(0.25 / 4000))
    assert torch.all(to_spike_tensor(full, 20, time_code=False).sum(0) == 20)


def test_several_spikes_per_unit():
    kw = dict(SMALL, nb_spikes=2)
    data, _ = make_spiking_dataset(**kw, seed=6)
    assert data.shape == (90, 24, 2)
    assert torch.equal(data[0, :, 1], torch.arange(12.0, dtype=torch.float64).repeat(2))
    spikes = to_spike_tensor(data, 20)
    assert spikes.shape == (20, 90, 12)
    total = spikes.sum(0)
    assert torch.all((total >= 1) & (total <= 2))
    same_bin = data[:, :12, 0].floor() == data[:, 12:, 0].floor()
    assert torch.equal(total == 1, same_bin)
    rate = to_spike_tensor(data, 20, time_code=False, generator=torch.Generator().manual_seed(0))
    low = torch.maximum(data[:, :12, 0].floor(), data[:, 12:, 0].floor()) + 1
    assert torch.all(rate.sum(0).double() >= low)


def test_static_classification_set():
    x, y = make_classification_dataset(nb_classes=3, nb_samples_per_class=40, seed=0)
    assert x.shape == (120, 2) and torch.equal(y.bincount(), torch.full((3,), 40))
    x2, y2 = make_classification_dataset(nb_classes=3, nb_samples_per_class=40, seed=0)
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_otpe_preset(monkeypatch):
    assert OTPE_RANDMAN == {"nb_classes": 10, "nb_units": 50, "nb_steps": 50,
                            "dim_manifold": 3, "alpha": 1.0, "nb_spikes": 1,
                            "nb_samples": 1000}
    # the full preset takes seconds: check the pipeline on 8 samples per class
    monkeypatch.setitem(randman.OTPE_RANDMAN, "nb_samples", 8)
    spikes, labels = otpe_preset(seed=0)
    assert spikes.shape == (50, 80, 50)
    assert torch.all(spikes.sum(0) == 1)
    assert torch.equal(labels.bincount(), torch.full((10,), 8))
    spikes2, labels2 = otpe_preset(seed=0)
    assert torch.equal(spikes, spikes2) and torch.equal(labels, labels2)
    rate, rate_labels = otpe_preset(time_code=False, seed=0)
    assert torch.equal(rate_labels, labels)
    assert torch.all(rate.sum(0) >= 1)
    fresh, _ = otpe_preset(seed=0, sample_seed=1)
    assert not torch.equal(fresh, spikes)


def test_invalid_inputs():
    with pytest.raises(ValueError):
        make_spiking_dataset(nb_classes=0)
    with pytest.raises(ValueError):
        to_spike_tensor(torch.zeros(3, 4), 10)
    with pytest.raises(ValueError):
        Randman(3, 2, seed=0).eval_manifold(torch.zeros(4, 3))
