"""Metrics of a whole recorded run: streamed one step at a time, cached in memory and in the file.

Every function here reads a :class:`~latent_probe.store.reader.Run` step by step (a background thread
reads step s+1 from HDF5 while step s is reduced), so memory stays at a few step tensors however long
the run. Results are kept in ``run.cache`` (store/cache.py: memory, and ``/metrics`` in a writable file) keyed by
``METRICS_VERSION``; the store checks that a cached entry belongs to the data it came from (their checksums), so
a stale or planted cache (older definitions, a run that grew, numbers changed) is recomputed.
"""

from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import torch

from ..parameterization import NoiseLevel, Parameterization, estimate_x0_eps, recorded_level
from ..store import schema
from ..store.accessors import register_run_accessor
from .continuity import AdjacentFrameMetrics, StepChange, _nanmean_last, adjacent_frame_metrics, \
    frame_similarity_matrix, lag_similarity, noise_floor
from .continuity import step_change as _step_change
from .online import change_from_sums, from_sums
from .phases import Phase, Summary, expert_switch_mask, fit_phases, phase_ranges, summarize

if TYPE_CHECKING:  # pragma: no cover
    from ..store.reader import Run

__all__ = ["METRICS_VERSION", "RunContinuity", "RunStepChange", "RunMetrics", "continuity", "step_change", "gap",
           "iter_steps"]

# Bump when a definition or its numerics change: cached values with another version are recomputed.
METRICS_VERSION = 2  # 2: step change stores norm_ratio (was mag_ratio), one implementation with tensors


# The per-step results of a run are the same types as those of a tensor (leading step axis, ``space`` set):
RunContinuity = AdjacentFrameMetrics
RunStepChange = StepChange


def iter_steps(run: "Run", name: str, device: str | torch.device = "cpu", prefetch: int = 2
               ) -> Iterator[torch.Tensor]:
    """Yield [B, C, F, H, W] tensors of one quantity, step by step, reading ahead in a thread."""
    view = run.latents(name)
    n = len(view)
    q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()

    def reader() -> None:
        try:
            for i in range(n):
                if stop.is_set():
                    return
                q.put(view[i])
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            q.put(exc)
        q.put(None)

    thread = threading.Thread(target=reader, name="latent_probe-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield torch.from_numpy(item).to(device)
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.01)


# ------------------------------------------------------------------ cache (run.cache: the store owns it)
def needs_writing(run: "Run", space: str) -> bool:
    """True when ``run.metrics(space)`` would compute and cache (no sums from the run, no current cache)."""
    return space not in run.online_spaces and not run.cache.has(f"{space}/adjacent", METRICS_VERSION)


def _cached(run: "Run", key: str, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``key``'s arrays from the run's cache (current, and computed from these very data), else computed and put."""
    arrays = run.cache.get(key, METRICS_VERSION)
    if arrays is None:
        arrays = compute()
        run.cache.put(key, METRICS_VERSION, arrays)
    return arrays


# ------------------------------------------------------------------ metrics
SOURCES = ("auto", "online", "latents")


def _source(run: "Run", space: str, source: str, lag: int = 1) -> str:
    """Where ``space``'s metrics come from: the sums computed during the run ("online": every step, from the full
    precision tensors) or the stored latents ("latents"); "auto" prefers the first."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    online = space in run.online_spaces and lag == 1
    if source == "online" and not online:
        raise KeyError(f"no {'lag-1 ' if lag != 1 else ''}metrics of {space!r} were computed during this run "
                       f"(computed: {run.online_spaces})")
    if source == "auto":
        source = "online" if online else "latents"
    if source == "latents" and space not in run.quantities and space not in run.derivable:
        have = run.online_spaces
        raise KeyError(f"space {space!r} has no stored latents in this run (stored: {run.quantities}"
                       + (f"; lag-1 metrics computed during the run: {have})" if have else ")"))
    return source


