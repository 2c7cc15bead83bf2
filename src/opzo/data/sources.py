"""Input sources: a dataset split turned into batches of network inputs ``(x, y)``.

Four kinds feed the same training loop:

* :class:`ImageSource` — static grey images (MNIST, Fashion-MNIST, the embedded subset) passed
  through an :class:`~opzo.data.encoders.Encoder`: ``x`` is (B, F) for direct-current coding
  (the same input at every step) or (T, B, F) for rate coding.
* :class:`ColorImageSource` — colour images (CIFAR-10/100) with per-channel normalisation and,
  on the training split, random crop, horizontal flip and cutout drawn per batch.
* :class:`FrameSource` — event datasets whose samples are already (T, C, H, W) frames
  (N-MNIST, DVS128 Gesture, CIFAR10-DVS) or (T, F) spike counts (SHD, SSC): ``x`` is
  (T, B, C·H·W) or (T, B, F), read from disk batch by batch.
* :class:`SequenceSource` — spike sequences held in memory as one (T, N, F) tensor (Randman):
  ``x`` is (T, B, F).

Inputs are delivered flattened (F = C·H·W, in C, H, W order); each source's ``input_shape``
says what they are, (1, H, W) for grey images, (3, H, W) for colour images, (C, H, W) for
frames, (F,) for vectors, and the network is built for it (a conv net views its flat input as
(B, C, H, W)).

Every ``batches`` takes the epoch: sources that augment draw their random parameters for batch
``b`` of epoch ``e`` from a generator seeded with ``(seed, e, b)``
(:func:`~opzo.data.encoders.batch_seed`), so a run resumed mid-epoch sees the same inputs as an
uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Protocol

import torch
from torch import Tensor

from .arrays import ArrayDataset
from .augment import cutout, normalize, random_crop, random_horizontal_flip
from .encoders import Encoder, batch_generator, iterate_batches, num_batches


class FrameDataset(Protocol):
    """What :class:`FrameSource` needs: length, ``(frames, label)`` items, the labels.

    A dataset that augments its items (:class:`~opzo.data.neuromorphic.CIFAR10DVS` with
    ``augment=True``) draws from its ``generator`` attribute, which :class:`FrameSource`
    replaces before every training batch when given an ``augment_seed``.
    """

    targets: list[int]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Tensor, int]: ...


@dataclass
class ImageSource:
    """Images plus their encoder."""

    data: ArrayDataset
    encoder: Encoder

    @property
    def num_inputs(self) -> int:
        return int(self.data.images[0].numel())

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(1, H, W): one grey channel."""
        return (1, *(int(d) for d in self.data.images.shape[1:]))

    @property
    def classes(self) -> int:
        return self.data.classes

    def __len__(self) -> int:
        return len(self.data)

    def head(self, n: int) -> ImageSource:
        """The first ``n`` samples."""
        return self.part(0, n)

    def labels_head(self, n: int) -> Tensor:
        """The labels of the first ``n`` samples."""
        return self.data.labels[:n]

    def part(self, lo: int, hi: int) -> ImageSource:
        """Samples ``lo:hi`` (a data-parallel process's share of an evaluation)."""
        d = self.data
        return ImageSource(ArrayDataset(d.images[lo:hi], d.labels[lo:hi], d.name, d.classes),
                           self.encoder)

    def batches(self, batch_size: int, T: int, permutation: Tensor | None = None,
                start_batch: int = 0, epoch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Encoded batches in ``permutation`` order from ``start_batch`` (``epoch`` unused:
        rate spikes come from torch's global generator, which a checkpoint saves)."""
        for images, labels in iterate_batches(self.data, batch_size, permutation=permutation,
                                              start_batch=start_batch):
            yield self.encoder(images, T), labels


@dataclass
class ColorImageSource:
    """Colour images (CIFAR-10/100) with per-channel normalisation and optional augmentation.

    The OPZO paper's preprocessing (appendix C.3.1): normalise with the dataset's mean and std
    and, for training, random crop (zero padding ``crop_padding``), horizontal flip and cutout
    (DeVries & Taylor 2017, a ``cutout_size`` square). With the ``direct`` encoder the input is
    the normalised pixels, ``x`` (B, 3·H·W), a real-valued current at every step; the order is
    crop, flip (uint8 pixels, so padding is black), normalise, cutout (filled with 0, the
    channel mean, as in the original cutout). With ``rate`` / ``latency`` the crop, flip and
    cutout (black square) act on the pixels, which are then encoded, ``x`` (T, B, 3·H·W).

    Augmentation is on when ``augment_seed`` is set: batch ``b`` of epoch ``e`` draws its crop
    offsets, flips and cutout centres, in that order, from
    :func:`~opzo.data.encoders.batch_generator` ``(augment_seed, e, b)``.

    Attributes:
        images: uint8 ``(N, C, H, W)``.
        labels: int64 ``(N,)``.
        classes: number of classes.
        encoder: the image encoder; for ``direct`` only its name is used (per-channel
            ``mean`` / ``std`` replace its global statistics).
        mean: per-channel means of the pixels scaled to [0, 1].
        std: per-channel stds.
    """

    images: Tensor
    labels: Tensor
    classes: int
    encoder: Encoder
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment_seed: int | None = None
    crop_padding: int = 4
    cutout_size: int = 16

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"need one label per image ({self.images.shape[0]}), got labels "
                             f"of shape {tuple(self.labels.shape)}")

    @property
    def num_inputs(self) -> int:
        return int(self.images[0].numel())

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, H, W), e.g. (3, 32, 32)."""
        return tuple(int(d) for d in self.images.shape[1:])

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def head(self, n: int) -> ColorImageSource:
        """The first ``n`` samples (same encoding and augmentation)."""
        return self.part(0, n)

    def labels_head(self, n: int) -> Tensor:
        """The labels of the first ``n`` samples."""
        return self.labels[:n]

    def part(self, lo: int, hi: int) -> ColorImageSource:
        """Samples ``lo:hi`` (same encoding and augmentation)."""
        return replace(self, images=self.images[lo:hi], labels=self.labels[lo:hi])

    def encode(self, images: Tensor, T: int, generator: torch.Generator | None = None
               ) -> Tensor:
        """Augment (when ``generator`` is given) and encode one batch of uint8 images."""
        if generator is not None:
            images = random_crop(images, self.crop_padding, generator)
            images = random_horizontal_flip(images, generator)
        if self.encoder.static:
            x = normalize(images, self.mean, self.std)
            if generator is not None:
                x = cutout(x, self.cutout_size, generator)
            return x.flatten(1)
        if generator is not None:
            images = cutout(images, self.cutout_size, generator)
        return self.encoder(images, T)

    def batches(self, batch_size: int, T: int, permutation: Tensor | None = None,
                start_batch: int = 0, epoch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches in ``permutation`` order from ``start_batch``; batch ``b`` is augmented
        with the generator of ``(augment_seed, epoch, b)``."""
        n = len(self)
        order = torch.arange(n, device="cpu") if permutation is None else permutation
        for b in range(start_batch, num_batches(n, batch_size)):
            idx = order[b * batch_size:(b + 1) * batch_size]
            generator = (batch_generator(self.augment_seed, epoch, b)
                         if self.augment_seed is not None else None)
            yield self.encode(self.images[idx], T, generator), self.labels[idx]


