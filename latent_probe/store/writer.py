"""Stream step records to HDF5 from a background thread, crash-consistently.

The producer (the sampling loop) only copies tensors into one of ``slots`` preallocated host buffers and
queues it; the writer thread waits for the copy (a CUDA event, never a host-wide synchronisation),
writes every quantity and the step's metadata. When every slot is in flight the producer blocks until one
frees — nothing is dropped — and the time it blocked is recorded per step.

Durability (docs/hdf5-schema.md states the guarantee):

* The file is written beside its final path (``.<name>.<id>.partial.h5``) and moved into place once its
  first step is committed; a run that commits no step is removed at close: an existing run that
  ``overwrite=True`` replaces survives a generation (or a ``with`` block) that records no step, and a new
  path is left without a file.
* Everything that is not per-step — root attributes, datasets — is created before the first commit, then
  the file switches to SWMR mode; afterwards the writer only appends chunks and rows and updates the
  one-row ``/run_state`` dataset in place. A step is committed by flushing its data, then counting it in
  ``/run_state`` and flushing again, so a reader never counts a step whose data are not on disk.
* Before each step the writer reserves the disk space the step needs (``posix_fallocate``): a full disk
  stops recording *before* HDF5 writes anything, so the file keeps every committed step.

On CUDA, buffers are pinned and already in ``store_dtype`` (the cast runs on the GPU, halving the copy
for float16). On the CPU, tensors the caller owns are copied (a memcpy) and tensors the probe created
itself are passed by reference; the cast to ``store_dtype`` happens in the writer thread.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import errno
import json
import os
import queue
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np
import torch

from .._version import __version__
from . import schema
from .checksum import ALGORITHM as CHECKSUM, checksum
from .liveness import hold_writer_lock, writer_alive
from .superblock import declared_end_of_file
from ..errors import LatentProbeError

__all__ = ["StepMeta", "HiddenRows", "RunWriter", "WriterError", "DiskFullError"]

_STOP = object()
# metadata an HDF5 step adds besides its latents (chunk index entries, the /steps chunk, object headers)
_METADATA_MARGIN = 256 * 1024
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class WriterError(LatentProbeError, RuntimeError):
    """The background writer failed; steps committed before the failure remain in the file."""


class DiskFullError(WriterError):
    """No space left for the next step; every committed step remains in the file."""


@dataclass
class StepMeta:
    """Per-step metadata. ``timestep`` may be a tensor (read in the writer thread, off the hot path)."""

    index: int
    timestep: Any
    sigma: float
    alpha: float
    expert: str
    guidance_scale: float | None
    generation: int
    model_calls: int
    wall_time: float = field(default_factory=time.time)
    blocked_ms: float = 0.0


@dataclass(frozen=True)
class HiddenRows:
    """The block hidden states of one step (``LatentProbe(blocks=..., block_steps=...)``), staged during the step's
    DiT calls with :meth:`RunWriter.stage_hidden`. ``shape``: (B, F', T, D) of one (block, branch) row; ``blocks``:
    K, the probed blocks; ``branches``: branch name → (call, start, stop), the rows [start:stop] of what DiT call
    ``call`` staged; ``keep``: False → nothing is stored for this step, only the shape is declared (the datasets are
    created at the run's first step, whether or not it keeps them)."""

    shape: tuple[int, int, int, int]
    blocks: int
    branches: dict[str, tuple[int, int, int]]
    keep: bool


@dataclass
class _Slot:
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)
    timestep: torch.Tensor | None = None
    ranges: torch.Tensor | None = None  # [Q, 2] float64 min/max of the sources (CUDA), pinned
    held: dict[str, torch.Tensor] = field(default_factory=dict)  # own tensors passed by reference (CPU)
    from_cuda: frozenset[str] = frozenset()  # quantities copied from the GPU (their min/max are in ranges)
    staging: dict[str, torch.Tensor] = field(default_factory=dict)  # GPU buffers for the cast (CUDA)
    keep: bool = True  # this step's latents are stored (False: only their shapes are read, at the first step)
    shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = field(default_factory=dict)  # of unstored latents
    sums: dict[str, torch.Tensor] = field(default_factory=dict)  # per-step float64 metric sums (host)
    sums_host: torch.Tensor | None = None  # pinned float64 vector the device sums are copied into (CUDA)
    sums_layout: tuple[tuple[str, tuple[int, ...]], ...] = ()  # (name, shape) of the pieces of sums_host
    # block hidden states staged during the step's DiT calls, by (call, block position): host buffers (pinned and in
    # the store dtype from CUDA; the source dtype on the CPU), the source's [min, max] (float64, pinned; CUDA only)
    hidden: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    hidden_ranges: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    hidden_staged: set[tuple[int, int]] = field(default_factory=set)  # keys staged for this step
    hidden_event: Any = None  # CUDA event after the last staged copy
    hidden_rows: HiddenRows | None = None


def _wait_for(event: torch.cuda.Event) -> None:
    """Wait for the copies behind ``event`` without holding the GIL: ``Event.synchronize`` would block the
    sampling loop's thread too, for as long as the GPU works on what precedes the copies."""
    delay = 1e-4
    while not event.query():
        time.sleep(delay)
        delay = min(delay * 2, 2e-3)


def _cast_checked(src: np.ndarray, lo: float, hi: float, dtype: np.dtype) -> tuple[np.ndarray, bool, bool]:
    """``src`` in the store ``dtype``, whether the stored row holds NaN/Inf (``lo``/``hi``: its range, not finite, or
    beyond the dtype's range), and whether finite values overflowed to ±inf. The overflow is flagged and warned
    about once by the writer, not by numpy."""
    finite = bool(np.isfinite(lo) and np.isfinite(hi))
    with np.errstate(over="ignore"):
        over = finite and not (np.isfinite(dtype.type(lo)) and np.isfinite(dtype.type(hi)))
        out = src.astype(dtype, copy=False)
    return out, (not finite) or over, over


def _checksums(arrays: list[np.ndarray]) -> list[int]:
    return [checksum(a) for a in arrays]


def partial_path(path: str) -> str:
    """Where a run is written until its first step is committed: hidden, beside ``path``."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.partial.h5")


class _SpaceReservation:
    """Keeps the disk blocks for the next write allocated ahead of HDF5 (``posix_fallocate``)."""

    def __init__(self, path: str, create: bool = False) -> None:
        """``create``: make the file (it must not exist) — the caller then takes the writer lock before anything
        else opens it, so a partial file is never seen unlocked while its writer lives."""
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        self.fd: int | None = os.open(path, flags, 0o644)
        self.supported = hasattr(os, "posix_fallocate")

    def ensure(self, end: int) -> None:
        """Make bytes [0, end) of the file allocated on disk; DiskFullError when the device is full."""
        if not self.supported or self.fd is None:
            return
        size = os.fstat(self.fd).st_size
        if end <= size:
            return
        try:
            os.posix_fallocate(self.fd, size, end - size)
        except OSError as exc:
            if exc.errno in _NO_SPACE:
                raise DiskFullError(f"no space left on its device ({end - size} more bytes needed)") from None
            self.supported = False  # EOPNOTSUPP / EINVAL: this file system cannot reserve; HDF5 writes as usual

    def hold(self) -> None:
        """Mark the file as being recorded by a live process (store/liveness.py)."""
        if self.fd is not None:
            hold_writer_lock(self.fd)

    def close(self) -> None:
        """Give back the reserved bytes beyond the end of file the (closed) HDF5 file declares, and close the
        descriptor (the file may have been renamed since: it is found through the descriptor)."""
        if self.fd is None:
            return
        try:
            keep = declared_end_of_file(os.pread(self.fd, 64, 0))
            if keep is not None and os.fstat(self.fd).st_size > keep:
                os.ftruncate(self.fd, keep)
        except OSError:
            pass
        finally:
            os.close(self.fd)
            self.fd = None


class RunWriter:
    """Owns the HDF5 file (or in-memory HDF5 image) of one run while it is being recorded.

    path=None keeps the run in memory (HDF5 core driver, no backing store); ``file`` stays open after
    :meth:`close` for reading. ``attrs`` become root attributes at once (the schema is on disk from
    creation); ``experts`` lists the names ``StepMeta.expert`` may take (others are learnt at the first
    step). ``on_error="warn"`` turns a writer failure into one warning: recording stops, the caller goes on.
    ``generation`` (1-based) and ``probe_id`` say which generation of which probe the file holds (root
    attributes, and ``/generation``). ``latent_rows``: latents are stored for chosen steps only (``submit(...,
    keep_latents=False)`` for the others); ``/latent_step`` then says which step each latent row is.
    """

    def __init__(self, path: str | os.PathLike | None, store_dtype: str = "float16", slots: int = 3,
                 overwrite: bool = False, *, attrs: dict[str, Any] | None = None,
                 experts: list[str] | tuple[str, ...] | None = None, on_error: str = "raise",
                 generation: int = 1, probe_id: str | None = None, latent_rows: bool = False) -> None:
        if store_dtype not in schema.STORE_DTYPES:
            raise ValueError(f"store_dtype must be one of {schema.STORE_DTYPES}, got {store_dtype!r}")
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        if on_error not in ("raise", "warn"):
            raise ValueError(f"on_error must be 'raise' or 'warn', got {on_error!r}")
        if int(generation) < 1:
            raise ValueError(f"generation must be >= 1, got {generation}")
        self.path = None if path is None else os.fspath(path)
        self.store_dtype = store_dtype
        self.on_error = on_error
        self.generation = int(generation)
        self.probe_id = probe_id
        self.latent_rows = bool(latent_rows)
        self._torch_store_dtype = getattr(torch, store_dtype)
        self._experts: list[str] = list(dict.fromkeys(experts or ()))
        self.published = self.path is None
        self._kept = False  # the path was taken by another run: this one stays beside it (never deleted)
        self._space: _SpaceReservation | None = None
        if self.path is not None:
            if os.path.isdir(self.path):
                raise IsADirectoryError(f"{self.path} is a directory")
            if os.path.exists(self.path) and not overwrite:
                raise FileExistsError(f"{self.path} exists; pass overwrite=True to replace it")
            if os.path.islink(self.path) and not os.path.exists(self.path) and not overwrite:
                raise FileExistsError(f"{self.path} is a dangling symbolic link (to {os.readlink(self.path)}); "
                                      "remove it, or pass overwrite=True to replace the link with the run")
            parent = os.path.dirname(os.path.abspath(self.path))
            if not os.path.isdir(parent):
                raise FileNotFoundError(f"directory {parent} does not exist")
            self.overwrite = overwrite
            self.write_path = partial_path(self.path)
            # created and locked before HDF5 opens it: live from creation, a partial file is never taken for a
            # killed writer's (studies remove those by this lock alone)
            self._space = _SpaceReservation(self.write_path, create=True)
            self._space.hold()
            try:
                self.file = h5py.File(self.write_path, "w", libver="latest")
            except BaseException:
                self._space.close()
                try:
                    os.unlink(self.write_path)
                except OSError:
                    pass
                raise
        else:
            self.overwrite = False
            self.write_path = None
            self.file = h5py.File(f"latent_probe-{uuid.uuid4().hex}.h5", "w", driver="core", backing_store=False)
        try:
            if self.write_path is not None:
                self._space.ensure(_METADATA_MARGIN)
            self._begin(attrs or {})
        except BaseException as exc:
            self._discard()
            if isinstance(exc, DiskFullError):
                raise DiskFullError(f"latent_probe: disk full, cannot start recording {self.path}: {exc}") from None
            raise
        self._free: queue.Queue[_Slot] = queue.Queue()
        for _ in range(slots):
            self._free.put(_Slot())
        self._todo: queue.Queue[Any] = queue.Queue()
        self._error: BaseException | None = None
        self._warned_error = False
        self._initialised = False
        self._names: tuple[str, ...] = ()
        self._datasets: dict[str, h5py.Dataset] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._sum_datasets: dict[str, h5py.Dataset] = {}
        self._sum_shapes: dict[str, tuple[int, ...]] = {}
        self._online_spaces: list[str] = []
        self._crc_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: _Slot | None = None  # the next step's slot, taken by stage_hidden during its DiT calls
        self._pending_blocked = 0.0
        self._hidden: dict[str, dict[str, h5py.Dataset]] = {}  # branch → data, step, crc, flags (block_steps=)
        self._hidden_shape: tuple[int, int, int, int, int] | None = None  # [K, B, F', T, D] of one row
        self._hidden_written: dict[str, int] = {}  # branch → rows written
        self._warned_hidden = False
        self._latent_step: h5py.Dataset | None = None
        self._step_nbytes = 0
        self.latent_rows_written = 0
        self.steps_written = 0
        self.blocked_s = 0.0
        self.nonfinite_steps = 0
        self._warned_nonfinite = False
        self._warned_overflow = False
        self._copy_stream: torch.cuda.Stream | None = None
        self._thread = threading.Thread(target=self._loop, name="latent_probe-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ creation (before any step)
    def _begin(self, attrs: dict[str, Any]) -> None:
        f = self.file
        base = {
            "schema": schema.SCHEMA_NAME,
            "schema_version": schema.SCHEMA_VERSION,
            "library_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "store_dtype": self.store_dtype,
            "layout": schema.LATENT_LAYOUT,
            "generation": self.generation,
            "probe_id": self.probe_id,
        }
        clash = sorted(set(attrs) & set(base))
        if clash:
            raise ValueError(f"attrs {clash} are written by latent_probe itself; choose other names")
        base.update(attrs)
        for key, value in schema.encode_attrs(base).items():
            f.attrs[key] = value
        self._state_ds = f.create_dataset(schema.STATE_DATASET, shape=(1,), dtype=schema.STATE_DTYPE)
        self._state = np.zeros(1, dtype=schema.STATE_DTYPE)
        self._state_ds[0] = self._state[0]
        self._steps_ds = f.create_dataset(schema.STEPS_DATASET, shape=(0,), maxshape=(None,),
                                          chunks=(schema.SCALE_CHUNK,), dtype=schema.STEP_DTYPE)
        # the netCDF view (docs/hdf5-schema.md): dimension scales and the step coordinates, all created now,
        # before SWMR starts (a scale is attached by writing attributes, which SWMR forbids later)
        gen = f.create_dataset(schema.GENERATION_DIM, data=np.array([self.generation], dtype=np.int32))
        gen.make_scale(schema.GENERATION_DIM)
        self._state_ds.dims[0].attach_scale(gen)
        step = self._resizable(schema.STEP_DIM, np.int64)
        step.make_scale(schema.STEP_DIM)
        self._steps_ds.dims[0].attach_scale(step)
        self._coords: dict[str, h5py.Dataset] = {schema.STEP_DIM: step}
        for name in schema.STEP_COORDS:
            if name != "expert":  # its width is known once the first step has named its expert
                self._coords[name] = self._resizable(name, np.float64)
                self._coords[name].dims[0].attach_scale(step)
        f.flush()

    def _resizable(self, name: str, dtype: Any) -> h5py.Dataset:
        """An empty 1-D dataset along the step axis, one chunk per SCALE_CHUNK rows."""
        return self.file.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(schema.SCALE_CHUNK,),
                                        dtype=dtype)

    def _discard(self) -> None:
        """Remove a file that holds no committed step (never the published run)."""
        try:
            self.file.close()
        except Exception:
            pass
        if self._space is not None:
            self._space.close()
        if self.write_path is not None and not self.published and not self._kept:
            try:
                os.unlink(self.write_path)
            except OSError:
                pass

    # ------------------------------------------------------------------ producer side (hot path)
    def submit(self, meta: StepMeta, tensors: dict[str, torch.Tensor], owned: frozenset[str] = frozenset(),
               attrs: dict[str, Any] | None = None, *, sums: dict[str, torch.Tensor] | None = None,
               keep_latents: bool = True, hidden: HiddenRows | None = None) -> float:
        """Queue one step; returns seconds the caller was blocked waiting for a free slot.

        tensors: quantity → [B, C, F, H, W]. ``owned`` names tensors the probe created itself and shares
        with nobody (on the CPU they travel by reference). ``attrs`` (first step only) are added to the root
        attributes before the first commit. ``sums``: name → float64 tensor of a fixed shape, stored every step
        under ``/online/<name>`` (metrics computed during the run; on a GPU they travel with the step's copies); a name
        starting with "/" (``/blocks/sq``) is that path in the file.
        ``keep_latents=False`` (a writer made with ``latent_rows``): this step's latents are not stored; only
        their shapes and dtypes are read. ``hidden``: the block hidden states this step staged (:meth:`stage_hidden`)
        and which branch each is; a run that keeps any declares them at every step.
        """
        if not keep_latents and not self.latent_rows:
            raise ValueError("keep_latents=False needs a writer made with latent_rows=True")
        if self._failed():
            self.drop_staged()
            return 0.0
        if hidden is not None and hidden.keep:
            want = {(call, k) for call, _, _ in hidden.branches.values() for k in range(hidden.blocks)}
            staged = set() if self._pending is None else self._pending.hidden_staged
            if not want <= staged:
                self.drop_staged()
                raise ValueError(f"step {meta.index} keeps block hidden states that were not staged: "
                                 f"{sorted(want - staged)[:3]} (call, block)")
        if self._pending is not None:
            slot, blocked = self._pending, self._pending_blocked
            self._pending = None
        else:
            got = self._take_slot()
            if got is None:
                return 0.0
            slot, blocked = got
        self.blocked_s += blocked
        meta.blocked_ms = blocked * 1e3
        slot.hidden_rows = hidden
        event = None
        slot.held = {}
        slot.keep = keep_latents
        slot.shapes = {} if keep_latents else {n: (tuple(t.shape), t.dtype) for n, t in tensors.items()}
        if not keep_latents:
            tensors = {}
        sums = dict(sums or {})
        cuda = [t for t in tensors.values() if t.is_cuda] + [t for t in sums.values() if t.is_cuda]
        slot.from_cuda = frozenset(n for n, t in tensors.items() if t.is_cuda)
        slot.sums = {n: t.detach() for n, t in sums.items() if not t.is_cuda}
        slot.sums_layout = ()
        ts = meta.timestep
        if cuda or (isinstance(ts, torch.Tensor) and ts.is_cuda):
            event = self._copy_to_host(slot, tensors, ts, {n: t for n, t in sums.items() if t.is_cuda})
        for name, t in tensors.items():
            t = t.detach()
            if t.is_cuda:
                continue
            elif name in owned:
                slot.held[name] = t
            else:
                buf = slot.buffers.get(name)
                if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
                    buf = torch.empty(t.shape, dtype=t.dtype)
                    slot.buffers[name] = buf
                buf.copy_(t)
        self._todo.put((slot, meta, tuple(tensors), event, attrs))
        return blocked

    def _take_slot(self) -> tuple[_Slot, float] | None:
        """A free slot and the seconds waited for it; None when recording stopped meanwhile (on_error="warn")."""
        t0 = time.perf_counter()
        while True:
            try:
                return self._free.get(timeout=0.5), time.perf_counter() - t0
            except queue.Empty:
                if self._failed():
                    return None

    def stage_hidden(self, call: int, block: int, t: torch.Tensor) -> None:
        """During the DiT calls of a step whose block hidden states are kept: take block position ``block``'s output
        ``t`` [B_call, F', T, D] of the step's DiT call ``call`` into the next step's slot (taken now; the wait for a
        free one is counted as the step's blocked time). On CUDA, ``t`` is copied in the store dtype on the producer's
        stream — the values the block returned, whatever runs after it — then to pinned host memory on the writer's
        copy stream, with its min and max; nothing waits on the host. On the CPU: a memcpy. A failed writer stages
        nothing (the step's ``submit`` reports the failure)."""
        if self._error is not None:
            return
        if self._pending is None:
            got = self._take_slot()
            if got is None:
                return
            self._pending, self._pending_blocked = got
            self._pending.hidden_staged = set()
            self._pending.hidden_event = None
        slot, key = self._pending, (call, block)
        t = t.detach()
        if not t.is_cuda:
            buf = slot.hidden.get(key)
            if buf is None or buf.shape != t.shape or buf.dtype != t.dtype or buf.is_pinned():
                buf = slot.hidden[key] = torch.empty(t.shape, dtype=t.dtype)
            buf.copy_(t)
            slot.hidden_ranges.pop(key, None)
            slot.hidden_staged.add(key)
            return
        producer = torch.cuda.current_stream(t.device)
        stage = t.to(self._torch_store_dtype, copy=True)  # stream-ordered after the block: its values, exactly
        rows = t.reshape(t.shape[0], -1)
        lo, hi = torch.aminmax(rows, dim=1) if rows.shape[1] else (rows.new_zeros(len(rows)),) * 2
        span = torch.stack([lo.to(torch.float64), hi.to(torch.float64)], 1)  # [B_call, 2]: per batch row
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(t.device)
        stream = self._copy_stream
        stream.wait_stream(producer)
        with torch.cuda.stream(stream):
            buf = slot.hidden.get(key)
            if buf is None or buf.shape != stage.shape or buf.dtype != stage.dtype or not buf.is_pinned():
                buf = slot.hidden[key] = torch.empty(stage.shape, dtype=stage.dtype, pin_memory=True)
            rng = slot.hidden_ranges.get(key)
            if rng is None or rng.shape != span.shape:
                rng = slot.hidden_ranges[key] = torch.empty(span.shape, dtype=torch.float64, pin_memory=True)
            buf.copy_(stage, non_blocking=True)
            rng.copy_(span, non_blocking=True)
            stage.record_stream(stream)  # its memory goes back to the allocator once the copy ran
            span.record_stream(stream)
            event = torch.cuda.Event()
            event.record(stream)
        slot.hidden_event = event
        slot.hidden_staged.add(key)

    def drop_staged(self) -> None:
        """Give back the slot a step took for its hidden states when that step is not submitted (recording stopped,
        the step could not be recorded)."""
        slot, self._pending = self._pending, None
        if slot is not None:
            event, slot.hidden_event = slot.hidden_event, None
            if event is not None:  # the copies into its buffers may still run: let them finish first
                _wait_for(event)
            slot.hidden_staged = set()
            self._free.put(slot)

    def _checksummer(self) -> concurrent.futures.ThreadPoolExecutor:
        """One helper thread of the writer thread: checksums a step's rows while they are written."""
        if self._crc_pool is None:
            self._crc_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="latent_probe-checksum")
        return self._crc_pool

    @property
    def failed(self) -> bool:
        """Writing failed (the error was raised or warned about)."""
        return self._error is not None

    def _failed(self) -> bool:
        """True when recording has stopped (on_error="warn"); raises when it failed (on_error="raise")."""
        if self._error is None:
            return False
        if self.on_error == "raise":
            raise self._writer_error()
        if not self._warned_error:
            self._warned_error = True
            warnings.warn(f"latent_probe: recording stopped, the generation goes on: {self._message()}",
                          RuntimeWarning, stacklevel=3)
        return True

    def _copy_to_host(self, slot: _Slot, tensors: dict[str, torch.Tensor], ts: Any,
                      sums: dict[str, torch.Tensor] | None = None) -> torch.cuda.Event:
        """Start device→pinned-host copies on a side stream; return the event that marks them done.

        The side stream first waits for the producer's stream (so it copies the values as of this step),
        and ``record_stream`` keeps the caching allocator from reusing the sources before the copy ran.
        The sampling loop's stream never waits on the copies. (Sources must not be modified in place
        afterwards; Wan2.2 and diffusers rebind their latents instead.) Each source's min and max travel
        with it, so a value the float16 cast turns into ±inf is told from a non-finite source. Device ``sums``
        are gathered into one float64 vector on the GPU and copied in one transfer.
        """
        sums = sums or {}
        device = (next((t.device for t in tensors.values() if t.is_cuda), None)
                  or next((t.device for t in sums.values()), None) or ts.device)
        producer = torch.cuda.current_stream(device)
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(device)
        stream = self._copy_stream
        stream.wait_stream(producer)
        with torch.cuda.stream(stream):
            names = list(tensors)
            if names and (slot.ranges is None or slot.ranges.shape[0] != len(names)):
                slot.ranges = torch.empty(len(names), 2, dtype=torch.float64, pin_memory=True)
                slot.staging["ranges"] = torch.empty(len(names), 2, dtype=torch.float64, device=device)
            ranges = slot.staging.get("ranges")
            for i, name in enumerate(names):
                t = tensors[name]
                if not t.is_cuda:
                    continue
                t = t.detach()
                buf = slot.buffers.get(name)
                if buf is None or buf.shape != t.shape:
                    buf = torch.empty(t.shape, dtype=self._torch_store_dtype, pin_memory=True)
                    slot.buffers[name] = buf
                if t.dtype == buf.dtype:
                    buf.copy_(t, non_blocking=True)
                else:  # cast on the GPU into this slot's own staging buffer: half the bytes to move for float16
                    stage = slot.staging.get(name)
                    if stage is None or stage.shape != t.shape:
                        stage = torch.empty(t.shape, dtype=buf.dtype, device=t.device)
                        slot.staging[name] = stage
                    stage.copy_(t)
                    buf.copy_(stage, non_blocking=True)
                if t.numel():
                    lo, hi = torch.aminmax(t)
                    ranges[i, 0].copy_(lo)
                    ranges[i, 1].copy_(hi)
                t.record_stream(stream)
            if names:
                slot.ranges.copy_(ranges, non_blocking=True)
            if sums:
                for t in sums.values():
                    t.record_stream(stream)
                flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in sums.values()])
                if slot.sums_host is None or slot.sums_host.numel() != flat.numel():
                    slot.sums_host = torch.empty(flat.numel(), dtype=torch.float64, pin_memory=True)
                slot.sums_host.copy_(flat, non_blocking=True)
                flat.record_stream(stream)
            slot.sums_layout = tuple((n, tuple(t.shape)) for n, t in sums.items())
            if isinstance(ts, torch.Tensor) and ts.is_cuda:
                if slot.timestep is None:
                    slot.timestep = torch.empty(1, dtype=torch.float64, pin_memory=True)
                    slot.staging["timestep"] = torch.empty(1, dtype=torch.float64, device=ts.device)
                # cast on the GPU first: a device-to-host copy that also converts dtype is synchronous
                stage = slot.staging["timestep"]
                stage.copy_(ts.detach().reshape(-1)[:1])
                slot.timestep.copy_(stage, non_blocking=True)
                ts.record_stream(stream)
            event = torch.cuda.Event()
            event.record(stream)
        return event

    # ------------------------------------------------------------------ end of the run
    def close(self, final: dict[str, Any] | None = None) -> None:
        """Drain the queue, stop the thread, write the end-of-run state in place, close the file.

        final: ``complete`` (bool), ``error`` (str), ``steps_seen`` (int). Raises WriterError if writing
        failed (unless ``on_error="warn"``); every committed step stays readable either way.
        """
        final = dict(final or {})
        unknown = set(final) - {"complete", "error", "steps_seen"}
        if unknown:
            raise ValueError(f"close() takes complete, error and steps_seen, not {sorted(unknown)}")
        if self._thread.is_alive():
            self._todo.put(_STOP)
            self._thread.join()
        if self._crc_pool is not None:
            self._crc_pool.shutdown(wait=True)
            self._crc_pool = None
        complete = bool(final.get("complete", False)) and self._error is None
        state = self._state
        state["steps"] = self.steps_written
        state["steps_seen"] = int(final.get("steps_seen", self.steps_written))
        state["complete"] = complete
        state["closed"] = 1
        state["nonfinite_steps"] = self.nonfinite_steps
        state["blocked_ms_total"] = self.blocked_s * 1e3
        if final.get("error"):
            state["error"] = schema.utf8_cut(str(final["error"]))
        if self._error is not None:
            state["writer_error"] = schema.utf8_cut(self._message())
        try:  # in place: one row; a failure here leaves the previous state, whose counter is still right
            self._state_ds[0] = state[0]
            self.file.flush()
        except Exception as exc:  # noqa: BLE001
            self._error = self._error or exc
        if self.path is not None:
            self._close_file(complete)
        if self._error is not None:
            if self.on_error == "raise":
                raise self._writer_error() from self._error
            if not self._warned_error:  # the last step failed: no later submit could have said so
                self._warned_error = True
                warnings.warn(f"latent_probe: recording stopped: {self._message()}", RuntimeWarning, stacklevel=3)

    def _close_file(self, complete: bool) -> None:
        try:
            self.file.close()
        except Exception as exc:  # noqa: BLE001 - a failed disk; committed steps are already on it
            self._error = self._error or exc
        if self._space is not None:
            self._space.close()
        if not self.published and not self._kept:
            if self.steps_written == 0:
                self._discard()  # nothing committed: leave the path (and any run it holds) exactly as it was
            else:
                try:
                    self._publish()
                except OSError as exc:
                    self._error = self._error or exc

    def _publish(self) -> None:
        """Move the file being written to its path: replace (overwrite) or create it (never clobbering)."""
        if self.overwrite:
            if os.path.exists(self.path) and writer_alive(self.path):
                raise FileExistsError(f"{self.path} is being recorded by another process; this run is kept at "
                                      f"{self.write_path}")
            os.replace(self.write_path, self.path)
        else:
            try:
                os.link(self.write_path, self.path)
            except FileExistsError:
                raise FileExistsError(f"{self.path} appeared while recording; this run is kept at "
                                      f"{self.write_path}") from None
            except OSError:  # no hard links on this file system
                if os.path.exists(self.path):
                    raise FileExistsError(f"{self.path} appeared while recording; this run is kept at "
                                          f"{self.write_path}") from None
                os.rename(self.write_path, self.path)
            else:
                os.unlink(self.write_path)
        self.published = True

    def _message(self) -> str:
        exc = self._error
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        where = self.path or "in-memory run"
        if isinstance(exc, DiskFullError) or (isinstance(exc, OSError) and exc.errno in _NO_SPACE):
            return f"{where}: disk full after {self.steps_written} committed steps ({text}); they stay readable"
        return f"{where}: writer failed after {self.steps_written} committed steps: {type(exc).__name__}: {text}"

    def _writer_error(self) -> WriterError:
        cls = DiskFullError if isinstance(self._error, DiskFullError) or (
            isinstance(self._error, OSError) and self._error.errno in _NO_SPACE) else WriterError
        return cls(f"latent_probe: {self._message()}")

    # ------------------------------------------------------------------ writer thread
    def _loop(self) -> None:
        while True:
            item = self._todo.get()
            if item is _STOP:
                break
            slot, meta, names, event, attrs = item
            try:
                if self._error is None:
                    if event is not None:
                        _wait_for(event)
                    if slot.hidden_event is not None:
                        _wait_for(slot.hidden_event)
                    self._write(slot, meta, names, attrs)
            except BaseException as exc:  # noqa: BLE001 - reported to the producer
                self._error = exc
            finally:
                slot.held = {}
                slot.hidden_staged, slot.hidden_event, slot.hidden_rows = set(), None, None
                self._free.put(slot)

    def _arrays(self, slot: _Slot, names: tuple[str, ...]) -> tuple[dict[str, np.ndarray], int, int]:
        """Host arrays in the store dtype; bitmasks of the quantities whose stored values hold NaN/Inf, and
        of those whose finite values overflowed the store dtype (stored as ±inf).

        Both come from the source's min and max (NaN propagates through both; one pass each, at memory
        speed), taken on the GPU for CUDA sources."""
        dtype = np.dtype(self.store_dtype)
        out, nonfinite, overflow = {}, 0, 0
        for i, name in enumerate(names):
            t = slot.held.get(name)
            if t is None:
                t = slot.buffers[name]
            if t.dtype == torch.bfloat16:
                t = t.float()
            src = t.numpy()
            if name in slot.from_cuda:
                lo, hi = float(slot.ranges[i, 0]), float(slot.ranges[i, 1])
            elif src.size:
                lo, hi = float(src.min()), float(src.max())
            else:
                lo = hi = 0.0
            out[name], bad, over = _cast_checked(src, lo, hi, dtype)
            if bad:
                nonfinite |= 1 << i
            if over:
                overflow |= 1 << i
        return out, nonfinite, overflow

    @staticmethod
    def _sum_arrays(slot: _Slot) -> dict[str, np.ndarray]:
        """This step's metric sums as float64 host arrays, in the order they were given."""
        out = {n: t.to(torch.float64).numpy() for n, t in slot.sums.items()}
        if slot.sums_layout and slot.sums_host is not None:
            flat, at = slot.sums_host.numpy(), 0
            for name, shape in slot.sums_layout:
                size = int(np.prod(shape))
                out[name] = flat[at: at + size].reshape(shape).copy()
                at += size
        return out

    def _hidden_arrays(self, slot: _Slot) -> dict[str, tuple[list[np.ndarray], np.ndarray]]:
        """Branch → (the K block rows [B, F', T, D] in the store dtype, flags [K] uint8: bit 0 the stored row holds
        NaN/Inf, bit 1 finite values beyond the store dtype's range were stored as ±inf)."""
        rows = slot.hidden_rows
        if rows is None or not rows.keep:
            return {}
        dtype = np.dtype(self.store_dtype)
        out = {}
        for branch, (call, start, stop) in rows.branches.items():
            arrays, flags = [], np.zeros(rows.blocks, np.uint8)
            for k in range(rows.blocks):
                t = slot.hidden[(call, k)][start:stop]
                if t.dtype == torch.bfloat16:
                    t = t.float()
                src = t.numpy()
                span = slot.hidden_ranges.get((call, k))
                if span is not None:  # from the GPU, per batch row
                    part = span[start:stop].numpy()
                    lo, hi = (float(part[:, 0].min()), float(part[:, 1].max())) if len(part) else (0.0, 0.0)
                elif src.size:
                    lo, hi = float(src.min()), float(src.max())
                else:
                    lo = hi = 0.0
                arr, bad, over = _cast_checked(src, lo, hi, dtype)
                arrays.append(np.ascontiguousarray(arr))
                flags[k] = (1 if bad else 0) | (2 if over else 0)
            out[branch] = (arrays, flags)
        return out

    def _create_hidden(self, rows: HiddenRows) -> None:
        """``/block_hidden/<branch>`` [R, K, B, F', T, D] (one chunk a (row, block)), ``<branch>_step`` [R],
        ``<branch>_crc`` and ``<branch>_flags`` [R, K], for both branches (docs/hdf5-schema.md)."""
        group = self.file.create_group(schema.HIDDEN_GROUP)
        group.attrs["checksum"] = CHECKSUM
        group.attrs["layout"] = schema.HIDDEN_LAYOUT
        row = (rows.blocks, *rows.shape)
        dtype = np.dtype(self.store_dtype)
        for branch in schema.HIDDEN_BRANCHES:
            self._hidden[branch] = {
                "data": group.create_dataset(branch, shape=(0, *row), maxshape=(None, *row), chunks=(1, 1, *rows.shape),
                                             dtype=dtype),
                "step": group.create_dataset(f"{branch}_step", shape=(0,), maxshape=(None,),
                                             chunks=(schema.SCALE_CHUNK,), dtype=np.int64),
                "crc": group.create_dataset(f"{branch}_crc", shape=(0, rows.blocks), maxshape=(None, rows.blocks),
                                            chunks=(schema.SCALE_CHUNK, rows.blocks), dtype=np.uint32),
                "flags": group.create_dataset(f"{branch}_flags", shape=(0, rows.blocks), maxshape=(None, rows.blocks),
                                              chunks=(schema.SCALE_CHUNK, rows.blocks), dtype=np.uint8),
            }
            self._hidden_written[branch] = 0
        self._hidden_shape = row  # type: ignore[assignment]

    def _write_hidden(self, step: int, hidden: dict[str, tuple[list[np.ndarray], np.ndarray]]) -> None:
        """One row a branch: K chunks written directly, their checksums computed beside the writes."""
        for branch, (arrays, flags) in hidden.items():
            ds = self._hidden[branch]
            at = self._hidden_written[branch]
            crcs = self._checksummer().submit(_checksums, arrays)
            data = ds["data"]
            data.id.set_extent((at + 1, *data.shape[1:]))
            for k, arr in enumerate(arrays):
                data.id.write_direct_chunk((at, k) + (0,) * arr.ndim, arr)
            self._append(ds["crc"], at, np.asarray(crcs.result(), dtype=np.uint32))
            self._append(ds["flags"], at, flags)
            self._append(ds["step"], at, np.asarray(step, dtype=np.int64))
            self._hidden_written[branch] = at + 1
            if flags.any() and not self._warned_hidden:
                self._warned_hidden = True
                what = "exceed float16's range (stored as ±inf; use store_dtype='float32')" if (flags & 2).any() \
                    else "hold NaN/Inf"
                warnings.warn(f"latent_probe: block hidden states ({branch}) at step {step} {what}; flagged in "
                              f"/{schema.HIDDEN_GROUP}/{branch}_flags", RuntimeWarning, stacklevel=1)

    def _expert_index(self, name: str) -> int:
        if name == "unknown":
            return -1
        if name not in self._experts:
            if self._initialised:
                raise ValueError(f"expert {name!r} is not among the run's experts {self._experts}")
            self._experts.append(name)
        return self._experts.index(name)

    def _create(self, shapes: dict[str, tuple[int, ...]], sums: dict[str, np.ndarray], attrs: dict[str, Any] | None,
                expert: str, hidden: HiddenRows | None = None) -> None:
        """First step: the latent datasets (``shapes``: quantity → [B, C, F, H, W]), those of the per-step sums,
        and the attributes known only now; then SWMR mode (nothing is created after it)."""
        f = self.file
        self._expert_index(expert)
        extra = dict(attrs or {})
        extra.update(quantities=list(shapes), experts=list(self._experts))
        if shapes:
            extra["checksum"] = CHECKSUM
        if sums:
            spaces = sorted({name.split("/")[0] for name in sums if not name.startswith("/")})
            if spaces:
                extra["online"] = spaces
        clash = sorted(set(extra) & set(f.attrs))
        if clash:
            raise ValueError(f"attrs {clash} are already set on this run")
        encoded = schema.encode_attrs(extra)
        json_keys = set(json.loads(encoded.pop(schema.JSON_KEYS_ATTR)))
        json_keys |= set(json.loads(f.attrs.get(schema.JSON_KEYS_ATTR, "[]")))
        for key, value in encoded.items():
            f.attrs[key] = value
        f.attrs[schema.JSON_KEYS_ATTR] = json.dumps(sorted(json_keys))
        lat = f.create_group(schema.LATENTS_GROUP)
        self._datasets = {}
        dtype = np.dtype(self.store_dtype)
        for name, shape in shapes.items():
            self._datasets[name] = lat.create_dataset(
                name, shape=(0, *shape), maxshape=(None, *shape), chunks=(1, *shape), dtype=dtype)
            self._shapes[name] = tuple(shape)
        self._step_nbytes = sum(int(np.prod(s)) * dtype.itemsize for s in shapes.values())
        self._steps_ds.attrs["quantities"] = list(shapes)
        self._names = tuple(shapes)
        self._checksums = {}
        if shapes:
            sums_group = f.create_group(schema.CHECKSUMS_GROUP)
            for name in shapes:
                self._checksums[name] = sums_group.create_dataset(
                    name, shape=(0,), maxshape=(None,), chunks=(schema.SCALE_CHUNK,), dtype=np.uint32)
        if self.latent_rows:
            self._latent_step = self._resizable(schema.LATENT_STEP_DIM, np.int64)
            self._latent_step.make_scale(schema.LATENT_STEP_DIM)
        expert = self._resizable("expert", schema.expert_dtype(self._experts))
        expert.attrs["_Encoding"] = "utf-8"  # xarray decodes the names to str
        expert.dims[0].attach_scale(self._coords[schema.STEP_DIM])
        self._coords["expert"] = expert
        if shapes:
            self._scales(shapes)
        self._online_spaces = sorted({name.split("/")[0] for name in sums if not name.startswith("/")})
        if sums:
            # non-finite values of a space whose sums were computed are flagged at bit ONLINE_BIT0 + j of "nonfinite"
            self._steps_ds.attrs["online_bits"] = self._online_spaces
        if sums:
            online = f.create_group(schema.ONLINE_GROUP) if any(not n.startswith("/") for n in sums) else None
            for name, arr in sums.items():
                rows = max(1, min(schema.SCALE_CHUNK, (1 << 16) // max(1, arr.nbytes)))
                group = f if name.startswith("/") else online  # "/blocks/…": an absolute path (block probes)
                self._sum_datasets[name] = group.create_dataset(
                    name, shape=(0, *arr.shape), maxshape=(None, *arr.shape), chunks=(rows, *arr.shape),
                    dtype=np.float64)
                self._sum_shapes[name] = arr.shape
        if hidden is not None:
            self._create_hidden(hidden)
        if self.path is not None:
            f.flush()
            f.swmr_mode = True
        self._initialised = True

    def _scales(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Name the latents' axes for netCDF readers (xarray): dimension scales batch … width, the step (or
        latent_step) scale, the step coordinates, and a second link to each latent dataset at the root (xarray opens one group)."""
        f = self.file
        step = self._coords[schema.STEP_DIM]
        shape = next(iter(shapes.values()))
        scales = []
        for name, size in zip(schema.LATENT_DIMS[1:], shape):
            ds = f.create_dataset(name, data=np.arange(size, dtype=np.int64))
            ds.make_scale(name)
            scales.append(ds)
        coordinates = " ".join(schema.STEP_COORDS)
        for name, ds in self._datasets.items():
            if ds.shape[1:] != shape:
                continue  # not one latent shape: the reader refuses such a run anyway
            for axis, scale in enumerate([self._latent_step or step, *scales]):
                ds.dims[axis].attach_scale(scale)
            if self._latent_step is None:  # rows are steps: the step coordinates apply
                ds.attrs["coordinates"] = coordinates
            if name not in f:
                f[name] = ds  # a hard link: the same dataset, also at the root

    @staticmethod
    def _append(ds: h5py.Dataset, n: int, arr: np.ndarray) -> None:
        """Write ``arr`` as row n of ``ds`` (growing it to n + 1) through h5py's low-level API (~30 µs)."""
        row_shape = (1, *arr.shape)
        ds.id.set_extent((n + 1, *arr.shape))
        file_space = ds.id.get_space()
        file_space.select_hyperslab((n,) + (0,) * arr.ndim, row_shape)
        ds.id.write(h5py.h5s.create_simple(row_shape), file_space, np.ascontiguousarray(arr).reshape(row_shape))

    @staticmethod
    def _append_chunk(ds: h5py.Dataset, n: int, arr: np.ndarray) -> None:
        """Write one step as chunk n: the chunk is exactly one step, uncompressed, so its bytes are the
        array's bytes and HDF5's selection and conversion machinery is skipped."""
        ds.id.set_extent((n + 1, *arr.shape))
        ds.id.write_direct_chunk((n,) + (0,) * arr.ndim, np.ascontiguousarray(arr))

    def _write(self, slot: _Slot, meta: StepMeta, names: tuple[str, ...], attrs: dict[str, Any] | None) -> None:
        arrays, bits, over = self._arrays(slot, names)
        sums = self._sum_arrays(slot)
        hidden = self._hidden_arrays(slot)
        if self._space is not None:  # reserve first: a full disk stops here, before HDF5 writes anything
            need = sum(a.nbytes for a in arrays.values()) + sum(a.nbytes for a in sums.values()) + _METADATA_MARGIN
            need += sum(a.nbytes for rows, _ in hidden.values() for a in rows)
            self._space.ensure(self.file.id.get_filesize() + need)
        shapes = {n: a.shape for n, a in arrays.items()} if slot.keep else {n: s for n, (s, _) in slot.shapes.items()}
        declared = slot.hidden_rows
        if not self._initialised:
            self._create(shapes, sums, attrs, meta.expert, declared)
        if (declared is None) != (self._hidden_shape is None) or (
                declared is not None and (declared.blocks, *declared.shape) != self._hidden_shape):
            raise ValueError(f"step {meta.index} declared block hidden states "
                             f"{None if declared is None else (declared.blocks, *declared.shape)}, "
                             f"the run's first step {self._hidden_shape}; use one LatentProbe per generation size")
        if tuple(shapes) != self._names:
            raise ValueError(f"step {meta.index} recorded {sorted(shapes)}, the run records {sorted(self._names)}")
        for name, shape in shapes.items():
            if tuple(shape) != self._shapes[name]:
                raise ValueError(f"latent shape changed from {self._shapes[name]} to {tuple(shape)} within one run "
                                 f"({name}, step {meta.index}); use one LatentProbe per generation size")
        if set(sums) != set(self._sum_datasets) or any(a.shape != self._sum_shapes[k] for k, a in sums.items()):
            raise ValueError(f"step {meta.index} computed sums {sorted(sums)} of other shapes than the run's first step")
        expert = self._expert_index(meta.expert)
        n = self.steps_written
        if slot.keep and self._names:
            at = self.latent_rows_written if self.latent_rows else n
            rows = {name: np.ascontiguousarray(arrays[name]) for name in self._names}
            # the checksums of the bytes being written, computed beside the writes (both release the GIL)
            crcs = self._checksummer().submit(lambda: [checksum(rows[n]) for n in self._names])
            for name in self._names:
                self._append_chunk(self._datasets[name], at, rows[name])
            for name, crc in zip(self._names, crcs.result()):
                self._append(self._checksums[name], at, np.asarray(crc, dtype=np.uint32))
            if self._latent_step is not None:
                self._append(self._latent_step, at, np.asarray(n, dtype=np.int64))
        if hidden:
            self._write_hidden(n, hidden)
        for name, arr in sums.items():
            self._append(self._sum_datasets[name], n, arr)
        bits |= self._sums_nonfinite(sums)
        if bits:
            self.nonfinite_steps += 1
            self._warn_values(meta.index, bits, over)
        ts = meta.timestep
        if isinstance(ts, torch.Tensor):
            ts = float(slot.timestep[0]) if ts.is_cuda else float(ts.reshape(-1)[0])
        row = np.array([(
            meta.index, ts, meta.sigma, meta.alpha, expert,
            np.nan if meta.guidance_scale is None else meta.guidance_scale, meta.generation, meta.model_calls,
            meta.blocked_ms, meta.wall_time, bits, over,
        )], dtype=schema.STEP_DTYPE)
        self._append(self._steps_ds, n, row[0])
        coords = self._coords
        for name in ("timestep", "sigma", "alpha"):
            self._append(coords[name], n, np.asarray(row[0][name], dtype=np.float64))
        self._append(coords["expert"], n, np.asarray(str(meta.expert).encode("utf-8"), dtype=coords["expert"].dtype))
        self._append(coords[schema.STEP_DIM], n, np.asarray(n, dtype=np.int64))
        self.file.flush()  # the step's data are on disk ...
        if slot.keep and self._names and self.latent_rows:
            self.latent_rows_written += 1
        self._state["steps"] = n + 1
        self._state["nonfinite_steps"] = self.nonfinite_steps
        self._state_ds[0] = self._state[0]
        self.file.flush()  # ... before the counter that commits it
        if not self.published and self.path is not None:
            try:
                self._publish()  # the first committed step moves the file to its path
            except OSError:
                self.steps_written = n + 1  # committed, in the file kept beside the path (the message says where)
                self._kept = True
                raise
        self.steps_written = n + 1

    def _sums_nonfinite(self, sums: dict[str, np.ndarray]) -> int:
        """Bits (ONLINE_BIT0 + j) of the spaces whose sums of this step hold NaN/Inf: the frame sums of this step's
        tensor alone (sq, dot, dd; for one frame, its squared norm), so a step is flagged where it happened —
        whether or not its latents are stored."""
        bits = 0
        for j, space in enumerate(self._online_spaces):
            own = [sums[k] for k in (f"{space}/sq", f"{space}/dot", f"{space}/dd") if k in sums]
            if not own and f"{space}/change" in sums:
                own = [sums[f"{space}/change"][3:]]  # [l1 of the change, ‖prev‖², ‖prev‖₁, ‖x‖²]: NaN at step 0
            if any(not np.all(np.isfinite(a)) for a in own):
                bits |= 1 << (schema.ONLINE_BIT0 + j)
        return bits

    def _warn_values(self, index: int, bits: int, over: int) -> None:
        if over and not self._warned_overflow:
            self._warned_overflow = True
            bad = [q for i, q in enumerate(self._names) if over >> i & 1]
            warnings.warn(f"latent_probe: {bad} at step {index} exceed {self.store_dtype}'s range and are stored "
                          "as ±inf (flagged in /steps: overflow); use store_dtype='float32'", RuntimeWarning,
                          stacklevel=1)
        if bits & ~over and not self._warned_nonfinite:
            self._warned_nonfinite = True
            bad = [q for i, q in enumerate(self._names) if (bits & ~over) >> i & 1]
            bad += [f"{q} (metric sums)" for j, q in enumerate(self._online_spaces)
                    if bits >> (schema.ONLINE_BIT0 + j) & 1]
            warnings.warn(f"latent_probe: NaN/Inf in {bad} at step {index}; recorded and flagged "
                          "in /steps (nonfinite)", RuntimeWarning, stacklevel=1)
