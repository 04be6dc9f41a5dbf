"""A generation that takes its time (for the SIGKILL test): python slow_generation.py OUT.h5 STEPS."""

import sys
import time

import torch
from diffusers import UniPCMultistepScheduler

from latent_probe import LatentProbe

path, steps = sys.argv[1], int(sys.argv[2])
model = torch.nn.Conv3d(4, 4, 3, padding=1)
sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
sched.set_timesteps(steps)
x = torch.randn(1, 4, 5, 16, 16, generator=torch.Generator().manual_seed(0))
with LatentProbe((model, sched), path, store_dtype="float32"), torch.no_grad():
    for t in sched.timesteps:
        x = sched.step(model(x), t, x).prev_sample
        time.sleep(0.02)
print("finished", flush=True)
