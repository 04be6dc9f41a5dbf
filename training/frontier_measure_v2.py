"""Score an organism v2 frontier run (``training/frontier_run.py --organism small|large``): per-clip measures,
floors, CIs by prompt, the pre-declared primary comparisons P1–P4 for v2 (Holm), the best setting per method at
25 / 40 / 60 % saving. v1 runs are scored by ``training/frontier_measure.py``.

Every clip is decoded through the organism's own VAE (the run's weights, checked against its SHA-256; on a GPU
when there is one: a CPU decode takes ≈15 s a clip) and measured with ``latent_probe.organism.fidelity_v2``:
motion-model pass (``motion_v2.check``), motion error against the same seed's baseline clip (tolerance units)
and per statistic, PSNR / SSIM against it, flicker / jitter, and RMS latent distance to the nearest encoded
training clip of the class. Floors: the same prompt at another seed (baseline clips), pairs of training clips
of one class rendered by ``videos_v2`` and passed through the VAE, and those clips' own pass rate and
nearest-neighbour distance.

    python training/frontier_measure_v2.py --run run.json --latents lat --csv v2.csv --json v2.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from frontier_measure import merge_runs  # noqa: E402
from frontier_run import build_organism  # noqa: E402

from latent_probe.organism import fidelity as F  # noqa: E402
from latent_probe.organism import fidelity_v2 as F2  # noqa: E402
from latent_probe.organism import motion_v2, videos_v2  # noqa: E402
from latent_probe.study.frontier import add_saving, best_at_saving, frontier_summary  # noqa: E402
from latent_probe.study.inference import Declared, declared_comparisons  # noqa: E402

MEASURES = ("psnr", "ssim", "motion_error", "motion_pass", "flicker", "jitter", "nn_latent")
TRAIN_SEED, HELD_OUT_SEED = 31, 32   # training-reference renders (pool) and held-out renders (floors)


def primary(base: int = 40) -> tuple[tuple[str, str, str, str], ...]:
    """P1–P4 for v2 as declared in docs/frame-truncation.md ("Pre-declared for organism v2") at ``base`` = 40."""
    from frontier_run import setting_name, settings_v2

    names = {setting_name(s) for s in settings_v2(False, base)}
    s24, s16 = round(24 * base / 40), round(16 * base / 40)
    p = (("P1", "motion_error", f"truncation_s{base}_k7uboundary", f"fewer_steps_s{s24}"),
         ("P2", "psnr", f"truncation_s{base}_k7uboundary", f"fewer_steps_s{s24}"),
         ("P3", "motion_error", f"truncation+fewer_steps_s{s24}_k11uboundary", f"fewer_steps_s{s16}"),
         ("P4", "motion_pass", f"truncation_s{base}_k7uboundary", f"baseline_s{base}"))
    assert all(a in names and b in names for _, _, a, b in p), p
    return p


def decode_all(org: Any, latents: torch.Tensor) -> torch.Tensor:
    """[N, 16, 21, 16, 16] latents → RGB [N, 3, 81, 64, 64] in [0, 1] (the uint8 frames a user sees, / 255)."""
    return torch.stack([org.decode(z).permute(3, 0, 1, 2).float() / 255 for z in latents])


def training_reference(org: Any, classes: list[int], n_per_class: int, seed: int) -> dict[str, Any]:
    """Clips rendered by ``videos_v2`` (n per class of ``classes``), their latents (VAE encode) and their RGB
    after the VAE round trip (what a perfect DiT could at best produce)."""
    labels = torch.tensor(sorted(set(classes))).repeat_interleave(n_per_class)
    clips = videos_v2.render(labels, torch.Generator().manual_seed(seed))
    z = torch.cat([org.encode(clips.rgb[i:i + 1]).float().cpu() for i in range(len(labels))])
    return {"labels": labels, "latents": z, "rgb": decode_all(org, z)}


def nn_latent(z: torch.Tensor, labels: list[int], pool: dict[str, Any]) -> np.ndarray:
    """[N] RMS latent distance to the nearest training clip of the same class."""
    out = np.full(len(labels), np.nan)
    for k in set(labels):
        idx = [i for i, lab in enumerate(labels) if lab == k]
        out[idx] = F2.nearest_latent_distance(z[idx].float(), pool["latents"][pool["labels"] == k]).numpy()
    return out


def _summ(v: Any) -> dict[str, float]:
    v = np.asarray(v, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return {"mean": math.nan, "p05": math.nan, "p95": math.nan, "n": 0}
    return {"mean": float(v.mean()), "p05": float(np.percentile(v, 5)), "p95": float(np.percentile(v, 95)),
            "n": int(len(v))}


def floors(base_rgb: torch.Tensor, base_stats: list[dict], labels: list[int], train: dict, held: dict) -> dict:
    """What valid, different clips score: baseline clips of one prompt at other seeds; held-out training clips
    of one class after the VAE round trip (PSNR, SSIM, motion error), their pass rate, jitter and
    nearest-neighbour latent distance to the training pool."""
    out: dict[str, Any] = {}
    pairs = [(i, j) for i in range(len(labels)) for j in range(i + 1, len(labels)) if labels[i] == labels[j]]
    out["seed_psnr"] = [F.psnr(base_rgb[i], base_rgb[j]) for i, j in pairs]
    out["seed_ssim"] = [F.ssim(base_rgb[i], base_rgb[j]) for i, j in pairs]
    out["seed_motion_error"] = [F2.motion_error(base_stats[i], base_stats[j], labels[i]) for i, j in pairs]
    hl = held["labels"].tolist()
    hs = [motion_v2.measure(held["rgb"][i], hl[i]) for i in range(len(hl))]
    tp = [(i, j) for i in range(len(hl)) for j in range(i + 1, len(hl)) if hl[i] == hl[j]]
    out["train_psnr"] = [F.psnr(held["rgb"][i], held["rgb"][j]) for i, j in tp]
    out["train_ssim"] = [F.ssim(held["rgb"][i], held["rgb"][j]) for i, j in tp]
    out["train_motion_error"] = [F2.motion_error(hs[i], hs[j], hl[i]) for i, j in tp]
    out["train_motion_pass"] = [float(all(motion_v2.check(hs[i], hl[i]).values())) for i in range(len(hl))]
    out["train_jitter"] = [F2.frame_flicker(held["rgb"][i], hl[i])["jitter"] for i in range(len(hl))]
    out["train_flicker"] = [F2.frame_flicker(held["rgb"][i], hl[i])["brightness"] for i in range(len(hl))]
    out["train_nn_latent"] = nn_latent(held["latents"], hl, train)
    return {k: _summ(v) for k, v in out.items()}


def markdown(out: dict, summ: pd.DataFrame) -> str:
    saving = out["saving_axis"]
    lines = [f"| setting | {saving} saved % | token-steps saved % | PSNR dB | SSIM | motion error (tol.) | "
             "motion pass | jitter px | latent NN |", "|---|" + "---:|" * 8]

    def ci(r: dict, m: str, d: int = 2, scale: float = 1.0) -> str:
        v, lo, hi = r.get(m), r.get(f"{m}_low"), r.get(f"{m}_high")
        if v is None or not np.isfinite(v):
            return "–"
        if lo is None or not np.isfinite(lo):
            return f"{scale * v:.{d}f}"
        return f"{scale * v:.{d}f} [{scale * lo:.{d}f}, {scale * hi:.{d}f}]"

    for r in summ.to_dict("records"):
        lines.append(f"| {r['setting']} | {ci(r, saving, 1, 100)} | {100 * r['saving_token_steps']:.1f} | "
                     f"{ci(r, 'psnr')} | {ci(r, 'ssim', 3)} | {ci(r, 'motion_error')} | {ci(r, 'motion_pass')} | "
                     f"{ci(r, 'jitter', 3)} | {ci(r, 'nn_latent', 3)} |")
    lines += ["", "| floor | mean | 5–95 % | n |", "|---|---:|---:|---:|"]
    for k, v in out["floors"].items():
        lines.append(f"| {k} | {v['mean']:.3f} | {v['p05']:.3f} – {v['p95']:.3f} | {v['n']} |")
    lines += ["", "| # | measure | A − B | clips (dropped) | mean [95 % CI by prompt] | p (sign flip over prompts) | "
              "p (Holm, whole family) |",
              "|---|---|---|---:|---:|---:|---:|"]
    for r in out["primary"]:
        if r["status"] == "tested":
            lines.append(f"| {r['id']} | {r['measure']} | {r['a']} − {r['b']} | {r['n_clips']} ({r['n_dropped']}) | "
                         f"{r['mean']:.3f} [{r['low']:.3f}, {r['high']:.3f}] | {r['p_value']:.4f} | "
                         f"{r['p_holm']:.4f} |")
        else:
            lines.append(f"| {r['id']} | {r['measure']} | {r['a']} − {r['b']} | {r['n_clips']} ({r['n_dropped']}) | "
                         f"{r['status']} (p = 1 in the family) | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, nargs="+", help="run JSON file(s) of one organism and clip list")
    p.add_argument("--latents", required=True)
    p.add_argument("--csv", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--weights", default=None, help="the weights file (default: the one the run records)")
    p.add_argument("--train-per-class", type=int, default=16, help="training clips per class (NN pool)")
    p.add_argument("--held-out-per-class", type=int, default=4, help="held-out training clips per class (floors)")
    p.add_argument("--resamples", type=int, default=4000)
    p.add_argument("--markdown", help="also write the tables here")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    device = "cuda" if torch.cuda.is_available() else "cpu"

    runs = [json.loads(Path(r).read_text()) for r in args.run]
    run = runs[0]
    if "organism" not in run:
        raise SystemExit(f"{args.run[0]} is not an organism v2 run (score v1 runs with frontier_measure.py)")
    merge_runs(runs, args.run, same=("clips", "organism"))
    who = run["organism"]
    base_steps = who["base_steps"]
    baseline, repeat_name = f"baseline_s{base_steps}", f"baseline_s{base_steps}_repeat1"
    if baseline not in run["settings"]:
        raise SystemExit(f"the run has no {baseline}: nothing to compare against")
    for s in run["settings"].values():   # each truncation variant is its own method in the tables
        if "variant" in s:
            v = s["variant"]
            s["method"] = "truncation_growing" if v.startswith("grow") else f"truncation+{v}"
    org = build_organism(who["size"], device, args.weights or who["weights"], who["sha256"], who["random_weights"])
    clips = run["clips"]
    labels = [c["prompt_index"] for c in clips]
    train = training_reference(org, labels, args.train_per_class, TRAIN_SEED)
    held = training_reference(org, labels, args.held_out_per_class, HELD_OUT_SEED)
    lat = {name: torch.load(Path(args.latents) / f"{name}.pt").float() for name in run["settings"]}
    repeat = None
    if repeat_name in run["settings"]:
        rep = run["settings"].pop(repeat_name)
        a, b = (np.array([r["wall_s"] for r in x]) for x in (run["settings"][baseline]["rows"], rep["rows"]))
        repeat = {"bit_identical": bool(torch.equal(lat.pop(repeat_name), lat[baseline])),
                  "wall_ratio_mean": float((b / a).mean()), "wall_ratio_min": float((b / a).min()),
                  "wall_ratio_max": float((b / a).max())}
    base_rgb = decode_all(org, lat[baseline])
    base_stats = [motion_v2.measure(base_rgb[i], labels[i]) for i in range(len(labels))]
    rows = []
    for name, s in run["settings"].items():
        rgb = base_rgb if name == baseline else decode_all(org, lat[name])
        nn = nn_latent(lat[name], labels, train)
        for i, r in enumerate(s["rows"]):
            m = F2.score_clip(rgb[i], base_rgb[i], labels[i], base_stats[i])
            rows.append({"setting": name, "method": s["method"], "steps": s["steps"], "keep": s.get("keep"),
                         "until": s.get("until"), "threshold": s.get("threshold"),
                         "prompt": r["prompt_index"], "seed": r["seed"], "class": labels[i],
                         **{k: r[k] for k in ("thread_cpu_s", "dit_s", "wall_s", "token_steps", "dit_calls",
                                              "blocks_run")},
                         "units_skipped": (1 - r["units_computed"] / r["units_called"]) if r.get("units_called")
                         else np.nan, **m, "nn_latent": nn[i]})
        print(f"scored {name}", flush=True)
    table = pd.DataFrame(rows)
    time_cols = ["thread_cpu_s", "wall_s", "dit_s", "token_steps"]
    for col in time_cols:
        table = add_saving(table, baseline, col)
    table.to_csv(args.csv, index=False, float_format="%.6g")
    saving = "saving_thread_cpu_s" if run["machine"].startswith("cpu") else "saving_wall_s"
    summ = frontier_summary(table, [*MEASURES, *[f"saving_{c}" for c in time_cols], "blocks_run", "units_skipped"],
                            extra=("method", "steps"), n_resamples=args.resamples)
    prim = declared_comparisons(table, [Declared(*d) for d in primary(base_steps)], n_resamples=args.resamples)
    methods = summ[summ.method != "baseline"]
    best = {m: best_at_saving(methods, m, saving, higher_is_better=hib).to_dict("records")
            for m, hib in (("psnr", True), ("motion_error", False), ("motion_pass", True))
            if np.isfinite(methods[m]).any()}   # motion_error is undefined everywhere when every object is lost
    out = {"organism": who, "saving_axis": saving, "machine": run["machine"], "torch": run["torch"],
           "baseline": baseline, "n_clips": len(clips), "trained": not who["random_weights"],
           "floors": floors(base_rgb, base_stats, labels, train, held), "settings": summ.to_dict("records"),
           "primary": prim, "best_at_saving": best, "baseline_repeat": repeat}
    Path(args.json).write_text(json.dumps(out, indent=1, default=lambda o: None if o is None else float(o)))
    md = markdown(out, summ)
    if args.markdown:
        Path(args.markdown).write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
