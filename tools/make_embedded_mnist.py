#!/usr/bin/env python
"""Build opzo's embedded MNIST subset (``src/opzo/data/embedded/mnist_subset.npz``).

Deterministic: the same source files always give a byte-identical npz. Selection rule:

* train: ``numpy.random.default_rng(0).permutation(60000)`` of the official training set; walking
  that permutation, the first 600 images of each class are kept (6000 in all); they are stored in
  official (ascending index) order, with their source indices in ``train_source_indices``.
* test: the first 1000 images of the official test set, in official order.

The source files are checked against the official md5 values before anything is written. The tool
also writes ``LICENSE-MNIST.txt`` (origin, CC BY-SA 3.0 licence, selection rule, md5 values).

Usage: ``python tools/make_embedded_mnist.py [--source DIR] [--out DIR]``
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from opzo.data.idx import read_idx_bytes  # noqa: E402

SEED = 0
PER_CLASS = 600
N_TEST = 1000
OFFICIAL_MD5 = {  # md5 of the uncompressed official files
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

LICENSE_TEXT = """\
Embedded MNIST subset: mnist_subset.npz
=======================================

Origin
------
The MNIST database of handwritten digits, by Yann LeCun, Corinna Cortes and
Christopher J. C. Burges (http://yann.lecun.com/exdb/mnist/).

Licence
-------
The MNIST database is made available under the Creative Commons
Attribution-Share Alike 3.0 licence (CC BY-SA 3.0,
https://creativecommons.org/licenses/by-sa/3.0/). This subset is a derived
work redistributed under the same licence, CC BY-SA 3.0. It is NOT covered by
opzo's MIT licence.

Changes made (subset selection, no pixel or label changes)
----------------------------------------------------------
* train_images / train_labels ({n_train} images, {per_class} per class): the
  official training set was permuted with numpy.random.default_rng({seed}).permutation(60000);
  walking that permutation, the first {per_class} images of each class 0..9 were
  kept. They are stored in ascending order of their index in the official
  training set; those indices are stored as train_source_indices.
* test_images / test_labels: the first {n_test} images of the official test set
  (t10k), in official order.
* All arrays are uint8 (train_source_indices: int32), images 28x28, stored with
  numpy's compressed npz format. Built by tools/make_embedded_mnist.py.

Source files (md5 of the uncompressed official idx files, verified at build time)
---------------------------------------------------------------------------------
{md5_lines}
"""


def _load(source: Path, base: str) -> np.ndarray:
    """Read ``source/base[.gz]``, verify its md5 and parse it."""
    for path in (source / base, source / f"{base}.gz"):
        if path.is_file():
            data = path.read_bytes()
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            digest = hashlib.md5(data).hexdigest()
            if digest != OFFICIAL_MD5[base]:
                raise SystemExit(
                    f"{path}: md5 of the uncompressed data is {digest}, expected the official "
                    f"{OFFICIAL_MD5[base]}; refusing to build from a modified file."
                )
            return read_idx_bytes(data, source=str(path))
    raise SystemExit(f"missing {base} (or {base}.gz) in {source}")


def select_train(labels: np.ndarray, seed: int = SEED, per_class: int = PER_CLASS) -> np.ndarray:
    """Indices of the class-balanced training subset, ascending (see module docstring)."""
    perm = np.random.default_rng(seed).permutation(labels.shape[0])
    chosen = [perm[labels[perm] == c][:per_class] for c in range(10)]
    if any(c.shape[0] != per_class for c in chosen):
        raise SystemExit(f"some class has fewer than {per_class} training images")
    return np.sort(np.concatenate(chosen))


def save_npz_deterministic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez_compressed`` but with fixed zip timestamps (byte-reproducible)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, array in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    """Build the npz and its licence file; print their sizes and the npz md5."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source",
        type=Path,
        default=ROOT.parent / "shared" / "data" / "mnist",
        help="folder with the four official MNIST idx files (gzip or raw)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "src" / "opzo" / "data" / "embedded",
        help="output folder",
    )
    args = parser.parse_args(argv)

    train_images = _load(args.source, "train-images-idx3-ubyte")
    train_labels = _load(args.source, "train-labels-idx1-ubyte")
    test_images = _load(args.source, "t10k-images-idx3-ubyte")
    test_labels = _load(args.source, "t10k-labels-idx1-ubyte")

    idx = select_train(train_labels)
    arrays = {
        "train_images": train_images[idx].astype(np.uint8),
        "train_labels": train_labels[idx].astype(np.uint8),
        "test_images": test_images[:N_TEST].astype(np.uint8),
        "test_labels": test_labels[:N_TEST].astype(np.uint8),
        "train_source_indices": idx.astype(np.int32),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    npz_path = args.out / "mnist_subset.npz"
    save_npz_deterministic(npz_path, arrays)
    md5_lines = "\n".join(f"  {name}  {md5}" for name, md5 in OFFICIAL_MD5.items())
    license_path = args.out / "LICENSE-MNIST.txt"
    license_path.write_text(
        LICENSE_TEXT.format(
            n_train=10 * PER_CLASS,
            per_class=PER_CLASS,
            seed=SEED,
            n_test=N_TEST,
            md5_lines=md5_lines,
        )
    )
    digest = hashlib.md5(npz_path.read_bytes()).hexdigest()
    print(f"wrote {npz_path} ({npz_path.stat().st_size} bytes, md5 {digest})")
    print(f"wrote {license_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
