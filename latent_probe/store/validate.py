"""Checks that make reading a run file bounded: what HDF5 itself would trust, checked against the bytes present.

A run file uses a small part of HDF5: hard links, uncompressed contiguous or chunked datasets stored inside
the file, float latents of one shape per step. Anything else (external storage, virtual datasets, filters,
soft or external links, sizes beyond the file) is refused before data are read, so that a crafted or
damaged file ends in one line instead of a hang, a huge allocation or a read of another file.
"""

from __future__ import annotations

import re
from typing import Any

import h5py
import numpy as np
from ..errors import LatentProbeError

__all__ = ["RunFileError", "check_link", "check_dataset", "check_netcdf_view", "chunk_within", "MAX_ATTR_BYTES"]

MAX_ATTR_BYTES = 16 * 2**20  # the largest root attribute a run file holds is a model configuration (kilobytes)


class RunFileError(LatentProbeError, ValueError):
    """The file is not a (readable) latent_probe run. The message is one line: control characters in names
    read from the file (or in its path) are shown escaped."""

    def __init__(self, message: str) -> None:
        super().__init__(_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(message)))


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def check_link(group: h5py.Group, name: str, where: str) -> None:
    """``group[name]`` must be a hard link (no soft-link cycles, no external files)."""
    link = group.get(name, getlink=True)
    if link is None:
        raise RunFileError(f"{where}: {group.name.rstrip('/')}/{name} is missing")
    if not isinstance(link, h5py.HardLink):
        raise RunFileError(f"{where}: {group.name.rstrip('/')}/{name} is a {type(link).__name__}, "
                           "which run files never use")


def check_dataset(ds: Any, where: str, file_size: int, *, chunked_rows: bool = False) -> None:
    """A dataset whose values live inside this file, unfiltered, and whose claimed size fits in it."""
    if not isinstance(ds, h5py.Dataset):
        raise RunFileError(f"{where}: {ds.name} is not a dataset")
    name = ds.name
    dcpl = ds.id.get_create_plist()
    layout = dcpl.get_layout()
    if layout not in (h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED, h5py.h5d.COMPACT):
        raise RunFileError(f"{where}: {name} is a virtual dataset, which run files never use")
    if dcpl.get_external_count():
        raise RunFileError(f"{where}: {name} keeps its data in another file (external storage), which run "
                           "files never use")
    if dcpl.get_nfilters():
        raise RunFileError(f"{where}: {name} is compressed or filtered, which run files never are")
    if ds.dtype.kind == "O" or ds.dtype.hasobject:
        raise RunFileError(f"{where}: {name} holds variable-length values, which run files never store there")
    if any(d < 0 for d in ds.shape):
        raise RunFileError(f"{where}: {name} has a negative dimension")
    claimed = int(np.prod(ds.shape, dtype=object)) * ds.dtype.itemsize
    if chunked_rows:  # only the rows in use need to be present; their size is checked by the caller
        row = int(np.prod(ds.shape[1:], dtype=object)) * ds.dtype.itemsize
        if row > file_size:
            raise RunFileError(f"{where}: {name} claims {row} bytes a row, more than the file's {file_size}")
    elif claimed > file_size:
        raise RunFileError(f"{where}: {name} claims {claimed} bytes, more than the file's {file_size}")


def chunk_within(ds: h5py.Dataset, coord: tuple[int, ...], nbytes: int, file_size: int) -> bool:
    """The chunk at ``coord`` is stored, holds ``nbytes`` and lies inside the file."""
    info = ds.id.get_chunk_info_by_coord(coord)
    offset = getattr(info, "byte_offset", None)
    if offset is None:
        return False
    return info.size == nbytes and 0 <= offset and offset + info.size <= file_size


def check_netcdf_view(f: h5py.File, where: str, file_size: int) -> None:
    """What a netCDF reader (h5netcdf, for ``Run.to_xarray``) reads of the root group: hard links only, and
    datasets whose values live inside the file, unfiltered, of fixed-size types; resizable ones may claim more
    rows than are written (a run being recorded), but not rows larger than the file."""
    for name in f:
        check_link(f, name, where)
        obj = f[name]
        if isinstance(obj, h5py.Dataset):
            resizable = obj.chunks is not None and obj.maxshape[:1] == (None,)
            check_dataset(obj, where, file_size, chunked_rows=resizable)
