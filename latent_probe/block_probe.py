"""Block probes: hooks on each expert's transformer blocks, on the probe's one ``HookRegistry``; a subscriber of
the probe's generation recorder (a generation begins: no previous step).

``LatentProbe(..., blocks="all" | "every:4" | [0, 5, 39], attention_reach=64)`` adds, per expert: a forward
pre-hook on the expert (the call's token grid from its input's shape), a pre- and a forward hook on each chosen
block (and on the first and last block, for MagCache's residual), and with ``attention_reach`` hooks on each chosen
block's self-attention (and, for Wan2.2's repository, a listener on its module-level ``rope_apply``) that keep q of a
seeded sample of query tokens and k of all tokens, exactly as the attention uses them. Every number is computed on
the tensors' device as float64 sums (latent_probe.metrics.blocks) and handed to the step's writer with the step; no
host synchronisation. Per step they are arranged [branch (cond, uncond), B, block, ...] and stored under
``/blocks/`` (docs/hdf5-schema.md).

With ``block_steps=`` (latent_steps' grammar), the chosen blocks' full output hidden states [B, F', T, D] (real tokens,
frame-major) of the chosen steps are handed, block by block as each returns, to the writer of the recorder's
generation (``RunWriter.stage_hidden``: copied in the store dtype on the producer's stream, then to a pinned buffer of
the step's slot on the writer's copy stream) and stored under ``/block_hidden`` with the step. A generation's first
step is staged before its plan is known when the selection may choose it, and dropped if it does not.
"""

from __future__ import annotations

import functools
import math
import threading
from typing import Any, Callable

import torch

from .adapters.base import TargetParts, UnsupportedTargetError
from .adapters.blocks import BlockSite, block_input, block_site, install_qk, parse_blocks, token_grid
from .capture import LayoutError
from .hooks import FnHook, HookRegistry
from .latent_steps import LatentSteps
from .recorder import GenerationListener, GenerationRecorder
from .metrics.blocks import (block_call_sums, magnitude_ratio, residual_norms, sample_queries, temporal_reach,
                             update_change)

__all__ = ["BlockProbe", "BlockProbeError", "BLOCKS_PREFIX", "BRANCH_NAMES"]

BLOCKS_PREFIX = "/blocks/"  # absolute names of the block sums in the run file
BRANCH_NAMES = ("cond", "uncond")
REACH_SEED = 0


