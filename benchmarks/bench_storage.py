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

``aggregate``: 1,000 metrics-only run files of 40 steps (21 latent frames, the sums of x̂₀; one recorded by the probe
around a tiny diffusers Wan2.2 pipeline with a study job's attributes, then copied), then ``open_runs`` on them in
one process (no Dask) and the per-step Dataset with bootstrap CIs.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import statistics
import sys
import tempfile
import time

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

    def one_run(probe_kw: dict | None, gap: float = 0.0) -> list[float]:
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
                if gap:  # the DiT's forward: the writer thread has finished the previous step meanwhile
                    torch.cuda.synchronize()
                    time.sleep(gap)
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
    for gap in (0.0, 0.05):
        print(f"\nsteps {'back to back' if not gap else f'{gap * 1e3:.0f} ms apart (a DiT forward; GPU idle)'}")
        print("| mode | host ms per scheduler.step, median (p90) | added vs no probe |")
        print("| --- | ---: | ---: |")
        base = None
        for name, kw in modes:
            one_run(kw)  # warm-up: Triton compile, pinned buffers
            times = [t for _ in range(3) for t in one_run(kw, gap)[1:]]
            med, p90 = statistics.median(times) * 1e3, float(np.percentile(times, 90)) * 1e3
            base = med if base is None else base
            print(f"| {name} | {med:.3f} ({p90:.3f}) | {med - base:+.3f} |", flush=True)
    parts(x0, pred, folder)
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")


def _host_ms(fn, n: int = 50, between=None) -> tuple[float, float]:
    """Median host ms of ``fn()`` (launches included, no synchronisation inside) and its median CUDA ms;
    ``between()`` runs untimed before each call."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    host, dev = [], []
    for _ in range(n):
        if between is not None:
            between()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        t0 = time.perf_counter()
        fn()
        host.append(time.perf_counter() - t0)
        b.record()
        torch.cuda.synchronize()
        dev.append(a.elapsed_time(b))
    return statistics.median(host) * 1e3, statistics.median(dev)


def parts(x0: torch.Tensor, pred: torch.Tensor, folder: str) -> None:
    """Host time of the pieces of one metrics-only step (one space, x̂₀), each alone."""
    from latent_probe.metrics import frame_pair_stats
    from latent_probe.parameterization import NoiseLevel, Parameterization, estimate_x0_eps

    on = OnlineSums(("x0",))
    sigma = torch.tensor(0.7)
    level = NoiseLevel(alpha=0.3, sigma=0.7, flow=True)
    sums = on.step({"x0": x0})
    w = RunWriter(os.path.join(folder, "parts.h5"), "float16", overwrite=True)  # 3 slots, as the probe
    k = [0]

    def submit() -> None:
        w.submit(_meta(k[0], 10 ** 6), {}, sums=sums)
        k[0] += 1

    print("\n| piece (one space, latent float32 on the GPU) | host ms | CUDA ms |")
    print("| --- | ---: | ---: |")
    for name, fn in (("frame_pair_stats (fused Triton kernel)", lambda: frame_pair_stats(x0)),
                     ("OnlineSums.step (pair sums + step change)", lambda: on.step({"x0": x0})),
                     ("estimate_x0_eps (x̂₀ and ε̂)", lambda: estimate_x0_eps(Parameterization.FLOW, x0, pred, level,
                                                                           sigma)),
                     ("RunWriter.submit of the sums (device → pinned copy)", submit)):
        h, d = _host_ms(fn, between=(lambda: time.sleep(0.01)) if fn is submit else None)  # the writer drains
        print(f"| {name} | {h:.3f} | {d:.3f} |", flush=True)
    w.close({"complete": True})


def _probe_run(path: str) -> None:
    """One metrics-only run recorded by the probe around a real (tiny, random-weight) diffusers Wan2.2 pipeline:
    two experts, 40 steps, 81 frames (21 latent frames), CFG, with a study job's attributes."""
    from latent_probe import LatentProbe
    from latent_probe.testing import tiny_prompt_embeds, tiny_wan_pipeline

    pipe = tiny_wan_pipeline(two_experts=True, boundary_ratio=0.875)
    pipe.set_progress_bar_config(disable=True)
    attrs = {"study": "bench", "job_id": "p0000-s0-steps40", "prompt_id": "p0000", "prompt": "a red ball rolls",
             "seed": 0, "setting_steps": 40}
    with LatentProbe(pipe, path, capture=(), metrics=("x0",), attrs=attrs, overwrite=True):
        pipe(prompt_embeds=tiny_prompt_embeds("a red ball rolls"), negative_prompt_embeds=tiny_prompt_embeds(""),
             height=32, width=32, num_frames=81, num_inference_steps=40, guidance_scale=4.0,
             generator=torch.Generator().manual_seed(0), output_type="latent")


def cmd_aggregate(args: argparse.Namespace) -> None:
    import xarray  # noqa: F401 - imported apart: its first Dataset imports dask.array where installed (~3 s)
    try:
        import dask.array  # noqa: F401
    except ImportError:
        pass
    from latent_probe import open_run, open_runs

    folder = os.path.join(args.dir, "bench_storage_runs")
    os.makedirs(folder, exist_ok=True)
    have = len(glob.glob(os.path.join(folder, "*.h5")))
    first = os.path.join(folder, "run0000.h5")
    if not have:
        _probe_run(first)
        have = 1
    for k in range(have, args.runs):  # copies: opening and reducing a file costs the same whatever its values
        shutil.copyfile(first, os.path.join(folder, f"run{k:04d}.h5"))
    with open_run(first) as run:
        print(f"{args.runs} metrics-only runs: one recorded by the probe ({run.num_steps} steps, latent "
              f"{list(run.latent_shape)}, {len(run.attrs)} attributes, {os.path.getsize(first):,} bytes), copied")
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
    for workers in args.workers:
        from latent_probe.study.recompute import local_client

        t0 = time.perf_counter()
        with local_client(workers) as client:  # the LocalCluster open_runs(workers=N) makes
            t_start = time.perf_counter() - t0
            for rep in ("first", "again"):
                t0 = time.perf_counter()
                rs = open_runs(os.path.join(folder, "*.h5"), client=client)
                t_open = time.perf_counter() - t0
                t0 = time.perf_counter()
                rs.curves("l2_mean", on="sigma")
                t_curves = time.perf_counter() - t0
                print(f"open_runs on Dask, {workers} workers ({rep}; cluster start-up {t_start:.1f} s apart): "
                      f"{len(rs.records)} runs, open {t_open:.2f} s, Dataset + curves with CIs {t_curves:.2f} s, "
                      f"total {t_open + t_curves:.2f} s", flush=True)
    print(f"load average: {open('/proc/loadavg').read().split()[:3]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("bytes", "host", "aggregate"))
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--workers", type=int, nargs="*", default=[], help="aggregate: also on a Dask LocalCluster of N")
    args = ap.parse_args()
    {"bytes": cmd_bytes, "host": cmd_host, "aggregate": cmd_aggregate}[args.what](args)


if __name__ == "__main__":
    sys.exit(main())
