"""Input encoders (direct current, rate, latency) and deterministic, resumable batch iteration."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from .arrays import ArrayDataset
from .errors import DatasetError

__all__ = [
    "ENCODER_NAMES",
    "NORMALIZATION",
    "Encoder",
    "batch_generator",
    "batch_seed",
    "direct",
    "epoch_permutation",
    "epoch_seed",
    "iterate_batches",
    "latency",
    "make_encoder",
    "normalization_stats",
    "num_batches",
    "rate",
]

#: Names accepted by :func:`make_encoder`.
ENCODER_NAMES: tuple[str, ...] = ("direct", "rate", "latency")

#: Global pixel mean and std (pixels scaled to [0, 1]) used by direct encoding.
NORMALIZATION: dict[str, tuple[float, float]] = {
    "mnist": (0.1307, 0.3081),
    "embedded-mnist": (0.1307, 0.3081),
    "fashion-mnist": (0.2860, 0.3530),
}


def normalization_stats(dataset_name: str) -> tuple[float, float]:
    """Return ``(mean, std)`` for a dataset name (see :data:`NORMALIZATION`)."""
    name = dataset_name.strip().lower().replace("_", "-")
    if name not in NORMALIZATION:
        raise DatasetError(
            f"no normalisation statistics for dataset {dataset_name!r}; known: "
            f"{', '.join(NORMALIZATION)}"
        )
    return NORMALIZATION[name]


def _flatten_uint8(images: torch.Tensor) -> torch.Tensor:
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images (0..255), got dtype {images.dtype}")
    if images.dim() < 2:
        raise ValueError(f"expected a batch of images (B, ...), got shape {tuple(images.shape)}")
    return images.reshape(images.shape[0], -1)


def direct(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Direct-current encoding: normalised pixels, fed unchanged at every time step.

    Args:
        images: uint8 tensor ``(B, H, W)`` (any shape ``(B, ...)``).
        mean: global pixel mean of the dataset, pixels scaled to [0, 1].
        std: global pixel std of the dataset, pixels scaled to [0, 1].

    Returns:
        float32 tensor ``(B, H*W)`` equal to ``(images / 255 - mean) / std``; the network treats it
        as a static input current over all T steps.
    """
    if std <= 0:
        raise ValueError(f"std must be positive, got {std}")
    x = _flatten_uint8(images).to(torch.float32).div_(255.0)
    return x.sub_(mean).div_(std)


