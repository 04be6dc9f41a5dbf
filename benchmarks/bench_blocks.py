"""Cost of block probes: a generation plain vs with ``LatentProbe(blocks=..., attention_reach=...)``.

    python benchmarks/bench_blocks.py --size tiny              # the CPU configuration (docs/benchmarks.md)
    python benchmarks/bench_blocks.py --size a14b --device cuda # Wan2.2 A14B architecture, both experts, 40 blocks

The pipeline is diffusers' real ``WanPipeline`` (two experts switching at boundary_ratio 0.875, flow UniPC, CFG
4.0, ``output_type="latent"``; a tiny random VAE supplies only the strides) around random-weight
``WanTransformer3DModel`` experts: ``tiny`` = 2 heads × 16, 2 layers, 17 frames at 64×64 (CPU, float32);
``a14b`` = 40 heads × 128 (5120), ffn 13824, text 4096, 40 layers, 81 frames at 480×832 (21 × 60 × 104 latent,
32,760 tokens), bf16 — the Wan2.2 T2V-A14B transformer's architecture (the real ``WanT2V.generate`` needs the
Wan2.2 repository, not installed here). Wall time of whole generations (CUDA synchronised at the end), rounds of
all configurations interleaved, median (and min) of ``--reps`` after one warm-up round; "ms added a step" =
(probed − plain) / steps. Outputs are checked bit-identical.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from latent_probe import LatentProbe

SIZES = {
    "tiny": dict(num_attention_heads=2, attention_head_dim=16, ffn_dim=32, text_dim=32, num_layers=2,
                 frames=17, height=64, width=64, text_len=8, dtype="float32"),
    "a14b": dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, text_dim=4096, num_layers=40,
                 frames=81, height=480, width=832, text_len=512, dtype="bfloat16"),
}


def build(size: dict, device: torch.device, layers: int | None) -> tuple[object, torch.Tensor]:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    dtype = getattr(torch, size["dtype"])

    def expert(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        m = WanTransformer3DModel(patch_size=(1, 2, 2), in_channels=16, out_channels=16, freq_dim=256,
                                  num_layers=layers or size["num_layers"], cross_attn_norm=True,
                                  qk_norm="rms_norm_across_heads", eps=1e-6,
                                  num_attention_heads=size["num_attention_heads"],
                                  attention_head_dim=size["attention_head_dim"], ffn_dim=size["ffn_dim"],
                                  text_dim=size["text_dim"])
        m = m.to(device=device, dtype=dtype).eval().requires_grad_(False)
        keep = tuple(getattr(m, "_keep_in_fp32_modules", None) or ())
        for name, p in m.named_parameters():
            if any(k in name.split(".") for k in keep):
                p.data = p.data.float()
        return m

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True]).eval().to(device)
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
                                    flow_shift=5.0)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=sched, transformer=expert(1),
                       transformer_2=expert(2), boundary_ratio=0.875)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(1, size["text_len"], size["text_dim"], generator=g).to(device, dtype)
    return pipe, embeds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--layers", type=int, default=None, help="blocks per expert (default: the size's)")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: 12 tiny, 4 a14b)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--reach", type=int, default=64, help="query tokens a frame for attention_reach")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    size = SIZES[args.size]
    device = torch.device(args.device)
    steps = args.steps or (12 if args.size == "tiny" else 4)
    pipe, embeds = build(size, device, args.layers)

    def generate() -> torch.Tensor:
        out = pipe(prompt_embeds=embeds, negative_prompt_embeds=torch.zeros_like(embeds), height=size["height"],
                   width=size["width"], num_frames=size["frames"], num_inference_steps=steps, guidance_scale=4.0,
                   generator=torch.Generator().manual_seed(0), output_type="latent").frames
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    import warnings

    warnings.filterwarnings("error", message="latent_probe: recording stopped")

    def once(make_probe) -> tuple[float, torch.Tensor]:
        t0 = time.perf_counter()
        if make_probe is None:
            out = generate()
        else:
            with make_probe():
                out = generate()
        return (time.perf_counter() - t0) * 1e3, out

    # all 40 A14B blocks cannot keep their previous updates (54 GB): there the step change runs on every 4th block
    change_all = args.size == "tiny"
    tag = "" if change_all else ", block_change=False"
    configs = [
        ("plain", None),
        ("LatentProbe, x̂₀ metrics only", lambda: LatentProbe(pipe, None, capture=(), metrics=("x0",))),
        (f"+ blocks='all'{tag}", lambda: LatentProbe(pipe, None, capture=(), metrics=("x0",), blocks="all",
                                                   block_change=change_all)),
        (f"+ blocks='all', attention_reach={args.reach}{tag}",
         lambda: LatentProbe(pipe, None, capture=(), metrics=("x0",), blocks="all", attention_reach=args.reach,
                             block_change=change_all)),
        ("+ blocks='every:4', block_change=False",
         lambda: LatentProbe(pipe, None, capture=(), metrics=("x0",), blocks="every:4", block_change=False)),
        ("+ blocks='every:4' (with the step change)",
         lambda: LatentProbe(pipe, None, capture=(), metrics=("x0",), blocks="every:4")),
    ]
    times: list[list[float]] = [[] for _ in configs]
    outs: list[torch.Tensor | None] = [None] * len(configs)
    for r in range(args.reps + 1):  # interleaved rounds: a busy machine's load falls on every configuration alike
        for c, (_, make) in enumerate(configs):
            ms, outs[c] = once(make)
            if r:
                times[c].append(ms)
    rows = [(name, statistics.median(t), min(t), torch.equal(o, outs[0])) for (name, _), t, o in zip(configs, times, outs)]
    layers = args.layers or size["num_layers"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"{args.size}: {layers} blocks × 2 experts, {steps} steps, CFG; {dev}; torch {torch.__version__}, "
          f"{args.threads} thread(s); load {load:.1f}\n")
    print(f"| run | ms a generation, median of {args.reps} (min) | ms added a step, median (min) | × plain | "
          "bit-identical |")
    print("| --- | ---: | ---: | ---: | --- |")
    plain, plain_min = rows[0][1], rows[0][2]
    for name, ms, lo, same in rows:
        print(f"| {name} | {ms:.1f} ({lo:.1f}) | {(ms - plain) / steps:+.2f} ({(lo - plain_min) / steps:+.2f}) | "
              f"{ms / plain:.2f} | {'yes' if same else 'NO'} |")
    return 0 if all(same for *_, same in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
