"""The first bytes of an HDF5 file, read without HDF5: version, end of file, open-for-writing marks.

HDF5 can spin on files cut inside or just after the superblock, and it refuses for ever a file whose
writer was killed (the superblock stays marked "open for write" until ``h5clear``). Both are settled here:
truncation is checked before HDF5 sees the file, and a stale mark is hidden from HDF5 by presenting the
superblock with the mark cleared (checksum recomputed) to a read-only open — the file is never changed.
"""

from __future__ import annotations

import fcntl
import io
import os
import stat
from dataclasses import dataclass
from ..errors import LatentProbeError

__all__ = ["Superblock", "read_superblock", "declared_end_of_file", "held_by_another_process", "UnmarkedFile"]

SIGNATURE = b"\x89HDF\r\n\x1a\n"
FLAG_WRITE, FLAG_SWMR_WRITE = 0x01, 0x04


class SuperblockError(LatentProbeError, ValueError):
    """The file is not an HDF5 file latent_probe can open (message: one line, without the path)."""


@dataclass
class Superblock:
    version: int
    offsets: int  # bytes per address
    end_of_file: int  # the file size the superblock declares
    flags: int
    size: int  # bytes of the superblock itself (v2/3: 12 + 4 addresses + checksum)
    raw: bytes

    @property
    def open_for_swmr_write(self) -> bool:
        """Being recorded in SWMR mode, or its writer was killed before closing it."""
        return bool(self.flags & FLAG_SWMR_WRITE) and bool(self.flags & FLAG_WRITE)

    @property
    def open_for_write(self) -> bool:
        return bool(self.flags & (FLAG_WRITE | FLAG_SWMR_WRITE))

    def unmarked(self) -> bytes:
        """These bytes with the open-for-writing flags cleared and the checksum recomputed."""
        body = bytearray(self.raw[: self.size - 4])
        body[11] = 0
        return bytes(body) + lookup3(bytes(body)).to_bytes(4, "little")


def read_superblock(path: str) -> tuple[Superblock, int]:
    """The superblock of the regular file ``path`` and the file's size. Raises SuperblockError for a file
    that is not a version-2/3 HDF5 file (the only kind latent_probe writes) or is cut inside its superblock,
    FileNotFoundError for a missing one."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    if not stat.S_ISREG(st.st_mode):
        raise SuperblockError("is not a regular file")
    with open(path, "rb") as fh:
        head = fh.read(64)
    if head[:8] != SIGNATURE:
        raise SuperblockError("is not an HDF5 file" if len(head) >= 8 or SIGNATURE[: len(head)] != head
                              else "is truncated: shorter than its HDF5 superblock")
    version = head[8] if len(head) > 8 else -1
    if version in (0, 1):
        raise SuperblockError(f"is an HDF5 file but not a latent_probe run (superblock version {version})")
    offsets = head[9] if len(head) > 9 else 0
    size = 12 + 4 * offsets + 4
    if len(head) < 12 or (offsets in (2, 4, 8) and len(head) < size):
        raise SuperblockError("is truncated: shorter than its HDF5 superblock")
    if version not in (2, 3) or offsets not in (2, 4, 8):
        raise SuperblockError("is corrupt (no valid HDF5 superblock)")
    if lookup3(head[: size - 4]) != int.from_bytes(head[size - 4:size], "little"):
        raise SuperblockError("is corrupt (HDF5 superblock checksum mismatch)")
    return Superblock(version, offsets, declared_end_of_file(head), head[11], size, head[:size]), st.st_size


def declared_end_of_file(head: bytes) -> int | None:
    """The end of file a version-2/3 superblock (the file's first bytes) declares, or None."""
    if len(head) < 12 or head[:8] != SIGNATURE or head[8] not in (2, 3) or head[9] not in (2, 4, 8):
        return None
    offsets = head[9]  # v2/3: signature, version, offset size, length size, flags, then base and EOF addresses
    if len(head) < 12 + 4 * offsets + 4:
        return None
    base = int.from_bytes(head[12:12 + offsets], "little")
    return base + int.from_bytes(head[12 + 2 * offsets:12 + 3 * offsets], "little")


def held_by_another_process(path: str) -> bool:
    """Whether some process holds HDF5's file lock (flock) on ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


class UnmarkedFile(io.RawIOBase):
    """A read-only view of an HDF5 file whose superblock reads as closed (for h5py's ``fileobj`` driver).

    The view is as long as the superblock declares: bytes a writer had allocated but not written when it
    died read as zeros (nothing a committed step refers to lies there)."""

    def __init__(self, path: str, superblock: Superblock) -> None:
        self._fh = open(path, "rb", buffering=0)
        self._head = superblock.unmarked()
        self._pos = 0
        self._size = max(os.fstat(self._fh.fileno()).st_size, superblock.end_of_file)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buf) -> int:
        view = memoryview(buf).cast("B")
        want = max(0, min(len(view), self._size - self._pos))
        self._fh.seek(self._pos)
        n = self._fh.readinto(view[:want]) or 0
        if n < want:  # allocated, never written: zeros
            view[n:want] = bytes(want - n)
        if want and self._pos < len(self._head):
            k = min(want, len(self._head) - self._pos)
            view[:k] = self._head[self._pos:self._pos + k]
        self._pos += want
        return want

    def close(self) -> None:
        self._fh.close()
        super().close()


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & 0xFFFFFFFF


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle``, the checksum of HDF5's version-2+ metadata."""
    m = 0xFFFFFFFF
    a = b = c = (0xDEADBEEF + len(data) + initval) & m
    n, i = len(data), 0
    while n > 12:
        a = (a + int.from_bytes(data[i:i + 4], "little")) & m
        b = (b + int.from_bytes(data[i + 4:i + 8], "little")) & m
        c = (c + int.from_bytes(data[i + 8:i + 12], "little")) & m
        a = (a - c) & m; a ^= _rot(c, 4); c = (c + b) & m  # noqa: E702
        b = (b - a) & m; b ^= _rot(a, 6); a = (a + c) & m  # noqa: E702
        c = (c - b) & m; c ^= _rot(b, 8); b = (b + a) & m  # noqa: E702
        a = (a - c) & m; a ^= _rot(c, 16); c = (c + b) & m  # noqa: E702
        b = (b - a) & m; b ^= _rot(a, 19); a = (a + c) & m  # noqa: E702
        c = (c - b) & m; c ^= _rot(b, 4); b = (b + a) & m  # noqa: E702
        i += 12
        n -= 12
    if n == 0:
        return c
    tail = data[i:] + b"\x00" * (12 - n)
    a = (a + int.from_bytes(tail[0:4], "little")) & m
    b = (b + int.from_bytes(tail[4:8], "little")) & m
    c = (c + int.from_bytes(tail[8:12], "little")) & m
    c ^= b; c = (c - _rot(b, 14)) & m  # noqa: E702
    a ^= c; a = (a - _rot(c, 11)) & m  # noqa: E702
    b ^= a; b = (b - _rot(a, 25)) & m  # noqa: E702
    c ^= b; c = (c - _rot(b, 16)) & m  # noqa: E702
    a ^= c; a = (a - _rot(c, 4)) & m  # noqa: E702
    b ^= a; b = (b - _rot(a, 14)) & m  # noqa: E702
    c ^= b; c = (c - _rot(b, 24)) & m  # noqa: E702
    return c
