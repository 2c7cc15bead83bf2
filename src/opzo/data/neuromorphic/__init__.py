"""Readers for the neuromorphic datasets of the OPZO/OTPE papers (never downloading anything).

Every reader is an :class:`EventDataset` (module :mod:`~opzo.data.neuromorphic.base`, with
:class:`FrameCache`, :class:`EqualCountDataset`, :func:`compute_mean_std` and
:func:`cached_mean_std`): a split of labelled recordings, each binned into frames (or spike
counts) on first access and kept in a :class:`FrameCache`. A reader only says where its files
are, how a file is read and how its events become frames. One module per dataset:

* :mod:`~opzo.data.neuromorphic.nmnist`: N-MNIST (Orchard et al. 2015), one ``.bin`` file per
  sample, read by :func:`read_nmnist_bin`; :class:`NMNISTFolder` gives ``(30, 2, 34, 34)``
  frames of 3 ms.
* :mod:`~opzo.data.neuromorphic.dvs_gesture`: DVS128 Gesture (Amir et al. 2017) in tonic's
  ``.npy`` layout; :class:`DVSGesture` gives ``(20, 2, 48, 48)`` frames (equal event counts,
  resized from 128x128).
* :mod:`~opzo.data.neuromorphic.cifar10dvs`: CIFAR10-DVS (Li et al. 2017) in SpikingJelly's
  ``.npz`` layout; :class:`CIFAR10DVS` gives ``(10, 2, 48, 48)`` frames with the 9000/1000
  split, optional random crop and normalisation.
* :mod:`~opzo.data.neuromorphic.ncaltech101` / :mod:`~opzo.data.neuromorphic.ncars`:
  N-Caltech-101 (ATIS ``.bin``) and N-CARS (Prophesee ``.dat``) in tonic's layouts;
  :class:`NCaltech101` and :class:`NCars` give ``(10, 2, 48, 48)`` frames of equal event
  counts (the LocalZO paper's preparation).
* :mod:`~opzo.data.neuromorphic.heidelberg`: SHD / SSC (Cramer et al. 2020) HDF5 files;
  :class:`SpikingHeidelbergDigits` and :class:`SpikingSpeechCommands` give ``(n_bins, 700)``
  spike counts (h5py imported lazily).

Every dataset returns ``(frames, label)`` with ``frames`` a float32 :class:`torch.Tensor` and
``label`` an ``int``. Missing or invalid files raise :class:`~opzo.data.errors.DatasetError`
naming the path, the expected layout and where to obtain the data.

Each reader module ends with its training source of ``opzo train`` (a factory
``(cfg, split) -> FrameSource``, registered in :data:`opzo.data.DATASETS`):
:func:`nmnist_source`, :func:`dvs_gesture_source`, :func:`cifar10dvs_source` (the OPZO paper's
preprocessing, appendix C.3.1), :func:`shd_source` and :func:`ssc_source` (the OTPE paper's,
appendix A.1).

A new event dataset: one file here with an :class:`EventDataset` subclass and its factory, one
``DATASETS.register`` line in ``opzo/data/__init__.py`` (and, so that
``from opzo.data.neuromorphic import X`` works for its public names, their import below).
"""

from .base import (
    EVENT_FRAME_SIZE,
    EqualCountDataset,
    EventDataset,
    FrameCache,
    cached_mean_std,
    compute_mean_std,
)
from .cifar10dvs import (
    CIFAR10DVS,
    CIFAR10DVS_CLASSES,
    CIFAR10DVS_SENSOR,
    CIFAR10DVS_TRAIN_PER_CLASS,
    cifar10dvs_source,
    read_cifar10dvs_npz,
)
from .dvs_gesture import (
    DVSGESTURE_CLASSES,
    DVSGESTURE_SENSOR,
    DVSGesture,
    dvs_gesture_source,
    read_gesture_npy,
)
from .heidelberg import (
    HEIDELBERG_DURATION_S,
    SHD_UNITS,
    SpikingHeidelbergDigits,
    SpikingSpeechCommands,
    shd_source,
    ssc_source,
)
from .ncaltech101 import NCALTECH101_SENSOR, NCaltech101, ncaltech101_source, read_ncaltech_bin
from .ncars import NCARS_CLASSES, NCARS_SENSOR, NCars, ncars_source, read_prophesee_dat
from .nmnist import NMNIST_BIN_US, NMNIST_SENSOR, NMNISTFolder, nmnist_source, read_nmnist_bin

__all__ = [
    "CIFAR10DVS",
    "CIFAR10DVS_CLASSES",
    "CIFAR10DVS_SENSOR",
    "CIFAR10DVS_TRAIN_PER_CLASS",
    "DVSGESTURE_CLASSES",
    "DVSGESTURE_SENSOR",
    "EVENT_FRAME_SIZE",
    "HEIDELBERG_DURATION_S",
    "NCALTECH101_SENSOR",
    "NCARS_CLASSES",
    "NCARS_SENSOR",
    "NMNIST_BIN_US",
    "NMNIST_SENSOR",
    "SHD_UNITS",
    "DVSGesture",
    "EqualCountDataset",
    "EventDataset",
    "FrameCache",
    "NCaltech101",
    "NCars",
    "NMNISTFolder",
    "SpikingHeidelbergDigits",
    "SpikingSpeechCommands",
    "cached_mean_std",
    "cifar10dvs_source",
    "compute_mean_std",
    "dvs_gesture_source",
    "ncaltech101_source",
    "ncars_source",
    "nmnist_source",
    "read_cifar10dvs_npz",
    "read_gesture_npy",
    "read_ncaltech_bin",
    "read_nmnist_bin",
    "read_prophesee_dat",
    "shd_source",
    "ssc_source",
]
