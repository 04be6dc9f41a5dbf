"""Fake stand-in for wan/modules/vae2_2.py (Wan2.2 VAE: 48 latent channels, stride 4x16x16)."""
import torch

from ._fake_vae import FakeVAEWrapper

__all__ = ['Wan2_2_VAE']


class Wan2_2_VAE(FakeVAEWrapper):
    spatial_stride = 16

    def __init__(self, z_dim=48, c_dim=160, vae_pth=None, dim_mult=[1, 2, 4, 4],
                 temperal_downsample=[False, True, True], dtype=torch.float, device='cpu'):
        super().__init__(z_dim=z_dim, vae_pth=vae_pth, dtype=dtype, device=device)
