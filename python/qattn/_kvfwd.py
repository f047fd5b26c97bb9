"""qattn.attention_with_kvcache (flash-attn's flash_attn_with_kvcache over caller-owned cache tensors,
qattn_forward_kvcache) and qattn.rotary_apply (qattn_rotary_apply).

The library validates the cache geometry, page ids, sequence lengths, capacity, rotary positions
and overlaps itself; this layer checks what only Python can see (dtypes, shapes, devices, that the
caches are writable views) and converts the small integer and cos/sin tables (copied to the GPU
for CUDA tensors).
"""
import ctypes
import math

import numpy as np

from . import _lib
from ._lib import lib, Params, KVCacheParams
from ._core import _empty_like_kind, _get_context, _int_arg, _is_torch, _lse_output, _set_score_mods, _torch, _wrap

_I32_MAX = 2**31 - 1


def _host_array(name, x, dtype, ndim):
    """A small host table (cache_seqlens, block_table, cos/sin) as a contiguous numpy array of dtype."""
    if _is_torch(x):
        x = x.detach().cpu()
        x = x.float().numpy() if dtype == np.float32 else x.numpy()
    a = np.asarray(x)
    if a.ndim != ndim:
        raise ValueError("%s must have %d dims; got shape %s" % (name, ndim, a.shape))
    if dtype == np.int32:
        if a.size and a.dtype.kind not in "iu":
            raise TypeError("%s must hold integers (int32), got dtype %s" % (name, a.dtype))
        if a.size and (a.min() < -2**31 or a.max() > _I32_MAX):
            raise ValueError("%s has values outside int32" % name)
    return np.ascontiguousarray(a, dtype=dtype)


def _scale_arg(scale):
    if scale is None:
        return 0.0
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating, np.integer)):
        raise TypeError("softmax_scale must be a float or None, got %s" % type(scale).__name__)
    if float(scale) == 0.0 or not math.isfinite(float(scale)):
        raise ValueError("softmax_scale is %r; it must be finite and nonzero (None = 1/sqrt(head_dim))" % (scale,))
    return float(scale)