@dataclass
class FrameSource:
    """Frames of an event dataset; ``indices`` restricts it to a subset.

    With ``augment_seed`` (training split of an augmenting dataset) the dataset's
    ``generator`` is replaced by :func:`~opzo.data.encoders.batch_generator` ``(augment_seed,
    epoch, batch)`` before each batch is read, so its random crops depend on the position in
    the run only.
    """

    data: FrameDataset
    classes: int
    indices: Tensor | None = None
    augment_seed: int | None = None

    def __post_init__(self) -> None:
        if self.augment_seed is not None and not hasattr(self.data, "generator"):
            raise ValueError(f"augment_seed needs a dataset that draws its augmentation from a "
                             f"'generator' attribute; {type(self.data).__name__} has none")
        frames, _ = self.data[int(self._index()[0])]
        self._shape = tuple(frames.shape)  # (T, C, H, W)

    def _index(self) -> Tensor:
        return (self.indices if self.indices is not None
                else torch.arange(len(self.data), device="cpu"))

    @property
    def num_inputs(self) -> int:
        n = 1
        for d in self._shape[1:]:
            n *= d
        return n

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, H, W) of one frame."""
        return tuple(int(d) for d in self._shape[1:])

    def __len__(self) -> int:
        return len(self._index())

    def head(self, n: int) -> FrameSource:
        return self.part(0, n)

    def labels_head(self, n: int) -> Tensor:
        """The labels of the first ``n`` samples (from the dataset's targets: no reading)."""
        targets = self.data.targets
        return torch.tensor([int(targets[int(i)]) for i in self._index()[:n]],
                            dtype=torch.int64, device="cpu")

    def part(self, lo: int, hi: int) -> FrameSource:
        """Samples ``lo:hi`` of this source's order."""
        return FrameSource(self.data, self.classes, self._index()[lo:hi], self.augment_seed)

    def batches(self, batch_size: int, T: int, permutation: Tensor | None = None,
                start_batch: int = 0, epoch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        if T != self._shape[0]:
            raise ValueError(f"the frames hold {self._shape[0]} time steps, not T={T}")
        index = self._index()
        order = index if permutation is None else index[permutation]
        chunks = order[start_batch * batch_size:].split(batch_size)
        for b, chunk in enumerate(chunks, start=start_batch):
            if self.augment_seed is not None:
                generator = batch_generator(self.augment_seed, epoch, b)
                self.data.generator = generator  # type: ignore[attr-defined]
            items = [self.data[int(i)] for i in chunk]
            frames = torch.stack([f for f, _ in items]).to(torch.float32)  # (B, T, C, H, W)
            x = frames.flatten(2).transpose(0, 1).contiguous()  # (T, B, C·H·W)
            yield x, torch.tensor([label for _, label in items], dtype=torch.int64,
                                  device="cpu")


@dataclass
class SequenceSource:
    """Spike sequences in memory: ``spikes`` (T, N, F) and ``labels`` (N,)."""

    spikes: Tensor
    labels: Tensor
    classes: int

    def __post_init__(self) -> None:
        if self.spikes.dim() != 3 or self.spikes.shape[1] != self.labels.shape[0]:
            raise ValueError(f"spikes must be (T, N, F) with N = {self.labels.shape[0]} labels; "
                             f"got shape {tuple(self.spikes.shape)}")

    @property
    def num_inputs(self) -> int:
        return int(self.spikes.shape[2])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(F,): a vector of input neurons."""
        return (self.num_inputs,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def head(self, n: int) -> SequenceSource:
        return self.part(0, n)

    def labels_head(self, n: int) -> Tensor:
        """The labels of the first ``n`` samples."""
        return self.labels[:n]

    def part(self, lo: int, hi: int) -> SequenceSource:
        """Samples ``lo:hi``."""
        return SequenceSource(self.spikes[:, lo:hi], self.labels[lo:hi], self.classes)

    def batches(self, batch_size: int, T: int, permutation: Tensor | None = None,
                start_batch: int = 0, epoch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        if T != self.spikes.shape[0]:
            raise ValueError(f"the sequences hold {self.spikes.shape[0]} time steps, not T={T}: "
                             f"set T={self.spikes.shape[0]}")
        order = torch.arange(len(self), device="cpu") if permutation is None else permutation
        for chunk in order[start_batch * batch_size:].split(batch_size):
            yield self.spikes[:, chunk].contiguous(), self.labels[chunk]


class Source(Protocol):
    """What the training loop, evaluation and the run folder need of a dataset split; the
    four sources above implement it, and a dataset's factory in :data:`opzo.data.DATASETS`
    returns one."""

    @property
    def input_shape(self) -> tuple[int, ...]:
        """What one sample is: (C, H, W) for images and frames, (F,) for vectors."""
        ...

    @property
    def classes(self) -> int: ...

    def __len__(self) -> int: ...

    def head(self, n: int) -> Source:
        """The first ``n`` samples (``--limit-train`` / ``--limit-test``)."""
        ...

    def part(self, lo: int, hi: int) -> Source:
        """Samples lo..hi−1 (one process's share of an evaluation)."""
        ...

    def labels_head(self, n: int) -> Tensor:
        """The labels of the first ``n`` samples (the run folder's data fingerprint)."""
        ...

    def batches(self, batch_size: int, T: int, permutation: Tensor | None = None,
                start_batch: int = 0, epoch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """``(x, labels)`` batches in ``permutation`` order from ``start_batch``; inputs
        flattened, (B, F) static or (T, B, F) per step."""
        ...
