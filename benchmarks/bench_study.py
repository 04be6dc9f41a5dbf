"""Statistics across runs at scale (issue 11 items 4-5): Dask recompute of many files, aggregation of many runs.

    python benchmarks/bench_study.py [--files 200] [--agg 1000] [--workers 1 2 4] [--dir /tmp/lp_bench_study]

Runs are written through the probe (``LatentProbe`` on a two-expert analytic denoiser and a real diffusers
flow UniPC scheduler, as in ``latent_probe.demo``): 20 steps, x̂₀ only, latents [1, 16, 5, 8, 8] float16
(tiny: the per-file cost is opening, validating, reducing 20 steps and writing the cache, not reading data).

1. Recompute ``--files`` files without a cache: a plain loop in this process (``workers=0``, torch set to one
   thread like each worker: on a busy 2-core machine two-thread torch operations stall), then a Dask
   LocalCluster of 1, 2, 4 worker processes (one thread each), each on its own fresh copy of the files;
   cluster start-up is timed apart. Then the same again from the caches just written (nothing recomputed).
   Results are checked equal to the plain loop's bit for bit.
2. Aggregation of ``--agg`` runs with tiny latents and cached metrics (metrics-only files do not exist yet):
   ``open_runs`` from the caches (plain loop, and Dask), the Dataset, curves with CIs (2,000 resamples), phase
   table, paired difference, ranking, the tidy frame and the suite dashboard.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
import zlib

import numpy as np
import torch


def write_run(path: str, steps: int, seed: int, prompt: str, trunc: str) -> None:
    from diffusers import UniPCMultistepScheduler

    from latent_probe import LatentProbe
    from latent_probe.demo import AnalyticDenoiser, moving_pattern_video

    clean = moving_pattern_video(frames=5, height=8, width=8, seed=zlib.crc32(prompt.encode()) % 1000)
    error = 0.8 if trunc == "none" else 1.2
    hi = AnalyticDenoiser(clean, error_scale=error, seed=seed + 1)
    lo = AnalyticDenoiser(clean, error_scale=0.5 * error, seed=seed + 1)
    sch = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0,
                                  num_train_timesteps=1000)
    sch.set_timesteps(steps)
    x = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed + 2))
    attrs = {"study": "bench", "job_id": f"{prompt}-s{seed}-{trunc}", "prompt_id": prompt, "prompt": f"prompt {prompt}",
             "seed": seed, "setting_truncation": trunc, "setting_steps": steps}
    with LatentProbe(({"high_noise": hi, "low_noise": lo}, sch), path, capture=("x0",), attrs=attrs,
                     overwrite=True), torch.no_grad():
        for t in sch.timesteps:
            v = (hi if t >= 900 else lo)(x, t.expand(1))
            x = sch.step(v, t, x, return_dict=False)[0]


def make_files(folder: str, n: int, steps: int) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    prompts = max(1, n // 20)
    out = []
    for i in range(n):
        p, rest = divmod(i, 20)
        seed, k = divmod(rest, 2)
        trunc = ("none", "keep3")[k]
        path = os.path.join(folder, f"p{p:03d}-s{seed}-{trunc}.h5")
        if not os.path.exists(path):
            write_run(path, steps, seed, f"p{p % prompts:03d}", trunc)
        out.append(path)
    return out


def fresh_copy(files: list[str], folder: str) -> list[str]:
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    return [shutil.copy(f, os.path.join(folder, os.path.basename(f))) for f in files]


def same(a: list, b: list) -> bool:
    return all(np.array_equal(x.l2, y.l2, equal_nan=True) and np.array_equal(x.cos_mean, y.cos_mean, equal_nan=True)
               for x, y in zip(a, b))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--agg", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--dir", default="/tmp/lp_bench_study")
    ap.add_argument("--skip-agg", action="store_true")
    ap.add_argument("--skip-recompute", action="store_true")
    args = ap.parse_args()

    from latent_probe.study.collection import open_runs
    from latent_probe.study.recompute import local_client, recompute

    torch.set_num_threads(1)  # as in each Dask worker: N processes × 1 thread against 1 process × 1 thread
    print(f"cpus {os.cpu_count()}, torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}")
    t0 = time.perf_counter()
    base = make_files(os.path.join(args.dir, "base"), args.files, args.steps)
    print(f"wrote {len(base)} files in {time.perf_counter() - t0:.1f} s ({os.path.getsize(base[0]) / 1e3:.0f} kB each)")

    ref = None
    for variant in ([] if args.skip_recompute else [0, *args.workers]):
        files = fresh_copy(base, os.path.join(args.dir, f"w{variant}"))
        if variant == 0:
            start = 0.0
            t = time.perf_counter()
            first = recompute(files, workers=0)
            compute = time.perf_counter() - t
            t = time.perf_counter()
            second = recompute(files, workers=0)
            cached = time.perf_counter() - t
        else:
            t = time.perf_counter()
            with local_client(variant, processes=True) as client:
                start = time.perf_counter() - t
                t = time.perf_counter()
                first = recompute(files, client=client)
                compute = time.perf_counter() - t
                t = time.perf_counter()
                second = recompute(files, client=client)
                cached = time.perf_counter() - t
        assert all(r.computed for r in first) and not any(r.computed for r in second), variant
        ref = first if ref is None else ref
        ok = same(first, ref) and same(second, ref)
        name = "plain loop" if variant == 0 else f"Dask {variant} worker{'s' if variant > 1 else ''}"
        print(f"{name:>16} (load {os.getloadavg()[0]:4.1f}): start-up {start:5.1f} s | recompute {compute:6.2f} s "
              f"({len(files) / compute:6.1f} files/s)"
              f" | from cache {cached:6.2f} s ({len(files) / cached:6.1f} files/s) | equal to the loop: {ok}",
              flush=True)

    if args.skip_agg:
        return
    t0 = time.perf_counter()
    agg = make_files(os.path.join(args.dir, "agg"), args.agg, args.steps)
    print(f"wrote {len(agg)} files in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    recompute(agg, workers=0)  # caches (no-op when current)
    print(f"caches ready in {time.perf_counter() - t0:.1f} s")
    from latent_probe.views.suite import suite_figures, suite_stats, write_suite_dashboard

    t = time.perf_counter()
    rs = open_runs(agg, workers=0)
    print(f"  open_runs, plain loop (read {len(agg)} caches)          {time.perf_counter() - t:7.2f} s "
          f"(load {os.getloadavg()[0]:.1f})", flush=True)
    for n in args.workers:
        t = time.perf_counter()
        with local_client(n) as client:
            start = time.perf_counter() - t
            t = time.perf_counter()
            rs2 = open_runs(agg, client=client)
            took = time.perf_counter() - t
        assert np.array_equal(rs2.dataset["l2"].values, rs.dataset["l2"].values, equal_nan=True)
        print(f"  open_runs, Dask {n} worker(s) (start-up {start:4.1f} s apart) {took:7.2f} s "
              f"(load {os.getloadavg()[0]:.1f})", flush=True)
    times: dict[str, list[float]] = {}
    for _ in range(3):
        rs = type(rs)(rs.records, rs.skipped, rs.space)  # a fresh RunSet: nothing cached
        t = time.perf_counter()
        ds = rs.dataset
        times.setdefault("Dataset (run × step × pair)", []).append(time.perf_counter() - t)
        t = time.perf_counter()
        rs.curves("l2_mean", on="sigma")
        times.setdefault("curves on σ, 2 groups, 2,000 resamples", []).append(time.perf_counter() - t)
        t = time.perf_counter()
        rs.phase_table("l2_mean")
        times.setdefault("phase table with CIs", []).append(time.perf_counter() - t)
        t = time.perf_counter()
        rs.paired_difference("truncation", "keep3", "none")
        times.setdefault("paired difference (500 pairs) with CIs", []).append(time.perf_counter() - t)
        t = time.perf_counter()
        rs.rank_prompts("l2_mean")
        times.setdefault("prompt ranking", []).append(time.perf_counter() - t)
        t = time.perf_counter()
        rs.to_dataframe()
        times.setdefault("tidy pandas frame", []).append(time.perf_counter() - t)
        t = time.perf_counter()
        st = suite_stats(rs)
        figs = suite_figures(rs, st)
        write_suite_dashboard(rs, os.path.join(args.dir, "suite.html"), stats=st, figures=figs)
        times.setdefault("suite dashboard (all statistics, figures, HTML)", []).append(time.perf_counter() - t)
    print(f"aggregation of {len(agg)} runs ({ds.sizes['step']} steps, {ds.sizes['pair']} pairs), median of 3 "
          f"(load {os.getloadavg()[0]:.1f}):")
    for k, v in times.items():
        print(f"  {k:52s} {statistics.median(v):7.2f} s")
    print(f"dashboard: {os.path.getsize(os.path.join(args.dir, 'suite.html')) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
