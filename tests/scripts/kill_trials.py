"""SIGKILL a probed generation at chosen points; one forked process per trial (torch is imported once).

python kill_trials.py DIR STEPS PLAN... where each PLAN is ``time:SECONDS`` (a kill after that many seconds
of generation) or ``close:K`` (a kill at the K-th Python call/return event inside ``RunWriter.close``, once
every step is committed). ``count`` instead of a plan prints how many such events close has. Trial k
writes DIR/run_k.h5 and DIR/run_k.committed (the most steps the writer reported committed before the kill).
"""

import os
import signal
import sys
import threading
import time

import torch

torch.set_num_threads(1)
from diffusers import UniPCMultistepScheduler  # noqa: E402

from latent_probe import LatentProbe  # noqa: E402
from latent_probe.store.writer import RunWriter  # noqa: E402


def generate(path: str, steps: int, *, on_probe=None, sleep: float = 0.0) -> None:
    torch.manual_seed(0)
    model = torch.nn.Conv3d(4, 4, 3, padding=1)
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    sched.set_timesteps(steps)
    x = torch.randn(1, 4, 5, 16, 16, generator=torch.Generator().manual_seed(0))
    probe = LatentProbe((model, sched), path, store_dtype="float32", overwrite=True)
    with probe, torch.no_grad():
        if on_probe is not None:
            on_probe(probe)
        for t in sched.timesteps:
            x = sched.step(model(x), t, x).prev_sample
            if sleep:
                time.sleep(sleep)
        while probe.recorder.writer.steps_written < steps:  # every step committed before close begins
            time.sleep(0.001)
        if getattr(probe, "_mark", None):
            probe._mark(steps)  # synchronously, before any kill inside close
        if getattr(probe, "_arm", None):
            probe._arm()


def watch(probe, out: str) -> None:
    """Record, as it grows, how many steps the writer reported committed (survives the kill)."""
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)

    def loop():
        seen = -1
        while True:
            rec = probe.recorder
            w = rec.writer if rec is not None else None
            n = w.steps_written if w is not None else seen
            if n != seen:
                seen = n
                os.pwrite(fd, f"{n:8d}".encode(), 0)
            time.sleep(0.0005)

    threading.Thread(target=loop, daemon=True).start()
    probe._mark = lambda n: os.pwrite(fd, f"{n:8d}".encode(), 0)


def kill_in_close(probe, k: int) -> None:
    """Arm a profiler that SIGKILLs this process at the k-th call/return event inside RunWriter.close."""
    def arm():
        count = [0]
        original = RunWriter.close

        def prof(frame, event, arg):
            count[0] += 1
            if count[0] >= k:
                os.kill(os.getpid(), signal.SIGKILL)

        def close(self, *a, **kw):
            sys.setprofile(prof)
            try:
                return original(self, *a, **kw)
            finally:
                sys.setprofile(None)

        RunWriter.close = close

    probe._arm = arm


def count_close_events(path: str, steps: int) -> int:
    count = [0]
    original = RunWriter.close

    def close(self, *a, **kw):
        sys.setprofile(lambda f, e, a: count.__setitem__(0, count[0] + 1))
        try:
            return original(self, *a, **kw)
        finally:
            sys.setprofile(None)

    RunWriter.close = close
    try:
        generate(path, steps)
    finally:
        RunWriter.close = original
    return count[0]


def main() -> None:
    folder, steps, plans = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    if plans == ["count"]:
        print(count_close_events(os.path.join(folder, "count.h5"), steps))
        return
    for k, plan in enumerate(plans):
        kind, value = plan.split(":")
        path = os.path.join(folder, f"run_{k}.h5")
        pid = os.fork()
        if pid == 0:  # the trial
            try:
                def on_probe(probe):
                    watch(probe, path[:-3] + ".committed")
                    if kind == "time":
                        threading.Timer(float(value), os.kill, (os.getpid(), signal.SIGKILL)).start()
                    else:
                        kill_in_close(probe, int(value))

                generate(path, steps, on_probe=on_probe, sleep=0.01 if kind == "time" else 0.0)
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        print(f"{k} {plan} {'killed' if killed else 'finished'}", flush=True)


if __name__ == "__main__":
    main()