def _scatter(run: "Run", arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rows of stored steps → [S, ...] arrays, NaN (False for masks) at the steps without latents."""
    kept, S = run.latent_steps, run.num_steps
    if len(kept) == S:
        return arrays
    out = {}
    for k, v in arrays.items():
        full = np.zeros((S, *v.shape[1:]), dtype=v.dtype) if v.dtype == bool else \
            np.full((S, *v.shape[1:]), np.nan, dtype=np.float64)
        full[kept] = v
        out[k] = full
    return out


def continuity(run: "Run", space: str = "x0", lag: int = 1, device: str = "cpu", source: str = "auto"
               ) -> AdjacentFrameMetrics:
    """Adjacent-frame (or lag-k) metrics of ``space`` for every step [S, ...], computed once and cached: from the
    sums computed during the run where there are some (``source="auto"``), else from the stored latents (steps
    whose latents were not stored are NaN)."""
    if _source(run, space, source, lag) == "online":
        mem = run.metrics.cache
        key = f"{space}/online"
        if key not in mem:
            sums = run.online_sums(space, ("sq", "dot", "dd"))
            if "sq" not in sums:
                raise ValueError(f"{space!r} has fewer than two frames: no frame pairs to compare")
            m = from_sums(sums["sq"], sums["dot"], sums["dd"], space)
            mem[key] = {k: getattr(m, k) for k in ("l2", "cos", "one_minus_cos", "norm_ratio", "zero_frames")}
        a = mem[key]
    else:
        def compute() -> dict[str, np.ndarray]:
            rows: dict[str, list[np.ndarray]] = {k: [] for k in ("l2", "cos", "one_minus_cos", "norm_ratio",
                                                                  "zero_frames")}
            for x in iter_steps(run, space, device):
                m = adjacent_frame_metrics(x) if lag == 1 else lag_similarity(x, lag)
                for k in rows:
                    rows[k].append(getattr(m, k))
            if not rows["l2"]:
                raise ValueError("the run has no committed step with stored latents")
            return _scatter(run, {k: np.stack(v) for k, v in rows.items()})

        key = f"{space}/adjacent" if lag == 1 else f"{space}/lag{lag}"
        a = _cached(run, key, compute)
    return AdjacentFrameMetrics(l2=a["l2"], cos=a["cos"], one_minus_cos=a["one_minus_cos"],
                                norm_ratio=a["norm_ratio"], l2_mean=_nanmean_last(a["l2"]),
                                cos_mean=_nanmean_last(a["cos"]), zero_frames=a["zero_frames"].astype(bool),
                                lag=lag, space=space)


def step_change(run: "Run", space: str = "pred", source: str = "auto") -> StepChange:
    """Relative L1 change and norm ratio of ``space`` between consecutive steps [S] (the tensor function
    :func:`latent_probe.metrics.step_change` over the run's steps, streamed), with ``expert_switch``. From the sums
    computed during the run where there are some (``source="auto"``); from stored latents only when every step's
    are stored."""
    if _source(run, space, source) == "online":
        mem = run.metrics.cache
        if f"{space}/online_change" not in mem:
            mem[f"{space}/online_change"] = change_from_sums(run.online_sums(space, ("change",))["change"])
        a = mem[f"{space}/online_change"]
    else:
        if len(run.latent_steps) != run.num_steps:
            raise ValueError(f"the step change of {space!r} needs every step's latents; this run stored "
                             f"{len(run.latent_steps)} of {run.num_steps} (record metrics=[{space!r}] during the run)")

        def compute() -> dict[str, np.ndarray]:
            if run.num_steps == 0:
                raise ValueError("the run has no committed step")
            sc = _step_change(x.double() for x in iter_steps(run, space))  # float64 rows: exact differences
            return {"rel_l1": sc.rel_l1[: run.num_steps], "norm_ratio": sc.norm_ratio[: run.num_steps]}

        a = _cached(run, f"{space}/step_change", compute)
    switch = expert_switch_mask(list(run.experts))
    return StepChange(rel_l1=a["rel_l1"], norm_ratio=a["norm_ratio"], space=space, expert_switch=switch)


def _eps_slope(param: Parameterization, level: NoiseLevel) -> float:
    """dε̂/d(pred) for each parameterisation, so ε̂_c − ε̂_u = slope · (c − u) without cancellation."""
    if param is Parameterization.FLOW:
        return 1.0 - level.sigma  # inverted flow: ε̂ = x_t − σ_own·u with σ_own = 1 − σ: the same magnitude
    if param is Parameterization.EPSILON:
        return 1.0
    if level.k_diffusion:  # x = x₀ + σ·ε, the model saw x/√(σ²+1)
        k = (level.sigma ** 2 + 1.0) ** 0.5
        return 1.0 / k if param is Parameterization.V else (-1.0 / level.sigma if level.sigma > 0 else float("nan"))
    if param is Parameterization.V:
        return level.alpha
    return -level.alpha / level.sigma if level.sigma > 0 else float("nan")  # sample


def gap(run: "Run") -> np.ndarray | None:
    """‖ε̂_cond − ε̂_uncond‖ / ‖ε̂_cond‖ per step [S] (over all of a step's values; NaN at steps without stored
    latents); None without both branches.

    The difference is taken as slope·(c − u) (flow: (1 − σ)(v_c − v_u)), never as a difference of two
    large ε̂ estimates, which cancels at σ ≈ 1.
    """
    if not {"pred_cond", "pred_uncond", "x_t"} <= set(run.quantities):
        return None
    param = Parameterization(run.attrs.get("parameterization", "flow_prediction"))
    convention = run.attrs.get("noise_convention") or ("flow" if param is Parameterization.FLOW
                                                       else "variance_preserving")

    def compute() -> dict[str, np.ndarray]:
        out = np.full(run.num_steps, np.nan)  # NaN at steps whose latents were not stored
        sig, alp, kept = run.sigmas, run.alphas, run.latent_steps
        steps = zip(iter_steps(run, "x_t"), iter_steps(run, "pred_cond"), iter_steps(run, "pred_uncond"))
        for row, (xt, c, u) in enumerate(steps):
            i = int(kept[row])  # the step this row holds
            level = recorded_level(convention, alp[i], sig[i])
            c, u = c.double(), u.double()
            eps_c = estimate_x0_eps(param, xt.double(), c, level)[1]
            diff = abs(_eps_slope(param, level)) * torch.linalg.vector_norm(c - u)
            norm_c = torch.linalg.vector_norm(eps_c)
            out[i] = float(diff / norm_c) if norm_c > 0 else np.nan
        return {"eps_gap": out}

    return _cached(run, "cond_uncond/eps_gap", compute)["eps_gap"]


def run_noise_floor(run: "Run") -> np.ndarray:
    """Adjacent-frame cosine x_t would show from noise alone at each step's (α, σ) [S]."""
    return noise_floor(run.sigmas, run.alphas)


def frame_similarity(run: "Run", space: str, step: int) -> np.ndarray:
    """Cosine similarity of every pair of frames at one step (0-based; negative counts from the end): [B, F, F].
    The step's latents must be stored (or derivable)."""
    S = run.num_steps
    s = step + S if step < 0 else step
    kept = run.latent_steps
    row = int(np.searchsorted(kept, s))
    if not 0 <= s < S or row >= len(kept) or kept[row] != s:
        raise KeyError(f"step {step} has no stored latents (this run stored steps {kept.tolist()[:20]}"
                       + ("..." if len(kept) > 20 else "") + ")")
    return frame_similarity_matrix(torch.from_numpy(run.latents(space)[row]))


def to_dataframe(run: "Run", space: str = "x0") -> Any:
    """Tidy table (step, batch, pair, metric, value) of the adjacent-frame metrics (needs pandas)."""
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover
        raise ImportError("to_dataframe needs pandas: pip install pandas") from None
    m = continuity(run, space)
    S, B, P = m.l2.shape
    s, b, p = np.meshgrid(np.arange(S), np.arange(B), np.arange(P), indexing="ij")
    frames = []
    for name in ("l2", "cos", "one_minus_cos", "norm_ratio"):
        frames.append(pd.DataFrame({"step": s.ravel(), "batch": b.ravel(), "pair": p.ravel(), "metric": name,
                                    "value": getattr(m, name).ravel()}))
    df = pd.concat(frames, ignore_index=True)
    df["space"] = space
    return df



# ------------------------------------------------------------------ the accessor: run.metrics
@register_run_accessor("metrics")
class RunMetrics:
    """``run.metrics``: every metric of a run, computed on first use and cached here (and under ``/metrics``
    in a writable file). ``run.metrics("x0")`` is the adjacent-frame continuity of x̂₀; ``run.metrics.summary(...)``,
    ``run.metrics.step_change(...)``, ... the rest. The store knows none of this: the class registers itself.
    """

    # once promoted onto Run (``run.summary``): Run still answers them with a DeprecationWarning, for one release
    moved_from_run = ("lag_similarity", "frame_similarity", "step_change", "eps_gap", "noise_floor", "phases",
                      "summary")

    def __init__(self, run: "Run") -> None:
        self._run = run

    @property
    def cache(self) -> dict[str, dict[str, np.ndarray]]:
        """What has been computed or read from the file so far, by key (the memory of ``run.cache``)."""
        return self._run.cache.memory

    def __call__(self, space: str = "x0", *, device: str = "cpu", source: str = "auto") -> AdjacentFrameMetrics:
        """Adjacent-frame continuity of ``space`` (x0, eps, x_t, pred, ...): ``.l2``, ``.cos`` [S, B, F−1],
        ``.l2_mean``, ``.cos_mean`` [S, B], ``.one_minus_cos``, ``.norm_ratio``. ``source``: "auto" (the metrics
        computed during the run where there are, else the stored latents), "online" or "latents"."""
        return continuity(self._run, space, device=device, source=source)

    def lag_similarity(self, space: str = "x0", k: int = 2) -> AdjacentFrameMetrics:
        """Frame f vs f+k metrics for every step: fields [S, B, F−k]."""
        return continuity(self._run, space, lag=k)

    def frame_similarity(self, space: str = "x0", step: int = -1) -> np.ndarray:
        """Cosine of every pair of frames at one step: [B, F, F]."""
        return frame_similarity(self._run, space, step)

    def step_change(self, space: str = "pred", source: str = "auto") -> StepChange:
        """Relative L1 change and norm ratio between consecutive steps: ``.rel_l1``, ``.norm_ratio`` [S]."""
        return step_change(self._run, space, source)

    def eps_gap(self) -> np.ndarray | None:
        """‖ε̂_cond − ε̂_uncond‖ / ‖ε̂_cond‖ per step [S], or None when the CFG branches were not captured."""
        return gap(self._run)

    def noise_floor(self) -> np.ndarray:
        """Adjacent-frame cosine that x_t would show from noise alone (static content), per step [S]."""
        return run_noise_floor(self._run)

    def phases(self, scheme: Any = "thirds") -> list[Phase]:
        """Step ranges (steps from 0): "thirds", "original" (0-4, 5-9, 10-19 of 20 steps; scaled to other lengths,
        see ``phases.fit_phases``), "0-4,5-9,10-39" (both ends included; "1-based:1-5,6-10,11-40" for 1-based
        ranges) or [(name, start, stop)] (stop excluded)."""
        S = self._run.num_steps
        return phase_ranges(S, fit_phases(S, scheme)[0])

    def summary(self, space: str = "x0", phases: Any = "thirds") -> Summary:
        """Phase statistics (``.to_text()`` prints the original analysis's table; ``.to_dict()``). Steps without
        values (latents not stored there) are left out of the means; :meth:`coverage` says how many."""
        import warnings

        m = self(space)
        with warnings.catch_warnings():  # a phase with no stored step has a NaN mean, not a warning
            warnings.simplefilter("ignore", RuntimeWarning)
            return summarize(space, np.nanmean(m.l2_mean, axis=1), np.nanmean(m.cos_mean, axis=1),
                             list(self._run.experts), phases)

    def coverage(self, space: str = "x0") -> str:
        """"" when ``space``'s metrics cover every step; else one line saying which steps they cover."""
        run = self._run
        if _source(run, space, "auto") == "online" or len(run.latent_steps) == run.num_steps:
            return ""
        kept = run.latent_steps.tolist()
        shown = ", ".join(map(str, kept[:12])) + (", …" if len(kept) > 12 else "")
        return (f"{space} metrics cover {len(kept)} of {run.num_steps} steps (latents stored at steps {shown}; "
                "record metrics= for every step): means are over those steps only")

    def to_dataframe(self, space: str = "x0") -> Any:
        """Tidy pandas DataFrame (step, batch, pair, metric, value, space)."""
        return to_dataframe(self._run, space)
