"""One hook shape for the package, one owner of every handle and patch; removed exactly, in any order of probes.

Modelled on diffusers' ``hooks/hooks.py`` (a ``ModelHook`` with ``pre_forward`` / ``post_forward`` /
``reset_state``, one registry per hooked object, hooks removed by identity) and TransformerLens' ``HookPoint``
bookkeeping (own your handles, remove exactly those).

The shape — :class:`ModelHook`, on any call site:

* a **module** (its forward): ``pre_forward(module, args, kwargs) -> None | (args, kwargs)`` before it,
  ``post_forward(module, args, kwargs, output) -> None | output`` after it, in registration order (torch's order);
  ``outermost`` hooks wrap the others (pre first, post last: a timer of everything the package adds). One torch
  forward pre-hook and one forward hook per module carry them all (:class:`_ModuleSite`, the only place in the
  package that calls ``register_forward_*hook``), removed with the module's last hook, so ``module._forward_hooks``
  is as it was. **Order against hooks a user registers with torch**: the package's hooks on a module run as one
  group; its ``pre_forward`` calls stand where the module's first package hook with a ``pre_forward`` was registered,
  its ``post_forward`` calls where the first with a ``post_forward`` was (a user's hook registered before the probe
  runs before it, one registered after runs after; a user's hook registered between two owners runs before or
  after both, never between). ``on_error(module, exc)``: the forward (or a hook after this one's ``pre_forward``)
  raised before this hook's ``post_forward`` ran — torch's ``always_call``, carried by one more forward hook that
  the site registers only while one of its hooks overrides ``on_error``;
* an **attribute** (a scheduler's ``step``, Wan2.2's class-level ``step``, a pipeline's ``generate`` or
  ``__call__``, a module-level function): the same two methods with ``site`` = the :class:`Dispatcher`, nested as
  before (first added outermost: ``pre_forward`` in order, ``post_forward`` in reverse) and ``on_error(site, exc)``
  for a hook whose ``pre_forward`` ran when the call (or an inner hook) raised. **One** dispatcher replaces the
  attribute however many probes listen; the original comes back when the last hook leaves — unless someone else
  replaced the attribute in the meantime, which is then left as it is (with a warning).

``reset_state()``: a generation begins. A :class:`~latent_probe.recorder.GenerationRecorder` that delimits
generations for a registry (``GenerationRecorder.delimit``) calls it on every hook of that registry at each
generation's begin event, before the generation's first DiT call when the generation is delimited by a generation
call; a hook that keeps per-generation state (a call index, a previous residual) forgets it there. Hooks a user
registered are never touched. ``HookRegistry.intercept(owner, name, listener)`` keeps the dispatcher's own bottom
shape, ``listener(call_next, *args, **kwargs)`` (it must call ``call_next`` exactly once and return its result), for
code outside the package; the package itself adds ModelHooks.
"""

from __future__ import annotations

import functools
import sys
import threading
import types
import warnings
import weakref
from typing import Any, Callable

import torch

__all__ = ["ModelHook", "FnHook", "HookRegistry", "Dispatcher", "ThreadStack", "static_lookup", "dispatcher_of",
           "module_hooks"]

_MISSING = object()
Listener = Callable[..., Any]
_SITES_LOCK = threading.RLock()  # installing / removing a site's one handle or dispatcher


class ThreadStack(threading.local):
    """Per thread, ``stack``: a list of what a hook keeps for each of its calls in flight (a call that calls itself,
    a class-level ``step`` nested in another; each thread its own)."""

    def __init__(self) -> None:
        self.stack: list[Any] = []


