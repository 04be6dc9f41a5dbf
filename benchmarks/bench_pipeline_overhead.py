"""Where the probe's overhead on a tiny CPU pipeline goes (diagnostic for the 'with vs without' ratio).

    python benchmarks/bench_pipeline_overhead.py [--profile]

Runs the tiny two-expert diffusers WanPipeline (12 steps, 17 frames at 64×64, CFG) on the CPU: plain,
with the probe (in memory), with the probe but a writer that does nothing, and with torch limited to one
thread; medians of 7. With --profile, prints the main thread's cProfile top entries of one probed run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from conftest import run_pipe  # noqa: E402

from latent_probe import LatentProbe  # noqa: E402
from latent_probe.store import writer as writer_mod  # noqa: E402
from latent_probe.testing import tiny_wan_pipeline  # noqa: E402


def median_ms(fn, n: int = 7) -> float:
    fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: as imported)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = tiny_wan_pipeline()

    def probed() -> None:
        with LatentProbe(pipe):
            run_pipe(pipe)

    rows = [("plain", median_ms(lambda: run_pipe(pipe))), ("LatentProbe (memory)", median_ms(probed))]
    original = writer_mod.RunWriter._write
    writer_mod.RunWriter._write = lambda self, *a, **k: None
    try:
        rows.append(("LatentProbe, writer does nothing", median_ms(probed)))
    finally:
        writer_mod.RunWriter._write = original
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows.append(("plain, 1 torch thread", median_ms(lambda: run_pipe(pipe))))
    rows.append(("LatentProbe, 1 torch thread", median_ms(probed)))
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__}, {threads} threads, {os.cpu_count()} cores\n")
    print("| run | ms (median of 7) | vs plain |\n| --- | ---: | ---: |")
    for name, ms in rows:
        base = rows[0][1] if "1 torch" not in name else rows[3][1]
        print(f"| {name} | {ms:.1f} | {ms / base:.2f} |")
    if args.profile:
        import cProfile
        import pstats

        cProfile.runctx("probed()", globals(), {"probed": probed}, "/tmp/overhead.prof")
        pstats.Stats("/tmp/overhead.prof").sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
