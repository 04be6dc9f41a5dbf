"""Where a DiT expert keeps its transformer blocks, how their tokens map to frames, where self-attention's q, k are.

Conventions, named in ``TargetParts.blocks``:

* ``"wan_repo"`` — the Wan2.2 repository's ``WanModel``: ``expert.blocks`` (``nn.ModuleList``) called as
  ``block(x [B, seq_len, D], e=…, seq_lens=…, grid_sizes=…, freqs=…, …)``; ``x`` is padded with zeros past the
  F'·H'·W' real tokens up to ``seq_len``. The expert is called with a list of [C, F, H, W] latents; the token grid
  is (F/p_t, H/p_h, W/p_w) with ``expert.patch_size``. Self-attention is ``block.self_attn``; its q and k are the
  results of the two calls of the module-level ``rope_apply`` made inside it (q first), cast to the input's dtype,
  then — where the attention calls Wan2.2's ``flash_attention``, whose default ``dtype=torch.bfloat16`` casts
  float32 q and k — to bfloat16, as that function does. A windowed self-attention is refused for the reach.
* ``"diffusers_wan"`` — diffusers' ``WanTransformer3DModel``: ``expert.blocks`` called as
  ``block(hidden_states [B, F'·H'·W', D], encoder_hidden_states, temb, rotary_emb)``; the expert takes
  ``hidden_states`` [B, C, F, H, W] and ``config.patch_size``. Self-attention is ``block.attn1``; q and k are
  ``attn1.norm_q`` / ``norm_k``'s outputs, split into heads and rotated with ``rotary_emb`` as ``WanAttnProcessor``
  does.

Tokens are frame-major, (f, h, w), in both: token n belongs to frame n // (H'·W').
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..hooks import FnHook, HookRegistry
from .base import TargetParts, UnsupportedTargetError
from .rope import _wan_repo_namespace

__all__ = ["BLOCK_CONVENTIONS", "BlockSite", "QKError", "block_input", "block_site", "install_qk", "parse_blocks",
           "token_grid"]

BLOCK_CONVENTIONS = ("wan_repo", "diffusers_wan")
_DIFFUSERS_PROCESSORS = ("WanAttnProcessor", "WanAttnProcessor2_0")


@dataclass(frozen=True)
class BlockSite:
    """One expert's blocks: ``blocks`` (the module list), ``attention[i]`` the self-attention of block i."""

    convention: str
    expert: torch.nn.Module
    blocks: torch.nn.ModuleList
    patch_size: tuple[int, int, int]

    def attention(self, index: int) -> torch.nn.Module:
        block = self.blocks[index]
        return block.self_attn if self.convention == "wan_repo" else block.attn1

    def width(self) -> int:
        """D, the hidden states' channels."""
        if self.convention == "wan_repo":
            return int(self.expert.dim)
        cfg = self.expert.config
        return int(cfg.num_attention_heads) * int(cfg.attention_head_dim)

    def heads(self, index: int) -> int:
        attn = self.attention(index)
        return int(attn.num_heads if self.convention == "wan_repo" else attn.heads)


def _expert_blocks(expert: torch.nn.Module) -> torch.nn.ModuleList | None:
    blocks = getattr(expert, "blocks", None)
    return blocks if isinstance(blocks, torch.nn.ModuleList) and len(blocks) else None


