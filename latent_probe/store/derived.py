"""x̂₀ and ε̂ derived on read from a run's stored x_t and prediction, instead of stored (half the bytes of four).

Each row is computed as the capture computed it (``parameterization.estimate_x0_eps``): from the stored x_t and
prediction cast back to the dtypes the capture saw (``source_dtypes``), the step's stored (α, σ) and the run's
``noise_convention``, σ as a tensor of the scheduler's own dtype where the capture used one. So with
``store_dtype="float32"`` and float32 (or bfloat16/float16) sources a derived row is bit-identical to the x̂₀ /
ε̂ the capture would have stored in float32. From float16-stored inputs the rounding of x_t and of the
prediction carries into the result: docs/hdf5-schema.md states the error measured.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..parameterization import NOISE_CONVENTIONS, Parameterization, estimate_x0_eps, recorded_level
from .lazy import RowView

if TYPE_CHECKING:  # pragma: no cover
    from .reader import Run

__all__ = ["DerivedView", "derive_refusal"]

_TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
                 "float64": torch.float64}


class DerivedView(RowView):
    """Lazy [K, B, C, F, H, W] float32 view of x̂₀ or ε̂, rows as the stored x_t's (``steps``)."""

    derived = True

    def __init__(self, run: "Run", name: str) -> None:
        if name not in ("x0", "eps"):
            raise KeyError(f"only x0 and eps are derived on read, not {name!r}")
        self._run = run
        self.name = name
        self._x_t = run.latents("x_t")
        self._pred = run.latents("pred")
        attrs = run.attrs
        self._param = Parameterization(attrs["parameterization"])
        self._convention = str(attrs["noise_convention"])
        src = attrs.get("source_dtypes") if isinstance(attrs.get("source_dtypes"), dict) else {}
        self._dtypes = {k: _TORCH_DTYPES.get(str(src.get(k)), torch.float32) for k in ("x_t", "pred")}
        self._sigma_dtype = _TORCH_DTYPES.get(str(src.get("sigma"))) if "sigma" in src else None
        self._sigmas = run.sigmas
        self._alphas = run.alphas

    @property
    def steps(self) -> np.ndarray:
        return self._x_t.steps

    @property
    def shape(self) -> tuple[int, ...]:
        return self._x_t.shape

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float64 if self._dtypes["x_t"] == torch.float64 else np.float32)

    @property
    def step_nbytes(self) -> int:
        return int(np.prod(self.shape[1:])) * self.dtype.itemsize

    @property
    def _rows(self) -> int:
        return len(self._x_t)

    def row(self, k: int) -> np.ndarray:
        """Row k ([B, C, F, H, W]), computed from the stored x_t and prediction of step ``steps[k]``."""
        step = int(self.steps[k])
        x_t = torch.from_numpy(np.asarray(self._x_t[k])).to(self._dtypes["x_t"])
        pred = torch.from_numpy(np.asarray(self._pred[k])).to(self._dtypes["pred"])
        level = recorded_level(self._convention, self._alphas[step], self._sigmas[step])
        sigma_tensor = None
        if level.flow and self._sigma_dtype is not None:  # the scheduler's own σ, as the capture used it
            own = 1.0 - level.sigma if level.inverted else level.sigma
            sigma_tensor = torch.tensor(own, dtype=self._sigma_dtype)
        x0, eps = estimate_x0_eps(self._param, x_t, pred, level, sigma_tensor)
        return (x0 if self.name == "x0" else eps).numpy()

    def _one(self, i: int, rest: tuple) -> np.ndarray:
        return self.row(i)[rest] if rest else self.row(i)

    def _some(self, rows: slice | np.ndarray, rest: tuple) -> np.ndarray:
        rows = np.arange(len(self))[rows]
        out = np.stack([self.row(int(i)) for i in rows]) if rows.size else np.zeros((0, *self.shape[1:]), self.dtype)
        return out[(slice(None), *rest)] if rest else out

    def __repr__(self) -> str:
        return f"DerivedView({self.name!r}, shape={self.shape}, dtype={self.dtype}, from x_t and pred)"


def derive_refusal(run: "Run") -> str | None:
    """Why x̂₀ / ε̂ cannot be derived on read from ``run``'s stored x_t and prediction; None when they can."""
    if not {"x_t", "pred"} <= set(run._latents):
        return "x_t and pred were not both stored"
    if "noise_convention" not in run._root_attrs or "parameterization" not in run._root_attrs:
        return "the file does not record its noise convention (written before latent_probe 0.3's schema 3)"
    if run._root_attrs.get("noise_convention") not in NOISE_CONVENTIONS or \
            run._root_attrs.get("parameterization") not in {p.value for p in Parameterization}:
        return (f"unknown noise convention {run._root_attrs.get('noise_convention')!r} or parameterization "
                f"{run._root_attrs.get('parameterization')!r}")
    src = run._root_attrs.get("source_dtypes")
    if src is not None and (not isinstance(src, dict) or any(
            v not in ("float16", "bfloat16", "float32", "float64") for v in src.values())):
        return f"unreadable source_dtypes {src!r}"
    return None
