"""The dashboard's verdict in words, computed from the runs it shows (never written by hand).

``verdict(series)`` pairs each frame-truncated run with the plain run of the same prompt, seed and step count
(its baseline) and states: what was compared; the token-steps truncation skipped (from the run's own
intervention record and step table: changed steps × (F − K) / (S × F)); the measured time saved (the
generations' seconds when the caller passes them, else the span of the runs' step commit times); the
fidelity of the truncated run's final x̂₀ to the baseline's (relative L2 ‖a − b‖ / ‖b‖, float64) beside its
floor — the same distance between two plain runs of the same prompt with different seeds, i.e. what two valid
samples differ by; and whether these data support truncating. One prompt and one seed is one sample: the
verdict says so, and points to ``latent-probe study`` for a confidence interval.

Rule for "supports truncating" (stated on the page with the numbers): time was saved, and the truncated run
lies closer to its baseline than half the floor (it changed the sample by less than half of what a new seed
does). Without a floor run the verdict says the fidelity cannot be judged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .series import RunSeries

__all__ = ["Comparison", "Verdict", "verdict", "SUPPORT_FRACTION"]

SUPPORT_FRACTION = 0.5  # truncated-vs-baseline distance must be below this fraction of the seed floor


@dataclass
class Comparison:
    """One truncated run against its baseline. Distances are relative L2 of the final x̂₀ (None: not stored)."""

    baseline: str
    truncated: str
    intervention: str
    token_steps_skipped: float          # fraction in [0, 1]
    seconds_baseline: float | None
    seconds_truncated: float | None
    seconds_source: str                 # "measured generation time" or "step commit times (steps 1…S−1)"
    distance: float | None              # ‖x̂₀ truncated − x̂₀ baseline‖ / ‖x̂₀ baseline‖
    floor: float | None                 # the same between two seeds of the baseline's prompt
    floor_runs: tuple[str, str] | None

    @property
    def time_saved(self) -> float | None:
        """Fraction of the baseline's time saved (negative: slower), or None when unmeasured."""
        if not self.seconds_baseline or self.seconds_truncated is None:
            return None
        return 1.0 - self.seconds_truncated / self.seconds_baseline

    @property
    def supports(self) -> bool | None:
        """True / False by the module's rule; None when there is no floor or no time to judge by."""
        if self.distance is None or self.floor is None or self.time_saved is None or not self.floor > 0:
            return None
        return self.time_saved > 0 and self.distance < SUPPORT_FRACTION * self.floor


@dataclass
class Verdict:
    """The comparisons found and the sentences the page shows (plain text; the page escapes them)."""

    comparisons: list[Comparison] = field(default_factory=list)
    sentences: list[str] = field(default_factory=list)
    headline: str = ""


def _final_x0(s: RunSeries) -> np.ndarray | None:
    return s.final_x0


