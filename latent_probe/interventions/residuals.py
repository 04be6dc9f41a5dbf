"""Record the signals diffusers' MagCache and FirstBlockCache decide on, exactly as their hooks compute them.

Neither can be derived from what ``LatentProbe`` stores (x_t, the prediction): both are measured inside the
DiT's block stack, in token space [B, N, D], before the output head. ``ResidualRecorder`` puts ``hooks.ModelHook``
objects (its own ``HookRegistry``) on the first and the last transformer block of each expert and, for every DiT
call, computes

* MagCache's ratio (``diffusers.hooks.mag_cache``, calibration): the residual r = last block's output − first
  block's input; ``(‖r_t‖ / (‖r_prev‖ + 1e-8)).mean()`` with per-token norms over D in float32, r_prev the
  previous call's residual of the same expert and CFG branch in this generation; 1.0 for its first call;
* FirstBlockCache's signal (``diffusers.hooks.first_block_cache``): the first block's residual
  r1 = output − input, ``mean|r1_t − r1_prev| / mean|r1_prev|`` in the model's dtype (None for a first call).

Each (expert, branch) counts its own calls from 0 in each generation, as the cache hooks do (each expert has its
own state; diffusers' Wan pipeline gives cond and uncond separate cache contexts). Generations and steps are the
ones a probe's recorder sees (``GenerationRecorder.delimit`` on ``target``: the pipeline's ``__call__``, its
scheduler's ``step`` and ``set_timesteps``), not inferred from timesteps. The branch is read from the call order:
in one step the first call of an expert is ``cond``, the second ``uncond`` (Wan's pipelines call them in that
order). Nothing is changed: outputs stay bit-identical.

    rec = ResidualRecorder(experts_of(pipe), pipe)
    with rec.attached():
        pipe(...)
    rec.series()   # {(expert, branch): {"timestep": [...], "mag_ratio": [...], "fbc_signal": [...]}}
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator

import torch

from ..hooks import FnHook, HookRegistry, ModelHook
from ..recorder import GenerationRecorder
from .caches import MethodError, _parts

__all__ = ["ResidualRecorder", "BRANCHES"]

BRANCHES = ("cond", "uncond")


class ResidualRecorder:
    """Per-call MagCache ratios and FirstBlockCache signals of each expert of ``target`` (the module docstring)."""

    def __init__(self, experts: dict[str, torch.nn.Module], target: Any) -> None:
        self.experts = experts
        self.target = target
        self.rows: list[dict[str, Any]] = []
        self._prev_norm: dict[tuple[str, str], torch.Tensor] = {}
        self._prev_r1: dict[tuple[str, str], torch.Tensor] = {}
        self._count: dict[tuple[str, str], int] = {}

    @contextlib.contextmanager
    def attached(self) -> Iterator["ResidualRecorder"]:
        """Hooks on while inside; removed after (also on an error)."""
        registry = HookRegistry()
        try:
            recorder = GenerationRecorder(lambda generation: None)  # delimits generations and steps, writes nothing
            for name, module in self.experts.items():
                blocks = getattr(module, "blocks", None)
                if not isinstance(blocks, torch.nn.ModuleList) or len(blocks) == 0:
                    raise MethodError(f"{name} ({type(module).__name__}) has no transformer blocks to record")
                state: dict[str, Any] = {}
                registry.add(module, _ExpertCall(self, recorder, name, state))
                registry.add(blocks[0], FnHook(pre=_on_head_in(state), post=_on_head_out(state)))
                registry.add(blocks[-1], FnHook(post=self._on_tail_out(name, state)))
            recorder.delimit(registry, _parts(self.target), self.target)
            yield self
        finally:
            registry.remove_all()

    def _forget(self, name: str) -> None:
        """Expert ``name``'s series start again (a generation begins)."""
        for key in [k for k in self._count if k[0] == name]:
            self._count.pop(key)
            self._prev_norm.pop(key, None)
            self._prev_r1.pop(key, None)

    def _on_tail_out(self, name: str, state: dict[str, Any]) -> Any:
        def hook(mod: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            key = state["key"]
            out = output[0] if isinstance(output, tuple) else output
            residual = out - state["head_in"]
            norm = torch.linalg.norm(residual.float(), dim=-1)        # as MagCache's calibration
            prev = self._prev_norm.get(key)
            ratio = 1.0 if prev is None else (norm / (prev + 1e-8)).mean().item()
            r1, prev_r1 = state["r1"], self._prev_r1.get(key)
            fbc = None if prev_r1 is None else ((r1 - prev_r1).abs().mean() / prev_r1.abs().mean()).item()
            index = self._count.get(key, 0)
            self.rows.append({"expert": name, "branch": key[1], "call": index, "timestep": state["t"],
                              "mag_ratio": ratio, "fbc_signal": fbc})
            self._count[key] = index + 1
            self._prev_norm[key] = norm
            self._prev_r1[key] = r1.detach()

        return hook

    # ------------------------------------------------------------------ results
    def series(self) -> dict[tuple[str, str], dict[str, list]]:
        """{(expert, branch): {"timestep", "mag_ratio", "fbc_signal"}} of the last generation, in call order."""
        last: dict[tuple[str, str], dict[str, list]] = {}
        for row in self.rows:
            key = (row["expert"], row["branch"])
            if row["call"] == 0:
                last[key] = {"timestep": [], "mag_ratio": [], "fbc_signal": []}
            for k in ("timestep", "mag_ratio", "fbc_signal"):
                last[key][k].append(row[k])
        return last

    def save(self, path: str | os.PathLike, **attrs: Any) -> None:
        """Write the last generation's series (and ``attrs``) as JSON, atomically (temp file, then rename)."""
        doc = {"format": "latent_probe.residuals/1", **attrs,
               "series": [{"expert": e, "branch": b, **s} for (e, b), s in sorted(self.series().items())]}
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(doc, fh)
        os.replace(tmp, path)


class _ExpertCall(ModelHook):
    """Before each DiT call of expert ``name``: its branch (its first or second call in the recorder's step in
    flight), its timestep, the block hooks' state cleared. ``reset_state``: a generation begins."""

    def __init__(self, owner: ResidualRecorder, recorder: GenerationRecorder, name: str, state: dict[str, Any]) -> None:
        self.owner, self.recorder, self.name, self.state = owner, recorder, name, state
        self.step: int | None = None  # the step of the last call, and the calls made in it
        self.calls = 0

    def reset_state(self) -> None:
        self.owner._forget(self.name)
        self.step, self.calls = None, 0

    def pre_forward(self, site: Any, args: tuple, kwargs: dict) -> None:
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if not isinstance(t, torch.Tensor) or t.numel() == 0:
            raise MethodError(f"{self.name} was called without a timestep tensor: its row would have no timestep")
        step = self.recorder.step_index
        self.calls = self.calls + 1 if step == self.step else 1
        self.step = step
        if self.calls > len(BRANCHES):
            raise MethodError(f"{self.name} was called more than twice in step {step}: the CFG branch of a call "
                              "cannot be told from the call order")
        now = float(t.detach().reshape(-1)[0])
        self.state.update(key=(self.name, BRANCHES[self.calls - 1]), t=now, head_in=None, r1=None)
        return None


def _on_head_in(state: dict[str, Any]) -> Any:
    def hook(mod: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        state["head_in"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    return hook


def _on_head_out(state: dict[str, Any]) -> Any:
    def hook(mod: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        out = output[0] if isinstance(output, tuple) else output
        state["r1"] = out - state["head_in"]

    return hook
