"""``GenerationRecorder``: owns each generation inside a probe's block, from its first step to its close.

It makes the writer of each generation when it begins (``open_writer(n)``; generation 1's when the block is
entered, so that a path that cannot be written fails before anything runs), rotates to the next, closes each
with its end state, and lists them in ``closed``. It emits three events to its subscribers
(:class:`GenerationListener`): ``on_begin`` when a generation begins, ``on_step`` after each recorded step,
``on_end`` when it ends (its state). Capture, block probes and interventions read the generation and step index
from it (``step_index``: the step whose DiT calls are in flight) instead of working them out again.

When a generation begins and ends: a generation call (Wan2.2's ``generate``, a diffusers pipeline's
``__call__``; :meth:`generation_hook`) begins one when it is entered (outermost call) and ends it when it returns
or raises. Steps made outside any generation call (``(modules, scheduler)`` targets, a hand-written loop) form
one generation until the scheduler's ``set_timesteps`` is called again after a recorded step
(:meth:`schedule_hook`): the next step begins the next one. Nothing is inferred from σ or the timesteps.
:meth:`delimit` adds all of these hooks for a target; it is how a probe delimits its generations, and how an owner
of hooks without a probe (``interventions.caches.SkipCounter``, ``interventions.residuals.ResidualRecorder``)
delimits its own with a recorder that writes nothing (``GenerationRecorder(lambda generation: None)``). At each
begin event the recorder calls ``reset_state()`` of every hook of the registries it delimits.
"""

from __future__ import annotations

import contextvars
import threading
from typing import Any, Callable, Protocol

from .hooks import HookRegistry, ModelHook, ThreadStack

__all__ = ["GenerationRecorder", "GenerationListener", "GenerationWriter"]

# the recorders whose generation call is running in this context (thread): routes class-level step calls
_ACTIVE: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar("latent_probe_active", default=frozenset())


class GenerationWriter(Protocol):
    """What the recorder needs of a writer (store.writer.RunWriter): close it with the generation's end state."""

    def close(self, state: dict[str, Any] | None = None) -> Any: ...


class GenerationListener:
    """A subscriber of a recorder's events; override what you need (the defaults do nothing)."""

    def on_begin(self, recorder: "GenerationRecorder", explicit: bool) -> None:
        """Generation ``recorder.generation`` begins (``explicit``: at the start of a generation call)."""

    def on_step(self, recorder: "GenerationRecorder") -> None:
        """A step of the current generation was recorded (``recorder.generation_steps`` counts it)."""

    def on_end(self, recorder: "GenerationRecorder", state: dict[str, Any]) -> None:
        """The current generation ended with ``state`` (complete, steps_seen, error); its writer is closed."""


