"""``Run``: one read API for a recorded run, in memory or in an HDF5 file.

Latents are read lazily: ``run.latents("x0")`` is a view of shape [S, B, C, F, H, W] that reads only
what is indexed. S counts committed steps (``/run_state``'s counter, written after each step's data), so a
file from a killed process, one that ran out of space, or one still being written, reads consistently.
Opening checks the file against the bytes present (store/validate.py): a damaged or crafted file is refused
in one line, in bounded time and memory.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Iterator

import h5py
import numpy as np

from . import schema
from .blocks import BLOCKS_GROUP
from .liveness import writer_alive
from .superblock import SuperblockError, UnmarkedFile, held_by_another_process, read_superblock
from .validate import MAX_ATTR_BYTES, RunFileError, check_dataset, check_link, check_netcdf_view, chunk_within

__all__ = ["Run", "LatentView", "open_run", "RunFileError"]


class RowView:
    """Numpy-style indexing over the rows of a lazy [K, ...] view: an int, a slice, an index or boolean array, then
    any further axes. Subclasses read one row (``_one``) and a selection of rows (``_some``)."""

    derived = False

    def __len__(self) -> int:
        return self._rows

    def _one(self, i: int, rest: tuple) -> np.ndarray:
        raise NotImplementedError

    def _some(self, rows: slice | np.ndarray, rest: tuple) -> np.ndarray:
        raise NotImplementedError

    def __getitem__(self, key: Any) -> np.ndarray:
        n = len(self)
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        if isinstance(first, (int, np.integer)):
            i = int(first) + n if first < 0 else int(first)
            if not 0 <= i < n:
                raise IndexError(f"row {first} out of range for {n} stored steps")
            return self._one(i, rest)
        if isinstance(first, slice):
            return self._some(slice(*first.indices(n)), rest)
        idx = np.asarray(first)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = np.where(idx < 0, idx + n, idx)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"row index out of range for {n} stored steps")
        return self._some(idx, rest)

    def __iter__(self) -> Iterator[np.ndarray]:
        """One row at a time: [B, C, F, H, W] each; memory stays at one step."""
        for i in range(len(self)):
            yield self._one(i, ())

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self[:]
        return arr if dtype is None else arr.astype(dtype)

    def numpy(self) -> np.ndarray:
        return self[:]


class LatentView(RowView):
    """Lazy [K, B, C, F, H, W] view of one stored quantity; index it like a numpy array. Row k is step
    ``view.steps[k]``: K = S and row s = step s unless the run stored latents for chosen steps only
    (``latent_steps=``)."""

    def __init__(self, run: "Run", name: str) -> None:
        self._run = run
        self.name = name
        self._ds = run._latents[name]

    @property
    def _rows(self) -> int:
        return self._run._k

    @property
    def steps(self) -> np.ndarray:
        """[K] the step (0-based) of each row."""
        return self._run.latent_steps

    @property
    def shape(self) -> tuple[int, ...]:
        return (self._rows, *self._ds.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self._ds.dtype

    @property
    def step_nbytes(self) -> int:
        return int(np.prod(self._ds.shape[1:])) * self._ds.dtype.itemsize

    def _one(self, i: int, rest: tuple) -> np.ndarray:
        data = self._ds[(i, *rest)]  # h5py reads only what ``rest`` selects
        if not rest:  # a whole row was read: it is checked against the checksum written with it
            self._run._verify(self.name, np.asarray([i]), data[None])
        return data

    def _some(self, rows: slice | np.ndarray, rest: tuple) -> np.ndarray:
        if isinstance(rows, slice):
            data = self._ds[(rows, *rest)]
            if not rest:
                self._run._verify(self.name, np.arange(rows.start, rows.stop, rows.step), data)
            return data
        order = np.argsort(rows)  # h5py takes increasing indices
        data = self._ds[(np.sort(rows).tolist(), *rest)] if rows.size else self._ds[(slice(0, 0), *rest)]
        if not rest:
            self._run._verify(self.name, np.sort(rows), data)
        return data[np.argsort(order)]

    def __repr__(self) -> str:
        return f"LatentView({self.name!r}, shape={self.shape}, dtype={self.dtype})"


class RootAttrs(Mapping):
    """The root attributes of a run file, read and decoded one at a time, on first use (each is checked to fit in
    the file before it is read: a crafted size is refused in one line, not allocated)."""

    def __init__(self, f: h5py.File, where: str, size: int) -> None:
        self._am, self._where, self._size = f.attrs, where, size  # File.attrs builds a new manager each time
        self._names: list[str] | None = None
        self._values: dict[str, Any] = {}
        self._json: set[str] | None = None

    def _raw(self, name: str) -> Any:
        try:
            if self._am.get_id(name).get_storage_size() > min(MAX_ATTR_BYTES, self._size):
                raise RunFileError(f"{self._where}: root attribute {name!r} claims more bytes than a run file holds")
            value = self._am[name]
        except RunFileError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever a damaged attribute makes h5py raise: one line
            raise RunFileError(f"{self._where}: root attribute {name!r} cannot be read ({type(exc).__name__}: "
                               f"{(str(exc).splitlines() or [''])[0][:200]})") from None
        if isinstance(value, (str, bytes)) and len(value) > MAX_ATTR_BYTES:  # variable-length: stored elsewhere
            raise RunFileError(f"{self._where}: root attribute {name!r} holds {len(value)} characters, more than a "
                               "run file's attributes ever do")
        return value

    def __getitem__(self, name: str) -> Any:
        if name in self._values:
            return self._values[name]
        if name == schema.JSON_KEYS_ATTR or name not in self._am:
            raise KeyError(name)
        if self._json is None:
            self._json = schema.json_keys_of(self._raw(schema.JSON_KEYS_ATTR)) \
                if schema.JSON_KEYS_ATTR in self._am else set()
        value = self._values[name] = schema.decode_value(name, self._raw(name), self._json)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name != schema.JSON_KEYS_ATTR and (
            name in self._values or name in self._am)

    def __iter__(self) -> Iterator[str]:
        if self._names is None:
            self._names = [n for n in self._am if n != schema.JSON_KEYS_ATTR]
        return iter(self._names)

    def __len__(self) -> int:
        return sum(1 for _ in self)


if TYPE_CHECKING:  # the accessors latent_probe.metrics registers on Run (store/accessors.py), typed for mypy
    from ..metrics.blocks import RunBlocks
    from ..metrics.run_metrics import RunMetrics
    from .cache import RunCache


class Run:
    """A recorded run. Per-step arrays have length S (committed steps)."""

    if TYPE_CHECKING:  # set on the class by ``register_run_accessor`` when latent_probe.metrics is imported
        metrics: RunMetrics  # ``run.metrics("x0")`` → AdjacentFrameMetrics, ``run.metrics.summary(...)``, ...
        blocks: RunBlocks

    def __init__(self, file: h5py.File, *, owns_file: bool = True, source: str | None = None,
                 verify: bool = True) -> None:
        self._file = file
        self._owns = owns_file
        self.source = source
        self.verify = bool(verify)  # whole latent rows read are checked against their checksums
        self._accessors: dict[str, Any] = {}
        self._where = source or "in-memory run"
        try:
            self._check()
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

    def _check(self) -> None:
        f, where = self._file, self._where
        size = self._file_size()
        count = h5py.h5o.get_info(f.id).num_attrs  # from the object header, before any attribute is read
        if count > schema.MAX_ROOT_ATTRS:
            raise RunFileError(f"{where} holds {count} root attributes; a run has at most {schema.MAX_ROOT_ATTRS}")
        attrs = RootAttrs(f, where, size)
        if attrs.get("schema") != schema.SCHEMA_NAME:
            raise RunFileError(f"{where} is an HDF5 file but not a latent_probe run (no schema attribute)")
        try:
            version = int(attrs.get("schema_version"))
        except (TypeError, ValueError, OverflowError):
            raise RunFileError(f"{where} has an unreadable schema_version") from None
        if version > schema.SCHEMA_VERSION:
            raise RunFileError(f"{where} has schema version {version}; this latent_probe reads up to "
                               f"{schema.SCHEMA_VERSION}: upgrade latent_probe")
        if version < 1:
            raise RunFileError(f"{where} has an invalid schema version {version}")
        self._version = version
        self._root_attrs = attrs  # read on demand: a run has dozens (configurations), a reader needs a few
        self._state_ds = None
        if version >= 2:
            check_link(f, schema.STATE_DATASET, where)
            ds = f[schema.STATE_DATASET]
            check_dataset(ds, where, size)
            if ds.shape != (1,) or ds.dtype.names is None or not set(schema.STATE_FIELDS) <= set(ds.dtype.names):
                raise RunFileError(f"{where}: /{schema.STATE_DATASET} is not a run state")
            self._state_ds = ds
        if schema.LATENTS_GROUP not in f:
            error = self._state().get("error") if version >= 2 else self._root_attrs.get("error")
            raise RunFileError(f"{where} holds no recorded step (it was closed before the first step"
                               + (f": {error})" if error else ")"))
        check_link(f, schema.STEPS_DATASET, where)
        check_link(f, schema.LATENTS_GROUP, where)
        steps = self._steps_ds = f[schema.STEPS_DATASET]
        check_dataset(steps, where, size, chunked_rows=True)
        expected = schema.STEP_DTYPE if version >= 2 else schema.STEP_DTYPE_V1
        names = steps.dtype.names or ()
        if steps.ndim != 1 or any(n not in names or steps.dtype[n].kind != expected[n].kind
                                  for n in expected.names):
            raise RunFileError(f"{where}: /{schema.STEPS_DATASET} is not a table of steps")
        group = f[schema.LATENTS_GROUP]
        if not isinstance(group, h5py.Group):
            raise RunFileError(f"{where}: /{schema.LATENTS_GROUP} is not a group")
        if len(group) > schema.MAX_QUANTITIES:  # counted from the group's header, before any member is opened
            raise RunFileError(f"{where}: /{schema.LATENTS_GROUP} holds {len(group)} members; a run stores at most "
                               f"{schema.MAX_QUANTITIES} quantities")
        shape = None
        self._latents: dict[str, h5py.Dataset] = {}
        for name in group:
            check_link(group, name, where)
            ds = group[name]
            check_dataset(ds, where, size, chunked_rows=True)
            if ds.ndim != 6 or ds.dtype.kind != "f" or ds.dtype.itemsize not in (2, 4):
                raise RunFileError(f"{where}: {ds.name} is not a [S, B, C, F, H, W] float16/float32 latent")
            if shape is not None and ds.shape[1:] != shape:
                raise RunFileError(f"{where}: latents of different shapes ({ds.name}: {ds.shape[1:]}, {shape})")
            if ds.chunks != (1, *ds.shape[1:]):
                raise RunFileError(f"{where}: {ds.name} is not stored one step per chunk")
            shape = ds.shape[1:]
            self._latents[name] = ds
        self._checksums = self._check_checksums(size)
        self._online = self._check_online(size)
        self._latent_step_ds = None
        if schema.LATENT_STEP_DIM in f and self._latents:
            check_link(f, schema.LATENT_STEP_DIM, where)
            ls = f[schema.LATENT_STEP_DIM]
            check_dataset(ls, where, size, chunked_rows=True)
            if ls.ndim != 1 or ls.dtype.kind not in "iu":
                raise RunFileError(f"{where}: /{schema.LATENT_STEP_DIM} is not a list of step numbers")
            self._latent_step_ds = ls
        if not self._latents and not self._online and BLOCKS_GROUP not in f:
            raise RunFileError(f"{where} holds no latent dataset and no metrics recorded during the run")
        if shape is None:
            stated = self._root_attrs.get("latent_shape")
            if isinstance(stated, list) and len(stated) == 5 and all(isinstance(v, int) and v >= 0 for v in stated):
                shape = tuple(stated)
        if shape is not None and self._online_bf is not None and (shape[0], shape[2]) != self._online_bf:
            raise RunFileError(f"{where}: the latent shape {list(shape)} disagrees with the metric sums "
                               f"(batch, frames) = {self._online_bf}")
        self._shape = shape
        try:
            self._quantity_bits = [q.decode() if isinstance(q, bytes) else str(q)
                                   for q in steps.attrs.get("quantities", [])]
        except (TypeError, ValueError, AttributeError):
            raise RunFileError(f"{where}: /{schema.STEPS_DATASET} lists unreadable quantities") from None
        experts = self._root_attrs.get("experts", [])
        if version >= 2 and (not isinstance(experts, list) or not all(isinstance(e, str) for e in experts)):
            raise RunFileError(f"{where}: the attribute 'experts' is not a list of names")
        self._expert_names = list(experts) if version >= 2 else []
        self._n = 0
        self._k = 0
        self._kept: np.ndarray = np.zeros(0, np.int64)
        self._count()

    def _check_checksums(self, size: int) -> dict[str, h5py.Dataset]:
        """``/checksums/<quantity>``: uint32, one row a latent row, for every stored quantity — present exactly when
        the file says which algorithm wrote them (root attribute ``checksum``); a file from before them has none."""
        f, where = self._file, self._where
        algorithm = self._root_attrs.get("checksum")
        self._checksum_algorithm = algorithm if isinstance(algorithm, str) else None
        if schema.CHECKSUMS_GROUP not in f:
            if algorithm is not None:
                raise RunFileError(f"{where} records {algorithm} checksums, but /{schema.CHECKSUMS_GROUP} is missing")
            return {}
        check_link(f, schema.CHECKSUMS_GROUP, where)
        group = f[schema.CHECKSUMS_GROUP]
        if not isinstance(group, h5py.Group) or algorithm is None or len(group) > schema.MAX_QUANTITIES:
            raise RunFileError(f"{where}: /{schema.CHECKSUMS_GROUP} is not the checksums of the latents")
        out = {}
        for name in group:
            check_link(group, name, where)
            ds = group[name]
            check_dataset(ds, where, size, chunked_rows=True)
            if ds.ndim != 1 or ds.dtype != np.uint32:
                raise RunFileError(f"{where}: {ds.name} is not a list of uint32 checksums")
            out[name] = ds
        if set(out) != set(self._latents):
            raise RunFileError(f"{where}: checksums of {sorted(out)} for latents of {sorted(self._latents)}")
        return out

    def _verify(self, name: str, rows: np.ndarray, data: np.ndarray) -> None:
        """Check whole latent rows just read against the checksums written with them (``run.verify``); one
        RunFileError naming the first row that differs."""
        if not self.verify or not self._checksums or not len(rows):
            return
        from .checksum import checksum, checksum_function

        algorithm = self._checksum_algorithm
        if checksum_function(algorithm) is None:
            raise RunFileError(f"{self._where} records {algorithm} checksums, which this installation cannot compute "
                               "(pip install google-crc32c), or open it with verify=False")
        table = self._checksum_rows[name]  # read (and checked) when the steps were counted
        if int(rows[-1]) >= len(table):
            raise RunFileError(f"{self._where}: the checksum of {name} row {int(rows[-1])} is missing (corrupt)")
        stored = table[rows]
        for k, row in enumerate(data):
            if checksum(row, algorithm) != int(stored[k]):
                step = int(self._kept[rows[k]]) if rows[k] < len(self._kept) else int(rows[k])
                raise RunFileError(f"{self._where}: {name} at step {step} does not match the {algorithm} checksum "
                                   "written with it: the stored data changed after they were written (verify=False "
                                   "reads them anyway)")

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

    def _check_online(self, size: int) -> dict[str, dict[str, h5py.Dataset]]:
        """``/online/<space>/<sum>`` datasets: float64, one row a step, chunked along steps, inside the file."""
        f, where = self._file, self._where
        self._online_bf = None
        if schema.ONLINE_GROUP not in f:
            return {}
        check_link(f, schema.ONLINE_GROUP, where)
        group = f[schema.ONLINE_GROUP]
        if not isinstance(group, h5py.Group):
            raise RunFileError(f"{where}: /{schema.ONLINE_GROUP} is not a group")
        out: dict[str, dict[str, h5py.Dataset]] = {}
        if len(group) > schema.MAX_QUANTITIES:
            raise RunFileError(f"{where}: /{schema.ONLINE_GROUP} holds {len(group)} members; a run computes metrics "
                               f"of at most {schema.MAX_QUANTITIES} spaces")
        for space in group:
            check_link(group, space, where)
            sub = group[space]
            if not isinstance(sub, h5py.Group):
                raise RunFileError(f"{where}: /{schema.ONLINE_GROUP}/{space} is not a group")
            if len(sub) > schema.MAX_QUANTITIES:
                raise RunFileError(f"{where}: /{schema.ONLINE_GROUP}/{space} holds {len(sub)} members; a space has "
                                   f"at most {schema.MAX_QUANTITIES} sums")
            fields: dict[str, h5py.Dataset] = {}
            for name in sub:
                check_link(sub, name, where)
                ds = sub[name]
                check_dataset(ds, where, size, chunked_rows=True)
                if ds.dtype != np.float64 or ds.ndim < 2 or ds.chunks is None or ds.chunks[1:] != ds.shape[1:]:
                    raise RunFileError(f"{where}: {ds.name} is not a float64 table of per-step sums")
                fields[name] = ds
            if fields:
                self._check_sums(f"/{schema.ONLINE_GROUP}/{space}", fields)
                out[space] = fields
        frames = {(ds.shape[1], ds.shape[2]) for fields in out.values() for n, ds in fields.items() if n == "sq"}
        if len(frames) > 1:
            raise RunFileError(f"{where}: the metric sums of different spaces disagree on batch and frames")
        self._online_bf = next(iter(frames), None)  # (B, F) of the sums
        return out

    def _check_sums(self, where_in: str, fields: dict[str, h5py.Dataset]) -> None:
        """The sums of one space fit together: change [S, 4]; sq [S, B, F], dot and dd [S, B, F−1] (all three, or
        none for a one-frame latent)."""
        where = self._where
        change = fields.get("change")
        if change is None or change.shape[1:] != (4,):
            raise RunFileError(f"{where}: {where_in}/change is missing or is not [S, 4]")
        pair = [n for n in ("sq", "dot", "dd") if n in fields]
        if not pair:
            return
        if len(pair) != 3:
            raise RunFileError(f"{where}: {where_in} holds {pair} of the pair sums sq, dot, dd")
        sq = fields["sq"].shape
        if len(sq) != 3 or sq[2] < 2 or any(fields[n].shape != (sq[0], sq[1], sq[2] - 1) for n in ("dot", "dd")):
            raise RunFileError(f"{where}: {where_in}: sq, dot and dd are not [S, B, F], [S, B, F−1], [S, B, F−1]")

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
        """Committed steps, each checked to be present in the file (bounded: no step is read)."""
        where, size = self._where, self._file_size()
        steps = self._steps_ds
        claimed = None
        if self._state_ds is not None:  # the counter first: a live writer writes it after the data
            row = self._state_ds[0]
            claimed = int(row["steps"])
            self.__dict__.pop("_state_cache", None)
            if not self._file.swmr_mode:  # nothing changes it: keep what was read
                self.__dict__["_state_cache"] = schema.state_dict(row)
            if self._file.swmr_mode:
                steps.refresh()
                for ds in self._datasets():
                    ds.refresh()
        online = [ds for fields in self._online.values() for ds in fields.values()]
        rows_per_step = [] if self._latent_step_ds is not None else [ds.shape[0] for ds in self._latents.values()]
        present = min([steps.shape[0], *rows_per_step, *(ds.shape[0] for ds in online)])
        if claimed is not None:
            if not 0 <= claimed <= present:
                raise RunFileError(f"{where} claims {claimed} committed steps but holds {present}")
        else:
            claimed = present
        # every claim is checked against the file's real size before anything proportional to it is allocated
        step_bytes = sum(int(np.prod(ds.shape[1:])) * ds.dtype.itemsize for ds in self._latents.values())
        row_bytes = steps.dtype.itemsize + sum(int(np.prod(ds.shape[1:])) * ds.dtype.itemsize for ds in online)
        if self._latent_step_ds is None:
            row_bytes += step_bytes
        if claimed * row_bytes > size:
            raise RunFileError(f"{where} claims {claimed} steps of {row_bytes} bytes each; the file has {size}")
        kept = self._kept_steps(claimed, size)
        if len(kept) * step_bytes > size:
            raise RunFileError(f"{where} claims {len(kept)} stored latent rows of {step_bytes} bytes; the file has "
                               f"{size}")
        latent_rows = [(name, ds, int(np.prod(ds.shape[1:])) * ds.dtype.itemsize) for name, ds in self._latents.items()]
        for i in range(self._k, len(kept)):
            for name, ds, nbytes in latent_rows:
                if not chunk_within(ds, (i, 0, 0, 0, 0, 0), nbytes, size):
                    raise RunFileError(f"{where}: step {int(kept[i])} of {name} is missing from the file (corrupt)")
        tables = [(steps, "the metadata"), *((ds, f"the sums in {ds.name}") for ds in online)]
        for ds, what in tables:  # one check a chunk of rows: each holds ``per`` steps
            per = ds.chunks[0] if ds.chunks else None
            if not per:
                continue
            nbytes, zeros = per * int(np.prod(ds.shape[1:])) * ds.dtype.itemsize, (0,) * (ds.ndim - 1)
            for i in range(-(-self._n // per) * per, claimed, per):
                if not chunk_within(ds, (i, *zeros), nbytes, size):
                    raise RunFileError(f"{where}: {what} of step {i} is missing from the file (corrupt)")
        self._table_cache = None
        if claimed and self._expert_names is not None and self._version >= 2:
            idx = self._table(claimed)["expert"]
            if idx.min() < -1 or idx.max() >= len(self._expert_names):
                raise RunFileError(f"{where}: a step names an expert that the run does not list")
        rows = {}
        for name, ds in self._checksums.items():  # K × 4 bytes each, read now: a damaged one is refused at open
            if ds.shape[0] < len(kept):
                raise RunFileError(f"{where}: /{schema.CHECKSUMS_GROUP}/{name} holds {ds.shape[0]} of the "
                                   f"{len(kept)} rows' checksums (corrupt)")
            rows[name] = np.asarray(ds[: len(kept)], dtype=np.uint32)
        self._checksum_rows = rows
        self._n = claimed
        self._k = len(kept)
        self._kept = kept

    def _datasets(self) -> list[h5py.Dataset]:
        """Every per-step dataset besides /steps (for SWMR refreshes)."""
        out = list(self._latents.values()) + [ds for fields in self._online.values() for ds in fields.values()]
        out += list(self._checksums.values())
        return out + ([self._latent_step_ds] if self._latent_step_ds is not None else [])

    def _kept_steps(self, claimed: int, size: int) -> np.ndarray:
        """The steps (< ``claimed``) whose latents are stored, in row order: every step, or /latent_step's rows
        that are present in every latent dataset, committed, and strictly increasing."""
        if not self._latents:
            return np.zeros(0, np.int64)
        if self._latent_step_ds is None:
            return np.arange(claimed, dtype=np.int64)
        ls = self._latent_step_ds
        rows = min([ls.shape[0], claimed, *(ds.shape[0] for ds in self._latents.values())])
        per = ls.chunks[0] if ls.chunks else None
        for i in range(0, rows, per or max(rows, 1)):
            if per and not chunk_within(ls, (i,), per * ls.dtype.itemsize, size):
                raise RunFileError(f"{self._where}: /{schema.LATENT_STEP_DIM} row {i} is missing from the file (corrupt)")
        values = np.asarray(ls[:rows], dtype=np.int64)
        if values.size and (values[0] < 0 or np.any(np.diff(values) <= 0)):
            raise RunFileError(f"{self._where}: /{schema.LATENT_STEP_DIM} is not a strictly increasing list of steps")
        return values[values < claimed]

    @property
    def file(self) -> h5py.File:
        return self._file

    def read_arrays(self, group: str, rows: int | None = None) -> dict[str, np.ndarray] | None:
        """Every dataset of ``group`` as an array, or None when the group is absent or not plainly stored
        (a link, external or filtered storage, a size beyond the file, a first dimension other than
        ``rows``): a cache that cannot be trusted is a miss, never an answer."""
        g = self._file.get(group)
        if not isinstance(g, h5py.Group):
            return None
        size, out = self._file_size(), {}
        try:
            for name in g:
                check_link(g, name, self._where)
                ds = g[name]
                check_dataset(ds, self._where, size)
                if ds.dtype.kind not in "fiub" or (rows is not None and (ds.ndim == 0 or ds.shape[0] != rows)):
                    return None
                out[name] = ds[()]
        except (RunFileError, OSError, KeyError, ValueError, TypeError):
            return None
        return out

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
        if not {"x_t", "pred"} <= set(self._latents):
            return "x_t and pred were not both stored"
        if "noise_convention" not in self._root_attrs or "parameterization" not in self._root_attrs:
            return "the file does not record its noise convention (written before latent_probe 0.3's schema 3)"
        from ..parameterization import NOISE_CONVENTIONS, Parameterization

        if self._root_attrs.get("noise_convention") not in NOISE_CONVENTIONS or \
                self._root_attrs.get("parameterization") not in {p.value for p in Parameterization}:
            return (f"unknown noise convention {self._root_attrs.get('noise_convention')!r} or parameterization "
                    f"{self._root_attrs.get('parameterization')!r}")
        src = self._root_attrs.get("source_dtypes")
        if src is not None and (not isinstance(src, dict) or any(
                v not in ("float16", "bfloat16", "float32", "float64") for v in src.values())):
            return f"unreadable source_dtypes {src!r}"
        return None

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

    # -------------------------------------------------------------- tables (pandas, xarray)
    def step_table(self) -> Any:
        """pandas DataFrame, one row per committed step: ``step`` (0-based, the row; the convention everywhere in
        latent_probe), ``index`` (the scheduler's own step index), ``timestep``, ``sigma``, ``alpha``, ``expert``."""
        try:
            import pandas as pd
        except ImportError:  # pragma: no cover
            raise ImportError("step_table needs pandas: pip install pandas") from None
        return pd.DataFrame({"step": np.arange(self._n), "index": self.step_indices, "timestep": self.timesteps,
                             "sigma": self.sigmas, "alpha": self.alphas,
                             "expert": np.asarray([str(e) for e in self.experts], dtype=object)})

    def to_dataframe(self, space: str = "x0") -> Any:
        """Tidy pandas DataFrame of the adjacent-frame metrics of ``space`` (step, batch, pair, metric, value,
        space; from the ``run.metrics`` extension) with each step's ``timestep``, ``sigma`` and ``expert``. ``step``
        is 0-based: row s is ``scheduler.timesteps[s]`` of a generation that started at the first timestep."""
        df = self.metrics.to_dataframe(space)
        steps = self.step_table()
        extra = [c for c in ("timestep", "sigma", "expert") if c not in df.columns]
        if not extra or "step" not in df.columns:
            return df
        return df.merge(steps[["step", *extra]], on="step", how="left", sort=False)

    def to_xarray(self) -> Any:
        """The committed steps as an ``xarray.Dataset`` (needs xarray and h5netcdf): every quantity on dimensions
        (step, batch, channel, frame, height, width), coordinates step (0-based), timestep, sigma, alpha and
        expert. Read lazily from this run's open file, so it works for a file being recorded or left by a killed
        writer too (``xarray.open_dataset(path, engine="h5netcdf")`` needs a cleanly closed one); load it
        (``.load()``) before closing the run. Files written before dimension scales were added are refused."""
        try:
            import h5netcdf
            import xarray as xr
        except ImportError:
            raise ImportError("to_xarray needs xarray and h5netcdf: pip install xarray h5netcdf") from None
        if schema.STEP_DIM not in self._file:
            raise RunFileError(f"{self._where} was written without HDF5 dimension scales (by latent_probe "
                               f"{self._root_attrs.get('library_version', '?')}): xarray cannot name its axes")
        check_netcdf_view(self._file, self._where, self._file_size())
        if self._file.swmr_mode:  # a live run: let the step scale and coordinates show what was committed since
            for name in (schema.STEP_DIM, *schema.STEP_COORDS):
                obj = self._file.get(name)
                if isinstance(obj, h5py.Dataset):
                    obj.refresh()
        store = xr.backends.H5NetCDFStore(h5netcdf.File(self._file, "r"))
        ds = xr.open_dataset(store).isel({schema.STEP_DIM: slice(0, self._n)})
        if schema.LATENT_STEP_DIM in ds.dims:  # latents for chosen steps: the committed rows
            ds = ds.isel({schema.LATENT_STEP_DIM: slice(0, self._k)})
        if BLOCKS_GROUP in self._file:  # the block probes' metrics (run.blocks, registered by latent_probe.metrics)
            blocks = self.blocks.to_xarray().drop_vars(["sigma", "expert"])
            ds = ds.assign(blocks.data_vars).assign_coords(branch=blocks.branch, block=blocks.block)
        return ds

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