class ModelHook:
    """One hook on one call site (diffusers' ``ModelHook``). Override what you need; the defaults do nothing.

    ``pre_forward`` may return new ``(args, kwargs)``; ``post_forward`` may return a new output (None keeps it).
    ``on_error``: the call raised after this hook's ``pre_forward`` ran (module sites: and before its
    ``post_forward`` finished). ``reset_state``: forget per-generation state (a recorder's begin event)."""

    def pre_forward(self, site: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        return None

    def post_forward(self, site: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        return None

    def on_error(self, site: Any, exc: BaseException) -> None:
        return None

    def reset_state(self) -> None:
        return None


class FnHook(ModelHook):
    """A ModelHook made of functions: ``pre(site, args, kwargs)``, ``post(site, args, kwargs, output)`` (either
    may be None), with the meaning of ``pre_forward`` / ``post_forward``."""

    def __init__(self, pre: Callable[..., Any] | None = None, post: Callable[..., Any] | None = None) -> None:
        self._pre, self._post = pre, post

    def pre_forward(self, site: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        return None if self._pre is None else self._pre(site, args, kwargs)

    def post_forward(self, site: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        return None if self._post is None else self._post(site, args, kwargs, output)


def _pre_of(hook: ModelHook) -> Callable[..., Any] | None:
    """What runs before the call for ``hook`` (None: nothing — not overridden)."""
    if isinstance(hook, FnHook):
        return hook._pre
    return None if type(hook).pre_forward is ModelHook.pre_forward else hook.pre_forward


def _post_of(hook: ModelHook) -> Callable[..., Any] | None:
    if isinstance(hook, FnHook):
        return hook._post
    return None if type(hook).post_forward is ModelHook.post_forward else hook.post_forward


class _ModuleSite:
    """The hooks of one module: one torch forward pre-hook and one forward hook run them all (each registered when
    the first hook that needs it arrives). ``hooks`` run in the order added (pre and post alike, torch's order);
    ``outer`` hooks wrap them (pre first, post last: a timer). While a hook overrides ``on_error``, a third torch
    forward hook (``always_call=True``, after the post hook) calls it when the forward raised: each call's pre-hook
    notes how many ``pre_forward`` calls ran and which exception was being handled when it began."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = weakref.ref(module)
        self.hooks: list[ModelHook] = []
        self.outer: list[ModelHook] = []
        self._pres: tuple[Callable[..., Any], ...] = ()
        self._posts: tuple[Callable[..., Any], ...] = ()
        # (pre_forwards that must have run, on_error) per hook overriding on_error, in pre order
        self._errs: tuple[tuple[int, Callable[..., Any]], ...] = ()
        self._calls = ThreadStack()  # per call in flight: [pres done, exception handled at entry, posts done]
        self._pre: torch.utils.hooks.RemovableHandle | None = None
        self._post: torch.utils.hooks.RemovableHandle | None = None
        self._err: torch.utils.hooks.RemovableHandle | None = None

    def __len__(self) -> int:
        return len(self.hooks) + len(self.outer)

    def refresh(self) -> None:
        """Recompute what runs before and after the call; register torch's handles the first time they are needed."""
        order = (*self.outer, *self.hooks)
        pres = [_pre_of(h) for h in order]
        self._pres = tuple(f for f in pres if f is not None)
        self._posts = tuple(f for f in map(_post_of, (*self.hooks, *reversed(self.outer))) if f is not None)
        self._errs = tuple((sum(f is not None for f in pres[:i + 1]), h.on_error) for i, h in enumerate(order)
                           if type(h).on_error is not ModelHook.on_error)
        module = self.module()
        if module is None:  # pragma: no cover - the module is gone
            return
        if (self._pres or self._errs) and self._pre is None:
            self._pre = module.register_forward_pre_hook(self._run_pre, with_kwargs=True)
        if self._posts and self._post is None:
            self._post = module.register_forward_hook(self._run_post, with_kwargs=True)
            if self._err is not None:  # the error hook stays after the post hook
                self._err.remove()
                self._err = None
        if self._errs and self._err is None:
            self._err = module.register_forward_hook(self._run_error, with_kwargs=True, always_call=True)

    def _run_pre(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        changed = None
        if not self._errs:
            for fn in self._pres:
                out = fn(module, args, kwargs)
                if out is not None:
                    args, kwargs = changed = out
            return changed
        call = [0, sys.exc_info()[1], False]
        self._calls.stack.append(call)
        for fn in self._pres:
            out = fn(module, args, kwargs)
            if out is not None:
                args, kwargs = changed = out
            call[0] += 1
        return changed

    def _run_post(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        changed = None
        for fn in self._posts:
            out = fn(module, args, kwargs, output)
            if out is not None:
                output = changed = out
        if self._errs:
            calls = self._calls.stack
            if calls:
                calls[-1][2] = True
        return changed

    def _run_error(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        """torch calls this after the post hook, and once more from its ``except`` when the forward (or a hook)
        raised before it ran: ``sys.exc_info()`` then holds that exception, not the one handled at entry."""
        calls = self._calls.stack
        if not calls:
            return None
        done, handled, posted = calls.pop()
        exc = sys.exc_info()[1]
        if exc is None or exc is handled or posted:
            return None
        for need, on_error in reversed(self._errs):
            if done >= need:
                on_error(module, exc)
        return None

    def __deepcopy__(self, memo: dict) -> "_ModuleSite":
        """A deep copy of a hooked module keeps calling these hooks, as torch copies plain hook functions."""
        return self

    def discard(self, hook: ModelHook) -> None:
        """Remove ``hook`` (by identity, once)."""
        for where in (self.hooks, self.outer):
            for i, h in enumerate(where):
                if h is hook:
                    del where[i]
                    self.refresh()
                    return

    def remove(self) -> None:
        for handle in (self._pre, self._post, self._err):
            if handle is not None:
                handle.remove()
        self._pre = self._post = self._err = None


_MODULE_SITES: "weakref.WeakKeyDictionary[torch.nn.Module, _ModuleSite]" = weakref.WeakKeyDictionary()


def module_hooks(module: torch.nn.Module) -> tuple[ModelHook, ...]:
    """The package's hooks on ``module`` now, in the order they run (empty when none)."""
    site = _MODULE_SITES.get(module)
    return () if site is None else (*site.outer, *site.hooks)


def _as_listener(hook: ModelHook, site: "Dispatcher") -> Listener:
    """A ModelHook as one link of a dispatcher's chain: pre, the inner chain, post; on_error when it raises."""
    pre, post = _pre_of(hook), _post_of(hook)
    on_error = None if type(hook).on_error is ModelHook.on_error else hook.on_error

    def listener(call_next: Callable, *args: Any, **kwargs: Any) -> Any:
        if pre is not None:
            new = pre(site, args, kwargs)
            if new is not None:
                args, kwargs = new
        try:
            output = call_next(*args, **kwargs)
            new_out = None if post is None else post(site, args, kwargs, output)
        except BaseException as exc:
            if on_error is not None:
                on_error(site, exc)
            raise
        return output if new_out is None else new_out

    listener.hook = hook  # type: ignore[attr-defined]
    return listener


def static_lookup(owner: Any, name: str) -> Any:
    """The attribute as stored (no descriptor binding): on a class, the raw function from its MRO."""
    if isinstance(owner, type):
        for klass in owner.__mro__:
            if name in vars(klass):
                return vars(klass)[name]
        raise AttributeError(f"{owner.__name__} has no attribute {name!r}")
    return getattr(owner, name)


class Dispatcher:
    """The single replacement of ``owner.name`` while anyone listens: listeners (first added outermost)
    around the attribute as it was. On a class it binds like a function, so instances pass ``self``."""

    def __init__(self, owner: Any, name: str) -> None:
        self.owner = owner
        self.name = name
        own = vars(owner) if hasattr(owner, "__dict__") else {}
        self.previous = own.get(name, _MISSING)  # the owner's own entry, restored when the last listener leaves
        self.original = static_lookup(owner, name)  # what is called at the end of the chain
        self.is_class = isinstance(owner, type)
        self.listeners: list[Listener] = []
        functools.update_wrapper(self, self.original, updated=())

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None or not self.is_class:
            return self
        return types.MethodType(self, obj)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        listeners = tuple(self.listeners)  # a listener leaving mid-call does not break the chain
        original = self.original

        def run(i: int, a: tuple, k: dict) -> Any:
            if i == len(listeners):
                return original(*a, **k)
            return listeners[i](lambda *a2, **k2: run(i + 1, a2, k2), *a, **k)

        return run(0, args, kwargs)

    def __deepcopy__(self, memo: dict) -> Any:
        """A copy of a probed object is not probed (LTX-2 and diffusion forcing deep-copy their scheduler):
        it gets a copy of what the attribute was, bound to the copy — never this probe's listeners."""
        import copy

        return copy.deepcopy(self.original, memo)

    def __reduce__(self) -> Any:
        raise TypeError(f"latent_probe: {self.name} is being probed; pickle the object after the probe's block")

    def installed(self) -> bool:
        own = vars(self.owner) if hasattr(self.owner, "__dict__") else {}
        return own.get(self.name) is self


def dispatcher_of(owner: Any, name: str) -> Dispatcher | None:
    """The dispatcher currently installed on ``owner.name``, if any."""
    own = vars(owner) if hasattr(owner, "__dict__") else {}
    value = own.get(name)
    return value if isinstance(value, Dispatcher) else None


class HookRegistry:
    """One owner's hooks (a probe's, a timer's): ModelHooks on modules and attributes, removed exactly and only."""

    def __init__(self) -> None:
        self._modules: list[tuple[torch.nn.Module, ModelHook]] = []
        self._listeners: list[tuple[Dispatcher, Listener]] = []

    def __len__(self) -> int:
        return len(self._modules) + len(self._listeners)

    def add(self, module: torch.nn.Module, hook: ModelHook, *, outermost: bool = False) -> ModelHook:
        """Run ``hook`` at ``module``'s forward, after the package's hooks already there (``outermost``: its
        ``pre_forward`` before all of them and its ``post_forward`` after all of them — a timer of everything the
        package adds; the group's place among a user's torch hooks is the module docstring's)."""
        with _SITES_LOCK:
            site = _MODULE_SITES.get(module)
            if site is None:
                site = _MODULE_SITES[module] = _ModuleSite(module)
            if outermost:
                site.outer.insert(0, hook)
            else:
                site.hooks.append(hook)
            site.refresh()
        self._modules.append((module, hook))
        return hook

    def add_call(self, owner: Any, name: str, hook: ModelHook) -> Dispatcher:
        """Run ``hook`` around calls of ``owner.name`` (an instance's, a class's or a module's attribute)."""
        with _SITES_LOCK:
            dispatcher = _dispatcher(owner, name)
            listener = _as_listener(hook, dispatcher)
            dispatcher.listeners.append(listener)
        self._listeners.append((dispatcher, listener))
        return dispatcher

    def intercept(self, owner: Any, name: str, listener: Listener) -> Dispatcher:
        """The bottom of an attribute site: ``listener(call_next, *args, **kwargs)`` on ``owner.name``."""
        with _SITES_LOCK:
            dispatcher = _dispatcher(owner, name)
            dispatcher.listeners.append(listener)
        self._listeners.append((dispatcher, listener))
        return dispatcher

    def hooks(self) -> list[ModelHook]:
        """This owner's ModelHooks, in the order they were added."""
        out = [h for _, h in self._modules]
        out += [getattr(fn, "hook") for _, fn in self._listeners if hasattr(fn, "hook")]
        return out

    def reset_state(self) -> None:
        """A generation begins: every hook of this registry forgets its per-generation state."""
        for hook in self.hooks():
            hook.reset_state()

    def remove_all(self) -> None:
        """Remove this registry's hooks, newest first, each by identity. Safe to call twice."""
        errors: list[BaseException] = []
        with _SITES_LOCK:
            while self._modules:
                module, hook = self._modules.pop()
                try:
                    site = _MODULE_SITES.get(module)
                    if site is not None:
                        site.discard(hook)
                        if not len(site):
                            site.remove()
                            del _MODULE_SITES[module]
                except Exception as exc:  # pragma: no cover - torch's remove() does not raise
                    errors.append(exc)
            while self._listeners:
                dispatcher, listener = self._listeners.pop()
                try:
                    for i, fn in enumerate(dispatcher.listeners):
                        if fn is listener:
                            del dispatcher.listeners[i]
                            break
                    if not dispatcher.listeners:
                        _uninstall(dispatcher)
                except Exception as exc:  # pragma: no cover
                    errors.append(exc)
        if errors:  # pragma: no cover
            raise RuntimeError(f"latent_probe could not remove {len(errors)} hook(s): {errors[0]!r}")


def _dispatcher(owner: Any, name: str) -> Dispatcher:
    """The dispatcher on ``owner.name``, installed now if none is."""
    dispatcher = dispatcher_of(owner, name)
    if dispatcher is None:
        dispatcher = Dispatcher(owner, name)
        setattr(owner, name, dispatcher)
    return dispatcher


def _uninstall(dispatcher: Dispatcher) -> None:
    """Put back what the attribute was, unless someone else has replaced the dispatcher since."""
    if not dispatcher.installed():
        owner = dispatcher.owner
        where = owner.__name__ if isinstance(owner, type) else type(owner).__name__
        warnings.warn(f"latent_probe: {where}.{dispatcher.name} was replaced by someone else while probed; "
                      "left as it is", RuntimeWarning, stacklevel=3)
        return
    if dispatcher.previous is _MISSING:
        delattr(dispatcher.owner, dispatcher.name)
    else:
        setattr(dispatcher.owner, dispatcher.name, dispatcher.previous)