def _distance(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    """‖a − b‖ / ‖b‖ in float64, or None when either is missing or their shapes differ."""
    if a is None or b is None or a.shape != b.shape:
        return None
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    nb = float(np.linalg.norm(b64))
    return float(np.linalg.norm(a64 - b64) / nb) if nb > 0 else None


def _truncation(s: RunSeries) -> dict[str, Any] | None:
    iv = s.attrs.get("intervention")
    return iv if isinstance(iv, dict) and iv.get("kind") == "frame_truncation" else None


def _key(s: RunSeries) -> tuple[str, Any, int]:
    return (s.prompt, s.attrs.get("seed"), s.num_steps)


def token_steps_skipped(s: RunSeries) -> float:
    """Fraction of token-steps a frame-truncated run skipped: changed steps × (F − K) / (S × F), every step
    making the same DiT calls (the truncation cuts cond and uncond alike)."""
    iv = _truncation(s)
    if iv is None or s.changed_steps is None:
        return 0.0
    frames = s.num_pairs + 1
    keys = len(iv["keyframes"]) if iv.get("keyframes") is not None else int(iv.get("keep") or frames)
    keys = min(max(keys, 0), frames)
    return float(np.count_nonzero(s.changed_steps)) * (frames - keys) / (s.num_steps * frames)


def _seconds(s: RunSeries, given: Mapping[str, float] | None) -> tuple[float | None, str]:
    if given and s.label in given:
        return float(given[s.label]), "measured generation time"
    w = s.step_times
    if w is None or w.size < 2 or not np.all(np.isfinite(w)):
        return None, "not recorded"
    return float(w[-1] - w[0]), "span of the step commit times (steps 1 to S−1)"


def _pct(x: float) -> str:
    return f"{x:.0%}" if abs(x) >= 0.1 else f"{x:.1%}"


def verdict(series: Sequence[RunSeries], seconds: Mapping[str, float] | None = None) -> Verdict:
    """The verdict of a dashboard of ``series``: one :class:`Comparison` per frame-truncated run that has a
    plain run of the same prompt, seed and step count, and its sentences. ``seconds``: label → measured wall
    seconds of each generation (else the runs' step commit times are used, and the page says so)."""
    plain = [s for s in series if _truncation(s) is None and not s.attrs.get("intervention")]
    out = Verdict()
    for t in series:
        if _truncation(t) is None:
            continue
        base = next((b for b in plain if _key(b) == _key(t)), None)
        if base is None:
            out.sentences.append(f"{t.label}: no plain run of the same prompt, seed and steps on this page, so "
                                 "nothing to compare it with.")
            continue
        floor_run = next((o for o in plain if o is not base and o.prompt == base.prompt
                          and o.num_steps == base.num_steps and o.attrs.get("seed") != base.attrs.get("seed")), None)
        sb, how = _seconds(base, seconds)
        st, how_t = _seconds(t, seconds)
        out.comparisons.append(Comparison(
            baseline=base.label, truncated=t.label, intervention=t.intervention,
            token_steps_skipped=token_steps_skipped(t), seconds_baseline=sb, seconds_truncated=st,
            seconds_source=how if how == how_t else "mixed sources", distance=_distance(_final_x0(t), _final_x0(base)),
            floor=None if floor_run is None else _distance(_final_x0(floor_run), _final_x0(base)),
            floor_runs=None if floor_run is None else (base.label, floor_run.label)))
    for c in out.comparisons:
        out.sentences.extend(_sentences(c))
    if not out.comparisons and not out.sentences:
        out.headline = ("No frame-truncated run with its baseline on this page: the figures describe the runs; "
                        "there is no truncation verdict to draw.")
    elif out.comparisons:
        verdicts = [c.supports for c in out.comparisons]
        if all(v is True for v in verdicts):
            out.headline = "These runs support truncating (one prompt, one seed each: a hint, not evidence)."
        elif any(v is False for v in verdicts):
            out.headline = "These runs do not support truncating as run here."
        else:
            out.headline = "These runs cannot decide whether truncating is safe (no floor or no timing to judge by)."
    return out


def _sentences(c: Comparison) -> list[str]:
    said = [f"Compared: {c.truncated} against {c.baseline} (same prompt, seed and steps); {c.intervention}."]
    saved = c.time_saved
    if saved is None:
        timing = "time saved: not measured"
    elif saved >= 0:
        timing = (f"time saved {_pct(saved)} ({c.seconds_baseline:.1f} s → {c.seconds_truncated:.1f} s, "
                  f"{c.seconds_source})")
    else:
        timing = (f"slower by {_pct(-saved)} ({c.seconds_baseline:.1f} s → {c.seconds_truncated:.1f} s, "
                  f"{c.seconds_source})")
    said.append(f"Token-steps skipped {_pct(c.token_steps_skipped)}; {timing}.")
    if c.distance is None:
        said.append("Fidelity: the final x̂₀ of both runs is not stored, so it cannot be compared.")
    elif c.floor is None:
        said.append(f"Fidelity: the truncated run's final x̂₀ is {c.distance:.1%} from the baseline's (relative L2); "
                    "no second seed of this prompt is on the page, so there is no floor to judge that against.")
    else:
        ratio = c.distance / c.floor if c.floor > 0 else math.inf
        said.append(f"Fidelity: the truncated run's final x̂₀ is {c.distance:.1%} from the baseline's (relative L2); "
                    f"two plain seeds of the same prompt ({' and '.join(c.floor_runs or ())}) are {c.floor:.1%} "
                    f"apart — the floor: truncation moved the sample {ratio:.2f}× as far as a new "
                    "seed does.")
    if c.supports is True:
        said.append(f"Verdict: supports truncating here — faster, and closer to the baseline than "
                    f"{SUPPORT_FRACTION:.0%} of the seed floor. One prompt and one seed: run `latent-probe "
                    "study` over prompts for a confidence interval before relying on it.")
    elif c.supports is False:
        why = "it was not faster" if (c.time_saved or 0) <= 0 else (
            f"it moved the sample {c.distance / c.floor:.2f}× as far as a new seed does (the bar: "
            f"{SUPPORT_FRACTION:.2f}×), so it changes what is generated, not only how fast")
        said.append(f"Verdict: does not support truncating as run here — {why}.")
    else:
        said.append("Verdict: cannot be decided from these runs (no seed floor or no timing).")
    return said
