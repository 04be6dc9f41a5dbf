"""The acceleration frontier on the v1 organism: every method at several strengths, per clip, timed.

For each setting and each (prompt, seed) clip one batch-1 generation (CFG, the baseline's noise) runs and
is timed three ways: thread CPU time of the whole sampling call (``time.thread_time``; with
``torch.set_num_threads(1)`` all compute runs on the calling thread, so other processes' load barely moves
it), thread CPU time inside the DiT experts (``study.timing.DiTTimer``: from before the first package hook of
each expert call to after the last — the probe's and FrameTruncation's fill included, as in ``latent-probe study``
and ``compare_truncation``; runs before commit 4e6080b, e.g. docs/data/frontier_organism.json's ``dit_s``, stopped
the clock before the probe's and the fill's post-forward work), and wall time; token-steps
(Σ tokens the DiT ran, after truncation, CFG's two calls both counted; cache-skipped tail blocks not
subtracted) are a
third, hardware-free column, and ``blocks_run`` (calls of each expert's last block) says what a cache
really skipped. On a GPU the DiT time comes from CUDA events instead.

Methods (``--quick``: a few only): the 20-step baseline; fewer steps (same scheduler); ``FrameTruncation``
(keep × until); diffusers' ``apply_first_block_cache`` on both experts (thresholds); truncation + fewer
steps; and, through ``latent_probe.interventions.Method`` (``spec``): diffusers' MagCache (ratios from
``training/frontier_magcache.py``, calibrated on seeds the evaluation clips do not use), TaylorSeer and Pyramid
Attention Broadcast on both experts, and FrameTruncation's variants (re-noising, motion fill, x̂₀ fill, growing
schedules). A ``spec`` setting also runs the baseline on every ``PAIRED_EVERY``-th clip just before it, in the
same process (``paired_baseline``: its time under the same load), and counts per clip the compute units
(attn1 / attn2 / ffn) called and really computed (``SkipCounter``): a cache that never skips shows 0 skipped.
The final latents go to ``--latents`` (one ``.pt`` per setting, [N, 16, F, h, w], not for git); the
rows (setting × clip: times, token-steps, keys) to ``--out`` JSON, rewritten after every setting so a crash
loses at most one setting. ``training/frontier_measure.py`` scores them.

    nice -n 10 python training/frontier_run.py --out /tmp/frontier/run.json --latents /tmp/frontier/lat

``--organism small|large`` runs the same methods on organism v2 (``settings_v2``: a 40-step baseline, the 10 v2
prompts × 3 seeds, keeps of its 21 latent frames, boundary at step 26 of 40), from ``--weights`` checked
against ``--sha256`` (or ``--random-weights``: the untrained architecture, for development). Its final
latents are stored float16; its MagCache settings are skipped, with a printed line, when the ratios file
(``training/frontier_magcache.py --organism SIZE``) is absent. ``--max-seconds S`` stops after the setting
that crosses S seconds (finished settings are saved; a later call with the same ``--out`` resumes).

    python training/frontier_run.py --organism small --weights W --sha256 D --out run.json --latents lat \
        --max-seconds 540
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latent_probe import FrameTruncation, LatentProbe  # noqa: E402
from latent_probe.interventions.caches import Method  # noqa: E402
from latent_probe.organism import DEFAULT_GUIDANCE, load_organism, random_organism_v2  # noqa: E402
from latent_probe.study.timing import DiTTimer, TokenCounter  # noqa: E402

PAIRED_EVERY = 6   # a ``spec`` setting runs a baseline generation before every 6th clip (same process, same load)


def settings(quick: bool) -> list[dict[str, Any]]:
    """The grid: method, its strength parameters, steps."""
    out: list[dict[str, Any]] = [{"method": "baseline", "steps": 20}]
    for s in ((16, 12, 8) if not quick else (12,)):
        out.append({"method": "fewer_steps", "steps": s})
    trunc = [(3, "boundary"), (5, "boundary"), (7, "boundary"), (11, "boundary"), (7, 3), (5, 6)]
    for keep, until in (trunc if not quick else trunc[:1]):
        out.append({"method": "truncation", "steps": 20, "keep": keep, "until": until})
    for thr in ((0.05, 0.1, 0.2, 0.3) if not quick else (0.1,)):
        out.append({"method": "first_block_cache", "steps": 20, "threshold": thr})
    for steps, keep, until in (((16, 7, "boundary"), (12, 7, "boundary"), (12, 11, "boundary"))
                               if not quick else ((12, 7, "boundary"),)):
        out.append({"method": "truncation+fewer_steps", "steps": steps, "keep": keep, "until": until})
    out.append({"method": "baseline", "steps": 20, "repeat": 1})   # run-to-run determinism and timing noise
    # issue 19's remaining methods through ``Method`` (diffusers' caches, FrameTruncation's variants), timed
    # against baseline generations interleaved in the same process (``paired_baseline``)
    for thr in ((0.02, 0.06, 0.12, 0.25) if not quick else (0.06,)):
        out.append({"method": "mag_cache", "steps": 20, "threshold": thr, "spec": f"mag_cache:{thr}"})
    for n in ((2, 3, 4) if not quick else (2,)):
        out.append({"method": "taylorseer", "steps": 20, "interval": n,
                    "spec": f"taylorseer:{n}:disable_cache_before_step=2"})
    for n in ((2, 3, 4) if not quick else (2,)):
        out.append({"method": "pab", "steps": 20, "interval": n, "spec": f"pab:{n}"})
    for tag, spec in (("renoise", "truncation:3:renoise=true"), ("motion", "truncation:3:fill=motion"),
                      ("x0", "truncation:3:fill_space=x0"), ("grow3-7-11", "truncation:3:schedule=3@3/7@6/11@9"),
                      ("grow5-11", "truncation:5:schedule=5@5/11@9")):
        out.append({"method": "truncation_variant", "steps": 20, "keep": int(spec.split(":")[1]),
                    "until": "boundary", "variant": tag, "spec": spec})
    return out


def setting_name(s: dict[str, Any]) -> str:
    parts = [s["method"], f"s{s['steps']}"]
    if "keep" in s:
        parts.append(f"k{s['keep']}u{s['until']}")
    if "threshold" in s:
        parts.append(f"t{s['threshold']}")
    if "interval" in s:
        parts.append(f"n{s['interval']}")
    if "variant" in s:
        parts.append(s["variant"])
    if "repeat" in s:
        parts.append(f"repeat{s['repeat']}")
    return "_".join(parts)


V2_BASE_STEPS = 40   # organism v2's default sampling (UniPC, CFG 4.0): 26 of 40 steps are high-noise (shift 12)


def settings_v2(quick: bool, base: int = V2_BASE_STEPS) -> list[dict[str, Any]]:
    """Organism v2's grid (names as declared in docs/frame-truncation.md for ``base`` = 40): the v1 methods
    scaled to 40 steps and 21 latent frames. ``base`` other than 40 (tests) scales every step count and
    integer ``until``."""
    def st(n: int) -> int:
        return max(1, round(n * base / V2_BASE_STEPS))

    out: list[dict[str, Any]] = [{"method": "baseline", "steps": base}]
    for n in ((30, 24, 16, 12) if not quick else (24, 16)):
        out.append({"method": "fewer_steps", "steps": st(n)})
    trunc = [(3, "boundary"), (7, "boundary"), (11, "boundary"), (15, "boundary"), (3, st(13)), (7, st(20))]
    for keep, until in (trunc if not quick else trunc[1:2]):
        out.append({"method": "truncation", "steps": base, "keep": keep, "until": until})
    for thr in ((0.05, 0.1, 0.2, 0.3) if not quick else (0.1,)):
        out.append({"method": "first_block_cache", "steps": base, "threshold": thr})
    for n, keep, until in (((30, 7, "boundary"), (24, 7, "boundary"), (24, 11, "boundary"), (16, 11, "boundary"))
                           if not quick else ((24, 11, "boundary"),)):
        out.append({"method": "truncation+fewer_steps", "steps": st(n), "keep": keep, "until": until})
    out.append({"method": "baseline", "steps": base, "repeat": 1})
    for thr in ((0.02, 0.06, 0.12, 0.25) if not quick else (0.06,)):
        out.append({"method": "mag_cache", "steps": base, "threshold": thr, "spec": f"mag_cache:{thr}"})
    for n in ((2, 3, 4) if not quick else (2,)):
        out.append({"method": "taylorseer", "steps": base, "interval": n,
                    "spec": f"taylorseer:{n}:disable_cache_before_step={st(4)}"})
    for n in ((2, 3, 4) if not quick else (2,)):
        out.append({"method": "pab", "steps": base, "interval": n, "spec": f"pab:{n}"})
    variants = (("renoise", "truncation:7:renoise=true"), ("motion", "truncation:7:fill=motion"),
                ("x0", "truncation:7:fill_space=x0"),
                ("grow7-11-15", f"truncation:7:schedule=7@{st(9)}/11@{st(18)}/15@{st(26)}"),
                ("grow7-15", f"truncation:7:schedule=7@{st(13)}/15@{st(26)}"))
    for tag, spec in (variants if not quick else variants[:1] + variants[3:4]):
        out.append({"method": "truncation_variant", "steps": base, "keep": int(spec.split(":")[1]),
                    "until": "boundary", "variant": tag, "spec": spec})
    return out


def build_organism(organism: str, device: str, weights: str | None = None, sha256: str | None = None,
                   random_weights: bool = False) -> Any:
    """v1 (the packaged weights, as before), or organism v2 of a size: its trained ``weights`` checked against
    ``sha256``, or with ``random_weights`` the untrained architecture (development only)."""
    if organism == "v1":
        return load_organism(device=device)
    if random_weights:
        return random_organism_v2(organism, device=device)
    return load_organism(device=device, size=organism, path=weights, sha256=sha256)


def prepare(setting: dict[str, Any], device: str, build: Callable[[], Any] | None = None
            ) -> tuple[Any, Callable[[], Any]]:
    """A fresh organism for the setting (caches are applied to its experts) and an intervention factory.
    ``build`` makes the organism (default: v1's ``load_organism``)."""
    org = load_organism(device=device) if build is None else build()
    if setting["method"] == "first_block_cache":
        from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache
        for m in (org.pipe.transformer, org.pipe.transformer_2):
            apply_first_block_cache(m, FirstBlockCacheConfig(threshold=setting["threshold"]))
    if "spec" in setting:
        method = Method.parse(setting["spec"])
        return org, method.intervention
    if "keep" in setting:
        return org, lambda: FrameTruncation(keep=setting["keep"], until=setting["until"])
    return org, lambda: None


def generate_one(org: Any, prompt: int, seed: int, steps: int, intervene: Any) -> dict[str, Any]:
    """One generation under LatentProbe (no file, x0 not stored): final latent and its costs."""
    experts = {"high_noise": org.pipe.transformer, "low_noise": org.pipe.transformer_2}
    counter = TokenCounter(list(experts.values())).attach()   # the library's, shared with `latent-probe study`
    timer = DiTTimer(list(experts.values())).attach()          # thread CPU time on a CPU, CUDA events on a GPU
    cuda = torch.cuda.is_available()
    try:
        with LatentProbe(org.pipe, None, capture=("x0",), store_dtype="float32", intervene=intervene):
            if cuda:
                torch.cuda.synchronize()
            w0, c0 = time.perf_counter(), time.thread_time()
            out = org.generate(prompt, seed=seed, num_inference_steps=steps, guidance_scale=DEFAULT_GUIDANCE)
            if cuda:
                torch.cuda.synchronize()
            cpu, wall = time.thread_time() - c0, time.perf_counter() - w0
    finally:
        counter.detach()
        timer.detach()
    row = {"thread_cpu_s": cpu, "wall_s": wall, "dit_s": timer.seconds(), "token_steps": counter.tokens,
           "dit_calls": counter.calls, "blocks_run": counter.blocks_run}
    if intervene is not None:
        row["keys"] = list(intervene.keys_used) if intervene.keys_used is not None else None
        row["token_steps_skipped"] = intervene.token_steps_skipped_fraction
    return {"final": out.float().cpu()[0], "row": row}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON of rows (rewritten after every setting)")
    p.add_argument("--latents", required=True, help="folder for the final latents (.pt per setting)")
    p.add_argument("--organism", choices=("v1", "small", "large"), default="v1",
                   help="v1 (default, the packaged organism) or an organism v2 size")
    p.add_argument("--weights", default=None, help="v2: the weights file (default: the packaged one)")
    p.add_argument("--sha256", default=None, help="v2: its SHA-256 (default: weights/checksums_v2.json)")
    p.add_argument("--random-weights", action="store_true", help="v2: untrained weights (development only)")
    p.add_argument("--base-steps", type=int, default=V2_BASE_STEPS,
                   help="v2: the baseline's steps (40; other values scale the grid, for tests)")
    p.add_argument("--prompts", type=int, default=None, help="first N prompts (default: v1 8, v2 all 10)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="one setting per method (a smoke run)")
    p.add_argument("--mag-ratios", default=None,
                   help="training/frontier_magcache.py's JSON (MagCache settings only; default "
                        "docs/data/frontier_magcache.json for v1, docs/data/frontier_magcache_v2_SIZE.json for v2)")
    p.add_argument("--only", default=None, help="comma-separated setting names to run, in this order (others skipped)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop after the setting during which this many seconds (since start) pass")
    args = p.parse_args(argv)
    v2 = args.organism != "v1"
    if not v2 and (args.weights or args.sha256 or args.random_weights or args.base_steps != V2_BASE_STEPS):
        p.error("--weights, --sha256, --random-weights and --base-steps are for an organism v2 size")
    if v2 and args.random_weights and (args.weights or args.sha256):
        p.error("--random-weights takes no --weights / --sha256")
    mag_path = Path(args.mag_ratios or ("docs/data/frontier_magcache.json" if not v2
                                        else f"docs/data/frontier_magcache_v2_{args.organism}.json"))
    t_start = time.perf_counter()

    torch.set_num_threads(1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base_steps = args.base_steps if v2 else 20
    n_prompts = args.prompts if args.prompts is not None else (10 if v2 else 8)

    def build() -> Any:
        return build_organism(args.organism, device, args.weights, args.sha256, args.random_weights)

    lat_dir = Path(args.latents)
    lat_dir.mkdir(parents=True, exist_ok=True)
    clips = [(pr, s) for pr in range(n_prompts) for s in range(args.seeds)]
    out_path = Path(args.out)
    result = json.loads(out_path.read_text()) if out_path.exists() else {
        "machine": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "guidance": DEFAULT_GUIDANCE,
        "clips": [{"prompt_index": pr, "seed": s} for pr, s in clips], "settings": {}}
    if v2:
        who = {"size": args.organism, "weights": args.weights, "sha256": args.sha256,
               "random_weights": args.random_weights, "base_steps": base_steps}
        if result.setdefault("organism", who) != who:
            p.error(f"{out_path} holds a run of another organism ({result['organism']}); use a new --out")
        if result["clips"] != [{"prompt_index": pr, "seed": s} for pr, s in clips]:
            p.error(f"{out_path} holds other clips; use a new --out")
    grid = {setting_name(st): st for st in (settings_v2(args.quick, base_steps) if v2 else settings(args.quick))}
    order = list(grid) if args.only is None else args.only.split(",")
    unknown = [n for n in order if n not in grid]
    if unknown:
        p.error(f"unknown setting(s) {unknown}; known: {list(grid)}")
    mag = [n for n in order if grid[n].get("method") == "mag_cache"]
    if mag and not mag_path.is_file():
        if not v2:
            p.error(f"{mag} need MagCache ratios: {mag_path} is missing (training/frontier_magcache.py writes it)")
        print(f"skipping {mag}: no MagCache ratios at {mag_path} (training/frontier_magcache.py --organism "
              f"{args.organism} writes them)", flush=True)
        order = [n for n in order if n not in mag]
    # warm-up (allocator, first-call costs), untimed
    base_org, _ = prepare({"method": "baseline", "steps": base_steps}, device, build)
    generate_one(base_org, 0, 0, base_steps, None)
    todo = [n for n in order if n not in result["settings"]]
    for k, name in enumerate(todo):
        setting = grid[name]
        org, factory = prepare(setting, device, build)
        rows, finals, paired = [], [], []
        load0 = os.getloadavg()[0]
        with contextlib.ExitStack() as stack:
            counter = None
            if "spec" in setting:
                method = Method.parse(setting["spec"])
                ratios = json.loads(mag_path.read_text())["mag_ratios"] if method.kind == "mag_cache" else None
                counter = stack.enter_context(method.applied(org.pipe, mag_ratios=ratios, steps=setting["steps"]))
            for i, (pr, s) in enumerate(clips):
                if counter is not None and i % PAIRED_EVERY == 0:
                    b = generate_one(base_org, pr, s, base_steps, None)["row"]
                    paired.append({"prompt_index": pr, "seed": s, "thread_cpu_s": b["thread_cpu_s"],
                                   "wall_s": b["wall_s"], "dit_s": b["dit_s"]})
                n0 = len(counter.calls) if counter is not None else 0
                g = generate_one(org, pr, s, setting["steps"], factory())
                row = {"prompt_index": pr, "seed": s, **g["row"]}
                if counter is not None:   # what the cache really skipped in this clip (0: never skipped)
                    new = counter.calls[n0:]
                    row["units_called"] = sum(c.called for c in new)
                    row["units_computed"] = sum(c.computed for c in new)
                rows.append(row)
                finals.append(g["final"])
        stacked = torch.stack(finals)
        torch.save(stacked.half() if v2 else stacked, lat_dir / f"{name}.pt")
        result["settings"][name] = {**setting, "rows": rows, "loadavg_1min": [load0, os.getloadavg()[0]]}
        if paired:
            result["settings"][name]["paired_baseline"] = paired
        tmp = out_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result))
        tmp.replace(out_path)
        cpu = sum(r["thread_cpu_s"] for r in rows) / len(rows)
        extra = ""
        if v2:
            extra = (f"  wall {sum(r['wall_s'] for r in rows) / len(rows):6.2f} s  "
                     f"DiT {sum(r['dit_s'] for r in rows) / len(rows):6.2f} s")
        if paired:
            extra += f"  paired baseline {sum(b['thread_cpu_s'] for b in paired) / len(paired):6.2f} s"
        if rows and "units_called" in rows[0]:
            called = sum(r["units_called"] for r in rows)
            extra += f"  units skipped {1 - sum(r['units_computed'] for r in rows) / max(called, 1):.3f}"
        print(f"{name:40s} cpu {cpu:6.2f} s/clip  load {load0:.2f}{extra}", flush=True)
        elapsed = time.perf_counter() - t_start
        if args.max_seconds is not None and elapsed > args.max_seconds and k + 1 < len(todo):
            print(f"stopping after {name}: {elapsed:.0f} s > --max-seconds {args.max_seconds:g}; "
                  f"{len(todo) - k - 1} setting(s) left (run again with the same --out to resume)", flush=True)
            return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
