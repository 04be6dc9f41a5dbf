"""``Run``: one read API for a recorded run, in memory or in an HDF5 file.

Latents are read lazily: ``run.latents("x0")`` is a view of shape [S, B, C, F, H, W] that reads only
what is indexed. S counts committed steps (``/run_state``'s counter, written after each step's data), so a
file from a killed process, one that ran out of space, or one still being written, reads consistently.
Opening checks the file against the bytes present (store/validate.py): a damaged or crafted file is refused
in one line, in bounded time and memory. The lazy row views are in store/lazy.py, the pandas and xarray
exports in store/export.py.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from . import export, schema
from .lazy import LatentView
from .liveness import writer_alive
from .superblock import SuperblockError, UnmarkedFile, held_by_another_process, read_superblock
from .validate import RootAttrs, RunFileError, check_run, count_steps, read_trusted_arrays, verify_rows

__all__ = ["Run", "LatentView", "open_run", "RunFileError"]

if TYPE_CHECKING:  # the accessors latent_probe.metrics registers on Run (store/accessors.py), typed for mypy
    from ..metrics.blocks import RunBlocks
    from ..metrics.run_metrics import RunMetrics
    from .cache import RunCache


class Run:
    """A recorded run. Per-step arrays have length S (committed steps)."""

    if TYPE_CHECKING:  # set on the class by ``register_run_accessor`` when latent_probe.metrics is imported
        metrics: RunMetrics  # ``run.metrics("x0")`` → AdjacentFrameMetrics, ``run.metrics.summary(...)``, ...
        blocks: RunBlocks

    # the file's handles and counts: set by store/validate.py (check_run at open, count_steps on refresh)
    _version: int
    _root_attrs: RootAttrs
    _state_ds: h5py.Dataset | None
    _steps_ds: h5py.Dataset
    _latents: dict[str, h5py.Dataset]
    _checksums: dict[str, h5py.Dataset]
    _checksum_algorithm: str | None
    _checksum_rows: dict[str, np.ndarray]
    _online: dict[str, dict[str, h5py.Dataset]]
    _online_bf: tuple[int, int] | None  # (B, F) of the metric sums
    _latent_step_ds: h5py.Dataset | None
    _shape: tuple[int, ...] | None  # [B, C, F, H, W]
    _quantity_bits: list[str]
    _expert_names: list[str]
    _table_cache: np.ndarray | None
    _n: int  # committed steps S
    _k: int  # stored latent rows K
    _kept: np.ndarray  # [K] the step of each stored latent row

    def __init__(self, file: h5py.File, *, owns_file: bool = True, source: str | None = None,
                 verify: bool = True) -> None:
        self._file = file
        self._owns = owns_file
        self.source = source
        self.verify = bool(verify)  # whole latent rows read are checked against their checksums
        self._accessors: dict[str, Any] = {}
        self._where = source or "in-memory run"
        try:
            check_run(self)  # store/validate.py: the layout, against the bytes present; sets the handles
        except RunFileError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever a damaged file makes h5py or numpy raise
            raise RunFileError(f"{self._where} is corrupt ({type(exc).__name__}: "
                               f"{(str(exc).splitlines() or [''])[0][:200]})") from None

    # -------------------------------------------------------------- opening and validation
    def _file_size(self) -> int:
        if self.source is not None:
            return os.path.getsize(self.source)
        return int(self._file.id.get_filesize())

    def _verify(self, name: str, rows: np.ndarray, data: np.ndarray) -> None:
        """Check whole latent rows just read against the checksums written with them (``run.verify``)."""
        verify_rows(self, name, rows, data)

    def checksums(self, name: str) -> np.ndarray | None:
        """[K] uint32: the checksum of each stored latent row of ``name`` (None for a file written without them)."""
        if name not in self._checksums:
            return None
        return self._checksum_rows[name].copy()

    @property
    def checksum_algorithm(self) -> str | None:
        """The algorithm of the file's latent checksums (``"crc32c"``, ``"crc32"``), None without checksums."""
        return self._checksum_algorithm if self._checksums else None

    @property
    def cache(self) -> "RunCache":
        """The run's cache of derived results (``/metrics`` in the file, and memory): store/cache.py."""
        c = self.__dict__.get("_cache")
        if c is None:
            from .cache import RunCache

            c = self.__dict__["_cache"] = RunCache(self)
        return c

    def _state(self) -> dict[str, Any]:
        """/run_state as a dict; read once for a file no writer holds (SWMR: every time)."""
        if self._state_ds is None:
            return {}
        cached = self.__dict__.get("_state_cache")
        if cached is not None:
            return dict(cached)
        state = schema.state_dict(self._state_ds[0])
        if not self._file.swmr_mode:
            self.__dict__["_state_cache"] = state
        return dict(state)

    def _table(self, n: int | None = None) -> np.ndarray:
        """The first ``n`` (default: committed) rows of /steps, read in one go and kept until the next refresh."""
        n = self._n if n is None else n
        cached = self.__dict__.get("_table_cache")
        if cached is None or len(cached) != n:
            cached = self.__dict__["_table_cache"] = self._steps_ds[:n]
        return cached

    def _count(self) -> None:
        count_steps(self)  # store/validate.py: committed steps, each checked to be present in the file

    def _datasets(self) -> list[h5py.Dataset]:
        """Every per-step dataset besides /steps (for SWMR refreshes)."""
        out = list(self._latents.values()) + [ds for fields in self._online.values() for ds in fields.values()]
        out += list(self._checksums.values())
        return out + ([self._latent_step_ds] if self._latent_step_ds is not None else [])

    @property
    def file(self) -> h5py.File:
        return self._file

    def read_arrays(self, group: str, rows: int | None = None) -> dict[str, np.ndarray] | None:
        """Every dataset of ``group`` as an array, or None when it cannot be trusted (store/validate.py)."""
        return read_trusted_arrays(self, group, rows)

    @property
    def schema_version(self) -> int:
        return self._version

    def refresh(self) -> None:
        """Re-read the committed steps of a run that is still being written (SWMR)."""
        self._steps_ds.refresh()
        for ds in self._datasets():
            ds.refresh()
        if self._state_ds is not None:
            self._state_ds.refresh()
        try:
            self._count()
        except (OSError, KeyError, ValueError) as exc:
            if isinstance(exc, RunFileError):
                raise
            raise RunFileError(f"{self._where} is corrupt ({type(exc).__name__}: {exc})") from None
        self.__dict__.pop("_state_cache", None)
        self._accessors.clear()  # extensions cache what they computed from the steps seen so far
        self.__dict__.pop("_cache", None)  # its fingerprint covers the rows seen so far
        self.__dict__.pop("_generation_files", None)  # a later generation's file may have appeared since

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
        """Root attributes, with the end-of-run state (complete, steps, error, ...) merged in (all of them are read:
        :meth:`attr` reads one)."""
        out = dict(self._root_attrs)
        out.update(self._state())
        return out

    def attr(self, name: str, default: Any = None) -> Any:
        """One root attribute (decoded; ``default`` when absent), read without reading the others."""
        return self._root_attrs.get(name, default)

    @property
    def attr_names(self) -> list[str]:
        """Names of the root attributes (cheap: nothing is read)."""
        return list(self._root_attrs)

    @property
    def recording(self) -> bool:
        """A writer is still recording this file (SWMR); False once it closed it, or died without closing it."""
        if self.source is None or not self._file.swmr_mode or self._state().get("closed"):
            return False
        alive = writer_alive(self.source)
        return True if alive is None else alive  # without OFD locks: not closed yet

    @property
    def complete(self) -> bool:
        """The block ended without an exception and every step was written."""
        if self._state_ds is not None:
            return bool(self._state()["complete"])
        return bool(self._root_attrs.get("complete", False))

    @property
    def error(self) -> str | None:
        """Why the run is incomplete (the exception that ended the block, or the writer's failure)."""
        a = self.attrs
        return a.get("writer_error") or a.get("error") or None

    @property
    def num_steps(self) -> int:
        return self._n

    def _steps(self, name: str) -> np.ndarray:
        return np.array(self._table()[name])

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
        """Name of the expert that ran each step [S] ("unknown" where no expert hook fired)."""
        raw = self._steps("expert")
        if self._version < 2:
            return np.asarray([e.decode("utf-8", "replace") for e in raw], dtype=object)
        names = np.asarray([*self._expert_names, "unknown"], dtype=object)
        return names[raw.astype(np.int64)]  # -1 → "unknown"

    @property
    def guidance_scales(self) -> np.ndarray:
        return self._steps("guidance_scale")

    # -------------------------------------------------------------- generations
    @property
    def generation(self) -> int | None:
        """Which generation of its probe this run is (1-based: ``run.h5`` is 1, ``run.gen2.h5`` 2, ...); None for
        files written before runs were split per generation."""
        value = self._root_attrs.get("generation")
        return int(value) if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None

    @property
    def generations(self) -> list[str]:
        """The files of every generation of the probe that recorded this run, in order, this one included:
        ``[run.h5, run.gen2.h5, ...]``, found beside it by name and kept only where ``probe_id`` matches. [] in
        memory or for older files; ``[source]`` when the name does not follow the pattern (a renamed file)."""
        cached = self.__dict__.get("_generation_files")
        if cached is None:
            cached = self.__dict__["_generation_files"] = self._find_generations()
        return list(cached)

    def _find_generations(self) -> list[str]:
        gen, probe = self.generation, self._root_attrs.get("probe_id")
        if self.source is None or gen is None or not probe:
            return []
        first = schema.first_generation_path(self.source, gen)
        if first is None:
            return [self.source]
        found = {1: first, **schema.generation_siblings(first)}
        out = []
        for n, path in sorted(found.items()):
            if n == gen:
                out.append(self.source)
                continue
            try:
                with open_run(path) as other:
                    if other._root_attrs.get("probe_id") == probe and other.generation == n:
                        out.append(path)
            except (OSError, RunFileError):
                continue  # missing, damaged, or not a run: not one of this probe's generations
        return out

    @property
    def planned_steps(self) -> int | None:
        """Steps the scheduler planned from this run's first step on (``len(scheduler.timesteps)``); more than
        ``num_steps`` when the generation stopped early (``error`` says why). None where unknown."""
        value = self._root_attrs.get("planned_steps")
        return int(value) if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None

    @property
    def blocked_ms(self) -> np.ndarray:
        return self._steps("blocked_ms")

    def _bitmask(self, field: str) -> dict[str, np.ndarray]:
        bits = self._steps(field)
        return {n: (bits >> i & 1).astype(bool) for i, n in enumerate(self._quantity_bits)}

    @property
    def nonfinite(self) -> dict[str, np.ndarray]:
        """quantity or space → [S] bool, True where that step's stored latent — or, for a space whose metrics were
        computed during the run, its tensor (whether stored or not) — held NaN or ±Inf."""
        out = self._bitmask("nonfinite")
        try:
            spaces = [s.decode() if isinstance(s, bytes) else str(s)
                      for s in self._steps_ds.attrs.get("online_bits", [])][: 32 - schema.ONLINE_BIT0]
        except (TypeError, ValueError, AttributeError):
            raise RunFileError(f"{self._where}: /{schema.STEPS_DATASET} lists unreadable online_bits") from None
        if spaces:
            bits = self._steps("nonfinite")
            for j, space in enumerate(spaces):
                flag = (bits >> (schema.ONLINE_BIT0 + j) & 1).astype(bool)
                out[space] = out[space] | flag if space in out else flag
        return out

    @property
    def overflow(self) -> dict[str, np.ndarray]:
        """quantity → [S] bool, True where finite values exceeded the store dtype and are stored as ±Inf."""
        if self._version < 2:
            return {n: np.zeros(self._n, bool) for n in self._quantity_bits}
        return self._bitmask("overflow")

    # -------------------------------------------------------------- latents
    @property
    def quantities(self) -> list[str]:
        """Captured quantities in capture order (x_t, pred, x0, eps, pred_cond, pred_uncond)."""
        present = list(self._latents)
        declared = self._root_attrs.get("quantities", [])
        order = [q for q in declared if q in present] if isinstance(declared, list) else []
        return order + [q for q in present if q not in order]

    def latents(self, name: str) -> Any:
        """Lazy [K, B, C, F, H, W] view of a stored quantity — or of x̂₀ / ε̂ derived on read from the stored x_t and
        prediction when they were not stored themselves (store/derived.py; ``view.derived`` says which)."""
        if name in self._latents:
            return LatentView(self, name)
        if name in self.derivable:
            from .derived import DerivedView

            return DerivedView(self, name)
        why = ""
        if name in ("x0", "eps") and {"x_t", "pred"} <= set(self._latents):
            why = f" (not derivable: {self._derive_refusal()})"
        raise KeyError(f"{name!r} was not captured in this run; captured: {self.quantities}{why}")

    @property
    def derivable(self) -> list[str]:
        """x̂₀ / ε̂ when they can be derived on read (x_t and the prediction stored, noise convention recorded)."""
        if self._derive_refusal() is not None:
            return []
        return [q for q in ("x0", "eps") if q not in self._latents]

    def _derive_refusal(self) -> str | None:
        """Why x̂₀ / ε̂ cannot be derived on read (store/derived.py), None when they can."""
        from .derived import derive_refusal

        return derive_refusal(self)

    @property
    def latent_steps(self) -> np.ndarray:
        """[K] the steps (0-based) whose latents are stored: every step, or those ``latent_steps=`` chose."""
        return self._kept.copy()

    @property
    def latent_shape(self) -> tuple[int, ...] | None:
        """[B, C, F, H, W] of one step's latent (also for a run that stored none); None where unknown."""
        return self._shape

    @property
    def num_frames(self) -> int | None:
        """Latent frames F: from the latents' shape, else from the metric sums computed during the run."""
        if self._shape is not None:
            return int(self._shape[2])
        return None if self._online_bf is None else int(self._online_bf[1])

    @property
    def online_spaces(self) -> list[str]:
        """Spaces whose metric sums were computed during the run (``metrics=``)."""
        return [q for q in ("x_t", "pred", "x0", "eps") if q in self._online] + \
            [q for q in self._online if q not in ("x_t", "pred", "x0", "eps")]

    def online_sums(self, space: str, fields: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """The per-step float64 sums of ``space`` computed during the run: name → [S, ...] (committed steps);
        ``fields`` picks some (those absent are left out)."""
        if space not in self._online:
            raise KeyError(f"no metrics of {space!r} were computed during this run; computed: {self.online_spaces}")
        return {name: ds[: self._n] for name, ds in self._online[space].items() if fields is None or name in fields}

    @property
    def spaces(self) -> list[str]:
        """Every space whose per-step metrics this run can give: stored, derivable or computed during the run."""
        have = set(self.quantities) | set(self.derivable) | set(self._online)
        order = ["x0", "eps", "x_t", "pred", "pred_cond", "pred_uncond"]
        return [q for q in order if q in have] + sorted(have - set(order))

    # -------------------------------------------------------------- extensions (metrics, ...)
    if not TYPE_CHECKING:  # invisible to mypy: a typo on ``run`` stays a type error
        def __getattr__(self, name: str) -> Any:
            """The metric methods once promoted onto Run (``run.summary(...)``): they still answer for one
            release, with a DeprecationWarning naming their one spelling (``run.metrics.summary(...)``)."""
            if not name.startswith("_"):
                for home, desc in vars(type(self)).items():  # the accessors registered on Run (store/accessors.py)
                    if name in getattr(getattr(desc, "_accessor", None), "moved_from_run", ()):
                        warnings.warn(f"run.{name}(...) is deprecated and will be removed in the next release: use "
                                      f"run.{home}.{name}(...)", DeprecationWarning, stacklevel=2)
                        return getattr(getattr(self, home), name)
            raise AttributeError(f"'Run' object has no attribute {name!r}")

    # -------------------------------------------------------------- tables (pandas, xarray): store/export.py
    def step_table(self) -> Any:
        """pandas DataFrame, one row per committed step: ``step`` (0-based), ``index``, ``timestep``, ``sigma``,
        ``alpha``, ``expert`` (:func:`~latent_probe.store.export.step_table`)."""
        return export.step_table(self)

    def to_dataframe(self, space: str = "x0") -> Any:
        """Tidy pandas DataFrame of the adjacent-frame metrics of ``space`` with each step's ``timestep``,
        ``sigma`` and ``expert`` (:func:`~latent_probe.store.export.to_dataframe`)."""
        return export.to_dataframe(self, space)

    def to_xarray(self) -> Any:
        """The committed steps as an ``xarray.Dataset``, read lazily from this run's open file
        (:func:`~latent_probe.store.export.to_xarray`)."""
        return export.to_xarray(self)

    def __repr__(self) -> str:
        gen = ""
        if self.generation is not None and (self.generation > 1 or len(self.generations) > 1):
            gen = f", generation {self.generation} of {len(self.generations) or '?'}"
        planned = self.planned_steps
        steps = f"{self.num_steps}" + (f" of {planned} planned" if planned is not None and planned != self.num_steps
                                        else "")
        return (f"Run({self.source or 'in memory'}{gen}, steps={steps}, quantities={self.quantities}, "
                f"complete={self.complete})")


def open_run(path: str | os.PathLike, mode: str = "r", *, swmr: bool | None = None, verify: bool = True) -> Run:
    """Open a recorded run. ``mode="r+"`` lets metrics be cached in the file. ``verify``: every whole latent row
    read (metrics, exports) is checked against the checksum the writer recorded with it (``run.verify`` changes it
    later); a row that differs raises RunFileError.

    A file still being recorded (or left by a killed writer) is opened in SWMR read mode automatically; call
    ``run.refresh()`` to see steps committed since. Anything but a readable run raises RunFileError (one
    line); a missing file FileNotFoundError.
    """
    path = os.fspath(path)
    if mode not in ("r", "r+"):
        raise ValueError(f"mode must be 'r' or 'r+', got {mode!r}")
    try:
        return _open_run(path, mode, swmr, verify)
    except (FileNotFoundError, RunFileError):
        raise
    except OSError as exc:  # a symlink loop, /proc/self/mem, a device error, no permission: one line with the path
        raise RunFileError(f"{path} cannot be read ({exc.strerror or type(exc).__name__})") from None


def _open_run(path: str, mode: str, swmr: bool | None, verify: bool) -> Run:
    try:
        superblock, size = read_superblock(path)
    except SuperblockError as exc:
        raise RunFileError(f"{path} {exc}") from None
    marked = superblock.open_for_write
    live = superblock.open_for_swmr_write and writer_alive(path) is not False  # a recorder is writing it
    if marked and not superblock.open_for_swmr_write and held_by_another_process(path):
        raise RunFileError(f"{path} is locked by another process that has it open for writing; try again once "
                           "it is closed")
    stale = marked and not live  # its writer died: read it as it is on disk, without changing the file
    if superblock.end_of_file > size and not stale:
        raise RunFileError(f"{path} is truncated: the HDF5 superblock declares {superblock.end_of_file} bytes, "
                           f"the file has {size}")
    if mode == "r+" and (live or stale):
        raise RunFileError(f"{path} is being recorded, or a process that wrote it was killed; open it read-only"
                           + ("" if live else f" (`h5clear -s {path}` clears the stale mark)"))
    use_swmr = live if swmr is None else bool(swmr) and mode == "r" and not stale
    try:
        if stale:
            f = h5py.File(UnmarkedFile(path, superblock), "r")
        else:
            f = h5py.File(path, mode, swmr=use_swmr, libver="latest" if use_swmr else None)
    except BlockingIOError:
        raise RunFileError(f"{path} is locked by another process that has it open for writing; try again once "
                           "it is closed") from None
    except OSError as exc:
        msg = (str(exc).splitlines() or ["unknown error"])[0]
        if "already open for write" in msg:
            raise RunFileError(f"{path} is locked by another process that has it open for writing") from None
        raise RunFileError(f"{path} cannot be read (corrupt HDF5 file: {msg})") from None
    try:
        return Run(f, owns_file=True, source=path, verify=verify)
    except BaseException:
        f.close()
        raise
