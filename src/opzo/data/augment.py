"""Image augmentations of the training split (random crop, horizontal flip, cutout) and
per-channel normalisation, on uint8 or float image batches (OPZO paper appendix C.3.1).
Below the readers and sources that use them (:mod:`opzo.data.cifar`,
:mod:`opzo.data.sources`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "cutout", "normalize", "random_crop",
           "random_horizontal_flip"]

#: CIFAR-10's per-channel mean and standard deviation of the training images (in [0, 1])
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)


def _as_batch(images: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if images.dim() == 3:
        return images.unsqueeze(0), True
    if images.dim() == 4:
        return images, False
    raise ValueError(f"expected images (N, C, H, W) or (C, H, W), got {tuple(images.shape)}")


def random_crop(
    images: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero-pad each image by ``padding`` pixels on every side, then crop it back to ``H x W``.

    The crop offset is drawn uniformly in ``0 .. 2 * padding`` per image and axis.

    Args:
        images: ``(N, C, H, W)`` or ``(C, H, W)``, any dtype.
        padding: number of zero pixels added on each side (4 for CIFAR).
        generator: source of randomness (torch's global generator when None).

    Returns:
        A new tensor of the same shape and dtype.
    """
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    batch, squeeze = _as_batch(images)
    n, c, h, w = batch.shape
    padded = torch.nn.functional.pad(batch, (padding, padding, padding, padding))
    off_y = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    off_x = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    rows = off_y[:, None] + torch.arange(h)  # (N, H): padded rows kept for each image
    cols = off_x[:, None] + torch.arange(w)  # (N, W)
    width = padded.shape[-1]
    out = torch.gather(padded, 2, rows[:, None, :, None].expand(n, c, h, width))
    out = torch.gather(out, 3, cols[:, None, None, :].expand(n, c, h, w))
    return out.squeeze(0) if squeeze else out


def random_horizontal_flip(
    images: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5
) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``.

    Args:
        images: ``(N, C, H, W)`` or ``(C, H, W)``, any dtype.
        generator: source of randomness (torch's global generator when None).
        p: flip probability.

    Returns:
        A new tensor of the same shape and dtype.
    """
    batch, squeeze = _as_batch(images)
    flip = torch.rand(batch.shape[0], generator=generator) < p
    out = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
    return out.squeeze(0) if squeeze else out


def cutout(
    images: torch.Tensor,
    size: int,
    generator: torch.Generator | None = None,
    fill: float = 0.0,
) -> torch.Tensor:
    """Cutout (DeVries & Taylor, 2017): set one ``size x size`` square per image to ``fill``.

    The square's centre is drawn uniformly over all pixels, so the square may be clipped at the
    border (as in the original method). Use ``size=16`` for CIFAR-10 and ``size=8`` for CIFAR-100
    (:data:`CUTOUT_SIZE`). The original applies cutout after normalisation, where ``fill=0``
    equals the dataset mean; call it on normalised float images to reproduce that.

    Args:
        images: ``(N, C, H, W)`` or ``(C, H, W)``, any dtype.
        size: side of the square in pixels (> 0).
        generator: source of randomness (torch's global generator when None).
        fill: value written into the square.

    Returns:
        A new tensor of the same shape and dtype.
    """
    if size <= 0:
        raise ValueError(f"cutout size must be positive, got {size}")
    batch, squeeze = _as_batch(images)
    n, _, h, w = batch.shape
    cy = torch.randint(0, h, (n,), generator=generator)
    cx = torch.randint(0, w, (n,), generator=generator)
    y0, x0 = cy - size // 2, cx - size // 2
    ys, xs = torch.arange(h), torch.arange(w)
    in_y = (ys[None, :] >= y0[:, None]) & (ys[None, :] < (y0 + size)[:, None])  # (N, H)
    in_x = (xs[None, :] >= x0[:, None]) & (xs[None, :] < (x0 + size)[:, None])  # (N, W)
    mask = (in_y[:, :, None] & in_x[:, None, :])[:, None]  # (N, 1, H, W)
    out = batch.masked_fill(mask, fill)
    return out.squeeze(0) if squeeze else out


def normalize(
    images: torch.Tensor,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
) -> torch.Tensor:
    """Scale uint8 images to [0, 1] and standardise each channel: ``(x / 255 - mean) / std``.

    Args:
        images: uint8 ``(N, C, H, W)`` or ``(C, H, W)`` (floats are taken as already in [0, 1]).
        mean: per-channel means (e.g. :data:`CIFAR10_MEAN`, :data:`CIFAR100_MEAN`).
        std: per-channel stds (e.g. :data:`CIFAR10_STD`, :data:`CIFAR100_STD`).

    Returns:
        float32 tensor of the same shape.
    """
    batch, squeeze = _as_batch(images)
    if len(mean) != batch.shape[1] or len(std) != batch.shape[1]:
        raise ValueError(
            f"need one mean and std per channel ({batch.shape[1]}), got {len(mean)} means and "
            f"{len(std)} stds"
        )
    x = batch.to(torch.float32)
    if batch.dtype == torch.uint8:
        x = x / 255.0
    m = torch.tensor(mean, dtype=torch.float32)[None, :, None, None]
    s = torch.tensor(std, dtype=torch.float32)[None, :, None, None]
    out = (x - m) / s
    return out.squeeze(0) if squeeze else out
