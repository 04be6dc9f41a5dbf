import torch

from ._easydict import EasyDict

# Same fields and values as the real wan/configs/shared_config.py, except sample_neg_prompt (the real one
# is a long Chinese negative prompt; any string serves here).
wan_shared_cfg = EasyDict()

# t5
wan_shared_cfg.t5_model = 'umt5_xxl'
wan_shared_cfg.t5_dtype = torch.bfloat16
wan_shared_cfg.text_len = 512

# transformer
wan_shared_cfg.param_dtype = torch.bfloat16

# inference
wan_shared_cfg.num_train_timesteps = 1000
wan_shared_cfg.sample_fps = 16
wan_shared_cfg.sample_neg_prompt = 'oversaturated, overexposed, static, blurry, low quality, worst quality'
wan_shared_cfg.frame_num = 81
