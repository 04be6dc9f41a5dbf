"""Stand-in for the original Wan2.2 repository (github.com/Wan-Video/Wan2.2), for CPU tests.

Same package layout and call structure as the real ``wan`` package; tiny random-weight modules, a fake
text encoder and a fake VAE.  See ../README.md for what matches the real repository and what does not.
"""
from . import configs, distributed, modules
from .image2video import WanI2V
from .text2video import WanT2V
from .textimage2video import WanTI2V

__all__ = ['WanI2V', 'WanT2V', 'WanTI2V']