def rate(images: torch.Tensor, T: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rate (Bernoulli) encoding: at each step a pixel spikes with probability ``pixel / 255``.

    Args:
        images: uint8 tensor ``(B, H, W)`` (any shape ``(B, ...)``).
        T: number of time steps.
        generator: optional generator (on the images' device) for reproducible spikes.

    Returns:
        float32 tensor ``(T, B, H*W)`` of zeros and ones.
    """
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    p = _flatten_uint8(images).to(torch.float32).div_(255.0)
    u = torch.rand((T, *p.shape), generator=generator, device=p.device, dtype=torch.float32)
    return (u < p).to(torch.float32)


def latency(images: torch.Tensor, T: int, tau: float = 20.0, theta: float = 0.2) -> torch.Tensor:
    """Latency (time-to-first-spike) encoding: every pixel spikes at most once, brighter earlier.

    With ``x = pixel / 255`` the spike time in steps of Δt is (LocalZO paper, appendix B.3,
    after SparseGrad, Perez-Nieves & Goodman 2021)

        T(x) = τ_eff · ln(x / (x − θ))   for x > θ;   no spike for x ≤ θ,

    and the pixel spikes at step ⌊T(x)⌋ if that step is < ``T``. The paper's Fashion-MNIST
    setting uses τ_eff = 20 ms, θ = 0.2, Δt = 1 ms, T = 100 (so ``tau=20`` steps).

    Returns:
        float32 tensor ``(T, B, H*W)`` of zeros and ones, at most one 1 per pixel.
    """
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    if not tau > 0:
        raise ValueError(f"latency time constant tau must be > 0, got {tau}")
    if not 0.0 <= theta < 1.0:
        raise ValueError(f"latency threshold theta must lie in [0, 1), got {theta}")
    x = _flatten_uint8(images).to(torch.float64).div_(255.0)
    fires = x > theta
    safe = torch.where(fires, x, torch.ones_like(x))
    step = torch.floor(tau * torch.log(safe / (safe - theta)))
    fires &= step < T
    out = torch.zeros((T, *x.shape), dtype=torch.float32, device=x.device)
    b, f = fires.nonzero(as_tuple=True)
    out[step[b, f].long(), b, f] = 1.0
    return out


class Encoder:
    """A named input encoder.

    Attributes:
        name: ``"direct"``, ``"rate"`` or ``"latency"``.
        static: True if the output is one ``(B, F)`` tensor used at every step (direct), False if
            it is a ``(T, B, F)`` sequence (rate, latency).
        mean: normalisation mean (direct only).
        std: normalisation std (direct only).
    """

    def __init__(self, name: str, mean: float = 0.0, std: float = 1.0, tau: float = 20.0,
                 theta: float = 0.2) -> None:
        if name not in ENCODER_NAMES:
            raise ValueError(f"unknown encoder {name!r}; allowed names: {', '.join(ENCODER_NAMES)}")
        self.name = name
        self.static = name == "direct"
        self.mean = float(mean)
        self.std = float(std)
        self.tau = float(tau)
        self.theta = float(theta)

    def __call__(
        self, images: torch.Tensor, T: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Encode uint8 images: ``(B, F)`` if :attr:`static` else ``(T, B, F)``."""
        if self.static:
            return direct(images, self.mean, self.std)
        if self.name == "latency":
            return latency(images, T, self.tau, self.theta)
        return rate(images, T, generator)

    def __repr__(self) -> str:
        if self.static:
            return f"Encoder(name={self.name!r}, mean={self.mean}, std={self.std})"
        if self.name == "latency":
            return f"Encoder(name='latency', tau={self.tau}, theta={self.theta})"
        return f"Encoder(name={self.name!r})"


def make_encoder(name: str, dataset_name: str, tau: float = 20.0, theta: float = 0.2) -> Encoder:
    """Build an encoder by name (``"direct"``, ``"rate"`` or ``"latency"``) for a dataset.

    The dataset name selects the normalisation statistics of direct encoding; rate encoding
    does not use it.

    Raises:
        ValueError: unknown encoder name (the message lists the allowed names).
        DatasetError: direct encoding for a dataset without known statistics.
    """
    key = name.strip().lower()
    if key not in ENCODER_NAMES:
        raise ValueError(f"unknown encoder {name!r}; allowed names: {', '.join(ENCODER_NAMES)}")
    if key == "direct":
        mean, std = normalization_stats(dataset_name)
        return Encoder("direct", mean, std)
    return Encoder(key, tau=tau, theta=theta)


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of epoch ``epoch``'s shuffle: ``seed * 1000003 + epoch`` (modulo 2**64)."""
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    return (seed * 1000003 + epoch) % (1 << 64)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of epoch ``epoch``: reproducible from ``(seed, epoch)`` alone.

    Uses ``torch.randperm(n)`` with ``torch.Generator().manual_seed(seed * 1000003 + epoch)``,
    so a resumed run sees exactly the same order as an uninterrupted one.
    """
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return torch.randperm(n, generator=generator)


#: Mixed into :func:`batch_seed` so that its streams differ from every other use of the seed.
_BATCH_SEED_SALT = 0x0A06


def batch_seed(seed: int, epoch: int, batch: int) -> int:
    """Seed of the random draws that belong to one training batch (data augmentation).

    A function of ``(seed, epoch, batch)`` alone, hashed with :class:`numpy.random.SeedSequence`
    so that neighbouring batches and epochs get unrelated streams. A run resumed mid-epoch
    draws for its remaining batches exactly what the uninterrupted run drew, whatever else
    (noise, dropout) consumed torch's global generator in between; and every method sees
    the same augmented images for the same seed.
    """
    if seed < 0 or epoch < 0 or batch < 0:
        raise ValueError(
            f"seed, epoch and batch must be >= 0, got seed={seed}, epoch={epoch}, batch={batch}"
        )
    state = np.random.SeedSequence([seed, epoch, batch, _BATCH_SEED_SALT]).generate_state(
        1, np.uint64
    )
    return int(state[0])


def batch_generator(seed: int, epoch: int, batch: int) -> torch.Generator:
    """A fresh CPU :class:`torch.Generator` seeded with :func:`batch_seed`."""
    return torch.Generator().manual_seed(batch_seed(seed, epoch, batch))


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """Number of batches :func:`iterate_batches` yields for ``n`` samples (from batch 0)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return n // batch_size if drop_last else -(-n // batch_size)


def iterate_batches(
    dataset: ArrayDataset,
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    start_batch: int = 0,
    permutation: torch.Tensor | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(images_uint8 (B, 28, 28), labels int64 (B,))`` batches of one epoch.

    The order is: ``permutation`` if given; else ``torch.randperm(n, generator=generator)`` if
    ``shuffle``; else the dataset order. To resume epoch ``k`` of a run seeded with ``seed`` at
    batch ``b``, pass ``permutation=epoch_permutation(len(dataset), seed, k), start_batch=b``
    (or ``generator=torch.Generator().manual_seed(epoch_seed(seed, k))`` with ``shuffle=True``);
    the batches yielded are exactly the tail of the uninterrupted epoch.

    Args:
        dataset: the dataset.
        batch_size: samples per batch (the last batch may be smaller unless ``drop_last``).
        shuffle: shuffle with ``generator`` (ignored when ``permutation`` is given).
        generator: CPU generator for the shuffle; None uses torch's global generator.
        drop_last: drop a final incomplete batch.
        start_batch: number of batches of this epoch to skip (already done).
        permutation: explicit order, a permutation of ``range(len(dataset))``.
    """
    n = len(dataset)
    total = num_batches(n, batch_size, drop_last)
    if start_batch < 0:
        raise ValueError(f"start_batch must be >= 0, got {start_batch}")
    if permutation is not None:
        order: torch.Tensor | None = torch.as_tensor(permutation, dtype=torch.int64)
        if order.shape != (n,):
            raise ValueError(f"permutation must have shape ({n},), got {tuple(order.shape)}")
    elif shuffle:
        order = torch.randperm(n, generator=generator)
    else:
        order = None
    for b in range(start_batch, total):
        lo, hi = b * batch_size, min((b + 1) * batch_size, n)
        if order is None:
            yield dataset.images[lo:hi], dataset.labels[lo:hi]
        else:
            idx = order[lo:hi]
            yield dataset.images[idx], dataset.labels[idx]
