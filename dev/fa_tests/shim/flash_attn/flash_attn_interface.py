"""FlashAttention's forward entry points through qattn (Python binding, ctypes): CPU tensors on the
CPU backend, CUDA tensors on the CUDA backend.

Forward only. Every feature maps to one qattn call:
  flash_attn_func / _kvpacked / _qkvpacked        -> qattn.attention (bshd)
  flash_attn_varlen_func / _kvpacked / _qkvpacked -> qattn.attention with cu_seqlens_q/k
  flash_attn_varlen_func with block_table         -> qattn.attention_with_kvcache, one call per
                                                     sequence (its queries are not varlen yet)
  flash_attn_with_kvcache                         -> qattn.attention_with_kvcache
Like FlashAttention's own interface, a head_dim that is not a multiple of 8 is zero-padded to the
next multiple (the scale stays 1/sqrt(original head_dim)) and the output sliced back.

What qattn does not have raises Unsupported (a NotImplementedError that the runner's conftest turns
into a skip with this message): dropout_p > 0, the attention probabilities S_dmask (FlashAttention
returns them only with dropout), backward (the outputs carry no autograd graph), cache_batch_idx,
cache_leftpad / leftpad_k. `deterministic` selects FlashAttention's deterministic *backward*; the
forward does not depend on it (qattn's forward is deterministic), so it is accepted. `num_splits`
is FlashAttention's split-KV knob; qattn chooses its own split, so 0 and 1 are accepted and > 1 is
refused on the paged varlen path (as FlashAttention does there).
"""
import os

import torch
import torch.nn.functional as F

import qattn

USE_TRITON_ROCM = False
_THREADS = int(os.environ.get("FA_QATTN_THREADS", "0")) or None


class Unsupported(NotImplementedError):
    """A FlashAttention feature qattn lacks; the runner reports it as a skip with this reason."""


def _get_block_size_n(device, head_dim, is_dropout, is_causal):
    # Only used to decode S_dmask (dropout), which qattn does not produce.
    raise Unsupported("S_dmask block layout (dropout): qattn has no dropout")


def _check(dropout_p, return_attn_probs=False, leftpad=None, batch_idx=None):
    if dropout_p and dropout_p > 0.0:
        raise Unsupported("dropout_p > 0: qattn has no dropout (inference forward)")
    if leftpad is not None:
        raise Unsupported("cache_leftpad / leftpad_k: qattn has no left padding of the cache")
    if batch_idx is not None:
        raise Unsupported("cache_batch_idx: qattn has no cache batch indirection")


def _window(window_size):
    w = [int(x) for x in (window_size.tolist() if isinstance(window_size, torch.Tensor) else window_size)]
    if len(w) != 2:
        raise ValueError("window_size must be (left, right)")
    return None if w == [-1, -1] else (w[0], w[1])


def _pad8(x):
    d = x.shape[-1]
    return x if d % 8 == 0 else F.pad(x, [0, 8 - d % 8])


def _slopes(alibi_slopes):
    if alibi_slopes is None:
        return None
    return alibi_slopes.detach().to(torch.float32).contiguous()


def _attention(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, return_lse,
               cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None):
    _check(dropout_p)
    d = q.shape[-1]
    scale = softmax_scale if softmax_scale is not None else d ** -0.5
    q, k, v = (_pad8(x.detach()) for x in (q, k, v))
    kw = {}
    if cu_seqlens_q is not None:
        kw = dict(cu_seqlens_q=cu_seqlens_q.to(torch.int32), cu_seqlens_k=cu_seqlens_k.to(torch.int32))
    out, lse = qattn.attention(q, k, v, causal=bool(causal), scale=float(scale), window=_window(window_size),
                               softcap=float(softcap or 0.0), alibi_slopes=_slopes(alibi_slopes), return_lse=True,
                               threads=_THREADS, **kw)
    out = out[..., :d]
    return out, lse


def _ret(out, lse, return_attn_probs):
    # FlashAttention returns S_dmask only with dropout (return_softmax = return_attn_probs and dropout_p > 0).
    return (out, lse, None) if return_attn_probs else out


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    alibi_slopes=None, deterministic=False, return_attn_probs=False):
    out, lse = _attention(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, return_attn_probs)
    return _ret(out, lse, return_attn_probs)


def flash_attn_kvpacked_func(q, kv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                             alibi_slopes=None, deterministic=False, return_attn_probs=False):
    return flash_attn_func(q, kv[:, :, 0], kv[:, :, 1], dropout_p, softmax_scale, causal, window_size, softcap,
                           alibi_slopes, deterministic, return_attn_probs)


def flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                              alibi_slopes=None, deterministic=False, return_attn_probs=False):
    return flash_attn_func(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], dropout_p, softmax_scale, causal, window_size,
                           softcap, alibi_slopes, deterministic, return_attn_probs)


