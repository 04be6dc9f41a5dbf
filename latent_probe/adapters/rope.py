"""Where a DiT expert takes its rotary (RoPE) time positions from, and how to give key frames their true ones.

Used by frame truncation with ``positions="true"``: the DiT receives K key frames of F, and each key frame
must get the temporal rotary angles it has in the full-length call (key ``k`` → position ``k``, not its
index among the keys). Conventions, named in ``TargetParts.rope``:

* ``"diffusers_wan"`` — diffusers' ``WanTransformer3DModel``: ``transformer.rope`` (``WanRotaryPosEmbed``)
  maps ``hidden_states`` [B, C, F, H, W] to ``(cos, sin)``, each [1, F·(H/p_h)·(W/p_w), 1, head_dim],
  tokens frame-major (f, h, w). A forward hook on the rope module recomputes the table for all F frames
  and keeps the key frames' rows.
* ``"wan_repo"`` — the Wan2.2 repository: ``rope_apply(x [B, L, n, d], grid_sizes [B, 3] (F, H, W),
  freqs [1024, d/2])``, a module-level function the self-attention's ``forward`` looks up as a global;
  frame f's temporal angles are ``freqs[f, :c_t]`` (c_t = d/2 − 2·(d/2 // 3)). That global is intercepted
  through a ``hooks.Dispatcher``; the listener passes a table whose rows 0 … K−1 hold the key frames' rows.

Both act only inside a call of the expert they were installed for (``keys_now()`` is not None) and only
when the call really has K < F frames; anything else passes through untouched.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

import torch

from ..errors import LatentProbeError
from ..hooks import FnHook, HookRegistry, ModelHook

__all__ = ["CONVENTIONS", "TimePositionsError", "refusal", "install"]

CONVENTIONS = ("diffusers_wan", "wan_repo")
# the expert's call in flight: (key frames, F) while it is truncated, else None
KeysNow = Callable[[], "tuple[Sequence[int], int] | None"]


class TimePositionsError(LatentProbeError, ValueError):
    """True time positions cannot be given to these DiT calls (refused at entry) or the rotary table has an
    unexpected form (at the call)."""


# ---------------------------------------------------------------------------------------------- checks
def _is_wan_rope(module: Any) -> bool:
    return any(k.__name__ == "WanRotaryPosEmbed" and k.__module__.endswith("transformers.transformer_wan")
               for k in type(module).__mro__)


def _wan_repo_namespace(expert: torch.nn.Module) -> dict | None:
    """The globals in which the expert's self-attention looks up ``rope_apply``, if it does."""
    blocks = getattr(expert, "blocks", None)
    attn = getattr(blocks[0], "self_attn", None) if isinstance(blocks, torch.nn.ModuleList) and len(blocks) else None
    fwd = getattr(type(attn), "forward", None) if attn is not None else None
    code = getattr(fwd, "__code__", None)
    if code is None or "rope_apply" not in code.co_names:
        return None
    ns = fwd.__globals__
    return ns if callable(ns.get("rope_apply")) and ns.get("__name__") in sys.modules else None


def refusal(convention: str | None, expert: torch.nn.Module) -> str | None:
    """Why true time positions cannot be given to ``expert``'s calls under ``convention``; None if they can."""
    if convention is None:
        return "latent_probe does not know where these DiT experts take their rotary time positions from"
    if convention == "diffusers_wan":
        rope = getattr(expert, "rope", None)
        if not _is_wan_rope(rope):
            return f"{type(expert).__name__}.rope is not diffusers' WanRotaryPosEmbed"
        if tuple(getattr(rope, "patch_size", (0,)))[:1] != (1,):
            return f"its rotary embedding has temporal patch size {getattr(rope, 'patch_size', None)}, not 1"
        return None
    if convention == "wan_repo":
        if _wan_repo_namespace(expert) is None:
            return (f"the self-attention of {type(expert).__name__} does not call a module-level rope_apply(x, "
                    "grid_sizes, freqs)")
        if not (isinstance(getattr(expert, "freqs", None), torch.Tensor) and expert.freqs.dim() == 2):
            return f"{type(expert).__name__} has no rotary table freqs [max_len, head_dim/2]"
        return None
    return f"unknown rotary convention {convention!r}"


