"""The ``/blocks`` group of a run file: per-step sums of the block probes (``LatentProbe(blocks=...)``).

Every dataset is a float64 table with one row a step, [S, 2 (branch: cond, uncond), B, ...]:

==========  ==========================  ====================================================================
name        shape after [S, 2, B]       holds
==========  ==========================  ====================================================================
sq          [block, F']                 ‖h_f‖² of the block output's frame f (tokens × channels)
dot, dd     [block, F'−1]               h_f·h_{f+1}, ‖h_f − h_{f+1}‖² (adjacent frames)
upd         [block, 2]                  ‖out − in‖², ‖in‖²
change      [block, 2]                  ‖u_s − u_{s−1}‖₁, ‖u_{s−1}‖₁ of the update u = out − in (NaN at first)
mag         []                          MagCache's mean_n ‖r_s,n‖ / ‖r_{s−1},n‖ of the DiT's residual
reach       [block, head, F']           mean share of attention mass at frame distance d (``attention_reach``)
==========  ==========================  ====================================================================

A branch the step did not run (guidance off) is NaN. The root attribute ``block_probe`` (JSON) names the blocks.
Only reading and checking here; the metrics are latent_probe.metrics.blocks.

``/block_hidden`` (``block_steps=``): per branch, the probed blocks' output hidden states at the chosen steps,
``<branch>`` [R, K, B, F', T, D] in the store dtype, one chunk a (row, block); ``<branch>_step`` [R] the step of each
row, ``<branch>_crc`` [R, K] each chunk's checksum (the group's attribute ``checksum`` names the algorithm),
``<branch>_flags`` [R, K] (bit 0: NaN/Inf stored, bit 1: finite values beyond the store dtype, stored as ±inf). A row
counts once its step is committed. :func:`read_hidden` reads one (step, block, branch), checked against its checksum.
"""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np

from . import schema
from .checksum import checksum, checksum_function
from .validate import RunFileError, check_dataset, check_link, chunk_within

__all__ = ["BLOCKS_GROUP", "BRANCHES", "block_info", "read_block_sums", "hidden_steps", "read_hidden"]

BLOCKS_GROUP = schema.BLOCKS_GROUP
BRANCHES = ("cond", "uncond")
_TAIL = {"sq": 2, "dot": 2, "dd": 2, "upd": 2, "change": 2, "mag": 0, "reach": 3}


def block_info(run: Any) -> dict[str, Any] | None:
    """The ``block_probe`` attribute (blocks, block_count, attention_reach, ...) or None for a run without."""
    info = run.attr("block_probe")
    return info if isinstance(info, dict) else None


def read_block_sums(run: Any) -> dict[str, np.ndarray]:
    """name → [S, 2, B, ...] float64 of the committed steps; {} for a run recorded without block probes. Refuses
    (RunFileError) a group whose tables do not fit together or hold fewer rows than the committed steps."""
    f: h5py.File = run.file
    where = getattr(run, "_where", f.filename)
    if BLOCKS_GROUP not in f:
        return {}
    check_link(f, BLOCKS_GROUP, where)
    group = f[BLOCKS_GROUP]
    info = block_info(run)
    if not isinstance(group, h5py.Group) or info is None:
        raise RunFileError(f"{where}: /{BLOCKS_GROUP} is not a group of block sums named by a block_probe attribute")
    blocks = info.get("blocks")
    if not isinstance(blocks, list) or not all(isinstance(b, int) for b in blocks):
        raise RunFileError(f"{where}: the block_probe attribute names no block list")
    n = run.num_steps
    size = f.id.get_filesize()
    out: dict[str, np.ndarray] = {}
    lead: set[tuple[int, ...]] = set()
    for name in group:
        check_link(group, name, where)
        ds = group[name]
        check_dataset(ds, where, size, chunked_rows=True)
        tail = _TAIL.get(name)
        if tail is None or ds.dtype != np.float64 or ds.ndim != 3 + tail or ds.shape[1] != 2:
            raise RunFileError(f"{where}: {ds.name} is not a float64 [S, 2, B, ...] table of block sums")
        if tail and ds.shape[3] != len(blocks):
            raise RunFileError(f"{where}: {ds.name} holds {ds.shape[3]} blocks, the run probed {len(blocks)}")
        if ds.shape[0] < n:
            raise RunFileError(f"{where}: {ds.name} holds {ds.shape[0]} steps of the {n} committed")
        lead.add(ds.shape[1:3])
        out[name] = ds[:n]
    if len(lead) > 1:
        raise RunFileError(f"{where}: the block sums disagree on branches and batch")
    pair = [k for k in ("sq", "dot", "dd") if k in out]
    if pair and (len(pair) != 3 or out["dot"].shape[-1] != out["sq"].shape[-1] - 1
                 or out["dd"].shape != out["dot"].shape):
        raise RunFileError(f"{where}: /{BLOCKS_GROUP} sq, dot, dd are not [.., F'], [.., F'−1], [.., F'−1]")
    return out


