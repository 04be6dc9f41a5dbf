"""Table, plot and verdict of the organism truncation measurements (``measure_truncation.py``'s JSON).

Confidence intervals: percentile bootstrap resampling prompts (each with all its seeds; 10,000 resamples,
seed 0) of the per-clip mean; the true − compressed comparison averages each clip's paired differences over
keeps and fills first (one value a clip), then resamples prompts. Selections ("the best setting") and these
comparisons are exploratory: none was declared before the measurement. Prints markdown; ``--png`` writes
the plot (colour bar; the two-seed PSNR floor drawn).

    python training/truncation_report.py docs/data/truncation_organism.json --png docs/truncation_organism.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latent_probe.study.inference import cluster_bootstrap, rank_correlation  # noqa: E402

RESAMPLES = 10_000


PROMPT_OF_CLIP: list[int] = []   # set by main from the data's clip list: the bootstrap's clusters


def boot_ci(values: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """(mean, 2.5 %, 97.5 %) of the mean of per-clip ``values`` [n]: percentile bootstrap resampling prompts
    (``study.inference.cluster_bootstrap``; clips of one prompt are not independent)."""
    v = np.asarray(values, dtype=np.float64)
    ci = cluster_bootstrap(v, PROMPT_OF_CLIP, n_resamples=RESAMPLES, seed=seed)
    return ci.mean, ci.low, ci.high


def fmt(ci: tuple[float, float, float], digits: int = 2) -> str:
    m, lo, hi = ci
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def predicted_error(d: dict, s: dict) -> np.ndarray:
    """Per clip: the offline feasibility estimate for this setting — the mean rel L2 of the baseline's x̂₀
    rebuilt from the key frames, over the steps the setting truncates."""
    per = np.asarray(d["feasibility"][f"{s['keep']}/{s['fill']}"]["rel_l2"])   # [B, S]
    return per[:, : s["until_steps"]].mean(axis=1)


def report(d: dict) -> str:
    rows = d["settings"]
    base_flicker = np.asarray(d["baseline"]["flicker_l2"])
    out = [f"{len(d['clips'])} clips ({len({c['prompt'] for c in d['clips']})} prompts × "
           f"{len({c['seed'] for c in d['clips']})} seeds), {d['steps']} steps, CFG {d['guidance']}, "
           f"{d['num_frames']} latent frames; the high-noise expert runs {d['boundary_steps']} steps "
           f"(until=boundary); {d['machine']}. Checks: keep = F bit-identical to the baseline: "
           f"{d['checks']['keep_all_frames_bit_identical']}; baseline repeated: max |Δ| = "
           f"{d['checks']['baseline_repeat_max_abs_diff']:g}.", "",
           "| keep | until (steps) | positions | fill | token-steps skipped | PSNR dB [95 % CI] | SSIM [95 % CI] "
           "| final x̂₀ rel L2 | adjacent-frame L2, truncated / baseline | predicted (feasibility) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for s in rows:
        flick = np.asarray(s["flicker_l2"]) / base_flicker
        out.append(f"| {s['keep']} | {s['until']} ({s['until_steps']}) | {s['positions']} | {s['fill']} | "
                   f"{100 * s['token_steps_skipped']:.1f} % | {fmt(boot_ci(s['psnr_db']))} | "
                   f"{fmt(boot_ci(s['ssim']), 3)} | {fmt(boot_ci(s['x0_rel_l2']), 3)} | "
                   f"{fmt(boot_ci(flick), 3)} | {np.mean(predicted_error(d, s)):.3f} |")
    return "\n".join(out)


def verdicts(d: dict, psnr_floor: float) -> str:
    rows = d["settings"]
    lines = []
    ok = [s for s in rows if boot_ci(s["psnr_db"])[1] >= psnr_floor]
    if ok:
        best = max(ok, key=lambda s: s["token_steps_skipped"])
        lines.append(f"- Within {psnr_floor:g} dB PSNR of the baseline (lower CI bound), the most token-steps are "
                     f"skipped by keep {best['keep']}, until {best['until']}, {best['positions']} positions, "
                     f"{best['fill']} fill: {100 * best['token_steps_skipped']:.1f} % skipped, PSNR "
                     f"{fmt(boot_ci(best['psnr_db']))} dB.")
    else:
        top = max(rows, key=lambda s: np.mean(s["psnr_db"]))
        lines.append(f"- No setting keeps the video within {psnr_floor:g} dB PSNR of the baseline; the closest is "
                     f"keep {top['keep']}, until {top['until']}, {top['positions']}, {top['fill']}: "
                     f"{fmt(boot_ci(top['psnr_db']))} dB, skipping {100 * top['token_steps_skipped']:.1f} %.")
    # true vs compressed: per clip, the mean over keeps and fills of the paired difference; CI by prompt
    by = {(s["keep"], s["until"], s["fill"], s["positions"]): s for s in rows}
    for until in dict.fromkeys(s["until"] for s in rows):
        diffs = []
        for (k, u, f, p), s in by.items():
            if u == until and p == "true" and (k, u, f, "compressed") in by:
                diffs.append(np.asarray(s["psnr_db"]) - np.asarray(by[(k, u, f, "compressed")]["psnr_db"]))
        if diffs:
            ci = boot_ci(np.mean(diffs, axis=0))
            lines.append(f"- true − compressed positions, until {until}: PSNR {fmt(ci)} dB (exploratory; per clip "
                         f"the mean over keeps and fills, {len(diffs[0])} clips, CI by prompt)")
    # does the offline estimate predict the measured fidelity?
    pred = np.asarray([np.mean(predicted_error(d, s)) for s in rows])
    meas = np.asarray([np.mean(s["x0_rel_l2"]) for s in rows])
    rho = rank_correlation(pred, meas)["spearman"]
    lines.append(f"- Feasibility as a predictor: Spearman ρ = {rho:.2f} (ties at average ranks) between the predicted error (mean offline "
                 f"rel L2 over the truncated steps) and the measured final x̂₀ rel L2, over the "
                 f"{len(rows)} settings.")
    return "\n".join(lines)


def plot(d: dict, path: str, floor_db: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [s for s in d["settings"] if s["fill"] == "linear"]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    for pos, marker in (("true", "o"), ("compressed", "s")):
        sel = [s for s in rows if s["positions"] == pos]
        for k, color in zip(sorted({s["keep"] for s in sel}), ("C0", "C1", "C2", "C3")):
            pts = sorted((s for s in sel if s["keep"] == k), key=lambda s: s["token_steps_skipped"])
            x = [100 * s["token_steps_skipped"] for s in pts]
            cis = [boot_ci(s["psnr_db"]) for s in pts]
            ax[0].errorbar(x, [c[0] for c in cis], yerr=[[c[0] - c[1] for c in cis], [c[2] - c[0] for c in cis]],
                           marker=marker, color=color, ls="-" if pos == "true" else "--", capsize=2,
                           label=f"keep {k}, {pos}")
    ax[0].axhline(floor_db, color="grey", ls=":", lw=1)
    ax[0].annotate(f"floor: same prompt, other seed ({floor_db:.1f} dB)", (0.01, floor_db), xycoords=("axes fraction", "data"),
                   fontsize=7, color="grey", va="bottom")
    ax[0].set_xlabel("token-steps skipped (%)")
    ax[0].set_ylabel("PSNR vs baseline (dB), mean and 95 % CI by prompt")
    ax[0].set_title("fidelity against saving (linear fill)")
    ax[0].legend(fontsize=7, ncol=2)
    pred = [np.mean(predicted_error(d, s)) for s in d["settings"]]
    meas = [np.mean(s["x0_rel_l2"]) for s in d["settings"]]
    sc = ax[1].scatter(pred, meas, c=[s["until_steps"] for s in d["settings"]], cmap="viridis")
    fig.colorbar(sc, ax=ax[1], label="truncated steps (until)")
    ax[1].set_xlabel("predicted: offline feasibility rel L2 (mean over truncated steps)")
    ax[1].set_ylabel("measured: final x̂₀ rel L2")
    ax[1].set_title("does feasibility predict the outcome? (colour: truncated steps)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", help="measure_truncation.py's JSON")
    p.add_argument("--png", help="write the plot here")
    p.add_argument("--floor", type=float, default=14.3, help="PSNR floor line (dB): two seeds of one prompt "
                   "(mean of 24 pairs, docs/data/frontier_organism.json)")
    p.add_argument("--psnr", type=float, default=20.0, help="the PSNR (dB) a setting must keep (lower CI bound)")
    args = p.parse_args(argv)
    d = json.loads(Path(args.results).read_text())
    PROMPT_OF_CLIP[:] = [c.get("prompt_index", c.get("prompt")) for c in d["clips"]]
    print(report(d))
    print()
    print(verdicts(d, args.psnr))
    if args.png:
        plot(d, args.png, args.floor)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
