"""Behaviour shared by the two flow-matching multistep schedulers of the stand-in.

Flow matching: x_t = (1 - sigma) * x0 + sigma * noise, alpha_t = 1 - sigma_t; the model predicts
v = noise - x0, so x0_pred = sample - sigma_t * v (``convert_model_output``).
"""
import math

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin


def shift_sigmas(sigmas, shift):
    return shift * sigmas / (1 + (shift - 1) * sigmas)


class FlowMultistepBase(SchedulerMixin, ConfigMixin):
    order = 1

    def _init_train_schedule(self):
        cfg = self.config
        if cfg.prediction_type != 'flow_prediction':
            raise ValueError(f"prediction_type must be 'flow_prediction', got {cfg.prediction_type!r}")
        if cfg.final_sigmas_type != 'zero':
            # the real schedulers reference a missing alphas_cumprod for 'sigma_min'
            raise NotImplementedError("the wan stand-in supports final_sigmas_type='zero' only")
        n = cfg.num_train_timesteps
        # training grid sigma = 0.999 .. 0 (1 - linspace(1/n, 1, n)), shifted unless shifting is dynamic
        sigmas = torch.from_numpy(1.0 - np.linspace(1, 1 / n, n)[::-1].copy()).to(torch.float32)
        if not cfg.use_dynamic_shifting:
            sigmas = shift_sigmas(sigmas, cfg.shift)
        self.sigmas = sigmas.to('cpu')
        self.timesteps = sigmas * n
        self.num_inference_steps = None
        self.model_outputs = [None] * cfg.solver_order
        self.lower_order_nums = 0
        self._step_index = None
        self._begin_index = None
        self.sigma_min = self.sigmas[-1].item()
        self.sigma_max = self.sigmas[0].item()

    @property
    def step_index(self):
        """Index into ``sigmas`` of the step in progress; advances by one at the end of ``step``."""
        return self._step_index

    @property
    def begin_index(self):
        return self._begin_index

    def set_begin_index(self, begin_index=0):
        self._begin_index = begin_index

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None, shift=None):
        cfg = self.config
        if cfg.use_dynamic_shifting and mu is None:
            raise ValueError("you have to pass a value for `mu` when `use_dynamic_shifting` is set to be `True`")
        if sigmas is None:
            sigmas = np.linspace(self.sigma_max, self.sigma_min, num_inference_steps + 1).copy()[:-1]
        sigmas = np.asarray(sigmas)
        if cfg.use_dynamic_shifting:
            sigmas = self.time_shift(mu, 1.0, sigmas)
        else:
            sigmas = shift_sigmas(sigmas, cfg.shift if shift is None else shift)
        timesteps = sigmas * cfg.num_train_timesteps
        sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)  # final sigma: 'zero'
        self.sigmas = torch.from_numpy(sigmas).to('cpu')  # kept on the CPU, as in the real schedulers
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(timesteps)
        self.model_outputs = [None] * cfg.solver_order
        self.lower_order_nums = 0
        self._step_index = None
        self._begin_index = None
        self._reset_extra_state(device)

    def _reset_extra_state(self, device):
        pass

    def time_shift(self, mu, sigma, t):
        return math.exp(mu) / (math.exp(mu) + (1 / t - 1)**sigma)

    def _sigma_to_t(self, sigma):
        return sigma * self.config.num_train_timesteps

    def _sigma_to_alpha_sigma_t(self, sigma):
        return 1 - sigma, sigma

    def _lambda(self, sigma):
        alpha_t, sigma_t = self._sigma_to_alpha_sigma_t(sigma)
        return torch.log(alpha_t) - torch.log(sigma_t)

    def convert_model_output(self, model_output, *args, sample=None, **kwargs):
        """Data prediction from the flow (velocity) prediction: x0 = sample - sigma_t * v."""
        if sample is None:
            if len(args) > 1:
                sample = args[1]
            else:
                raise ValueError("missing `sample` as a required keyword argument")
        sigma_t = self.sigmas[self.step_index]
        return sample - sigma_t * model_output

    def index_for_timestep(self, timestep, schedule_timesteps=None):
        if schedule_timesteps is None:
            schedule_timesteps = self.timesteps
        indices = (schedule_timesteps == timestep).nonzero()
        # with duplicated timesteps the first step takes the second match, as in the real schedulers
        return indices[1 if len(indices) > 1 else 0].item()

    def _init_step_index(self, timestep):
        if self.begin_index is None:
            if isinstance(timestep, torch.Tensor):
                timestep = timestep.to(self.timesteps.device)
            self._step_index = self.index_for_timestep(timestep)
        else:
            self._step_index = self._begin_index

    def _shift_in(self, lst, item):
        # in place, like the real schedulers (a reference to the list sees the update)
        for i in range(len(lst) - 1):
            lst[i] = lst[i + 1]
        lst[-1] = item

    def scale_model_input(self, sample, *args, **kwargs):
        return sample

    def add_noise(self, original_samples, noise, timesteps):
        sigmas = self.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)
        schedule_timesteps = self.timesteps.to(original_samples.device)
        timesteps = timesteps.to(original_samples.device)
        if self.begin_index is None:
            step_indices = [self.index_for_timestep(t, schedule_timesteps) for t in timesteps]
        elif self.step_index is not None:
            step_indices = [self.step_index] * timesteps.shape[0]
        else:
            step_indices = [self.begin_index] * timesteps.shape[0]
        sigma = sigmas[step_indices].flatten()
        while len(sigma.shape) < len(original_samples.shape):
            sigma = sigma.unsqueeze(-1)
        alpha_t, sigma_t = self._sigma_to_alpha_sigma_t(sigma)
        return alpha_t * original_samples + sigma_t * noise

    def __len__(self):
        return self.config.num_train_timesteps
