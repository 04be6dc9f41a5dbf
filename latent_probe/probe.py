"""``LatentProbe``: attach on enter, record every denoising step, detach exactly on exit."""

from __future__ import annotations

import os
import threading
import uuid
import warnings
from typing import Any, Iterable

import torch

from .adapters import TargetParts, UnsupportedTargetError, resolve_target
from .block_probe import BlockProbe
from .capture import LayoutError, StepCapture, check_step_signature
from .hooks import HookRegistry
from .latent_steps import LatentStepsError
from .metrics.online import OnlineSums
from .recorder import GenerationRecorder
from .parameterization import Parameterization, check_scheduler, parameterization_of, scheduler_rule
from .store import schema
from .store.reader import Run, open_run
from .store.writer import DiskFullError, RunWriter
from .storage_options import DEFAULT_CAPTURE, StorageOptions

__all__ = ["LatentProbe", "StorageOptions"]


# Probes entered or left in several threads at once share class-level attributes (a pipeline class's __call__,
# Wan2.2's scheduler classes' step): installing or removing their one dispatcher is serialised here.
_HOOKS_LOCK = threading.RLock()


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank())
    return 0


class LatentProbe:
    """Record x_t, the model prediction, x̂₀ and ε̂ at every denoising step of a generation.

    ``with LatentProbe(pipe, "run.h5"): pipe(...)`` — or ``wan_t2v.generate(...)`` for Wan2.2 repository
    objects, or any ``(modules, scheduler)`` pair. Stored latents are [B, C, F, H, W] per step; read
    them with ``probe.run`` after the block or ``latent_probe.open_run(path)``.

    Each generation inside the block is its own run: the first goes to ``path``, the n-th to
    ``<stem>.gen<n><suffix>`` beside it (``run.gen2.h5``); ``probe.runs`` lists them all, ``probe.paths`` their
    files. A generation is one call of the pipeline (``pipe(...)``) or of ``generate``; for ``(modules,
    scheduler)`` targets, the steps between two ``scheduler.set_timesteps`` calls (docs/capture.md).

    Args:
        target: ``WanT2V``/``WanI2V``/``WanTI2V``, a diffusers ``WanPipeline``-like pipeline, or
            ``(modules, scheduler)``.
        path: HDF5 file to stream the first generation to (the n-th goes to ``<stem>.gen<n><suffix>``); None keeps
            the runs in memory.
        capture: quantities whose latents are stored, from ``("x_t", "pred", "x0", "eps")``; ``()`` stores none
            (give ``metrics=``).
        metrics: spaces, from the same four, whose adjacent-frame metrics and step change are computed during the
            run, on the tensors' device (the fused kernel on a GPU) and from their full precision; their float64
            sums are stored every step under ``/online`` (kilobytes a run) and ``run.metrics(space)`` reads them.
        latent_steps: the steps whose latents are stored: ``"all"`` (default), ``"none"``, an int k (every k-th
            step), or terms like ``"every:4,last,boundary:2"`` (latent_probe.latent_steps says which).
        store_dtype: ``"float16"`` (half the disk) or ``"float32"``.
        cfg_branches: also record the cond and uncond predictions.
        overwrite: replace an existing file at ``path`` (and at the later generations' ``<stem>.gen<n><suffix>``).
        layout: einops layout of the tensors ``step`` receives: for ``(modules, scheduler)`` targets (default
            ``"b c f h w"``) and for diffusers pipelines latent_probe has no spec for; a known pipeline's is its own.
        parameterization: override the prediction type read from the scheduler's configuration.
        slots: host buffers in flight; the sampling loop blocks only when all are being written.
        attrs: extra run attributes (JSON-serialisable), e.g. ``{"prompt": ...}``; names the library writes
            itself (``schema``, ``parameterization``, ``experts``, ``boundary``, ...) are refused.
        intervene: an intervention (e.g. ``FrameTruncation``) — the only way the probe changes a generation.
        blocks: probe each expert's transformer blocks (latent_probe.block_probe): ``"all"``, ``"every:k"`` or a
            list of indices; per step, branch and block the adjacent-frame sums of the block output, the update size
            and its step-to-step change, and MagCache's residual ratio are stored under ``/blocks`` (kilobytes a run).
        attention_reach: with ``blocks=``, query tokens sampled a frame (seeded) for attention's temporal reach: the
            share of each head's attention mass at frame distance d (0: off).
        block_change: keep each probed block's previous update on the device (float32, blocks × 2 × F'·T·D values)
            for the step-to-step change; False saves that memory.
        block_steps: with ``blocks=``, the steps (``latent_steps``' grammar: ``"0,10,19"``, ``"every:5"``,
            ``"boundary"``, a list of ints) at which the probed blocks' full output hidden states [B, F', T, D] are
            stored, per CFG branch, in the store dtype, like latents (``run.blocks.hidden(step, block, branch)``).
            Large: a Wan A14B 480p run stores ≈335 MB per (step, block, branch) in float16. Default: none.
        storage: all the storage arguments above as one checked ``StorageOptions`` (instead of the keywords).
        on_write_error: ``"raise"`` (default): a failed write — a full disk — ends the generation with one
            WriterError; ``"warn"``: recording stops with one warning and the generation goes on. Either
            way every step committed before stays readable.
    """

    def __init__(
        self,
        target: Any,
        path: str | os.PathLike | None = None,
        *,
        capture: Iterable[str] = DEFAULT_CAPTURE,
        metrics: Iterable[str] = (),
        latent_steps: Any = "all",
        store_dtype: str = "float16",
        cfg_branches: bool = False,
        overwrite: bool = False,
        layout: str | None = None,
        parameterization: str | Parameterization | None = None,
        slots: int = 3,
        attrs: dict[str, Any] | None = None,
        intervene: Any = None,
        on_write_error: str = "raise",
        blocks: Any = None,
        attention_reach: int = 0,
        block_change: bool = True,
        block_steps: Any = None,
        storage: StorageOptions | None = None,
    ) -> None:
        if storage is None:
            storage = StorageOptions(capture=capture, metrics=metrics, latent_steps=latent_steps,
                                     store_dtype=store_dtype, cfg_branches=cfg_branches, overwrite=overwrite,
                                     on_write_error=on_write_error, slots=slots, blocks=blocks,
                                     attention_reach=attention_reach, block_change=block_change,
                                     block_steps=block_steps)
        elif not isinstance(storage, StorageOptions):
            raise ValueError(f"storage= takes a StorageOptions, got {type(storage).__name__}")
        if storage.blocks is not None and intervene is not None:
            raise ValueError("blocks= with intervene=: block probes of DiT calls an intervention changes are not "
                             "supported yet")
        user_attrs = dict(attrs or {})
        if len(user_attrs) > schema.MAX_USER_ATTRS:
            raise ValueError(f"attrs has {len(user_attrs)} entries; a run keeps at most {schema.MAX_USER_ATTRS} "
                             "(put a large table in one JSON value)")
        reserved = sorted(set(user_attrs) & schema.RESERVED_ATTRS)
        if reserved:
            raise ValueError(f"attrs {reserved} are written by latent_probe itself; choose other names")
        schema.encode_attrs(user_attrs)  # a value that cannot be stored fails here, before anything runs
        self.target = target
        self.path = None if path is None else os.fspath(path)
        self.storage = storage
        self.capture = storage.capture
        self.metrics = storage.metrics
        self.latent_steps = storage.selection
        self.store_dtype = storage.store_dtype
        self.cfg_branches = storage.cfg_branches
        self.overwrite = storage.overwrite
        self.layout = layout
        self.parameterization = None if parameterization is None else Parameterization(parameterization)
        self.slots = storage.slots
        self.attrs = user_attrs
        self.intervene = intervene
        self.on_write_error = storage.on_write_error
        self.blocks = storage.blocks
        self.attention_reach = storage.attention_reach
        self.block_change = storage.block_change
        self.block_steps = storage.hidden_selection
        self._block_probe: BlockProbe | None = None
        self.parts: TargetParts | None = None
        self.capture_state: StepCapture | None = None
        self.recorder: GenerationRecorder | None = None
        self._registry = HookRegistry()
        self._runs: list[Run] | None = None
        self._paths: list[str] = []
        self._memory: list[Run] = []
        self._active = False
        self._probe_id = ""
        self._writer_args: dict[str, Any] = {}

    # ------------------------------------------------------------------ context
    def __enter__(self) -> "LatentProbe":
        if self._active:
            raise RuntimeError("this LatentProbe is already attached; use a new one per generation")
        parts = resolve_target(self.target, self.layout)
        if parts.scheduler is not None and self.parameterization is None:
            parameterization_of(parts.scheduler)  # an unknown prediction type fails before generation starts
        for cls in ([type(parts.scheduler)] if parts.scheduler is not None else []) + list(parts.scheduler_classes):
            scheduler_rule(cls)  # a scheduler whose σ convention is not verified is refused, by name
        if parts.scheduler is not None:
            check_scheduler(parts.scheduler)  # ... and one configured to clip or threshold its x̂₀
            try:
                check_step_signature(cls)
            except LayoutError as exc:
                raise UnsupportedTargetError(str(exc)) from None
        if self.latent_steps.boundary and parts.attrs.get("boundary_timestep") is None:
            raise LatentStepsError(f"latent_steps={self.latent_steps.spec!r} stores steps around the expert switch, "
                                   f"but this {parts.family} target has one expert (no boundary)")
        if self.block_steps is not None and self.block_steps.boundary and parts.attrs.get("boundary_timestep") is None:
            raise LatentStepsError(f"block_steps={self.block_steps.spec!r} keeps steps around the expert switch, "
                                   f"but this {parts.family} target has one expert (no boundary)")
        self._block_probe = None if self.blocks is None else BlockProbe(parts, self.blocks, self.attention_reach,
                                                                         self.block_change, self.block_steps)
        self.parts = parts
        self._runs, self._paths, self._memory = None, [], []
        self._probe_id = uuid.uuid4().hex
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
        if self._block_probe is not None:
            attrs["block_probe"] = self._block_probe.describe()
        rec: GenerationRecorder | None = None
        if writes:
            self._writer_args = dict(attrs=attrs, experts=list(parts.experts), on_error=self.on_write_error,
                                     probe_id=self._probe_id,
                                     latent_rows=not self.latent_steps.all and bool(self.capture or self.cfg_branches))
            if self.path is not None and not self.overwrite:
                taken = sorted(schema.generation_siblings(self.path).values())
                if taken:
                    raise FileExistsError(f"{taken[0]} exists (a later generation of an earlier run at {self.path});"
                                          " pass overwrite=True to replace it")
            rec = GenerationRecorder(self._open_generation)
            if rec.open_first() is None:
                writes = False
        if not writes or rec is None:
            if self.intervene is not None:  # every rank must run the same (changed) computation
                # a recorder that writes nothing still counts generations and steps: the intervention's step
                # index (an int ``until``) must be the recording rank's, not 0 at every step
                counter = GenerationRecorder(lambda generation: None)
                with _HOOKS_LOCK:
                    try:
                        self.intervene.attach(self._registry, parts, counter)
                        counter.delimit(self._registry, parts, self.target)
                    except BaseException:
                        self._registry.remove_all()
                        raise
            self._active = True
            return self
        self.recorder = rec
        self.capture_state = StepCapture(parts, rec, self.capture, self.cfg_branches,
                                         self.parameterization, attrs,
                                         online=OnlineSums(self.metrics) if self.metrics else None,
                                         latent_steps=None if self.latent_steps.all or self.latent_steps.none
                                         else self.latent_steps, blocks=self._block_probe)
        if self._block_probe is not None:
            self._block_probe.recorder = rec
            rec.subscribe(self._block_probe)
        try:
            with _HOOKS_LOCK:
                try:
                    self._attach(parts, rec, self.capture_state)
                except BaseException:
                    self._registry.remove_all()
                    raise
        except BaseException:
            self.recorder = None
            if rec.writer is not None:
                rec.writer.close()
            raise
        self._active = True
        return self

    def _attach(self, parts: TargetParts, rec: GenerationRecorder, cap: StepCapture) -> None:
        reg = self._registry
        if self.intervene is not None:
            self.intervene.attach(reg, parts, rec)
        for name, module in parts.experts.items():
            reg.add(module, cap.expert_hook(name))
        if cap.blocks is not None:
            cap.blocks.attach(reg)
        for owner, attr, hook in parts.call_patches:  # read call arguments for the record
            self._registry.add_call(owner, attr, hook)
        rec.delimit(reg, parts, self.target, cap.step_hook)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        self._active = False
        try:
            with _HOOKS_LOCK:
                self._registry.remove_all()
        finally:
            self._close(exc_type, exc)
        return False

    def _open_generation(self, generation: int) -> RunWriter | None:
        """The writer of generation ``generation`` (the recorder asks: generation 1's when the block is entered);
        None: not recorded, after a warning (on_write_error="warn")."""
        path = self.path if generation == 1 or self.path is None else schema.generation_path(self.path, generation)
        try:
            return RunWriter(path, self.store_dtype, self.slots, self.overwrite, generation=generation,
                             **self._writer_args)
        except DiskFullError as exc:
            if self.on_write_error == "raise":
                raise
            what = "the generation goes on" if generation == 1 else f"generation {generation} goes on"
            warnings.warn(f"{exc}; {what} unrecorded", RuntimeWarning, stacklevel=4 if generation == 1 else 2)
            return None

    def _close(self, exc_type: Any, exc: Any) -> None:
        rec, self.recorder = self.recorder, None
        if rec is None:
            return
        try:
            rec.end(exc_type, exc, final=True)
        finally:
            for generation, w in sorted(rec.closed, key=lambda gw: gw[0]):
                if self.path is None:
                    if w.steps_written:
                        self._memory.append(Run(w.file, owns_file=True, source=None))
                elif w.published and w.path is not None:
                    self._paths.append(w.path)
            if exc_type is None and not any(w.steps_written or w.failed for _, w in rec.closed):
                where = "" if self.path is None else f" ({self.path} is left as it was)"
                warnings.warn(f"latent_probe: the block recorded no step (no scheduler.step ran inside it); nothing "
                              f"was written{where}", RuntimeWarning, stacklevel=3)

    # ------------------------------------------------------------------ results
    @property
    def run(self) -> Run:
        """The recorded run of the first generation (after the block). In memory for path=None, else the file
        opened read-only. ``probe.runs`` has every generation's."""
        runs = self.runs
        if not runs:
            raise RuntimeError("no step was recorded (did the generation call scheduler.step inside the block?)")
        return runs[0]

    @property
    def runs(self) -> list[Run]:
        """One Run per generation recorded inside the block, in order (generation 1 first)."""
        if self._active:
            raise RuntimeError("probe.run is available after the with-block; open_run(path, swmr=True) "
                               "follows a live file")
        if self._runs is None:
            if self.path is None:
                self._runs = list(self._memory)
            else:
                self._runs = [open_run(p) for p in self._paths if os.path.exists(p)]
        return self._runs

    @property
    def paths(self) -> list[str]:
        """The files written, one per generation (``path``, then ``<stem>.gen2<suffix>``, ...); [] in memory."""
        return list(self._paths)

    @property
    def hooks_attached(self) -> int:
        """Number of hooks and patches this probe currently owns (0 outside the block)."""
        return len(self._registry)
