"""Datasets, idx file I/O, input encoders and batch iteration for opzo (never downloads data).

Every dataset ``opzo train --dataset NAME`` accepts is one ``DATASETS.register`` line below:
its factory ``(cfg, split) -> Source`` (in the reader's module; ``split`` is ``"train"`` or
``"test"``) and its traits, which the config's checks read. A new dataset is one reader file
with such a factory, plus its line.
"""

from ..registry import Registry
from . import cifar, datasets, events, imagenet, neuromorphic, randman
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
from .sources import ColorImageSource, FrameSource, ImageSource, SequenceSource, Source

#: name -> factory ``(cfg, split) -> Source`` (``cfg``: the options as attributes, of which a
#: reader reads ``dataset``, ``data_root``, ``T``, ``seed``, the encoding's and the options its
#: ``register`` line declares, e.g. cifar's ``augment``). Traits: ``builtin``: made or shipped by
#: the package (no data_root); ``events``: fed as spike frames or counts (the image encodings do
#: not apply); ``vectors``: samples are vectors of input neurons (fully connected nets only);
#: ``steps``: the number of time steps T the dataset has, or None for any.
DATASETS: Registry = Registry("dataset", builtin=False, events=False, vectors=False,
                              steps=None)
datasets.registered_names = lambda: list(DATASETS)  # load_dataset's error lists them
DATASETS.register("embedded-mnist", datasets.image_source, "an MNIST subset shipped with "
                  "the package", builtin=True)
DATASETS.register("mnist", datasets.image_source, "the four idx files (optionally .gz)")
DATASETS.register("fashion-mnist", datasets.image_source, "the four idx files (optionally .gz)")
DATASETS.register("cifar10", cifar.cifar_source, "colour images (3, 32, 32), 10 classes",
                  options=(cifar.AUGMENT_OPTION,))
DATASETS.register("cifar100", cifar.cifar_source, "colour images (3, 32, 32), 100 classes",
                  options=(cifar.AUGMENT_OPTION,))
DATASETS.register("nmnist", neuromorphic.nmnist_source, "3 ms event frames, the first T",
                  events=True)
DATASETS.register("dvs-gesture", neuromorphic.dvs_gesture_source, "T event frames of equal "
                  "event counts, 48x48", events=True)
DATASETS.register("cifar10-dvs", neuromorphic.cifar10dvs_source, "T event frames of equal "
                  "event counts, 48x48", events=True, options=(cifar.AUGMENT_OPTION,))
DATASETS.register("ncaltech101", neuromorphic.ncaltech101_source, "T event frames of equal "
                  "event counts, 48x48 (tonic's Caltech101/<class>/*.bin; 80/20 per class)",
                  events=True)
DATASETS.register("ncars", neuromorphic.ncars_source, "T event frames of equal event counts, "
                  "48x48 (tonic's n-cars_train|test/<background|cars>/*.dat)", events=True)
DATASETS.register("imagenet", imagenet.imagenet_source, "class folders train/ and val/, "
                  "random resized crop 224 and flip, centre crop 224 (needs Pillow)")
DATASETS.register("imagenet100", imagenet.imagenet_source, "ImageNet-100: the same layout "
                  "with 100 class folders (needs Pillow)")
DATASETS.register("shd", neuromorphic.shd_source, "700 input units in T time bins over the "
                  "first second", events=True, vectors=True)
DATASETS.register("ssc", neuromorphic.ssc_source, "700 input units in T time bins over the "
                  "first second", events=True, vectors=True)
DATASETS.register("randman-time", randman.randman_source, "the OTPE paper's Randman task, "
                  "time-coded", builtin=True, events=True, vectors=True, steps=50)
DATASETS.register("randman-rate", randman.randman_source, "the OTPE paper's Randman task, "
                  "rate-coded", builtin=True, events=True, vectors=True, steps=50)

__all__ = [
    "DATASETS",
    "DATASET_NAMES",
    "ENCODER_NAMES",
    "NORMALIZATION",
    "ArrayDataset",
    "ColorImageSource",
    "FrameSource",
    "ImageSource",
    "SequenceSource",
    "Source",
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
    "imagenet",
    "neuromorphic",
    "randman",
]
