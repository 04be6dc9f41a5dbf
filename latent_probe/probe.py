"""``LatentProbe``: attach on enter, record every denoising step, detach exactly on exit."""

from __future__ import annotations

import os
import warnings
from typing import Any, Iterable

import torch

from .adapters import TargetParts, UnsupportedTargetError, resolve_target
from .capture import BRANCHES, CAPTURABLE, LayoutError, StepCapture, check_step_signature
from .hooks import HookRegistry, static_lookup
from .parameterization import Parameterization, parameterization_of
from .store import schema
from .store.reader import Run, open_run
from .store.writer import DiskFullError, RunWriter

__all__ = ["LatentProbe"]


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank())
    return 0


class LatentProbe:
    """Record x_t, the model prediction, x̂₀ and ε̂ at every denoising step of a generation.

    ``with LatentProbe(pipe, "run.h5"): pipe(...)`` — or ``wan_t2v.generate(...)`` for Wan2.2 repository
    objects, or any ``(modules, scheduler)`` pair. Stored latents are [B, C, F, H, W] per step; read
    them with ``probe.run`` after the block or ``latent_probe.open_run(path)``.

    Args:
        target: ``WanT2V``/``WanI2V``/``WanTI2V``, a diffusers ``WanPipeline``-like pipeline, or
            ``(modules, scheduler)``.
        path: HDF5 file to stream to; None keeps the run in memory.
        capture: quantities to record, from ``("x_t", "pred", "x0", "eps")``.
        store_dtype: ``"float16"`` (half the disk) or ``"float32"``.
        cfg_branches: also record the cond and uncond predictions.
        overwrite: replace an existing file at ``path``.
        layout: einops layout of the tensors ``step`` receives: for ``(modules, scheduler)`` targets (default
            ``"b c f h w"``) and for diffusers pipelines latent_probe has no spec for; a known pipeline's is its own.
        parameterization: override the prediction type read from the scheduler's configuration.
        slots: host buffers in flight; the sampling loop blocks only when all are being written.
        attrs: extra run attributes (JSON-serialisable), e.g. ``{"prompt": ...}``; names the library writes
            itself (``schema``, ``parameterization``, ``experts``, ``boundary``, ...) are refused.
        intervene: an intervention (e.g. ``FrameTruncation``) — the only way the probe changes a generation.
        on_write_error: ``"raise"`` (default): a failed write — a full disk — ends the generation with one
            WriterError; ``"warn"``: recording stops with one warning and the generation goes on. Either
            way every step committed before stays readable.
    """

    def __init__(
        self,
        target: Any,
        path: str | os.PathLike | None = None,
        *,
        capture: Iterable[str] = ("x_t", "pred", "x0", "eps"),
        store_dtype: str = "float16",
        cfg_branches: bool = False,
        overwrite: bool = False,
        layout: str | None = None,
        parameterization: str | Parameterization | None = None,
        slots: int = 3,
        attrs: dict[str, Any] | None = None,
        intervene: Any = None,
        on_write_error: str = "raise",
    ) -> None:
        capture = tuple(capture)
        unknown = [c for c in capture if c not in CAPTURABLE]
        if unknown:
            raise ValueError(f"cannot capture {unknown}; choose from {CAPTURABLE} (cfg_branches=True adds "
                             f"{BRANCHES})")
        if not capture and not cfg_branches:
            raise ValueError("nothing to capture: give capture= or cfg_branches=True")
        if on_write_error not in ("raise", "warn"):
            raise ValueError(f"on_write_error must be 'raise' or 'warn', got {on_write_error!r}")
        user_attrs = dict(attrs or {})
        reserved = sorted(set(user_attrs) & schema.RESERVED_ATTRS)
        if reserved:
            raise ValueError(f"attrs {reserved} are written by latent_probe itself; choose other names")
        schema.encode_attrs(user_attrs)  # a value that cannot be stored fails here, before anything runs
        self.target = target
        self.path = None if path is None else os.fspath(path)
        self.capture = capture
        self.store_dtype = store_dtype
        self.cfg_branches = cfg_branches
        self.overwrite = overwrite
        self.layout = layout
        self.parameterization = None if parameterization is None else Parameterization(parameterization)
        self.slots = slots
        self.attrs = user_attrs
        self.intervene = intervene
        self.on_write_error = on_write_error
        self.parts: TargetParts | None = None
        self.capture_state: StepCapture | None = None
        self._registry = HookRegistry()
        self._writer: RunWriter | None = None
        self._run: Run | None = None
        self._active = False

    # ------------------------------------------------------------------ context
    def __enter__(self) -> "LatentProbe":
        if self._active:
            raise RuntimeError("this LatentProbe is already attached; use a new one per generation")
        parts = resolve_target(self.target, self.layout)
        if parts.scheduler is not None and self.parameterization is None:
            parameterization_of(parts.scheduler)  # an unknown prediction type fails before generation starts
        for cls in ([type(parts.scheduler)] if parts.scheduler is not None else []) + list(parts.scheduler_classes):
            try:
                check_step_signature(cls)
            except LayoutError as exc:
                raise UnsupportedTargetError(str(exc)) from None
        self.parts = parts
        self._run = None
        writes = _rank() == 0
        if not writes:
            warnings.warn("latent_probe: not rank 0 of torch.distributed; this process records nothing",
                          RuntimeWarning, stacklevel=2)
        clash = sorted(set(self.attrs) & set(parts.attrs))
        if clash:
            raise ValueError(f"attrs {clash} are recorded by latent_probe from the target itself; choose other "
                             "names")
        attrs = dict(parts.attrs)
        attrs.update(self.attrs)
        if self.intervene is not None:
            attrs["intervention"] = self.intervene.describe()
        if writes:
            try:
                self._writer = RunWriter(self.path, self.store_dtype, self.slots, self.overwrite, attrs=attrs,
                                         experts=list(parts.experts), on_error=self.on_write_error)
            except DiskFullError as exc:
                if self.on_write_error == "raise":
                    raise
                warnings.warn(f"{exc}; the generation goes on unrecorded", RuntimeWarning, stacklevel=2)
                writes = False
        if not writes:
            if self.intervene is not None:  # every rank must run the same (changed) computation
                try:
                    self.intervene.attach(self._registry, parts, None)
                except BaseException:
                    self._registry.remove_all()
                    raise
            self._active = True
            return self
        self.capture_state = StepCapture(parts, self._writer, self.capture, self.cfg_branches,
                                         self.parameterization, attrs)
        try:
            self._attach(parts, self.capture_state)
        except BaseException:
            self._registry.remove_all()
            self._writer.close()
            raise
        self._active = True
        return self

    def _attach(self, parts: TargetParts, cap: StepCapture) -> None:
        reg = self._registry
        if self.intervene is not None:
            self.intervene.attach(reg, parts, cap)
        for name, module in parts.experts.items():
            reg.forward(module, cap.forward_hook(name))
        if parts.scheduler is not None:
            reg.intercept(parts.scheduler, "step", cap.step_listener(parts.scheduler))
        scoped = parts.generation_call is not None
        for cls in parts.scheduler_classes:
            reg.intercept(cls, "step", cap.class_step_listener(scoped))
        for owner, attr, make in parts.call_patches:
            reg.intercept(owner, attr, make(static_lookup(owner, attr)))
        if scoped:
            owner, attr = parts.generation_call
            reg.intercept(owner, attr, cap.scope_listener())

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        self._active = False
        try:
            self._registry.remove_all()
        finally:
            self._close(exc_type, exc)
        return False

    def _close(self, exc_type: Any, exc: Any) -> None:
        if self._writer is None:
            return
        final: dict[str, Any] = {"complete": exc_type is None}
        if exc_type is not None:
            final["error"] = (f"{exc_type.__name__}: {exc}".splitlines() or [exc_type.__name__])[0]
        if self.capture_state is not None:
            final["steps_seen"] = self.capture_state.steps
            if self.capture_state.stopped and exc_type is None:
                final.update(complete=False, error=self.capture_state.stopped)
        writer, self._writer = self._writer, None
        try:
            writer.close(final)
        except Exception:
            if exc_type is None:
                raise
        if self.path is None:
            self._run = Run(writer.file, owns_file=True, source=None) if writer.steps_written else None

    # ------------------------------------------------------------------ results
    @property
    def run(self) -> Run:
        """The recorded run (after the block). In memory for path=None, else the file opened read-only."""
        if self._active:
            raise RuntimeError("probe.run is available after the with-block; open_run(path, swmr=True) "
                               "follows a live file")
        if self._run is None and self.path is not None and os.path.exists(self.path):
            self._run = open_run(self.path)
        if self._run is None:
            raise RuntimeError("no step was recorded (did the generation call scheduler.step inside the block?)")
        return self._run

    @property
    def hooks_attached(self) -> int:
        """Number of hooks and patches this probe currently owns (0 outside the block)."""
        return len(self._registry)