def attention_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None, cache_seqlens=None,
                           block_table=None, softmax_scale=None, causal=False, window_size=(-1, -1), rotary_interleaved=True,
                           return_lse=False, threads=None, isa=None, softcap=0.0, alibi_slopes=None):
    """flash_attn_with_kvcache: append k, v to the caches *in place* (k rotated), then attend.

    q: [B, Lq, H, D]. k_cache, v_cache: [B, cache_len, HK, D] (contiguous per sequence) or, with
    block_table (int32 [B, max_blocks] page ids), [n_pages, page_size, HK, D] with page_size a
    multiple of 16; any strides with a contiguous last dim (views of a larger buffer work).
    k, v [optional]: [B, seqlen_new, HK, D], written at cache_seqlens[b] .. + seqlen_new - 1.
    cache_seqlens: int or int32 [B], the tokens already in the cache (not advanced here: add
    seqlen_new yourself); None = the whole cache_len (contiguous cache, no k/v only).
    rotary_cos, rotary_sin [optional, with k/v]: [rotary_len, rotary_dim / 2] (converted to float32);
    keys rotated at positions cache_seqlens[b] + j, queries at cache_seqlens[b] + i when causal or
    windowed, else all at cache_seqlens[b]; rotary_interleaved: GPT-J pairs (True) or GPT-NeoX halves.
    window_size: (left, right), -1 unbounded, relative to the end of each sequence's keys
    (bottom-right aligned). numpy (float32/float16) or CPU torch (also bfloat16), one dtype for q,
    caches, k and v; or torch float16/bfloat16 tensors on one GPU, run by the CUDA backend on the
    current stream (the tables may be host or device tensors; the call reads them back once and
    waits for the stream). Returns o like q (and the float32 LSE [B, H, Lq] with return_lse).
    softcap, alibi_slopes (float32 [H] or [B, H]): as in qattn.attention, the ALiBi distance of query
    i and key j being |i + Lk_b - Lq - j| with Lk_b = cache_seqlens[b] + seqlen_new.
    """
    _lib.require("qattn_forward_kvcache", "qattn.attention_with_kvcache")
    qt = _wrap("q", q)
    kct, vct = _wrap("k_cache", k_cache, output=True), _wrap("v_cache", v_cache, output=True)
    news = [None, None]
    if (k is None) != (v is None):
        raise ValueError("k and v must be given together (the new tokens to append)")
    if k is not None:
        news = [_wrap("k", k), _wrap("v", v)]
    for n, t in (("k_cache", kct), ("v_cache", vct), ("k", news[0]), ("v", news[1])):
        if t is None:
            continue
        if t.kind != qt.kind:
            raise TypeError("q is a %s but %s is a %s; pass all of the same kind" % (qt.kind, n, t.kind))
        if t.device != qt.device:
            raise ValueError("q is on %s but %s is on %s; pass all on one device" % (qt.device, n, t.device))
        if t.dtype != qt.dtype:
            raise TypeError("q has dtype %s but %s has dtype %s; they must share a dtype" % (qt.obj.dtype, n, t.obj.dtype))
        if len(t.shape) != 4:
            raise ValueError("%s must have 4 dims; got shape %s" % (n, t.shape))
    if len(qt.shape) != 4:
        raise ValueError("q must be [batch, seqlen_q, heads, head_dim]; got shape %s" % (qt.shape,))
    if kct.shape != vct.shape:
        raise ValueError("k_cache has shape %s but v_cache has shape %s; they must match" % (kct.shape, vct.shape))
    B, Lq, H, D = qt.shape
    n0, n1, HK, Dk = kct.shape
    if Dk != D:
        raise ValueError("q has head_dim %d but k_cache has %d" % (D, Dk))

    on_cuda = qt.device.startswith("cuda")

    def table(a):
        """A checked host table, where the call reads it: a device copy on q's GPU."""
        if not on_cuda:
            return a, (a.ctypes.data if a.size else None)
        d = _torch().as_tensor(a, device=qt.obj.device)
        return d, (d.data_ptr() if a.size else None)

    p = Params()
    lib.qattn_params_init(ctypes.byref(p))
    p.batch, p.seqlen_q = B, Lq
    p.n_heads, p.n_kv_heads, p.head_dim = (_int_arg(n, x, 0, _I32_MAX) for n, x in (("q heads", H), ("k_cache heads", HK), ("head_dim", D)))
    p.qkv_dtype = qt.dtype
    p.q = qt.ptr
    p.q_batch_stride, p.q_seq_stride, p.q_head_stride = qt.strides[:3]
    p.causal = 1 if causal else 0
    if not isinstance(window_size, (tuple, list)) or len(window_size) != 2:
        raise TypeError("window_size must be a (left, right) pair, -1 meaning unbounded, got %r" % (window_size,))
    p.window_left = _int_arg("window_size[0]", window_size[0], -1, _I32_MAX)
    p.window_right = _int_arg("window_size[1]", window_size[1], -1, _I32_MAX)
    p.scale = _scale_arg(softmax_scale)

    kv = KVCacheParams()
    lib.qattn_kvcache_params_init(ctypes.byref(kv))
    keep = [qt, kct, vct] + [t for t in news if t is not None]
    _set_score_mods(p, qt, alibi_slopes, softcap, keep)
    kv.k_cache, kv.v_cache = kct.ptr, vct.ptr
    kv.k_page_stride, kv.k_seq_stride, kv.k_head_stride = kct.strides[:3]
    kv.v_page_stride, kv.v_seq_stride, kv.v_head_stride = vct.strides[:3]
    if block_table is not None:
        bt = _host_array("block_table", block_table, np.int32, 2)
        if bt.shape[0] != B:
            raise ValueError("block_table has %d rows but q has batch %d" % (bt.shape[0], B))
        bt_obj, kv.block_table = table(bt)
        keep.append(bt_obj)
        kv.block_table_stride = kv.max_blocks = bt.shape[1]
        kv.n_pages, kv.page_size = n0, _int_arg("page_size (k_cache.shape[1])", n1, 0, _I32_MAX)
    else:
        if n0 != B:
            raise ValueError("k_cache has batch %d but q has %d (pass block_table for a paged cache)" % (n0, B))
        kv.cache_len = n1
    seqlen_new = 0
    if news[0] is not None:
        kn, vn = news
        if kn.shape != vn.shape:
            raise ValueError("k has shape %s but v has shape %s; they must match" % (kn.shape, vn.shape))
        if kn.shape[0] != B or kn.shape[2:] != (HK, D):
            raise ValueError("k must be [batch=%d, seqlen_new, kv_heads=%d, head_dim=%d]; got %s" % (B, HK, D, kn.shape))
        seqlen_new = kn.shape[1]
        kv.k_new, kv.v_new, kv.seqlen_new = kn.ptr, vn.ptr, seqlen_new
        kv.k_new_batch_stride, kv.k_new_seq_stride, kv.k_new_head_stride = kn.strides[:3]
        kv.v_new_batch_stride, kv.v_new_seq_stride, kv.v_new_head_stride = vn.strides[:3]
    if cache_seqlens is None:
        if block_table is not None or seqlen_new:
            raise ValueError("cache_seqlens is required with block_table or new k/v (the tokens already in the cache)")
        cache_seqlens = n1
    if isinstance(cache_seqlens, (int, np.integer)) and not isinstance(cache_seqlens, bool):
        cs = np.full(B, _int_arg("cache_seqlens", cache_seqlens, -2**31, _I32_MAX), dtype=np.int32)
    else:
        cs = _host_array("cache_seqlens", cache_seqlens, np.int32, 1)
        if cs.shape[0] != B:
            raise ValueError("cache_seqlens has %d entries but q has batch %d" % (cs.shape[0], B))
    cs_obj, kv.cache_seqlens = table(cs)
    keep.append(cs_obj)
    if (rotary_cos is None) != (rotary_sin is None):
        raise ValueError("rotary_cos and rotary_sin must be given together")
    if rotary_cos is not None:
        cos_a, sin_a = _host_array("rotary_cos", rotary_cos, np.float32, 2), _host_array("rotary_sin", rotary_sin, np.float32, 2)
        if cos_a.shape != sin_a.shape:
            raise ValueError("rotary_cos has shape %s but rotary_sin has %s" % (cos_a.shape, sin_a.shape))
        (cos_obj, kv.rotary_cos), (sin_obj, kv.rotary_sin) = table(cos_a), table(sin_a)
        keep += [cos_obj, sin_obj]
        kv.rotary_len, kv.rotary_dim = cos_a.shape[0], _int_arg("rotary_dim", 2 * cos_a.shape[1], 0, _I32_MAX)
        kv.rotary_interleaved = 1 if rotary_interleaved else 0

    out = _empty_like_kind(qt, (B, Lq, H, D), qt.dtype)
    ot = _wrap("out", out, output=True)
    p.o, p.o_dtype = ot.ptr, ot.dtype
    p.o_batch_stride, p.o_seq_stride, p.o_head_stride = ot.strides[:3]
    keep.append(ot)
    lse = None
    if return_lse:
        lse = _lse_output(p, qt, (B, H, Lq), keep)
    if on_cuda:
        torch = _torch()
        ctx = _get_context("cuda", None, isa, qt.device_index)
        with torch.cuda.device(qt.obj.device):
            p.stream = torch.cuda.current_stream(qt.obj.device).cuda_stream
            with ctx.lock:
                ctx.check(lib.qattn_forward_kvcache(ctx.handle, ctypes.byref(p), ctypes.byref(kv)))
    else:
        ctx = _get_context("cpu", threads, isa)
        with ctx.lock:
            ctx.check(lib.qattn_forward_kvcache(ctx.handle, ctypes.byref(p), ctypes.byref(kv)))
    del keep
    return (ot.obj, lse) if return_lse else ot.obj