def free_device_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device (None elsewhere: host memory is not checked)."""
    return int(torch.cuda.mem_get_info(device)[0]) if device.type == "cuda" else None


class BlockProbeError(LayoutError):
    """A DiT call does not fit the block layout fixed at the run's first step (recording stops, the generation goes
    on)."""


class _Call:
    """One DiT call in flight: its expert, grid and the sums of each chosen block."""

    def __init__(self, expert: str, grid: tuple[int, int, int, int]) -> None:
        self.expert = expert
        self.batch, self.frames, h, w = grid
        self.tokens = h * w
        self.sums: dict[int, dict[str, torch.Tensor]] = {}
        self.first_in: torch.Tensor | None = None
        self.mag: torch.Tensor | None = None
        self.keep_hidden = False  # its chosen blocks' outputs are staged (block_steps=)
        self.width = 0  # D of the blocks' hidden states


class BlockProbe(GenerationListener):
    """The block listeners of one probe. ``spec``: "all", "every:k" or indices (valid for every expert);
    ``reach``: queries sampled a frame for attention's temporal reach (0: none); ``change``: keep each block's
    previous update (float32, on the device: blocks × branches × F'·T·D values) for the step-to-step change;
    ``hidden``: the steps whose block outputs are stored (``block_steps=``; None: none). ``recorder`` is the probe's
    generation recorder (its writer takes the hidden states; its step index says which step is in flight)."""

    def __init__(self, parts: TargetParts, spec: Any, reach: int = 0, change: bool = True,
                 hidden: LatentSteps | None = None) -> None:
        if isinstance(reach, bool) or not isinstance(reach, int) or reach < 0:
            raise ValueError(f"attention_reach={reach!r}: give the number of query tokens sampled a frame (0: off)")
        self.sites: dict[str, BlockSite] = {n: block_site(parts, n, m, reach > 0) for n, m in parts.experts.items()}
        counts = {n: len(s.blocks) for n, s in self.sites.items()}
        if len(set(counts.values())) != 1:
            raise UnsupportedTargetError(f"blocks=: the experts have different block counts {counts}")
        self.count = next(iter(counts.values()))
        self.indices = parse_blocks(spec, self.count)
        self.reach = reach
        self.change = change
        self.cfg = parts.cfg
        heads = {s.heads(i) for s in self.sites.values() for i in self.indices} if reach else set()
        if len(heads) > 1:
            raise UnsupportedTargetError(f"attention_reach=: the chosen blocks have different head counts {heads}")
        self.heads = heads.pop() if heads else 0
        self._calls: list[_Call] = []
        self._lock = threading.Lock()
        self._prev_update: dict[tuple[int, int], torch.Tensor] = {}  # (call in step, block) → float32 update
        self._prev_norms: dict[int, torch.Tensor] = {}  # call in step → residual token norms
        self._queries: dict[tuple[int, int, str], torch.Tensor] = {}
        self._attn: threading.local = threading.local()
        self.shape: tuple[int, int] | None = None  # (frames, tokens) fixed at the first call
        self.failed: str | None = None  # why a hook could not record (the generation is never disturbed)
        self.hidden = hidden
        self.recorder: GenerationRecorder | None = None
        self._hidden_chosen: Any = None  # the generation's resolved block_steps (None before its first step)
        self._position = {i: k for k, i in enumerate(self.indices)}
        self._staged_in: Any = None  # the writer this step's hidden states were staged into
        self.hidden_plan: tuple[tuple[int, int, int, int], int, dict[str, tuple[int, int, int]], bool] | None = None

    def _guard(self, fn: Callable) -> Callable:
        """A hook that never raises into the model: the first failure is kept and ends recording at the step."""

        @functools.wraps(fn)
        def hook(*args: Any, **kwargs: Any) -> None:
            if self.failed is not None:
                return None
            try:
                fn(*args, **kwargs)
            except Exception as exc:
                self.failed = (f"{exc}".splitlines() or [type(exc).__name__])[0]
                self._attn.active = None
                self._prev_update.clear()  # give the device memory back to the generation
            return None

        return hook

    def describe(self) -> dict[str, Any]:
        """Run attributes: which blocks, how many query tokens, branch names."""
        out = {"blocks": list(self.indices), "block_count": self.count, "attention_reach": self.reach,
               "reach_seed": REACH_SEED, "block_change": self.change}
        if self.hidden is not None:
            out["block_steps"] = self.hidden.spec
        return out

    # ---------------------------------------------------------------- attach
    def attach(self, reg: HookRegistry) -> None:
        namespaces: set[str] = set()  # rotary functions already intercepted
        for name, site in self.sites.items():
            reg.add(site.expert, FnHook(pre=self._guard(self._call_hook(name, site))))
            chosen = set(self.indices)
            for i, block in enumerate(site.blocks):
                first, last = i == 0, i == self.count - 1
                pre = self._guard(self._block_pre(i, first)) if i in chosen or first else None
                post = self._guard(self._block_post(i, i in chosen, last)) if i in chosen or last else None
                if pre is not None or post is not None:
                    reg.add(block, FnHook(pre, post))
            if self.reach:
                for i in self.indices:
                    install_qk(reg, site, i, self._rows, self._deliver(i), self._guard, self._attn, namespaces)

    def _rows(self, device: torch.device) -> torch.Tensor | None:
        """Token indices [F'·n] of the sampled queries of the call in flight (None outside a probed call)."""
        call = self._calls[-1] if self._calls else None
        return None if call is None else self._query_index(call, device).flatten()

    def _deliver(self, i: int) -> Callable[[torch.Tensor, torch.Tensor], None]:
        def deliver(q: torch.Tensor, k: torch.Tensor) -> None:
            call = self._calls[-1] if self._calls else None
            if call is not None:
                self._reach(call, i, q, k)

        return deliver

    # ---------------------------------------------------------------- hooks
    def _call_hook(self, name: str, site: BlockSite) -> Callable:
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            grid = token_grid(site, args, kwargs)
            call = _Call(name, grid)
            shape = (call.frames, call.tokens)
            if self.shape is None:
                self.shape = shape
                if self.change:
                    self._check_memory(site, call)
            elif shape != self.shape:
                raise BlockProbeError(f"a DiT call has {shape[0]} frames of {shape[1]} tokens; the run's first had "
                                      f"{self.shape[0]} of {self.shape[1]}")
            call.keep_hidden = self._wants_hidden()
            with self._lock:
                self._calls.append(call)

        return hook

    def _wants_hidden(self) -> bool:
        """The step in flight keeps its hidden states (its generation's first: provisionally, when it may)."""
        rec = self.recorder
        if self.hidden is None or rec is None or rec.stopped or rec.writer is None:
            return False
        step = rec.step_index
        if step == 0 or self._hidden_chosen is None:
            return step == 0 and self.hidden.may_select_first
        return step in self._hidden_chosen

    def resolve_hidden(self, planned: int | None, switch: int | None) -> None:
        """At a generation's first step (its plan known): the steps whose hidden states are kept; a selection that
        names steps outside the plan is refused (BlockProbeError: recording stops with the reason)."""
        if self.hidden is None:
            return
        if self.hidden.needs_plan and planned is None:
            raise BlockProbeError(f"block_steps={self.hidden.spec!r} counts from the planned end, but the scheduler "
                                  "has no timesteps to plan with")
        outside = self.hidden.outside(planned, switch)
        if outside:
            raise BlockProbeError(f"block_steps {outside} select no step of this generation of {planned} planned "
                                  "steps")
        self._hidden_chosen = self.hidden.resolve(planned, switch)

    def _check_memory(self, site: BlockSite, call: _Call) -> None:
        """Refuse (at the first DiT call, before any update is kept) a step change whose kept updates — float32,
        blocks × 2 branches × B·F'·T·D values — would take more than half the device's free memory."""
        param = next(site.expert.parameters(), None)
        free = None if param is None else free_device_bytes(param.device)
        if free is None:
            return
        need = len(self.indices) * 2 * call.batch * call.frames * call.tokens * site.width() * 4
        if need > free // 2:
            raise BlockProbeError(f"block_change=True would keep {need / 2**30:.1f} GiB of previous updates for "
                                  f"{len(self.indices)} blocks ({free / 2**30:.1f} GiB free); probe fewer blocks "
                                  "(blocks='every:4') or pass block_change=False")

    def _block_pre(self, i: int, first: bool) -> Callable:
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            call = self._calls[-1] if self._calls else None
            if call is None:
                return
            x = block_input(args, kwargs)
            if x is None:
                raise BlockProbeError(f"block {i} was called without a hidden-state tensor first")
            call.sums.setdefault(i, {})["_in"] = x
            if first:
                call.first_in = x

        return hook

    def _block_post(self, i: int, chosen: bool, last: bool) -> Callable:
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            call = self._calls[-1] if self._calls else None
            if call is None:
                return
            out = output if isinstance(output, torch.Tensor) else (output[0] if isinstance(output, (tuple, list))
                                                                    else None)
            if not isinstance(out, torch.Tensor):
                raise BlockProbeError(f"block {i} returned {type(output).__name__}, not hidden states")
            slot = call.sums.setdefault(i, {})
            x_in = slot.pop("_in", None)
            where = len(self._calls) - 1
            if chosen:
                call.width = int(out.shape[-1])
            if chosen and call.keep_hidden:
                writer: Any = self.recorder.writer if self.recorder is not None else None  # store.writer.RunWriter
                if writer is not None:
                    if self._staged_in is not None and self._staged_in is not writer:
                        raise BlockProbeError("a step's hidden states were staged into two generations' writers")
                    self._staged_in = writer
                    n = call.frames * call.tokens
                    writer.stage_hidden(where, self._position[i], out[:, :n].unflatten(1, (call.frames, call.tokens)))
            if chosen and x_in is not None:
                sums, upd = block_call_sums(x_in, out, call.frames, call.tokens)
                if self.change:
                    sums["change"], self._prev_update[(where, i)] = update_change(upd, self._prev_update.get((where, i)))
                slot.update(sums)
            if last and call.first_in is not None:
                norms = residual_norms(call.first_in, out, call.frames, call.tokens)
                call.mag = magnitude_ratio(norms, self._prev_norms.get(where))
                self._prev_norms[where] = norms
                call.first_in = None

        return hook

    # ---------------------------------------------------------------- temporal reach
    def _query_index(self, call: _Call, device: torch.device) -> torch.Tensor:
        key = (call.frames, call.tokens, str(device))
        idx = self._queries.get(key)
        if idx is None:
            idx = self._queries[key] = sample_queries(call.frames, call.tokens, self.reach, REACH_SEED).to(device)
        return idx

    def _reach(self, call: _Call, i: int, q: torch.Tensor, k: torch.Tensor) -> None:
        """``q`` [B, F'·n, H, d] of the sampled queries, ``k`` [B, N, H, d], as the attention uses them."""
        qs = q.unflatten(1, (call.frames, -1))  # [B, F', n, H, d]
        scale = 1.0 / math.sqrt(q.shape[-1])
        call.sums.setdefault(i, {})["reach"] = temporal_reach(qs, k, call.frames, call.tokens, scale)

    # ---------------------------------------------------------------- per step
    def on_begin(self, recorder: GenerationRecorder, explicit: bool) -> None:
        """The probe's recorder begins a generation: no previous step."""
        self.reset()

    def reset(self) -> None:
        """A generation begins: no previous step."""
        with self._lock:
            self._calls = []
        self._prev_update.clear()
        self._prev_norms.clear()
        self.shape = None
        self.failed = None
        self._hidden_chosen = None
        self.hidden_plan = None
        self._drop_staged()

    def discard(self) -> None:
        with self._lock:
            self._calls = []
        self._drop_staged()

    def _drop_staged(self) -> None:
        """Hidden states staged for a step that is not submitted go back to the writer's free slots."""
        self._staged_in = None
        writer = self.recorder.writer if self.recorder is not None else None
        drop = getattr(writer, "drop_staged", None)
        if drop is not None:
            drop()

    def fields(self) -> dict[str, tuple[int, ...]]:
        """Per-call field shapes after [B, block]: what one step stores (besides mag [branch, B])."""
        f, _ = self.shape or (0, 0)
        out: dict[str, tuple[int, ...]] = {"upd": (2,)}
        if f >= 2:
            out.update(sq=(f,), dot=(f - 1,), dd=(f - 1,))
        if self.change:
            out["change"] = (2,)
        if self.reach:
            out["reach"] = (self.heads, f)
        return out

    def step(self, batch: int) -> dict[str, torch.Tensor]:
        """This step's sums, ``/blocks/<field>`` → [2 (cond, uncond), B, block, ...] (mag: [2, B]) on the device;
        a branch this step did not run is NaN. Raises BlockProbeError when the calls do not fit the CFG pattern."""
        with self._lock:
            calls, self._calls = self._calls, []
        self.hidden_plan = None
        staged, self._staged_in = self._staged_in, None  # submitted with the step (or dropped by the caller)
        if self.failed is not None:
            raise BlockProbeError(f"block probes: {self.failed}")
        if not calls:
            raise BlockProbeError("no DiT call reached the probed blocks in this step")
        fields = self.fields()
        per_call: list[dict[str, torch.Tensor]] = []
        for c in calls:
            got: dict[str, torch.Tensor] = {}
            for name, shape in fields.items():
                rows = []
                for i in self.indices:
                    t = c.sums.get(i, {}).get(name)
                    if t is None:
                        raise BlockProbeError(f"block {i} of {c.expert} did not run in this step's DiT call")
                    rows.append(t)
                got[name] = torch.stack(rows, 1)  # [B_call, block, ...]
            if c.mag is None:
                raise BlockProbeError(f"the last block of {c.expert} did not run in this step's DiT call")
            got["mag"] = c.mag
            per_call.append(got)
        branches: list[dict[str, torch.Tensor] | None]
        if self.cfg == "batched":
            if len(per_call) != 1:
                raise BlockProbeError(f"{len(per_call)} DiT calls in one step; batched CFG makes one")
            only = per_call[0]
            b_call = only["mag"].shape[0]
            if b_call == 2 * batch:
                branches = [{k: v[batch:] for k, v in only.items()}, {k: v[:batch] for k, v in only.items()}]
            else:
                branches = [only, None]
        else:
            if len(per_call) > 2:
                raise BlockProbeError(f"{len(per_call)} DiT calls in one step; block probes know cond and uncond")
            branches = [per_call[0], per_call[1] if len(per_call) == 2 else None]
        ref = branches[0]
        out: dict[str, torch.Tensor] = {}
        for name in ref:
            parts = []
            for br in branches:
                t = br[name] if br is not None else torch.full_like(ref[name], math.nan)
                if t.shape[0] != batch:
                    raise BlockProbeError(f"a DiT call of batch {t.shape[0]} for latents of batch {batch}")
                parts.append(t)
            out[BLOCKS_PREFIX + name] = torch.stack(parts, 0)
        if self.hidden is not None:
            self.hidden_plan = self._hidden_plan(calls, batch, staged)
        return out

    def _hidden_plan(self, calls: list[_Call], batch: int, staged: Any
                     ) -> tuple[tuple[int, int, int, int], int, dict[str, tuple[int, int, int]], bool]:
        """((B, F', T, D), K, branch → (call, start, stop), keep) of this step's hidden states."""
        rec = self.recorder
        step = rec.generation_steps if rec is not None else 0
        keep = self._hidden_chosen is not None and step in self._hidden_chosen
        first = calls[0]
        if self.cfg == "batched":
            b_call = first.batch
            rows = ({"cond": (0, batch, 2 * batch), "uncond": (0, 0, batch)} if b_call == 2 * batch
                    else {"cond": (0, 0, b_call)})
        else:
            rows = {"cond": (0, 0, first.batch)}
            if len(calls) == 2:
                rows["uncond"] = (1, 0, calls[1].batch)
        if keep and (staged is None or staged is not (rec.writer if rec is not None else None)
                     or not all(c.keep_hidden for c in calls)):
            raise BlockProbeError(f"step {step}'s block hidden states were chosen but not staged during its DiT calls")
        return (batch, first.frames, first.tokens, first.width), len(self.indices), rows, keep
