"""Randman: random-manifold spike-timing classification tasks (Zenke & Vogels, 2021).

A reimplementation from the spec ``shared/data/RANDMAN.md`` (fzenke/randman, torch backend;
Zenke & Vogels 2021, Neural Computation 33(4), doi:10.1162/neco_a_01367). Nothing here touches
the global random state: every draw uses a local ``torch.Generator`` / ``numpy`` ``Generator``
seeded from the ``seed`` arguments, so equal seeds give identical data.

One random manifold (:class:`Randman`, spec section 1), for output i and intrinsic dim j::

    g_ij(u) = Σ_{k=0}^{F−1} a_ijk s_k sin(2π (k u f_ijk + φ_ijk)),   s_k = 1 / (|k + 1 − β|^α + 1)
    y_i(x)  = Π_j g_ij(x_j),   x ∈ [0, 1)^D

with ``F = min(ceil(prec^(−1/α)), max_f_cutoff)`` (32 for α = 2, 1000 for α = 1 at prec 1e-3) and
``a, f, φ ~ U[0, 1)``; ``a_ij0 = 0`` unless ``use_bias``.

Spiking set (:func:`make_spiking_dataset`, spec section 3): one manifold per class (and per spike
index), ``y`` min-max standardised per unit over the class, ``y ← (y − min)/(max − min + 1e-7)
∈ [0, 1)``, each unit fires at time ``y · nb_steps · step_frac``. Binning
(:func:`to_spike_tensor`, the OTPE authors' port): time code ``spike[t] = 1 ⇔ t = ⌊time⌋``; rate
code ``spike[t] = 1 ⇔ t ≤ ⌊time⌋`` then a random permutation along time, independently per
sample and unit.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

from ..registry import Options
from .sources import SequenceSource

__all__ = [
    "OTPE_RANDMAN",
    "RANDMAN_SEED",
    "RANDMAN_TRAIN",
    "Randman",
    "make_classification_dataset",
    "make_spiking_dataset",
    "otpe_preset",
    "randman_source",
    "spectrum_size",
    "to_spike_tensor",
]

#: Settings of the OTPE randman experiments (Summe et al.; spec section 4).
OTPE_RANDMAN: dict = {
    "nb_classes": 10,
    "nb_units": 50,
    "nb_steps": 50,
    "dim_manifold": 3,
    "alpha": 1.0,
    "nb_spikes": 1,
    "nb_samples": 1000,
}

_INT64_MAX = np.iinfo(np.int64).max
#: phases evaluated per block (``Randman.chunk_elements``): ~1 MiB of float32, stays in cache
CHUNK_ELEMENTS = 1 << 18


def spectrum_size(alpha: float, prec: float = 1e-3, max_f_cutoff: int = 1000) -> int:
    """Number of frequencies ``F = int(min(ceil(prec^(−1/α)), max_f_cutoff))`` (spec 1)."""
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if not 0 < prec < 1:
        raise ValueError(f"prec must be in (0, 1), got {prec}")
    # round before ceil so that e.g. 1e-3 ** -1 = 1000.0000000000001 gives 1000, not 1001
    raw = round(prec ** (-1.0 / alpha), 9)
    return int(min(math.ceil(raw), max_f_cutoff))


def _torch_generator(seed: int | None) -> torch.Generator:
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen


class Randman:
    """One random manifold ``M: [0, 1)^D → R^E`` (spec section 1, torch-version spectrum).

    Args:
        embedding_dim: E, the number of outputs (units).
        manifold_dim: D, the intrinsic dimension.
        alpha: smoothness: spectrum ``s_k = 1/(|k + 1 − β|^α + 1)``.
        beta: peak of the spectrum.
        prec, max_f_cutoff: set the number of frequencies F (:func:`spectrum_size`).
        use_bias: keep the constant (k = 0) term; otherwise ``a_ij0 = 0``.
        seed: seeds a local generator for the parameters (``None``: fresh entropy).
        dtype: dtype of the evaluation (float32 is fast; parameters are drawn in float64).
    """

    def __init__(
        self,
        embedding_dim: int,
        manifold_dim: int,
        alpha: float = 2.0,
        beta: float = 0.0,
        prec: float = 1e-3,
        max_f_cutoff: int = 1000,
        use_bias: bool = False,
        seed: int | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if embedding_dim < 1 or manifold_dim < 1:
            raise ValueError("embedding_dim and manifold_dim must be >= 1")
        self.embedding_dim = int(embedding_dim)
        self.manifold_dim = int(manifold_dim)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.prec = float(prec)
        self.max_f_cutoff = int(max_f_cutoff)
        self.use_bias = bool(use_bias)
        self.seed = seed
        self.dtype = dtype
        #: phases evaluated per block in :meth:`eval_random_function` (memory, not results)
        self.chunk_elements = CHUNK_ELEMENTS
        self.f_cutoff = spectrum_size(self.alpha, self.prec, self.max_f_cutoff)
        gen = _torch_generator(seed)
        # P ~ U[0,1) with shape (E, D, 3, F): slots amplitude a, frequency scale f, phase φ
        self.params = torch.rand(
            self.embedding_dim, self.manifold_dim, 3, self.f_cutoff,
            generator=gen, dtype=torch.float64,
        )
        if not self.use_bias:
            self.params[:, :, 0, 0] = 0.0
        k = torch.arange(self.f_cutoff, dtype=torch.float64)
        self.spectrum = 1.0 / ((k + 1.0 - self.beta).abs() ** self.alpha + 1.0)
        # sin(2π(k f u + φ)) = sin(u · ω + θ): ω = 2π k f, θ = 2π φ; weights a s
        amp, freq, phase = self.params.unbind(2)
        self._weight = (amp * self.spectrum).to(dtype)
        self._omega = (2.0 * math.pi * k * freq).to(dtype)
        self._theta = (2.0 * math.pi * phase).to(dtype)

    def eval_random_function(self, x: Tensor, j: int) -> Tensor:
        """``g_ij(x_j)`` for every output i: shape (n, E), x of shape (n,) (spec section 1)."""
        x = x.to(self.dtype)
        n = x.shape[0]
        emb, nf = self.embedding_dim, self.f_cutoff
        omega, theta, weight = self._omega[:, j], self._theta[:, j], self._weight[:, j]
        out = torch.empty(n, emb, dtype=self.dtype)
        chunk = max(1, self.chunk_elements // (emb * nf))
        for start in range(0, n, chunk):
            xs = x[start : start + chunk]
            phase = torch.addcmul(theta, xs[:, None, None], omega)  # (c, E, F)
            phase.sin_()
            torch.linalg.vecdot(phase, weight, out=out[start : start + xs.shape[0]])
        return out

    def eval_manifold(self, x: Tensor) -> Tensor:
        """``y = M(x)``, ``y_i = Π_j g_ij(x_j)``: x (n, D) in [0, 1) → y (n, E)."""
        if x.dim() != 2 or x.shape[1] != self.manifold_dim:
            raise ValueError(f"x must have shape (n, {self.manifold_dim}), got {tuple(x.shape)}")
        y = self.eval_random_function(x[:, 0], 0)
        for j in range(1, self.manifold_dim):
            y.mul_(self.eval_random_function(x[:, j], j))
        return y

    def get_random_manifold_samples(
        self, nb_samples: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draw ``x ~ U[0,1)^(n, D)`` (float64) and return ``(x, M(x))``."""
        if generator is None:
            generator = _torch_generator(None)
        x = torch.rand(nb_samples, self.manifold_dim, generator=generator, dtype=torch.float64)
        return x, self.eval_manifold(x)


