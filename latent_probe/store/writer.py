"""Stream step records to HDF5 from a background thread.

The producer (the sampling loop) only copies tensors into one of ``slots`` preallocated host buffers and
queues it; the writer thread waits for the copy (a CUDA event, never a host-wide synchronisation),
writes every quantity and the step's metadata, and flushes (SWMR), so a reader can follow a live run and
a killed process leaves a readable file. When every slot is in flight the producer blocks until one
frees — nothing is dropped — and the time it blocked is recorded per step.

On CUDA, buffers are pinned and already in ``store_dtype`` (the cast runs on the GPU, halving the copy
for float16). On the CPU, tensors the caller owns are copied (a memcpy) and the probe's own derived
tensors are passed by reference; the cast to ``store_dtype`` happens in the writer thread.
"""

from __future__ import annotations

import datetime
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

__all__ = ["StepMeta", "RunWriter", "WriterError"]

_STOP = object()


class WriterError(RuntimeError):
    """The background writer failed; steps committed before the failure remain in the file."""


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


@dataclass
class _Slot:
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)
    timestep: torch.Tensor | None = None
    held: dict[str, torch.Tensor] = field(default_factory=dict)  # own tensors passed by reference (CPU)
    staging: dict[str, torch.Tensor] = field(default_factory=dict)  # GPU buffers for the cast (CUDA)


def _wait_for(event: torch.cuda.Event) -> None:
    """Wait for the copies behind ``event`` without holding the GIL: ``Event.synchronize`` would block the
    sampling loop's thread too, for as long as the GPU works on what precedes the copies."""
    delay = 1e-4
    while not event.query():
        time.sleep(delay)
        delay = min(delay * 2, 2e-3)


def _np_dtype(name: str) -> np.dtype:
    return np.dtype(name)


