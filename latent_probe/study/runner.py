"""Run a suite: one ``LatentProbe`` run file per job, resumable, data parallel (or all ranks together) under torchrun.

``run_study(suite, generate, target, out_dir)`` records job ``j`` into ``<out_dir>/runs/<j.id>.h5`` with
``with LatentProbe(target, path, attrs=j.attrs(name), overwrite=True, intervene=...): generate(j)``. Which jobs
are done is read from the run files themselves (``job_status``): complete files are skipped and never
opened for writing; missing, incomplete or unreadable ones are redone.

Parallel modes (``WORLD_SIZE`` > 1): ``"data"`` — rank r runs ``pending[r::N]`` of the pending list rank 0
computed and shared (one model per process; each rank writes its own files); ``"group"`` — every rank runs
every pending job together (one generation across ranks, e.g. Wan2.2 FSDP / Ulysses); the probe records on
rank 0 only. ``shard=(i, n)`` keeps jobs whose index is i mod n, for separate launches on one folder.
"""

from __future__ import annotations

import glob
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

from .distributed import Coordinator, Ranks, coordinator
from .jobs import Job, StudyError, Suite, parse_truncation
from .manifest import check_same_suite, read_manifest, write_manifest

__all__ = ["run_study", "plan_study", "job_status", "run_path", "JobStatus", "StudyResult", "truncation_of",
           "MODES"]

MODES = ("data", "group")


@dataclass(frozen=True)
class JobStatus:
    """``state``: complete, missing, incomplete, unreadable or busy (a live process is recording it)."""

    state: str
    detail: str = ""

    @property
    def done(self) -> bool:
        return self.state == "complete"


@dataclass
class StudyResult:
    """What this process did (job ids); ``complete``/``total`` are the whole suite's, as rank 0 saw it last."""

    out_dir: str
    rank: int = 0
    world_size: int = 1
    done: list[str] = field(default_factory=list)      # recorded by this process, complete
    skipped: list[str] = field(default_factory=list)   # complete before (rank 0 only)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (job id, one-line error)
    busy: list[str] = field(default_factory=list)      # being recorded by another live process: left alone
    complete: int = 0
    total: int = 0

    @property
    def ok(self) -> bool:
        """No job failed here, and (on rank 0) every job of the suite is complete."""
        return not self.failed and (self.rank != 0 or self.complete == self.total)


def run_path(out_dir: str | os.PathLike, job_id: str) -> str:
    """Where a job's run file lives: ``<out_dir>/runs/<job_id>.h5``."""
    return os.path.join(os.fspath(out_dir), "runs", f"{job_id}.h5")


def job_status(path: str, job_id: str | None = None, outputs_dir: str | None = None) -> JobStatus:
    """Read a job's state from its run file (``open_run``); with ``outputs_dir`` (a study whose jobs write
    ``outputs/<job id>.safetensors``, see ``outputs.py``) a complete run file also needs its sidecar to read back
    whole and be the job's: a complete run without one was killed before its sidecar was in place, recorded
    before job outputs existed, or lost it."""
    from ..store.reader import RunFileError, open_run
    from .outputs import OUTPUTS_DIR, outputs_status

    if not os.path.exists(path):
        return JobStatus("missing")
    try:
        with open_run(path) as run:
            if run.recording:
                return JobStatus("busy", "being recorded by a live process")
            if job_id is not None and run.attrs.get("job_id") != job_id:
                return JobStatus("unreadable", f"the file belongs to job {run.attrs.get('job_id')!r}")
            if not run.complete:
                return JobStatus("incomplete", f"{run.num_steps} steps" + (f"; {run.error}" if run.error else ""))
    except (RunFileError, OSError) as exc:
        return JobStatus("unreadable", (str(exc).splitlines() or [""])[0])
    if outputs_dir is not None and job_id is not None:
        why = outputs_status(outputs_dir, job_id)
        if why is not None:
            return JobStatus("incomplete", f"run complete, its {OUTPUTS_DIR}/ sidecar not: {why.split(': ', 1)[-1]}")
    return JobStatus("complete")


def truncation_of(job: Job) -> Any:
    """The default ``intervene``: a ``FrameTruncation`` from the job's ``truncation`` setting (or None)."""
    value = job.settings.get("truncation")
    args = None if value is None else parse_truncation(str(value))
    if args is None:
        return None
    from ..interventions import FrameTruncation

    return FrameTruncation(keep=args["keep"], until=args["until"])


def _select(jobs: list[Job], shard: tuple[int, int] | None) -> list[Job]:
    if shard is None:
        return jobs
    i, n = shard
    if n < 1 or not 0 <= i < n:
        raise StudyError(f"shard {i}/{n}: expected I/N with 0 <= I < N")
    return [j for j in jobs if j.index % n == i]


