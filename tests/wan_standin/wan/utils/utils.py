"""``masks_like`` from wan/utils/utils.py (own minimal version)."""
import torch


def masks_like(tensor, zero=False, generator=None, p=0.2):
    """Two lists of all-ones masks shaped like the tensors in ``tensor``; with ``zero`` the first latent
    frame is 0 in both (the TI2V image-conditioned frame). ``generator``/``p`` (random partial masking in
    the real one) are not implemented."""
    assert isinstance(tensor, list)
    out1 = [torch.ones(u.shape, dtype=u.dtype, device=u.device) for u in tensor]
    out2 = [torch.ones(u.shape, dtype=u.dtype, device=u.device) for u in tensor]
    if zero:
        if generator is not None:
            raise NotImplementedError("the wan stand-in does not implement random masking")
        for u, v in zip(out1, out2):
            u[:, 0] = 0
            v[:, 0] = 0
    return out1, out2

