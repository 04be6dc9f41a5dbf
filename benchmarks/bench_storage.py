"""Storage modes (issue 11 item 6): bytes per run, host time per step on a GPU, aggregation of metrics-only runs.

    python benchmarks/bench_storage.py bytes [--dir /tmp] [--steps 40]
    python benchmarks/bench_storage.py host [--steps 40]             # needs CUDA
    python benchmarks/bench_storage.py aggregate [--runs 1000] [--dir /tmp]

``bytes``: one run of Wan2.2 A14B 720p 81 frames (latent [1, 16, 21, 90, 160]) for each storage mode, written by the
real writer from random tensors (the size does not depend on the values: chunks are uncompressed); prints the file
size. The chosen-steps mode stores ``every:10,last,boundary:1`` with the T2V-A14B switch (26 high-noise steps of 40).

``host``: the probe on a ``(modules, scheduler)`` target with a real flow UniPC scheduler, tensors of that shape on
the GPU, no model (the prediction is a fixed tensor): host seconds of each ``scheduler.step`` call (what the
sampling loop waits for, launches included, no synchronisation) without a probe and with each mode; and the CUDA
time of the online sums alone. Median over the steps of 3 runs after a warm-up run.

``aggregate``: 1,000 metrics-only run files of 40 steps (21 latent frames, the sums of x̂₀), then ``open_runs`` on
them in one process (no Dask) and the per-step Dataset with bootstrap CIs.
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from latent_probe.latent_steps import LatentSteps
from latent_probe.metrics.online import OnlineSums
from latent_probe.store.writer import RunWriter, StepMeta

SHAPE = (1, 16, 21, 90, 160)
FOUR = ("x_t", "pred", "x0", "eps")


def _meta(i: int, steps: int, expert: str = "high") -> StepMeta:
    return StepMeta(i, 1000 * (1 - i / steps), 1 - i / steps, i / steps, expert, 5.0, 0, 2)


def write_run(path: str, steps: int, quantities: tuple[str, ...], dtype: str, selection: str | None = None,
              online: tuple[str, ...] = (), shape: tuple[int, ...] = SHAPE, switch: int = 26) -> int:
    chosen = None if selection is None else LatentSteps.parse(selection).resolve(steps, switch)
    w = RunWriter(path, dtype, overwrite=True, latent_rows=chosen is not None, experts=["high", "low"])
    x = torch.randn(shape)
    sums = OnlineSums(online) if online else None
    for i in range(steps):
        tensors = {q: x for q in quantities}
        s = sums.step({q: x * (1 + 0.01 * i) for q in online}) if sums else None
        kw = {} if chosen is None else {"keep_latents": i in chosen}
        w.submit(_meta(i, steps, "high" if i < switch else "low"), tensors, sums=s,
                 attrs={"latent_shape": list(shape)} if i == 0 else None, **kw)
    w.close({"complete": True})
    return os.path.getsize(path)


def cmd_bytes(args: argparse.Namespace) -> None:
    modes = [
        ("every step, x_t pred x̂₀ ε̂, float16 (default)", FOUR, "float16", None, ()),
        ("every step, x_t pred x̂₀ ε̂, float32", FOUR, "float32", None, ()),
        ("every step, x_t pred (x̂₀ ε̂ derived on read), float16", ("x_t", "pred"), "float16", None, ()),
        ("every step, x_t pred (x̂₀ ε̂ derived on read), float32", ("x_t", "pred"), "float32", None, ()),
        ("every step, x̂₀ only, float16", ("x0",), "float16", None, ()),
        ("chosen steps every:10,last,boundary:1 (7 of 40), four, float16", FOUR, "float16",
         "every:10,last,boundary:1", ()),
        ("chosen steps, x_t pred, float16 + online metrics of four", ("x_t", "pred"), "float16",
         "every:10,last,boundary:1", FOUR),
        ("metrics only: online sums of x̂₀", (), "float16", None, ("x0",)),
        ("metrics only: online sums of x_t pred x̂₀ ε̂", (), "float16", None, FOUR),
    ]
    print(f"| mode ({args.steps} steps, latent {list(SHAPE)}) | bytes | MB | ÷ default |")
    print("| --- | ---: | ---: | ---: |")
    base = None
    for name, quantities, dtype, selection, online in modes:
        path = os.path.join(args.dir, "bench_storage.h5")
        size = write_run(path, args.steps, quantities, dtype, selection, online)
        base = base or size
        print(f"| {name} | {size:,} | {size / 1e6:,.2f} | {size / base:.4f} |", flush=True)
        os.unlink(path)


def cmd_host(args: argparse.Namespace) -> None:
    from diffusers import UniPCMultistepScheduler

    from latent_probe import LatentProbe

    assert torch.cuda.is_available(), "host needs CUDA"
    dev = torch.device("cuda")
    torch.manual_seed(0)
    x0 = torch.randn(SHAPE, device=dev)
    pred = torch.randn(SHAPE, device=dev)
    model = torch.nn.Identity()
    folder = tempfile.mkdtemp(dir=args.dir)

    def one_run(probe_kw: dict | None) -> list[float]:
        sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
        sched.set_timesteps(args.steps)
        x = x0.clone()
        times = []
        path = os.path.join(folder, "host.h5")
        ctx = LatentProbe((model, sched), path, overwrite=True, **probe_kw) if probe_kw is not None else None
        if ctx is not None:
            ctx.__enter__()
        try:
            for t in sched.timesteps:
                model(x)  # the hooks see an expert call
                t0 = time.perf_counter()
                x = sched.step(pred, t, x, return_dict=False)[0]
                times.append(time.perf_counter() - t0)
            torch.cuda.synchronize()
        finally:
            if ctx is not None:
                ctx.__exit__(None, None, None)
        return times

    modes = [("no probe", None),
             ("metrics only: online x̂₀", dict(capture=(), metrics=("x0",))),
             ("metrics only: online x_t pred x̂₀ ε̂", dict(capture=(), metrics=FOUR)),
             ("chosen steps every:10,last (x_t pred, float16) + online four",
              dict(capture=("x_t", "pred"), metrics=FOUR, latent_steps="every:10,last")),
             ("every step, four quantities, float16 (default)", dict())]
    print("| mode | host ms per scheduler.step, median (p90) | added vs no probe |")
    print("| --- | ---: | ---: |")
    base = None
    for name, kw in modes:
        one_run(kw)  # warm-up: Triton compile, pinned buffers
        times = [t for _ in range(3) for t in one_run(kw)[1:]]
        med, p90 = statistics.median(times) * 1e3, float(np.percentile(times, 90)) * 1e3
        base = med if base is None else base
        print(f"| {name} | {med:.3f} ({p90:.3f}) | {med - base:+.3f} |", flush=True)
    # the online sums alone: host time of the call and CUDA time
    on = OnlineSums(("x0",))
    for _ in range(5):
        on.step({"x0": x0})
    torch.cuda.synchronize()
    host, dev_ms = [], []
    for _ in range(50):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        t0 = time.perf_counter()
        on.step({"x0": x0})
        host.append(time.perf_counter() - t0)
        b.record()
        torch.cuda.synchronize()
        dev_ms.append(a.elapsed_time(b))
    print(f"\nOnlineSums.step, one space ({list(SHAPE)} float32): host {statistics.median(host) * 1e3:.3f} ms, "
          f"CUDA {statistics.median(dev_ms):.3f} ms (median of 50)")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")


def _metrics_only_run(path: str) -> int:
    """A 40-step metrics-only run of 21 latent frames (the sums depend on B and F only)."""
    torch.set_num_threads(1)
    return write_run(path, 40, (), "float16", None, ("x0",), shape=(1, 4, 21, 4, 4))


def cmd_aggregate(args: argparse.Namespace) -> None:
    import xarray  # noqa: F401 - imported apart: its first Dataset imports dask.array where installed (~3 s)
    try:
        import dask.array  # noqa: F401
    except ImportError:
        pass
    from latent_probe import open_runs

    folder = os.path.join(args.dir, "bench_storage_runs")
    os.makedirs(folder, exist_ok=True)
    have = len(glob.glob(os.path.join(folder, "*.h5")))
    t0 = time.perf_counter()
    todo = [os.path.join(folder, f"run{k:04d}.h5") for k in range(have, args.runs)]
    with ProcessPoolExecutor(max(1, min(8, (os.cpu_count() or 2) - 1))) as pool:
        list(pool.map(_metrics_only_run, todo))
    if args.runs > have:
        print(f"wrote {args.runs - have} metrics-only runs in {time.perf_counter() - t0:.1f} s "
              f"({os.path.getsize(os.path.join(folder, 'run0000.h5')):,} bytes each)")
    for label, cache in (("open_runs (plain loop, first)", True), ("open_runs (plain loop, again)", True)):
        t0 = time.perf_counter()
        rs = open_runs(os.path.join(folder, "*.h5"), workers=0, cache=cache)
        t_open = time.perf_counter() - t0
        t0 = time.perf_counter()
        ds = rs.dataset
        t_ds = time.perf_counter() - t0
        t0 = time.perf_counter()
        rs.curves("l2_mean", on="sigma")
        t_curves = time.perf_counter() - t0
        print(f"{label}: {len(rs.records)} runs, {len(rs.skipped)} skipped: open {t_open:.2f} s, Dataset "
              f"{dict(ds.sizes)} {t_ds:.2f} s, curves with CIs {t_curves:.2f} s, total {t_open + t_ds + t_curves:.2f} s")
    print(f"load average: {open('/proc/loadavg').read().split()[:3]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("bytes", "host", "aggregate"))
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--runs", type=int, default=1000)
    args = ap.parse_args()
    {"bytes": cmd_bytes, "host": cmd_host, "aggregate": cmd_aggregate}[args.what](args)


if __name__ == "__main__":
    sys.exit(main())
