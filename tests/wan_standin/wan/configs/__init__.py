"""Configs: the real Wan2.2 field names and values, plus tiny variants that build on a CPU in milliseconds."""
import copy

import torch

from ._easydict import EasyDict
from .wan_i2v_A14B import i2v_A14B
from .wan_t2v_A14B import t2v_A14B
from .wan_ti2v_5B import ti2v_5B

WAN_CONFIGS = {
    't2v-A14B': t2v_A14B,
    'i2v-A14B': i2v_A14B,
    'ti2v-5B': ti2v_5B,
}

SIZE_CONFIGS = {
    '720*1280': (720, 1280),
    '1280*720': (1280, 720),
    '480*832': (480, 832),
    '832*480': (832, 480),
    '704*1280': (704, 1280),
    '1280*704': (1280, 704),
}

MAX_AREA_CONFIGS = {k: v[0] * v[1] for k, v in SIZE_CONFIGS.items()}

SUPPORTED_SIZES = {
    't2v-A14B': ('720*1280', '1280*720', '480*832', '832*480'),
    'i2v-A14B': ('720*1280', '1280*720', '480*832', '832*480'),
    'ti2v-5B': ('704*1280', '1280*704'),
}

# Fields the stand-in reads that the real configs do not carry: the real pipelines take in_dim/out_dim
# from the checkpoint's config.json, the VAE latent channels (z_dim) from the VAE class defaults (16 for
# Wan2.1_VAE, 48 for Wan2.2_VAE) and text_dim (4096) from umT5-XXL.
_TINY = dict(
    t5_dtype=torch.float32,
    param_dtype=torch.float32,
    text_len=32,
    text_dim=32,
    dim=32,
    ffn_dim=64,
    freq_dim=32,
    num_heads=2,
    num_layers=2,
    sample_steps=8,
    init_seed=0,
)


def _tiny(base, name, **extra):
    cfg = EasyDict(copy.deepcopy(dict(base)))
    cfg.update(_TINY)
    cfg.update(extra)
    cfg['__name__'] = name
    return cfg


def tiny_t2v_config(**overrides):
    """T2V-A14B layout (two experts, boundary 0.875, shift 12, Wan2.1 VAE 16ch / stride 4x8x8), tiny widths."""
    cfg = _tiny(t2v_A14B, 'Config: Wan T2V A14B (tiny stand-in)', z_dim=16, in_dim=16, out_dim=16,
                model_type='t2v')
    cfg.update(overrides)
    return cfg


def tiny_i2v_config(**overrides):
    """I2V-A14B layout (two experts, boundary 0.9, in_dim 16+20=36), tiny widths."""
    cfg = _tiny(i2v_A14B, 'Config: Wan I2V A14B (tiny stand-in)', z_dim=16, in_dim=36, out_dim=16,
                model_type='i2v')
    cfg.update(overrides)
    return cfg


def tiny_ti2v_config(**overrides):
    """TI2V-5B layout (one expert, Wan2.2 VAE 48ch / stride 4x16x16), tiny widths."""
    cfg = _tiny(ti2v_5B, 'Config: Wan TI2V 5B (tiny stand-in)', z_dim=48, in_dim=48, out_dim=48,
                model_type='ti2v')
    cfg.update(overrides)
    return cfg
