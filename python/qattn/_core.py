"""attention(), oracle() and info(): argument checking, tensor adapters and the context cache.

The C library validates params but cannot see Python objects: it does not know an array's
real extent, dtype, device or whether its memory is still alive. Everything it cannot check
is checked here, before a pointer is handed over, so that bad input raises instead of
reading out of bounds.
"""
import ctypes
import math
import sys
import threading
import weakref

import numpy as np

from . import _blockmask, _lib
from ._lib import lib, Params, CtxOptions, CtxInfo

# ---------------------------------------------------------------- errors


class QattnError(RuntimeError):
    """A qattn status other than QATTN_OK; .status holds the code, the message is the
    library's own (qattn_ctx_last_error)."""

    def __init__(self, status, message):
        self.status = status
        super().__init__(message)


class QattnValueError(QattnError, ValueError):
    """QATTN_ERR_INVALID_ARGUMENT / NULL_POINTER / OVERFLOW: the arguments are wrong."""


class QattnUnsupportedError(QattnError, NotImplementedError):
    """QATTN_ERR_UNSUPPORTED: valid, but this backend / build cannot run it."""


class QattnMemoryError(QattnError, MemoryError):
    """QATTN_ERR_OUT_OF_MEMORY."""


class QattnCapacityError(QattnError):
    """QATTN_ERR_CAPACITY: a fixed-size resource (KV cache blocks, a block table row, the
    workspace) is exhausted. The failed call changed nothing."""


def _raise_status(status, detail):
    msg = "%s: %s" % (_lib.status_str(status), detail) if detail else _lib.status_str(status)
    if status in (_lib.QATTN_ERR_INVALID_ARGUMENT, _lib.QATTN_ERR_NULL_POINTER, _lib.QATTN_ERR_OVERFLOW):
        raise QattnValueError(status, msg)
    if status == _lib.QATTN_ERR_UNSUPPORTED:
        raise QattnUnsupportedError(status, msg)
    if status == _lib.QATTN_ERR_OUT_OF_MEMORY:
        raise QattnMemoryError(status, msg)
    if status == _lib.QATTN_ERR_CAPACITY:
        raise QattnCapacityError(status, msg)
    raise QattnError(status, msg)


# ---------------------------------------------------------------- contexts

class _Context:
    """One qattn_ctx and the lock that serialises its use (a context is single-threaded;
    ctypes drops the GIL during the call, so distinct contexts still run in parallel)."""

    def __init__(self, backend, threads, isa, device):
        opt = CtxOptions()
        opt.backend = _lib.BACKENDS[backend]
        opt.isa = _lib.ISAS[isa]
        opt.n_threads = threads
        opt.cuda_device = device
        handle = ctypes.c_void_p()
        why = ctypes.create_string_buffer(512)
        s = lib.qattn_ctx_create_ex(ctypes.byref(handle), ctypes.byref(opt), why, len(why))
        if s != _lib.QATTN_OK:
            # The library's reason (e.g. "QATTN_ISA=bogus is not one of ref, avx2, avxvnni, avx512").
            _raise_status(s, "cannot create a context for backend=%s isa=%s threads=%d device=%d: %s"
                          % (backend, isa, threads, device, why.value.decode(errors="replace")))
        self.handle = handle
        self.lock = threading.Lock()

    def check(self, status):
        if status != _lib.QATTN_OK:
            _raise_status(status, lib.qattn_ctx_last_error(self.handle).decode(errors="replace"))

    def destroy(self):
        if self.handle:
            lib.qattn_ctx_destroy(self.handle)
            self.handle = None


_contexts = {}
_contexts_lock = threading.Lock()


