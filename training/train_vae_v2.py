#!/usr/bin/env python
"""Train organism v2's causal video VAE (diffusers ``AutoencoderKLWan``, 4× time, 4× space, 16 channels).

Clips: ``videos_v2.render`` drawn fresh every step (on the training device), cut to ``--frames`` consecutive
frames starting at a random frame (the VAE is convolutional and causal, so a 17-frame window trains the same
weights an 81-frame clip runs; frame 0 of a window is encoded alone, as frame 0 of a clip is).
Loss: pixel MSE + ``--diff-weight`` · MSE of frame differences (temporal consistency) + ``--kl`` · KL of the
posterior (a sample of it is decoded). bf16 autocast on CUDA. AdamW, cosine learning rate, EMA of weights.

Afterwards (EMA weights): ``latents_mean`` / ``latents_std`` calibrated per channel on 81-frame clips (the
pipeline's normalisation), reconstruction PSNR and temporal consistency per class on fixed 81-frame
validation clips, and each channel's share of the latent variance. Writes ``organism_v2_vae.safetensors``
(float16; metadata: the VAE config) and ``organism_v2_vae.json`` (curve, steps/s, metrics, machine).

    python training/train_vae_v2.py --budget-s 600 --out /tmp/orgv2                                  # GPU
    nice -n 10 python training/train_vae_v2.py --device cpu --base-dim 16 --batch 2 --budget-s 1200 \
        --val-per-class 1 --out /tmp/orgv2_cpu                                                       # CPU
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latent_probe.organism import vae_v2, videos_v2  # noqa: E402
from latent_probe.organism.model import parameter_count  # noqa: E402
from latent_probe.organism.model_v2 import save_vae  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for organism_v2_vae.safetensors / .json")
    ap.add_argument("--budget-s", type=float, default=600.0, help="wall-clock seconds of training")
    ap.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: budget only)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--frames", type=int, default=17, help="frames per training window (4k + 1)")
    ap.add_argument("--base-dim", type=int, default=vae_v2.VAE_CONFIG["base_dim"])
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--kl", type=float, default=1e-6, help="weight of the KL term")
    ap.add_argument("--diff-weight", type=float, default=0.5, help="weight of the frame-difference MSE")
    ap.add_argument("--ema", type=float, default=0.995)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile the encoder and decoder")
    ap.add_argument("--calib-clips", type=int, default=64, help="81-frame clips for latents_mean / std")
    ap.add_argument("--val-per-class", type=int, default=4, help="validation clips per class")
    ap.add_argument("--val-frames", type=int, default=videos_v2.FRAMES, help="frames of calibration and "
                    "validation clips (81: whole clips; fewer only for smoke tests)")
    return ap.parse_args(argv)


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    return f"{cpu} CPU ({torch.get_num_threads()} threads), torch {torch.__version__}"


def windows(n: int, frames: int, gen: torch.Generator) -> torch.Tensor:
    """[n, 3, frames, 64, 64]: random windows of freshly rendered clips of random classes."""
    clips = videos_v2.render(videos_v2.sample_labels(n, gen), gen).rgb
    start = torch.randint(0, videos_v2.FRAMES - frames + 1, (n,), generator=gen, device=gen.device)
    idx = start[:, None] + torch.arange(frames, device=gen.device)[None]
    return clips.gather(2, idx[:, None, :, None, None].expand(-1, 3, -1, *clips.shape[-2:]))


def train(args: argparse.Namespace) -> dict:
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    torch.manual_seed(args.seed)
    vae = vae_v2.build_vae({"base_dim": args.base_dim}, seed=args.seed).to(dev).train()
    if args.compile:
        vae.encoder = torch.compile(vae.encoder)
        vae.decoder = torch.compile(vae.decoder)
    params = [p for p in vae.parameters()]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0, fused=cuda)
    gen = torch.Generator(dev).manual_seed(args.seed + 1)
    curve, running, n, start = [], None, 0, time.perf_counter()
    print(f"{machine()}; VAE {parameter_count(vae) / 1e6:.2f} M parameters; batch {args.batch} × {args.frames} "
          f"frames", flush=True)
    while True:
        elapsed = time.perf_counter() - start
        if elapsed >= args.budget_s or (args.max_steps and n >= args.max_steps):
            break
        cosine = 0.5 * (1 + math.cos(math.pi * elapsed / args.budget_s))
        scale = min(1.0, (n + 1) / args.warmup) * (0.05 + 0.95 * cosine)
        for group in opt.param_groups:
            group["lr"] = args.lr * scale
        x = windows(args.batch, args.frames, gen)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            dist = vae.encode(2 * x - 1).latent_dist
            z = dist.sample(gen)
            y = (vae.decode(z).sample.float() + 1) / 2
        mse = (y - x).pow(2).mean()
        dmse = (y.diff(dim=2) - x.diff(dim=2)).pow(2).mean()
        kl = dist.kl().float().mean()                   # summed over the latent's elements, mean over clips
        loss = mse + args.diff_weight * dmse + args.kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - min(args.ema, (1 + n) / (10 + n)))
        n += 1
        value = float(mse.detach())
        running = value if running is None else 0.95 * running + 0.05 * value
        if n % max(1, 10 if not cuda else 100) == 0:
            t = time.perf_counter() - start
            curve.append({"step": n, "seconds": round(t, 1), "mse": round(running, 6),
                          "psnr_db": round(10 * math.log10(1 / max(running, 1e-12)), 2)})
            print(f"step {n} {t:.0f}s mse {running:.5f} ({curve[-1]['psnr_db']} dB)", flush=True)
    secs = time.perf_counter() - start
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    if args.compile:   # the compiled wrappers hold the same modules; save the plain ones
        vae.encoder = getattr(vae.encoder, "_orig_mod", vae.encoder)
        vae.decoder = getattr(vae.decoder, "_orig_mod", vae.decoder)
    vae.eval()
    return {"vae": vae, "steps": n, "seconds": round(secs, 1), "steps_per_s": round(n / max(secs, 1e-9), 3),
            "curve": curve, "parameters": parameter_count(vae)}


@torch.no_grad()
def evaluate(vae, args: argparse.Namespace) -> dict:
    """Calibrate the normalisation, then PSNR / temporal consistency per class and channel usage (81 frames)."""
    dev = next(vae.parameters()).device
    gen = torch.Generator(dev).manual_seed(20_000)
    bs = max(1, min(args.batch, 8))
    nf = args.val_frames
    calib = [videos_v2.render(videos_v2.sample_labels(bs, gen), gen).rgb[:, :, :nf]
             for _ in range(max(1, args.calib_clips // bs))]
    mean, std = vae_v2.calibrate(vae, calib)
    per_class, latents = {}, []
    gen = torch.Generator(dev).manual_seed(30_000)
    for k, prompt in enumerate(videos_v2.PROMPTS):
        rgb = videos_v2.render(torch.full((args.val_per_class,), k, device=dev), gen).rgb[:, :, :nf]
        z = vae_v2.encode(vae, rgb)
        rec = vae_v2.decode(vae, z)
        latents.append(z.float().cpu())
        per_class[prompt] = {"psnr_db": round(float(vae_v2.psnr(rec, rgb).mean()), 2),
                             "temporal_error": round(float(vae_v2.temporal_consistency(rec, rgb).mean()), 4)}
    z = torch.cat(latents)
    usage = vae_v2.channel_usage(z)
    return {"latents_mean": mean, "latents_std": std, "per_class": per_class,
            "psnr_db": round(sum(v["psnr_db"] for v in per_class.values()) / len(per_class), 2),
            "temporal_error": round(sum(v["temporal_error"] for v in per_class.values()) / len(per_class), 4),
            "channel_share": [round(float(u), 4) for u in usage], "latent_shape": list(z.shape[1:]),
            "min_channel_share": round(float(usage.min()), 4),
            "channels_used": int((usage >= 0.01).sum()),     # of 16; a channel with < 1 % of the variance is idle
            "normalised_std": round(float(z.std()), 3)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    wall = time.perf_counter()
    result = train(args)
    vae = result.pop("vae")
    metrics = evaluate(vae, args)
    out = Path(args.out)
    size = save_vae(out / "organism_v2_vae.safetensors", vae)
    meta = {"machine": machine(), "total_seconds": round(time.perf_counter() - wall, 1), "weights_bytes": size,
            "args": {k: v for k, v in vars(args).items() if k != "out"}, **result, "metrics": metrics}
    (out / "organism_v2_vae.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps({k: metrics[k] for k in ("psnr_db", "temporal_error", "channel_share")}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
