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
"""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np

from . import schema
from .validate import RunFileError, check_dataset, check_link

__all__ = ["BLOCKS_GROUP", "BRANCHES", "block_info", "read_block_sums"]

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