def _hidden_tables(run: Any, branch: str) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """(data dataset, steps [R], checksums [R, K], flags [R, K]) of one branch's committed rows; refuses
    (RunFileError) tables that do not fit together."""
    f: h5py.File = run.file
    where = getattr(run, "_where", f.filename)
    if branch not in schema.HIDDEN_BRANCHES:
        raise ValueError(f"branch={branch!r}: give one of {schema.HIDDEN_BRANCHES}")
    if schema.HIDDEN_GROUP not in f:
        raise KeyError("this run stored no block hidden states (LatentProbe(blocks=..., block_steps=...))")
    check_link(f, schema.HIDDEN_GROUP, where)
    group = f[schema.HIDDEN_GROUP]
    info = block_info(run)
    if not isinstance(group, h5py.Group) or info is None or not isinstance(info.get("blocks"), list):
        raise RunFileError(f"{where}: /{schema.HIDDEN_GROUP} is not block hidden states named by a block_probe attribute")
    size = f.id.get_filesize()
    names = {k: f"{branch}{'' if k == 'data' else '_' + k}" for k in ("data", "step", "crc", "flags")}
    for name in names.values():
        if name not in group:
            raise RunFileError(f"{where}: /{schema.HIDDEN_GROUP}/{name} is missing")
        check_link(group, name, where)
    data, step, crc, flags = (group[names[k]] for k in ("data", "step", "crc", "flags"))
    for ds in (data, step, crc, flags):
        check_dataset(ds, where, size, chunked_rows=True)
    k = len(info["blocks"])
    if (data.ndim != 6 or data.dtype.kind != "f" or data.dtype.itemsize not in (2, 4) or data.shape[1] != k
            or data.chunks != (1, 1, *data.shape[2:])):
        raise RunFileError(f"{where}: {data.name} is not [R, {k} blocks, B, F', T, D] stored one (row, block) a chunk")
    if step.ndim != 1 or step.dtype.kind not in "iu" or crc.dtype != np.uint32 or crc.shape[1:] != (k,) \
            or flags.dtype != np.uint8 or flags.shape[1:] != (k,):
        raise RunFileError(f"{where}: the row tables of {data.name} are not [R] steps, [R, {k}] uint32, [R, {k}] uint8")
    rows = min(data.shape[0], step.shape[0], crc.shape[0], flags.shape[0])
    steps = np.asarray(step[:rows], np.int64)
    committed = int(np.searchsorted(steps, run.num_steps))  # rows of steps the file counts as committed
    steps = steps[:committed]
    if len(steps) > 1 and not (np.diff(steps) > 0).all() or (len(steps) and steps[0] < 0):
        raise RunFileError(f"{where}: {step.name} is not strictly increasing step numbers")
    return data, steps, np.asarray(crc[:committed]), np.asarray(flags[:committed])


def hidden_steps(run: Any, branch: str = "cond") -> np.ndarray:
    """[R] the committed steps whose block hidden states of ``branch`` are stored."""
    return _hidden_tables(run, branch)[1]


def read_hidden(run: Any, step: int, position: int, branch: str = "cond", verify: bool = True) -> np.ndarray:
    """The stored hidden states [B, F', T, D] of the ``position``-th probed block at ``step`` (one chunk read);
    checked against the checksum written with it when ``verify`` (and ``run.verify``). KeyError for a step or branch
    not stored; RunFileError for a chunk missing or changed."""
    data, steps, crcs, _ = _hidden_tables(run, branch)
    where = getattr(run, "_where", run.file.filename)
    hit = np.flatnonzero(steps == int(step))
    if not len(hit):
        raise KeyError(f"no block hidden states of branch {branch!r} at step {step}; stored steps: {steps.tolist()}")
    row = int(hit[0])
    nbytes = int(np.prod(data.shape[2:])) * data.dtype.itemsize
    if not chunk_within(data, (row, position, 0, 0, 0, 0), nbytes, run.file.id.get_filesize()):
        raise RunFileError(f"{where}: block hidden states ({branch}) at step {step} are missing from the file (corrupt)")
    arr = data[row, position]
    if verify and getattr(run, "verify", True):
        algorithm = run.file[schema.HIDDEN_GROUP].attrs.get("checksum")
        algorithm = algorithm.decode() if isinstance(algorithm, bytes) else algorithm
        if not isinstance(algorithm, str) or checksum_function(algorithm) is None:
            raise RunFileError(f"{where}: /{schema.HIDDEN_GROUP} records {algorithm!r} checksums, which this "
                               "installation cannot compute (pip install google-crc32c), or read with verify=False")
        if checksum(arr, algorithm) != int(crcs[row, position]):
            raise RunFileError(f"{where}: block hidden states ({branch}) of block position {position} at step {step} "
                               f"do not match the {algorithm} checksum written with them: the stored data changed "
                               "after they were written (verify=False reads them anyway)")
    return arr