def rotary_apply(x, cos, sin, position=0, interleaved=True):
    """x rotated (a new array/tensor like x): x [n_tokens, heads, head_dim] (or [heads, head_dim]),
    token t at position + t, with the rule of attention_with_kvcache / qattn_kv_cache_append_rotary
    (cos, sin [rotary_len, rotary_dim / 2]). For the queries of a decode over a qattn.KVCache whose
    keys were appended with rotary tables."""
    _lib.require("qattn_rotary_apply", "qattn.rotary_apply")
    if _is_torch(x):
        if x.device.type != "cpu":
            raise ValueError("x is on %s; rotary_apply runs on the CPU" % x.device)
        y = x.detach().clone().contiguous()
    else:
        y = np.array(x, copy=True, order="C")
    t = _wrap("x", y, output=True)
    shape = t.shape if len(t.shape) == 3 else (1,) + tuple(t.shape)
    if len(shape) != 3:
        raise ValueError("x must be [n_tokens, heads, head_dim] or [heads, head_dim]; got shape %s" % (t.shape,))
    cos_a, sin_a = _host_array("cos", cos, np.float32, 2), _host_array("sin", sin, np.float32, 2)
    if cos_a.shape != sin_a.shape:
        raise ValueError("cos has shape %s but sin has %s" % (cos_a.shape, sin_a.shape))
    ctx = _get_context("cpu")
    with ctx.lock:
        ctx.check(lib.qattn_rotary_apply(ctx.handle, t.ptr, t.dtype, shape[0], _int_arg("heads", shape[1], 0, _I32_MAX),
                                         _int_arg("head_dim", shape[2], 0, _I32_MAX), _int_arg("position", position, -2**63, 2**63 - 1),
                                         cos_a.ctypes.data, sin_a.ctypes.data, cos_a.shape[0], 2 * cos_a.shape[1], 1 if interleaved else 0))
    return y
