"""Reader and writer for the idx file format used by MNIST and Fashion-MNIST.

Layout of an idx file: bytes 0-1 are zero, byte 2 is the element type code, byte 3 the number of
dimensions, then one big-endian ``uint32`` per dimension, then the elements in C order (multi-byte
types are big-endian). Files may be gzip-compressed; compression is detected from the gzip magic
bytes ``1f 8b``, never from the file name.
"""

from __future__ import annotations

import gzip as _gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import DatasetError

__all__ = ["IDX_DTYPES", "read_idx", "read_idx_bytes", "write_idx"]

#: idx type code -> big-endian numpy dtype (as in the format's specification).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"
_REOBTAIN = "The file is probably corrupt or incomplete; delete it and obtain it again."


def _code_for(dtype: np.dtype) -> int:
    """Return the idx type code of a numpy dtype (byte order ignored)."""
    for code, idx_dtype in IDX_DTYPES.items():
        if idx_dtype.kind == dtype.kind and idx_dtype.itemsize == dtype.itemsize:
            return code
    allowed = ", ".join(str(d.newbyteorder("=")) for d in IDX_DTYPES.values())
    raise DatasetError(f"dtype {dtype} cannot be stored in an idx file; allowed: {allowed}")


def read_idx_bytes(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse the (already decompressed) bytes of an idx file.

    Args:
        data: the complete, uncompressed file content.
        source: a name for the data (normally the file path) used in error messages.

    Returns:
        A writable, native-byte-order numpy array with the shape given in the header.

    Raises:
        DatasetError: bad magic number, unknown type code, truncated data or trailing bytes.
    """
    if len(data) < 4:
        raise DatasetError(
            f"{source}: expected an idx header of at least 4 bytes but found {len(data)} bytes. "
            f"{_REOBTAIN}"
        )
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0 or code not in IDX_DTYPES:
        codes = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise DatasetError(
            f"{source}: bad idx magic number: expected bytes 00 00 <type code in {codes}> <ndim> "
            f"but found {data[:4].hex(' ')}. This is not an idx file, or it is corrupt or "
            f"incomplete; obtain it again."
        )
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DatasetError(
            f"{source}: the header declares {ndim} dimensions and needs {header_len} bytes but the "
            f"file has only {len(data)} bytes. {_REOBTAIN}"
        )
    shape = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(data) - header_len
    if found < expected:
        raise DatasetError(
            f"{source}: truncated idx data: the header promises shape {tuple(shape)} of "
            f"{dtype.newbyteorder('=')}, i.e. {expected} data bytes, but only {found} bytes "
            f"follow the header. {_REOBTAIN}"
        )
    if found > expected:
        raise DatasetError(
            f"{source}: trailing junk after the idx data: the header promises shape "
            f"{tuple(shape)} of {dtype.newbyteorder('=')}, i.e. {expected} data bytes, but "
            f"{found} bytes follow the header ({found - expected} extra). {_REOBTAIN}"
        )
    array = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header_len)
    return array.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an idx file, gzip-compressed or raw (detected from the content's magic bytes).

    Args:
        path: the file to read.

    Returns:
        A writable, native-byte-order numpy array with the shape given in the header.

    Raises:
        DatasetError: the file does not exist, cannot be decompressed or is not a valid,
            complete idx file. The message names the path and what was expected.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"idx file not found: {path.absolute()}")
    if not path.is_file():
        raise DatasetError(f"expected an idx file but {path.absolute()} is not a regular file")
    raw = path.read_bytes()
    source = str(path.absolute())
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = _gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise DatasetError(
                f"{source}: the file starts with the gzip magic bytes 1f 8b but could not be "
                f"decompressed ({exc}). {_REOBTAIN}"
            ) from exc
    return read_idx_bytes(raw, source=source)


def write_idx(path: str | os.PathLike[str], array: np.ndarray, gzip: bool = False) -> Path:
    """Write ``array`` as an idx file (optionally gzip-compressed, byte-reproducibly).

    Args:
        path: destination file (parent folders must exist).
        array: any array whose dtype is one of :data:`IDX_DTYPES` (byte order is converted).
        gzip: compress with gzip (fixed mtime 0, so equal arrays give equal files).

    Returns:
        The path written.
    """
    array = np.asarray(array)
    code = _code_for(array.dtype)
    if array.ndim > 255:
        raise DatasetError(f"idx supports at most 255 dimensions, got {array.ndim}")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    if gzip:
        payload = _gzip.compress(payload, mtime=0)
    path = Path(path)
    path.write_bytes(payload)
    return path
