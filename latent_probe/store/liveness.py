"""Tell a live writer from a killed one: the writer holds an open-file-description lock while it records.

HDF5 drops its own file lock once SWMR starts (and SWMR readers hold shared ones), so its locks cannot say
whether a recording process is alive. The writer takes a Linux OFD write lock on one byte far beyond any
data (``F_OFD_SETLK``; the kernel releases it when the process dies, and it conflicts within one process
too); a reader asks ``F_OFD_GETLK`` whether anyone holds it. Elsewhere no lock is taken and
``writer_alive`` answers None (unknown).
"""

from __future__ import annotations

import fcntl
import os
import struct

__all__ = ["hold_writer_lock", "writer_alive"]

_OFFSET = 0x7FFF_FFFF_0000_0000  # far beyond any file's data; locking past the end is allowed
_FLOCK = "hhqqi4x"  # struct flock on 64-bit Linux: l_type, l_whence, l_start, l_len, l_pid
_SETLK = getattr(fcntl, "F_OFD_SETLK", None)
_GETLK = getattr(fcntl, "F_OFD_GETLK", None)


def hold_writer_lock(fd: int) -> bool:
    """Take the writer lock on ``fd`` (open for writing); held until the descriptor closes or the process dies."""
    if _SETLK is None:
        return False
    try:
        fcntl.fcntl(fd, _SETLK, struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, _OFFSET, 1, 0))
    except OSError:
        return False
    return True


def writer_alive(path: str) -> bool | None:
    """True when a process holds the writer lock of ``path``; None where OFD locks do not exist."""
    if _GETLK is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        res = fcntl.fcntl(fd, _GETLK, struct.pack(_FLOCK, fcntl.F_RDLCK, os.SEEK_SET, _OFFSET, 1, 0))
    except OSError:
        return None
    finally:
        os.close(fd)
    return struct.unpack(_FLOCK, res)[0] != fcntl.F_UNLCK
