"""Frame truncation measured on the model organism: baseline vs truncated, every setting, per clip.

For each setting (keep × until × positions × fill) one batched generation of every (prompt, seed) clip runs
under ``LatentProbe(..., intervene=FrameTruncation(...))`` with the baseline's noise, and each clip is
compared with its baseline:

* video fidelity: PSNR (dB, RGB in [0, 1]) and SSIM (``skimage.metrics.structural_similarity``, per frame,
  7×7 window, averaged over frames) of the decoded clip at latent resolution (16×16, the renderer's pixels);
* final latent fidelity: ‖x̂₀,trunc − x̂₀,base‖ / ‖x̂₀,base‖ of the last step's x̂₀;
* continuity of the result: mean adjacent-frame normalised L2 of the final latent (truncated and baseline:
  does the truncated video flicker more?);
* cost: token-steps skipped (the intervention's own counters) and DiT time (CUDA events around every expert
  call, summed; warm-up generations first);
* the offline estimate: ``frame_errors`` of the baseline's x̂₀ rebuilt from the same key frames with the same
  fill, per clip and step, to check whether feasibility predicts the measured fidelity.

Writes one JSON file (``--out``); ``training/truncation_report.py`` turns it into the table and plot of
docs/frame-truncation.md. Run on the GPU machine (≈4 min on an H200) or, small, on a CPU
(``--prompts 2 --seeds 1 --quick``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latent_probe import FrameTruncation, LatentProbe  # noqa: E402
from latent_probe.study.timing import DiTTimer  # noqa: E402
from latent_probe.interventions import default_keyframes  # noqa: E402
from latent_probe.metrics import adjacent_frame_metrics  # noqa: E402
from latent_probe.metrics.feasibility import frame_errors  # noqa: E402
from latent_probe.organism import DEFAULT_GUIDANCE, load_organism  # noqa: E402
from latent_probe.organism.videos import to_rgb  # noqa: E402


def batched_call(org, prompts: list[int], seeds: list[int], steps: int, guidance: float) -> dict:
    """Pipeline arguments for all (prompt, seed) clips at once; clip b's noise comes from its own seed."""
    pe = torch.cat([org.embeds(p) for p in prompts])
    ne = org.null_embeds[None].expand(len(prompts), -1, -1)
    gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    return dict(prompt_embeds=pe, negative_prompt_embeds=ne, height=org.config.height, width=org.config.height,
                num_frames=org.config.num_frames, num_inference_steps=steps, guidance_scale=guidance,
                generator=gens, output_type="latent")


def generate(org, call: tuple, intervene) -> tuple[torch.Tensor, object, float, float, object]:
    """(final latent [B, 16, F, h, w] on CPU, Run, DiT seconds, wall seconds, intervention). ``call`` is
    ``batched_call``'s arguments: the generators are made anew for every generation, so every setting starts
    from the baseline's noise."""
    kwargs = batched_call(*call)
    cuda = torch.cuda.is_available()
    with LatentProbe(org.pipe, None, capture=("x0",), store_dtype="float32", intervene=intervene) as probe:
        timer = DiTTimer(list(probe.parts.experts.values()), cpu_clock="wall").attach()
        try:
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = org.pipe(**kwargs).frames
            if cuda:
                torch.cuda.synchronize()
            wall = time.perf_counter() - t0
        finally:
            timer.detach()
    return out.float().cpu(), probe.run, timer.seconds(), wall, intervene