# ---------------------------------------------------------------------------------------------- install
def install(registry: HookRegistry, convention: str, expert: torch.nn.Module, keys_now: KeysNow) -> None:
    """Give ``expert``'s truncated calls their key frames' true time positions; owned by ``registry``."""
    reason = refusal(convention, expert)
    if reason is not None:
        raise TimePositionsError(f"positions='true': {reason}")
    if convention == "diffusers_wan":
        registry.add(expert.rope, FnHook(post=_diffusers_hook(keys_now)))
    else:
        ns = _wan_repo_namespace(expert)
        registry.add_call(sys.modules[ns["__name__"]], "rope_apply", _wan_repo_hook(expert, keys_now))


def _active(keys_now: KeysNow, frames: int) -> tuple[list[int], int] | None:
    """(keys, F) when the call in flight is truncated to ``frames`` = K < F frames."""
    now = keys_now()
    if now is None:
        return None
    keys, num_frames = [int(k) for k in now[0]], int(now[1])
    return (keys, num_frames) if frames == len(keys) < num_frames else None


def _diffusers_hook(keys_now: KeysNow) -> Callable:
    def hook(rope: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        x = args[0] if args else kwargs.get("hidden_states")
        now = _active(keys_now, int(x.shape[2])) if isinstance(x, torch.Tensor) and x.dim() == 5 else None
        if now is None:
            return None
        keys, num_frames = now
        b, c, _, h, w = x.shape
        full = rope.forward(x.new_empty(()).expand(b, c, num_frames, h, w))  # the table reads only the shape
        if not (isinstance(full, tuple) and len(full) == 2 and all(isinstance(t, torch.Tensor) and t.dim() >= 2
                                                                  and t.shape[1] % num_frames == 0 for t in full)):
            raise TimePositionsError("WanRotaryPosEmbed returned something other than (cos, sin) [1, F*T, 1, D]")
        idx = torch.as_tensor(keys, device=full[0].device)
        return tuple(t.unflatten(1, (num_frames, -1)).index_select(1, idx).flatten(1, 2) for t in full)

    return hook


def _wan_repo_hook(expert: torch.nn.Module, keys_now: KeysNow) -> ModelHook:
    cache: dict[str, Any] = {}

    def table(freqs: torch.Tensor, keys: list[int], head_dim: int) -> torch.Tensor:
        """``freqs`` with rows 0 … K−1 of its temporal columns replaced by the key frames' rows (cached)."""
        if cache.get("src") is not freqs or cache.get("keys") != keys or cache.get("d") != head_dim:
            c = head_dim // 2
            ct = c - 2 * (c // 3)
            out = freqs.clone()
            out[: len(keys), :ct] = freqs[torch.as_tensor(keys, device=freqs.device), :ct]
            cache.update(src=freqs, keys=keys, d=head_dim, out=out)
        return cache["out"]

    def pre(site: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        names = ("x", "grid_sizes", "freqs")
        a = dict(zip(names, args), **kwargs)
        freqs, grid = a.get("freqs"), a.get("grid_sizes")
        if (len(args) > 3 or not isinstance(a.get("x"), torch.Tensor) or not isinstance(grid, torch.Tensor)
                or freqs is None or freqs is not getattr(expert, "freqs", None)):
            return None  # another model's call, or not the expert's table
        frames = {int(f) for f in grid[:, 0].tolist()}  # grid_sizes lives on the CPU: no device sync
        now = _active(keys_now, frames.pop()) if len(frames) == 1 else None
        if now is None:
            return None
        a["freqs"] = table(freqs, now[0], int(a["x"].size(3)))
        rest = {k: v for k, v in a.items() if k not in names}
        return (a["x"], a["grid_sizes"], a["freqs"]), rest

    return FnHook(pre=pre)
