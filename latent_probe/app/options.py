"""Option groups the commands share (``analyze``, ``study``): one definition each, so their help and defaults
cannot drift apart. ``storage_from_args`` turns the storage group into a checked ``StorageOptions``."""

from __future__ import annotations

import argparse
from typing import Any

from ..store.schema import STORE_DTYPES
from ..storage_options import StorageOptions

__all__ = ["add_model_arguments", "add_storage_arguments", "storage_kwargs", "phase_scheme"]

WEIGHT_DTYPES = ("float32", "bfloat16", "float16")


def add_model_arguments(p: argparse.ArgumentParser, *, study: bool = False) -> None:
    """Options that pick and configure the model: Wan2.2 repository and diffusers backends."""
    p.add_argument("--wan_repo", metavar="PATH", help="clone of github.com/Wan-Video/Wan2.2 to import 'wan' from")
    p.add_argument("--wan_config", default="full", choices=("full", "tiny"),
                   help="for tests: 'tiny' builds wan.configs.tiny_*_config() models (tests/wan_standin)")
    p.add_argument("--sample_solver", default="unipc", choices=("unipc", "dpm++"), help="wan backend: sampler")
    p.add_argument("--sample_shift", type=float,
                   help="wan backend: flow shift" + (" unless --set shift" if study else "") + " (default: the task's)")
    p.add_argument("--guide_scale", type=float, nargs="+", metavar="G",
                   help="CFG scale, or two: low-noise high-noise" + (", unless --set guidance" if study else "")
                        + " (default: the task's)")
    p.add_argument("--offload_model", choices=("true", "false"),
                   help="wan backend (default true, as Wan2.2" + ("; false with --dit_fsdp/--ulysses_size" if study
                                                                 else "") + ")")
    p.add_argument("--t5_cpu", action="store_true", help="wan backend: keep umT5 on the CPU")
    p.add_argument("--convert_model_dtype", action="store_true", help="wan backend: DiTs to param_dtype")
    p.add_argument("--device", help="diffusers backend: device (default " + ("cuda:LOCAL_RANK, or cpu without CUDA"
                                                                            if study else "cuda if available") + ")")
    p.add_argument("--dtype", choices=WEIGHT_DTYPES,
                   help="diffusers backend: weights dtype (default bfloat16 on CUDA, float32 on CPU)")


def add_storage_arguments(p: argparse.ArgumentParser, *, modes: bool = True) -> None:
    """What the probe stores: --store_dtype, --cfg_branches and (``modes``) --capture, --metrics, --latent_steps."""
    p.add_argument("--store_dtype", default="float16", choices=STORE_DTYPES, help="latents on disk")
    p.add_argument("--cfg_branches", action="store_true",
                   help="also record the cond and uncond predictions (their step change and gap)")
    if not modes:
        return
    p.add_argument("--capture", metavar="Q,Q|none",
                   help="latents stored per step, from x_t,pred,x0,eps (default all four; 'none' with --metrics: "
                        "metrics-only runs, kilobytes each; 'x_t,pred': x0/eps derived on read)")
    p.add_argument("--metrics", metavar="SPACE,SPACE",
                   help="spaces whose metrics are computed during the run on the GPU (x_t,pred,x0,eps)")
    p.add_argument("--latent_steps", metavar="SPEC",
                   help="steps whose latents are stored: all (default), none, k (every k-th) or terms like "
                        "every:4,last,boundary:2")


def _names(text: str) -> list[str]:
    return [q.strip() for q in text.split(",") if q.strip()]


def storage_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The storage group as ``LatentProbe`` keyword arguments (only those given), checked by building a
    ``StorageOptions`` from them: a combination that cannot work raises its one ``ValueError`` line here."""
    out: dict[str, Any] = {"store_dtype": args.store_dtype, "cfg_branches": args.cfg_branches}
    capture = getattr(args, "capture", None)
    if capture is not None:
        out["capture"] = [] if capture.strip().lower() == "none" else _names(capture)
    if getattr(args, "metrics", None):
        out["metrics"] = _names(args.metrics)
    steps = getattr(args, "latent_steps", None)
    if steps and steps != "all":
        out["latent_steps"] = steps
    StorageOptions(**out)
    return out


def phase_scheme(text: str) -> str:
    """argparse type: 'thirds', 'original' or '0-4,5-9,10-39' (checked here, so a bad one is a usage error)."""
    from ..metrics.phases import phase_ranges

    try:
        phase_ranges(1000, text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text
