"""Print the peak RSS growth (bytes) while recomputing x0 metrics of a run file: python ... RUN.h5"""

import resource
import sys

import numpy as np  # noqa: F401  (imported before the baseline)
import torch  # noqa: F401

from latent_probe import open_run
from latent_probe.metrics import adjacent_frame_metrics  # noqa: F401  (warm imports)

with open_run(sys.argv[1]) as run:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    m = run.metrics("x0")
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(after - before, run.num_steps, run.latents("x0").step_nbytes, float(m.l2_mean.mean()))
