"""Inside the organism's DiT (docs/inside-the-dit.md): block probes over prompts × seeds, with floors and CIs.

    PYTHONPATH=$PWD python training/inside_the_dit.py --seeds 2 --json docs/data/inside_the_dit.json \
        --png-prefix docs/inside_the_dit

Every generation runs with ``LatentProbe(pipe, None, capture=(), blocks="all", attention_reach=Q)`` (in memory).
Floors:
* continuity: the adjacent-frame cosine of *two different clips* — frame f of clip A against frame f+1 of clip B,
  same step and block (clips of two prompts, same seed) — from block outputs this script keeps with its own plain
  forward hooks (cond branch);
* reach: the share uniform attention would give at distance d, (2(F'−d) − [d=0]·F')/F'²;
* control: the same pipeline with random weights (``random_organism``), 4 clips.
Statistics: per prompt the seeds are averaged, then prompts are resampled (bootstrap, 2000 draws) for 95 % CIs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from latent_probe import LatentProbe
from latent_probe.metrics.blocks import skip_map
from latent_probe.organism import load_organism, random_organism
from latent_probe.views.blocks import block_heatmaps, reach_curves, step_block_tables


class OutputKeeper:
    """Plain forward hooks: each block's output [F', T·D] of the cond call of every step (float32, CPU)."""

    def __init__(self, pipe, frames: int):
        self.frames = frames
        self.outs: list[list[np.ndarray]] = []  # call → block → [F', T·D]
        self.handles = []
        for expert in (pipe.transformer, pipe.transformer_2):
            self.handles.append(expert.register_forward_pre_hook(lambda m, a: self.outs.append([])))
            for block in expert.blocks:
                self.handles.append(block.register_forward_hook(self._post))

    def _post(self, module, args, output):
        self.outs[-1].append(output[0].detach().float().reshape(self.frames, -1).numpy().copy())

    def cond(self) -> np.ndarray:
        """[S, block, F', T·D] of the cond calls (sequential CFG: even calls)."""
        return np.stack([np.stack(c) for c in self.outs[0::2]])

    def remove(self):
        for h in self.handles:
            h.remove()


def cross_clip_cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """cos(frame f of a, frame f+1 of b), averaged over f: [S, block]."""
    x, y = a[:, :, :-1], b[:, :, 1:]
    num = (x.astype(np.float64) * y).sum(-1)
    den = np.sqrt((x.astype(np.float64) ** 2).sum(-1) * (y.astype(np.float64) ** 2).sum(-1))
    return (num / den).mean(-1)


def one_run(org, prompt: int, seed: int, reach: int, keep: bool):
    keeper = OutputKeeper(org.pipe, org.config.latent_frames) if keep else None
    try:
        with LatentProbe(org.pipe, None, capture=(), blocks="all", attention_reach=reach) as probe:
            org.generate(prompt, seed=seed)
    finally:
        if keeper is not None:
            keeper.remove()
    run = probe.run
    m = run.blocks.metrics()
    tables = step_block_tables(m)
    tables["mag"] = m["mag"][:, 0, 0]
    info = dict(sigmas=np.asarray(run.sigmas), experts=[str(e) for e in run.experts], blocks=run.blocks.indices)
    run.close()
    return tables, info, (keeper.cond() if keeper is not None else None)


def bootstrap(per_prompt: np.ndarray, draws: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over prompts and its 95 % percentile CI, resampling prompts ([P, ...] → [...] ×3)."""
    rng = np.random.default_rng(seed)
    p = per_prompt.shape[0]
    idx = rng.integers(0, p, size=(draws, p))
    means = np.nanmean(per_prompt[idx], axis=1)
    return np.nanmean(per_prompt, 0), np.nanpercentile(means, 2.5, axis=0), np.nanpercentile(means, 97.5, axis=0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--reach", type=int, default=16, help="query tokens sampled a frame")
    ap.add_argument("--controls", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=None, help="the first N prompts only (a quick try)")
    ap.add_argument("--threshold", type=float, default=0.05, help="skip-map threshold on the update's rel. L1 change")
    ap.add_argument("--json", required=True)
    ap.add_argument("--png-prefix", default=None)
    ap.add_argument("--figures-only", action="store_true", help="redraw the PNGs from --json")
    args = ap.parse_args()
    if args.figures_only:
        figures(json.loads(Path(args.json).read_text()), args.png_prefix)
        return
    torch.set_num_threads(1)
    t0 = time.time()
    org = load_organism()
    P = args.prompts or len(org.prompts)
    runs: dict[tuple[int, int], dict] = {}
    floors = []
    info = None
    for seed in range(args.seeds):
        kept_prev = None
        for p in range(P):
            tables, info, kept = one_run(org, p, seed, args.reach, keep=True)
            runs[p, seed] = tables
            if kept_prev is not None:
                floors.append(cross_clip_cos(kept_prev, kept))
            kept_prev = kept
            print(f"prompt {p} seed {seed}: {time.time() - t0:.0f} s", flush=True)
    ctrl_org = random_organism(seed=0)
    controls = [one_run(ctrl_org, p, 0, args.reach, keep=False)[0] for p in range(args.controls)]
    F = org.config.latent_frames
    d = np.arange(F)
    uniform = np.where(d == 0, F, 2 * (F - d)) / F**2
    names = ["continuity", "update", "change", "reach", "mag"]
    per_prompt = {n: np.stack([np.nanmean([runs[p, s][n] for s in range(args.seeds)], 0) for p in range(P)])
                  for n in names}
    stats = {n: bootstrap(per_prompt[n]) for n in names}
    floor = np.stack(floors)  # [pairs, S, block]
    reach_blocks = per_prompt["reach"].mean(2)  # [P, S, F'] averaged over blocks
    reach_mean, reach_lo, reach_hi = bootstrap(reach_blocks)
    mean_d = (per_prompt["reach"] * d).sum(-1)  # [P, S, block] expected frame distance of attention mass
    md = bootstrap(mean_d.mean(2))
    # early vs late on the same clips (paired): per prompt, first step − last step, and high-noise − low-noise mean
    high = np.array([e == info["experts"][0] for e in info["experts"]])
    md_prompt = mean_d.mean(2)  # [P, S]
    paired = {"first_minus_last": bootstrap(md_prompt[:, 0] - md_prompt[:, -1]),
              "high_minus_low": bootstrap(md_prompt[:, high].mean(1) - md_prompt[:, ~high].mean(1))}
    ctrl = {n: np.mean([c[n] for c in controls], 0) for n in names}
    changes = np.stack([runs[k]["change"] for k in sorted(runs)])  # [runs, S, block]
    skips = skip_map(changes, info["experts"], info["blocks"], args.threshold)
    out = {
        "settings": dict(prompts=list(org.prompts[:P]), seeds=args.seeds, steps=len(info["sigmas"]),
                         attention_reach=args.reach, controls=args.controls, threshold=args.threshold,
                         machine="2-core CPU machine (shared)", wall_s=round(time.time() - t0, 1)),
        "sigmas": info["sigmas"].tolist(), "experts": info["experts"], "blocks": info["blocks"],
        **{n: {"mean": stats[n][0].tolist(), "lo": stats[n][1].tolist(), "hi": stats[n][2].tolist(),
               "control": ctrl[n].tolist()} for n in ("continuity", "update", "change", "mag")},
        "continuity_floor": {"mean": floor.mean(0).tolist(), "max": floor.max(0).tolist(),
                             "pairs": int(floor.shape[0])},
        "reach": {"mean": reach_mean.tolist(), "lo": reach_lo.tolist(), "hi": reach_hi.tolist(),
                  "by_block": stats["reach"][0].tolist(), "uniform": uniform.tolist(),
                  "control": ctrl["reach"].mean(1).tolist()},
        "mean_distance": {"mean": md[0].tolist(), "lo": md[1].tolist(), "hi": md[2].tolist(),
                          "uniform": float((uniform * d).sum()),
                          "control": (ctrl["reach"] * d).sum(-1).mean(1).tolist(),
                          "paired": {k: [float(v) for v in t] for k, t in paired.items()},
                          "per_prompt": md_prompt.tolist()},
        "skip_map": skips,
        "per_run": {"keys": [list(k) for k in sorted(runs)], "change": changes.tolist(),
                    "continuity": np.stack([runs[k]["continuity"] for k in sorted(runs)]).tolist()},
    }
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json} ({time.time() - t0:.0f} s)")
    if args.png_prefix:
        figures(out, args.png_prefix)


def figures(out: dict, prefix: str) -> None:
    """The page's PNGs from the study's JSON (``--figures-only`` redraws them without rerunning)."""
    from latent_probe.views.static import export_figures

    sig, exp, blocks = np.asarray(out["sigmas"]), out["experts"], out["blocks"]
    st = out["settings"]
    uniform = np.asarray(out["reach"]["uniform"])
    local = lambda r: np.asarray(r)[..., :2].sum(-1) / uniform[:2].sum()  # noqa: E731 - mass at d ≤ 1 ÷ uniform's
    tables = {n: np.asarray(out[n]["mean"]) for n in ("update", "change")}
    tables["excess"] = np.asarray(out["continuity"]["mean"]) - np.asarray(out["continuity_floor"]["mean"])
    tables["locality"] = local(out["reach"]["by_block"])
    heat = block_heatmaps(tables, blocks, sig, exp,
                          title=f"organism: mean of {len(st['prompts'])} prompts × {st['seeds']} seeds (cond branch)")
    ctrl = {n: np.asarray(out[n]["control"]) for n in ("continuity", "update", "change")}
    heat_ctrl = block_heatmaps(ctrl, blocks, sig, exp, title=f"control: random weights, {st['controls']} clips")
    steps = sorted({0, 4, 8, 9, 14, len(sig) - 1})
    curves = reach_curves(np.asarray(out["reach"]["mean"]), sig, steps, np.asarray(out["reach"]["lo"]),
                          np.asarray(out["reach"]["hi"]), uniform,
                          title="attention's temporal reach (mean over blocks and heads; band: 95 % CI over prompts)")
    export_figures([heat, heat_ctrl, curves], [f"{prefix}_heatmaps.png", f"{prefix}_control.png",
                                               f"{prefix}_reach.png"], width=1300)


if __name__ == "__main__":
    main()
