"""Score the frontier run (``training/frontier_run.py``): per-clip measures, floors, CIs by prompt, the
pre-declared primary comparisons (Holm), the best setting per method at 25 / 40 / 60 % measured saving.

Writes ``--csv`` (one row per setting × clip: times, token-steps, every measure) and ``--json`` (floors,
per-setting summaries, distances to the training distribution, primary comparisons, frontier table) —
the data behind docs/frame-truncation.md — and prints the tables as markdown.

    python training/frontier_measure.py --run /tmp/frontier/run.json [run2.json ...] --latents /tmp/frontier/lat \
        --csv docs/data/frontier_organism.csv --json docs/data/frontier_organism.json
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

from latent_probe.organism import fidelity as F  # noqa: E402
from latent_probe.organism import quality, videos  # noqa: E402
from latent_probe.study.frontier import add_saving, best_at_saving, frontier_summary  # noqa: E402
from latent_probe.study.inference import Declared, class_table, declared_comparisons  # noqa: E402

BASELINE = "baseline_s20"
REPEAT = "baseline_s20_repeat1"
MEASURES = ("psnr", "ssim", "motion_error", "residual", "visible", "flicker", "jitter", "nn_motion", "nn_latent")
PRIMARY = (  # declared in docs/frame-truncation.md before scoring
    ("P1", "motion_error", "truncation_s20_k3uboundary", "fewer_steps_s12"),
    ("P2", "psnr", "truncation_s20_k3uboundary", "fewer_steps_s12"),
    ("P3", "motion_error", "truncation+fewer_steps_s12_k7uboundary", "fewer_steps_s8"),
    ("P4", "residual", "truncation_s20_k3uboundary", BASELINE),
)


def training_reference(n_per_class: int, seed: int) -> videos.Clips:
    labels = torch.arange(len(videos.PROMPTS)).repeat_interleave(n_per_class)
    return videos.render(labels, torch.Generator().manual_seed(seed))


def floors(base_rgb: torch.Tensor, clips: list[dict], train: videos.Clips, train2: videos.Clips) -> dict:
    """What two valid, different clips score: same prompt other seed (baseline), two training clips of one
    class; and the estimators' own floor (training clips against their true motion)."""
    labels = [c["prompt_index"] for c in clips]
    out = {}
    for name, fn in (("psnr", F.psnr), ("ssim", F.ssim)):
        out[f"seed_{name}"] = F.pair_floor(list(base_rgb), labels, fn)
    seed_pairs = [(i, j) for i in range(len(labels)) for j in range(i + 1, len(labels)) if labels[i] == labels[j]]
    out["seed_motion_error"] = np.asarray([F.motion_error(base_rgb[i], base_rgb[j], labels[i]) for i, j in seed_pairs])
    tl = train2.motion.labels.tolist()
    pairs = [(i, j) for i in range(len(tl)) for j in range(i + 1, len(tl)) if tl[i] == tl[j]]
    out["train_psnr"] = np.asarray([F.psnr(train2.rgb[i], train2.rgb[j]) for i, j in pairs])
    out["train_ssim"] = np.asarray([F.ssim(train2.rgb[i], train2.rgb[j]) for i, j in pairs])
    out["train_motion_error"] = np.asarray([F.motion_error(train2.rgb[i], train2.rgb[j], tl[i]) for i, j in pairs])
    tl = train.motion.labels.tolist()
    out["estimator_motion_error"] = np.asarray([F.motion_truth_error(train.rgb[b], train.motion, b)
                                                for b in range(len(tl))])
    own = [F.motion_fidelity(train.rgb[b], tl[b]) for b in range(len(tl))]
    fl = [F.frame_flicker(train.rgb[b], tl[b]) for b in range(len(tl))]
    out["train_residual"] = np.asarray([o["residual"] for o in own])
    out["train_visible"] = np.asarray([o["visible"] for o in own])
    out["train_flicker"] = np.asarray([f["brightness"] for f in fl])
    out["train_jitter"] = np.asarray([f["jitter"] for f in fl if math.isfinite(f["jitter"])])
    # distance of held-out training clips to the training pool (what a perfect sampler scores)
    f1 = np.stack([F.motion_features(train2.rgb[b], int(train2.motion.labels[b])) for b in range(len(train2.motion.labels))])
    out["train_nn_motion"] = nn_by_class(f1, train2.motion.labels.tolist(), train)
    out["train_nn_latent"] = nn_latent(train2.latents, train2.motion.labels.tolist(), train)
    return {k: {"mean": float(np.nanmean(v)), "p05": float(np.nanpercentile(v, 5)),
                "p95": float(np.nanpercentile(v, 95)), "min": float(np.nanmin(v)), "max": float(np.nanmax(v)),
                "n": int(np.isfinite(v).sum())} for k, v in out.items()}


