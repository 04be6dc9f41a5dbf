"""Offline recompute from HDF5 against h5py's raw read throughput of the same file (issue 3).

    python benchmarks/bench_offline.py [--steps 40] [--dir /tmp] [--dtype float16] [--threads N] [--repeats 5]

Writes a run of [1, 16, 21, 90, 160] latents (Wan2.2 A14B 720p 81 frames), then, on the same file, cold
(its pages evicted with posix_fadvise before each pass) unless --warm:
raw = h5py reading every step of /latents/x0 (``ds[i]``, nothing else); ours = ``run.metrics("x0")`` from a
fresh ``open_run`` with ``source="latents"`` (read + adjacent-frame reductions, no cache). The raw and ours passes alternate (so a load
that comes and goes on a shared machine hits both alike); median of --repeats each. Prints torch's intra-op
thread count (--threads sets it; default: torch's, i.e. OMP_NUM_THREADS or the core count) and the 1-minute
load average before and after. --breakdown adds where the time goes: the library's read path alone
(``iter_steps``: prefetch thread, no reduction; cold like the others) and the reductions alone
(``adjacent_frame_metrics`` of every step, the steps already in memory).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import h5py
import torch

from latent_probe import open_run
from latent_probe.metrics import adjacent_frame_metrics
from latent_probe.metrics.run_metrics import iter_steps
from latent_probe.store.writer import RunWriter, StepMeta

SHAPE = (1, 16, 21, 90, 160)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--warm", action="store_true", help="keep the file in the page cache (memory-speed reads)")
    ap.add_argument("--breakdown", action="store_true", help="also time the read path and the reductions alone")
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    path = os.path.join(args.dir, "bench_offline.h5")
    w = RunWriter(path, args.dtype, overwrite=True)
    x = torch.randn(SHAPE)
    for i in range(args.steps):
        w.submit(StepMeta(i, 1000 - i, 1 - i / args.steps, i / args.steps, "model", None, 0, 1), {"x0": x * (1 + i)})
    w.close({"complete": True})

    def evict() -> None:
        """Drop the file's pages from the page cache (clean pages; no root needed) for a cold read."""
        if args.warm:
            return
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)

    def raw() -> float:
        evict()
        t0 = time.perf_counter()
        with h5py.File(path, "r") as f:
            ds = f["latents/x0"]
            for i in range(ds.shape[0]):
                ds[i]
        return time.perf_counter() - t0

    def ours() -> float:
        evict()
        t0 = time.perf_counter()
        with open_run(path) as run:
            run.metrics("x0", device=args.device, source="latents")  # the recompute, never sums kept by the run
        return time.perf_counter() - t0

    def read_only() -> float:
        evict()
        t0 = time.perf_counter()
        with open_run(path) as run:
            for _ in iter_steps(run, "x0", args.device):
                pass
        return time.perf_counter() - t0

    def reduce_only() -> float:
        with open_run(path) as run:
            steps = [torch.from_numpy(run.latents("x0")[i]).to(args.device) for i in range(run.num_steps)]
        t0 = time.perf_counter()
        for x in steps:
            adjacent_frame_metrics(x)
        return time.perf_counter() - t0

    def load() -> str:
        with open("/proc/loadavg") as fh:
            return fh.read().split()[0]

    raw(), ours()  # warm the page cache and imports
    load0 = load()
    passes = {"raw": raw, "ours": ours}
    if args.breakdown:
        passes.update(read=read_only, reduce=reduce_only)
    times: dict[str, list[float]] = {k: [] for k in passes}
    for _ in range(args.repeats):
        for k, f in passes.items():
            times[k].append(f())
    r, o = statistics.median(times["raw"]), statistics.median(times["ours"])
    nbytes = os.path.getsize(path)
    cache = "warm page cache" if args.warm else "cold (pages evicted before each pass)"
    print(f"| file ({cache}) | raw h5py read | run.metrics('x0') ({args.device}, {torch.get_num_threads()} threads) "
          f"| ratio |\n| --- | ---: | ---: | ---: |")
    print(f"| {args.steps} steps × {list(SHAPE)} {args.dtype}, {nbytes / 1e6:.0f} MB | {nbytes / r / 1e9:.2f} GB/s "
          f"| {nbytes / o / 1e9:.2f} GB/s | {r / o * 100:.0f}% |")
    if args.breakdown:
        for k, what in (("read", "read path alone (iter_steps, no reduction)"),
                        ("reduce", "reductions alone (steps in memory)")):
            t = statistics.median(times[k])
            print(f"| {what} | | {nbytes / t / 1e9:.2f} GB/s | {r / t * 100:.0f}% |")
    print(f"median of {args.repeats}; 1-minute load average {load0} before, {load()} after")
    os.remove(path)


if __name__ == "__main__":
    main()
