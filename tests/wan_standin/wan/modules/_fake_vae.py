"""Shared fake video VAE for vae2_1.py / vae2_2.py: deterministic, no weights to load.

decode: latent [1, z_dim, T, h, w] -> video [1, 3, 1 + 4*(T-1), h*s, w*s] (s = spatial stride): a fixed
random 1x1x1 projection to RGB, the first latent frame kept once and every later one repeated 4 times
(the causal 4x temporal compression of the real VAEs), nearest-neighbour spatial upsampling, then a
fixed 3x3 spatial blur so neighbouring pixels are correlated. encode is the rough inverse (average
pooling and a projection back to z_dim).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class FakeVideoVAE(nn.Module):

    def __init__(self, z_dim, spatial_stride, temporal_stride=4, seed=4321):
        super().__init__()
        self.z_dim = z_dim
        self.spatial_stride = spatial_stride
        self.temporal_stride = temporal_stride
        g = torch.Generator().manual_seed(seed)
        self.to_rgb = nn.Parameter(torch.randn(3, z_dim, generator=g) / z_dim**0.5, requires_grad=False)
        self.from_rgb = nn.Parameter(torch.randn(z_dim, 3, generator=g) / 3**0.5, requires_grad=False)

    def decode(self, z, scale):
        z = z / scale[1].view(1, self.z_dim, 1, 1, 1) + scale[0].view(1, self.z_dim, 1, 1, 1)
        x = torch.einsum('rc,bcthw->brthw', self.to_rgb.to(z.dtype), z)
        x = torch.cat([x[:, :, :1], x[:, :, 1:].repeat_interleave(self.temporal_stride, dim=2)], dim=2)
        b, c, t, h, w = x.shape
        x = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        x = F.interpolate(x, scale_factor=self.spatial_stride, mode='nearest')
        x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode='replicate'), 3, stride=1)
        return torch.tanh(x.reshape(b, t, c, h * self.spatial_stride, w * self.spatial_stride).permute(0, 2, 1, 3, 4))

    def encode(self, x, scale):
        x = torch.cat([x[:, :, :1], x[:, :, 1::self.temporal_stride]], dim=2) if x.shape[2] > 1 else x
        b, c, t, h, w = x.shape
        x = F.avg_pool2d(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w), self.spatial_stride)
        x = x.reshape(b, t, c, h // self.spatial_stride, w // self.spatial_stride).permute(0, 2, 1, 3, 4)
        mu = torch.einsum('zc,bcthw->bzthw', self.from_rgb.to(x.dtype), x)
        return (mu - scale[0].view(1, self.z_dim, 1, 1, 1)) * scale[1].view(1, self.z_dim, 1, 1, 1)


class FakeVAEWrapper:
    """Interface of the real Wan2_1_VAE / Wan2_2_VAE wrappers: ``.model.z_dim``, ``encode(videos)`` and
    ``decode(zs)`` on lists of unbatched tensors, output clamped to [-1, 1] and returned as float32."""

    spatial_stride = 8

    def __init__(self, z_dim, vae_pth=None, dtype=torch.float, device='cpu'):
        # vae_pth is accepted and ignored: no weights are read.
        self.dtype = dtype
        self.device = device
        self.mean = torch.zeros(z_dim, dtype=dtype, device=device)
        self.std = torch.ones(z_dim, dtype=dtype, device=device)
        self.scale = [self.mean, 1.0 / self.std]
        self.model = FakeVideoVAE(z_dim, self.spatial_stride).eval().requires_grad_(False).to(device)

    def encode(self, videos):
        return [self.model.encode(u.unsqueeze(0).to(self.dtype), self.scale).float().squeeze(0) for u in videos]

    def decode(self, zs):
        return [self.model.decode(u.unsqueeze(0).to(self.dtype), self.scale).float().clamp_(-1, 1).squeeze(0)
                for u in zs]
