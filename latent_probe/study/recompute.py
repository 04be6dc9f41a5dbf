"""Per-step metrics of many run files: threads of this process by default, ``dask.distributed`` on request.

Each task is :func:`~latent_probe.study.records.read_run_metrics`: it opens its file writable, so
``run.metrics`` reuses a current ``/metrics`` cache (a file whose cache is current is not recomputed) and
stores what it computes; it returns per-step metrics ([S, F−1] float64 arrays), never latents.

Where it runs: by default (``workers=None``) in this process, on a pool of :func:`default_workers` threads
(h5py releases the GIL while it reads, torch while it reduces), so nothing is started and the calling
script is never imported again. ``workers=0`` reads the files one after another in this process.
Dask only when asked: ``workers=N`` (N ≥ 1) starts a ``LocalCluster`` of N worker processes, one thread each
(torch set to one thread in each), ``memory_limit`` per worker; ``scheduler="tcp://host:8786"`` uses a
running cluster (its workers must see the same paths); ``client=`` an existing ``distributed.Client``.
Worker processes start by importing the calling script's ``__main__`` module again (Python's "spawn"/
"forkserver" start methods): a script that asks for them must keep its work under
``if __name__ == "__main__":``.
"""

from __future__ import annotations

import glob
import os
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterable, Iterator, Sequence

from .records import RunRecord, Skipped, StudyError, one_line, read_run_metrics

__all__ = ["expand_paths", "iter_recompute", "recompute", "local_client", "DEFAULT_MEMORY_LIMIT", "default_workers"]

DEFAULT_MEMORY_LIMIT = "2GiB"  # per worker: a task holds a few steps of one run (a 720p float32 step is 19 MB)
Result = RunRecord | Skipped


def default_workers() -> int:
    """Threads of the default in-process pool (and processes of ``local_client(None)``): the CPU count, at
    most 4."""
    return max(1, min(4, os.cpu_count() or 1))


def _inner_studies(folder: str) -> list[str]:
    """The study folders (a ``manifest.json`` each) below ``folder`` when ``folder`` is itself a study's, else []."""
    from .manifest import MANIFEST

    if not os.path.isfile(os.path.join(folder, MANIFEST)):
        return []
    found = glob.glob(os.path.join(glob.escape(folder), "**", MANIFEST), recursive=True)
    return [os.path.dirname(m) for m in found if os.path.normpath(os.path.dirname(m)) != os.path.normpath(folder)]


