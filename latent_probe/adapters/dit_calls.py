"""Read, shrink and re-expand one DiT call along the latent frame axis, per DiT calling convention.

An adapter names the convention of its target's experts (``TargetParts.dit_calls``); interventions use these
classes and never look at a model family themselves. Conventions:

* ``wan_repo`` — Wan2.2's ``WanModel.forward(x, t, context, seq_len, y=None)``: ``x`` a list of
  [C, F, H, W]; ``seq_len`` the (padded) token count; ``t`` [B] or per token [B, seq_len] (TI2V);
  ``y`` the I2V conditioning list of [C_y, F, H, W]. Returns a list of [C_out, F, H, W].
* ``diffusers`` / ``modules`` — ``forward(hidden_states [B, C, F, H, W], timestep [B] or [B, seq_len], ...)``
  (the first positional argument, or ``hidden_states``); returns a tensor, a tuple whose first element is
  the prediction, or an object with ``.sample``.

Arguments are found by name in ``kwargs`` or by position in these signatures and put back where they were
found, so the call keeps its calling convention. Tokens are latent positions after patching:
(F/p_t)·(H/p_h)·(W/p_w) per batch item; patch (1, 1, 1) when the module does not say.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch

if TYPE_CHECKING:  # the plan is the intervention's; this module only reads its keys and fills
    from ..frames import FillPlan


__all__ = ["CallShape", "DitIO", "patch_size_of", "is_image_conditioned", "frame0_is_conditioning"]


@dataclass(frozen=True)
class CallShape:
    """Latent geometry of one DiT call: batch items, frames, tokens per frame (after patching)."""

    batch: int
    frames: int
    tokens_per_frame: int

    def tokens(self, frames: int | None = None) -> int:
        return self.batch * (self.frames if frames is None else frames) * self.tokens_per_frame


def patch_size_of(module: torch.nn.Module) -> tuple[int, int, int]:
    """(p_t, p_h, p_w) from ``module.patch_size`` (Wan2.2) or ``module.config.patch_size`` (diffusers)."""
    p = getattr(getattr(module, "config", None), "patch_size", None)
    if p is None:
        p = vars(module).get("patch_size")
    if p is None:
        return (1, 1, 1)
    p = tuple(int(i) for i in p)
    return p if len(p) == 3 else (1, *p[-2:]) if len(p) >= 2 else (1, 1, 1)


def is_image_conditioned(module: torch.nn.Module, family: str) -> bool:
    """True for image-to-video experts: Wan2.2 ``model_type == 'i2v'``; diffusers experts whose input has
    more channels than their output (conditioning concatenated on channels)."""
    if family == "wan_repo":
        return getattr(module, "model_type", None) == "i2v"
    cfg = getattr(module, "config", None)
    cin, cout = getattr(cfg, "in_channels", None), getattr(cfg, "out_channels", None)
    return cin is not None and cout is not None and cin != cout


class _Args:
    """Arguments of one call by name: in kwargs if given there, else at their position."""

    def __init__(self, args: tuple, kwargs: dict, order: Sequence[str]) -> None:
        self.args, self.kwargs, self.order = list(args), dict(kwargs), tuple(order)

    def get(self, name: str) -> Any:
        if name in self.kwargs:
            return self.kwargs[name]
        i = self.order.index(name)
        return self.args[i] if i < len(self.args) else None

    def set(self, name: str, value: Any) -> None:
        i = self.order.index(name)
        if name in self.kwargs or i >= len(self.args):
            self.kwargs[name] = value
        else:
            self.args[i] = value

    def result(self) -> tuple[tuple, dict]:
        return tuple(self.args), self.kwargs


def _slice_per_token(t: Any, shape: CallShape, keys: torch.Tensor) -> Any:
    """A per-token timestep [B, ≥ F·T] (T tokens per frame, frame-major) → [B, K·T]; anything else as is.
    Padding tokens past F·T are dropped (the new sequence is unpadded)."""
    n = shape.frames * shape.tokens_per_frame
    if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[1] < n:
        return t
    per_frame = t[:, :n].reshape(t.shape[0], shape.frames, shape.tokens_per_frame)
    return per_frame.index_select(1, keys.to(t.device)).reshape(t.shape[0], -1)


def frame0_is_conditioning(t: Any, shape: CallShape) -> bool:
    """True when a per-token timestep gives frame 0 other timesteps than frame 1 (TI2V image conditioning).
    Reads the tensor (a device sync): only called when frame 0 is not a key frame."""
    if not isinstance(t, torch.Tensor) or t.dim() != 2 or shape.frames < 2:
        return False
    n = shape.tokens_per_frame
    if t.shape[1] < 2 * n:
        return False
    return not torch.equal(t[:, :n], t[:, n:2 * n])


class DitIO:
    """Frame-axis access to the calls of one expert module of one family."""

    WAN_ORDER = ("x", "t", "context", "seq_len", "y")
    TENSOR_ORDER = ("hidden_states", "timestep", "encoder_hidden_states")

    def __init__(self, module: torch.nn.Module, family: str) -> None:
        self.family = family
        self.patch = patch_size_of(module)
        if self.patch[0] != 1:
            raise ValueError(f"frame truncation needs a temporal patch size of 1, this model has {self.patch}")
        self.wan = family == "wan_repo"
        self.order = self.WAN_ORDER if self.wan else self.TENSOR_ORDER

    # ------------------------------------------------------------------ inputs
    def _latent(self, a: _Args) -> Any:
        if self.wan:
            return a.get("x")
        if "hidden_states" in a.kwargs or a.args:
            return a.get("hidden_states")
        return next((v for v in a.kwargs.values() if isinstance(v, torch.Tensor) and v.dim() == 5), None)

    def shape(self, args: tuple, kwargs: dict) -> CallShape:
        """Batch, frames and tokens per frame of a call (raises ``ValueError`` for an unexpected layout)."""
        x = self._latent(_Args(args, kwargs, self.order))
        _, ph, pw = self.patch
        if self.wan:
            if not isinstance(x, (list, tuple)) or not x or not all(isinstance(u, torch.Tensor) and u.dim() == 4
                                                                   for u in x):
                raise ValueError("Wan2.2 expert called without x = list of [C, F, H, W] tensors")
            _, f, h, w = x[0].shape
            return CallShape(len(x), int(f), (int(h) // ph) * (int(w) // pw))
        if not isinstance(x, torch.Tensor) or x.dim() != 5:
            raise ValueError("expert called without a [B, C, F, H, W] latent as hidden_states / first argument")
        b, _, f, h, w = x.shape
        return CallShape(int(b), int(f), (int(h) // ph) * (int(w) // pw))

    def latent(self, args: tuple, kwargs: dict) -> Any:
        """The call's latent input: [B, C, F, H, W] (diffusers, modules) or Wan2.2's list of [C, F, H, W]."""
        return self._latent(_Args(args, kwargs, self.order))

    def timestep(self, args: tuple, kwargs: dict) -> Any:
        return _Args(args, kwargs, self.order).get("t" if self.wan else "timestep")

    def conditioned(self, args: tuple, kwargs: dict) -> bool:
        """The call carries image conditioning (Wan2.2's ``y``)."""
        return self.wan and _Args(args, kwargs, self.order).get("y") is not None

    def take_frames(self, args: tuple, kwargs: dict, plan: FillPlan, shape: CallShape) -> tuple[tuple, dict]:
        """The same call with only ``plan.keys``: latent(s), Wan's ``seq_len`` and ``y``, per-token ``t``."""
        a = _Args(args, kwargs, self.order)
        x = self._latent(a)
        keys = plan.keys
        idx = plan.key_index(x[0].device if self.wan else x.device)
        if self.wan:
            a.set("x", [u.index_select(1, idx) for u in x])
            y = a.get("y")
            if y is not None:
                a.set("y", [v.index_select(1, idx.to(v.device)) for v in y])
            if a.get("seq_len") is not None:
                a.set("seq_len", len(keys) * shape.tokens_per_frame)
            if a.get("t") is not None:
                a.set("t", _slice_per_token(a.get("t"), shape, idx))
        else:
            small = x.index_select(2, idx)
            if "hidden_states" in a.kwargs or a.args:
                a.set("hidden_states", small)
            else:
                name = next(k for k, v in a.kwargs.items() if v is x)
                a.kwargs[name] = small
            t = a.get("timestep")
            if t is not None:
                a.set("timestep", _slice_per_token(t, shape, idx))
        return a.result()

    # ------------------------------------------------------------------ output
    def fill_frames(self, output: Any, plan: FillPlan) -> Any:
        """The output with every prediction expanded from the key frames by ``plan``; same container."""

        def grow(t: torch.Tensor) -> torch.Tensor:
            return plan(t)

        if isinstance(output, torch.Tensor):
            return grow(output)
        if self.wan and isinstance(output, list) and all(isinstance(u, torch.Tensor) for u in output):
            return [grow(u) for u in output]
        if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
            return type(output)([grow(output[0]), *output[1:]])
        if dataclasses.is_dataclass(output) and isinstance(getattr(output, "sample", None), torch.Tensor):
            return dataclasses.replace(output, sample=grow(output.sample))
        raise ValueError(f"cannot find the prediction in a DiT output of type {type(output).__name__}")


