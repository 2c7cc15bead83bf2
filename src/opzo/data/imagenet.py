"""ImageNet and ImageNet-100 in the usual class-folder layout, with the standard augmentation.

    ROOT/train/<class>/*.JPEG      ROOT/val/<class>/*.JPEG

(the validation images sorted into their class folders, as torchvision's ``ImageFolder``
expects them; ImageNet-100 is the same layout with 100 class folders). The classes are the
training class folders in sorted order; the validation split must use the same names.

Preprocessing (OPZO paper appendix C.3.1 "ImageNet"; LocalZO paper section 5.1: "standard
data augmentation (random resized crop, random horizontal flip)"), written with Pillow and
torch (torchvision is not a dependency):

* training: a random resized crop (area fraction uniform in [0.08, 1], aspect ratio
  log-uniform in [3/4, 4/3], up to 10 draws, else the central crop of the clamped ratio; the
  usual Inception-style crop) resized to 224x224 bilinearly, then a horizontal flip with
  probability 1/2;
* validation: the shorter side resized to 256, then the central 224x224;
* both: pixels scaled to [0, 1] and normalised per channel with ImageNet's mean
  (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).

The random draws of batch ``b`` of epoch ``e`` come from the generator of
``(seed, e, b)`` (:func:`~opzo.data.encoders.batch_generator`), so a resumed run sees the same
crops. The inputs are the normalised pixels at every step (``x``: (B, 3·224·224)). Images are
decoded batch by batch in a pool of threads (Pillow releases the GIL while decoding). Pillow
is an optional dependency: ``pip install 'opzo[images]'``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..registry import Options
from .encoders import batch_generator, num_batches
from .errors import DatasetError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImageFolderSource", "imagenet_source",
           "list_image_folder", "random_resized_box", "center_box"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: the file endings read as images (case-insensitive)
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp")
_SPLIT_DIRS = {"train": "train", "test": "val"}
_NEVER = "opzo never downloads data."


def _pil() -> Any:
    try:
        from PIL import Image
    except ModuleNotFoundError:
        raise DatasetError("reading ImageNet's images needs Pillow: pip install "
                           "'opzo[images]' (or pip install pillow)") from None
    return Image


def list_image_folder(root: Path, split: str, pretty: str) -> tuple[list[Path], list[int],
                                                                    list[str]]:
    """(files, labels, class names) of ``root/train`` (split ``train``) or ``root/val``
    (split ``test``): classes from the training folders, sorted; files sorted per class."""
    layout = ("ROOT/train/<class>/*.JPEG and ROOT/val/<class>/*.JPEG (the validation images "
              "sorted into the same class folders)")
    classes_dir = root / "train"
    split_dir = root / _SPLIT_DIRS[split]
    for folder in (classes_dir, split_dir):
        if not folder.is_dir():
            raise DatasetError(f"{pretty} folder not found: {folder.absolute()}. Expected "
                               f"{layout}. {_NEVER}")
    classes = sorted(p.name for p in classes_dir.iterdir() if p.is_dir())
    if not classes:
        raise DatasetError(f"no class folders in {classes_dir.absolute()}; expected {layout}")
    index = {name: i for i, name in enumerate(classes)}
    files: list[Path] = []
    labels: list[int] = []
    for folder in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        if folder.name not in index:
            raise DatasetError(f"{folder.absolute()}: class {folder.name!r} has no folder in "
                               f"{classes_dir.absolute()}; expected {layout}")
        found = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [index[folder.name]] * len(found)
    if not files:
        raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in "
                           f"{split_dir.absolute()}/<class>/; expected {layout}")
    return files, labels, classes


def random_resized_box(width: int, height: int, generator: torch.Generator,
                       scale: tuple[float, float] = (0.08, 1.0),
                       ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(left, top, w, h) of a random resized crop: area fraction uniform in ``scale``, aspect
    ratio w/h log-uniform in ``ratio``; up to 10 draws, else the central crop whose ratio is
    clamped to ``ratio`` (the Inception crop as torchvision's RandomResizedCrop draws it)."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        u = torch.rand(2, generator=generator, device="cpu", dtype=torch.float64).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[1])
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator, device="cpu"))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator, device="cpu"))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def center_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(left, top, size, size) of the central crop (rounded as torchvision rounds it)."""
    return (int(round((width - size) / 2.0)), int(round((height - size) / 2.0)), size, size)


def _to_tensor(image: Any, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """An RGB PIL image as normalised float32 (3, H, W)."""
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    x = data.view(image.height, image.width, 3).permute(2, 0, 1).to(torch.float32) / 255.0
    m = torch.tensor(mean, dtype=torch.float32, device="cpu").view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device="cpu").view(3, 1, 1)
    return (x - m) / s