class GenerationRecorder:
    """The lifecycle of the generations of one probe's block: numbers, writers, counters, end states."""

    def __init__(self, open_writer: Callable[[int], GenerationWriter | None]) -> None:
        self._open_writer = open_writer
        self.writer: GenerationWriter | None = None  # the current (or next) generation's writer
        self._writer_generation = 1  # the generation self.writer records
        self.closed: list[tuple[int, Any]] = []  # (generation, writer), in the order they ended
        self.generation = 0  # the current (or last) generation, 1-based; 0 before the first
        self.steps = 0  # steps recorded since the block was entered, all generations together
        self.generation_steps = 0  # steps recorded in the current generation
        self.generation_seen = 0  # step calls seen in the current generation
        self.planned_steps: int | None = None  # len(scheduler.timesteps) from the generation's first step on
        self.stopped: str | None = None  # why recording of the current generation stopped
        self._in_generation = False  # a generation has begun and not ended
        self._new_schedule = False  # set_timesteps was called outside a generation call since the last step
        self._listeners: list[GenerationListener] = []
        self._local = threading.local()
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ writers and subscribers
    def open_first(self) -> GenerationWriter | None:
        """Make generation 1's writer now (the block is entered): an unwritable path fails before anything runs."""
        self.writer = self._open_writer(1)
        return self.writer

    def subscribe(self, listener: GenerationListener) -> None:
        self._listeners.append(listener)

    @property
    def in_generation(self) -> bool:
        return self._in_generation

    @property
    def generating(self) -> bool:
        """A generation call is running in this thread."""
        return bool(getattr(self._local, "generating", 0))

    @property
    def step_index(self) -> int:
        """0-based index, in its generation, of the step whose DiT calls are in flight: the step calls seen in the
        current generation; 0 before a generation's first step (a generation call just entered, a new schedule
        set since the last step, or none begun yet)."""
        if not self._in_generation or (self._new_schedule and not self.generating):
            return 0
        return self.generation_seen

    # ------------------------------------------------------------------ lifecycle
    def begin(self, explicit: bool = False) -> None:
        """Start the next generation (a generation that has recorded no step yet simply goes on). ``explicit``: at
        the start of a generation call (DiT calls made before it belong to no step); otherwise at a step, whose
        DiT calls were already made."""
        with self._lock:
            if self._in_generation:
                if self.generation_steps == 0:
                    return
                self.end()
            if self.writer is None and self.generation >= 1:
                self._writer_generation = self.generation + 1
                self.writer = self._open_writer(self._writer_generation)
            elif self.writer is None:
                self._writer_generation = self.generation + 1
            self.generation = self._writer_generation
            self._in_generation = True
            self.generation_steps = self.generation_seen = 0
            self.planned_steps = None
            self.stopped = None
            for listener in self._listeners:
                listener.on_begin(self, explicit)

    def step_called(self) -> None:
        """A ``step`` call (the outermost) begins: a new generation first when none runs or a new schedule was set
        outside a generation call; then it counts as seen."""
        if not self._in_generation or (self._new_schedule and not self.generating):
            self.begin()
        self._new_schedule = False
        self.generation_seen += 1

    def step_recorded(self) -> None:
        """The current step's record was made (and handed to the writer)."""
        self.steps += 1
        self.generation_steps += 1
        for listener in self._listeners:
            listener.on_step(self)

    def end(self, exc_type: Any = None, exc: Any = None, *, final: bool = False) -> None:
        """End the current generation: close its writer with its end state. A generation that recorded no step
        keeps its writer for the next one, unless ``final`` (the block ends): then it is closed too (a later
        generation's empty file is discarded; generation 1's follows the writer's rules). Raises the writer's
        error (on_write_error="raise") unless ``exc_type`` is set."""
        with self._lock:
            if not self._in_generation and not final:
                return
            self._in_generation = False
            writer = self.writer
            if writer is None or (self.generation_steps == 0 and not final):
                return
            self.writer = None
            state: dict[str, Any] = {"complete": exc_type is None, "steps_seen": self.generation_seen}
            if exc_type is not None:
                state["error"] = (f"{exc_type.__name__}: {exc}".splitlines() or [exc_type.__name__])[0]
            elif self.stopped:
                state.update(complete=False, error=self.stopped)
            elif self.planned_steps is not None and self.generation_seen < self.planned_steps:
                state.update(complete=False, error=f"interrupted: stopped after {self.generation_seen} of "
                                                   f"{self.planned_steps} planned steps")
            if self.generation_steps == 0 and self._writer_generation > 1:
                state["complete"] = False  # a later generation that recorded nothing leaves no file
            self.closed.append((self._writer_generation, writer))
            try:
                writer.close(state)
            except Exception:
                if exc_type is None:
                    raise
            finally:
                for listener in self._listeners:
                    listener.on_end(self, state)

    # ------------------------------------------------------------------ the calls that delimit generations
    def delimit(self, registry: HookRegistry, parts: Any, target: Any,
                step_hook: Callable[..., ModelHook] | None = None) -> None:
        """Add to ``registry`` the hooks that delimit ``target``'s steps and generations (``parts``: its adapter's
        ``TargetParts``): ``step_hook(scheduler)`` / ``step_hook(scoped=...)`` on the scheduler's (or its classes')
        ``step`` (default :meth:`step_counter`), :meth:`schedule_hook` on ``set_timesteps``, :meth:`generation_hook`
        on the generation call (the adapter's, or a diffusers pipeline's ``__call__``). From now on each begin
        event calls ``registry.reset_state()`` first."""
        step_hook = step_hook or self.step_counter
        self._listeners.insert(0, _ResetState(registry))
        if parts.scheduler is not None:
            registry.add_call(parts.scheduler, "step", step_hook(parts.scheduler))
            if callable(getattr(parts.scheduler, "set_timesteps", None)):
                registry.add_call(parts.scheduler, "set_timesteps", self.schedule_hook())
        scoped = parts.generation_call is not None
        for cls in parts.scheduler_classes:
            registry.add_call(cls, "step", step_hook(scoped=scoped))
        if scoped:
            owner, attr = parts.generation_call
            registry.add_call(owner, attr, self.generation_hook(scoped=True))
        elif parts.family == "diffusers" and callable(target):
            # one call of the pipeline is one generation. Python looks __call__ up on the class, so the
            # interception is class-level, routed by identity to this pipeline (TODO adapters: declare it as
            # TargetParts.generation_call, with the instance whose calls count)
            registry.add_call(type(target), "__call__", self.generation_hook(owner=target))

    def in_scope(self) -> bool:
        """This recorder's generation call runs in this context (class-level ``step`` hooks record only then)."""
        return id(self) in _ACTIVE.get()

    def generation_hook(self, owner: Any = None, scoped: bool = False) -> ModelHook:
        """The hook on the call that runs one generation (Wan2.2's ``generate``; a pipeline class's ``__call__``,
        then ``owner`` is the instance whose calls count). ``scoped``: also mark this context, so that class-level
        ``step`` hooks record only the steps of this target's generation."""
        return _GenerationCall(self, owner, scoped)

    def step_counter(self, scheduler: Any = None, scoped: bool = False) -> ModelHook:
        """The hook on ``scheduler.step`` of a recorder whose steps nobody records (a rank of torch.distributed that
        writes nothing, a first file the disk refused): it counts each outermost step call as seen and done, so
        ``step_index`` and generation boundaries stay right for interventions. Arguments as capture's step hook
        (``scheduler=None``: on the class; ``scoped``: only inside this recorder's generation call)."""
        return _CountSteps(self, scoped)

    def schedule_hook(self) -> ModelHook:
        """The hook on ``scheduler.set_timesteps``: outside a generation call, a new schedule after recorded steps
        begins the next generation (at its first step)."""
        return _NewSchedule(self)


