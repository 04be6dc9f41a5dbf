"""A study folder read as frontier clips: every job's costs and final latent (``outputs.py``), its setting, the
curve (method) it belongs to, and the baseline setting it is compared against.

``read_frontier_study(out_dir)`` refuses, in one line (``StudyError``), a folder that cannot give a frontier:
no manifest, a backend that records no job outputs (only the organism backend does), a job whose run file is
not complete or whose time / final latent is missing or damaged (recorded before job outputs existed, killed,
or still running), no baseline setting, or two.

The baseline is the setting whose method is ``baseline`` (or that has no ``method``), without frame truncation,
with the most sampling steps (as run: the job outputs' ``steps_run``); a grid that leaves two such
settings (e.g. two guidance values) is refused. Every clip is paired with the baseline clip of the same
(prompt, seed).

A setting's name lists the grid's settings that vary (``method=steps:12``), or all of them when none does. Its
curve (``method``): ``baseline``; ``fewer_steps`` (``method=steps:N`` or a baseline at fewer steps than the
baseline setting); a cache's or truncation's kind, ``+`` its options (``truncation+renoise``), ``+fewer_steps``
when it also runs fewer steps than the baseline.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from .jobs import StudyError, parse_truncation
from .manifest import read_manifest
from .outputs import OUTPUTS_DIR, read_job_outputs
from .runner import job_status, run_path

__all__ = ["FrontierClip", "FrontierStudy", "read_frontier_study", "COST_COLUMNS"]

COST_COLUMNS = ("wall_s", "thread_cpu_s", "dit_s", "token_steps")   # what a saving can be computed on


@dataclass(frozen=True)
class FrontierClip:
    """One job: ids, its setting's name and curve, the steps it ran, and its job-outputs record (costs, method)."""

    job_id: str
    prompt_id: str
    prompt: str
    seed: int
    settings: dict[str, Any]
    setting: str
    method: str
    steps: int
    record: dict[str, Any] = field(repr=False)

    @property
    def cost(self) -> dict[str, Any]:
        return self.record["cost"]

    @property
    def keys_used(self) -> list[int] | None:
        """The key latent frames a truncation kept (None: no truncation)."""
        keys = (self.record.get("intervention") or {}).get("keys_used")
        return None if keys is None else [int(k) for k in keys]


@dataclass
class FrontierStudy:
    """The clips of one study folder and its baseline setting; ``final_latent(clip)`` reads a clip's latent."""

    out_dir: str
    fixed: dict[str, Any]
    clips: list[FrontierClip]
    baseline: str

    @property
    def organism(self) -> str:
        """``v1`` or the organism v2 size the study ran."""
        return str(self.fixed.get("organism") or "v1")

    def final_latent(self, clip: FrontierClip) -> Any:
        """The clip's final latent as the pipeline returned it (CPU tensor)."""
        return read_job_outputs(self.out_dir, clip.job_id).final_latent

    def baseline_of(self, clip: FrontierClip) -> FrontierClip:
        """The baseline setting's clip of the same (prompt, seed)."""
        for c in self.clips:
            if c.setting == self.baseline and c.prompt_id == clip.prompt_id and c.seed == clip.seed:
                return c
        raise StudyError(f"clip {clip.prompt_id} seed {clip.seed} has no {self.baseline!r} clip to compare with")

    def cost_rows(self) -> list[dict[str, Any]]:
        """One row per clip: ids, setting, method, steps, and every cost (``COST_COLUMNS`` and what a cache
        skipped: ``dit_calls``, ``blocks_run``, ``units_skipped`` as a fraction of unit calls)."""
        rows = []
        for c in self.clips:
            skips = c.record.get("skips") or {}
            called = skips.get("units_called") or 0
            rows.append({"setting": c.setting, "method": c.method, "steps": c.steps, "prompt": c.prompt_id,
                         "seed": c.seed, "job_id": c.job_id, **{k: c.cost[k] for k in COST_COLUMNS},
                         "dit_calls": c.cost["dit_calls"], "blocks_run": c.cost["blocks_run"],
                         "units_skipped": (skips.get("units_skipped", 0) / called) if called else float("nan")})
        return rows