def expand_paths(items: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Run files named by ``items``: paths, glob patterns (``**`` recursive) or folders (every ``*.h5`` below
    them, hidden names such as a recorder's ``.*.partial.h5`` left out; below a study's folder — one with a
    ``manifest.json`` — not those of another study folder inside it, such as its MagCache calibration clips in
    ``calibration/``), in order, each once. A pattern or folder that names no file raises StudyError; a path that
    does not exist is kept (its task reports it)."""
    if isinstance(items, (str, os.PathLike)):
        items = [items]
    out: list[str] = []
    for item in items:
        item = os.fspath(item)
        if os.path.isdir(item):
            inner = _inner_studies(item)
            found = sorted(p for p in glob.glob(os.path.join(glob.escape(item), "**", "*.h5"), recursive=True)
                           if not os.path.basename(p).startswith(".")
                           and not any(p.startswith(folder + os.sep) for folder in inner))
            if not found:
                raise StudyError(f"{item}: no .h5 file in this folder")
        elif glob.has_magic(item):
            found = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not found:
                raise StudyError(f"{item}: no file matches")
        else:
            found = [item]
        out.extend(found)
    seen: set[str] = set()
    unique = []
    for p in out:
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _prepare_worker() -> None:
    """One torch thread per worker process, and the library imported before the first file."""
    import torch

    from . import records  # noqa: F401 - imports latent_probe, its metrics accessor and h5py once, up front

    torch.set_num_threads(1)


@contextmanager
def local_client(workers: int | None = None, memory_limit: str | int = DEFAULT_MEMORY_LIMIT,
                 processes: bool = True) -> Iterator[Any]:
    """``with local_client(2) as client:`` a ``distributed.Client`` of a new LocalCluster of ``workers``
    processes (None: :func:`default_workers`), one thread each (torch too), ``memory_limit`` each; both are
    closed on exit."""
    import logging

    from dask.distributed import Client, LocalCluster

    n = default_workers() if workers is None else int(workers)
    if n < 1:
        raise StudyError(f"workers must be at least 1 for a LocalCluster (0: no Dask), got {n}")
    import dask

    # worker-saturation inf: the scheduler hands workers their files up front instead of one at a time after
    # each result (a round trip per file, which a busy machine makes expensive; the tasks are independent);
    # no profiler: its stack-sampling thread (every 10 ms) slowed each task measurably here
    with dask.config.set({"distributed.scheduler.worker-saturation": "inf",
                          "distributed.worker.profile.enabled": False}), \
            LocalCluster(n_workers=n, threads_per_worker=1, processes=processes, memory_limit=memory_limit,
                         dashboard_address=None, silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client:
        if processes:
            client.run(_prepare_worker)
        yield client


def iter_recompute(paths: Sequence[str], *, space: str = "x0", phases: Any = "thirds", cache: bool = True,
                   incomplete: bool = False, workers: int | None = None, scheduler: str | None = None,
                   client: Any = None, memory_limit: str | int = DEFAULT_MEMORY_LIMIT,
                   processes: bool = True) -> Iterator[tuple[int, Result]]:
    """Yield ``(index into paths, RunRecord | Skipped)`` as each file's task finishes (any order).

    ``workers``: None → a pool of :func:`default_workers` threads in this process (no Dask); 0 → a plain loop
    in this process; N ≥ 1 → a Dask LocalCluster of N processes (guard the calling script with
    ``if __name__ == "__main__":``). A task that dies (a worker killed past its memory limit) is reported as
    Skipped with the reason.
    """
    paths = [os.fspath(p) for p in paths]
    kw = dict(space=space, phases=phases, cache=cache, incomplete=incomplete)
    if client is None and scheduler is None:
        if workers is not None and int(workers) < 0:
            raise StudyError(f"workers must be 0 (no Dask, one file after another), N >= 1 (a Dask LocalCluster "
                             f"of N processes) or None (threads of this process), got {workers}")
        if workers == 0 or len(paths) <= 1:
            for i, p in enumerate(paths):
                yield i, read_run_metrics(p, **kw)
            return
        if workers is None:
            yield from _threaded(paths, kw)
            return
    from dask.distributed import Client, as_completed

    with ExitStack() as stack:
        if client is None:
            client = stack.enter_context(Client(scheduler) if scheduler is not None else
                                         local_client(workers, memory_limit, processes))
        futures = client.map(read_run_metrics, paths, pure=False, **kw)
        index = {f.key: i for i, f in enumerate(futures)}
        for batch in as_completed(futures).batches():  # one gather per batch: not a round trip per file
            for fut, result in zip(batch, _gather(client, batch, [paths[index[f.key]] for f in batch])):
                yield index[fut.key], result
            for fut in batch:
                fut.release()


def _threaded(paths: list[str], kw: dict[str, Any]) -> Iterator[tuple[int, Result]]:
    """Each file's task on a pool of :func:`default_workers` threads of this process, as they finish."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    with ThreadPoolExecutor(max_workers=min(default_workers(), len(paths)),
                            thread_name_prefix="latent_probe-metrics") as pool:
        futures = {pool.submit(read_run_metrics, p, **kw): i for i, p in enumerate(paths)}
        try:
            for fut in as_completed(futures):
                yield futures[fut], fut.result()
        finally:
            for fut in futures:
                fut.cancel()


def _gather(client: Any, futures: list, paths: list[str]) -> list[Result]:
    """Results of finished futures; a failed task (a worker lost past its memory limit, ...) is a Skipped."""
    try:
        return list(client.gather(futures))
    except Exception:  # noqa: BLE001 - one of them failed: ask each
        out: list[Result] = []
        for fut, path in zip(futures, paths):
            try:
                out.append(fut.result())
            except Exception as exc:  # noqa: BLE001
                out.append(Skipped(path, f"task failed: {one_line(exc)[:300]}"))
        return out


def recompute(paths: Sequence[str], *, progress: Callable[[Iterable, str, int], Iterable] | None = None,
              **kw: Any) -> list[Result]:
    """Results of every file in the order of ``paths`` (keywords as :func:`iter_recompute`). ``progress``:
    a wrapper such as ``latent_probe.views.progress.progress(iterable, desc, total)`` for a progress bar."""
    paths = [os.fspath(p) for p in paths]
    out: list[Result | None] = [None] * len(paths)
    it: Iterable = iter_recompute(paths, **kw)
    if progress is not None:
        it = progress(it, "run metrics", len(paths))
    for i, result in it:
        out[i] = result
    return [r for r in out if r is not None]
