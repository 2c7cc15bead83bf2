"""Input sources: a dataset split turned into batches of network inputs ``(x, y)``.

Three kinds feed the same training loop:

* :class:`ImageSource` — static images (MNIST, Fashion-MNIST, the embedded subset) passed
  through an :class:`~opzo.data.encoders.Encoder`: ``x`` is (B, F) for direct-current coding
  (the same input at every step) or (T, B, F) for rate coding.
* :class:`FrameSource` — event datasets whose samples are already (T, C, H, W) frames
  (N-MNIST binned in 3 ms frames): ``x`` is (T, B, C·H·W), read from disk batch by batch.
* :class:`SequenceSource` — spike sequences held in memory as one (T, N, F) tensor (Randman):
  ``x`` is (T, B, F).

Inputs are delivered flattened (F = C·H·W, in C, H, W order); each source's ``input_shape``
says what they are, (1, H, W) for grey images, (C, H, W) for frames, (F,) for sequences, and
the network is built for it (a conv net views its flat input as (B, C, H, W)).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from .datasets import ArrayDataset
from .encoders import Encoder, iterate_batches


class FrameDataset(Protocol):
    """What :class:`FrameSource` needs: length, ``(frames, label)`` items, the labels."""

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
        d = self.data
        return ImageSource(ArrayDataset(d.images[:n], d.labels[:n], d.name, d.classes),
                           self.encoder)

    def batches(self, batch_size: int, T: int, permutation: Tensor | None = None,
                start_batch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        for images, labels in iterate_batches(self.data, batch_size, permutation=permutation,
                                              start_batch=start_batch):
            yield self.encoder(images, T), labels


@dataclass
class FrameSource:
    """Frames of an event dataset; ``indices`` restricts it to a subset."""

    data: FrameDataset
    classes: int
    indices: Tensor | None = None

    def __post_init__(self) -> None:
        frames, _ = self.data[int(self._index()[0])]
        self._shape = tuple(frames.shape)  # (T, C, H, W)

    def _index(self) -> Tensor:
        return self.indices if self.indices is not None else torch.arange(len(self.data))

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
        return FrameSource(self.data, self.classes, self._index()[:n])

    def batches(self, batch_size: int, T: int, permutation: Tensor | None = None,
                start_batch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        if T != self._shape[0]:
            raise ValueError(f"the frames hold {self._shape[0]} time steps, not T={T}")
        index = self._index()
        order = index if permutation is None else index[permutation]
        for chunk in order[start_batch * batch_size:].split(batch_size):
            items = [self.data[int(i)] for i in chunk]
            frames = torch.stack([f for f, _ in items]).to(torch.float32)  # (B, T, C, H, W)
            x = frames.flatten(2).transpose(0, 1).contiguous()  # (T, B, C·H·W)
            yield x, torch.tensor([label for _, label in items], dtype=torch.int64)


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
        return SequenceSource(self.spikes[:, :n], self.labels[:n], self.classes)

    def batches(self, batch_size: int, T: int, permutation: Tensor | None = None,
                start_batch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        if T != self.spikes.shape[0]:
            raise ValueError(f"the sequences hold {self.spikes.shape[0]} time steps, not T={T}: "
                             f"set T={self.spikes.shape[0]}")
        order = torch.arange(len(self)) if permutation is None else permutation
        for chunk in order[start_batch * batch_size:].split(batch_size):
            yield self.spikes[:, chunk].contiguous(), self.labels[chunk]
