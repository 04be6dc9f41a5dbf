"""Capture benchmarks (issue 2). Run by hand; prints a markdown table; numbers go to docs/benchmarks.md.

    python benchmarks/bench_capture.py [--steps 20] [--dir /tmp] [--skip-pipeline]

1. Sampling loop blocked per step while recording x_t, pred and x̂₀ of a [1, 16, 21, 90, 160] float32
   latent (Wan2.2 A14B, 720p, 81 frames): naive ``.cpu()`` + ``np.save`` against LatentProbe, on the
   device the tensors live on (CUDA if available). The loop runs a real flow UniPC scheduler and a
   stand-in DiT that keeps the GPU busy for ``--dit-ms`` per step (a real A14B step takes seconds).
2. Writer throughput against the raw sequential write speed of the same disk (tofile + fsync), same run.
3. Tiny diffusers WanPipeline on the CPU with and without the probe.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

SHAPE = (1, 16, 21, 90, 160)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class BusyDiT(torch.nn.Module):
    """Returns a velocity after keeping the device busy for about ``ms`` milliseconds."""

    def __init__(self, ms: float, device: torch.device) -> None:
        super().__init__()
        self.ms = ms
        self.cycles = 0
        if device.type == "cuda" and ms > 0:
            torch.cuda._sleep(1_000_000)  # warm up: the first launch would inflate the calibration
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.cuda._sleep(1_000_000)
            end.record()
            torch.cuda.synchronize()
            self.cycles = int(1_000_000 * ms / start.elapsed_time(end))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.cycles:
            torch.cuda._sleep(self.cycles)
        elif self.ms > 0:
            time.sleep(self.ms / 1e3)
        return torch.tanh(x) * 0.5 - x * 0.1


def _scheduler(steps: int, device: torch.device):
    from diffusers import UniPCMultistepScheduler

    s = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=12.0)
    s.set_timesteps(steps, device=device)
    return s


def loop_blocked(device: torch.device, steps: int, dit_ms: float, mode: str, tmpdir: str, store_dtype: str) -> dict:
    """Per-step host time spent in recording (median over steps after the first two)."""
    from latent_probe import LatentProbe

    model = BusyDiT(dit_ms, device)
    sched = _scheduler(steps, device)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(SHAPE, device=device, generator=g)
    record_ms: list[float] = []
    path = os.path.join(tmpdir, f"bench_{mode}_{store_dtype}.h5")
    probe = None
    if mode == "probe":
        probe = LatentProbe((model, sched), path, overwrite=True, capture=("x_t", "pred", "x0"),
                            store_dtype=store_dtype)
        probe.__enter__()
    _sync(device)
    t_loop = time.perf_counter()
    try:
        with torch.no_grad():
            for t in sched.timesteps:
                v = model(x, t)
                x_in = x
                if mode in ("none", "probe"):
                    t0 = time.perf_counter()
                    x = sched.step(v, t, x, return_dict=False)[0]
                    record_ms.append((time.perf_counter() - t0) * 1e3)
                elif mode == "naive":
                    x = sched.step(v, t, x, return_dict=False)[0]
                    t0 = time.perf_counter()
                    sigma = sched.sigmas[sched.step_index - 1]
                    for arr in (x_in, v, x_in - sigma * v):
                        np.save(io.BytesIO(), arr.cpu().numpy())
                    record_ms.append((time.perf_counter() - t0) * 1e3)
        _sync(device)
        loop_s = time.perf_counter() - t_loop
    finally:
        if probe is not None:
            probe.__exit__(None, None, None)
    out = {"record_ms": record_ms, "loop_s": loop_s}
    if probe is not None:
        out["blocked_ms"] = float(np.median(probe.run.blocked_ms[2:]))
        probe.run.close()
        os.remove(path)
    return out


def writer_throughput(tmpdir: str, steps: int, repeats: int = 3) -> dict:
    """MB/s of the writer (float32, three latents a step, CPU tensors) vs tofile + fsync of the same bytes
    (alternating, median of 3)."""
    from latent_probe.store.writer import RunWriter, StepMeta

    tensors = {n: torch.randn(SHAPE) for n in ("x_t", "pred", "x0")}
    nbytes = sum(t.numel() * 4 for t in tensors.values()) * steps
    raw = os.path.join(tmpdir, "raw.bin")
    path = os.path.join(tmpdir, "writer.h5")

    def raw_once() -> float:
        t0 = time.perf_counter()
        with open(raw, "wb") as fh:
            for _ in range(steps):
                for t in tensors.values():
                    t.numpy().tofile(fh)
            fh.flush()
            os.fsync(fh.fileno())
        dt = time.perf_counter() - t0
        os.remove(raw)
        return dt

    def ours_once() -> float:
        t0 = time.perf_counter()
        w = RunWriter(path, "float32", slots=3, overwrite=True)
        for i in range(steps):
            w.submit(StepMeta(i, 1000 - i, 1 - i / steps, i / steps, "model", None, 0, 1), tensors)
        w.close({"complete": True})
        with open(path, "rb+") as fh:
            os.fsync(fh.fileno())
        dt = time.perf_counter() - t0
        os.remove(path)
        return dt

    raw_times, our_times = [], []
    for _ in range(repeats):  # alternate, so both see the same disk and page-cache state
        raw_times.append(raw_once())
        our_times.append(ours_once())
    raw_s, ours_s = statistics.median(raw_times), statistics.median(our_times)
    return {"raw_MBps": nbytes / raw_s / 1e6, "ours_MBps": nbytes / ours_s / 1e6, "ratio": raw_s / ours_s,
            "ratios": [round(r / o, 3) for r, o in zip(raw_times, our_times)]}


def pipeline_ratio(repeats: int = 5) -> dict:
    from latent_probe import LatentProbe
    from latent_probe.testing import tiny_prompt_embeds, tiny_wan_pipeline

    pipe = tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt_embeds=tiny_prompt_embeds("bench"), negative_prompt_embeds=tiny_prompt_embeds(""),
              height=64, width=64, num_frames=17, num_inference_steps=12, output_type="latent")

    def once(probe: bool) -> float:
        t0 = time.perf_counter()
        if probe:
            with LatentProbe(pipe):
                pipe(generator=torch.Generator().manual_seed(0), **kw)
        else:
            pipe(generator=torch.Generator().manual_seed(0), **kw)
        return time.perf_counter() - t0

    once(False), once(True)
    plain = statistics.median(once(False) for _ in range(repeats))
    probed = statistics.median(once(True) for _ in range(repeats))
    return {"plain_s": plain, "probe_s": probed, "ratio": probed / plain}


def checksum_cost(repeats: int = 21) -> dict:
    """CPU time (thread_time: robust to other processes' load, not to shared caches) and wall time of the writer's
    checksum of one 720p 81-frame row, float32 and float16, for each algorithm this installation has."""
    from latent_probe.store.checksum import checksum_function

    out = {}
    for dtype in (np.float32, np.float16):
        row = np.random.default_rng(0).standard_normal(SHAPE).astype(dtype)
        for name in ("crc32c", "crc32"):
            fn = checksum_function(name)
            if fn is None:
                continue
            cpu, wall = [], []
            for _ in range(repeats):
                c0, w0 = time.thread_time(), time.perf_counter()
                fn(row)
                cpu.append(time.thread_time() - c0)
                wall.append(time.perf_counter() - w0)
            out[(name, np.dtype(dtype).name)] = (row.nbytes, statistics.median(cpu), statistics.median(wall))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--dit-ms", type=float, default=50.0)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--skip-pipeline", action="store_true")
    ap.add_argument("--writer-steps", type=int, default=20)
    ap.add_argument("--writer-only", action="store_true", help="only the writer-throughput measurement")
    ap.add_argument("--repeats", type=int, default=3, help="writer throughput: alternating repeats (median)")
    ap.add_argument("--checksum-only", action="store_true", help="only the cost of the writer's row checksums")
    args = ap.parse_args()
    if args.checksum_only:
        for (name, dtype), (nbytes, cpu, wall) in checksum_cost().items():
            print(f"{name} {dtype} row of {nbytes / 1e6:.1f} MB: {cpu * 1e3:.2f} ms CPU ({nbytes / cpu / 1e9:.2f} GB/s), "
                  f"{wall * 1e3:.2f} ms wall")
        return
    if args.writer_only:
        import latent_probe

        w = writer_throughput(args.dir, args.writer_steps, args.repeats)
        print(f"latent_probe {latent_probe.__file__}: raw {w['raw_MBps']:.0f} MB/s, RunWriter {w['ours_MBps']:.0f} "
              f"MB/s ({w['ratio'] * 100:.1f}% of raw; per-repeat ratios {w['ratios']})")
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"# capture benchmarks on {name}, torch {torch.__version__}\n")
    rows = []
    none = loop_blocked(device, args.steps, args.dit_ms, "none", args.dir, "float32")
    base = float(np.median(none["record_ms"][2:]))  # the scheduler's own step, at the same point of the loop
    naive = loop_blocked(device, args.steps, args.dit_ms, "naive", args.dir, "float32")
    rows.append(("naive .cpu() + np.save (x_t, pred, x0), after the step", np.median(naive["record_ms"][2:]),
                 naive["loop_s"]))
    rows.append((f"no recording (scheduler step alone: {base:.2f} ms host time)", 0.0, none["loop_s"]))
    for dtype in ("float32", "float16"):
        r = loop_blocked(device, args.steps, args.dit_ms, "probe", args.dir, dtype)
        rows.append((f"LatentProbe store {dtype} (probed step − plain step; slot wait {r['blocked_ms']:.2f} ms)",
                     np.median(r["record_ms"][2:]) - base, r["loop_s"]))
    print(f"Latent {list(SHAPE)} float32, {args.steps} steps, stand-in DiT {args.dit_ms} ms/step\n")
    print("| recording | host ms blocked per step (median) | whole loop s |")
    print("| --- | ---: | ---: |")
    for label, ms, loop_s in rows:
        print(f"| {label} | {ms:.2f} | {loop_s:.2f} |")
    w = writer_throughput(args.dir, args.writer_steps)
    print(f"\nWriter throughput ({args.writer_steps} steps × 3 × {np.prod(SHAPE) * 4 / 1e6:.1f} MB, float32, "
          f"fsync at end) in {args.dir}:\n")
    print("| path | MB/s |\n| --- | ---: |")
    print(f"| raw tofile + fsync | {w['raw_MBps']:.0f} |\n| RunWriter (h5py, SWMR, flush per step) | "
          f"{w['ours_MBps']:.0f} ({w['ratio'] * 100:.0f}% of raw) |")
    if not args.skip_pipeline:
        p = pipeline_ratio()
        print(f"\nTiny diffusers WanPipeline on the CPU (12 steps, 17 frames 64×64, CFG): "
              f"{p['plain_s'] * 1e3:.0f} ms plain, {p['probe_s'] * 1e3:.0f} ms with the probe, ratio {p['ratio']:.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