def _method(settings: dict[str, Any]) -> tuple[str, tuple[tuple[str, Any], ...], bool]:
    """(kind, options, truncated) of a job's settings."""
    from ..interventions.caches import Method

    m = Method.parse(str(settings["method"])) if "method" in settings else Method("baseline")
    trunc = settings.get("truncation")
    truncated = m.kind == "truncation" or (trunc is not None and parse_truncation(str(trunc)) is not None)
    kind = "truncation" if truncated else m.kind
    return kind, m.options, truncated


def _curve(kind: str, options: tuple[tuple[str, Any], ...], steps: int, base_steps: int) -> str:
    if kind in ("baseline", "steps"):
        if kind == "baseline" and steps == base_steps:
            return "baseline"
        return "fewer_steps" if steps < base_steps else "steps"
    name = kind + "".join(f"+{k}" for k, _ in options if k != "until")
    return name + ("+fewer_steps" if steps < base_steps else "")


def read_frontier_study(out_dir: str | os.PathLike) -> FrontierStudy:
    """Every job of the study in ``out_dir`` with its costs; refuses (one line) what cannot give a frontier."""
    out_dir = os.fspath(out_dir)
    doc = read_manifest(out_dir)
    if doc is None:
        raise StudyError(f"{out_dir} has no manifest.json: the frontier is computed from one study folder "
                         "(latent-probe study --out DIR)")
    fixed = dict(doc["suite"].get("fixed") or {})
    backend = fixed.get("backend")
    if backend != "organism":
        raise StudyError(f"{out_dir} was recorded with the {backend} backend, which records no job times or final "
                         "latents: the frontier is computed from organism studies (--backend organism)")
    jobs = doc.get("jobs") or []
    if not jobs:
        raise StudyError(f"{out_dir}: its manifest lists no job")
    missing = []
    for j in jobs:
        status = job_status(run_path(out_dir, j["job_id"]), j["job_id"], out_dir)
        if not status.done:
            missing.append((j["job_id"], status))
    if missing:
        job, st = missing[0]
        raise StudyError(f"{len(missing)} of {len(jobs)} jobs of {out_dir} lack a complete run or their recorded time "
                         f"and final latent ({OUTPUTS_DIR}/<job id>.safetensors; first: {job}: {st.state}"
                         f"{': ' + st.detail if st.detail else ''}); run the same latent-probe study command again "
                         "to record them")
    grid = doc["suite"].get("grid") or {}
    varying = [n for n, v in grid.items() if len(v) > 1] or list(grid)
    prompts = {p["id"]: p["prompt"] for p in doc["suite"].get("prompts") or []}
    raw = []
    for j in jobs:
        rec = read_job_outputs(out_dir, j["job_id"], latent=False).record
        settings = dict(j.get("settings") or {})
        kind, options, truncated = _method(settings)
        name = " ".join(f"{n}={settings[n]}" for n in varying if n in settings) or "default"
        raw.append((j, rec, settings, kind, options, int(rec["steps_run"]), name))
    candidates = {name: steps for (_, _, _, kind, options, steps, name) in raw if kind == "baseline"}
    if not candidates:
        raise StudyError(f"no setting of {out_dir} is a baseline (method=baseline or no method, no truncation): "
                         "add baseline to --set method=…")
    top = max(candidates.values())
    best = sorted(n for n, s in candidates.items() if s == top)
    if len(best) > 1:
        raise StudyError(f"settings {best[0]!r} and {best[1]!r} both qualify as the baseline (method=baseline, "
                         f"{top} steps): study one value of the other settings at a time")
    clips = [FrontierClip(j["job_id"], j["prompt_id"], prompts.get(j["prompt_id"], ""), int(j["seed"]), settings,
                          name, _curve(kind, options, steps, top), steps, rec)
             for (j, rec, settings, kind, options, steps, name) in raw]
    return FrontierStudy(out_dir, fixed, clips, best[0])
