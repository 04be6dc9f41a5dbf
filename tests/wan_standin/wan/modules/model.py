"""Tiny stand-in for wan/modules/model.py: same constructor keywords, forward signature, attribute names
and output convention as the real ``WanModel``; a small real transformer underneath.

Differences from the real one (deliberate):
* attention is ``torch.nn.functional.scaled_dot_product_attention`` instead of ``flash_attention``
  (which asserts CUDA);
* no ``torch.amp.autocast('cuda', dtype=torch.float32)`` regions (everything here runs in the dtype of
  the inputs / parameters);
* ``init_weights`` gives the output head random weights (the real one zero-initialises
  ``head.head.weight``, which makes a random-weight model predict exactly 0 everywhere), and the text
  and time embeddings xavier weights instead of N(0, 0.02), so prompt and timestep visibly matter;
* RoPE is applied with real-valued cos/sin instead of complex multiplication (same frequency split).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

__all__ = ['WanModel']


def sinusoidal_embedding_1d(dim, position):
    assert dim % 2 == 0
    half = dim // 2
    position = position.type(torch.float64)
    freqs = torch.pow(10000, -torch.arange(half).to(position).div(half))
    angles = torch.outer(position, freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def rope_params(max_seq_len, dim, theta=10000):
    """Rotation angles [max_seq_len, dim // 2] (the real one returns them as unit complex numbers)."""
    assert dim % 2 == 0
    inv = 1.0 / torch.pow(theta, torch.arange(0, dim, 2).to(torch.float64).div(dim))
    return torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv)