class _ResetState(GenerationListener):
    """A generation begins: the hooks of ``registry`` forget their per-generation state (``ModelHook.reset_state``)."""

    def __init__(self, registry: HookRegistry) -> None:
        self.registry = registry

    def on_begin(self, recorder: GenerationRecorder, explicit: bool) -> None:
        self.registry.reset_state()


class _GenerationCall(ModelHook):
    """Begins a generation when the outermost generation call is entered; ends it when that call returns/raises."""

    def __init__(self, recorder: GenerationRecorder, owner: Any, scoped: bool) -> None:
        self.recorder, self.owner, self.scoped = recorder, owner, scoped
        self._frames = ThreadStack()  # (begun, contextvar token) per call in flight

    def pre_forward(self, site: Any, args: tuple, kwargs: dict) -> None:
        rec, stack = self.recorder, self._frames.stack
        if (self.owner is not None and not (args and args[0] is self.owner)) or rec.generating:
            stack.append((False, None))  # another pipeline's call, or a nested call (part of the outer generation)
            return None
        rec.begin(explicit=True)
        rec._local.generating = 1
        token = _ACTIVE.set(_ACTIVE.get() | {id(rec)}) if self.scoped else None
        stack.append((True, token))
        return None

    def _leave(self) -> bool:
        begun, token = self._frames.stack.pop()
        if begun:
            self.recorder._local.generating = 0
            if token is not None:
                _ACTIVE.reset(token)
        return begun

    def post_forward(self, site: Any, args: tuple, kwargs: dict, output: Any) -> None:
        if self._leave():
            self._frames.ending = True  # end() may raise the writer's error: on_error must not leave twice
            self.recorder.end()
            self._frames.ending = False
        return None

    def on_error(self, site: Any, exc: BaseException) -> None:
        if getattr(self._frames, "ending", False):
            self._frames.ending = False
            return
        if self._leave():
            self.recorder.end(type(exc), exc)


class _NewSchedule(ModelHook):
    def __init__(self, recorder: GenerationRecorder) -> None:
        self.recorder = recorder

    def pre_forward(self, site: Any, args: tuple, kwargs: dict) -> None:
        if not self.recorder.generating:
            self.recorder._new_schedule = True
        return None


class _CountSteps(ModelHook):
    """Counts outermost ``step`` calls on a recorder that records nothing (``GenerationRecorder.step_counter``)."""

    def __init__(self, recorder: GenerationRecorder, scoped: bool) -> None:
        self.recorder, self.scoped = recorder, scoped
        self._local = ThreadStack()  # a "counted" flag per step call in flight

    def pre_forward(self, site: Any, args: tuple, kwargs: dict) -> None:
        stack = self._local.stack
        counted = not any(stack) and (not self.scoped or self.recorder.in_scope())
        if counted:
            self.recorder.step_called()
        stack.append(counted)
        return None

    def post_forward(self, site: Any, args: tuple, kwargs: dict, output: Any) -> None:
        if self._local.stack.pop():
            self.recorder.step_recorded()
        return None

    def on_error(self, site: Any, exc: BaseException) -> None:
        self._local.stack.pop()
