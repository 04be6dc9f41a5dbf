#!/usr/bin/env python
"""Train an organism v2 DiT size (two experts) on the learned VAE's latents; write its checksummed weights file.

The recipe is v1's (``training/train_organism.py``: flow matching as Wan, σ from the shifted schedule, 10 %
condition dropout, a shared base then a high-noise and a low-noise expert split at the boundary, EMAs saved),
with Wan T2V-A14B's shift 12 and, as data, latents of ``videos_v2`` clips encoded once by the VAE
(``--encode N`` clips, class-balanced, posterior mean, the pipeline's normalisation) and cached in ``--latents``.

Writes ``organism_v2_<size>.safetensors`` (both experts + the VAE + embeddings, float16) and
``organism_v2_<size>.json`` (curve, steps/s, validation loss per σ, machine) to ``--out`` and records the
file's SHA-256 in ``--checksums`` (default: ``<out>/checksums_v2.json``), which ``load_organism`` checks.

    python training/train_organism_v2.py --size small --vae /tmp/orgv2/organism_v2_vae.safetensors \
        --latents /tmp/orgv2/latents.pt --encode 32768 --budget-s 600 --compile --out latent_probe/organism/weights
    python training/train_organism_v2.py --size small --vae VAE --latents /tmp/l.pt --encode 4 --device cpu \
        --max-steps 3 --batch 2 --val-clips 2 --out /tmp/orgv2_smoke                                  # CPU smoke
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "training"))

import train_organism as v1  # noqa: E402
from latent_probe.organism import vae_v2, videos_v2  # noqa: E402
from latent_probe.organism.model import EXPERTS, build_transformer, parameter_count  # noqa: E402
from latent_probe.organism.model_v2 import (config_for, null_embedding_v2, prompt_embeddings_v2, read_vae,  # noqa: E402
                                            record_checksum, save_organism_v2, sha256)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=("small", "large"), required=True)
    ap.add_argument("--vae", required=True, help="organism_v2_vae.safetensors from training/train_vae_v2.py")
    ap.add_argument("--latents", required=True, help="cached latents (.pt); written first when absent")
    ap.add_argument("--encode", type=int, default=32768, help="clips to encode when --latents is absent")
    ap.add_argument("--encode-batch", type=int, default=64)
    ap.add_argument("--encode-budget-s", type=float, default=0.0,
                    help="stop encoding after this many seconds, at a whole number of class rounds (0: no limit)")
    ap.add_argument("--encode-only", action="store_true", help="write --latents and stop (no training)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--checksums", default=None, help="checksum registry to update (default <out>/checksums_v2.json)")
    # v1's training options (same defaults)
    base = v1.parse_args([])
    for key in ("budget_s", "max_steps", "base_frac", "batch", "lr", "expert_lr", "weight_decay", "warmup", "ema",
                "expert_ema", "cond_drop", "seed", "device", "val_clips", "bench"):
        value = getattr(base, key)
        ap.add_argument("--" + key.replace("_", "-"), type=type(value), default=value)
    ap.add_argument("--compile", action="store_true", help="torch.compile the DiT")
    return ap.parse_args(argv)


@torch.no_grad()
def encode_dataset(vae, n: int, batch: int, device: torch.device, seed: int = 40_000,
                   budget_s: float = 0.0) -> dict[str, torch.Tensor]:
    """n class-balanced clips (labels 0, 1, …, 9, 0, …) rendered and encoded; with ``budget_s`` > 0 fewer when
    that many seconds have passed (cut to a whole number of rounds of the ten classes, so classes stay balanced).

    Returns {latents float16 [n', 16, 21, 16, 16], labels [n']} on the CPU."""
    gen = torch.Generator(device).manual_seed(seed)
    labels = torch.arange(n) % len(videos_v2.PROMPTS)
    out = []
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        lab = labels[start:start + batch].to(device)
        rgb = videos_v2.render(lab, gen).rgb
        z = vae_v2.encode(vae, rgb)                         # float32 (TF32 on CUDA): the data the DiT learns
        out.append(z.to("cpu", torch.float16))
        if (start // batch) % 50 == 0:
            print(f"encoded {start + lab.shape[0]}/{n} clips in {time.perf_counter() - t0:.0f}s", flush=True)
        if budget_s and start + batch < n and time.perf_counter() - t0 >= budget_s:
            break
    latents = torch.cat(out)
    keep = latents.shape[0]
    if keep < n:                                            # cut by the budget: whole rounds of the classes
        keep -= keep % len(videos_v2.PROMPTS)
        if keep == 0:
            raise SystemExit(f"--encode-budget-s {budget_s} encoded fewer than one clip per class")
    return {"latents": latents[:keep], "labels": labels[:keep], "seed": torch.tensor(seed)}


class LatentTrainer(v1.Trainer):
    """v1's trainer on a v2 size: data are cached VAE latents, prompts the ten v2 embeddings."""

    def __init__(self, args: argparse.Namespace, config, data: dict[str, torch.Tensor]) -> None:
        super().__init__(args, config)
        self.emb = prompt_embeddings_v2(config).to(self.device)
        self.null = null_embedding_v2(config).to(self.device)
        self.latents = data["latents"].to(self.device)
        self.labels = data["labels"].to(self.device)

    def batch(self, n, u_lo, u_hi, gen, drop):
        dev = self.device
        idx = torch.randint(self.latents.shape[0], (n,), generator=gen, device=dev)
        x0 = self.latents[idx].float()
        u = u_lo + (u_hi - u_lo) * torch.rand(n, generator=gen, device=dev)
        sigma = v1.shift_sigma(u, self.config.flow_shift)
        eps = torch.randn(x0.shape, generator=gen, device=dev)
        s = sigma[:, None, None, None, None]
        xt = (1 - s) * x0 + s * eps
        ctx = self.emb[self.labels[idx]]
        dropped = torch.rand(n, generator=gen, device=dev) < drop
        ctx = torch.where(dropped[:, None, None], self.null.expand_as(ctx), ctx)
        return xt, sigma * self.config.num_train_timesteps, ctx, eps - x0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    wall0 = time.perf_counter()
    device = torch.device(args.device)
    config = config_for(args.size)
    vae = read_vae(args.vae, sha256(args.vae)).to(device)      # this pipeline's own file: its digest as read
    latents_path = Path(args.latents)
    if latents_path.is_file():
        data = torch.load(latents_path)
        print(f"latents from {latents_path}: {tuple(data['latents'].shape)}", flush=True)
    else:
        t0 = time.perf_counter()
        data = encode_dataset(vae, args.encode, args.encode_batch, device, budget_s=args.encode_budget_s)
        data["vae_sha256"] = sha256(args.vae)
        latents_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(data, latents_path)
        print(f"encoded {data['latents'].shape[0]} clips in {time.perf_counter() - t0:.0f}s → {latents_path}",
              flush=True)
    if data.get("vae_sha256", sha256(args.vae)) != sha256(args.vae):
        raise SystemExit(f"{latents_path} was encoded by another VAE than {args.vae}; delete it to re-encode")
    if args.encode_only:
        return 0
    lat = data["latents"].float()
    print(f"latent mean {float(lat.mean()):.3f} std {float(lat.std()):.3f} (normalised: ≈ 0, 1)", flush=True)
    trainer = LatentTrainer(args, config, data)
    print(f"{v1.machine()}; size {args.size}: {parameter_count(trainer.net) / 1e6:.2f} M parameters per expert; "
          f"{config.tokens} tokens per clip; batch {args.batch}; shift {config.flow_shift}", flush=True)
    if args.bench:
        v1.bench(trainer, args.bench)
        return 0
    base, states, phases, val = v1.train_experts(trainer, args)
    ub = trainer.u_boundary
    experts = {}
    for name in EXPERTS:
        experts[name] = build_transformer(config)
        experts[name].load_state_dict(states[name])
    out = Path(args.out)
    path = out / f"organism_v2_{args.size}.safetensors"
    steps = sum(p["steps"] for p in phases.values())
    secs = sum(p["seconds"] for p in phases.values())
    size = save_organism_v2(path, experts, vae.cpu().float(), config,
                            metadata={"machine": v1.machine(), "steps": trainer.steps})
    digest = record_checksum(path, Path(args.checksums) if args.checksums else out / "checksums_v2.json")
    meta = {"machine": v1.machine(), "total_seconds": round(time.perf_counter() - wall0, 1),
            "train_seconds": args.budget_s, "steps": trainer.steps, "steps_per_s": round(steps / max(secs, 1e-9), 3),
            "phases": phases, "parameters_per_expert": parameter_count(trainer.net), "tokens_per_clip": config.tokens,
            "dataset_clips": int(data["latents"].shape[0]), "vae_sha256": sha256(args.vae), "sha256": digest,
            "args": {k: v for k, v in vars(args).items() if k not in ("out", "vae", "latents", "checksums")},
            "boundary_u": ub, "validation_loss_per_sigma": val, "loss_curve": trainer.curve, "weights_bytes": size}
    (out / f"organism_v2_{args.size}.json").write_text(json.dumps({"config": json.loads(config.to_json()),
                                                                   "training": meta}, indent=1) + "\n")
    print(json.dumps({"validation_loss_per_sigma": val, "weights_bytes": size, "steps": trainer.steps,
                      "sha256": digest}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
