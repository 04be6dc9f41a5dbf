#!/usr/bin/env python
"""Train the model organism: a small two-expert Wan DiT on procedural videos (latent_probe/organism).

Flow matching as Wan trains it: x_t = (1 − σ)·x₀ + σ·ε, target v = ε − x₀, timestep t = σ·1000, σ drawn
from the shifted schedule σ = shift·u / (1 + (shift − 1)·u), u ~ U(0, 1) (the σ grid UniPC samples with,
``flow_shift``). Prompts are fixed seeded embeddings; 10 % of them are replaced by the null embedding so
classifier-free guidance works.

Phases, by wall clock: a shared base on all σ (``--base-frac`` of the budget), then a high-noise copy
fine-tuned on σ ≥ boundary and a low-noise copy on σ < boundary (the rest, split evenly). Each phase keeps
an EMA of its weights; the EMAs are what is saved. Writes ``organism.safetensors`` and ``organism.json``
(config, loss curve, validation losses per σ bin, machine, time) to ``--out``.

    python training/train_organism.py --budget-s 470 --out latent_probe/organism/weights   # GPU (bf16)
    python training/train_organism.py --budget-s 20 --batch 2 --out /tmp/organism            # CPU smoke
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latent_probe.organism import videos  # noqa: E402
from latent_probe.organism.model import (EXPERTS, OrganismConfig, build_transformer, null_embedding,  # noqa: E402
                                         parameter_count, prompt_embeddings, save_weights, shift_sigma,
                                         unshift_sigma)

SIGMA_BINS = (0.05, 0.2, 0.4, 0.6, 0.8, 0.875, 0.95, 0.99)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="latent_probe/organism/weights", help="folder for the .safetensors + .json")
    ap.add_argument("--budget-s", type=float, default=470.0, help="wall-clock seconds of training (all phases)")
    ap.add_argument("--max-steps", type=int, default=0, help="stop after this many steps in total (0: budget only)")
    ap.add_argument("--base-frac", type=float, default=0.7, help="share of the budget for the shared base")
    ap.add_argument("--batch", type=int, default=128, help="clips per step")
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--expert-lr", type=float, default=2e-4)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--warmup", type=int, default=200, help="warm-up steps of the base phase")
    ap.add_argument("--ema", type=float, default=0.999, help="EMA decay of the base phase")
    ap.add_argument("--expert-ema", type=float, default=0.995, help="EMA decay of the expert phases")
    ap.add_argument("--cond-drop", type=float, default=0.1, help="share of prompts replaced by the null embedding")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile the training module")
    ap.add_argument("--val-clips", type=int, default=256)
    ap.add_argument("--bench", type=int, default=0, help="only time this many steps (after 5 warm-up) and exit")
    return ap.parse_args(argv)


class Trainer:
    """One training module (optionally compiled) reused by every phase; EMA copies per phase."""

    def __init__(self, args: argparse.Namespace, config: OrganismConfig) -> None:
        self.args, self.config = args, config
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.net = build_transformer(config, seed=args.seed).to(self.device).train()
        self.step_fn = torch.compile(self.net) if args.compile else self.net
        self.emb = prompt_embeddings(config).to(self.device)
        self.null = null_embedding(config).to(self.device)
        self.gen = torch.Generator(self.device).manual_seed(args.seed + 1)
        self.u_boundary = unshift_sigma(config.boundary_sigma, config.flow_shift)
        self.curve: list[dict[str, float | int | str]] = []
        self.steps = 0

    # ------------------------------------------------------------------ data
    def batch(self, n: int, u_lo: float, u_hi: float, gen: torch.Generator, drop: float
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x_t [n, 16, F, h, w], t [n] (σ·1000), context [n, L, D], target v = ε − x₀."""
        dev = self.device
        clips = videos.render(videos.sample_labels(n, gen), gen)
        x0 = clips.latents
        u = u_lo + (u_hi - u_lo) * torch.rand(n, generator=gen, device=dev)
        sigma = shift_sigma(u, self.config.flow_shift)
        eps = torch.randn(x0.shape, generator=gen, device=dev)
        s = sigma[:, None, None, None, None]
        xt = (1 - s) * x0 + s * eps
        ctx = self.emb[clips.motion.labels]
        dropped = torch.rand(n, generator=gen, device=dev) < drop
        ctx = torch.where(dropped[:, None, None], self.null.expand_as(ctx), ctx)
        return xt, sigma * self.config.num_train_timesteps, ctx, eps - x0

    def loss(self, xt: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, v: torch.Tensor, fn=None) -> torch.Tensor:
        fn = fn or self.step_fn
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
            pred = fn(hidden_states=xt, timestep=t, encoder_hidden_states=ctx, return_dict=False)[0]
        return (pred.float() - v).pow(2).mean(dim=(1, 2, 3, 4))

    # ------------------------------------------------------------------ phases
    def run_phase(self, name: str, seconds: float, u_lo: float, u_hi: float, lr: float, warmup: int,
                  ema_decay: float, max_steps: int) -> dict[str, torch.Tensor]:
        """Train ``self.net`` on u in [u_lo, u_hi) for ``seconds``; returns the phase's EMA state."""
        args = self.args
        opt = torch.optim.AdamW(self.net.parameters(), lr=lr, weight_decay=args.weight_decay, betas=(0.9, 0.99),
                                fused=self.cuda)
        params = [p for p in self.net.parameters()]
        ema = [p.detach().clone() for p in params]
        start, n, running = time.perf_counter(), 0, None
        while True:
            elapsed = time.perf_counter() - start
            if elapsed >= seconds or (max_steps and n >= max_steps):
                break
            progress = min(1.0, elapsed / max(seconds, 1e-9))
            scale = min(1.0, (n + 1) / max(warmup, 1)) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
            for group in opt.param_groups:
                group["lr"] = lr * scale
            loss = self.loss(*self.batch(args.batch, u_lo, u_hi, self.gen, args.cond_drop)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            decay = min(ema_decay, (1 + n) / (10 + n))
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
            n += 1
            self.steps += 1
            if n % 25 == 0 or n == 1:
                value = loss.item()
                running = value if running is None else 0.9 * running + 0.1 * value
            if n % 100 == 0:
                self.curve.append({"phase": name, "step": n, "seconds": round(time.perf_counter() - start, 1),
                                   "loss": round(float(running), 5)})
                print(f"[{name}] step {n} {time.perf_counter() - start:.0f}s loss {running:.4f}", flush=True)
        secs = time.perf_counter() - start
        print(f"[{name}] done: {n} steps in {secs:.0f}s ({n / max(secs, 1e-9):.2f} steps/s)", flush=True)
        self.phase_stats = {"steps": n, "seconds": round(secs, 1)}
        names = [k for k, _ in self.net.named_parameters()]
        state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        state.update({k: e.clone() for k, e in zip(names, ema)})
        return state

    @torch.no_grad()
    def validate(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        """Loss of the weights ``state`` on fixed validation clips at each σ of ``SIGMA_BINS`` (no dropout)."""
        model = build_transformer(self.config).to(self.device)
        model.load_state_dict(state)
        gen = torch.Generator(self.device).manual_seed(10_000)
        out = {}
        for sigma in SIGMA_BINS:
            u = unshift_sigma(sigma, self.config.flow_shift)
            total, count = 0.0, 0
            for _ in range(max(1, self.args.val_clips // self.args.batch)):
                xt, t, ctx, v = self.batch(min(self.args.batch, self.args.val_clips), u, u, gen, 0.0)
                total += self.loss(xt, t, ctx, v, fn=model).sum().item()
                count += xt.shape[0]
            out[f"{sigma:g}"] = round(total / count, 5)
        return out


def _module(config: OrganismConfig, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    m = build_transformer(config)
    m.load_state_dict(state)
    return m


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()} CPU, torch {torch.__version__}"


def bench(trainer: Trainer, steps: int) -> None:
    """Time ``steps`` optimisation steps (after 5 warm-up steps) and print steps/s."""
    opt = torch.optim.AdamW(trainer.net.parameters(), lr=1e-4, fused=trainer.cuda)
    for i in range(5 + steps):
        if i == 5:
            if trainer.cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        loss = trainer.loss(*trainer.batch(trainer.args.batch, 0.0, 1.0, trainer.gen, 0.1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if trainer.cuda:
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    mem = torch.cuda.max_memory_allocated() / 2**30 if trainer.cuda else 0.0
    print(f"bench batch {trainer.args.batch} compile {trainer.args.compile}: {dt * 1000:.1f} ms/step, "
          f"{trainer.args.batch / dt:.0f} clips/s, peak {mem:.1f} GiB", flush=True)


def train_experts(trainer: "Trainer", args: argparse.Namespace, after_base: Any = None
                  ) -> tuple[dict, dict[str, dict], dict[str, Any], dict[str, Any]]:
    """The recipe's phases (v1 and v2): a base on all σ for ``base_frac`` of the budget, then each expert from the
    base on its side of the boundary for half the rest. ``after_base(base_state)`` runs between them (v1 saves a
    fallback). Returns the base state, the experts' states, each phase's statistics and the validation losses."""
    base_s = args.budget_s * args.base_frac
    expert_s = (args.budget_s - base_s) / 2
    cap = args.max_steps
    base = trainer.run_phase("base", base_s, 0.0, 1.0, args.lr, args.warmup, args.ema,
                             max(1, int(cap * args.base_frac)) if cap else 0)
    phases = {"base": trainer.phase_stats}
    if after_base is not None:
        after_base(base)
    ub = trainer.u_boundary
    states = {}
    for name, (lo, hi) in {"high_noise": (ub, 1.0), "low_noise": (0.0, ub)}.items():
        trainer.net.load_state_dict(base)
        states[name] = trainer.run_phase(name, expert_s, lo, hi, args.expert_lr, 50, args.expert_ema,
                                         max(1, int(cap * (1 - args.base_frac) / 2)) if cap else 0)
        phases[name] = trainer.phase_stats
    val = {"base": trainer.validate(base), **{k: trainer.validate(s) for k, s in states.items()}}
    return base, states, phases, val


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    config = OrganismConfig()
    wall0 = time.perf_counter()
    trainer = Trainer(args, config)
    print(f"{machine()}; {parameter_count(trainer.net) / 1e6:.2f} M parameters per expert; "
          f"{config.tokens} tokens per clip; batch {args.batch}", flush=True)
    if args.bench:
        bench(trainer, args.bench)
        return 0
    out = Path(args.out)
    fallback = lambda base: save_weights(  # noqa: E731
        out / "organism.safetensors", {k: _module(config, base) for k in EXPERTS}, config,
        metadata={"note": "base only (fallback while the experts train)"})
    base, states, phases, val = train_experts(trainer, args, after_base=fallback)
    ub = trainer.u_boundary
    experts = {name: _module(config, states[name]) for name in EXPERTS}
    meta = {
        "machine": machine(), "total_seconds": round(time.perf_counter() - wall0, 1),
        "train_seconds": args.budget_s, "steps": trainer.steps, "phases": phases,
        "parameters_per_expert": parameter_count(trainer.net), "tokens_per_clip": config.tokens,
        "args": {k: v for k, v in vars(args).items() if k != "out"},
        "boundary_u": ub, "validation_loss_per_sigma": val, "loss_curve": trainer.curve,
    }
    size = save_weights(out / "organism.safetensors", experts, config,
                        metadata={"machine": meta["machine"], "steps": trainer.steps})
    meta["weights_bytes"] = size
    (out / "organism.json").write_text(json.dumps({"config": json.loads(config.to_json()), "training": meta},
                                                  indent=1) + "\n")
    print(json.dumps({"validation_loss_per_sigma": val, "weights_bytes": size, "steps": trainer.steps}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