def _standardise(y: Tensor) -> Tensor:
    """Min-max per unit over the samples: ``(y − min)/(max − min + 1e-7) ∈ [0, 1)`` (float64)."""
    y = y.to(torch.float64)
    lo = y.amin(0)
    return (y - lo) / (y.amax(0) - lo + 1e-7)


def make_spiking_dataset(
    nb_classes: int = 10,
    nb_units: int = 100,
    nb_steps: int = 100,
    step_frac: float = 1.0,
    dim_manifold: int = 2,
    nb_spikes: int = 1,
    nb_samples: int = 1000,
    alpha: float = 2.0,
    shuffle: bool = True,
    classification: bool = True,
    seed: int | None = None,
    sample_seed: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Spiking Randman classification set (spec section 3, from the randman notebook).

    For each class k: ``x ~ U[0,1)^(nb_samples, D)`` shared by its ``nb_spikes`` manifolds;
    for each spike index i a :class:`Randman` (seed ``randman_seeds[k, i]``) gives
    ``y = M(x)``, min-max standardised per unit over the class to [0, 1); event
    ``(time = y[n, u], unit = u)``. Classes are concatenated (and shuffled), then
    ``time *= nb_steps · step_frac``.

    Args:
        seed: seeds the manifolds (the task), and the samples unless ``sample_seed`` is given.
        sample_seed: seeds x and the shuffle separately: same ``seed`` and a new
            ``sample_seed`` gives fresh samples of the same manifolds (as the OTPE scripts
            do). Note that each class is min-max standardised over its own draw, so spike
            times of two draws are not on the same scale: a classifier fitted on one draw
            scores ~34% on another (10 classes, α = 1), against ~99.9% on held-out samples of
            the same draw (``benchmarks/randman_draws.py``). Split one draw for a train/test
            pair.

    Returns:
        ``data`` float64 of shape ``(N, nb_units · nb_spikes, 2)`` = [time, unit] with
        ``N = nb_classes · nb_samples``, column ``i · nb_units + u`` holding spike i of unit u;
        and int64 labels ``(N,)`` (or the intrinsic x, ``(N, D)`` float64, when
        ``classification`` is False).
    """
    for name, value in (("nb_classes", nb_classes), ("nb_units", nb_units),
                        ("nb_steps", nb_steps), ("dim_manifold", dim_manifold),
                        ("nb_spikes", nb_spikes), ("nb_samples", nb_samples)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    rng = np.random.default_rng(seed)
    randman_seeds = rng.integers(0, _INT64_MAX, size=(nb_classes, nb_spikes))
    sample_rng = rng if sample_seed is None else np.random.default_rng(sample_seed)
    gen = _torch_generator(int(sample_rng.integers(0, _INT64_MAX)))

    times, targets = [], []
    for k in range(nb_classes):
        x = torch.rand(nb_samples, dim_manifold, generator=gen, dtype=torch.float64)
        per_spike = []
        for i in range(nb_spikes):
            man = Randman(nb_units, dim_manifold, alpha=alpha, seed=int(randman_seeds[k, i]))
            per_spike.append(_standardise(man.eval_manifold(x)))
        times.append(torch.cat(per_spike, dim=1))
        targets.append(torch.full((nb_samples,), k, dtype=torch.int64) if classification else x)
    time = torch.cat(times) * (nb_steps * step_frac)
    target = torch.cat(targets)
    units = torch.arange(nb_units, dtype=torch.float64).repeat(nb_spikes)
    data = torch.stack([time, units.expand_as(time)], dim=-1)
    if shuffle:
        order = torch.randperm(data.shape[0], generator=gen)
        data, target = data[order], target[order]
    return data, target


def to_spike_tensor(
    data: Tensor,
    nb_steps: int,
    time_code: bool = True,
    generator: torch.Generator | None = None,
    nb_units: int | None = None,
) -> Tensor:
    """Bin Randman events into spikes ``(T, N, units)`` float32 (spec section 3, OTPE port).

    ``data`` (N, events, 2) = [time, unit] with times already scaled by ``nb_steps · step_frac``
    (as :func:`make_spiking_dataset` returns them), so the bin of an event is ``⌊time⌋``, the
    ``t = ⌊y · nb_steps⌋`` of the spec.

    * Time code: ``spike[t, n, u] = 1 ⇔ t = ⌊time⌋``: with one spike per unit, each unit fires
      exactly once. Events of a unit falling in the same bin merge into one spike.
    * Rate code: ``spike[t, n, u] = 1 ⇔ t ≤ ⌊time⌋`` (``min(⌊time⌋ + 1, T)`` spikes), then the
      T bins are permuted at random, independently per sample and unit (``generator``), so the
      count carries the value and the timing is random. Several events of a unit: union.

    Events with ``⌊time⌋ ≥ nb_steps`` (``step_frac > 1``) fall outside the window: dropped by
    the time code, a full train (T spikes) in the rate code.
    """
    if data.dim() != 3 or data.shape[-1] != 2:
        raise ValueError(f"data must have shape (N, events, 2), got {tuple(data.shape)}")
    times, unit_ids = data[..., 0], data[..., 1].long()
    if times.numel() and times.min() < 0:
        raise ValueError("spike times must be >= 0")
    n, n_events = times.shape
    if nb_units is None:
        nb_units = int(unit_ids.max()) + 1 if unit_ids.numel() else 0
    bins = times.floor().long()
    out = torch.zeros(nb_steps, n, nb_units, dtype=torch.float32)
    sample_idx = torch.arange(n).unsqueeze(1).expand(n, n_events)
    if time_code:
        inside = bins < nb_steps
        out[bins[inside], sample_idx[inside], unit_ids[inside]] = 1.0
        return out
    counts = (bins + 1).clamp_(max=nb_steps)  # spikes at t = 0..⌊time⌋
    for start in range(0, n, 1024):  # bounded memory: keys (chunk, events, T)
        stop = min(n, start + 1024)
        keys = torch.rand(stop - start, n_events, nb_steps, generator=generator)
        # perm[..., t] is a uniformly random permutation of 0..T-1, so {t : perm[t] < count}
        # is the train t <= ⌊time⌋ permuted at random along time
        fired = keys.argsort(dim=-1) < counts[start:stop, :, None]  # (c, events, T)
        rows = torch.arange(stop - start).unsqueeze(1).expand(-1, n_events)
        block = torch.zeros(stop - start, nb_units, nb_steps, dtype=torch.float32)
        block.index_put_((rows, unit_ids[start:stop]), fired.float(), accumulate=True)
        out[:, start:stop] = block.clamp_(max=1.0).permute(2, 0, 1)
    return out


def make_classification_dataset(
    nb_classes: int = 2,
    nb_samples_per_class: int = 1000,
    alpha: float = 2.0,
    dim_manifold: int = 1,
    dim_embedding_space: int = 2,
    seed: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Static Randman classification set (spec section 2): one manifold per class.

    Returns ``X`` float32 ``(nb_classes · nb_samples_per_class, dim_embedding_space)`` (raw
    ``M(x)``, not standardised) and int64 labels, shuffled.
    """
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, _INT64_MAX, size=nb_classes)
    gen = _torch_generator(int(rng.integers(0, _INT64_MAX)))
    xs, ys = [], []
    for k in range(nb_classes):
        man = Randman(dim_embedding_space, dim_manifold, alpha=alpha, seed=int(seeds[k]))
        xs.append(man.get_random_manifold_samples(nb_samples_per_class, generator=gen)[1])
        ys.append(torch.full((nb_samples_per_class,), k, dtype=torch.int64))
    data, labels = torch.cat(xs), torch.cat(ys)
    order = torch.randperm(data.shape[0], generator=gen)
    return data[order], labels[order]