_POOL: dict = {}


def _pool_features(train: videos.Clips) -> np.ndarray:
    if "motion" not in _POOL:
        _POOL["motion"] = np.stack([F.motion_features(train.rgb[b], int(train.motion.labels[b]))
                                    for b in range(len(train.motion.labels))])
    return _POOL["motion"]


def nn_by_class(rows: np.ndarray, labels: list[int], train: videos.Clips) -> np.ndarray:
    """Nearest-neighbour distance in motion-feature space to training clips of the same class."""
    pool, tl = _pool_features(train), train.motion.labels.numpy()
    out = np.full(len(rows), np.nan)
    for i, (r, l) in enumerate(zip(rows, labels)):
        if np.isfinite(r).all():
            out[i] = F.nearest_feature_distance(r[None], pool[tl == l])[0]
    return out


def nn_latent(latents: torch.Tensor, labels: list[int], train: videos.Clips) -> np.ndarray:
    """RMS latent distance to the nearest training clip of the same class (``quality.nearest_distance``)."""
    tl = train.motion.labels
    return np.asarray([float(quality.nearest_distance(latents[i:i + 1], train.latents[tl == l])[0])
                       for i, l in enumerate(labels)])


def _ci(r: dict, m: str, digits: int = 2, scale: float = 1.0) -> str:
    v, lo, hi = (r.get(m), r.get(f"{m}_low"), r.get(f"{m}_high"))
    if v is None or not np.isfinite(v):
        return "–"
    return f"{scale * v:.{digits}f} [{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"


VARIANT_METHOD = {"renoise": "truncation+renoise", "motion": "truncation+motion_fill", "x0": "truncation+x0_fill",
                  "grow3": "truncation_growing", "grow5": "truncation_growing"}
PER_CLASS = ("fewer_steps_s12", "first_block_cache_s20_t0.1", "truncation_s20_k3uboundary",
             "truncation_s20_k7uboundary", "truncation+fewer_steps_s12_k7uboundary")


