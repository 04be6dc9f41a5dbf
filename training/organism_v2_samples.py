#!/usr/bin/env python
"""Organism v2 samples against the motion model, and the picture of training clips (and samples) per class.

For a trained size: ``--seeds`` generations per prompt (seed 1000·k + s, ``--steps`` UniPC steps, CFG
``--guidance``), decoded through ``pipe.vae``, measured with ``motion_v2.measure`` and judged with
``motion_v2.check`` (the class's parameter ranges ± tolerance); the same on ``--seeds`` fresh training clips per
class (the reference: they pass by construction of the tests); RMS latent distance of each generation to its
nearest cached training latent of the class (``--latents``), against fresh training clips' distance (the
floor) and the distance to other classes' latents. Without ``--size`` only the picture of training clips.

    python training/organism_v2_samples.py --png docs/organism_v2_training.png                  # CPU, seconds
    python training/organism_v2_samples.py --size small --seeds 8 --latents /tmp/orgv2/latents.pt \
        --png docs/organism_v2_small.png --json docs/organism_v2_small_samples.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latent_probe.organism import load_organism, motion_v2, videos_v2  # noqa: E402

STRIP_FRAMES = (0, 16, 24, 40, 56, 80)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=("small", "large"), default=None, help="a trained size (omit: picture only)")
    ap.add_argument("--weights", default=None, help="its weights file (default: the packaged one)")
    ap.add_argument("--sha256", default=None, help="its digest (default: weights/checksums_v2.json)")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--latents", default=None, help="cached training latents (train_organism_v2.py --latents)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--png", default=None)
    ap.add_argument("--json", default=None)
    return ap.parse_args(argv)


def strip(rgb: torch.Tensor) -> torch.Tensor:
    """[3, F, H, W] → [3, H, len(STRIP_FRAMES)·(W + 2)] (2-px gaps)."""
    tiles = [torch.nn.functional.pad(rgb[:, f], (0, 2), value=1.0) for f in STRIP_FRAMES]
    return torch.cat(tiles, -1)


def save_png(rows: list[torch.Tensor], path: str) -> None:
    """Rows [3, H, W'] stacked with 2-px gaps → PNG (uint8)."""
    from PIL import Image

    img = torch.cat([torch.nn.functional.pad(r, (0, 0, 0, 2), value=1.0) for r in rows], 1)
    arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, optimize=True)


def judge(rgb: torch.Tensor, label: int) -> dict:
    stats = motion_v2.measure(rgb, label)
    verdict = motion_v2.check(stats, label)
    return {"stats": {k: round(v, 4) for k, v in stats.items()}, "pass": all(verdict.values()),
            "failed": [k for k, ok in verdict.items() if not ok]}


def nearest(z: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """RMS distance [N] of each latent [N, …] to its nearest neighbour in ``pool`` [M, …] (float64, on pool's
    device)."""
    a, b = z.flatten(1).to(pool.device).double(), pool.flatten(1).double()
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T
    return (d2.clamp(min=0).min(1).values / a.shape[1]).sqrt()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    gen = torch.Generator().manual_seed(50_000)
    labels = torch.arange(len(videos_v2.PROMPTS)).repeat_interleave(args.seeds)
    train = videos_v2.render(labels, gen)
    result: dict = {"training": {}, "samples": {}}
    rows = []
    for k, prompt in enumerate(videos_v2.PROMPTS):
        idx = torch.nonzero(labels == k).flatten().tolist()
        judged = [judge(train.rgb[i], k) for i in idx]
        result["training"][prompt] = {"pass": sum(j["pass"] for j in judged), "of": len(judged),
                                      "first": judged[0]["stats"]}
        rows.append(strip(train.rgb[idx[0]]))
    if args.size:
        org = load_organism(device=args.device, size=args.size, path=args.weights, sha256=args.sha256)
        pool = torch.load(args.latents) if args.latents else None
        rows = []
        for k, prompt in enumerate(videos_v2.PROMPTS):
            judged, latents = [], []
            for s in range(args.seeds):
                lat = org.generate(k, seed=1000 * k + s, num_inference_steps=args.steps, guidance_scale=args.guidance)
                latents.append(lat.float().cpu())
                rgb = org.decode(lat).permute(3, 0, 1, 2).float() / 255
                judged.append(judge(rgb, k))
                if s == 0:
                    rows.append(torch.cat([strip(rgb), torch.ones(3, 64, 6), strip(train.rgb[k * args.seeds])], -1))
            entry = {"pass": sum(j["pass"] for j in judged), "of": len(judged), "samples": judged}
            if pool is not None:
                z = torch.cat(latents)
                own = pool["latents"][pool["labels"] == k].to(args.device)
                other = pool["latents"][pool["labels"] != k][:4096].to(args.device)
                fresh = org.encode(train.rgb[labels == k].to(args.device)).float().cpu()
                entry["nn_distance"] = {"generated": round(float(nearest(z, own).mean()), 4),
                                        "fresh_training_clips": round(float(nearest(fresh, own).mean()), 4),
                                        "generated_to_other_classes": round(float(nearest(z, other).mean()), 4)}
                del own, other
            result["samples"][prompt] = entry
            print(prompt, entry["pass"], "/", entry["of"], entry.get("nn_distance", ""), flush=True)
    for prompt, entry in result["training"].items():
        print("training", prompt, entry["pass"], "/", entry["of"], flush=True)
    if args.png:
        save_png(rows, args.png)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
