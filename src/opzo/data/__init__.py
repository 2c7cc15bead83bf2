"""Datasets, idx file I/O, input encoders and batch iteration for opzo (never downloads data)."""

from . import cifar, events, neuromorphic, randman
from .datasets import (
    DATASET_NAMES,
    ArrayDataset,
    canonical_dataset_name,
    load_dataset,
    load_embedded_mnist,
    load_mnist_like,
)
from .encoders import (
    ENCODER_NAMES,
    NORMALIZATION,
    Encoder,
    batch_generator,
    batch_seed,
    direct,
    epoch_permutation,
    epoch_seed,
    iterate_batches,
    make_encoder,
    normalization_stats,
    num_batches,
    rate,
)
from .errors import DatasetError
from .idx import read_idx, read_idx_bytes, write_idx

__all__ = [
    "DATASET_NAMES",
    "ENCODER_NAMES",
    "NORMALIZATION",
    "ArrayDataset",
    "DatasetError",
    "Encoder",
    "batch_generator",
    "batch_seed",
    "canonical_dataset_name",
    "direct",
    "epoch_permutation",
    "epoch_seed",
    "iterate_batches",
    "load_dataset",
    "load_embedded_mnist",
    "load_mnist_like",
    "make_encoder",
    "normalization_stats",
    "num_batches",
    "rate",
    "read_idx",
    "read_idx_bytes",
    "write_idx",
    "cifar",
    "events",
    "neuromorphic",
    "randman",
]