def _varlen_paged(q, k_cache, v_cache, cu_seqlens_q, cu_seqlens_k, seqused_k, block_table, dropout_p, softmax_scale,
                  causal, window_size, softcap, alibi_slopes):
    """Paged varlen forward: one qattn.attention_with_kvcache call per sequence (qattn's paged forward
    takes [B, Lq, H, D] queries; varlen queries are not in it yet). Keys of sequence b: the first
    seqused_k[b] (else cu_seqlens_k[b+1] - cu_seqlens_k[b]) tokens of its block_table row."""
    _check(dropout_p)
    d = q.shape[-1]
    scale = softmax_scale if softmax_scale is not None else d ** -0.5
    if d % 8:  # FlashAttention's padding rule, on copies (this path only reads the caches)
        q, k_cache, v_cache = (_pad8(x.detach()) for x in (q, k_cache, v_cache))
    cq = cu_seqlens_q.tolist()
    lk = seqused_k.tolist() if seqused_k is not None else [b - a for a, b in zip(cu_seqlens_k.tolist()[:-1], cu_seqlens_k.tolist()[1:])]
    B, H = len(cq) - 1, q.shape[1]
    out = torch.empty(q.shape[:-1] + (d,), dtype=q.dtype, device=q.device)
    lse = torch.full((H, q.shape[0]), float("-inf"), dtype=torch.float32, device=q.device)
    slopes = _slopes(alibi_slopes)
    for b in range(B):
        qb = q.detach()[cq[b]:cq[b + 1]].unsqueeze(0)
        if qb.shape[1] == 0:
            continue
        sb = None if slopes is None else (slopes if slopes.dim() == 1 else slopes[b:b + 1])
        ob, lb = qattn.attention_with_kvcache(qb, k_cache, v_cache, cache_seqlens=torch.tensor([lk[b]], dtype=torch.int32, device=q.device),
                                              block_table=block_table[b:b + 1], softmax_scale=float(scale),
                                              causal=bool(causal), window_size=_window(window_size) or (-1, -1),
                                              softcap=float(softcap or 0.0), alibi_slopes=sb, return_lse=True,
                                              threads=_THREADS)
        out[cq[b]:cq[b + 1]] = ob[0][..., :out.shape[-1]]
        lse[:, cq[b]:cq[b + 1]] = lb[0]
    return out, lse


def _flash_attn_varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale,
                               causal, window_size_left=-1, window_size_right=-1, softcap=0.0, alibi_slopes=None,
                               return_softmax=False, block_table=None, leftpad_k=None, seqused_k=None, zero_tensors=False,
                               num_splits=0):
    """FlashAttention's internal varlen forward: (out, softmax_lse, S_dmask, rng_state)."""
    _check(dropout_p, leftpad=leftpad_k)
    if return_softmax:
        raise Unsupported("return_softmax (S_dmask): qattn does not return attention probabilities")
    win = (window_size_left, window_size_right)
    if block_table is not None:
        if num_splits > 1:
            raise RuntimeError("num_splits > 1 is not supported with a paged KV cache (qattn chooses its own split)")
        out, lse = _varlen_paged(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, block_table, dropout_p, softmax_scale,
                                 causal, win, softcap, alibi_slopes)
    else:
        if seqused_k is not None:
            raise Unsupported("seqused_k without block_table")
        out, lse = _attention(q, k, v, dropout_p, softmax_scale, causal, win, softcap, alibi_slopes, True,
                              cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    return out, lse, None, None


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None):
    if block_table is not None:
        out, lse = _varlen_paged(q, k, v, cu_seqlens_q, cu_seqlens_k, None, block_table, dropout_p, softmax_scale,
                                 causal, window_size, softcap, alibi_slopes)
    else:
        out, lse = _attention(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                              return_attn_probs, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    return _ret(out, lse, return_attn_probs)


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                                    softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                                    alibi_slopes=None, deterministic=False, return_attn_probs=False):
    return flash_attn_varlen_func(q, kv[:, 0], kv[:, 1], cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                  dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                                  return_attn_probs)


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None, causal=False,
                                     window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                                     return_attn_probs=False):
    return flash_attn_varlen_func(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                                  dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                                  return_attn_probs)


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None, cache_seqlens=None,
                            cache_batch_idx=None, cache_leftpad=None, block_table=None, softmax_scale=None, causal=False,
                            window_size=(-1, -1), softcap=0.0, rotary_interleaved=True, alibi_slopes=None, num_splits=0,
                            return_softmax_lse=False):
    _check(0.0, leftpad=cache_leftpad, batch_idx=cache_batch_idx)
    d = q.shape[-1]
    scale = softmax_scale if softmax_scale is not None else d ** -0.5
    kc, vc = k_cache, v_cache
    if d % 8:
        # FlashAttention's padding rule; the caches are the caller's and are written in place, so
        # pad copies and write the first d channels back after the call.
        q, k, v, kc, vc = (None if x is None else _pad8(x) for x in (q, k, v, k_cache, v_cache))
    if isinstance(cache_seqlens, torch.Tensor):
        cache_seqlens = cache_seqlens.to(torch.int32)
    try:
        res = qattn.attention_with_kvcache(q, kc, vc, k, v, rotary_cos=rotary_cos, rotary_sin=rotary_sin,
                                           cache_seqlens=cache_seqlens, block_table=block_table,
                                           softmax_scale=float(scale), causal=bool(causal),
                                           window_size=_window(window_size) or (-1, -1), rotary_interleaved=rotary_interleaved,
                                           return_lse=return_softmax_lse, threads=_THREADS, softcap=float(softcap or 0.0),
                                           alibi_slopes=_slopes(alibi_slopes))
    except qattn.QattnUnsupportedError:
        raise
    except qattn.QattnError as e:
        raise RuntimeError(str(e)) from e
    if kc is not k_cache:
        k_cache.copy_(kc[..., :d])
        v_cache.copy_(vc[..., :d])
    if return_softmax_lse:
        return res[0][..., :d], res[1]
    return res[..., :d]