def block_site(parts: TargetParts, name: str, expert: torch.nn.Module, reach: bool) -> BlockSite:
    """The blocks of ``expert`` under ``parts.blocks``; one UnsupportedTargetError line when they cannot be probed
    exactly (``reach``: attention's temporal reach is asked for too)."""
    convention = parts.blocks
    if convention is None:
        raise UnsupportedTargetError(f"blocks=: {parts.blocks_refused or f'latent_probe does not know the block layout of {parts.family} DiTs'}")
    blocks = _expert_blocks(expert)
    if blocks is None:
        raise UnsupportedTargetError(f"blocks=: expert {name} ({type(expert).__name__}) has no .blocks module list")
    if convention == "wan_repo":
        patch = tuple(getattr(expert, "patch_size", ()) or ())
        if reach and _wan_repo_namespace(expert) is None:
            raise UnsupportedTargetError(f"attention_reach=: the self-attention of {name} does not call a "
                                         "module-level rope_apply(x, grid_sizes, freqs)")
        if not all(hasattr(b, "self_attn") for b in blocks):
            raise UnsupportedTargetError(f"blocks=: the blocks of {name} have no self_attn")
        windows = {tuple(getattr(b.self_attn, "window_size", (-1, -1))) for b in blocks}
        if reach and windows != {(-1, -1)}:
            raise UnsupportedTargetError(f"attention_reach=: {name}'s self-attention is windowed {sorted(windows)}; "
                                         "the reach over all keys would not be what it attends to")
    elif convention == "diffusers_wan":
        patch = tuple(getattr(getattr(expert, "config", None), "patch_size", ()) or ())
        if not all(hasattr(b, "attn1") for b in blocks):
            raise UnsupportedTargetError(f"blocks=: the blocks of {name} have no attn1")
        if reach:
            odd = sorted({type(getattr(b.attn1, "processor", None)).__name__ for b in blocks} - set(_DIFFUSERS_PROCESSORS))
            if odd:
                raise UnsupportedTargetError(f"attention_reach=: {name}'s self-attention runs processor {odd[0]}, "
                                             f"not {_DIFFUSERS_PROCESSORS[0]}: q and k cannot be recomputed as it does")
    else:
        raise UnsupportedTargetError(f"blocks=: unknown block convention {convention!r}")
    if len(patch) != 3 or not all(isinstance(p, int) and p > 0 for p in patch):
        raise UnsupportedTargetError(f"blocks=: expert {name} has no 3-D patch_size (got {patch!r})")
    return BlockSite(convention, expert, blocks, patch)  # type: ignore[arg-type]


def token_grid(site: BlockSite, args: tuple, kwargs: dict) -> tuple[int, int, int, int]:
    """(B, F', H', W') of one call of the expert, from its input's shape (no device access)."""
    if site.convention == "wan_repo":
        x = args[0] if args else kwargs.get("x")
        if not isinstance(x, (list, tuple)) or not x or not all(isinstance(u, torch.Tensor) and u.dim() == 4 for u in x):
            raise UnsupportedTargetError("blocks=: WanModel was called without a list of [C, F, H, W] latents")
        shapes = {tuple(u.shape[1:]) for u in x}
        if len(shapes) != 1:
            raise UnsupportedTargetError(f"blocks=: one call holds latents of several sizes {sorted(shapes)}")
        f, h, w = shapes.pop()
        b = len(x)
    else:
        x = args[0] if args else kwargs.get("hidden_states")
        if not isinstance(x, torch.Tensor) or x.dim() != 5:
            raise UnsupportedTargetError("blocks=: the transformer was called without hidden_states [B, C, F, H, W]")
        b, _, f, h, w = x.shape
    pt, ph, pw = site.patch_size
    return int(b), f // pt, h // ph, w // pw


_TERM = re.compile(r"^every:(\d+)$")


def parse_blocks(spec: Any, count: int) -> tuple[int, ...]:
    """Block indices from ``"all"``, ``"every:k"`` (0, k, 2k, …) or a list of indices (negative from the end)."""
    if isinstance(spec, str):
        if spec == "all":
            return tuple(range(count))
        m = _TERM.match(spec.strip())
        if m and int(m.group(1)) >= 1:
            return tuple(range(0, count, int(m.group(1))))
        raise ValueError(f"blocks={spec!r}: give 'all', 'every:k' (k ≥ 1) or a list of block indices")
    try:
        items = list(spec)
    except TypeError:
        raise ValueError(f"blocks={spec!r}: give 'all', 'every:k' or a list of block indices") from None
    if not items or not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
        raise ValueError(f"blocks={spec!r}: a list of block indices must hold ints, at least one")
    out = []
    for i in items:
        if not -count <= i < count:
            raise ValueError(f"blocks={spec!r}: index {i} is outside the {count} blocks")
        out.append(i % count)
    if len(set(out)) != len(out):
        raise ValueError(f"blocks={spec!r} names a block twice")
    return tuple(sorted(out))


