"""Baseline against truncated generation, same seed: token-steps skipped, DiT time saved, fidelity.

``compare_truncation(target, run_fn, keep=3)`` runs ``run_fn()`` (one seeded generation of ``target``)
twice: under a plain ``LatentProbe`` and under one with ``FrameTruncation``. DiT time is the sum over
expert calls of pre-hook → post-hook (input slicing, forward, fill, probe hook included), with CUDA
events on CUDA (device time, no sync inside the loop) and ``perf_counter`` on the CPU (``study.timing.DiTTimer``); wall time is the
whole ``run_fn()`` (synchronised on CUDA). Fidelity compares the two runs' last recorded x̂₀ and, when
``run_fn`` returns a tensor (latent or video), the two outputs.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..adapters import resolve_target
from ..interventions.frame_truncation import FrameTruncation
from ..metrics.formulas import cosine_from_sums, relative_l2
from ..metrics.reductions import diff_norms
from ..probe import LatentProbe
from ..study.timing import DiTTimer

__all__ = ["TruncationComparison", "compare_truncation", "fidelity"]


def fidelity(result: Any, reference: Any) -> dict[str, float]:
    """Relative L2 ‖a − b‖/‖b‖ and cosine of two same-shaped arrays or tensors (the metrics' float64 sums and
    formulas: ``reductions.diff_norms``, ``formulas.relative_l2`` / ``cosine_from_sums``)."""
    a = result.detach().cpu() if isinstance(result, torch.Tensor) else torch.from_numpy(np.asarray(result))
    b = reference.detach().cpu() if isinstance(reference, torch.Tensor) else torch.from_numpy(np.asarray(reference))
    if a.shape != b.shape:
        raise ValueError(f"cannot compare shapes {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.to(torch.float64).reshape(1, -1), b.to(torch.float64).reshape(1, -1)
    r = diff_norms(a, b, "f d", frame_axes=("d",), dot=True)  # one "frame" of all values
    return {"rel_l2": float(relative_l2(r["dd"], r["sq_b"])[0]),
            "cosine": float(cosine_from_sums(r["sq_a"], r["sq_b"], r["dd"], r["dot"])[0])}


def _psnr(a: torch.Tensor, b: torch.Tensor, value_range: float) -> float:
    mse = float(((a.detach().double().cpu() - b.detach().double().cpu()) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * np.log10(value_range ** 2 / mse)


@dataclass
class TruncationComparison:
    """Result of :func:`compare_truncation`. Times in seconds."""

    intervention: dict[str, Any]
    keys: list[int] | None
    dit_calls: int
    truncated_calls: int
    token_steps_full: int
    token_steps_run: int
    dit_time_baseline_s: float
    dit_time_truncated_s: float
    wall_baseline_s: float
    wall_truncated_s: float
    final_x0: dict[str, float] | None = None
    output: dict[str, float] | None = None
    baseline_path: str | None = None
    truncated_path: str | None = None
    baseline_run: Any = field(default=None, repr=False)
    truncated_run: Any = field(default=None, repr=False)

    @property
    def token_steps_skipped_fraction(self) -> float:
        return 0.0 if not self.token_steps_full else 1.0 - self.token_steps_run / self.token_steps_full

    @property
    def dit_time_saved_s(self) -> float:
        return self.dit_time_baseline_s - self.dit_time_truncated_s

    @property
    def dit_time_saved_fraction(self) -> float:
        return 0.0 if not self.dit_time_baseline_s else self.dit_time_saved_s / self.dit_time_baseline_s

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("baseline_run", "truncated_run")}
        out.update(token_steps_skipped_fraction=self.token_steps_skipped_fraction,
                   dit_time_saved_s=self.dit_time_saved_s, dit_time_saved_fraction=self.dit_time_saved_fraction)
        return out


def _timed_generation(target: Any, run_fn: Callable[[], Any], path: str | None, probe_kwargs: dict[str, Any],
                      intervene: Any) -> tuple[Any, Any, float, float]:
    """(output, Run, DiT seconds, wall seconds) of one probed generation."""
    cuda = torch.cuda.is_available()
    with LatentProbe(target, path, intervene=intervene, **probe_kwargs) as probe:
        timer = DiTTimer(list(probe.parts.experts.values()), cpu_clock="wall").attach()
        try:
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = run_fn()
            if cuda:
                torch.cuda.synchronize()
            wall = time.perf_counter() - t0
        finally:
            timer.detach()
    return out, probe.run, timer.seconds(), wall


def _ft_args(ft: FrameTruncation) -> dict[str, Any]:
    return {"keep": ft.keep if ft.keyframes is None else None, "keyframes": ft.keyframes, "until": ft.until,
            "fill": ft.fill, "positions": ft.positions}


def compare_truncation(target: Any, run_fn: Callable[[], Any], keep: int | None = 3, *,
                       keyframes: Sequence[int] | None = None, until: str | int = "boundary", fill: str = "linear",
                       positions: str = "true",
                       baseline_path: str | os.PathLike | None = None,
                       truncated_path: str | os.PathLike | None = None,
                       probe_kwargs: dict[str, Any] | None = None, output_range: float | None = None,
                       warmup: bool = False) -> TruncationComparison:
    """Run ``run_fn`` (one generation of ``target`` with a fixed seed) as baseline, then truncated.

    Args:
        target: what ``LatentProbe`` instruments (``WanT2V``, a ``WanPipeline``, ...).
        run_fn: runs one generation and returns its result (a latent, a video tensor, or anything).
        keep, keyframes, until, fill, positions: the ``FrameTruncation``.
        baseline_path, truncated_path: HDF5 files for the two runs (None: in memory).
        probe_kwargs: more ``LatentProbe`` arguments (default ``capture=("x_t", "x0")``,
            ``store_dtype="float32"``).
        output_range: peak-to-peak range of ``run_fn``'s output (2.0 for Wan's decoded video in [−1, 1]):
            adds PSNR in dB.
        warmup: run both variants once first (in memory, discarded), so neither timed run pays first-call
            costs (CUDA context, kernel selection for the new shapes).

    ``until="boundary"`` on a single-expert model raises ``ValueError`` before anything runs.
    """
    ft = FrameTruncation(keep if keyframes is None else None, keyframes=keyframes, until=until, fill=fill,
                         positions=positions)
    ft.validate(resolve_target(target))  # fail before spending a baseline generation
    kw = {"capture": ("x_t", "x0"), "store_dtype": "float32"}
    kw.update(probe_kwargs or {})
    paths = [None if p is None else os.fspath(p) for p in (baseline_path, truncated_path)]
    if warmup:  # both variants once, unrecorded beyond memory, so neither timed run pays first-call costs
        for warm in (None, FrameTruncation(**_ft_args(ft))):
            _, run, _, _ = _timed_generation(target, run_fn, None, {"capture": ("x_t",)}, warm)
            run.close()
    out_b, run_b, dit_b, wall_b = _timed_generation(target, run_fn, paths[0], kw, None)
    out_t, run_t, dit_t, wall_t = _timed_generation(target, run_fn, paths[1], kw, ft)
    final = None
    last_stored = all(r.num_steps and len(r.latent_steps) and r.latent_steps[-1] == r.num_steps - 1
                      for r in (run_b, run_t))  # x̂₀ of the final step itself, not of the last one stored
    if "x0" in run_b.quantities and "x0" in run_t.quantities and last_stored:
        final = fidelity(run_t.latents("x0")[-1], run_b.latents("x0")[-1])
    output = None
    if isinstance(out_b, torch.Tensor) and isinstance(out_t, torch.Tensor) and out_b.shape == out_t.shape:
        output = fidelity(out_t, out_b)
        if output_range is not None:
            output["psnr_db"] = _psnr(out_t, out_b, output_range)
    s = ft.summary()
    return TruncationComparison(
        intervention=ft.describe(), keys=ft.keys_used, dit_calls=s["dit_calls"], truncated_calls=s["truncated_calls"],
        token_steps_full=ft.token_steps_full, token_steps_run=ft.token_steps_run,
        dit_time_baseline_s=dit_b, dit_time_truncated_s=dit_t, wall_baseline_s=wall_b, wall_truncated_s=wall_t,
        final_x0=final, output=output, baseline_path=paths[0], truncated_path=paths[1],
        baseline_run=run_b, truncated_run=run_t)
