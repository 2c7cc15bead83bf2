"""The in-memory image dataset every image reader returns (:class:`ArrayDataset`); below the
readers, the encoders and the sources."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import DatasetError

__all__ = ["ArrayDataset"]


@dataclass
class ArrayDataset:
    """An in-memory image classification dataset.

    Attributes:
        images: ``uint8`` tensor of shape ``(N, 28, 28)``.
        labels: ``int64`` tensor of shape ``(N,)`` with values in ``0 .. classes-1``.
        name: canonical dataset name (e.g. ``"mnist"``).
        classes: number of classes.
    """

    images: torch.Tensor
    labels: torch.Tensor
    name: str
    classes: int = 10

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 3:
            raise DatasetError(
                f"{self.name}: expected uint8 images of shape (N, H, W), got "
                f"{self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise DatasetError(
                f"{self.name}: expected int64 labels of shape (N,), got "
                f"{self.labels.dtype} {tuple(self.labels.shape)}"
            )
        if self.images.shape[0] != self.labels.shape[0]:
            raise DatasetError(
                f"{self.name}: {self.images.shape[0]} images but {self.labels.shape[0]} labels"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])