def block_input(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The hidden states [B, N, D] a block (or its self-attention) was called with."""
    x = args[0] if args else kwargs.get("x", kwargs.get("hidden_states"))
    return x if isinstance(x, torch.Tensor) else None


def _diffusers_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """diffusers' WanAttnProcessor ``apply_rotary_emb`` (the same operations in the same dtypes)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * c - x2 * s
    out[..., 1::2] = x1 * s + x2 * c
    return out.type_as(x)


_HALF = (torch.float16, torch.bfloat16)


class QKError(UnsupportedTargetError):
    """A self-attention call did not compute q and k the way its convention says."""


def install_qk(reg: HookRegistry, site: BlockSite, index: int, rows: Callable[[torch.device], torch.Tensor | None],
               deliver: Callable[[torch.Tensor, torch.Tensor], None], guard: Callable[[Callable], Callable],
               state: Any, namespaces: set[str]) -> None:
    """Hooks on block ``index``'s self-attention that call ``deliver(q [B, Q, H, d], k [B, N, H, d])`` after each
    call: q of the token rows ``rows(device)`` chooses (None: the call is not probed) and k of every token, exactly
    as the attention computes them. ``guard`` wraps every hook (so none raises into the model); ``state`` is a
    thread-local of the caller's, shared by its hooks; ``namespaces`` the modules whose ``rope_apply`` is already
    intercepted (Wan2.2: once per module)."""
    attn = site.attention(index)
    code = getattr(getattr(type(attn), "forward", None), "__code__", None)
    flash = site.convention == "wan_repo" and code is not None and "flash_attention" in code.co_names

    def pre(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        x = block_input(args, kwargs)
        rot = args[3] if len(args) > 3 else kwargs.get("rotary_emb")
        state.active = {"dtype": None if x is None else x.dtype, "rope": [], "rotary": rot}

    @torch.no_grad()
    def post(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        active, state.active = getattr(state, "active", None), None
        if active is None:
            return
        if site.convention == "wan_repo":
            if len(active["rope"]) != 2:
                raise QKError(f"block {index}'s self-attention called rope_apply {len(active['rope'])} times, not "
                              "twice (q, k)")
            q, k = active["rope"]
            if flash and q.dtype not in _HALF:  # Wan2.2's flash_attention(…, dtype=bfloat16) casts q and k: half(x)
                q, k = q.to(torch.bfloat16), k.to(torch.bfloat16)
            idx = rows(q.device)
            if idx is not None:
                deliver(q[:, idx], k)
            return
        q, k = active.get("q"), active.get("k")
        if q is None or k is None:
            raise QKError(f"block {index}'s attn1 did not run norm_q and norm_k")
        idx = rows(q.device)
        if idx is None:
            return
        heads = int(module.heads)
        q, k = q.unflatten(2, (heads, -1))[:, idx], k.unflatten(2, (heads, -1))
        rot = active["rotary"]
        if rot is not None:  # as WanAttnProcessor: rotated after the heads split (the sampled rows of the table)
            cos, sin = rot
            k = _diffusers_rotary(k, cos, sin)
            q = _diffusers_rotary(q, cos[:, idx], sin[:, idx])
        deliver(q, k)

    def norm(which: str) -> Callable:
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            active = getattr(state, "active", None)
            if active is not None and isinstance(output, torch.Tensor):
                active[which] = output

        return hook

    def rope_post(site: Any, args: tuple, kwargs: dict, out: Any) -> None:
        guard(keep)(out)

    def keep(out: Any) -> None:
        active = getattr(state, "active", None)
        if active is not None and isinstance(out, torch.Tensor) and len(active["rope"]) < 2:
            active["rope"].append(out if active["dtype"] is None else out.to(active["dtype"]))  # the module's cast

    reg.add(attn, FnHook(guard(pre), guard(post)))
    if site.convention == "diffusers_wan":
        for which in ("q", "k"):
            reg.add(getattr(attn, f"norm_{which}"), FnHook(post=guard(norm(which))))
    else:
        ns = _wan_repo_namespace(site.expert)
        if ns is not None and ns["__name__"] not in namespaces:
            namespaces.add(ns["__name__"])
            reg.add_call(sys.modules[ns["__name__"]], "rope_apply", FnHook(post=rope_post))
