"""Checksums of stored latent rows (docs/hdf5-schema.md, "Integrity").

CRC32C (Castagnoli) from ``google-crc32c`` (hardware instructions where the CPU has them; it releases the GIL),
else the standard library's ``zlib.crc32``. The writer records which one a file uses (root attribute
``checksum``); a reader verifies with that one, and refuses to claim a verification it cannot do.
"""

from __future__ import annotations

import zlib
from typing import Callable

import numpy as np

try:  # pragma: no cover - which branch runs depends on the installation
    from google_crc32c import _crc32c as _c  # the C extension: takes any buffer, no copy

    def _crc32c(arr: np.ndarray) -> int:
        return int(_c.extend(0, arr))
except ImportError:  # pragma: no cover
    _crc32c = None  # type: ignore[assignment]

__all__ = ["ALGORITHM", "checksum", "checksum_function", "fingerprint"]


def _crc32(arr: np.ndarray) -> int:
    return zlib.crc32(arr) & 0xFFFFFFFF


_FUNCTIONS: dict[str, Callable[[np.ndarray], int] | None] = {"crc32c": _crc32c, "crc32": _crc32}
ALGORITHM = "crc32c" if _crc32c is not None else "crc32"  # what this installation writes


def checksum_function(name: str) -> Callable[[np.ndarray], int] | None:
    """The function for algorithm ``name`` (``"crc32c"``, ``"crc32"``), or None when it is unknown or not installed."""
    return _FUNCTIONS.get(name)


def checksum(arr: np.ndarray, name: str = ALGORITHM) -> int:
    """The checksum of ``arr``'s bytes (C order), as stored in ``/checksums``."""
    fn = _FUNCTIONS[name]
    if fn is None:
        raise RuntimeError(f"checksum {name} needs google-crc32c (pip install google-crc32c)")
    return fn(np.ascontiguousarray(arr))


def fingerprint(arrays: list[np.ndarray], name: str = ALGORITHM) -> int:
    """One checksum over several arrays (their bytes in order, with their lengths): what a cache was computed from."""
    fn = _FUNCTIONS[name] if _FUNCTIONS.get(name) is not None else _crc32
    parts = [np.asarray([a.nbytes for a in arrays], dtype=np.int64)] + [np.ascontiguousarray(a) for a in arrays]
    return fn(np.frombuffer(b"".join(p.tobytes() for p in parts), dtype=np.uint8))
