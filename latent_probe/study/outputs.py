"""A job's outputs beside its run file: ``<out>/outputs/<job id>.safetensors`` (what a speed–quality frontier needs).

One safetensors file a job: the tensor ``final_latent`` (what the pipeline returned, its own dtype and shape,
e.g. [1, 16, F, h, w] float32 for the organism: bit for bit, so a clip can be scored without generating it
again) and the metadata ``format`` = ``latent_probe.job_outputs``, ``version``, ``job_id`` and ``record`` (JSON:
the job's costs — ``study.timing.GenerationCost`` — and what its method did).

Why a sidecar and not a dataset in the run file: the run file is the probe's, and the probe publishes it,
complete, as soon as the pipeline returns (before the job can know its time); adding to it afterwards would need
the writer reopened, and a kill in between would leave a complete run without outputs anyway. So the sidecar is
its own file, written by the job right after the generation, still inside the probe's block:

* written to a temporary name in the same folder, flushed, fsync'd, then ``os.replace``'d onto its path: a
  reader sees no file or the whole file, never half of one (a kill leaves at most a ``.<job id>.*.tmp``, which
  counts for nothing);
* a job is complete only when its run file is complete *and* its sidecar reads back whole and is the job's
  (``outputs_status``; ``runner.job_status(..., outputs_dir)``): a job killed after its run file was published
  but before its sidecar was renamed into place, or whose sidecar was lost or damaged, is redone.

Kept separate from the HDF5 schema, the latent costs the run file nothing and studies without a frontier
(other backends) are unchanged.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any

from .jobs import StudyError

__all__ = ["OUTPUTS_DIR", "FORMAT", "JobOutputs", "outputs_path", "write_job_outputs", "read_job_outputs",
           "outputs_status"]

OUTPUTS_DIR = "outputs"
FORMAT = "latent_probe.job_outputs"
VERSION = 1
LATENT = "final_latent"


@dataclass(frozen=True)
class JobOutputs:
    """A job's sidecar as read: ``record`` (costs and method, JSON) and ``final_latent`` (a CPU tensor, or None
    when read without it)."""

    job_id: str
    record: dict[str, Any]
    final_latent: Any = None


def outputs_path(out_dir: str | os.PathLike, job_id: str) -> str:
    """``<out_dir>/outputs/<job_id>.safetensors``."""
    return os.path.join(os.fspath(out_dir), OUTPUTS_DIR, f"{job_id}.safetensors")


def write_job_outputs(out_dir: str | os.PathLike, job_id: str, final_latent: Any, record: dict[str, Any]) -> str:
    """Write a job's sidecar atomically (temporary file, fsync, ``os.replace``); returns its path."""
    import torch
    from safetensors.torch import save

    path = outputs_path(out_dir, job_id)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    if not isinstance(final_latent, torch.Tensor):
        raise StudyError(f"job {job_id}: the final latent is not a tensor")
    latent = final_latent.detach().to("cpu").contiguous()
    meta = {"format": FORMAT, "version": str(VERSION), "job_id": job_id,
            "record": json.dumps(record, allow_nan=True, sort_keys=True)}
    data = save({LATENT: latent}, metadata=meta)
    return write_atomic(path, data, prefix=f".{job_id}.")


def write_atomic(path: str, data: bytes, prefix: str) -> str:
    """Write ``data`` to ``path`` atomically: a temporary file ``<prefix>*.tmp`` in the same folder, flushed and
    fsync'd, ``os.replace``'d onto ``path``, the folder fsync'd (removed again when anything fails)."""
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)
    return path


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_job_outputs(out_dir: str | os.PathLike, job_id: str, latent: bool = True) -> JobOutputs:
    """A job's sidecar (``StudyError``, one line, when it is missing, damaged or another job's)."""
    from safetensors import SafetensorError, safe_open

    path = outputs_path(out_dir, job_id)
    if not os.path.exists(path):
        raise StudyError(f"{path}: missing (no recorded time or final latent)")
    try:
        with safe_open(path, "pt") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != FORMAT:
                raise StudyError(f"{path}: not a latent_probe job outputs file")
            if meta.get("job_id") != job_id:
                raise StudyError(f"{path}: holds job {meta.get('job_id')!r}, not {job_id!r}")
            if LATENT not in fh.keys():
                raise StudyError(f"{path}: no {LATENT} tensor")
            record = json.loads(meta.get("record", ""))
            if not isinstance(record, dict):
                raise StudyError(f"{path}: its record is not a JSON object")
            z = fh.get_tensor(LATENT).clone() if latent else None   # a copy: not a view of the mapped file
    except (SafetensorError, OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StudyError(f"{path}: unreadable ({first})") from None
    return JobOutputs(job_id, record, z)


def outputs_status(out_dir: str | os.PathLike, job_id: str) -> str | None:
    """None when the job's sidecar reads back whole and is the job's; else why not (one line)."""
    try:
        read_job_outputs(out_dir, job_id, latent=False)
    except StudyError as exc:
        return str(exc)
    return None
