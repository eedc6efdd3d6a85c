"""A pure-torch stand-in for the `flash_attn` package's entry points, with the same signatures
and semantics (causal, softmax scale, grouped KV heads, variable-length sequences by
`cu_seqlens`), so transformers' real flash-attention dispatch can be tested on a CPU. Installed
as `flash_attn` on sys.path by the test that uses it; never used for training."""

import torch


def _attend(q, k, v, causal: bool, scale: float):
    """One sequence: q (s, h, d), k/v (s, hk, d)."""
    if k.shape[1] != q.shape[1]:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    qh, kh, vh = (x.transpose(0, 1).float() for x in (q, k, v))  # (h, s, d)
    w = qh @ kh.transpose(-1, -2) * scale
    if causal:
        s_q, s_k = w.shape[-2:]
        mask = torch.ones(s_q, s_k, dtype=torch.bool).triu(1 + s_k - s_q)
        w = w.masked_fill(mask, float("-inf"))
    return (w.softmax(-1) @ vh).transpose(0, 1).to(q.dtype)


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **kwargs):
    scale = softmax_scale or q.shape[-1] ** -0.5
    return torch.stack([_attend(q[i], k[i], v[i], causal, scale) for i in range(q.shape[0])])


def flash_attn_varlen_func(
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
    softmax_scale=None, causal=False, **kwargs,
):  # fmt: skip
    scale = softmax_scale or q.shape[-1] ** -0.5
    out = torch.empty_like(q)
    bounds_q, bounds_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for (a, b), (c, d) in zip(zip(bounds_q, bounds_q[1:]), zip(bounds_k, bounds_k[1:])):
        out[a:b] = _attend(q[a:b], k[c:d], v[c:d], causal, scale)
    return out


def flash_attn_with_kvcache(*args, **kwargs):
    raise NotImplementedError("paged decoding is not part of the reference")