class RunWriter:
    """Owns the HDF5 file (or in-memory HDF5 image) of one run while it is being recorded.

    path=None keeps the run in memory (HDF5 core driver, no backing store); ``file`` stays open after
    :meth:`close` for reading.
    """

    def __init__(self, path: str | os.PathLike | None, store_dtype: str = "float16", slots: int = 3,
                 overwrite: bool = False) -> None:
        if store_dtype not in schema.STORE_DTYPES:
            raise ValueError(f"store_dtype must be one of {schema.STORE_DTYPES}, got {store_dtype!r}")
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.path = None if path is None else os.fspath(path)
        self.store_dtype = store_dtype
        self._torch_store_dtype = getattr(torch, store_dtype)
        if self.path is not None:
            if os.path.exists(self.path) and not overwrite:
                raise FileExistsError(f"{self.path} exists; pass overwrite=True to replace it")
            parent = os.path.dirname(os.path.abspath(self.path))
            if not os.path.isdir(parent):
                raise FileNotFoundError(f"directory {parent} does not exist")
            self.file = h5py.File(self.path, "w", libver="latest")
        else:
            self.file = h5py.File(f"latent_probe-{uuid.uuid4().hex}.h5", "w", driver="core", backing_store=False)
        self._free: queue.Queue[_Slot] = queue.Queue()
        for _ in range(slots):
            self._free.put(_Slot())
        self._todo: queue.Queue[Any] = queue.Queue()
        self._error: BaseException | None = None
        self._initialised = False
        self._names: tuple[str, ...] = ()
        self._datasets: dict[str, h5py.Dataset] = {}
        self._steps_ds: h5py.Dataset | None = None
        self._shapes: dict[str, tuple[int, ...]] = {}
        self.steps_written = 0
        self.blocked_s = 0.0
        self.nonfinite_steps = 0
        self._warned_nonfinite = False
        self._copy_stream: torch.cuda.Stream | None = None
        self._thread = threading.Thread(target=self._loop, name="latent_probe-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ producer side (hot path)
    def submit(self, meta: StepMeta, tensors: dict[str, torch.Tensor], owned: frozenset[str] = frozenset(),
               attrs: dict[str, Any] | None = None) -> float:
        """Queue one step; returns seconds the caller was blocked waiting for a free slot.

        tensors: quantity → [B, C, F, H, W]. ``owned`` names tensors the probe created itself (they are
        not modified afterwards, so on the CPU they travel by reference). ``attrs`` (first step only)
        become the file's root attributes.
        """
        self._raise_if_failed()
        t0 = time.perf_counter()
        while True:
            try:
                slot = self._free.get(timeout=0.5)
                break
            except queue.Empty:
                self._raise_if_failed()
        blocked = time.perf_counter() - t0
        self.blocked_s += blocked
        meta.blocked_ms = blocked * 1e3
        event = None
        slot.held = {}
        cuda = [t for t in tensors.values() if t.is_cuda]
        ts = meta.timestep
        if cuda or (isinstance(ts, torch.Tensor) and ts.is_cuda):
            event = self._copy_to_host(slot, tensors, ts)
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

    def _copy_to_host(self, slot: _Slot, tensors: dict[str, torch.Tensor], ts: Any) -> torch.cuda.Event:
        """Start device→pinned-host copies on a side stream; return the event that marks them done.

        The side stream first waits for the producer's stream (so it copies the values as of this step),
        and ``record_stream`` keeps the caching allocator from reusing the sources before the copy ran.
        The sampling loop's stream never waits on the copies. (Sources must not be modified in place
        afterwards; Wan2.2 and diffusers rebind their latents instead.)
        """
        device = next((t.device for t in tensors.values() if t.is_cuda), None) or ts.device
        producer = torch.cuda.current_stream(device)
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(device)
        stream = self._copy_stream
        stream.wait_stream(producer)
        with torch.cuda.stream(stream):
            for name, t in tensors.items():
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
                t.record_stream(stream)
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

    def close(self, attrs: dict[str, Any] | None = None) -> None:
        """Drain the queue, stop the thread, write final attributes. Raises WriterError if writing failed."""
        if self._thread.is_alive():
            self._todo.put(_STOP)
            self._thread.join()
        final = dict(attrs or {})
        final.update(steps=self.steps_written, blocked_ms_total=self.blocked_s * 1e3,
                     nonfinite_steps=self.nonfinite_steps)
        if self._error is not None:
            final["complete"] = False
            final["writer_error"] = repr(self._error)
        if self.path is not None:
            try:
                self.file.close()
            except Exception:  # pragma: no cover - already closed by a failure
                pass
            with h5py.File(self.path, "r+") as f:
                self._update_attrs(f, final)
        else:
            self._update_attrs(self.file, final)
        if self._error is not None:
            raise WriterError(f"latent_probe writer failed after {self.steps_written} steps: {self._error}") \
                from self._error

    @staticmethod
    def _update_attrs(f: h5py.File, new: dict[str, Any]) -> None:
        merged = schema.decode_attrs(dict(f.attrs))
        merged.update(new)
        for key in list(f.attrs):
            del f.attrs[key]
        for key, value in schema.encode_attrs(merged).items():
            f.attrs[key] = value

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise WriterError(f"latent_probe writer failed after {self.steps_written} steps: {self._error}")

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
                    self._write(slot, meta, names, attrs)
            except BaseException as exc:  # noqa: BLE001 - reported to the producer
                self._error = exc
            finally:
                slot.held = {}
                self._free.put(slot)
        try:
            self.file.flush()
        except Exception:  # pragma: no cover
            pass

    def _arrays(self, slot: _Slot, names: tuple[str, ...]) -> tuple[dict[str, np.ndarray], int]:
        """Host arrays in the store dtype, and a bitmask of the quantities holding NaN/Inf.

        The check runs on the source values before the cast: a float32 sum is non-finite iff some element
        is (or the data are beyond ~1e31, which a float16 store could not hold either), and it runs at
        memory speed, unlike a float64-accumulated or float16 sum.
        """
        dtype = _np_dtype(self.store_dtype)
        out, bits = {}, 0
        for i, name in enumerate(names):
            t = slot.held.get(name)
            if t is None:
                t = slot.buffers[name]
            if t.dtype == torch.bfloat16:
                t = t.float()
            src = t.numpy()
            finite = np.isfinite(src.sum()) if src.dtype.itemsize >= 4 else np.isfinite(src).all()
            if not finite:
                bits |= 1 << i
            out[name] = src.astype(dtype, copy=False)
        return out, bits

    def _create(self, arrays: dict[str, np.ndarray], attrs: dict[str, Any] | None) -> None:
        f = self.file
        base = {
            "schema": schema.SCHEMA_NAME,
            "schema_version": schema.SCHEMA_VERSION,
            "library_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "complete": False,
            "store_dtype": self.store_dtype,
            "layout": schema.LATENT_LAYOUT,
            "quantities": list(arrays),
        }
        base.update(attrs or {})
        for key, value in schema.encode_attrs(base).items():
            f.attrs[key] = value
        lat = f.create_group(schema.LATENTS_GROUP)
        self._datasets = {}
        for name, arr in arrays.items():
            self._datasets[name] = lat.create_dataset(
                name, shape=(0, *arr.shape), maxshape=(None, *arr.shape), chunks=(1, *arr.shape), dtype=arr.dtype)
            self._shapes[name] = arr.shape
        self._steps_ds = f.create_dataset(schema.STEPS_DATASET, shape=(0,), maxshape=(None,), chunks=(256,),
                                          dtype=schema.STEP_DTYPE)
        self._steps_ds.attrs["quantities"] = list(arrays)
        self._names = tuple(arrays)
        if self.path is not None:
            f.swmr_mode = True
        self._initialised = True

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
        arrays, bits = self._arrays(slot, names)
        if not self._initialised:
            self._create(arrays, attrs)
        if tuple(arrays) != self._names:
            raise ValueError(f"step {meta.index} recorded {sorted(arrays)}, the run records {sorted(self._names)}")
        for name, arr in arrays.items():
            if arr.shape != self._shapes[name]:
                raise ValueError(f"latent shape changed from {self._shapes[name]} to {arr.shape} within one run "
                                 f"({name}, step {meta.index}); use one LatentProbe per generation size")
        n = self.steps_written
        for name in self._names:
            self._append_chunk(self._datasets[name], n, arrays[name])
        if bits:
            self.nonfinite_steps += 1
            if not self._warned_nonfinite:
                self._warned_nonfinite = True
                bad = [q for i, q in enumerate(self._names) if bits >> i & 1]
                warnings.warn(f"latent_probe: NaN/Inf in {bad} at step {meta.index}; recorded and flagged "
                              "in /steps (nonfinite)", RuntimeWarning, stacklevel=1)
        ts = meta.timestep
        if isinstance(ts, torch.Tensor):
            ts = float(slot.timestep[0]) if ts.is_cuda else float(ts.reshape(-1)[0])
        row = np.array([(
            meta.index, ts, meta.sigma, meta.alpha, meta.expert.encode()[: schema.EXPERT_BYTES],
            np.nan if meta.guidance_scale is None else meta.guidance_scale, meta.generation, meta.model_calls,
            meta.blocked_ms, meta.wall_time, bits,
        )], dtype=schema.STEP_DTYPE)
        self._append(self._steps_ds, n, row[0])  # the commit: written last
        self.file.flush()
        self.steps_written = n + 1
