"""Stand-in for wan/utils/fm_solvers_unipc.py: ``FlowUniPCMultistepScheduler`` (UniPC predictor-corrector
in data-prediction form, B(h) variants bh1/bh2, on flow-matching sigmas). Same constructor keywords,
registered config, ``set_timesteps`` and ``step`` signatures as the real class; ``predict_x0=False``,
``solver_p`` and thresholding are not implemented.

Note for observers: when the corrector runs (every step after the first), ``step`` replaces the sample it
was given by the corrected one before the predictor update; the data prediction stored in
``model_outputs[-1]`` is computed from the sample as passed in.
"""
from typing import List, Optional, Union

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput

from ._flow_common import FlowMultistepBase

__all__ = ['FlowUniPCMultistepScheduler']


class FlowUniPCMultistepScheduler(FlowMultistepBase):

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
            predict_x0: bool = True,
            solver_type: str = "bh2",
            lower_order_final: bool = True,
            disable_corrector: List[int] = [],
            solver_p: SchedulerMixin = None,
            timestep_spacing: str = "linspace",
            steps_offset: int = 0,
            final_sigmas_type: Optional[str] = "zero",
    ):
        if solver_type not in ["bh1", "bh2"]:
            if solver_type in ["midpoint", "heun", "logrho"]:
                self.register_to_config(solver_type="bh2")
            else:
                raise NotImplementedError(f"{solver_type} is not implemented for {self.__class__}")
        if not predict_x0 or solver_p is not None or thresholding:
            raise NotImplementedError("the wan stand-in implements predict_x0=True without solver_p or "
                                      "thresholding only")
        self.predict_x0 = predict_x0
        self.disable_corrector = disable_corrector
        self.solver_p = solver_p
        self._init_train_schedule()
        self._reset_extra_state(None)

    def _reset_extra_state(self, device):
        self.timestep_list = [None] * self.config.solver_order
        self.last_sample = None

    def _coefficients(self, h, rks, order):
        """Weights of the B(h) UniPC update for ``order`` terms; rks are the step ratios, last one 1."""
        hh = -h  # data prediction
        h_phi_1 = torch.expm1(hh)
        b_h = hh if self.config.solver_type == "bh1" else torch.expm1(hh)
        rks = torch.tensor(rks)
        rows, rhs = [], []
        g, fact = h_phi_1 / hh - 1, 1
        for k in range(1, order + 1):
            rows.append(torch.pow(rks, k - 1))
            rhs.append(g * fact / b_h)
            fact *= k + 1
            g = g / hh - 1 / fact
        return torch.stack(rows), torch.tensor(rhs), h_phi_1, b_h

    def _differences(self, lam_ref, h, m0, first_index, order):
        """Scaled differences of earlier data predictions against m0 (``model_outputs`` newest last)."""
        rks, d1s = [], []
        for k in range(1, order):
            mk = self.model_outputs[-(k + 1)]
            rk = (self._lambda(self.sigmas[first_index - k]) - lam_ref) / h
            rks.append(rk)
            d1s.append((mk - m0) / rk)
        rks.append(1.0)
        return rks, d1s

    def _predictor(self, sample, order):
        """UniP: sample at sigmas[i] -> sample at sigmas[i + 1]."""
        i = self.step_index
        sigma_t, sigma_s0 = self.sigmas[i + 1], self.sigmas[i]
        alpha_t = 1 - sigma_t
        lam_s0 = self._lambda(sigma_s0)
        h = self._lambda(sigma_t) - lam_s0
        m0 = self.model_outputs[-1]
        rks, d1s = self._differences(lam_s0, h, m0, i, order)
        R, b, h_phi_1, b_h = self._coefficients(h, rks, order)
        x_t = sigma_t / sigma_s0 * sample - alpha_t * h_phi_1 * m0
        if d1s:
            if order == 2:
                rhos = torch.tensor([0.5])
            else:
                rhos = torch.linalg.solve(R[:-1, :-1], b[:-1])
            rhos = rhos.to(sample.device, sample.dtype)
            x_t = x_t - alpha_t * b_h * sum(r * d for r, d in zip(rhos, d1s))
        return x_t.to(sample.dtype)

    def _corrector(self, this_model_output, last_sample, this_sample, order):
        """UniC: refine the sample at sigmas[i] using the new data prediction at sigmas[i]."""
        i = self.step_index
        sigma_t, sigma_s0 = self.sigmas[i], self.sigmas[i - 1]
        alpha_t = 1 - sigma_t
        lam_s0 = self._lambda(sigma_s0)
        h = self._lambda(sigma_t) - lam_s0
        m0 = self.model_outputs[-1]
        rks, d1s = self._differences(lam_s0, h, m0, i - 1, order)
        R, b, h_phi_1, b_h = self._coefficients(h, rks, order)
        if order == 1:
            rhos = torch.tensor([0.5])
        else:
            rhos = torch.linalg.solve(R, b)
        rhos = rhos.to(this_sample.device, last_sample.dtype)
        corr = sum(r * d for r, d in zip(rhos[:-1], d1s)) if d1s else 0
        x_t = sigma_t / sigma_s0 * last_sample - alpha_t * h_phi_1 * m0
        x_t = x_t - alpha_t * b_h * (corr + rhos[-1] * (this_model_output - m0))
        return x_t.to(last_sample.dtype)

    def step(self,
             model_output: torch.Tensor,
             timestep: Union[int, torch.Tensor],
             sample: torch.Tensor,
             return_dict: bool = True,
             generator=None):
        """One UniPC step. ``generator`` is accepted (and unused), as in the real signature."""
        if self.num_inference_steps is None:
            raise ValueError("Number of inference steps is 'None', you need to run 'set_timesteps' after "
                             "creating the scheduler")
        if self.step_index is None:
            self._init_step_index(timestep)
        cfg = self.config

        use_corrector = (self.step_index > 0 and self.step_index - 1 not in self.disable_corrector and
                         self.last_sample is not None)
        x0 = self.convert_model_output(model_output, sample=sample)
        if use_corrector:
            sample = self._corrector(x0, self.last_sample, sample, self.this_order)

        self._shift_in(self.model_outputs, x0)
        self._shift_in(self.timestep_list, timestep)

        if cfg.lower_order_final:
            this_order = min(cfg.solver_order, len(self.timesteps) - self.step_index)
        else:
            this_order = cfg.solver_order
        self.this_order = min(this_order, self.lower_order_nums + 1)  # warm-up
        assert self.this_order > 0

        self.last_sample = sample
        prev_sample = self._predictor(sample, self.this_order)

        if self.lower_order_nums < cfg.solver_order:
            self.lower_order_nums += 1
        self._step_index += 1

        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)
