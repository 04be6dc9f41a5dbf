"""Stand-in for wan/utils/fm_solvers.py: ``get_sampling_sigmas``, ``retrieve_timesteps`` and
``FlowDPMSolverMultistepScheduler`` (multistep DPM-Solver++ in data-prediction form on flow-matching
sigmas). Same constructor keywords, registered config, ``set_timesteps`` and ``step`` signatures as the
real class; only ``algorithm_type='dpmsolver++'`` (the one Wan uses) is implemented.
"""
import inspect
from typing import List, Optional, Union

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerOutput

from ._flow_common import FlowMultistepBase

__all__ = ['get_sampling_sigmas', 'retrieve_timesteps', 'FlowDPMSolverMultistepScheduler']


def get_sampling_sigmas(sampling_steps, shift):
    """sampling_steps sigmas from 1 down to 1/sampling_steps (uniform), then shifted."""
    sigma = np.linspace(1, 0, sampling_steps + 1)[:sampling_steps]
    return shift * sigma / (1 + (shift - 1) * sigma)


def retrieve_timesteps(scheduler, num_inference_steps=None, device=None, timesteps=None, sigmas=None,
                       **kwargs):
    """Call ``scheduler.set_timesteps`` with a step count, custom timesteps or custom sigmas; return
    ``(scheduler.timesteps, number of steps)``."""
    if timesteps is not None and sigmas is not None:
        raise ValueError("Only one of `timesteps` or `sigmas` can be passed.")
    params = set(inspect.signature(scheduler.set_timesteps).parameters)
    if timesteps is not None:
        if 'timesteps' not in params:
            raise ValueError(f"{scheduler.__class__}'s `set_timesteps` does not support custom timesteps")
        scheduler.set_timesteps(timesteps=timesteps, device=device, **kwargs)
        timesteps = scheduler.timesteps
        num_inference_steps = len(timesteps)
    elif sigmas is not None:
        if 'sigmas' not in params:
            raise ValueError(f"{scheduler.__class__}'s `set_timesteps` does not support custom sigmas")
        scheduler.set_timesteps(sigmas=sigmas, device=device, **kwargs)
        timesteps = scheduler.timesteps
        num_inference_steps = len(timesteps)
    else:
        scheduler.set_timesteps(num_inference_steps, device=device, **kwargs)
        timesteps = scheduler.timesteps
    return timesteps, num_inference_steps


class FlowDPMSolverMultistepScheduler(FlowMultistepBase):

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        solver_order: int = 2,
        prediction_type: str = "flow_prediction",
        shift: Optional[float] = 1.0,
        use_dynamic_shifting=False,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        final_sigmas_type: Optional[str] = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: Optional[str] = None,
        invert_sigmas: bool = False,
    ):
        if algorithm_type == "deis":
            self.register_to_config(algorithm_type="dpmsolver++")
        elif algorithm_type != "dpmsolver++":
            raise NotImplementedError(f"the wan stand-in implements algorithm_type='dpmsolver++' only, "
                                      f"not {algorithm_type!r}")
        if solver_type not in ["midpoint", "heun"]:
            if solver_type in ["logrho", "bh1", "bh2"]:
                self.register_to_config(solver_type="midpoint")
            else:
                raise NotImplementedError(f"{solver_type} is not implemented for {self.__class__}")
        if thresholding:
            raise NotImplementedError("the wan stand-in does not implement thresholding")
        self._init_train_schedule()

    def _first_order(self, x0, sample):
        i = self.step_index
        sigma_t, sigma_s = self.sigmas[i + 1], self.sigmas[i]
        alpha_t = 1 - sigma_t
        h = self._lambda(sigma_t) - self._lambda(sigma_s)
        return (sigma_t / sigma_s) * sample - (alpha_t * torch.expm1(-h)) * x0

    def _second_order(self, sample):
        i = self.step_index
        sigma_t, sigma_s0, sigma_s1 = self.sigmas[i + 1], self.sigmas[i], self.sigmas[i - 1]
        alpha_t = 1 - sigma_t
        lam_t, lam_s0, lam_s1 = self._lambda(sigma_t), self._lambda(sigma_s0), self._lambda(sigma_s1)
        m0, m1 = self.model_outputs[-1], self.model_outputs[-2]
        h, h_0 = lam_t - lam_s0, lam_s0 - lam_s1
        d0, d1 = m0, (m0 - m1) / (h_0 / h)
        base = (sigma_t / sigma_s0) * sample - (alpha_t * torch.expm1(-h)) * d0
        if self.config.solver_type == "midpoint":
            return base - 0.5 * (alpha_t * torch.expm1(-h)) * d1
        return base + (alpha_t * (torch.expm1(-h) / h + 1.0)) * d1  # heun

    def _third_order(self, sample):
        i = self.step_index
        sigma_t, s0, s1, s2 = self.sigmas[i + 1], self.sigmas[i], self.sigmas[i - 1], self.sigmas[i - 2]
        alpha_t = 1 - sigma_t
        lam_t, lam0, lam1, lam2 = (self._lambda(s) for s in (sigma_t, s0, s1, s2))
        m0, m1, m2 = self.model_outputs[-1], self.model_outputs[-2], self.model_outputs[-3]
        h, h_0, h_1 = lam_t - lam0, lam0 - lam1, lam1 - lam2
        r0, r1 = h_0 / h, h_1 / h
        d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
        d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        em = torch.expm1(-h)
        return ((sigma_t / s0) * sample - (alpha_t * em) * m0 + (alpha_t * (em / h + 1.0)) * d1 -
                (alpha_t * ((em + h) / h**2 - 0.5)) * d2)

    def step(self,
             model_output: torch.Tensor,
             timestep: Union[int, torch.Tensor],
             sample: torch.Tensor,
             generator=None,
             variance_noise: Optional[torch.Tensor] = None,
             return_dict: bool = True):
        """One DPM-Solver++ step. ``generator`` / ``variance_noise`` are accepted as in the real signature
        (used only by the SDE variants, which the stand-in does not implement)."""
        if self.num_inference_steps is None:
            raise ValueError("Number of inference steps is 'None', you need to run 'set_timesteps' after "
                             "creating the scheduler")
        if self.step_index is None:
            self._init_step_index(timestep)
        cfg = self.config
        n = len(self.timesteps)
        lower_order_final = (self.step_index == n - 1) and (
            cfg.euler_at_final or (cfg.lower_order_final and n < 15) or cfg.final_sigmas_type == "zero")
        lower_order_second = (self.step_index == n - 2) and cfg.lower_order_final and n < 15

        x0 = self.convert_model_output(model_output, sample=sample)
        self._shift_in(self.model_outputs, x0)

        sample = sample.to(torch.float32)  # upcast, as the real one does
        if cfg.solver_order == 1 or self.lower_order_nums < 1 or lower_order_final:
            prev_sample = self._first_order(x0, sample)
        elif cfg.solver_order == 2 or self.lower_order_nums < 2 or lower_order_second:
            prev_sample = self._second_order(sample)
        else:
            prev_sample = self._third_order(sample)

        if self.lower_order_nums < cfg.solver_order:
            self.lower_order_nums += 1
        prev_sample = prev_sample.to(x0.dtype)
        self._step_index += 1

        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)
