"""Text, JSON, CSV and ``.npz`` exports of a run's continuity metrics (what ``latent-probe metrics`` prints).

Every number comes from the ``Run`` metrics API; nothing is computed here but formatting.
"""

from __future__ import annotations

import io
import json
import math
import os
from typing import Any

import numpy as np

from .safe_text import csv_writer, terminal, terminal_lines
from .series import RunSeries, resolve_phases

__all__ = ["metrics_json", "metrics_csv", "write_npz", "write_statistics", "strict_json", "terminal_summary"]


def strict_json(x: Any) -> Any:
    """Plain JSON values: arrays to lists, NaN/Inf to None (strict JSON has no NaN)."""
    if isinstance(x, dict):
        return {str(k): strict_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [strict_json(v) for v in x]
    if isinstance(x, np.ndarray):
        return strict_json(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, bytes):
        return x.decode("utf-8", "replace")
    return x


def _per_step(run: Any, space: str) -> dict[str, Any]:
    m = run.metrics(space)
    return {
        "step": list(range(run.num_steps)),
        "timestep": run.timesteps, "sigma": run.sigmas, "expert": [str(e) for e in run.experts],
        "l2_mean": np.nanmean(m.l2_mean, axis=1), "cos_mean": np.nanmean(m.cos_mean, axis=1),
        "noise_floor": run.metrics.noise_floor(),
    }


def metrics_json(run: Any, space: str = "x0", phases: str = "thirds") -> str:
    """JSON: file, space, the phase summary (``Summary.to_dict()``), ``phase_note`` (how the phase scheme was
    fitted to the run's length, e.g. "original" scaled to 40 steps; "" when it applies as written) and per-step
    means [S] (steps 0-based, as everywhere; phase labels too)."""
    scheme, note = resolve_phases(run.num_steps, phases)
    doc = {"file": run.source, "space": space, "num_steps": run.num_steps,
           "simulated": bool(run.attrs.get("simulated", False)),
           "summary": run.metrics.summary(space, scheme).to_dict(), "phase_note": note,
           "per_step": _per_step(run, space)}
    return json.dumps(strict_json(doc), indent=2, allow_nan=False)


def terminal_summary(summary: Any) -> str:
    """``Summary.to_text()`` (a ``Summary`` or its ``to_dict()``; step ranges 0-based as everywhere) with control
    characters in labels escaped, then
    the ``phase_note`` of a ``RunSeries.summary`` (how the phase scheme was fitted to the run), if any."""
    from ..metrics.phases import Summary

    d = summary.to_dict() if hasattr(summary, "to_dict") else dict(summary)
    rows = [dict(r, label=terminal(r["label"])) for r in d.get("rows", [])]
    note = d.get("note") or d.get("phase_note") or ""
    return terminal_lines(Summary(space=d["space"], num_steps=d["num_steps"], rows=rows,
                                  note=terminal(note) if note else "").to_text())


def metrics_csv(run: Any, space: str = "x0") -> str:
    """Tidy CSV, one row per (step, batch item, frame pair, metric); step is 0-based as in ``run.to_dataframe``,
    with the step's timestep, σ and expert. Text cells starting with = + - @ TAB CR get a leading ``'``
    (spreadsheet formula injection); numbers stay numbers."""
    m = run.metrics(space)
    t, sig, exp = run.timesteps, run.sigmas, [str(e) for e in run.experts]
    out = io.StringIO()
    w = csv_writer(out)
    w.writerow(["step", "batch", "pair", "metric", "value", "space", "timestep", "sigma", "expert"])
    S, B, P = m.l2.shape
    for name in ("l2", "cos", "one_minus_cos", "norm_ratio"):
        a = getattr(m, name)
        for s in range(S):
            for b in range(B):
                for p in range(P):
                    w.writerow([s, b, p, name, float(a[s, b, p]), space, float(t[s]), float(sig[s]), exp[s]])
    return out.getvalue()


def write_npz(s: RunSeries, path: str | os.PathLike) -> str:
    """Step-wise arrays as the original analysis saved them (mean over batch items), no pickles.

    steps [S] (0-based), timesteps, sigmas, noise_floor [S]; l2_mean, cos_mean [S]; l2, cos, one_minus_cos,
    norm_ratio [S, F-1]; experts [S] (str); space, label, prompt (str); simulated (bool).
    """
    path = os.fspath(path)
    np.savez(path, steps=s.steps, timesteps=s.timesteps, sigmas=s.sigmas, noise_floor=s.noise_floor,
             l2_mean=s.l2_mean, cos_mean=s.cos_mean, l2=s.l2, cos=s.cos, one_minus_cos=s.one_minus_cos,
             norm_ratio=s.norm_ratio, experts=np.asarray(s.experts, dtype=str), space=np.asarray(s.space),
             label=np.asarray(s.label), prompt=np.asarray(s.prompt), simulated=np.asarray(s.simulated))
    return path


def write_statistics(s: RunSeries, out_dir: str | os.PathLike, stem: str = "statistics") -> list[str]:
    """``<stem>.txt`` (the original table, control characters escaped, then a line saying how the phase scheme
    was fitted to the run where it had to be) and ``<stem>.json`` (``Summary.to_dict()`` and ``phase_note``)
    in ``out_dir``."""
    out_dir = os.fspath(out_dir)
    txt, js = os.path.join(out_dir, stem + ".txt"), os.path.join(out_dir, stem + ".json")
    header = "SIMULATED DATA (analytic denoiser, not a model)\n" if s.simulated else ""
    summary = dict(s.summary, phase_note=s.phase_note)
    with open(txt, "w", encoding="utf-8") as fh:
        fh.write(f"{header}{terminal(s.label)}: {terminal(s.source)}\n{terminal_summary(summary)}\n")
    with open(js, "w", encoding="utf-8") as fh:
        json.dump(strict_json({"file": s.source, "label": s.label, "simulated": s.simulated, **summary}), fh,
                  indent=2, allow_nan=False)
    return [txt, js]
