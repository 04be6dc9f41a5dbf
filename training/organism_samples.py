#!/usr/bin/env python
"""Sample the trained organism, measure the samples against the renderer's motion model, draw a frame strip.

For every prompt: ``--seeds`` generations (20 UniPC steps, CFG 4, CPU), decoded with the pseudo-inverse
of the latent lift. Measured with ``latent_probe.organism.quality`` on the generated clips and, as the
reference, on rendered training clips of the same class (whose true motion is known):

* classes 0–3, 5: tracked object visible in how many frames, residual of a straight-line fit (px), velocity;
* class 4: angular velocity of the bar and the residual of a linear angle fit;
* classes 6–7: pan speed;
* all: RMS latent distance to the nearest of ``--pool`` training clips of the class, against the same for
  fresh training clips; adjacent-frame cosine of the final latent (``latent_probe.metrics``) against the
  training clips and the same pipeline with random weights.

    python training/organism_samples.py --seeds 2 --png docs/organism_samples.png --json /tmp/samples.json
    python training/organism_samples.py --timing      # one baseline + one truncated probed generation
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latent_probe.metrics import adjacent_frame_metrics  # noqa: E402
from latent_probe.organism import load_organism, quality, random_organism, videos  # noqa: E402

STRIP_FRAMES = (0, 4, 8, 12, 16, 20)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=2, help="generations per prompt")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--pool", type=int, default=256, help="training clips per class for nearest neighbours")
    ap.add_argument("--png", default=None, help="write the frame strip here")
    ap.add_argument("--json", default=None, help="write the numbers here")
    ap.add_argument("--cache", default=None, help="a .pt file keeping the generated latents between runs")
    ap.add_argument("--random-seeds", type=int, default=1, help="random-weight generations per prompt (control)")
    ap.add_argument("--timing", action="store_true", help="only time a baseline + a truncated probed generation")
    return ap.parse_args(argv)


def generate_all(org, seeds: int, steps: int, guidance: float, cache: str | None, tag: str) -> torch.Tensor:
    """[n_prompts, seeds, 16, F, h, w] final latents; seed s of prompt k uses seed 1000·k + s."""
    store = torch.load(cache) if cache and Path(cache).exists() else {}
    out = []
    for k in range(len(videos.PROMPTS)):
        row = []
        for s in range(seeds):
            key = f"{tag}/{k}/{s}/{steps}/{guidance}"
            if key not in store:
                t0 = time.perf_counter()
                store[key] = org.generate(k, seed=1000 * k + s, num_inference_steps=steps,
                                          guidance_scale=guidance)[0]
                print(f"{tag} prompt {k} seed {s}: {time.perf_counter() - t0:.1f}s", flush=True)
                if cache:
                    torch.save(store, cache)
            row.append(store[key])
        out.append(torch.stack(row))
    return torch.stack(out)


def reference_clips(per_class: int, seed: int, chunk: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Training clips, class-major: latents [n_prompts·per_class, 16, F, h, w] and rgb [.., 3, F, h, w]."""
    labels = torch.arange(len(videos.PROMPTS)).repeat_interleave(per_class)
    gen = torch.Generator().manual_seed(seed)
    parts = [videos.render(labels[i:i + chunk], gen) for i in range(0, len(labels), chunk)]  # bounded memory
    return torch.cat([p.latents for p in parts]), torch.cat([p.rgb for p in parts])


def motion_table(rgb: torch.Tensor, label: int) -> dict[str, float]:
    """Mean and spread of ``quality.object_motion`` over clips [N, 3, F, H, W]."""
    rows = [quality.object_motion(c, label) for c in rgb]
    out = {}
    for key in rows[0]:
        vals = np.array([r[key] for r in rows], dtype=float)
        out[key] = round(float(np.nanmean(vals)), 3)
        if key in ("vx", "vy", "omega"):
            out[key + "_abs"] = round(float(np.nanmean(np.abs(vals))), 3)
    return out


def adjacent_cos(latents: torch.Tensor) -> float:
    """Mean adjacent-frame cosine of latents [N, 16, F, h, w]."""
    return float(np.mean(adjacent_frame_metrics(latents.float(), "b c f h w").cos_mean))