def load_image(path: Path, size: int, resize: int, mean: Sequence[float],
               std: Sequence[float], draw: Any = None) -> Tensor:
    """One image, decoded and preprocessed (module docstring): ``draw(width, height)`` gives
    the training crop box and flip; without it the validation resize and central crop."""
    Image = _pil()
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable image ({exc})") from None
    if draw is not None:
        (left, top, w, h), flip = draw(img.width, img.height)
        img = img.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
        if flip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
    else:
        short = min(img.width, img.height)
        w = resize if img.width == short else int(resize * img.width / img.height)
        h = resize if img.height == short else int(resize * img.height / img.width)
        img = img.resize((w, h), Image.BILINEAR)
        left, top, _, _ = center_box(w, h, size)
        img = img.crop((left, top, left + size, top + size))
    return _to_tensor(img, mean, std)


@dataclass
class ImageFolderSource:
    """A class-folder image split (ImageNet, ImageNet-100) as a training source.

    ``augment_seed``: the training augmentation, drawn per batch from ``(seed, epoch, b)``;
    None: the validation preprocessing.
    """

    files: list[Path]
    labels: Tensor
    classes: int
    augment_seed: int | None = None
    size: int = 224
    resize: int = 256
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    workers: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (3, self.size, self.size)

    @property
    def num_inputs(self) -> int:
        return 3 * self.size * self.size

    def __len__(self) -> int:
        return len(self.files)

    def head(self, n: int) -> ImageFolderSource:
        return self.part(0, n)

    def labels_head(self, n: int) -> Tensor:
        return self.labels[:n]

    def part(self, lo: int, hi: int) -> ImageFolderSource:
        return replace(self, files=self.files[lo:hi], labels=self.labels[lo:hi])

    def images(self, indices: Sequence[int], generator: torch.Generator | None) -> Tensor:
        """The preprocessed images ``indices``, (B, 3, size, size); with ``generator`` the
        training crops and flips, drawn for the images in order (crop, then flip)."""
        draws: list[Any] = []
        for _ in indices:
            if generator is None:
                draws.append(None)
                continue
            # the crop depends on the image's size: draw it lazily from a per-image generator
            # seeded in order from the batch's, so decoding order cannot change the draws
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device="cpu"))
            draws.append(_CropDraw(seed))
        paths = [self.files[i] for i in indices]

        def one(k: int) -> Tensor:
            return load_image(paths[k], self.size, self.resize, self.mean, self.std,
                              draw=draws[k])

        if self.workers > 1 and len(paths) > 1:
            with ThreadPoolExecutor(max_workers=self.workers) as pool:
                out = list(pool.map(one, range(len(paths))))
        else:
            out = [one(k) for k in range(len(paths))]
        return torch.stack(out)

    def batches(self, batch_size: int, T: int, permutation: Tensor | None = None,
                start_batch: int = 0, epoch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches in ``permutation`` order from ``start_batch``: ``x`` (B, 3·size·size) the
        normalised pixels (a current at every step), ``labels`` (B,)."""
        n = len(self)
        order = torch.arange(n, device="cpu") if permutation is None else permutation
        for b in range(start_batch, num_batches(n, batch_size)):
            idx = order[b * batch_size:(b + 1) * batch_size].tolist()
            generator = (batch_generator(self.augment_seed, epoch, b)
                         if self.augment_seed is not None else None)
            yield self.images(idx, generator).flatten(1), self.labels[idx]


class _CropDraw:
    """The training crop box and flip of one image, from its own seed."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __call__(self, width: int, height: int) -> tuple[tuple[int, int, int, int], bool]:
        g = torch.Generator(device="cpu").manual_seed(self.seed)
        box = random_resized_box(width, height, g)
        flip = bool(torch.rand(1, generator=g, device="cpu") < 0.5)
        return box, flip


def imagenet_source(cfg: Options, split: str) -> ImageFolderSource:
    """ImageNet / ImageNet-100 (``cfg.dataset``) from ``cfg.data_root`` (module docstring);
    the training split augmented when ``cfg.augment``. Direct input only."""
    pretty = {"imagenet": "ImageNet", "imagenet100": "ImageNet-100"}.get(cfg.dataset,
                                                                          cfg.dataset)
    if cfg.data_root is None:
        raise DatasetError(f"{pretty} needs data_root, the folder holding train/ and val/. "
                           f"{_NEVER}")
    if cfg.encoding != "direct":
        raise DatasetError(f"{pretty} is fed as normalised pixels (encoding direct); got "
                           f"encoding {cfg.encoding!r}")
    _pil()  # a missing Pillow is said before anything is listed
    files, labels, classes = list_image_folder(Path(cfg.data_root).expanduser(), split,
                                               pretty)
    augment = split == "train" and cfg.augment
    return ImageFolderSource(files, torch.tensor(labels, dtype=torch.int64, device="cpu"),
                             classes=len(classes), augment_seed=cfg.seed if augment else None)