def plan_study(suite: Suite, out_dir: str | os.PathLike, shard: tuple[int, int] | None = None,
               write: bool = True, extra: dict[str, Any] | None = None,
               job_outputs: bool = False) -> list[tuple[Job, JobStatus]]:
    """Check the folder holds this suite, write the manifest (``write``) and read every job's status
    (``job_outputs``: a job is complete only with its ``outputs/`` sidecar, see ``job_status``)."""
    out_dir = os.fspath(out_dir)
    jobs = _select(suite.jobs(), shard)
    check_same_suite(read_manifest(out_dir), suite, out_dir)
    if write:
        os.makedirs(os.path.join(out_dir, "runs"), exist_ok=True)
        write_manifest(out_dir, suite, suite.jobs(), extra)
    return [(j, job_status(run_path(out_dir, j.id), j.id, out_dir if job_outputs else None)) for j in jobs]


STALE_PARTIAL_S = 60.0  # where liveness locks do not exist: a partial file younger than this may be a live writer's


def _drop_stale_partials(path: str) -> None:
    """A killed job may leave ``.<name>.<id>.partial.h5`` beside its path (before its first step): remove those
    no process holds the writer lock of (the writer takes it when it creates the file, before HDF5 opens it, so a
    live writer's is never removed, however young). Called when a job is redone and when it is found complete.
    Where liveness locks do not exist (``writer_alive`` is None), only those older than ``STALE_PARTIAL_S``."""
    from ..store.liveness import writer_alive

    folder, name = os.path.split(path)
    for partial in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}.*.partial.h5")):
        alive = writer_alive(partial)
        if alive is None:
            try:
                alive = time.time() - os.stat(partial).st_mtime < STALE_PARTIAL_S
            except OSError:
                continue
        if not alive:
            try:
                os.unlink(partial)
            except OSError:
                pass


def _line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run_study(
    suite: Suite,
    generate: Callable[[Job], Any],
    target: Any,
    out_dir: str | os.PathLike,
    *,
    mode: str = "data",
    shard: tuple[int, int] | None = None,
    intervene: Callable[[Job], Any] | None = truncation_of,
    attrs: dict[str, Any] | None = None,
    probe_kwargs: dict[str, Any] | None = None,
    on_error: str = "continue",
    log: Callable[[str], None] | None = print,
    timeout_s: float = 6 * 3600.0,
    dead_after_s: float = 120.0,
    job_outputs: bool = False,
) -> StudyResult:
    """Record every job of ``suite`` not yet complete in ``out_dir``; see the module docstring.

    ``generate(job)`` runs one generation of ``target`` (the probe is already attached); ``intervene(job)``
    gives the job's intervention (default: frame truncation from its ``truncation`` setting); ``attrs`` are
    added to every run file (after the job's own: ``study``, ``job_id``, ``prompt_id``, ``prompt``, ``seed``,
    ``setting_<name>``); ``probe_kwargs`` go to ``LatentProbe`` (``store_dtype``, ``cfg_branches``, ...).
    ``on_error``: ``"continue"`` records a failed job (its file stays incomplete, redone next time) and goes on;
    ``"raise"`` stops. In ``"group"`` mode a failure always stops (the other ranks cannot go on without it).
    ``job_outputs``: ``generate(job)`` writes the job's ``outputs/<job id>.safetensors`` (``outputs.py``) before
    it returns, and a job is complete only with it.
    """
    if mode not in MODES:
        raise StudyError(f"mode {mode!r}: choose data or group")
    if on_error not in ("continue", "raise"):
        raise StudyError(f"on_error {on_error!r}: choose continue or raise")
    out_dir = os.fspath(out_dir)
    ranks = Ranks.from_env()
    _check_process_group(ranks, mode)
    say = log or (lambda text: None)
    result = StudyResult(out_dir, ranks.rank, ranks.world_size)
    coord = coordinator(ranks, timeout_s, dead_after_s)
    try:
        plan = _share_plan(coord, suite, out_dir, shard, ranks, say, result, job_outputs)
        mine = plan if mode == "group" else plan[ranks.rank::ranks.world_size]
        jobs = {j.id: j for j in suite.jobs()}
        for job_id, reason in mine:
            _run_job(jobs[job_id], reason, suite, generate, target, out_dir, mode, ranks, intervene, attrs,
                     probe_kwargs, on_error, say, result, job_outputs)
        coord.barrier()
    except BaseException as exc:
        coord.failed(_line(exc))
        raise
    finally:
        coord.close()
    if ranks.rank == 0:
        statuses = plan_study(suite, out_dir, shard, write=False, job_outputs=job_outputs)
        result.complete, result.total = sum(s.done for _, s in statuses), len(statuses)
        say(f"{result.complete} of {result.total} jobs complete in {out_dir}"
            + ("" if result.complete == result.total else "; run the same command again to redo the others"))
    return result