def otpe_preset(
    time_code: bool = True, seed: int = 0, sample_seed: int | None = None
) -> tuple[Tensor, Tensor]:
    """The OTPE Randman task (:data:`OTPE_RANDMAN`: 10 classes, 50 units, 50 steps, manifold
    dim 3, α = 1, 1000 samples per class), binned: ``(spikes (50, 10000, 50) float32, labels)``.

    ``seed`` fixes the task (manifolds) and, unless ``sample_seed`` is given, the samples; the
    rate code's permutations are seeded from the same seeds.
    """
    cfg = OTPE_RANDMAN
    data, labels = make_spiking_dataset(**cfg, seed=seed, sample_seed=sample_seed)
    perm_seed = seed if sample_seed is None else sample_seed
    gen = _torch_generator(int(np.random.default_rng([perm_seed, 1]).integers(0, _INT64_MAX)))
    spikes = to_spike_tensor(data, cfg["nb_steps"], time_code=time_code, generator=gen,
                             nb_units=cfg["nb_units"])
    return spikes, labels


#: ``opzo train``'s Randman task (the OTPE paper's) is generated from this seed, 1000 samples
#: per class; the shuffled draw is split into the first 8000 samples for training and the last
#: 2000 for testing. (A second draw with another sample seed is not a test set of the same
#: task: each class is min-max standardised over its own draw, which moves its spike times.)
RANDMAN_SEED, RANDMAN_TRAIN = 0, 8000


@functools.lru_cache(maxsize=2)
def otpe_task(time_code: bool) -> tuple[Tensor, Tensor]:
    """The OTPE paper's Randman task of :data:`RANDMAN_SEED`, time- or rate-coded, as
    ``(spikes (T, N, F), labels (N,))``; generated once per code and process."""
    return otpe_preset(time_code=time_code, seed=RANDMAN_SEED)


def randman_source(cfg: Options, split: str) -> SequenceSource:
    """The OTPE paper's Randman task (:func:`otpe_preset` with :data:`RANDMAN_SEED`),
    time-coded for ``cfg.dataset == "randman-time"``, else rate-coded: the first
    :data:`RANDMAN_TRAIN` samples are the training split, the rest the test split. Generated
    once per code and process (cached)."""
    spikes, labels = otpe_task(cfg.dataset == "randman-time")
    part = slice(None, RANDMAN_TRAIN) if split == "train" else slice(RANDMAN_TRAIN, None)
    return SequenceSource(spikes[:, part], labels[part], classes=OTPE_RANDMAN["nb_classes"])
