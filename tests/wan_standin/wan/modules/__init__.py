from .model import WanModel
from .t5 import T5EncoderModel
from .vae2_1 import Wan2_1_VAE
from .vae2_2 import Wan2_2_VAE

__all__ = ['Wan2_1_VAE', 'Wan2_2_VAE', 'WanModel', 'T5EncoderModel']
