"""Decoders for the official file formats: IDX (MNIST family, optionally gzipped) and CIFAR python pickles."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import zlib
from typing import Any

import numpy as np

from cnnlab.data.errors import CorruptFileError

_IDX_DTYPES: dict[int, np.dtype] = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
                                    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def gunzip(data: bytes, what: str) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise CorruptFileError(f"{what} is not a complete gzip file ({e}); delete it and download it again") from None


def parse_idx(data: bytes, what: str) -> np.ndarray:
    """Parse an IDX file (big-endian header: 0, 0, dtype code, ndim, then ndim uint32 sizes, then data)."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise CorruptFileError(f"{what} is not an IDX file (bad magic {data[:4].hex() if data else 'empty'})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise CorruptFileError(f"{what}: IDX header truncated")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_DTYPES[data[2]]
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != need:
        raise CorruptFileError(f"{what}: IDX header says {shape} ({need:,} bytes of data) but the file has "
                               f"{len(data) - header:,}; it is truncated or corrupt")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def read_idx_file(path: Any) -> np.ndarray:
    """Read an IDX file from disk, gunzipping ``*.gz``."""
    with open(path, "rb") as f:
        data = f.read()
    if str(path).endswith(".gz"):
        data = gunzip(data, str(path))
    return parse_idx(data, str(path))


class _CifarUnpickler(pickle.Unpickler):
    """Only what CIFAR's pickles need (dicts, lists, numpy arrays): nothing else from the file can run."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR pickle")
        return super().find_class(module, name)


def _str_keys(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    return obj


def load_cifar_pickle(data: bytes, what: str) -> dict[str, Any]:
    """Unpickle one CIFAR batch/meta file (Python 2 pickles: latin1) with str keys."""
    try:
        obj = _CifarUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as e:  # noqa: BLE001 — any unpickling failure means a corrupt member
        raise CorruptFileError(f"{what} is not a readable CIFAR pickle: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise CorruptFileError(f"{what}: expected a dict, got {type(obj).__name__}")
    return _str_keys(obj)


def as_text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
