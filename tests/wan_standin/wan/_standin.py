"""Guards that let the stand-in pipelines run on a CPU-only torch where the real code assumes CUDA."""
import contextlib

import torch


def pick_device(device_id):
    # The real pipelines use torch.device(f"cuda:{device_id}") unconditionally.
    if torch.cuda.is_available():
        return torch.device(f"cuda:{device_id}")
    return torch.device('cpu')


def autocast(device, dtype):
    # The real pipelines wrap sampling in torch.amp.autocast('cuda', dtype=param_dtype).
    if device.type == 'cuda' and dtype in (torch.bfloat16, torch.float16):
        return torch.amp.autocast('cuda', dtype=dtype)
    return contextlib.nullcontext()


def cuda_synchronize():
    # The real pipelines call torch.cuda.synchronize() unconditionally when offloading.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def cuda_empty_cache():
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
