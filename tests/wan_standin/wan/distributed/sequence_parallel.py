# Stand-in: the real module replaces the DiT's forward / self-attention forward (Ulysses sequence
# parallelism) on the instance; here both are placeholders that are never installed.


def sp_attn_forward(self, *args, **kwargs):
    raise NotImplementedError("the wan stand-in does not implement sequence parallelism")


def sp_dit_forward(self, *args, **kwargs):
    raise NotImplementedError("the wan stand-in does not implement sequence parallelism")