def _int_arg(name, value, lo, hi):
    """An integer argument going into a fixed-width C field: ctypes would silently wrap an
    out-of-range value, so range-check it here."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError("%s must be an int, got %s" % (name, type(value).__name__))
    value = int(value)
    if not lo <= value <= hi:
        raise ValueError("%s is %d; expected %d..%d" % (name, value, lo, hi))
    return value


def _get_context(backend, threads=None, isa=None, device=0):
    if backend not in ("cpu", "cuda"):
        raise ValueError("backend must be 'cpu' or 'cuda', got %r" % (backend,))
    threads = 0 if threads is None else _int_arg("threads", threads, 0, _lib.MAX_THREADS)
    isa = "auto" if isa is None else isa
    if isa not in _lib.ISAS:
        raise ValueError("isa must be one of %s, got %r" % (sorted(_lib.ISAS), isa))
    key = (backend, threads, isa, device)
    with _contexts_lock:
        ctx = _contexts.get(key)
        if ctx is None:
            ctx = _contexts[key] = _Context(backend, threads, isa, device)
        return ctx


# Objects owning library memory tied to a context (KV caches): closed before the contexts
# at exit, since a cache must be destroyed through the context that created it.
_dependents = weakref.WeakSet()


def _destroy_contexts():
    for obj in list(_dependents):
        obj.close()
    with _contexts_lock:
        for ctx in _contexts.values():
            ctx.destroy()
        _contexts.clear()


# ---------------------------------------------------------------- info

def info(backend="cpu", threads=None, isa=None, device=0):
    """What a context chose: backend, ISA, threads, CUDA availability, device name, plus the
    library version and the path it was loaded from."""
    ctx = _get_context(backend, threads, isa, device)
    out = CtxInfo()
    with ctx.lock:
        ctx.check(lib.qattn_ctx_get_info(ctx.handle, ctypes.byref(out)))
    return {
        "version": lib.qattn_version().decode(),
        "library": _lib.library_path,
        "backend": _lib.BACKEND_NAMES.get(out.backend, str(out.backend)),
        "isa": out.isa_name.decode(errors="replace"),
        "n_threads": out.n_threads,
        "cuda_available": bool(out.cuda_available),
        "device_name": out.device_name.decode(errors="replace"),
    }


# ---------------------------------------------------------------- tensor adapters

def _torch():
    """torch if it is already imported: a tensor can only exist if it is, and importing
    torch ourselves would cost seconds for numpy users."""
    return sys.modules.get("torch")


def _is_torch(x):
    t = _torch()
    return t is not None and isinstance(x, t.Tensor)


# A valid, never-dereferenced address for empty tensors: torch gives data_ptr() == 0 for
# them, and the library rightly refuses NULL even when nothing would be read.
_EMPTY = ctypes.create_string_buffer(64)
_EMPTY_PTR = ctypes.addressof(_EMPTY)


class _T:
    """One checked tensor: the original object (kept alive for the call), its address,
    qattn dtype, shape, element strides and device ('cpu' or 'cuda:N')."""
    __slots__ = ("obj", "kind", "ptr", "dtype", "shape", "strides", "device", "device_index", "itemsize")

    def nbytes_span(self):
        """[lo, hi) byte range the view touches, for overlap checks."""
        if any(n == 0 for n in self.shape):
            return (self.ptr, self.ptr)
        hi = sum((n - 1) * s for n, s in zip(self.shape, self.strides)) + 1
        return (self.ptr, self.ptr + hi * self.itemsize)


_NP_DTYPES = {np.dtype(np.float32): _lib.DTYPE_F32, np.dtype(np.float16): _lib.DTYPE_F16}


def _torch_dtypes():
    t = _torch()
    return {t.float32: _lib.DTYPE_F32, t.float16: _lib.DTYPE_F16, t.bfloat16: _lib.DTYPE_BF16}


def _dtype_error(name, dtype):
    return TypeError("%s has dtype %s; qattn takes float32, float16 or bfloat16 (bfloat16 through torch: "
                     "numpy has none); convert first, e.g. .astype(np.float32) / .float()" % (name, dtype))


def _wrap(name, x, *, output=False):
    """Check one tensor argument and describe it. Inputs whose strides the C API cannot
    express (negative, or not a whole number of elements: numpy views can have both) are
    copied; an output cannot be copied, so it is rejected instead."""
    if x is None:
        raise TypeError("%s is None; expected a numpy.ndarray or torch.Tensor" % name)
    t = _T()
    t.obj = x
    if isinstance(x, np.ndarray):
        if x.dtype not in _NP_DTYPES:
            raise _dtype_error(name, x.dtype)
        item = x.itemsize
        bad = any(s < 0 or s % item for s in x.strides) or not x.flags.aligned
        if bad:
            if output:
                raise ValueError("%s has negative, misaligned or fractional strides %s; pass a fresh array"
                                 % (name, x.strides))
            # ascontiguousarray keeps a contiguous last dim contiguous; a non-contiguous last
            # dim is still reported below as the error it is, from the original strides.
            if x.ndim and x.shape[-1] > 1 and x.strides[-1] != item:
                raise ValueError("%s: the last (head_dim) dimension must be contiguous (stride 1 element); "
                                 "got a stride of %d bytes" % (name, x.strides[-1]))
            x = np.ascontiguousarray(x)
            t.obj = x
        if output and not x.flags.writeable:
            raise ValueError("%s is read-only" % name)
        t.kind = "numpy"
        t.ptr = x.ctypes.data
        t.dtype = _NP_DTYPES[x.dtype]
        t.shape = tuple(x.shape)
        t.strides = tuple(s // item for s in x.strides)
        t.device, t.device_index, t.itemsize = "cpu", 0, item
    elif _is_torch(x):
        torch = _torch()
        dts = _torch_dtypes()
        if x.dtype not in dts:
            raise _dtype_error(name, x.dtype)
        if x.layout != torch.strided:
            raise TypeError("%s has layout %s; qattn takes strided (dense) tensors" % (name, x.layout))
        if x.device.type not in ("cpu", "cuda"):
            raise ValueError("%s is on device %s; qattn takes cpu or cuda tensors" % (name, x.device))
        if x.is_conj() or x.is_neg():
            x = x.resolve_conj().resolve_neg()
        t.kind = "torch"
        t.obj = x
        t.ptr = x.data_ptr()
        t.dtype = dts[x.dtype]
        t.shape = tuple(x.shape)
        t.strides = tuple(x.stride())
        t.itemsize = x.element_size()
        t.device = str(x.device) if x.device.type == "cpu" else "cuda:%d" % x.device.index
        t.device_index = 0 if x.device.type == "cpu" else x.device.index
        if t.ptr % t.itemsize:
            if output:
                raise ValueError("%s is not aligned to its element size" % name)
            x = x.clone()
            t.obj, t.ptr, t.strides = x, x.data_ptr(), tuple(x.stride())
    else:
        raise TypeError("%s must be a numpy.ndarray or torch.Tensor, got %s" % (name, type(x).__name__))
    if t.shape and t.shape[-1] > 1 and t.strides[-1] != 1 and 0 not in t.shape:  # empty: strides are arbitrary
        raise ValueError("%s: the last (head_dim) dimension must be contiguous (stride 1); got stride %d "
                         "(call .contiguous() / np.ascontiguousarray first)" % (name, t.strides[-1]))
    if 0 in t.shape:
        # An empty view's strides are arbitrary (numpy and torch report zeros or anything),
        # and the library would read zero strides on an output as overlapping elements:
        # describe it as contiguous, and give it a non-NULL address (torch reports 0).
        st, acc = [], 1
        for n in reversed(t.shape):
            st.append(acc)
            acc *= max(n, 1)
        t.strides = tuple(reversed(st))
        if t.ptr == 0:
            t.ptr = _EMPTY_PTR
    return t


def _empty_like_kind(ref, shape, qdtype):
    """A new output of the same kind (numpy / torch) and device as ref."""
    if ref.kind == "numpy":
        np_dt = {_lib.DTYPE_F32: np.float32, _lib.DTYPE_F16: np.float16}[qdtype]
        return np.empty(shape, dtype=np_dt)
    torch = _torch()
    t_dt = {_lib.DTYPE_F32: torch.float32, _lib.DTYPE_F16: torch.float16, _lib.DTYPE_BF16: torch.bfloat16}[qdtype]
    return torch.empty(shape, dtype=t_dt, device=ref.obj.device)


def _offsets(name, cu, ref, n_rows, exact):
    """cu_seqlens as a host int32 numpy array (checked: 1-D, starts at 0, non-decreasing,
    last entry within the packed tensor), plus the object to pass (the same array for CPU,
    a device int32 tensor for CUDA). The C side reads host offsets itself but cannot know the
    packed tensor's length, and on CUDA it cannot read them at all: one small copy here keeps
    an out-of-range offset from becoming an out-of-bounds read."""
    if cu is None:
        raise TypeError("%s is None but the other cu_seqlens is given; pass both or neither" % name)
    if _is_torch(cu):
        host = cu.detach().cpu().numpy()
    elif isinstance(cu, (np.ndarray, list, tuple)):
        host = np.asarray(cu)
    else:
        raise TypeError("%s must be an int32 array, tensor or list, got %s" % (name, type(cu).__name__))
    if host.ndim != 1 or host.size < 1:
        raise ValueError("%s must be a 1-D array of batch+1 offsets, got shape %s" % (name, host.shape))
    if host.size and host.dtype.kind not in "iu":
        raise TypeError("%s must hold integers (int32), got dtype %s" % (name, host.dtype))
    if host.size and (host.min() < 0 or host.max() > np.iinfo(np.int32).max):
        raise ValueError("%s has offsets outside 0..2^31-1" % name)
    host = np.ascontiguousarray(host, dtype=np.int32)
    if host[0] != 0:
        raise ValueError("%s[0] is %d; it must be 0" % (name, host[0]))
    if np.any(np.diff(host) < 0):
        raise ValueError("%s must be non-decreasing, got %s" % (name, host.tolist()))
    last = int(host[-1])
    if (exact and last != n_rows) or last > n_rows:
        raise ValueError("%s ends at %d but the packed tensor has %d rows" % (name, last, n_rows))
    if ref.kind == "torch" and ref.device != "cpu":
        torch = _torch()
        dev = torch.from_numpy(host).to(ref.obj.device)
        return host, dev, dev.data_ptr()
    return host, host, host.ctypes.data


# ---------------------------------------------------------------- building params

_LAYOUTS = ("bshd", "bhsd")


def _build(q, k, v, *, causal, scale, window, precision, int8_scheme, cu_seqlens_q, cu_seqlens_k,
           max_seqlen_q, max_seqlen_k, layout, for_oracle=False):
    """Check q, k, v and the options; return (params, q, k, v, meta, keep) where keep holds
    every object whose memory the params point to."""
    if layout not in _LAYOUTS:
        raise ValueError("layout must be 'bshd' ([batch, seq, heads, dim], flash-attn) or 'bhsd' "
                         "([batch, heads, seq, dim], torch SDPA), got %r" % (layout,))
    qt, kt, vt = _wrap("q", q), _wrap("k", k), _wrap("v", v)
    for n, t in (("k", kt), ("v", vt)):
        if t.kind != qt.kind:
            raise TypeError("q is a %s but %s is a %s; pass all of the same kind" % (qt.kind, n, t.kind))
        if t.device != qt.device:
            raise ValueError("q is on %s but %s is on %s; all tensors must be on one device" % (qt.device, n, t.device))
        if t.dtype != qt.dtype:
            raise TypeError("q has dtype %s but %s has dtype %s; q, k and v must share a dtype"
                            % (qt.obj.dtype, n, t.obj.dtype))
    varlen = cu_seqlens_q is not None or cu_seqlens_k is not None
    keep = [qt, kt, vt]
    p = Params()
    lib.qattn_params_init(ctypes.byref(p))
    if varlen:
        if layout != "bshd":
            raise ValueError("varlen (cu_seqlens) takes packed [total, heads, dim] tensors; layout must be 'bshd'")
        for n, t in (("q", qt), ("k", kt), ("v", vt)):
            if len(t.shape) != 3:
                raise ValueError("with cu_seqlens, %s must be packed [total, heads, head_dim]; got %d dims %s"
                                 % (n, len(t.shape), t.shape))
        if kt.shape != vt.shape:
            raise ValueError("k has shape %s but v has shape %s; they must match" % (kt.shape, vt.shape))
        if kt.shape[2] != qt.shape[2]:
            raise ValueError("q has head_dim %d but k has %d" % (qt.shape[2], kt.shape[2]))
        cq_host, cq_obj, cq_ptr = _offsets("cu_seqlens_q", cu_seqlens_q, qt, qt.shape[0], exact=True)
        ck_host, ck_obj, ck_ptr = _offsets("cu_seqlens_k", cu_seqlens_k, qt, kt.shape[0], exact=False)
        if cq_host.size != ck_host.size:
            raise ValueError("cu_seqlens_q has %d entries but cu_seqlens_k has %d; both are batch+1"
                             % (cq_host.size, ck_host.size))
        keep += [cq_obj, ck_obj]
        batch = cq_host.size - 1
        lq_max = int(np.diff(cq_host).max()) if batch else 0
        lk_max = int(np.diff(ck_host).max()) if batch else 0
        for n, given, actual in (("max_seqlen_q", max_seqlen_q, lq_max), ("max_seqlen_k", max_seqlen_k, lk_max)):
            if given is not None and _int_arg(n, given, 0, 2**31 - 1) < actual:
                raise ValueError("%s is %d but the longest sequence has %d rows" % (n, given, actual))
        total_q, H, D = qt.shape
        HK = kt.shape[1]
        p.batch, p.seqlen_q, p.seqlen_k = batch, max_seqlen_q or lq_max, max_seqlen_k or lk_max
        p.cu_seqlens_q, p.cu_seqlens_k = cq_ptr, ck_ptr
        # packed: the token axis is the sequence axis; batch strides are ignored by the library
        qs = (0, qt.strides[0], qt.strides[1])
        ks = (0, kt.strides[0], kt.strides[1])
        vs = (0, vt.strides[0], vt.strides[1])
        o_shape = (total_q, H, D)
        lse_shape = (H, total_q)
    else:
        if max_seqlen_q is not None or max_seqlen_k is not None:
            raise ValueError("max_seqlen_q/max_seqlen_k only apply with cu_seqlens")
        for n, t in (("q", qt), ("k", kt), ("v", vt)):
            if len(t.shape) != 4:
                raise ValueError("%s must have 4 dims [%s]; got %d dims %s"
                                 % (n, "batch, seq, heads, head_dim" if layout == "bshd" else "batch, heads, seq, head_dim",
                                    len(t.shape), t.shape))
        if kt.shape != vt.shape:
            raise ValueError("k has shape %s but v has shape %s; they must match" % (kt.shape, vt.shape))
        # axis numbers of (batch, seq, heads) in the caller's layout
        ax = (0, 1, 2) if layout == "bshd" else (0, 2, 1)
        B, Lq, H, D = qt.shape[ax[0]], qt.shape[ax[1]], qt.shape[ax[2]], qt.shape[3]
        Bk, Lk, HK, Dk = kt.shape[ax[0]], kt.shape[ax[1]], kt.shape[ax[2]], kt.shape[3]
        if Bk != B:
            raise ValueError("q has batch %d but k has batch %d" % (B, Bk))
        if Dk != D:
            raise ValueError("q has head_dim %d but k has %d" % (D, Dk))
        p.batch, p.seqlen_q, p.seqlen_k = B, Lq, Lk
        qs = tuple(qt.strides[a] for a in ax)
        ks = tuple(kt.strides[a] for a in ax)
        vs = tuple(vt.strides[a] for a in ax)
        o_shape = qt.shape  # same layout as q
        lse_shape = (B, H, Lq)
    p.n_heads = _int_arg("q heads", H, 0, 2**31 - 1)
    p.n_kv_heads = _int_arg("k heads", HK, 0, 2**31 - 1)
    p.head_dim = _int_arg("head_dim", D, 0, 2**31 - 1)
    p.qkv_dtype = qt.dtype
    p.q, p.k, p.v = qt.ptr, kt.ptr, vt.ptr
    (p.q_batch_stride, p.q_seq_stride, p.q_head_stride) = qs
    (p.k_batch_stride, p.k_seq_stride, p.k_head_stride) = ks
    (p.v_batch_stride, p.v_seq_stride, p.v_head_stride) = vs

    p.causal = 1 if causal else 0
    if window is not None:
        if not isinstance(window, (tuple, list)) or len(window) != 2:
            raise TypeError("window must be a (left, right) pair, -1 meaning unbounded, got %r" % (window,))
        p.window_left = _int_arg("window[0]", window[0], -1, 2**31 - 1)
        p.window_right = _int_arg("window[1]", window[1], -1, 2**31 - 1)
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating, np.integer)):
            raise TypeError("scale must be a float or None, got %s" % type(scale).__name__)
        if float(scale) == 0.0:
            # 0 is the C API's "1/sqrt(head_dim)" sentinel: passing it through would silently
            # compute something else than asked.
            raise ValueError("scale=0 is not expressible (the C API reads 0 as 1/sqrt(head_dim)); "
                             "pass None for the default")
        if not math.isfinite(float(scale)):
            raise ValueError("scale is %r; it must be finite" % (scale,))
        p.scale = float(scale)
    if not for_oracle:
        prec = "auto" if precision is None else precision
        if prec not in _lib.PRECISIONS:
            raise ValueError("precision must be one of %s, got %r" % (sorted(_lib.PRECISIONS), prec))
        p.precision = _lib.PRECISIONS[prec]
        if int8_scheme is not None:
            if int8_scheme not in _lib.INT8_SCHEMES:
                raise ValueError("int8_scheme must be one of %s, got %r" % (sorted(_lib.INT8_SCHEMES), int8_scheme))
            if prec != "int8":
                raise ValueError("int8_scheme=%r needs precision='int8' (got %r)" % (int8_scheme, prec))
            p.int8_scheme = _lib.INT8_SCHEMES[int8_scheme]
    meta = {"varlen": varlen, "o_shape": o_shape, "lse_shape": lse_shape, "layout": layout}
    return p, qt, kt, vt, meta, keep


def _set_output(p, ot, meta):
    if ot.shape != tuple(meta["o_shape"]):
        raise ValueError("out has shape %s; expected %s" % (ot.shape, tuple(meta["o_shape"])))
    if meta["varlen"]:
        os_ = (0, ot.strides[0], ot.strides[1])
    else:
        ax = (0, 1, 2) if meta["layout"] == "bshd" else (0, 2, 1)
        os_ = tuple(ot.strides[a] for a in ax)
    p.o = ot.ptr
    p.o_dtype = ot.dtype
    (p.o_batch_stride, p.o_seq_stride, p.o_head_stride) = os_


def _overlaps(a, b):
    (a0, a1), (b0, b1) = a.nbytes_span(), b.nbytes_span()
    return a0 < b1 and b0 < a1


def _lse_output(p, like, shape, keep):
    """A float32 LSE output [shape] of like's kind (numpy or torch, like's device), set as p.lse and
    kept alive in keep."""
    lse = _empty_like_kind(like, shape, _lib.DTYPE_F32)
    lt = _wrap("lse", lse, output=True)
    p.lse = lt.ptr
    keep.append(lt)
    return lse


# ---------------------------------------------------------------- public functions

def _set_score_mods(p, qt, alibi_slopes, softcap, keep):
    """softcap and ALiBi slopes into p (flash-attn's names). Slopes: float32 [H] or [B, H], host
    memory for CPU tensors (numpy or torch), a CUDA tensor for CUDA inputs."""
    if softcap is not None and softcap != 0:
        try:
            softcap = float(softcap)
        except (TypeError, ValueError):
            raise ValueError("softcap must be a number, got %r" % (softcap,))
        if not (softcap > 0 and softcap != float("inf")):
            raise ValueError("softcap is %r; it must be 0/None (off) or finite and > 0" % (softcap,))
        p.softcap = softcap
    if alibi_slopes is None:
        return
    if _is_torch(alibi_slopes):
        torch = _torch()
        if alibi_slopes.dtype != torch.float32:
            raise ValueError("alibi_slopes must be float32, got %s" % (alibi_slopes.dtype,))
        on_cuda = alibi_slopes.device.type == "cuda"
        if on_cuda != qt.device.startswith("cuda"):
            raise ValueError("alibi_slopes is on %s but q is on %s" % (alibi_slopes.device, qt.device))
        slopes = alibi_slopes.detach().contiguous() if on_cuda else alibi_slopes.detach().contiguous().numpy()
    else:
        if qt.device.startswith("cuda"):
            raise ValueError("alibi_slopes must be a CUDA tensor when q is on %s" % qt.device)
        arr = np.asarray(alibi_slopes)
        if arr.dtype != np.float32:
            raise ValueError("alibi_slopes must be float32, got %s" % (arr.dtype,))
        slopes = np.ascontiguousarray(arr)
    shape = tuple(slopes.shape)
    H, B = p.n_heads, p.batch
    if shape == (H,):
        p.alibi_batch_stride = 0
    elif len(shape) == 2 and shape == (B, H):
        p.alibi_batch_stride = H
    else:
        raise ValueError("alibi_slopes has shape %s; expected [%d] (n_heads) or [%d, %d] (batch, n_heads)" % (shape, H, B, H))
    p.alibi_slopes = slopes.data_ptr() if _is_torch(slopes) else slopes.ctypes.data
    keep.append(slopes)


def attention(q, k, v, *, causal=False, scale=None, window=None, precision=None, int8_scheme=None,
              cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None,
              return_lse=False, backend=None, out=None, layout="bshd", threads=None, isa=None, calibration=None,
              alibi_slopes=None, softcap=0.0, block_mask=None, block_size=64):
    """softmax(scale * q k^T + mask) v without materialising the score matrix.

    q: [B, Lq, H, D], k/v: [B, Lk, HK, D] (layout="bshd", flash-attn's flash_attn_func) or
    [B, H, L, D] (layout="bhsd", torch SDPA); with cu_seqlens_q/k (int32, batch+1 offsets),
    packed [total, H, D]. H % HK == 0 (GQA). Only the last dim must be contiguous; other
    strides are passed through, so views into a larger cache cost no copy.

    numpy arrays (float32/float16) or torch tensors (float32/float16/bfloat16) on CPU, or
    CUDA tensors (by pointer on torch.cuda.current_stream(), once libqattn has a CUDA
    backend). Returns the same kind of object, out's dtype = q's unless `out` is given;
    with return_lse, also the float32 natural-log log-sum-exp [B, H, Lq] (varlen [H, total_q]),
    -inf for a query that sees no key.

    causal: bottom-right aligned (flash-attn's convention) when Lq != Lk. window=(left, right)
    with -1 for unbounded. scale: None = 1/sqrt(D). precision: None/"auto" (the inputs' dtype,
    FP32 accumulation), "fp32", "fp16", "bf16", "int8" (int8_scheme "qattn"/"intfa"/"sage"),
    "int4" (4-bit Q/K codes, CPU and CUDA; far less accurate than int8: docs/FORMAT.md section 8),
    "fp8_e4m3", "fp8_e5m2" (where the backend supports them; otherwise NotImplementedError
    with the library's message). backend: None = from the tensors' device. threads: CPU
    threads (None = all cores). Forward only: no autograd.
    calibration: a qattn.Calibration (qattn.calibrate) for precision "int8", scheme "qattn": its
    static channel transforms replace the per-call statistics (qattn_forward_calibrated); for CUDA
    inputs its arrays must be on their device (calibration.to(q.device)).
    alibi_slopes: float32 [H] or [B, H] (flash-attn's flash_attn_func): the score of query i and key
    j gets - slope[h] * |i + Lk - Lq - j|. softcap: 0 = off, else scores become
    softcap * tanh(score / softcap) before ALiBi. CPU backend, precisions auto/fp32/fp16/bf16 only
    (others raise NotImplementedError with the library's message).
    block_mask: block-sparse attention (BlockBERT; CPU backend): uint8/bool [H, nq, nk] or
    [B, H, nq, nk] (an axis of 1 is shared), nq = ceil(Lq / block_q), nk = ceil(Lk / block_k);
    zero skips that (query block, key block) pair (on top of causal/window; blocks count from
    each sequence's start). block_size: block_q = block_k, or a pair (block_q, block_k),
    multiples of 16. qattn.block_mask(...) builds the random / blockbert / window patterns.
    """
    p, qt, kt, vt, meta, keep = _build(q, k, v, causal=causal, scale=scale, window=window, precision=precision,
                                       int8_scheme=int8_scheme, cu_seqlens_q=cu_seqlens_q,
                                       cu_seqlens_k=cu_seqlens_k, max_seqlen_q=max_seqlen_q,
                                       max_seqlen_k=max_seqlen_k, layout=layout)
    _set_score_mods(p, qt, alibi_slopes, softcap, keep)
    if block_mask is not None:
        _blockmask.attach(p, block_mask, block_size, qt, keep)
    on_cuda = qt.device.startswith("cuda")
    if backend is None:
        backend = "cuda" if on_cuda else "cpu"
    if backend not in ("cpu", "cuda"):
        raise ValueError("backend must be None, 'cpu' or 'cuda', got %r" % (backend,))
    if (backend == "cuda") != on_cuda:
        raise ValueError("backend %r cannot read tensors on %s" % (backend, qt.device))

    if out is None:
        out = _empty_like_kind(qt, meta["o_shape"], qt.dtype)
    ot = _wrap("out", out, output=True)
    if ot.kind != qt.kind or ot.device != qt.device:
        raise ValueError("out is a %s on %s but q is a %s on %s" % (ot.kind, ot.device, qt.kind, qt.device))
    for n, t in (("q", qt), ("k", kt), ("v", vt)):
        if _overlaps(ot, t):
            raise ValueError("out overlaps %s in memory; in-place attention is not supported" % n)
    _set_output(p, ot, meta)
    keep.append(ot)
    lse = None
    if return_lse:
        lse = _lse_output(p, qt, meta["lse_shape"], keep)

    ctx = _get_context(backend, threads if backend == "cpu" else None, isa, qt.device_index)
    cs = None
    if calibration is not None:
        from ._int8 import _calibration_struct
        _lib.require("qattn_forward_calibrated", "qattn.attention(calibration=...)")
        cs, ckeep = _calibration_struct(calibration, p.n_kv_heads, p.head_dim, device=qt.obj.device if on_cuda else None)
        keep.append(ckeep)
    if on_cuda:
        torch = _torch()
        with torch.cuda.device(qt.obj.device):
            p.stream = torch.cuda.current_stream(qt.obj.device).cuda_stream
            with ctx.lock:
                if cs is not None:
                    ctx.check(lib.qattn_forward_calibrated(ctx.handle, ctypes.byref(p), ctypes.byref(cs)))
                else:
                    ctx.check(lib.qattn_forward(ctx.handle, ctypes.byref(p)))
    elif cs is not None:
        with ctx.lock:
            ctx.check(lib.qattn_forward_calibrated(ctx.handle, ctypes.byref(p), ctypes.byref(cs)))
    else:
        with ctx.lock:
            ctx.check(lib.qattn_forward(ctx.handle, ctypes.byref(p)))
    del keep  # the arrays above must outlive the call; only now may they go
    return (ot.obj, lse) if return_lse else ot.obj


def oracle(q, k, v, *, causal=False, scale=None, window=None, cu_seqlens_q=None, cu_seqlens_k=None,
           max_seqlen_q=None, max_seqlen_k=None, return_lse=False, layout="bshd", alibi_slopes=None, softcap=0.0,
           block_mask=None, block_size=64):
    """The library's FP64 naive attention (qattn_oracle_f64) on the CPU, for checking results.
    Same arguments as attention(); CUDA tensors are copied to the host. Returns float64 numpy
    arrays in q's layout (and the LSE [B, H, Lq] / [H, total_q] with return_lse)."""
    if _is_torch(q) or _is_torch(k) or _is_torch(v):
        def host(x):
            return x.detach().cpu() if _is_torch(x) else x
        q, k, v = host(q), host(k), host(v)
    p, qt, kt, vt, meta, keep = _build(q, k, v, causal=causal, scale=scale, window=window, precision=None,
                                       int8_scheme=None, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                                       max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, layout=layout,
                                       for_oracle=True)
    if _is_torch(alibi_slopes):
        alibi_slopes = alibi_slopes.detach().cpu()
    _set_score_mods(p, qt, alibi_slopes, softcap, keep)
    if block_mask is not None:
        if _is_torch(block_mask):
            block_mask = block_mask.detach().cpu()
        _blockmask.attach(p, block_mask, block_size, qt, keep)
    # The oracle writes contiguous [B, Lq, H, D] (varlen [total, H, D]) whatever the layout.
    if meta["varlen"]:
        o_bshd = meta["o_shape"]
    else:
        B, Lq, H = p.batch, p.seqlen_q, p.n_heads
        o_bshd = (B, Lq, H, p.head_dim)
    o64 = np.zeros(o_bshd, dtype=np.float64)
    lse64 = np.zeros(meta["lse_shape"], dtype=np.float64) if return_lse else None
    # qattn_validate wants a valid o view even though the oracle ignores o: describe o64 as
    # a contiguous [B, Lq, H, D] f32 output (never written: the oracle writes only o64).
    p.o = o64.ctypes.data if o64.size else _EMPTY_PTR
    H, D = p.n_heads, p.head_dim
    p.o_head_stride, p.o_seq_stride = D, H * D
    p.o_batch_stride = 0 if meta["varlen"] else p.seqlen_q * H * D
    ctx = _get_context("cpu")
    with ctx.lock:
        ctx.check(lib.qattn_oracle_f64(ctx.handle, ctypes.byref(p),
                                       o64.ctypes.data if o64.size else _EMPTY_PTR,
                                       (lse64.ctypes.data if lse64.size else _EMPTY_PTR) if return_lse else None))
    del keep
    if layout == "bhsd":
        o64 = o64.transpose(0, 2, 1, 3)
    return (o64, lse64) if return_lse else o64