def _check_process_group(ranks: Ranks, mode: str) -> None:
    import torch.distributed as dist

    group = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if mode == "data" and group:
        raise StudyError("data-parallel studies need no torch.distributed process group (LatentProbe records only "
                         "on rank 0 of one); don't initialise it, or use mode 'group' for one generation across ranks")
    if mode == "group" and ranks.world_size > 1 and not group:
        raise StudyError("mode 'group' runs one generation across all ranks: initialise the model's process group "
                         "first (else every rank would write the same file)")


def _share_plan(coord: Coordinator, suite: Suite, out_dir: str, shard: tuple[int, int] | None, ranks: Ranks,
                say: Callable[[str], None], result: StudyResult, job_outputs: bool = False) -> list[tuple[str, str]]:
    """Rank 0 reads every job's state and writes the manifest; every rank gets its list of (job id, reason)."""
    plan: dict[str, Any] = {"error": None, "pending": []}
    if ranks.rank == 0:
        try:
            statuses = plan_study(suite, out_dir, shard, extra={"world_size": ranks.world_size,
                                                                "shard": list(shard) if shard else None},
                                  job_outputs=job_outputs)
        except Exception as exc:  # noqa: BLE001 - the other ranks wait for this plan: tell them, then stop
            plan["error"] = str(exc) if isinstance(exc, StudyError) else _line(exc)
        else:
            total = len(statuses)
            for n, (job, status) in enumerate(statuses, 1):
                if status.done:
                    _drop_stale_partials(run_path(out_dir, job.id))  # an earlier, killed attempt's
                    result.skipped.append(job.id)
                    say(f"[{n}/{total}] {job.id}  skipped (complete)")
                elif status.state == "busy":
                    result.busy.append(job.id)
                    say(f"[{n}/{total}] {job.id}  left alone ({status.detail})")
                else:
                    reason = status.state + (f": {status.detail}" if status.detail else "")
                    plan["pending"].append((job.id, reason, n, total))
            say(f"{total} jobs: {len(result.skipped)} complete, {len(plan['pending'])} to run"
                + (f" on {ranks.world_size} ranks" if ranks.world_size > 1 else ""))
    plan = coord.share(plan)
    if plan["error"]:
        raise StudyError(plan["error"])
    return [(p[0], (p[1], p[2], p[3])) for p in plan["pending"]]


def _run_job(job: Job, reason: tuple[str, int, int], suite: Suite, generate: Callable[[Job], Any], target: Any,
             out_dir: str, mode: str, ranks: Ranks, intervene: Callable[[Job], Any] | None,
             attrs: dict[str, Any] | None, probe_kwargs: dict[str, Any] | None, on_error: str,
             say: Callable[[str], None], result: StudyResult, job_outputs: bool = False) -> None:
    from ..probe import LatentProbe

    why, n, total = reason
    path = run_path(out_dir, job.id)
    records = mode == "data" or ranks.rank == 0
    quiet = not records  # group mode: only rank 0 reports
    prefix = f"rank {ranks.rank} " if ranks.world_size > 1 and mode == "data" else ""
    what = "done" if why == "missing" else f"redone ({why})"
    if records:
        _drop_stale_partials(path)
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            if not records:
                warnings.filterwarnings("ignore", message="latent_probe: not rank 0")
            probe = LatentProbe(target, path, attrs={**job.attrs(suite.name), **(attrs or {})}, overwrite=True,
                                intervene=intervene(job) if intervene else None, **(probe_kwargs or {}))
            with probe:
                generate(job)
        seen = getattr(probe.capture_state, "steps", 0)
        if records and not seen:  # the probe raises for anything else that goes wrong
            raise StudyError("no step was recorded: did generate(job) run the target's scheduler?")
        if records and job_outputs:
            from .outputs import outputs_status

            why = outputs_status(out_dir, job.id)
            if why is not None:
                raise StudyError(f"generate(job) left no job outputs: {why}")
    except Exception as exc:
        seconds = time.perf_counter() - start
        result.failed.append((job.id, _line(exc)))
        if not quiet:
            say(f"{prefix}[{n}/{total}] {job.id}  FAILED after {seconds:.1f} s: {_line(exc)}")
        if on_error == "raise" or mode == "group":
            raise
        return
    seconds = time.perf_counter() - start
    if records:
        _drop_stale_partials(path)  # a killed attempt's that appeared meanwhile (another study on this folder)
        result.done.append(job.id)
    if not quiet:
        say(f"{prefix}[{n}/{total}] {job.id}  {seconds:.1f} s  {what}")
