"""Hostile files are bounded (issue 8, item 4).

Every ``open_run(path)`` of a damaged or crafted file must end within a few seconds, in bounded memory,
with EITHER a one-line ``RunFileError`` OR a ``Run`` on which everything a user reads works: ``num_steps``,
``sigmas``, ``experts``, ``attrs``, ``complete``, ``latents(q)[i]`` for every quantity and committed step,
and ``metrics("x0")`` finishes. A hang, a crash, another exception type, a multi-line message or memory
growth beyond 1 GiB fails.

The files are built here (from a demo run, from a run killed while recording, or from scratch with h5py);
they are opened in a child process (tests/scripts/hostile_open.py) that gives each case 5 s, kills and
reports a worker that overruns or dies, and caps its address space, so a hang fails the test instead of
hanging CI. One test per family, so a failure names the family and lists its worst cases.

Run: ``.venv/bin/python -m pytest tests/test_store_hostile.py -q`` (about a minute on two cores when the
reader passes). To stop abandoning a family after its first hangs and see every case, rerun the child on
the manifest this test leaves in pytest's temporary directory:
``python tests/scripts/hostile_open.py <tmp>/hostile0/manifest.json --max-hangs 100000 > results.jsonl``.
"""

from __future__ import annotations

import collections
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib

import h5py
import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
RUNNER = os.path.join(HERE, "scripts", "hostile_open.py")
SEED = 84  # every random choice below (offsets, bits, junk) comes from this seed
CASE_LIMIT_S = 5.0  # per case, measured in the child
MEM_MB = 1024  # allowed peak-memory growth per case
MAX_HANGS = 1  # per family and lane: after this many hangs a family is abandoned (reported as not run)
CHILD_TIMEOUT_S = 420  # the whole child; only reached when many cases hang
SIGNATURE = b"\x89HDF\r\n\x1a\n"
QUANTITY = "x0"  # the quantity that crafted cases replace
KILL_AT_BYTES = 250_000  # the killed run: SIGKILL once its file is this big (a few steps of slow_generation.py)


# ------------------------------------------------------------------------------------------ file helpers
def _latent_chunk_ranges(path: str) -> list[tuple[int, int]]:
    """Byte ranges that hold raw data: every chunk of /latents/*, and the unused tail of other chunked
    datasets' chunks (a /steps chunk holds 256 rows, a run writes a few)."""
    ranges: list[tuple[int, int]] = []
    try:
        f = h5py.File(path, "r")
    except OSError:  # left by a killed writer: still flagged as open for SWMR writing
        f = h5py.File(path, "r", swmr=True, libver="latest")
    with f:
        def visit(name: str, obj) -> None:
            if not isinstance(obj, h5py.Dataset) or obj.chunks is None:
                return
            for k in range(obj.id.get_num_chunks()):
                info = obj.id.get_chunk_info(k)
                if info.byte_offset is None:
                    continue
                keep = 0
                if not name.startswith("latents/") and obj.ndim == 1 and info.filter_mask == 0 \
                        and info.size == obj.chunks[0] * obj.dtype.itemsize:
                    used_rows = max(0, min(obj.chunks[0], obj.shape[0] - info.chunk_offset[0]))
                    keep = used_rows * obj.dtype.itemsize
                if info.size > keep:
                    ranges.append((info.byte_offset + keep, info.byte_offset + info.size))
        f.visititems(visit)
    return sorted(ranges)