def strip(gen: torch.Tensor, ref: torch.Tensor, scale: int = 4) -> np.ndarray:
    """uint8 image: per prompt a row of generated frames, a gap, the same frames of a training clip."""
    from PIL import Image, ImageDraw

    tile = videos.SIZE * scale
    rows = []
    for k in range(gen.shape[0]):
        cells = []
        for clip in (gen[k], ref[k]):
            rgb = videos.to_rgb(clip)[:, list(STRIP_FRAMES)]                      # [3, T, h, w]
            rgb = torch.nn.functional.interpolate(rgb.permute(1, 0, 2, 3), scale_factor=scale, mode="nearest")
            cells.append(torch.cat(list(rgb), dim=2))                             # [3, tile, T·tile]
            cells.append(torch.ones(3, tile, tile // 2))
        rows.append(torch.cat(cells[:-1], dim=2))
    img = torch.cat([torch.cat([r, torch.ones(3, 14, r.shape[2])], 1) for r in rows], 1)
    img = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    label_w = 250
    canvas = Image.new("RGB", (img.shape[1] + label_w, img.shape[0] + 18), "white")
    canvas.paste(Image.fromarray(img), (label_w, 18))
    draw = ImageDraw.Draw(canvas)
    half = len(STRIP_FRAMES) * tile
    draw.text((label_w, 2), f"generated (latent frames {', '.join(map(str, STRIP_FRAMES))})", fill="black")
    draw.text((label_w + half + tile // 2, 2), "a training clip", fill="black")
    for k, prompt in enumerate(videos.PROMPTS):
        draw.text((4, 18 + k * (tile + 14) + tile // 2 - 6), prompt, fill="black")
    return np.asarray(canvas)


def timing() -> dict[str, float]:
    """Wall and CPU seconds of one baseline and one truncated (keep=3 until the boundary) probed generation."""
    from latent_probe import FrameTruncation, LatentProbe

    org = load_organism()
    out: dict[str, float] = {"threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        for name, intervene in (("baseline", None), ("truncated", FrameTruncation(keep=3, until="boundary"))):
            w0, c0 = time.perf_counter(), time.process_time()
            with LatentProbe(org.pipe, f"{tmp}/{name}.h5", intervene=intervene):
                org.generate(videos.PROMPTS[5], seed=0, num_inference_steps=20)
            out[f"{name}_wall_s"] = round(time.perf_counter() - w0, 2)
            out[f"{name}_cpu_s"] = round(time.process_time() - c0, 2)
    out["total_wall_s"] = round(out["baseline_wall_s"] + out["truncated_wall_s"], 2)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    if args.timing:
        print(json.dumps(timing()))
        return 0
    org = load_organism()
    gen = generate_all(org, args.seeds, args.steps, args.guidance, args.cache, "trained")
    ctrl = generate_all(random_organism(seed=0), args.random_seeds, args.steps, args.guidance, args.cache, "random")
    ref_lat, ref_rgb = reference_clips(args.seeds, seed=777)              # fresh training clips
    pool_lat = reference_clips(args.pool, seed=778)[0]
    n = len(videos.PROMPTS)
    report: dict[str, object] = {"steps": args.steps, "guidance": args.guidance, "seeds": args.seeds,
                                 "pool": args.pool, "per_prompt": {}}
    ref_lat = ref_lat.reshape(n, args.seeds, *ref_lat.shape[1:])
    ref_rgb = ref_rgb.reshape(n, args.seeds, *ref_rgb.shape[1:])
    pool_lat = pool_lat.reshape(n, args.pool, *pool_lat.shape[1:])
    for k, prompt in enumerate(videos.PROMPTS):
        g_rgb = videos.to_rgb(gen[k])
        nn_gen = quality.nearest_distance(gen[k], pool_lat[k])
        nn_ref = quality.nearest_distance(ref_lat[k], pool_lat[k])
        nn_other = quality.nearest_distance(gen[k], torch.cat([pool_lat[j] for j in range(n) if j != k]))
        report["per_prompt"][prompt] = {
            "generated": motion_table(g_rgb, k), "training": motion_table(ref_rgb[k], k),
            "nn_rms_generated": round(float(nn_gen.mean()), 3), "nn_rms_training": round(float(nn_ref.mean()), 3),
            "nn_rms_generated_to_other_classes": round(float(nn_other.mean()), 3),
            "adjacent_cos_generated": round(adjacent_cos(gen[k]), 4),
            "adjacent_cos_training": round(adjacent_cos(ref_lat[k]), 4),
            "adjacent_cos_random_weights": round(adjacent_cos(ctrl[k]), 4),
        }
        print(prompt, json.dumps(report["per_prompt"][prompt]), flush=True)
    report["adjacent_cos"] = {"generated": round(adjacent_cos(gen.flatten(0, 1)), 4),
                              "training": round(adjacent_cos(ref_lat.flatten(0, 1)), 4),
                              "random_weights": round(adjacent_cos(ctrl.flatten(0, 1)), 4)}
    print(json.dumps(report["adjacent_cos"]))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    if args.png:
        from PIL import Image

        Image.fromarray(strip(gen[:, 0], ref_lat[:, 0])).save(args.png, optimize=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
