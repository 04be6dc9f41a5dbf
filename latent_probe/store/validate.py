"""Checks that make reading a run file bounded: what HDF5 itself would trust, checked against the bytes present.

A run file uses a small part of HDF5: hard links, uncompressed contiguous or chunked datasets stored inside
the file, float latents of one shape per step. Anything else (external storage, virtual datasets, filters,
soft or external links, sizes beyond the file) is refused before data are read, so that a crafted or
damaged file ends in one line instead of a hang, a huge allocation or a read of another file.

``check_run`` checks a whole run file when ``Run`` opens it (its root attributes, run state, step table, latents,
checksums and metric sums) and sets the run's handles; ``count_steps`` counts the committed steps (at open and on
``refresh``), each checked to be present in the file; ``verify_rows`` checks latent rows read against their
checksums; ``read_trusted_arrays`` reads a cache group only when it is plainly stored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Iterator

import h5py
import numpy as np

from ..errors import LatentProbeError
from . import schema

if TYPE_CHECKING:
    from .reader import Run

__all__ = ["RunFileError", "check_link", "check_dataset", "check_netcdf_view", "chunk_within", "MAX_ATTR_BYTES",
           "RootAttrs", "check_run", "count_steps", "verify_rows", "read_trusted_arrays"]

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


# ------------------------------------------------------------------ a whole run file (Run opens with these)
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



def check_run(run: "Run") -> None:
    """Check a run file's layout against the bytes present and set the run's handles on it (``Run.__init__``)."""
    f, where = run._file, run._where
    size = run._file_size()
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
    run._version = version
    run._root_attrs = attrs  # read on demand: a run has dozens (configurations), a reader needs a few
    run._state_ds = None
    if version >= 2:
        check_link(f, schema.STATE_DATASET, where)
        ds = f[schema.STATE_DATASET]
        check_dataset(ds, where, size)
        if ds.shape != (1,) or ds.dtype.names is None or not set(schema.STATE_FIELDS) <= set(ds.dtype.names):
            raise RunFileError(f"{where}: /{schema.STATE_DATASET} is not a run state")
        run._state_ds = ds
    if schema.LATENTS_GROUP not in f:
        error = run._state().get("error") if version >= 2 else run._root_attrs.get("error")
        raise RunFileError(f"{where} holds no recorded step (it was closed before the first step"
                           + (f": {error})" if error else ")"))
    check_link(f, schema.STEPS_DATASET, where)
    check_link(f, schema.LATENTS_GROUP, where)
    steps = run._steps_ds = f[schema.STEPS_DATASET]
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
    run._latents = {}
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
        run._latents[name] = ds
    run._checksums = _check_checksums(run, size)
    run._online = _check_online(run, size)
    run._latent_step_ds = None
    if schema.LATENT_STEP_DIM in f and run._latents:
        check_link(f, schema.LATENT_STEP_DIM, where)
        ls = f[schema.LATENT_STEP_DIM]
        check_dataset(ls, where, size, chunked_rows=True)
        if ls.ndim != 1 or ls.dtype.kind not in "iu":
            raise RunFileError(f"{where}: /{schema.LATENT_STEP_DIM} is not a list of step numbers")
        run._latent_step_ds = ls
    if not run._latents and not run._online and schema.BLOCKS_GROUP not in f:
        raise RunFileError(f"{where} holds no latent dataset and no metrics recorded during the run")
    if shape is None:
        stated = run._root_attrs.get("latent_shape")
        if isinstance(stated, list) and len(stated) == 5 and all(isinstance(v, int) and v >= 0 for v in stated):
            shape = tuple(stated)
    if shape is not None and run._online_bf is not None and (shape[0], shape[2]) != run._online_bf:
        raise RunFileError(f"{where}: the latent shape {list(shape)} disagrees with the metric sums "
                           f"(batch, frames) = {run._online_bf}")
    run._shape = shape
    try:
        run._quantity_bits = [q.decode() if isinstance(q, bytes) else str(q)
                               for q in steps.attrs.get("quantities", [])]
    except (TypeError, ValueError, AttributeError):
        raise RunFileError(f"{where}: /{schema.STEPS_DATASET} lists unreadable quantities") from None
    experts = run._root_attrs.get("experts", [])
    if version >= 2 and (not isinstance(experts, list) or not all(isinstance(e, str) for e in experts)):
        raise RunFileError(f"{where}: the attribute 'experts' is not a list of names")
    run._expert_names = list(experts) if version >= 2 else []
    run._n = 0
    run._k = 0
    run._kept = np.zeros(0, np.int64)
    count_steps(run)



def _check_checksums(run: "Run", size: int) -> dict[str, h5py.Dataset]:
    """``/checksums/<quantity>``: uint32, one row a latent row, for every stored quantity — present exactly when
    the file says which algorithm wrote them (root attribute ``checksum``); a file from before them has none."""
    f, where = run._file, run._where
    algorithm = run._root_attrs.get("checksum")
    run._checksum_algorithm = algorithm if isinstance(algorithm, str) else None
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
    if set(out) != set(run._latents):
        raise RunFileError(f"{where}: checksums of {sorted(out)} for latents of {sorted(run._latents)}")
    return out



def verify_rows(run: "Run", name: str, rows: np.ndarray, data: np.ndarray) -> None:
    """Check whole latent rows just read against the checksums written with them (``run.verify``); one
    RunFileError naming the first row that differs."""
    if not run.verify or not run._checksums or not len(rows):
        return
    from .checksum import checksum, checksum_function

    algorithm = run._checksum_algorithm
    if checksum_function(algorithm) is None:
        raise RunFileError(f"{run._where} records {algorithm} checksums, which this installation cannot compute "
                           "(pip install google-crc32c), or open it with verify=False")
    table = run._checksum_rows[name]  # read (and checked) when the steps were counted
    if int(rows[-1]) >= len(table):
        raise RunFileError(f"{run._where}: the checksum of {name} row {int(rows[-1])} is missing (corrupt)")
    stored = table[rows]
    for k, row in enumerate(data):
        if checksum(row, algorithm) != int(stored[k]):
            step = int(run._kept[rows[k]]) if rows[k] < len(run._kept) else int(rows[k])
            raise RunFileError(f"{run._where}: {name} at step {step} does not match the {algorithm} checksum "
                               "written with it: the stored data changed after they were written (verify=False "
                               "reads them anyway)")



def _check_online(run: "Run", size: int) -> dict[str, dict[str, h5py.Dataset]]:
    """``/online/<space>/<sum>`` datasets: float64, one row a step, chunked along steps, inside the file."""
    f, where = run._file, run._where
    run._online_bf = None
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
            _check_sums(run, f"/{schema.ONLINE_GROUP}/{space}", fields)
            out[space] = fields
    frames = {(ds.shape[1], ds.shape[2]) for fields in out.values() for n, ds in fields.items() if n == "sq"}
    if len(frames) > 1:
        raise RunFileError(f"{where}: the metric sums of different spaces disagree on batch and frames")
    run._online_bf = next(iter(frames), None)  # (B, F) of the sums
    return out



def _check_sums(run: "Run", where_in: str, fields: dict[str, h5py.Dataset]) -> None:
    """The sums of one space fit together: change [S, 4]; sq [S, B, F], dot and dd [S, B, F−1] (all three, or
    none for a one-frame latent)."""
    where = run._where
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



def count_steps(run: "Run") -> None:
    """Committed steps, each checked to be present in the file (bounded: no step is read)."""
    where, size = run._where, run._file_size()
    steps = run._steps_ds
    claimed = None
    if run._state_ds is not None:  # the counter first: a live writer writes it after the data
        row = run._state_ds[0]
        claimed = int(row["steps"])
        run.__dict__.pop("_state_cache", None)
        if not run._file.swmr_mode:  # nothing changes it: keep what was read
            run.__dict__["_state_cache"] = schema.state_dict(row)
        if run._file.swmr_mode:
            steps.refresh()
            for ds in run._datasets():
                ds.refresh()
    online = [ds for fields in run._online.values() for ds in fields.values()]
    rows_per_step = [] if run._latent_step_ds is not None else [ds.shape[0] for ds in run._latents.values()]
    present = min([steps.shape[0], *rows_per_step, *(ds.shape[0] for ds in online)])
    if claimed is not None:
        if not 0 <= claimed <= present:
            raise RunFileError(f"{where} claims {claimed} committed steps but holds {present}")
    else:
        claimed = present
    # every claim is checked against the file's real size before anything proportional to it is allocated
    step_bytes = sum(int(np.prod(ds.shape[1:])) * ds.dtype.itemsize for ds in run._latents.values())
    row_bytes = steps.dtype.itemsize + sum(int(np.prod(ds.shape[1:])) * ds.dtype.itemsize for ds in online)
    if run._latent_step_ds is None:
        row_bytes += step_bytes
    if claimed * row_bytes > size:
        raise RunFileError(f"{where} claims {claimed} steps of {row_bytes} bytes each; the file has {size}")
    kept = _kept_steps(run, claimed, size)
    if len(kept) * step_bytes > size:
        raise RunFileError(f"{where} claims {len(kept)} stored latent rows of {step_bytes} bytes; the file has "
                           f"{size}")
    latent_rows = [(name, ds, int(np.prod(ds.shape[1:])) * ds.dtype.itemsize) for name, ds in run._latents.items()]
    for i in range(run._k, len(kept)):
        for name, ds, nbytes in latent_rows:
            if not chunk_within(ds, (i, 0, 0, 0, 0, 0), nbytes, size):
                raise RunFileError(f"{where}: step {int(kept[i])} of {name} is missing from the file (corrupt)")
    tables = [(steps, "the metadata"), *((ds, f"the sums in {ds.name}") for ds in online)]
    for ds, what in tables:  # one check a chunk of rows: each holds ``per`` steps
        per = ds.chunks[0] if ds.chunks else None
        if not per:
            continue
        nbytes, zeros = per * int(np.prod(ds.shape[1:])) * ds.dtype.itemsize, (0,) * (ds.ndim - 1)
        for i in range(-(-run._n // per) * per, claimed, per):
            if not chunk_within(ds, (i, *zeros), nbytes, size):
                raise RunFileError(f"{where}: {what} of step {i} is missing from the file (corrupt)")
    run._table_cache = None
    if claimed and run._expert_names is not None and run._version >= 2:
        idx = run._table(claimed)["expert"]
        if idx.min() < -1 or idx.max() >= len(run._expert_names):
            raise RunFileError(f"{where}: a step names an expert that the run does not list")
    rows = {}
    for name, ds in run._checksums.items():  # K × 4 bytes each, read now: a damaged one is refused at open
        if ds.shape[0] < len(kept):
            raise RunFileError(f"{where}: /{schema.CHECKSUMS_GROUP}/{name} holds {ds.shape[0]} of the "
                               f"{len(kept)} rows' checksums (corrupt)")
        rows[name] = np.asarray(ds[: len(kept)], dtype=np.uint32)
    run._checksum_rows = rows
    run._n = claimed
    run._k = len(kept)
    run._kept = kept



def _kept_steps(run: "Run", claimed: int, size: int) -> np.ndarray:
    """The steps (< ``claimed``) whose latents are stored, in row order: every step, or /latent_step's rows
    that are present in every latent dataset, committed, and strictly increasing."""
    if not run._latents:
        return np.zeros(0, np.int64)
    if run._latent_step_ds is None:
        return np.arange(claimed, dtype=np.int64)
    ls = run._latent_step_ds
    rows = min([ls.shape[0], claimed, *(ds.shape[0] for ds in run._latents.values())])
    per = ls.chunks[0] if ls.chunks else None
    for i in range(0, rows, per or max(rows, 1)):
        if per and not chunk_within(ls, (i,), per * ls.dtype.itemsize, size):
            raise RunFileError(f"{run._where}: /{schema.LATENT_STEP_DIM} row {i} is missing from the file (corrupt)")
    values = np.asarray(ls[:rows], dtype=np.int64)
    if values.size and (values[0] < 0 or np.any(np.diff(values) <= 0)):
        raise RunFileError(f"{run._where}: /{schema.LATENT_STEP_DIM} is not a strictly increasing list of steps")
    return values[values < claimed]



def read_trusted_arrays(run: "Run", group: str, rows: int | None = None) -> dict[str, np.ndarray] | None:
    """Every dataset of ``group`` as an array, or None when the group is absent or not plainly stored
    (a link, external or filtered storage, a size beyond the file, a first dimension other than
    ``rows``): a cache that cannot be trusted is a miss, never an answer."""
    g = run._file.get(group)
    if not isinstance(g, h5py.Group):
        return None
    size, out = run._file_size(), {}
    try:
        for name in g:
            check_link(g, name, run._where)
            ds = g[name]
            check_dataset(ds, run._where, size)
            if ds.dtype.kind not in "fiub" or (rows is not None and (ds.ndim == 0 or ds.shape[0] != rows)):
                return None
            out[name] = ds[()]
    except (RunFileError, OSError, KeyError, ValueError, TypeError):
        return None
    return out