def rope_apply(x, grid_sizes, freqs):
    """Rotate channel pairs of x [B, L, n, d] by the 3-D (frame, row, column) position of each token.

    The pair split (d/2 - 2*(d/2 // 3) temporal, d/2 // 3 for each spatial axis) is the real one; tokens
    past f*h*w (padding up to seq_len) are left as they are, as in the real model.
    """
    n, c = x.size(2), x.size(3) // 2
    parts = freqs.split([c - 2 * (c // 3), c // 3, c // 3], dim=1)
    out = []
    for i, (f, h, w) in enumerate(grid_sizes.tolist()):
        seq = f * h * w
        ang = torch.cat([
            parts[0][:f].view(f, 1, 1, -1).expand(f, h, w, -1),
            parts[1][:h].view(1, h, 1, -1).expand(f, h, w, -1),
            parts[2][:w].view(1, 1, w, -1).expand(f, h, w, -1),
        ], dim=-1).reshape(seq, 1, c).to(x.device)
        cos, sin = torch.cos(ang), torch.sin(ang)
        xv = x[i, :seq].to(torch.float64).reshape(seq, n, c, 2)
        re, im = xv[..., 0], xv[..., 1]
        rot = torch.stack([re * cos - im * sin, re * sin + im * cos], dim=-1).flatten(2)
        out.append(torch.cat([rot.to(x.dtype), x[i, seq:]]))
    return torch.stack(out).float()


class WanRMSNorm(nn.Module):

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class WanLayerNorm(nn.LayerNorm):

    def __init__(self, dim, eps=1e-6, elementwise_affine=False):
        super().__init__(dim, elementwise_affine=elementwise_affine, eps=eps)

    def forward(self, x):
        return super().forward(x.float()).type_as(x)


class WanSelfAttention(nn.Module):

    def __init__(self, dim, num_heads, window_size=(-1, -1), qk_norm=True, eps=1e-6):
        assert dim % num_heads == 0
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_size = window_size
        self.qk_norm = qk_norm
        self.eps = eps
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = WanRMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        self.norm_k = WanRMSNorm(dim, eps=eps) if qk_norm else nn.Identity()

    def forward(self, x, seq_lens, grid_sizes, freqs):
        b, s, n, d = *x.shape[:2], self.num_heads, self.head_dim
        q = rope_apply(self.norm_q(self.q(x)).view(b, s, n, d), grid_sizes, freqs).to(x.dtype)
        k = rope_apply(self.norm_k(self.k(x)).view(b, s, n, d), grid_sizes, freqs).to(x.dtype)
        v = self.v(x).view(b, s, n, d)
        # keys past each sample's true length are masked (flash_attention's k_lens in the real model)
        valid = torch.arange(s, device=x.device)[None, :] < seq_lens.to(x.device)[:, None]
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=valid[:, None, None, :])
        return self.o(y.transpose(1, 2).flatten(2))


class WanCrossAttention(WanSelfAttention):

    def forward(self, x, context, context_lens):
        b, n, d = x.size(0), self.num_heads, self.head_dim
        q = self.norm_q(self.q(x)).view(b, -1, n, d)
        k = self.norm_k(self.k(context)).view(b, -1, n, d)
        v = self.v(context).view(b, -1, n, d)
        mask = None
        if context_lens is not None:
            mask = (torch.arange(k.size(1), device=x.device)[None, :] <
                    context_lens.to(x.device)[:, None])[:, None, None, :]
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        return self.o(y.transpose(1, 2).flatten(2))


class WanAttentionBlock(nn.Module):

    def __init__(self, dim, ffn_dim, num_heads, window_size=(-1, -1), qk_norm=True,
                 cross_attn_norm=False, eps=1e-6):
        super().__init__()
        self.dim = dim
        self.ffn_dim = ffn_dim
        self.num_heads = num_heads
        self.window_size = window_size
        self.qk_norm = qk_norm
        self.cross_attn_norm = cross_attn_norm
        self.eps = eps
        self.norm1 = WanLayerNorm(dim, eps)
        self.self_attn = WanSelfAttention(dim, num_heads, window_size, qk_norm, eps)
        self.norm3 = WanLayerNorm(dim, eps, elementwise_affine=True) if cross_attn_norm else nn.Identity()
        self.cross_attn = WanCrossAttention(dim, num_heads, (-1, -1), qk_norm, eps)
        self.norm2 = WanLayerNorm(dim, eps)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate='tanh'), nn.Linear(ffn_dim, dim))
        # adaLN modulation: shift/scale/gate for self-attention, then for the FFN
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x, e, seq_lens, grid_sizes, freqs, context, context_lens):
        """x [B, L, C]; e [B, L, 6, C] (per-token time modulation)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = [
            u.squeeze(2) for u in (self.modulation.unsqueeze(0) + e).chunk(6, dim=2)]
        y = self.self_attn(self.norm1(x).float() * (1 + scale1) + shift1, seq_lens, grid_sizes, freqs)
        x = x + y * gate1
        x = x + self.cross_attn(self.norm3(x), context, context_lens)
        y = self.ffn(self.norm2(x).float() * (1 + scale2) + shift2)
        return x + y * gate2


class Head(nn.Module):

    def __init__(self, dim, out_dim, patch_size, eps=1e-6):
        super().__init__()
        self.dim = dim
        self.out_dim = out_dim
        self.patch_size = patch_size
        self.eps = eps
        self.norm = WanLayerNorm(dim, eps)
        self.head = nn.Linear(dim, math.prod(patch_size) * out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x, e):
        """x [B, L, C]; e [B, L, C]."""
        shift, scale = [u.squeeze(2) for u in (self.modulation.unsqueeze(0) + e.unsqueeze(2)).chunk(2, dim=2)]
        return self.head(self.norm(x) * (1 + scale) + shift)


class WanModel(ModelMixin, ConfigMixin):
    r"""Wan diffusion backbone (tiny stand-in). Same ``__init__`` keywords and defaults as the real one."""

    ignore_for_config = ['patch_size', 'cross_attn_norm', 'qk_norm', 'text_dim', 'window_size']
    _no_split_modules = ['WanAttentionBlock']

    @register_to_config
    def __init__(self,
                 model_type='t2v',
                 patch_size=(1, 2, 2),
                 text_len=512,
                 in_dim=16,
                 dim=2048,
                 ffn_dim=8192,
                 freq_dim=256,
                 text_dim=4096,
                 out_dim=16,
                 num_heads=16,
                 num_layers=32,
                 window_size=(-1, -1),
                 qk_norm=True,
                 cross_attn_norm=True,
                 eps=1e-6):
        super().__init__()
        assert model_type in ['t2v', 'i2v', 'ti2v', 's2v']
        self.model_type = model_type
        self.patch_size = tuple(patch_size)
        self.text_len = text_len
        self.in_dim = in_dim
        self.dim = dim
        self.ffn_dim = ffn_dim
        self.freq_dim = freq_dim
        self.text_dim = text_dim
        self.out_dim = out_dim
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.window_size = window_size
        self.qk_norm = qk_norm
        self.cross_attn_norm = cross_attn_norm
        self.eps = eps

        self.patch_embedding = nn.Conv3d(in_dim, dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate='tanh'),
                                            nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks = nn.ModuleList([
            WanAttentionBlock(dim, ffn_dim, num_heads, window_size, qk_norm, cross_attn_norm, eps)
            for _ in range(num_layers)
        ])
        self.head = Head(dim, out_dim, self.patch_size, eps)

        # plain attribute, not a buffer (as in the real model): rotation angles per axis
        assert (dim % num_heads) == 0 and (dim // num_heads) % 2 == 0
        d = dim // num_heads
        self.freqs = torch.cat([
            rope_params(1024, d - 4 * (d // 6)),
            rope_params(1024, 2 * (d // 6)),
            rope_params(1024, 2 * (d // 6)),
        ], dim=1)

        self.init_weights()

    @classmethod
    def from_wan_config(cls, config, model_type=None, seed=None):
        """Build a random-weight model from a (tiny) pipeline config; ``seed`` makes the weights reproducible
        without touching the global RNG. The real pipelines call ``WanModel.from_pretrained`` instead."""

        def make():
            return cls(
                model_type=model_type or config.get('model_type', 't2v'),
                patch_size=tuple(config.patch_size),
                text_len=config.text_len,
                in_dim=config.get('in_dim', 16),
                dim=config.dim,
                ffn_dim=config.ffn_dim,
                freq_dim=config.freq_dim,
                text_dim=config.get('text_dim', 4096),
                out_dim=config.get('out_dim', 16),
                num_heads=config.num_heads,
                num_layers=config.num_layers,
                window_size=tuple(config.window_size),
                qk_norm=config.qk_norm,
                cross_attn_norm=config.cross_attn_norm,
                eps=config.eps)

        if seed is None:
            return make()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return make()

    def forward(self, x, t, context, seq_len, y=None):
        r"""
        x: list of [C_in, F, H, W]; t: [B] (or per-token [B, seq_len]); context: list of [L, text_dim];
        seq_len: token count the sequence is padded to; y: i2v conditioning, concatenated on channels.
        Returns a list of float32 [C_out, F, H, W].
        """
        if self.model_type == 'i2v':
            assert y is not None
        device = self.patch_embedding.weight.device
        if y is not None:
            x = [torch.cat([u, v], dim=0) for u, v in zip(x, y)]

        # embeddings
        x = [self.patch_embedding(u.unsqueeze(0)) for u in x]
        grid_sizes = torch.stack([torch.tensor(u.shape[2:], dtype=torch.long) for u in x])
        x = [u.flatten(2).transpose(1, 2) for u in x]
        seq_lens = torch.tensor([u.size(1) for u in x], dtype=torch.long)
        assert seq_lens.max() <= seq_len
        x = torch.cat([torch.cat([u, u.new_zeros(1, seq_len - u.size(1), u.size(2))], dim=1) for u in x])

        # time embeddings, one per token
        if t.dim() == 1:
            t = t.expand(t.size(0), seq_len)
        bt = t.size(0)
        e = self.time_embedding(
            sinusoidal_embedding_1d(self.freq_dim, t.flatten()).unflatten(0, (bt, seq_len)).float())
        e0 = self.time_projection(e).unflatten(2, (6, self.dim))

        # context, zero-padded to text_len (the real model attends to the padding too: context_lens=None)
        context_lens = None
        context = self.text_embedding(
            torch.stack([torch.cat([u, u.new_zeros(self.text_len - u.size(0), u.size(1))]) for u in context]))

        for block in self.blocks:
            x = block(x, e=e0, seq_lens=seq_lens, grid_sizes=grid_sizes, freqs=self.freqs,
                      context=context, context_lens=context_lens)

        x = self.head(x, e)
        x = self.unpatchify(x, grid_sizes)
        return [u.float() for u in x]

    def unpatchify(self, x, grid_sizes):
        c = self.out_dim
        out = []
        for u, v in zip(x, grid_sizes.tolist()):
            u = u[:math.prod(v)].view(*v, *self.patch_size, c)
            u = torch.einsum('fhwpqrc->cfphqwr', u)
            out.append(u.reshape(c, *[i * j for i, j in zip(v, self.patch_size)]))
        return out

    def init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        # DIFFERS from the real init_weights in two places, so that a random-weight model behaves like a
        # trained one in the ways tests care about:
        # * the real one draws text_embedding / time_embedding weights from N(0, 0.02); with random
        #   weights that makes the output nearly independent of the prompt and of t (so classifier-free
        #   guidance would do almost nothing). They keep the xavier init from the loop above here.
        # * the real one zeroes head.head.weight, so a random-weight model would predict exactly 0
        #   everywhere. The head keeps the xavier init here too.
