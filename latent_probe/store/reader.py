"""``Run``: one read API for a recorded run, in memory or in an HDF5 file.

Latents are read lazily: ``run.latents("x0")`` is a view of shape [S, B, C, F, H, W] that reads only
what is indexed. S counts committed steps (the ``/steps`` row is written last in each step), so a file
from a killed process, or one still being written, reads consistently.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import h5py
import numpy as np

from . import schema

__all__ = ["Run", "LatentView", "open_run", "RunFileError"]


class RunFileError(ValueError):
    """The file is not a (readable) latent_probe run."""


class LatentView:
    """Lazy [S, B, C, F, H, W] view of one captured quantity; index it like a numpy array."""

    def __init__(self, run: "Run", name: str) -> None:
        self._run = run
        self.name = name
        self._ds = run._file[schema.LATENTS_GROUP][name]

    @property
    def shape(self) -> tuple[int, ...]:
        return (self._run.num_steps, *self._ds.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self._ds.dtype

    @property
    def step_nbytes(self) -> int:
        return int(np.prod(self._ds.shape[1:])) * self._ds.dtype.itemsize

    def __len__(self) -> int:
        return self._run.num_steps

    def __getitem__(self, key: Any) -> np.ndarray:
        n = self._run.num_steps
        if isinstance(key, tuple):
            first, rest = key[0], key[1:]
        else:
            first, rest = key, ()
        if isinstance(first, (int, np.integer)):
            i = int(first) + n if first < 0 else int(first)
            if not 0 <= i < n:
                raise IndexError(f"step {first} out of range for a run of {n} steps")
            return self._ds[(i, *rest)]
        if isinstance(first, slice):
            return self._ds[(slice(*first.indices(n)), *rest)]
        idx = np.asarray(first)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = np.where(idx < 0, idx + n, idx)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"step index out of range for a run of {n} steps")
        order = np.argsort(idx)
        data = self._ds[(np.sort(idx).tolist(), *rest)] if idx.size else self._ds[(slice(0, 0), *rest)]
        return data[np.argsort(order)]

    def __iter__(self) -> Iterator[np.ndarray]:
        """One step at a time: [B, C, F, H, W] each; memory stays at one step."""
        for i in range(self._run.num_steps):
            yield self._ds[i]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self[:]
        return arr if dtype is None else arr.astype(dtype)

    def numpy(self) -> np.ndarray:
        return self[:]

    def __repr__(self) -> str:
        return f"LatentView({self.name!r}, shape={self.shape}, dtype={self.dtype})"


class Run:
    """A recorded run. Per-step arrays have length S (committed steps)."""

    def __init__(self, file: h5py.File, *, owns_file: bool = True, source: str | None = None) -> None:
        self._file = file
        self._owns = owns_file
        self.source = source
        self._check()
        self._metrics_cache: dict[Any, Any] = {}

    # -------------------------------------------------------------- opening and validation
    def _check(self) -> None:
        f = self._file
        where = self.source or "in-memory run"
        if f.attrs.get("schema") != schema.SCHEMA_NAME:
            raise RunFileError(f"{where} is an HDF5 file but not a latent_probe run (no schema attribute)")
        version = int(f.attrs.get("schema_version", -1))
        if version > schema.SCHEMA_VERSION:
            raise RunFileError(f"{where} has schema version {version}; this latent_probe reads up to "
                               f"{schema.SCHEMA_VERSION}: upgrade latent_probe")
        if schema.STEPS_DATASET not in f or schema.LATENTS_GROUP not in f:
            raise RunFileError(f"{where} holds no recorded step (it was closed before the first step)")

    @property
    def file(self) -> h5py.File:
        return self._file

    def refresh(self) -> None:
        """Re-read dataset lengths (following a run that is still being written, SWMR)."""
        self._file[schema.STEPS_DATASET].refresh()
        for ds in self._file[schema.LATENTS_GROUP].values():
            ds.refresh()
        self._metrics_cache.clear()

    def close(self) -> None:
        if self._owns:
            self._file.close()

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -------------------------------------------------------------- metadata
    @property
    def attrs(self) -> dict[str, Any]:
        return schema.decode_attrs(dict(self._file.attrs))

    @property
    def complete(self) -> bool:
        return bool(self._file.attrs.get("complete", False))

    @property
    def num_steps(self) -> int:
        n = self._file[schema.STEPS_DATASET].shape[0]
        for ds in self._file[schema.LATENTS_GROUP].values():
            n = min(n, ds.shape[0])
        return int(n)

    def _steps(self, name: str) -> np.ndarray:
        return self._file[schema.STEPS_DATASET].fields(name)[: self.num_steps]

    @property
    def step_indices(self) -> np.ndarray:
        return self._steps("index")

    @property
    def timesteps(self) -> np.ndarray:
        return self._steps("timestep")

    @property
    def sigmas(self) -> np.ndarray:
        return self._steps("sigma")

    @property
    def alphas(self) -> np.ndarray:
        return self._steps("alpha")

    @property
    def experts(self) -> np.ndarray:
        return np.asarray([e.decode() for e in self._steps("expert")], dtype=object)

    @property
    def guidance_scales(self) -> np.ndarray:
        return self._steps("guidance_scale")

    @property
    def generations(self) -> np.ndarray:
        return self._steps("generation")

    @property
    def blocked_ms(self) -> np.ndarray:
        return self._steps("blocked_ms")

    @property
    def nonfinite(self) -> dict[str, np.ndarray]:
        """quantity → [S] bool, True where that step's latent held NaN or Inf."""
        ds = self._file[schema.STEPS_DATASET]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in ds.attrs["quantities"]]
        bits = self._steps("nonfinite")
        return {n: (bits >> i & 1).astype(bool) for i, n in enumerate(names)}

    # -------------------------------------------------------------- latents
    @property
    def quantities(self) -> list[str]:
        """Captured quantities in capture order (x_t, pred, x0, eps, pred_cond, pred_uncond)."""
        present = list(self._file[schema.LATENTS_GROUP].keys())
        order = [q for q in self.attrs.get("quantities", []) if q in present]
        return order + [q for q in present if q not in order]

    def latents(self, name: str) -> LatentView:
        if name not in self._file[schema.LATENTS_GROUP]:
            raise KeyError(f"{name!r} was not captured in this run; captured: {self.quantities}")
        return LatentView(self, name)

    # -------------------------------------------------------------- metrics (lazy, cached)
    def metrics(self, space: str = "x0", *, device: str = "cpu") -> Any:
        """Adjacent-frame continuity of ``space`` (x0, eps, x_t, pred, ...): ``.l2``, ``.cos`` [S, B, F−1],
        ``.l2_mean``, ``.cos_mean`` [S, B], ``.one_minus_cos``, ``.norm_ratio``. Computed on first access."""
        from ..metrics import run_metrics

        return run_metrics.continuity(self, space, device=device)

    def lag_similarity(self, space: str = "x0", k: int = 2) -> Any:
        """Frame f vs f+k metrics for every step: fields [S, B, F−k]."""
        from ..metrics import run_metrics

        return run_metrics.continuity(self, space, lag=k)

    def frame_similarity(self, space: str = "x0", step: int = -1) -> np.ndarray:
        """Cosine of every pair of frames at one step: [B, F, F]."""
        from ..metrics import run_metrics

        return run_metrics.frame_similarity(self, space, step)

    def step_change(self, space: str = "pred") -> Any:
        """Relative L1 change and magnitude ratio between consecutive steps: ``.rel_l1``, ``.mag_ratio`` [S]."""
        from ..metrics import run_metrics

        return run_metrics.step_change(self, space)

    def cond_uncond_gap(self) -> np.ndarray | None:
        """‖ε̂_c − ε̂_u‖ / ‖ε̂_c‖ per step [S], or None when the CFG branches were not captured."""
        from ..metrics import run_metrics

        return run_metrics.gap(self)

    def noise_floor(self) -> np.ndarray:
        """Adjacent-frame cosine that x_t would show from noise alone (static content), per step [S]."""
        from ..metrics import run_metrics

        return run_metrics.run_noise_floor(self)

    def phases(self, scheme: Any = "thirds") -> list:
        """Step ranges: "thirds", "original" (1-5, 6-10, 11-20), "1-5,6-10,11-40" or [(name, start, stop)]."""
        from ..metrics.phases import phase_ranges

        return phase_ranges(self.num_steps, scheme)

    def summary(self, space: str = "x0", phases: Any = "thirds") -> Any:
        """Phase statistics (``.to_text()`` prints the original analysis's table; ``.to_dict()``)."""
        from ..metrics.phases import summarize

        m = self.metrics(space)
        return summarize(space, np.nanmean(m.l2_mean, axis=1), np.nanmean(m.cos_mean, axis=1),
                         list(self.experts), phases)

    def to_dataframe(self, space: str = "x0") -> Any:
        """Tidy pandas DataFrame (step, batch, pair, metric, value, space)."""
        from ..metrics import run_metrics

        return run_metrics.to_dataframe(self, space)

    def __repr__(self) -> str:
        return (f"Run({self.source or 'in memory'}, steps={self.num_steps}, quantities={self.quantities}, "
                f"complete={self.complete})")