def class_markdown(tab: pd.DataFrame) -> str:
    """Motion error per class (one prompt a class: the CI is over its 3 seeds, within-prompt spread)."""
    settings = [s for s in PER_CLASS if s in set(tab.setting)]
    lines = ["", "Motion error (px/frame) per class; one prompt a class, so the interval is over its 3 seeds:", "",
             "| class | " + " | ".join(settings) + " |", "|---|" + "---:|" * len(settings)]
    for c in sorted(tab["class"].unique()):
        cells = []
        for st in settings:
            r = tab[(tab.setting == st) & (tab["class"] == c)].iloc[0]
            cells.append(f"{r['mean']:.3f} [{r['low']:.3f}, {r['high']:.3f}]" if r["n_clips"] else "–")
        lines.append(f"| {c}: {videos.PROMPTS[c]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _lost(r: dict, n: int) -> str:
    """A note when the object was lost in some clips (their motion error is undefined and left out)."""
    return "" if r["motion_error_n"] == n else f" ({n - r['motion_error_n']} clips lost the object)"


def _identical(r: dict, n: int) -> str:
    """A note when clips equal the baseline bit for bit (PSNR ∞: left out of the mean)."""
    return "" if r["psnr_n"] == n or r["method"] == "baseline" else f" ({n - r['psnr_n']} clips identical: ∞)"


def markdown(out: dict, summ: pd.DataFrame, saving: str) -> str:
    """The tables of docs/frame-truncation.md."""
    n = out["n_clips"]
    lines = ["| setting | time saved % (priced at equal load¹) | thread CPU saved % (as run) | wall saved % | "
             "token-steps saved % | DiT calls whose last block ran | units skipped % | "
             "PSNR dB | motion error px/frame | own residual px | visible | jitter px | latent NN dist. | "
             "Fréchet motion | Fréchet latent |", "|---|" + "---:|" * 14]
    for r in summ.to_dict("records"):
        mark = "²" if r.get("timed") == "interleaved" else ""
        skipped = "–" if not np.isfinite(r.get("units_skipped", np.nan)) else f"{100 * r['units_skipped']:.1f}"
        lines.append(f"| {r['setting']} | {_ci(r, saving, 1, 100)}{mark} | {_ci(r, 'saving_thread_cpu_s', 1, 100)} | "
                     f"{100 * r['saving_wall_s']:.1f} | "
                     f"{100 * r['saving_token_steps']:.1f} | {r['blocks_run']:.1f} of {2 * r['steps']} | {skipped} | {_ci(r, 'psnr')}{_identical(r, n)} | "
                     f"{_ci(r, 'motion_error', 3)}{_lost(r, n)} | {_ci(r, 'residual', 3)} | {r['visible']:.3f} | "
                     f"{_ci(r, 'jitter', 3)} | {_ci(r, 'nn_latent', 3)} | {r['frechet_motion']:.3f} | "
                     f"{r['frechet_latent']:.3f} |")
    lines += ["", "¹ DiT calls priced from call-shape costs timed interleaved (docs/data/frontier_calls.json). "
              "² Caches and truncation variants: thread CPU time against baseline generations interleaved in the "
              "same process (every 6th clip), scaled to the priced baseline; the interval is over clips only, the "
              "interleaved baseline's spread is in docs/data/frontier_organism.json (paired_baseline_thread_cpu_s). "
              "Units skipped: a block's attn1 / attn2 / ffn called but not computed (SkipCounter)."]
    rep = out.get("baseline_repeat")
    if rep:
        lines += ["", f"Baseline run again (all 24 clips): bit-identical final latents: {rep['bit_identical']}; its "
                  f"as-run thread CPU time was {rep['thread_cpu_ratio_mean']:.2f}× the first run's "
                  f"({rep['thread_cpu_ratio_min']:.2f}–{rep['thread_cpu_ratio_max']:.2f} per clip)."]
    fl = out["floors"]
    lines += ["", "| floor (what valid, different clips score) | mean | 5–95 % | n |", "|---|---:|---:|---:|"]
    for k, v in fl.items():
        lines.append(f"| {k} | {v['mean']:.3f} | {v['p05']:.3f} – {v['p95']:.3f} | {v['n']} |")
    lines.append(f"| Fréchet motion / latent, held-out training clips vs training | "
                 f"{out['frechet_floor']['frechet_motion']:.3f} / {out['frechet_floor']['frechet_latent']:.3f} | | |")
    lines += ["", "| # | measure | A − B | mean [95 % CI by prompt] | p (sign flip over prompts) | p (Holm, 4) |", "|---|---|---|---:|---:|---:|"]
    for r in out["primary"]:
        lines.append(f"| {r['id']} | {r['measure']} | {r['a']} − {r['b']} | {r['mean']:.3f} [{r['low']:.3f}, "
                     f"{r['high']:.3f}] | {r['p_value']:.4f} | {r['p_holm']:.4f} |" if r["status"] == "tested" else
                     f"| {r['id']} | {r['measure']} | {r['a']} − {r['b']} | {r['status']} | | |")
    for measure, recs in out["best_at_saving"].items():
        lines += ["", f"Best {measure} per method at a time saving ({saving}) of at least 25 / 40 / 60 % "
                  "(exploratory: a selection over settings):", "",
                  "| method | target | setting | saving % | " + measure + " |", "|---|---:|---|---:|---:|"]
        for r in recs:
            if r.get("setting") is None or (isinstance(r.get("setting"), float) and np.isnan(r["setting"])):
                lines.append(f"| {r['method']} | {100 * r['target']:.0f} % | none reaches it | | |")
                continue
            lines.append(f"| {r['method']} | {100 * r['target']:.0f} % | {r['setting']} | "
                         f"{_ci(r, saving, 1, 100)} | {_ci(r, measure, 3)} |")
    return "\n".join(lines) + "\n"


def write_figure(json_path: str, png: str) -> None:
    """docs/frontier_organism.png: ``views.frontier.frontier_from_json``, one colour per method (Dark24: more
    methods than the default palette's ten)."""
    from plotly.colors import qualitative

    from latent_probe.views.frontier import frontier_from_json

    fig = frontier_from_json(json_path)
    groups = [g for g in dict.fromkeys(tr.legendgroup for tr in fig.data) if g != "baseline"]
    for tr in fig.data:
        if tr.legendgroup != "baseline":
            c = qualitative.Dark24[groups.index(tr.legendgroup) % len(qualitative.Dark24)]
            tr.marker.color = c
            tr.line.color = c
    fig.update_layout(height=520)
    fig.write_image(png, scale=1.5)


def merge_runs(runs: list[dict[str, Any]], paths: list[str], same: tuple[str, ...] = ("clips",)) -> dict[str, Any]:
    """Run files of one clip list (v1 or v2) as one run: the first, with the others' settings added. Files whose
    ``same`` keys differ, or a setting in two files, are refused (SystemExit, one line)."""
    run = runs[0]
    for other in runs[1:]:
        if any(other.get(k) != run.get(k) for k in same):
            raise SystemExit(f"the run files do not cover the same {' and '.join(reversed(same))}: {paths}")
        twice = set(run["settings"]) & set(other["settings"])
        if twice:
            raise SystemExit(f"settings {sorted(twice)} are in more than one run file")
        run["settings"].update(other["settings"])
    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, nargs="+", help="run JSON file(s) of one clip list (settings merged)")
    p.add_argument("--latents", required=True)
    p.add_argument("--csv", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--train-per-class", type=int, default=48)
    p.add_argument("--markdown", help="also write the doc's tables here")
    p.add_argument("--figure", help="also write the frontier figure (PNG via kaleido) here")
    p.add_argument("--calls", help="frontier_calibrate.py's JSON: price every clip's DiT calls at equal load")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    run = merge_runs([json.loads(Path(r).read_text()) for r in args.run], args.run)
    for s in run["settings"].values():   # each truncation variant is its own method in the tables
        if "variant" in s:
            s["method"] = VARIANT_METHOD[s["variant"].split("-")[0]]
    clips = run["clips"]
    labels = [c["prompt_index"] for c in clips]
    train = training_reference(args.train_per_class, seed=11)
    train2 = training_reference(6, seed=12)       # held out: pair floors and the distances' floor
    lat = {name: torch.load(Path(args.latents) / f"{name}.pt") for name in run["settings"]}
    repeat = None
    if REPEAT in run["settings"]:   # the baseline run again: determinism, and how much as-run timing moves
        rep = run["settings"].pop(REPEAT)
        a, b = (np.array([r["thread_cpu_s"] for r in x]) for x in (run["settings"][BASELINE]["rows"], rep["rows"]))
        repeat = {"bit_identical": bool(torch.equal(lat.pop(REPEAT), lat[BASELINE])),
                  "thread_cpu_ratio_mean": float((b / a).mean()), "thread_cpu_ratio_min": float((b / a).min()),
                  "thread_cpu_ratio_max": float((b / a).max()), "loadavg_1min": rep["loadavg_1min"]}
    rgb = {name: videos.to_rgb(x) for name, x in lat.items()}
    base = rgb[BASELINE]
    rows = []
    feats: dict[str, np.ndarray] = {}
    for name, s in run["settings"].items():
        f_rows = []
        nn_lat = nn_latent(lat[name], labels, train)
        for i, r in enumerate(s["rows"]):
            m = F.score_clip(rgb[name][i], base[i], labels[i], r.get("keys"))
            f_rows.append(F.motion_features(rgb[name][i], labels[i]))
            rows.append({"setting": name, "method": s["method"], "steps": s["steps"], "keep": s.get("keep"),
                         "until": s.get("until"), "threshold": s.get("threshold"),
                         "prompt": r["prompt_index"], "seed": r["seed"], "class": labels[i],
                         **{k: r[k] for k in ("thread_cpu_s", "dit_s", "wall_s", "token_steps", "dit_calls",
                                              "blocks_run")},
                         "units_skipped": (1 - r["units_computed"] / r["units_called"]) if r.get("units_called")
                         else np.nan,
                         **m, "nn_latent": nn_lat[i]})
        feats[name] = np.stack(f_rows)
        nn_m = nn_by_class(feats[name], labels, train)
        for i in range(len(s["rows"])):
            rows[-len(s["rows"]) + i]["nn_motion"] = nn_m[i]
        print(f"scored {name}", flush=True)
    table = pd.DataFrame(rows)
    time_cols = ["thread_cpu_s", "wall_s", "dit_s", "token_steps"]
    if args.calls:
        from frontier_calibrate import price_row

        cost = json.loads(Path(args.calls).read_text())["call_thread_cpu_s"]
        table["priced_s"] = [price_row(r, run["settings"][r["setting"]], cost)["total_s"]
                             for r in table.to_dict("records")]
        time_cols.append("priced_s")
        # settings timed against baseline generations interleaved in their own process (training/frontier_run.py
        # ``paired_baseline``): their thread CPU time, scaled by (priced baseline / their interleaved baseline)
        base_priced = float(table.loc[table.setting == BASELINE, "priced_s"].mean())
        for name, s in run["settings"].items():
            if "paired_baseline" in s:
                paired = float(np.mean([b["thread_cpu_s"] for b in s["paired_baseline"]]))
                sel = table.setting == name
                table.loc[sel, "priced_s"] = table.loc[sel, "thread_cpu_s"] * base_priced / paired
    for col in time_cols:
        table = add_saving(table, BASELINE, col)
    table.to_csv(args.csv, index=False, float_format="%.6g")

    # distribution distances of each setting's clip set (Fréchet on motion features and latent PCA scores)
    basis = F.PcaBasis.fit(train.rgb, k=8)
    train_scores, train_motion = basis.scores(train.rgb), _pool_features(train)
    fd = {}
    for name in run["settings"]:
        ok = np.isfinite(feats[name]).all(1)
        fd[name] = {"frechet_motion": F.frechet_distance(feats[name][ok], train_motion),
                    "frechet_latent": F.frechet_distance(basis.scores(rgb[name]), train_scores),
                    "motion_lost": int((~ok).sum())}
    tr2_m = np.stack([F.motion_features(train2.rgb[b], int(train2.motion.labels[b])) for b in range(len(train2.motion.labels))])
    fd_floor = {"frechet_motion": F.frechet_distance(tr2_m, train_motion),
                "frechet_latent": F.frechet_distance(basis.scores(train2.rgb), train_scores)}

    summ = frontier_summary(table, [*MEASURES, *[f"saving_{c}" for c in time_cols], "blocks_run", "units_skipped"],
                            extra=("method", "steps"))
    summ["frechet_motion"] = summ.setting.map(lambda n: fd[n]["frechet_motion"])
    summ["frechet_latent"] = summ.setting.map(lambda n: fd[n]["frechet_latent"])
    summ["timed"] = summ.setting.map(lambda n: "interleaved" if "paired_baseline" in run["settings"][n] else
                                     ("priced" if args.calls else "as run"))
    summ["paired_baseline_thread_cpu_s"] = summ.setting.map(
        lambda n: [b["thread_cpu_s"] for b in run["settings"][n].get("paired_baseline", [])] or None)
    primary = [r for r in declared_comparisons(table, [Declared(*d) for d in PRIMARY]) if r["status"] != "absent"]
    methods = summ[summ.method != "baseline"]
    saving = "saving_priced_s" if args.calls else "saving_thread_cpu_s"
    best = {m: best_at_saving(methods, m, saving, higher_is_better=hib).to_dict("records")
            for m, hib in (("psnr", True), ("motion_error", False))}
    fl = floors(base, clips, train, train2)
    loads = {n: s["loadavg_1min"] for n, s in run["settings"].items()}
    out = {"saving_axis": saving, "machine": run["machine"], "torch": run["torch"], "threads": run["threads"], "loadavg_1min": loads,
           "baseline": BASELINE, "n_clips": len(clips), "floors": fl, "frechet_floor": fd_floor,
           "settings": summ.to_dict("records"), "primary": primary, "best_at_saving": best,
           "baseline_repeat": repeat}
    Path(args.json).write_text(json.dumps(out, indent=1, default=lambda o: None if o is None else float(o)))

    if args.figure:
        write_figure(args.json, args.figure)
    if args.markdown:
        per_class = class_table(table[table.setting.isin(PER_CLASS)], "motion_error", n_resamples=2000)
        Path(args.markdown).write_text(markdown(out, summ, saving) + class_markdown(per_class))
    pd.set_option("display.width", 250)
    cols = ["setting", "saving_thread_cpu_s", "saving_thread_cpu_s_low", "saving_thread_cpu_s_high",
            "saving_wall_s", "saving_token_steps", "psnr", "psnr_low", "psnr_high", "motion_error",
            "motion_error_low", "motion_error_high", "residual", "visible", "jitter", "flicker", "nn_motion",
            "nn_latent", "frechet_motion", "frechet_latent"]
    print(summ[cols].round(3).to_string())
    print(json.dumps(primary, indent=1))
    print(json.dumps(fl, indent=1))
    print(json.dumps(fd_floor))
    for m, recs in best.items():
        print(m)
        print(pd.DataFrame(recs).round(3).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
