"""Frame-truncation benchmark (issue 5). Run by hand; prints a markdown table; numbers go to docs/benchmarks.md.

    python benchmarks/bench_truncation.py               # CUDA: Wan2.2 A14B width, 2 of 40 blocks, bf16, 480p 81f
    python benchmarks/bench_truncation.py --cpu-smoke   # tiny sizes on the CPU: checks the script runs

A random-weight diffusers ``WanTransformer3DModel`` of A14B width (dim 5120 = 40 heads × 128, ffn 13824,
16 → 16 channels, text_dim 4096, patch (1, 2, 2)) with 2 of its 40 blocks, on a latent [1, 16, F, 60, 104]
(480×832, 81 video frames → 21 latent frames, 1,560 tokens per frame). For each number of frames the DiT
receives, the median forward time (CUDA events, after warm-up) against two predictions from the
all-frames time T:

* token-linear:   T · K/F;
* attention-aware: (T − A) · K/F + A · (K/F)², where A is the measured self-attention time of the
  blocks at F frames (scaled_dot_product_attention on [1, 40, N, 128], times the block count).

Also: the same model under ``FrameTruncation`` hooks (input slicing + linear fill of the prediction
included), and one block's cost (model with 2 blocks − model with 1 block), to extrapolate to 40 blocks.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F

A14B = dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, text_dim=4096)
TINY = dict(num_attention_heads=2, attention_head_dim=16, ffn_dim=64, text_dim=32)


def bench(fn: Callable[[], object], device: torch.device, warmup: int, reps: int) -> float:
    """Median milliseconds of ``fn()`` (CUDA events on CUDA, perf_counter on the CPU), after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def build(width: dict, layers: int, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import WanTransformer3DModel
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # the fp32-module warning: handled below, as from_pretrained does
    torch.manual_seed(0)
    model = WanTransformer3DModel(patch_size=(1, 2, 2), in_channels=16, out_channels=16, freq_dim=256,
                                  num_layers=layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                  eps=1e-6, **width)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, param in model.named_parameters():  # as from_pretrained(torch_dtype=...) leaves them
        if any(k in name.split(".") for k in keep):
            param.data = param.data.float()
    return model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-smoke", action="store_true", help="tiny model and latent on the CPU")
    p.add_argument("--keep", type=int, default=3)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--frames", type=str, default=None, help="comma list of frame counts to time (default 1,2,3,5,7,11,F)")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--smoke-dtype", default="float32", help="dtype of the --cpu-smoke model (float32)")
    args = p.parse_args(argv)

    from latent_probe.adapters import TargetParts
    from latent_probe.hooks import HookRegistry
    from latent_probe.interventions import FrameTruncation, interpolate_frames

    cuda = torch.cuda.is_available() and not args.cpu_smoke
    if not cuda and not args.cpu_smoke:
        print("no CUDA device: pass --cpu-smoke for the tiny CPU check", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else getattr(torch, args.smoke_dtype)
    width = A14B if cuda else TINY
    num_frames, lat_h, lat_w, text_len = (21, 60, 104, 512) if cuda else (5, 8, 8, 8)
    reps = args.reps or (10 if cuda else 2)
    warmup = args.warmup or (3 if cuda else 1)
    heads, head_dim = width["num_attention_heads"], width["attention_head_dim"]
    tokens_per_frame = (lat_h // 2) * (lat_w // 2)

    model = build(width, args.layers, device, dtype)
    g = torch.Generator(device="cpu").manual_seed(1)
    latent = torch.randn(1, 16, num_frames, lat_h, lat_w, generator=g).to(device, dtype)
    context = torch.randn(1, text_len, width["text_dim"], generator=g).to(device, dtype)
    timestep = torch.tensor([900], device=device)

    def forward(x: torch.Tensor) -> Callable[[], object]:
        def call() -> object:
            with torch.no_grad():
                return model(hidden_states=x, timestep=timestep, encoder_hidden_states=context, return_dict=False)[0]

        return call

    def attention_ms(frames: int) -> float:
        n = frames * tokens_per_frame
        q, k, v = (torch.randn(1, heads, n, head_dim, device=device, dtype=dtype) for _ in range(3))
        return args.layers * bench(lambda: F.scaled_dot_product_attention(q, k, v), device, warmup, reps)

    frames_list = sorted({int(f) for f in args.frames.split(",")} if args.frames else
                         {f for f in (1, 2, 3, 5, 7, 11, num_frames) if f <= num_frames} | {args.keep})
    rows = []
    for f in frames_list:
        ms = bench(forward(latent[:, :, :f].contiguous()), device, warmup, reps)
        rows.append((f, ms, attention_ms(f)))
    full_ms, full_attn = next((ms, a) for f, ms, a in rows if f == num_frames)

    # the same call through FrameTruncation's hooks: full input, sliced by the pre-hook, filled by the hook
    registry = HookRegistry()
    ft = FrameTruncation(keep=args.keep, until=1)
    ft.attach(registry, TargetParts(family="diffusers", experts={"transformer": model}, dit_calls="diffusers_wan",
                                    rope="diffusers_wan"), None)
    try:
        hooked_ms = bench(forward(latent), device, warmup, reps)
        out = forward(latent)()
    finally:
        registry.remove_all()
    assert out.shape == latent.shape and ft.frames_seen[-1] == len(ft.keys_used)
    keys = ft.keys_used
    small = out[:, :, keys].contiguous()
    fill_only_ms = bench(lambda: interpolate_frames(small, keys, num_frames, "linear"), device, warmup, reps)

    # one block's cost at F and at K frames: the model with one block fewer
    k_ms = next(ms for f, ms, _ in rows if f == len(keys))
    latent_k = latent[:, :, keys].contiguous()
    blocks = model.blocks
    model.blocks = blocks[:-1]
    try:
        less_ms = bench(forward(latent), device, warmup, reps)
        less_k_ms = bench(forward(latent_k), device, warmup, reps)
    finally:
        model.blocks = blocks
    block_ms, block_k_ms = full_ms - less_ms, k_ms - less_k_ms
    fixed_ms, fixed_k_ms = full_ms - args.layers * block_ms, k_ms - args.layers * block_k_ms

    dev_name = torch.cuda.get_device_name(0) if cuda else "CPU (smoke test, tiny sizes)"
    print(f"## Frame truncation: DiT forward time ({dev_name}, torch {torch.__version__}, {dtype})\n")
    print(f"Model: WanTransformer3DModel, {heads}×{head_dim} = {heads * head_dim} wide, ffn {width['ffn_dim']}, "
          f"{args.layers} blocks; latent [1, 16, {num_frames}, {lat_h}, {lat_w}] ({tokens_per_frame:,} tokens per "
          f"frame), context {text_len} tokens; median of {reps} after {warmup} warm-up calls.\n")
    print("| frames | tokens | forward ms | ÷ all frames | token-linear ms | attention-aware ms | attention ms (share) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for f, ms, attn in rows:
        r = f / num_frames
        print(f"| {f} | {f * tokens_per_frame:,} | {ms:.2f} | {ms / full_ms:.3f} | {full_ms * r:.2f} | "
              f"{(full_ms - full_attn) * r + full_attn * r * r:.2f} | {attn:.2f} ({attn / ms:.0%}) |")
    r = len(ft.keys_used) / num_frames
    print(f"| {len(ft.keys_used)} via FrameTruncation hooks (slice + linear fill) | {len(ft.keys_used) * tokens_per_frame:,} "
          f"| {hooked_ms:.2f} | {hooked_ms / full_ms:.3f} | {full_ms * r:.2f} | "
          f"{(full_ms - full_attn) * r + full_attn * r * r:.2f} | |")
    print(f"\nlinear fill alone ({len(ft.keys_used)} → {num_frames} frames): {fill_only_ms:.3f} ms")
    print(f"one block: {block_ms:.2f} ms at {num_frames} frames, {block_k_ms:.2f} ms at {len(keys)}; outside the "
          f"blocks (embeddings, head): {fixed_ms:.2f} / {fixed_k_ms:.2f} ms")
    est_full, est_k = fixed_ms + 40 * block_ms, fixed_k_ms + 40 * block_k_ms
    print(f"extrapolated to 40 blocks: {est_full:.0f} ms per DiT call at {num_frames} frames, {est_k:.0f} ms at "
          f"{len(keys)} frames ({est_k / est_full:.3f}×; token ratio {len(keys) / num_frames:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
