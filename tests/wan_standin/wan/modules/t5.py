"""Fake stand-in for wan/modules/t5.py's ``T5EncoderModel`` (umT5-XXL encoder).

Same call convention: ``encoder(texts, device)`` returns a list with one [L_i, text_dim] tensor per text,
L_i being the prompt's token count including the end token (the real one trims the padded encoder output
to the attention mask length). Tokens are whitespace-separated words hashed into a fixed vocabulary, and
the "encoder" is a fixed random embedding plus a little mixing between neighbouring tokens, so the same
prompt always gives the same context and prompts sharing words share rows.

The real constructor's default ``device=torch.cuda.current_device()`` is evaluated at import and fails
on a CPU-only torch; the default here is the CPU.
"""
import zlib

import torch
import torch.nn as nn

__all__ = ['T5EncoderModel']

_VOCAB = 4096
_PAD, _EOS = 0, 1


class _WordTokenizer:

    def __init__(self, seq_len):
        self.seq_len = seq_len

    def __call__(self, sequence, return_mask=False, add_special_tokens=True, padding=True, **kwargs):
        if isinstance(sequence, str):
            sequence = [sequence]
        rows = []
        for text in sequence:
            ids = [2 + zlib.crc32(w.encode('utf-8')) % (_VOCAB - 2) for w in text.split()]
            if add_special_tokens:
                ids.append(_EOS)
            rows.append(ids[:self.seq_len])
        width = self.seq_len if padding else max(len(r) for r in rows)
        ids = torch.full((len(rows), width), _PAD, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, :len(r)] = 1
        return (ids, mask) if return_mask else ids


class _FakeEncoder(nn.Module):

    def __init__(self, dim):
        super().__init__()
        self.token_embedding = nn.Embedding(_VOCAB, dim)
        self.mix = nn.Conv1d(dim, dim, kernel_size=3, padding=1)

    def forward(self, ids, mask):
        x = self.token_embedding(ids)
        x = x + 0.5 * torch.tanh(self.mix(x.transpose(1, 2)).transpose(1, 2))
        return x * mask.unsqueeze(-1).to(x.dtype)


class T5EncoderModel:

    def __init__(self,
                 text_len,
                 dtype=torch.bfloat16,
                 device=torch.device('cpu'),
                 checkpoint_path=None,
                 tokenizer_path=None,
                 shard_fn=None,
                 text_dim=4096,
                 seed=1234):
        # checkpoint_path / tokenizer_path are accepted and ignored: no weights are read.
        self.text_len = text_len
        self.dtype = dtype
        self.device = device
        self.checkpoint_path = checkpoint_path
        self.tokenizer_path = tokenizer_path
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _FakeEncoder(text_dim)
        self.model = model.eval().requires_grad_(False).to(dtype=dtype, device=device)
        if shard_fn is not None:
            self.model = shard_fn(self.model, sync_module_states=False)
        self.tokenizer = _WordTokenizer(seq_len=text_len)

    def __call__(self, texts, device):
        ids, mask = self.tokenizer(texts, return_mask=True, add_special_tokens=True)
        ids = ids.to(device)
        mask = mask.to(device)
        seq_lens = mask.gt(0).sum(dim=1).long()
        context = self.model(ids, mask)
        return [u[:v] for u, v in zip(context, seq_lens)]
