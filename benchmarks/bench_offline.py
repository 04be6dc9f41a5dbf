"""Offline recompute from HDF5 against h5py's raw read throughput of the same file (issue 3).

    python benchmarks/bench_offline.py [--steps 40] [--dir /tmp] [--dtype float16]

Writes a run of [1, 16, 21, 90, 160] latents (Wan2.2 A14B 720p 81 frames), then, on the same file, cold
(its pages evicted with posix_fadvise before each pass) unless --warm:
raw = h5py reading every step of /latents/x0 (``ds[i]``, nothing else); ours = ``run.metrics("x0")`` from a
fresh ``open_run`` (read + adjacent-frame reductions, no cache). Median of --repeats.
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
from latent_probe.store.writer import RunWriter, StepMeta

SHAPE = (1, 16, 21, 90, 160)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--warm", action="store_true", help="keep the file in the page cache (memory-speed reads)")
    args = ap.parse_args()
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
            run.metrics("x0", device=args.device)
        return time.perf_counter() - t0

    raw(), ours()  # warm the page cache and imports
    r = statistics.median(raw() for _ in range(args.repeats))
    o = statistics.median(ours() for _ in range(args.repeats))
    nbytes = os.path.getsize(path)
    cache = "warm page cache" if args.warm else "cold (pages evicted before each pass)"
    print(f"| file ({cache}) | raw h5py read | run.metrics('x0') ({args.device}) | ratio |\n| --- | ---: | ---: | ---: |")
    print(f"| {args.steps} steps × {list(SHAPE)} {args.dtype}, {nbytes / 1e6:.0f} MB | {nbytes / r / 1e9:.2f} GB/s "
          f"| {nbytes / o / 1e9:.2f} GB/s | {r / o * 100:.0f}% |")
    os.remove(path)


if __name__ == "__main__":
    main()