def clip_metrics(final: torch.Tensor, base: torch.Tensor, x0_last: np.ndarray, x0_base_last: np.ndarray) -> dict:
    """Per-clip fidelity of one setting against the baseline: lists of length B."""
    from skimage.metrics import structural_similarity

    rgb_t, rgb_b = to_rgb(final).numpy(), to_rgb(base).numpy()      # [B, 3, F, h, w] in [0, 1]
    out = {"psnr_db": [], "ssim": [], "x0_rel_l2": [], "flicker_l2": [], "flicker_l2_base": []}
    for b in range(final.shape[0]):
        mse = float(np.mean((rgb_t[b].astype(np.float64) - rgb_b[b]) ** 2))
        out["psnr_db"].append(math.inf if mse == 0 else 10 * math.log10(1.0 / mse))
        a, r = rgb_t[b].transpose(1, 2, 3, 0), rgb_b[b].transpose(1, 2, 3, 0)   # [F, h, w, 3]
        out["ssim"].append(float(np.mean([structural_similarity(a[f], r[f], channel_axis=-1, data_range=1.0,
                                                                win_size=7) for f in range(a.shape[0])])))
        d = x0_last[b].astype(np.float64) - x0_base_last[b]
        out["x0_rel_l2"].append(float(np.linalg.norm(d) / np.linalg.norm(x0_base_last[b])))
    out["flicker_l2"] = [float(v) for v in adjacent_frame_metrics(final).l2_mean]
    out["flicker_l2_base"] = [float(v) for v in adjacent_frame_metrics(base).l2_mean]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="truncation_results.json", help="JSON file to write")
    p.add_argument("--prompts", type=int, default=8, help="how many of the organism's prompts (classes)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per prompt")
    p.add_argument("--steps", type=int, default=20, help="sampling steps")
    p.add_argument("--quick", action="store_true", help="a few settings only (a CPU smoke run)")
    args = p.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False   # fidelity differences, not TF32 rounding
    torch.backends.cudnn.allow_tf32 = False
    org = load_organism(device=device)
    clips = [(pr, s) for pr in range(args.prompts) for s in range(args.seeds)]
    kwargs = (org, [c[0] for c in clips], [c[1] for c in clips], args.steps, DEFAULT_GUIDANCE)

    keeps = (3, 5) if args.quick else (2, 3, 5, 7)
    untils = ("boundary", 6) if args.quick else (3, 6, "boundary", 12)
    positions = ("true", "compressed")
    fills = ("linear",) if args.quick else ("linear", "slerp")

    # warm-up: the baseline shapes and each key-frame count once (kernel selection, allocator), untimed
    first = generate(org, kwargs, None)[0]
    for k in keeps:
        generate(org, kwargs, FrameTruncation(keep=k, until=1))
    t_start = time.perf_counter()
    base, base_run, base_dit, base_wall, _ = generate(org, kwargs, None)
    x0_base = base_run.latents("x0")[:]                                    # [S, B, C, F, h, w]
    F = int(base.shape[2])
    all_kept = generate(org, kwargs, FrameTruncation(keep=F, until="boundary"))[0]
    checks = {"baseline_repeat_max_abs_diff": float((first - base).abs().max()),    # run-to-run determinism
              "keep_all_frames_bit_identical": bool(torch.equal(all_kept, base))}
    print(checks, flush=True)
    experts = [str(e) for e in base_run.experts]
    n_high = sum(e == experts[0] for e in experts[: next((i for i, e in enumerate(experts) if e != experts[0]),
                                                          len(experts))])
    result = {"machine": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "torch": torch.__version__, "steps": args.steps, "guidance": DEFAULT_GUIDANCE,
              "checks": checks, "clips": [{"prompt": org.prompts[pr], "prompt_index": pr, "seed": s} for pr, s in clips],
              "num_frames": int(base.shape[2]), "boundary_steps": n_high, "experts": experts,
              "sigmas": [float(v) for v in base_run.sigmas],
              "baseline": {"dit_s": base_dit, "wall_s": base_wall,
                           "flicker_l2": [float(v) for v in adjacent_frame_metrics(base).l2_mean]},
              "feasibility": {}, "settings": []}
    for k, fill in itertools.product(keeps, fills):       # the offline estimate: [B, S] per (keep, fill)
        keys = default_keyframes(int(base.shape[2]), k)     # the keys FrameTruncation(keep=k) uses
        per = [[frame_errors(torch.from_numpy(x0_base[s, b:b + 1]).double(), keys, fill)[0]
                for s in range(x0_base.shape[0])] for b in range(x0_base.shape[1])]
        result["feasibility"][f"{k}/{fill}"] = {"keys": list(keys), "rel_l2": per}
    for k, until, pos, fill in itertools.product(keeps, untils, positions, fills):
        ft = FrameTruncation(keep=k, until=until, positions=pos, fill=fill)
        final, run, dit, wall, ft = generate(org, kwargs, ft)
        x0 = run.latents("x0")[-1]
        m = clip_metrics(final, base, x0, x0_base[-1])
        until_steps = n_high if until == "boundary" else int(until)
        result["settings"].append({"keep": k, "until": until, "until_steps": until_steps, "positions": pos,
                                   "fill": fill, "keys": ft.keys_used, "dit_s": dit, "wall_s": wall,
                                   "token_steps_skipped": ft.token_steps_skipped_fraction, **m})
        print(f"keep {k} until {until!s:>8} {pos:>10} {fill:>6}: PSNR {np.mean(m['psnr_db']):6.2f} dB, "
              f"SSIM {np.mean(m['ssim']):.4f}, x0 rel {np.mean(m['x0_rel_l2']):.4f}, "
              f"skipped {ft.token_steps_skipped_fraction:.3f}, DiT {dit:.3f} s vs {base_dit:.3f} s", flush=True)
    result["seconds"] = time.perf_counter() - t_start
    Path(args.out).write_text(json.dumps(result))
    print(f"wrote {args.out} ({len(result['settings'])} settings × {len(clips)} clips, {result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