def _hdf5_end(path: str) -> int:
    """Where HDF5's view of the file ends: base address + the superblock's end-of-file address (superblock at
    offset 0, versions 0-3), or the file size. Bytes past it (space a writer reserved ahead, say) are no
    metadata: HDF5 never reads them."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(64)
    if head[:8] != SIGNATURE or len(head) < 16:
        return size
    if head[8] in (0, 1):
        width, pos = head[13], 24 + (4 if head[8] == 1 else 0)
    elif head[8] in (2, 3):
        width, pos = head[9], 12
    else:
        return size
    if width not in (2, 4, 8) or len(head) < pos + 3 * width:
        return size
    base = int.from_bytes(head[pos:pos + width], "little")
    eof = int.from_bytes(head[pos + 2 * width:pos + 3 * width], "little")
    return min(size, base + eof) if base + eof > 0 else size


def _metadata_bits(path: str, count: int, rng: random.Random) -> list[int]:
    """``count`` distinct bit positions outside raw latent data, unused chunk space and anything past HDF5's
    end of file."""
    size = _hdf5_end(path)
    allowed, pos = [], 0
    for lo, hi in _latent_chunk_ranges(path):
        if min(lo, size) > pos:
            allowed.append((pos, min(lo, size)))
        pos = max(pos, hi)
    if pos < size:
        allowed.append((pos, size))
    total = sum(hi - lo for lo, hi in allowed)
    assert total > 1000, f"only {total} metadata bytes found in {path}: {allowed}"
    picks = sorted(rng.sample(range(total * 8), count))
    bits, acc, seg = [], 0, 0
    for p in picks:
        byte = p // 8
        while byte >= acc + (allowed[seg][1] - allowed[seg][0]):
            acc += allowed[seg][1] - allowed[seg][0]
            seg += 1
        bits.append((allowed[seg][0] + byte - acc) * 8 + p % 8)
    return bits


def _copy_attrs(src, dst) -> None:
    for key in src.attrs:
        dst.attrs.create(key, src.attrs[key], dtype=src.attrs.get_id(key).dtype)


def _claim_steps(f: h5py.File, n: int) -> None:
    """Make every step counter the file keeps agree with a claim of n steps (any schema version)."""
    if "steps" in f.attrs and np.issubdtype(np.asarray(f.attrs["steps"]).dtype, np.integer):
        f.attrs["steps"] = n
    for obj in f.values():
        if isinstance(obj, h5py.Dataset) and obj.dtype.names and obj.name != "/steps" and obj.size:
            for field in ("steps", "steps_seen", "committed"):
                if field in obj.dtype.names:
                    rows = obj[...]
                    rows[field] = n
                    obj[...] = rows


def _deflate_zeros(nbytes: int) -> bytes:
    """A zlib stream that inflates to ``nbytes`` zero bytes (~1000x smaller), built without compressing them."""
    mib = 1 << 20
    assert nbytes % mib == 0
    z = zlib.compressobj(9)
    first = z.compress(bytes(mib)) + z.flush(zlib.Z_FULL_FLUSH)  # header + 1 MiB, byte-aligned
    more = z.compress(bytes(mib)) + z.flush(zlib.Z_FULL_FLUSH)  # independent of history after a full flush
    adler = ((nbytes % 65521) << 16) | 1
    return first + more * (nbytes // mib - 1) + b"\x03\x00" + struct.pack(">I", adler)


# ------------------------------------------------------------------------------------------ case builders
class Cases:
    def __init__(self, root) -> None:
        self.root = root
        self.list: list[dict] = []
        self.names: set[str] = set()
        self.rng = random.Random(SEED)

    def add(self, family: str, name: str, path, **how) -> None:
        assert name not in self.names, name
        self.names.add(name)
        self.list.append({"name": name, "family": family, "path": os.fspath(path), **how})

    def file(self, name: str, data: bytes | None = None, copy_of=None) -> str:
        path = os.path.join(self.root, "crafted", name + ".h5")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if copy_of is not None:
            shutil.copyfile(copy_of, path)
        elif data is not None:
            with open(path, "wb") as fh:
                fh.write(data)
        return path

    def crafted(self, family: str, name: str, ref: str):
        """Context manager: a copy of the reference opened r+, registered as a case."""
        path = self.file(name, copy_of=ref)
        self.add(family, name, path)
        return h5py.File(path, "r+")

    def truncations(self, family: str, prefix: str, path: str, offsets) -> None:
        for n in offsets:
            self.add(family, f"{prefix}truncated@{n}", path, truncate=n)

    def flips(self, family: str, prefix: str, path: str, count: int) -> None:
        for bit in _metadata_bits(path, count, self.rng):
            self.add(family, f"{prefix}bitflip@{bit // 8}.{bit % 8}", path, flip=bit)


def _reference_like(f: h5py.File, ref: str, *, steps: int, step_shape=None, chunk=None, resizable=True) -> None:
    """Fill an empty file with the reference's attributes, other root objects, and empty /latents and
    /steps datasets claiming ``steps`` steps (no chunk written)."""
    with h5py.File(ref, "r") as src:
        _copy_attrs(src, f)
        for name, obj in src.items():
            if name not in ("latents", "steps"):
                src.copy(obj, f, name)
        lat = f.create_group("latents")
        _copy_attrs(src["latents"], lat)
        for q, ds in src["latents"].items():
            shape = tuple(step_shape or ds.shape[1:])
            if resizable:
                new = lat.create_dataset(q, shape=(0, *shape), maxshape=(None, *shape), dtype=ds.dtype,
                                         chunks=chunk or (1, *shape))
                new.resize(steps, axis=0)
            else:
                new = lat.create_dataset(q, shape=(steps, *shape), dtype=ds.dtype, chunks=chunk)
            _copy_attrs(ds, new)
        st = src["steps"]
        if resizable:
            new = f.create_dataset("steps", shape=(0,), maxshape=(None,), dtype=st.dtype, chunks=st.chunks)
            new.resize(steps, axis=0)
        else:
            new = f.create_dataset("steps", shape=(steps,), dtype=st.dtype)
        _copy_attrs(st, new)
    _claim_steps(f, steps)


def build_claims(c: Cases, ref: str) -> None:
    fam = "claims"
    big = 2_000_000_000
    huge_step = (1, 16, 1000, 1000, 1000)
    for name, kw in [
        ("claim_2e9_steps_small_file", dict(steps=big)),
        ("claim_2e9_steps_huge_step_shape", dict(steps=big, step_shape=huge_step, chunk=(1, 1, 1, 1, 1000, 1000))),
        ("claim_4_steps_huge_step_shape_no_data", dict(steps=4, step_shape=huge_step,
                                                       chunk=(1, 1, 1, 1, 1000, 1000))),
        ("claim_2e9_steps_fixed_size_datasets", dict(steps=big, resizable=False)),
    ]:
        path = c.file(name)
        with h5py.File(path, "w", libver="latest") as f:
            _reference_like(f, ref, **kw)
        c.add(fam, name, path)
    with c.crafted(fam, "claim_steps_rows_2e9_latents_4", ref) as f:
        f["steps"].resize(big, axis=0)
        _claim_steps(f, big)
    with c.crafted(fam, "claim_latents_2e9_steps_rows_4", ref) as f:
        for ds in f["latents"].values():
            ds.resize(big, axis=0)
        _claim_steps(f, big)
    with c.crafted(fam, "claim_all_resized_2e9_after_4_written", ref) as f:
        for ds in [*f["latents"].values(), f["steps"]]:
            ds.resize(big, axis=0)
        _claim_steps(f, big)
    # issue 18: a claim whose index arrays fit in memory (10⁸–3·10⁸ rows of int64) must not be allocated either
    for n in (130_000_000, 300_000_000):
        with c.crafted(fam, f"claim_all_resized_{n}_after_4_written", ref) as f:
            for ds in [*f["latents"].values(), f["steps"]]:
                ds.resize(n, axis=0)
            _claim_steps(f, n)
    with c.crafted(fam, "claim_5000_latent_datasets", ref) as f:  # groups: members beyond any run's
        src = f["latents"][QUANTITY]
        for i in range(5000):
            f["latents"].create_dataset(f"q{i}", shape=(0, *src.shape[1:]), maxshape=(None, *src.shape[1:]),
                                        chunks=src.chunks, dtype=src.dtype)
    with c.crafted(fam, "claim_100k_root_attributes", ref) as f:  # attributes: read only those needed
        for i in range(100_000):
            f.attrs[f"a{i}"] = i


def _external_x0(f: h5py.File, target: str, offset: int = 0, segments: int = 1) -> None:
    shape, dtype = f["latents"][QUANTITY].shape, f["latents"][QUANTITY].dtype
    del f["latents"][QUANTITY]
    ext = [(target, offset + k, h5py.h5f.UNLIMITED if k == segments - 1 else 1) for k in range(segments)]
    f["latents"].create_dataset(QUANTITY, shape=shape, dtype=dtype, external=ext)


def build_external(c: Cases, ref: str, fifo: str) -> None:
    fam = "external"
    targets = [("etc_passwd", "/etc/passwd", 0, 1), ("fifo", fifo, 0, 1), ("dev_zero", "/dev/zero", 0, 1),
               ("dev_urandom", "/dev/urandom", 0, 1), ("missing_file", os.path.join(c.root, "no-such-file"), 0, 1),
               ("directory", "/etc", 0, 1), ("relative_etc_passwd", "../../../../../../../../etc/passwd", 0, 1),
               ("etc_passwd_offset_2pow60", "/etc/passwd", 1 << 60, 1),
               ("etc_passwd_2000_segments", "/etc/passwd", 0, 2000)]
    for name, target, offset, segments in targets:
        with c.crafted(fam, f"x0_external_storage_{name}", ref) as f:
            _external_x0(f, target, offset, segments)
    with c.crafted(fam, "steps_external_storage_fifo", ref) as f:
        dtype, shape = f["steps"].dtype, f["steps"].shape
        del f["steps"]
        f.create_dataset("steps", shape=shape, dtype=dtype, external=[(fifo, 0, h5py.h5f.UNLIMITED)])


def build_links(c: Cases, ref: str, fifo: str) -> None:
    fam = "links"
    for name, make in [
        ("x0_external_link_to_reference", lambda p: h5py.ExternalLink(ref, "/latents/x0")),
        ("x0_external_link_to_itself", lambda p: h5py.ExternalLink(p, "/latents/x0")),
        ("x0_external_link_to_missing_file", lambda p: h5py.ExternalLink(p + ".missing", "/latents/x0")),
        ("x0_external_link_to_fifo", lambda p: h5py.ExternalLink(fifo, "/latents/x0")),
        ("x0_external_link_to_etc_passwd", lambda p: h5py.ExternalLink("/etc/passwd", "/x")),
        ("x0_soft_link_to_itself", lambda p: h5py.SoftLink("/latents/x0")),
        ("x0_dangling_soft_link", lambda p: h5py.SoftLink("/nowhere/at/all")),
        ("x0_soft_link_to_steps", lambda p: h5py.SoftLink("/steps")),
        ("x0_soft_link_to_root", lambda p: h5py.SoftLink("/")),
    ]:
        with c.crafted(fam, name, ref) as f:
            del f["latents"][QUANTITY]
            f["latents"][QUANTITY] = make(f.filename)
    with c.crafted(fam, "x0_eps_soft_link_cycle", ref) as f:
        del f["latents/x0"], f["latents/eps"]
        f["latents/x0"] = h5py.SoftLink("/latents/eps")
        f["latents/eps"] = h5py.SoftLink("/latents/x0")
    with c.crafted(fam, "x0_soft_link_chain_of_40", ref) as f:
        f.move("latents/x0", "x0_data")
        for k in range(40):
            f[f"chain{k}"] = h5py.SoftLink(f"/chain{k + 1}" if k < 39 else "/x0_data")
        f["latents/x0"] = h5py.SoftLink("/chain0")
    with c.crafted(fam, "latents_hard_link_cycle", ref) as f:
        f["latents/loop"] = f["latents"]
    with c.crafted(fam, "latents_external_link_to_reference", ref) as f:
        del f["latents"]
        f["latents"] = h5py.ExternalLink(ref, "/latents")
    with c.crafted(fam, "latents_soft_link_to_itself", ref) as f:
        del f["latents"]
        f["latents"] = h5py.SoftLink("/latents")
    with c.crafted(fam, "steps_soft_link_to_itself", ref) as f:
        del f["steps"]
        f["steps"] = h5py.SoftLink("/steps")
    with c.crafted(fam, "steps_external_link_to_fifo", ref) as f:
        del f["steps"]
        f["steps"] = h5py.ExternalLink(fifo, "/steps")
    with c.crafted(fam, "x0_is_a_group", ref) as f:
        del f["latents/x0"]
        f.create_group("latents/x0").create_dataset("data", data=np.zeros(3))
    with c.crafted(fam, "x0_is_a_named_datatype", ref) as f:
        del f["latents/x0"]
        f["latents/x0"] = np.dtype("float16")
    with c.crafted(fam, "latents_is_a_dataset", ref) as f:
        del f["latents"]
        f["latents"] = np.zeros((4, 3))
    with c.crafted(fam, "latents_is_an_empty_group", ref) as f:
        del f["latents"]
        f.create_group("latents")
    with c.crafted(fam, "steps_is_a_group", ref) as f:
        del f["steps"]
        f.create_group("steps")


def build_virtual(c: Cases, ref: str, fifo: str) -> None:
    fam = "virtual"
    with h5py.File(ref, "r") as src:
        shape, dtype = src["latents/x0"].shape, src["latents/x0"].dtype
    for name, source_file, source_shape, claim in [
        ("x0_virtual_from_reference", ref, shape, shape[0]),
        ("x0_virtual_from_missing_file", os.path.join(c.root, "missing-source.h5"), shape, shape[0]),
        ("x0_virtual_from_itself", ".", shape, shape[0]),
        ("x0_virtual_from_fifo", fifo, shape, shape[0]),
        ("x0_virtual_from_etc_passwd", "/etc/passwd", shape, shape[0]),
        ("x0_virtual_claims_2e9_steps", ref, shape, 2_000_000_000),
    ]:
        with c.crafted(fam, name, ref) as f:
            del f["latents/x0"]
            layout = h5py.VirtualLayout(shape=(claim, *shape[1:]), dtype=dtype)
            layout[: shape[0]] = h5py.VirtualSource(source_file, "latents/x0", shape=source_shape)
            f["latents"].create_virtual_dataset("x0", layout, fillvalue=0)
            if claim != shape[0]:
                for ds in [*(f["latents"][q] for q in f["latents"] if q != "x0"), f["steps"]]:
                    ds.resize(claim, axis=0)
                _claim_steps(f, claim)
    with c.crafted(fam, "steps_virtual_from_fifo", ref) as f:
        st = f["steps"]
        layout = h5py.VirtualLayout(shape=st.shape, dtype=st.dtype)
        layout[:] = h5py.VirtualSource(fifo, "steps", shape=st.shape)
        del f["steps"]
        f.create_virtual_dataset("steps", layout)


def build_filters(c: Cases, ref: str) -> None:
    fam = "filters"
    with h5py.File(ref, "r") as src:
        shape, dtype = src["latents/x0"].shape, src["latents/x0"].dtype
        x0 = src["latents/x0"][...]
    n = shape[0]
    for name, step_shape in [("gzip_bomb_1GiB_per_step", (1, 16, 64, 512, 1024)),
                             ("gzip_bomb_16MiB_per_step", (1, 16, 8, 256, 256))]:
        nbytes = int(np.prod(step_shape)) * np.dtype(dtype).itemsize
        bomb = _deflate_zeros(nbytes)
        with c.crafted(fam, name, ref) as f:
            del f["latents/x0"]
            ds = f["latents"].create_dataset("x0", shape=(n, *step_shape), maxshape=(None, *step_shape),
                                             chunks=(1, *step_shape), dtype=dtype, compression="gzip")
            for i in range(n):
                ds.id.write_direct_chunk((i, 0, 0, 0, 0, 0), bomb)
    # a chunk of the right nominal size whose stream inflates to 1 GiB
    with c.crafted(fam, "gzip_chunk_inflates_8000x_its_nominal_size", ref) as f:
        del f["latents/x0"]
        ds = f["latents"].create_dataset("x0", shape=shape, maxshape=(None, *shape[1:]), chunks=(1, *shape[1:]),
                                         dtype=dtype, compression="gzip")
        bomb = _deflate_zeros(1 << 30)
        for i in range(n):
            ds.id.write_direct_chunk((i, 0, 0, 0, 0, 0), bomb)
    with c.crafted(fam, "gzip_corrupt_stream", ref) as f:
        del f["latents/x0"]
        ds = f["latents"].create_dataset("x0", shape=shape, chunks=(1, *shape[1:]), dtype=dtype, compression="gzip")
        for i in range(n):
            ds.id.write_direct_chunk((i, 0, 0, 0, 0, 0), b"\x78\x9c" + c.rng.randbytes(4000))
    with c.crafted(fam, "unknown_filter_32001", ref) as f:
        del f["latents/x0"]
        ds = f["latents"].create_dataset("x0", shape=shape, chunks=(1, *shape[1:]), dtype=dtype,
                                         compression=32001, allow_unknown_filter=True)
        for i in range(n):
            ds.id.write_direct_chunk((i, 0, 0, 0, 0, 0), x0[i].tobytes())
    with c.crafted(fam, "fletcher32_wrong_checksums", ref) as f:
        del f["latents/x0"]
        ds = f["latents"].create_dataset("x0", shape=shape, chunks=(1, *shape[1:]), dtype=dtype, fletcher32=True)
        for i in range(n):
            ds.id.write_direct_chunk((i, 0, 0, 0, 0, 0), x0[i].tobytes() + b"\xde\xad\xbe\xef")
    with c.crafted(fam, "shuffle_gzip_valid_data", ref) as f:
        del f["latents/x0"]
        f["latents"].create_dataset("x0", data=x0, chunks=(1, *shape[1:]), shuffle=True, compression="gzip")
    with c.crafted(fam, "x0_chunks_missing_fill_value_nan", ref) as f:
        del f["latents/x0"]
        f["latents"].create_dataset("x0", shape=shape, chunks=(1, *shape[1:]), dtype=dtype, fillvalue=np.nan)


def build_dtypes(c: Cases, ref: str) -> None:
    fam = "dtypes"
    with h5py.File(ref, "r") as src:
        shape = src["latents/x0"].shape
        x0 = src["latents/x0"][...]
        steps = src["steps"][...]
    n, step_shape = shape[0], shape[1:]

    def replace_x0(name: str, **kw) -> None:
        with c.crafted(fam, name, ref) as f:
            del f["latents/x0"]
            f["latents"].create_dataset("x0", **kw)

    replace_x0("x0_int64", data=x0.astype(np.int64))
    replace_x0("x0_float64", data=x0.astype(np.float64))
    replace_x0("x0_big_endian_float32", data=x0.astype(">f4"))
    replace_x0("x0_complex64", data=x0.astype(np.complex64))
    replace_x0("x0_bool", data=x0 > 0)
    replace_x0("x0_variable_length_strings", data=np.array(["x"] * n, dtype=object), dtype=h5py.string_dtype())
    replace_x0("x0_compound", data=np.zeros(shape, dtype=[("a", "f2"), ("b", "i8")]))
    replace_x0("x0_opaque", data=np.zeros(shape, dtype="V2"))
    replace_x0("x0_subarray_dtype", data=np.zeros(shape[:-1], dtype=np.dtype(("f2", (shape[-1],)))))
    replace_x0("x0_variable_length_floats", shape=(n,), dtype=h5py.vlen_dtype(np.float16))
    replace_x0("x0_rank_0", data=np.float16(1))
    replace_x0("x0_rank_1", data=np.zeros(n, np.float16))
    replace_x0("x0_rank_3", data=np.zeros((n, 3, 3), np.float16))
    replace_x0("x0_rank_8", data=np.zeros((n, 1, *step_shape[1:], 1, 1), np.float16))
    replace_x0("x0_rank_32", data=np.zeros((n,) + (1,) * 31, np.float16))
    replace_x0("x0_null_dataspace", data=h5py.Empty("f2"))
    replace_x0("x0_zero_steps", shape=(0, *step_shape), maxshape=(None, *step_shape), dtype="f2",
               chunks=(1, *step_shape))
    replace_x0("x0_zero_size_steps", data=np.zeros((n, 1, 0, *step_shape[2:]), np.float16))
    replace_x0("x0_other_step_shape", data=np.zeros((n, *step_shape[:-2], 7, 9), np.float16))
    replace_x0("x0_more_batch", data=np.zeros((n, 3, *step_shape[1:]), np.float16))
    replace_x0("x0_two_steps_only", data=x0[:2])
    replace_x0("x0_chunk_spans_all_steps", data=x0, chunks=shape)

    def replace_steps(name: str, **kw) -> None:
        with c.crafted(fam, name, ref) as f:
            del f["steps"]
            f.create_dataset("steps", **kw)

    replace_steps("steps_plain_float_array", data=np.linspace(1, 0, n))
    replace_steps("steps_plain_string_array", data=np.array(["a"] * n, dtype=object), dtype=h5py.string_dtype())
    for field in ("sigma", "expert", "index"):
        keep = [k for k in steps.dtype.names if k != field]
        replace_steps(f"steps_without_{field}", data=steps[keep].astype([(k, steps.dtype[k]) for k in keep]))
    as_float = np.dtype([(k, "f8" if k == "expert" else steps.dtype[k]) for k in steps.dtype.names])
    replace_steps("steps_expert_as_float", data=np.zeros(n, dtype=as_float))
    as_text = np.dtype([(k, h5py.string_dtype() if k == "expert" else steps.dtype[k]) for k in steps.dtype.names])
    replace_steps("steps_expert_as_variable_length_text", shape=(n,), dtype=as_text)
    replace_steps("steps_rank_2", data=np.stack([steps, steps], axis=1))
    replace_steps("steps_rank_0", data=steps[0])
    replace_steps("steps_null_dataspace", data=h5py.Empty(steps.dtype))
    replace_steps("steps_zero_rows", shape=(0,), maxshape=(None,), dtype=steps.dtype, chunks=(256,))
    bad_text = steps.copy()
    if bad_text.dtype["expert"].kind == "S":
        bad_text["expert"] = b"\xff\xfe\xc3(expert"
    replace_steps("steps_expert_invalid_utf8", data=bad_text)
    nan = steps.copy()
    for k in ("sigma", "timestep"):
        nan[k] = np.nan
    replace_steps("steps_sigma_nan", data=nan)
    with c.crafted(fam, "quantities_1000_tiny", ref) as f:
        for k in range(1000):
            f["latents"].create_dataset(f"q{k:04d}", data=np.zeros((n, 1, 1, 2, 1, 1), np.float16))
    with c.crafted(fam, "quantity_name_with_newline_and_slashless_junk", ref) as f:
        f["latents"]["x0\nINJECTED"] = np.zeros(shape, np.float16)
    with c.crafted(fam, "quantity_is_a_scalar_string", ref) as f:
        f["latents"]["notes"] = "hello"


def _claim_attribute_file(c: Cases, ref: str, name: str) -> str:
    """The reference in HDF5's oldest format (object headers without checksums) with a first root attribute
    whose dataspace claims 2·10⁹ elements while its message holds 4096 bytes."""
    path = c.file(name)
    marker = 4097 * 3 + 1  # an element count that appears nowhere else
    with h5py.File(ref, "r") as src, h5py.File(path, "w", libver="earliest") as f:
        f.attrs.create("aaa_claim", np.zeros(marker, np.uint8))
        _copy_attrs(src, f)
        for key, obj in src.items():
            src.copy(obj, f, key)
    data = open(path, "rb").read()
    assert data.count(struct.pack("<Q", marker)) in (1, 2), "dataspace of the claim attribute not found"
    data = data.replace(struct.pack("<Q", marker), struct.pack("<Q", 2_000_000_000))
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def build_attributes(c: Cases, ref: str) -> None:
    fam = "attributes"

    def root(name: str, edit) -> None:
        with c.crafted(fam, name, ref) as f:
            edit(f.attrs)

    root("schema_version_99", lambda a: a.__setitem__("schema_version", 99))
    root("schema_version_abc", lambda a: a.__setitem__("schema_version", "abc"))
    root("schema_version_nan", lambda a: a.__setitem__("schema_version", np.nan))
    root("schema_version_inf", lambda a: a.__setitem__("schema_version", np.inf))
    root("schema_version_array", lambda a: a.__setitem__("schema_version", [1, 2]))
    root("schema_version_uint64_max", lambda a: a.create("schema_version", np.uint64(2**64 - 1)))
    root("schema_version_negative", lambda a: a.__setitem__("schema_version", -5))
    root("schema_version_missing", lambda a: a.__delitem__("schema_version"))
    root("schema_version_empty", lambda a: a.__setitem__("schema_version", h5py.Empty("i8")))
    root("schema_missing", lambda a: a.__delitem__("schema"))
    root("schema_as_fixed_bytes", lambda a: a.create("schema", np.bytes_(b"latent_probe")))
    root("schema_as_array", lambda a: a.__setitem__("schema", ["latent_probe", "x"]))
    root("json_keys_invalid_json", lambda a: a.__setitem__("json_keys", "[not json"))
    root("json_keys_a_number", lambda a: a.__setitem__("json_keys", "5"))
    root("json_keys_a_list_of_lists", lambda a: a.__setitem__("json_keys", "[[1], {}]"))
    root("json_keys_names_plain_text", lambda a: (a.__setitem__("json_keys", '["prompt"]'),
                                                  a.__setitem__("prompt", "not json")))
    root("json_deeply_nested", lambda a: (a.__setitem__("json_keys", '["deep"]'),
                                          a.__setitem__("deep", "[" * 200_000 + "]" * 200_000)))
    root("quantities_attr_a_number", lambda a: a.__setitem__("quantities", "7"))
    root("quantities_attr_an_object", lambda a: a.__setitem__("quantities", json.dumps({"x0": 1, "zz": [1]})))
    root("quantities_attr_lists_missing_names", lambda a: a.__setitem__("quantities", '["x0", "nope", 3]'))
    root("complete_an_array", lambda a: a.__setitem__("complete", [True, False]))
    root("complete_a_string", lambda a: a.__setitem__("complete", "no"))
    root("complete_empty", lambda a: a.__setitem__("complete", h5py.Empty("i1")))
    root("text_attr_invalid_utf8", lambda a: a.create("prompt", b"\xff\xfe\xc3(", dtype=h5py.string_dtype("ascii")))
    root("attr_100MB_string", lambda a: a.__setitem__("huge", "x" * 100_000_000))
    root("attr_100MB_in_json_keys", lambda a: (a.__setitem__("json_keys", '["huge"]'),
                                               a.__setitem__("huge", "[" + "1," * 50_000_000 + "1]")))

    with c.crafted(fam, "attr_name_invalid_utf8", ref) as f:
        h5py.h5a.create(f.id, b"\xff\xfe\xc3(", h5py.h5t.STD_I32LE, h5py.h5s.create(h5py.h5s.SCALAR)).close()
    with c.crafted(fam, "object_reference_attr", ref) as f:
        f.attrs.create("ref", f["steps"].ref, dtype=h5py.ref_dtype)
    with c.crafted(fam, "root_5000_attributes", ref) as f:
        for k in range(5000):
            f.attrs[f"a{k:05d}"] = k
    c.add(fam, "attr_claims_2e9_elements", _claim_attribute_file(c, ref, "attr_claims_2e9_elements"))


def build_signature(c: Cases, ref: str) -> None:
    fam = "signature"
    data = open(ref, "rb").read()
    rng = c.rng
    c.add(fam, "signature_only", c.file("signature_only", SIGNATURE))
    c.add(fam, "signature_then_zeros", c.file("signature_then_zeros", SIGNATURE + bytes(4096)))
    c.add(fam, "signature_then_random", c.file("signature_then_random", SIGNATURE + rng.randbytes(4096)))
    c.add(fam, "superblock_then_random", c.file("superblock_then_random", data[:48] + rng.randbytes(8192)))
    c.add(fam, "signature_then_random_at_0_and_reference_at_512",
          c.file("sig0_ref512", SIGNATURE + rng.randbytes(504) + data))
    c.add(fam, "signature_repeated", c.file("signature_repeated", SIGNATURE * 1024))
    for at in (512, 1024, 4096):
        prefixed = c.file(f"reference_at_{at}", rng.randbytes(at) + data)
        c.add(fam, f"reference_after_{at}_junk_bytes", prefixed)
    prefixed = os.path.join(c.root, "crafted", "reference_at_512.h5")
    c.truncations("userblock_truncate", "reference_at_512_", prefixed, sorted({*range(0, 512 + 4096, 16),
                                                              *rng.sample(range(4608, len(data) + 512), 48)}))
    real_ub = c.file("userblock_512")
    with h5py.File(ref, "r") as src, h5py.File(real_ub, "w", userblock_size=512, libver="latest") as f:
        _copy_attrs(src, f)
        for key, obj in src.items():
            src.copy(obj, f, key)
    c.add(fam, "userblock_512_written_by_hdf5", real_ub)
    c.truncations("userblock_truncate", "userblock_512_", real_ub, sorted({*range(512, 512 + 2048, 8),
                                                          *rng.sample(range(2560, os.path.getsize(real_ub)), 32)}))
    c.add(fam, "reference_then_1MB_random", c.file("ref_then_junk", data + rng.randbytes(1 << 20)))
    sparse = c.file("reference_then_sparse_10GB", data)
    os.truncate(sparse, 10 * 2**30)
    c.add(fam, "reference_then_sparse_10GB", sparse)


def _earliest_format_copy(ref: str, path: str) -> None:
    with h5py.File(ref, "r") as src, h5py.File(path, "w", libver="earliest") as f:
        _copy_attrs(src, f)
        for key, obj in src.items():
            src.copy(obj, f, key)


# ------------------------------------------------------------------------------------------ the run
def _child_env() -> dict:
    """Children import the very latent_probe this test imported (a checkout, not some installed copy)."""
    import latent_probe

    env = dict(os.environ)
    src_root = os.path.dirname(os.path.dirname(os.path.abspath(latent_probe.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([src_root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def _start_killed_run(root: str):
    path = os.path.join(root, "killed.h5")
    err = open(os.path.join(root, "slow_generation.stderr"), "wb")
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "scripts", "slow_generation.py"), path, "400"],
                            stdout=subprocess.DEVNULL, stderr=err, start_new_session=True, env=_child_env())
    err.close()
    return proc, path


def _finish_killed_run(proc, path: str, root: str) -> tuple[str, str]:
    """Wait until a few steps are on disk, copy the bytes while the writer is still writing, then SIGKILL."""
    live = os.path.join(root, "live_copy.h5")
    deadline = time.time() + 90
    try:
        while time.time() < deadline and proc.poll() is None:
            if os.path.exists(path) and os.path.getsize(path) > KILL_AT_BYTES:
                break
            time.sleep(0.01)
        if proc.poll() is not None:
            with open(os.path.join(root, "slow_generation.stderr"), errors="replace") as fh:
                pytest.fail(f"slow_generation.py ended early ({proc.returncode}): {fh.read()[-2000:]}")
        assert os.path.exists(path) and os.path.getsize(path) > KILL_AT_BYTES, "the killed-run writer made no progress"
        shutil.copyfile(path, live)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=20)
    return path, live


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = os.fspath(tmp_path_factory.mktemp("hostile"))
    proc, killed = _start_killed_run(root)  # runs while the rest is built
    try:
        from latent_probe.demo import run_demo_generation

        ref = os.path.join(root, "reference.h5")
        run_demo_generation(ref, steps=4, frames=5)[1].close()
        killed, live = _finish_killed_run(proc, killed, root)  # before it records many steps
        fifo = os.path.join(root, "fifo")
        os.mkfifo(fifo)
        c = Cases(root)
        size = os.path.getsize(ref)

        c.add("controls", "reference", ref)
        c.truncations("truncate", "", ref, [*range(0, 4097), *sorted(c.rng.sample(range(4097, size), 200))])
        c.flips("bitflip", "", ref, 500)
        v0 = os.path.join(root, "earliest_format.h5")  # object headers without checksums: flips go unnoticed
        _earliest_format_copy(ref, v0)
        c.add("v0_truncate", "reference_in_earliest_format", v0)
        c.truncations("v0_truncate", "v0_", v0, [*range(0, 4097, 8),
                                                 *sorted(c.rng.sample(range(4097, os.path.getsize(v0)), 64))])
        c.flips("v0_bitflip", "v0_", v0, 200)
        build_claims(c, ref)
        build_external(c, ref, fifo)
        build_links(c, ref, fifo)
        build_virtual(c, ref, fifo)
        build_filters(c, ref)
        build_dtypes(c, ref)
        build_attributes(c, ref)
        build_signature(c, ref)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=20)
    c.add("controls", "killed_mid_run", killed)
    c.add("killed_truncate", "live_copy_while_writing", live)
    k_size = os.path.getsize(killed)
    c.truncations("killed_truncate", "killed_", killed, [*range(0, 4097, 16),
                                                         *sorted(c.rng.sample(range(4097, k_size), 64))])
    c.flips("killed_bitflip", "killed_", killed, 150)

    manifest = os.path.join(root, "manifest.json")
    with open(manifest, "w") as fh:
        json.dump({"scratch": os.path.join(root, "scratch"), "cases": c.list}, fh)
    out_path, err_path = os.path.join(root, "results.jsonl"), os.path.join(root, "child.stderr")
    t0 = time.time()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        child = subprocess.Popen([sys.executable, RUNNER, manifest, "--limit", str(CASE_LIMIT_S), "--mem-mb",
                                  str(MEM_MB), "--max-hangs", str(MAX_HANGS), "--lanes", "2"],
                                 stdout=out, stderr=err, start_new_session=True, env=_child_env())
        try:
            child.wait(timeout=CHILD_TIMEOUT_S)
            child_note = f"child exited with status {child.returncode} after {time.time() - t0:.0f} s"
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)  # the child, its lanes and workers: all started here
            child.wait()
            child_note = f"child killed after the overall timeout of {CHILD_TIMEOUT_S} s"
    results = {}
    with open(out_path) as fh:
        for line in fh:
            if line.strip():
                r = json.loads(line)
                results[r["name"]] = r
    with open(err_path, errors="replace") as fh:
        stderr_tail = fh.read()[-3000:]
    by_family = collections.defaultdict(list)
    for case in c.list:
        by_family[case["family"]].append(case)
    return {"families": by_family, "results": results, "note": child_note, "stderr": stderr_tail}


def _check_family(hostile, family: str) -> dict:
    cases = hostile["families"][family]
    assert cases, f"no cases in family {family!r}"
    results = hostile["results"]
    counts: collections.Counter = collections.Counter()
    failures = []
    for case in cases:
        r = results.get(case["name"])
        if r is None:
            counts["missing"] += 1
            failures.append((case["name"], "missing", 0.0, f"no result ({hostile['note']})"))
            continue
        counts[r["outcome"]] += 1
        if r["outcome"] not in ("error", "run"):
            failures.append((case["name"], r["outcome"], r["seconds"], r["message"]))
    if failures:
        order = {"crash": 0, "hang": 1, "bad": 2, "missing": 3, "not_run": 4}
        shown = sorted(failures, key=lambda f: order.get(f[1], 9))[:25]
        lines = [f"  {name} [{outcome}, {sec:.2f} s]: {msg}" for name, outcome, sec, msg in shown]
        pytest.fail(f"{family}: {len(failures)} of {len(cases)} hostile files were not handled boundedly "
                    f"(outcomes {dict(counts)}; {hostile['note']}):\n" + "\n".join(lines)
                    + (f"\nchild stderr (tail):\n{hostile['stderr']}" if hostile["stderr"].strip() else ""),
                    pytrace=False)
    return counts


def test_controls_are_readable_runs(hostile):
    """The pristine files must open as Runs: a reader that refused everything would pass the rest."""
    results = hostile["results"]
    for name in ("reference", "killed_mid_run"):
        r = results.get(name)
        assert r is not None, f"{name}: no result ({hostile['note']}); stderr: {hostile['stderr']}"
        assert r["outcome"] == "run", f"{name}: {r}"
    assert "Run with 4 steps" in results["reference"]["message"], results["reference"]


def test_truncated_at_every_offset_to_4096_and_200_random(hostile):
    counts = _check_family(hostile, "truncate")
    assert sum(counts.values()) >= 4097 + 200


def test_single_bit_flips_in_metadata(hostile):
    counts = _check_family(hostile, "bitflip")
    assert sum(counts.values()) >= 500


def test_earliest_format_copy_truncated(hostile):
    _check_family(hostile, "v0_truncate")


def test_earliest_format_copy_bit_flips(hostile):
    _check_family(hostile, "v0_bitflip")


def test_killed_run_live_copy_and_truncations(hostile):
    _check_family(hostile, "killed_truncate")


def test_killed_run_bit_flips(hostile):
    _check_family(hostile, "killed_bitflip")


def test_claims_of_two_billion_steps_and_huge_steps(hostile):
    _check_family(hostile, "claims")


def test_external_storage_passwd_fifo_devices(hostile):
    _check_family(hostile, "external")


def test_external_soft_and_hard_links(hostile):
    _check_family(hostile, "links")


def test_virtual_datasets(hostile):
    _check_family(hostile, "virtual")


def test_compression_bombs_and_filters(hostile):
    _check_family(hostile, "filters")


def test_wrong_dtypes_ranks_and_shapes(hostile):
    _check_family(hostile, "dtypes")


def test_hostile_root_attributes(hostile):
    _check_family(hostile, "attributes")


def test_signature_junk_and_prefixed_files(hostile):
    _check_family(hostile, "signature")


def test_user_block_files_truncated(hostile):
    _check_family(hostile, "userblock_truncate")