def _declared_end_of_file(path: str) -> int | None:
    """The end-of-file address the HDF5 superblock (at offset 0) declares, or None if it can't be read.

    HDF5 can loop forever reading a truncated file, so truncation is detected up front from this.
    """
    with open(path, "rb") as fh:
        head = fh.read(128)
    if len(head) < 16 or head[:8] != b"\x89HDF\r\n\x1a\n":
        return None
    version = head[8]
    if version in (0, 1):
        size_of_offsets = head[13]
        pos = 24 + (4 if version == 1 else 0)
        fields = 3  # base address, free-space address, end-of-file address
    elif version in (2, 3):
        size_of_offsets = head[9]
        pos = 12
        fields = 3  # base address, superblock extension address, end-of-file address
    else:
        return None
    if size_of_offsets not in (2, 4, 8) or len(head) < pos + fields * size_of_offsets:
        return None
    base = int.from_bytes(head[pos:pos + size_of_offsets], "little")
    eof = int.from_bytes(head[pos + 2 * size_of_offsets:pos + 3 * size_of_offsets], "little")
    return base + eof


def open_run(path: str | os.PathLike, mode: str = "r", *, swmr: bool | None = None) -> Run:
    """Open a recorded run. ``mode="r+"`` lets metrics be cached in the file.

    A file still being written (or left by a killed writer) is opened in SWMR read mode automatically.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if not h5py.is_hdf5(path):
        raise RunFileError(f"{path} is not an HDF5 file")
    declared, actual = _declared_end_of_file(path), os.path.getsize(path)
    if declared is not None and declared > actual:
        raise RunFileError(f"{path} is truncated: the HDF5 superblock declares {declared} bytes, the file has "
                           f"{actual}")
    attempts = [swmr] if swmr is not None else ([False, True] if mode == "r" else [False])
    last: Exception | None = None
    for use_swmr in attempts:
        try:
            f = h5py.File(path, mode, swmr=bool(use_swmr) and mode == "r", libver="latest" if use_swmr else None)
            break
        except OSError as exc:
            last = exc
    else:
        msg = str(last).splitlines()[0] if last else "unknown error"
        raise RunFileError(f"{path} cannot be read (corrupt HDF5 file: {msg})") from last
    try:
        return Run(f, owns_file=True, source=path)
    except Exception:
        f.close()
        raise
