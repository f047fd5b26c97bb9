"""qattn.KVCache: the paged KV cache and decode of qattn.h ("KV cache and decode", docs/KVCACHE.md).

The cache lives in library memory (one arena allocated at creation); this class owns the handle,
the context it belongs to, and checks what the library cannot see (array extents, dtypes,
devices) before any pointer is passed. Every library call validates first and changes nothing
on failure, so an exception (QattnCapacityError for exhausted blocks) leaves the cache as it was.
"""
import ctypes
import threading

import numpy as np

from . import _lib
from ._lib import lib, KVCacheOptions, KVCacheInfo, DecodeParams, KVCacheLayout, KVDeviceCache
from ._core import (_dependents, _empty_like_kind, _get_context, _int_arg, _is_torch, _torch, _wrap, _EMPTY_PTR)

_I32_MAX = 2**31 - 1


def _dtype_arg(dtype):
    if isinstance(dtype, str) and dtype.lower() in _lib.KV_DTYPES:
        return _lib.KV_DTYPES[dtype.lower()]
    aliases = {np.dtype(np.float16): _lib.DTYPE_F16, np.dtype(np.int8): _lib.DTYPE_I8}
    t = _torch()
    if t is not None and isinstance(dtype, t.dtype):
        m = {t.float16: _lib.DTYPE_F16, t.bfloat16: _lib.DTYPE_BF16, t.int8: _lib.DTYPE_I8}
        if dtype in m:
            return m[dtype]
    else:
        try:
            if np.dtype(dtype) in aliases:
                return aliases[np.dtype(dtype)]
        except TypeError:
            pass
    raise ValueError("dtype must be 'fp16', 'bf16' or 'int8' (the cache's storage), got %r" % (dtype,))


class KVCache:
    """A paged KV cache (vLLM-style) with FP16, BF16 or INT8 storage, and decode over it.

        cache = qattn.KVCache(kv_heads=8, head_dim=128, block_size=16, dtype="int8",
                              capacity_blocks=4096, max_seqs=64)
        cache.append(0, k, v)              # k, v: [n_tokens, kv_heads, head_dim]
        cache.fork(0, 1)                   # seq 1 shares seq 0's blocks (copy-on-write)
        o = cache.decode(q, [0, 1])        # q: [n_seqs, Lq, heads, head_dim]; queries = last Lq tokens
        cache.free(1); cache.info(); cache.close()   # or `with qattn.KVCache(...) as cache:`

    Sequence ids are 0..max_seqs-1, chosen by the caller. INT8 storage: per-token-per-head
    scales for K and V (docs/KVCACHE.md). max_blocks_per_seq: block-table width (None = all
    blocks). A cache is used under its context's lock, so one object may be shared by threads.
    """

    def __init__(self, kv_heads, head_dim, block_size=16, dtype="fp16", capacity_blocks=1024, max_seqs=1, *,
                 max_blocks_per_seq=None, threads=None, isa=None):
        _lib.require("qattn_kv_cache_create", "qattn.KVCache")
        self._handle = None
        opt = KVCacheOptions()
        opt.n_kv_heads = _int_arg("kv_heads", kv_heads, -_I32_MAX, _I32_MAX)
        opt.head_dim = _int_arg("head_dim", head_dim, -_I32_MAX, _I32_MAX)
        opt.block_size = _int_arg("block_size", block_size, -_I32_MAX, _I32_MAX)
        opt.dtype = _dtype_arg(dtype)
        opt.n_blocks = _int_arg("capacity_blocks", capacity_blocks, -2**63, 2**63 - 1)
        opt.max_seqs = _int_arg("max_seqs", max_seqs, -_I32_MAX, _I32_MAX)
        opt.max_blocks_per_seq = 0 if max_blocks_per_seq is None else _int_arg(
            "max_blocks_per_seq", max_blocks_per_seq, -2**63, 2**63 - 1)
        self._ctx = _get_context("cpu", threads, isa)
        h = ctypes.c_void_p()
        with self._ctx.lock:
            self._ctx.check(lib.qattn_kv_cache_create(self._ctx.handle, ctypes.byref(opt), ctypes.byref(h)))
        self._handle = h
        self.kv_heads, self.head_dim, self.block_size = opt.n_kv_heads, opt.head_dim, opt.block_size
        self.dtype = _lib.KV_DTYPE_NAMES[opt.dtype]
        self.capacity_blocks, self.max_seqs = opt.n_blocks, opt.max_seqs
        self._version = 0          # bumped by every change: the device copy is refreshed when stale
        self._device_copy = {}     # device index -> (version, arena tensor, table tensor)
        self._close_lock = threading.Lock()
        _dependents.add(self)

    # ------------------------------------------------------------ lifetime

    def close(self):
        """Free the cache's memory (idempotent). Any later call raises ValueError."""
        with self._close_lock:
            if self._handle:
                with self._ctx.lock:
                    lib.qattn_kv_cache_destroy(self._ctx.handle, self._handle)
                self._handle = None
                self._device_copy = {}
        _dependents.discard(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    @property
    def closed(self):
        return not self._handle

    def _call(self, fn, *args):
        if not self._handle:
            raise ValueError("the KVCache is closed")
        with self._ctx.lock:
            self._ctx.check(fn(self._ctx.handle, self._handle, *args))

    def _seq(self, name, seq_id):
        # the library range-checks ids with its own message; this only keeps ctypes from wrapping
        return _int_arg(name, seq_id, -2**31, _I32_MAX)

    # ------------------------------------------------------------ cache operations

    def append(self, seq_id, k, v, rotary_cos=None, rotary_sin=None, rotary_interleaved=True):
        """Append tokens to sequence seq_id: k, v [n_tokens, kv_heads, head_dim] (a 2-D
        [kv_heads, head_dim] is one token), float32/float16 numpy or float32/float16/bfloat16
        torch on the CPU. All or nothing: QattnCapacityError when the blocks (including a
        copy-on-write block) run out; INT8 storage refuses non-finite values (QattnValueError).
        With rotary_cos/rotary_sin ([rotary_len, rotary_dim / 2]), the keys are rotated at positions
        seq_len(seq_id) + t before they are stored (qattn_kv_cache_append_rotary); rotate the
        queries with qattn.rotary_apply at the same positions."""
        seq = self._seq("seq_id", seq_id)
        kt, vt = self._kv_input("k", k), self._kv_input("v", v)
        if kt.dtype != vt.dtype:
            raise TypeError("k has dtype %s but v has dtype %s; they must match" % (kt.obj.dtype, vt.obj.dtype))
        if kt.shape != vt.shape:
            raise ValueError("k has shape %s but v has shape %s; they must match" % (kt.shape, vt.shape))
        if (rotary_cos is None) != (rotary_sin is None):
            raise ValueError("rotary_cos and rotary_sin must be given together")
        if rotary_cos is None:
            self._call(lib.qattn_kv_cache_append, seq, kt.ptr, vt.ptr, kt.shape[0], kt.dtype)
        else:
            from ._kvfwd import _host_array
            _lib.require("qattn_kv_cache_append_rotary", "KVCache.append(rotary_cos=...)")
            cos_a, sin_a = _host_array("rotary_cos", rotary_cos, np.float32, 2), _host_array("rotary_sin", rotary_sin, np.float32, 2)
            if cos_a.shape != sin_a.shape:
                raise ValueError("rotary_cos has shape %s but rotary_sin has %s" % (cos_a.shape, sin_a.shape))
            self._call(lib.qattn_kv_cache_append_rotary, seq, kt.ptr, vt.ptr, kt.shape[0], kt.dtype, cos_a.ctypes.data,
                       sin_a.ctypes.data, cos_a.shape[0], 2 * cos_a.shape[1], 1 if rotary_interleaved else 0)
        self._version += 1

    def _kv_input(self, name, x):
        if _is_torch(x):
            if x.device.type != "cpu":
                raise ValueError("%s is on %s; the KV cache lives in host memory: call .cpu() first" % (name, x.device))
            x = x.detach().contiguous()
        elif isinstance(x, np.ndarray):
            x = np.ascontiguousarray(x)
        t = _wrap(name, x)
        if len(t.shape) == 2:
            t.shape = (1,) + t.shape
        want = (self.kv_heads, self.head_dim)
        if len(t.shape) != 3 or t.shape[1:] != want:
            raise ValueError("%s must be [n_tokens, kv_heads=%d, head_dim=%d]; got shape %s"
                             % (name, want[0], want[1], tuple(t.obj.shape)))
        return t

    def fork(self, src, dst):
        """Make empty sequence dst a copy of src sharing its blocks (no data copied; a later
        append to either copies their shared partial last block first)."""
        self._call(lib.qattn_kv_cache_fork, self._seq("src", src), self._seq("dst", dst))
        self._version += 1

    def free(self, seq_id):
        """Drop all tokens of seq_id; blocks no other sequence shares return to the free list."""
        self._call(lib.qattn_kv_cache_free_seq, self._seq("seq_id", seq_id))
        self._version += 1

    def seq_len(self, seq_id):
        n = ctypes.c_int64()
        self._call(lib.qattn_kv_cache_seq_len, self._seq("seq_id", seq_id), ctypes.byref(n))
        return n.value

    def __len__(self):
        return self.max_seqs

    def info(self):
        """qattn_kv_cache_info as a dict: n_blocks, free_blocks, used_blocks, block_bytes,
        bytes_total (all memory the cache holds), bytes_used, tokens_stored, n_active_seqs."""
        out = KVCacheInfo()
        self._call(lib.qattn_kv_cache_get_info, ctypes.byref(out))
        return {n: getattr(out, n) for n, _ in KVCacheInfo._fields_ if n != "reserved"}

    @property
    def nbytes(self):
        return self.info()["bytes_total"]

    def read(self, seq_id, start=0, n=None):
        """The dequantized K and V of tokens [start, start+n) of seq_id (n=None: to the end) as
        float32 numpy [n, kv_heads, head_dim]: exactly what decode sees."""
        seq = self._seq("seq_id", seq_id)
        start = _int_arg("start", start, -2**63, 2**63 - 1)
        if n is None:
            n = max(self.seq_len(seq) - start, 0)
        n = _int_arg("n", n, -2**63, 2**63 - 1)
        if n < 0:
            raise ValueError("n is %d; it must be >= 0" % n)
        if n > self.seq_len(seq):  # before allocating n rows: the library checks the exact range
            raise ValueError("n is %d but sequence %d holds %d tokens" % (n, seq, self.seq_len(seq)))
        k = np.zeros((n, self.kv_heads, self.head_dim), np.float32)
        v = np.zeros_like(k)
        self._call(lib.qattn_kv_cache_read, seq, start, n, k.ctypes.data if k.size else _EMPTY_PTR,
                   v.ctypes.data if v.size else _EMPTY_PTR)
        return k, v

    def set_calibration(self, calibration):
        """qattn_kv_cache_set_calibration: static channel transforms (a qattn.Calibration of this
        cache's kv_heads x head_dim) for an empty INT8 cache; decode and read apply them. The GPU
        decode does not: export (and a CUDA decode) of such a cache is refused."""
        _lib.require("qattn_kv_cache_set_calibration", "KVCache.set_calibration")
        from ._int8 import _calibration_struct
        cs, keep = _calibration_struct(calibration, self.kv_heads, self.head_dim)
        self._call(lib.qattn_kv_cache_set_calibration, ctypes.byref(cs))
        self._version += 1
        del keep

    def export(self):
        """qattn_kv_cache_export: the pointer-free layout as a dict, with copies of the arena
        (uint8 [arena_bytes]) and block table (int32 [max_seqs, max_blocks_per_seq], -1 unused)."""
        _lib.require("qattn_kv_cache_export", "KVCache.export")
        lay = KVCacheLayout()
        self._call(lib.qattn_kv_cache_export, ctypes.byref(lay))
        out = {n: getattr(lay, n) for n, _ in KVCacheLayout._fields_ if n not in ("arena", "block_table", "reserved")}
        out["dtype"] = _lib.KV_DTYPE_NAMES.get(lay.dtype, lay.dtype)
        out["arena"] = self._host_view(lay.arena, lay.arena_bytes, np.uint8).copy()
        out["block_table"] = self._host_view(lay.block_table, lay.table_entries, np.int32).copy().reshape(
            lay.max_seqs, lay.max_blocks_per_seq)
        return out

    @staticmethod
    def _host_view(ptr, n, dtype):
        if n == 0:
            return np.zeros(0, dtype)
        buf = (ctypes.c_char * (int(n) * np.dtype(dtype).itemsize)).from_address(ptr)
        return np.frombuffer(buf, dtype=dtype)

    # ------------------------------------------------------------ decode

    def decode(self, q, seq_ids, *, causal=True, window=None, scale=None, return_lse=False, out=None, stream=None):
        """Attention of each listed sequence's last Lq tokens (already appended) over its cache.

        q: [n_seqs, Lq, heads, head_dim] (Lq 1..64, heads a multiple of kv_heads), float32/
        float16 numpy or float32/float16/bfloat16 torch; seq_ids: n_seqs ints. causal (default
        True) makes the Lq new tokens causal among themselves; window: left look-back (int, or
        a (left, right) pair whose right must be -1 or, with causal, 0), None = unbounded.
        scale: None = 1/sqrt(head_dim). Returns o like q (q's dtype unless `out`), with
        return_lse also the natural-log LSE float32 [n_seqs, heads, Lq].

        A CUDA q runs qattn_kv_decode_cuda on a device copy of the cache (copied on the first
        call and again after any change; libqattn built with CUDA, head_dim 64 or 128), on
        `stream` or torch.cuda.current_stream()."""
        _lib.require("qattn_kv_decode", "KVCache.decode")
        if not self._handle:
            raise ValueError("the KVCache is closed")
        on_cuda = _is_torch(q) and q.device.type == "cuda"
        if _is_torch(q) and not on_cuda:
            q = q.detach().contiguous()
        elif isinstance(q, np.ndarray):
            q = np.ascontiguousarray(q)
        elif on_cuda:
            q = q.detach().contiguous()
        qt = _wrap("q", q)
        if len(qt.shape) != 4 or qt.shape[3] != self.head_dim:
            raise ValueError("q must be [n_seqs, seqlen_q, heads, head_dim=%d]; got shape %s" % (self.head_dim, qt.shape))
        ids = np.asarray(seq_ids.detach().cpu().numpy() if _is_torch(seq_ids) else seq_ids)
        if ids.ndim == 0:
            ids = ids.reshape(1)
        if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            raise TypeError("seq_ids must be a 1-D sequence of ints, got %r" % (seq_ids,))
        if ids.size and (ids.min() < -2**31 or ids.max() > _I32_MAX):
            raise ValueError("seq_ids hold values outside int32")
        ids = np.ascontiguousarray(ids, dtype=np.int32)
        n, lq, h, _ = qt.shape
        if ids.size != n:
            raise ValueError("q has %d sequences (dim 0) but seq_ids lists %d" % (n, ids.size))
        dp = DecodeParams()
        lib.qattn_decode_params_init(ctypes.byref(dp))
        dp.n_seqs = n
        dp.seqlen_q = _int_arg("seqlen_q (q dim 1)", lq, 0, _I32_MAX)
        dp.n_heads = _int_arg("heads (q dim 2)", h, 0, _I32_MAX)
        dp.q_dtype = qt.dtype
        dp.causal = 1 if causal else 0
        if window is not None:
            if isinstance(window, (tuple, list)):
                if len(window) != 2:
                    raise TypeError("window must be an int (left) or a (left, right) pair, got %r" % (window,))
                right = _int_arg("window[1]", window[1], -1, _I32_MAX)
                if right != -1 and not (causal and right == 0):
                    raise ValueError("decode supports no right window (got window=%r): use causal=True for 0, "
                                     "-1 for unbounded" % (window,))
                window = window[0]
            dp.window_left = _int_arg("window", window, -1, _I32_MAX)
        if scale is not None:
            if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating, np.integer)):
                raise TypeError("scale must be a float or None, got %s" % type(scale).__name__)
            if float(scale) == 0.0 or not np.isfinite(float(scale)):
                raise ValueError("scale is %r; it must be finite and non-zero (None = 1/sqrt(head_dim))" % (scale,))
            dp.scale = float(scale)
        if out is None:
            out = _empty_like_kind(qt, qt.shape, qt.dtype)
        ot = _wrap("out", out, output=True)
        if ot.kind != qt.kind or ot.device != qt.device:
            raise ValueError("out is a %s on %s but q is a %s on %s" % (ot.kind, ot.device, qt.kind, qt.device))
        if ot.shape != qt.shape:
            raise ValueError("out has shape %s; expected %s" % (ot.shape, qt.shape))
        st, acc = [], 1
        for d in reversed(ot.shape):
            st.append(acc)
            acc *= d
        if 0 not in ot.shape and ot.strides != tuple(reversed(st)):
            raise ValueError("out must be contiguous [n_seqs, seqlen_q, heads, head_dim]")
        (a0, a1), (b0, b1) = ot.nbytes_span(), qt.nbytes_span()
        if a0 < b1 and b0 < a1:
            raise ValueError("out overlaps q in memory")
        dp.q, dp.o, dp.o_dtype = qt.ptr, ot.ptr, ot.dtype
        dp.seq_ids = ids.ctypes.data if ids.size else _EMPTY_PTR
        lse = None
        if return_lse:
            lse = _empty_like_kind(qt, (n, h, lq), _lib.DTYPE_F32)
            dp.lse = _wrap("lse", lse, output=True).ptr
        keep = [qt, ot, ids, lse]
        if on_cuda:
            self._decode_cuda(qt, dp, stream)
        else:
            self._call(lib.qattn_kv_decode, ctypes.byref(dp))
        del keep
        return (ot.obj, lse) if return_lse else ot.obj

    def _decode_cuda(self, qt, dp, stream):
        _lib.require("qattn_kv_decode_cuda", "KVCache.decode on a CUDA tensor")
        torch = _torch()
        dev_index = qt.device_index
        cctx = _get_context("cuda", None, None, dev_index)
        with torch.cuda.device(dev_index):
            s = stream if stream is not None else torch.cuda.current_stream(dev_index)
            cached = self._device_copy.get(dev_index)
            if cached is None or cached[0] != self._version:
                lay = KVCacheLayout()
                self._call(lib.qattn_kv_cache_export, ctypes.byref(lay))
                arena = torch.from_numpy(self._host_view(lay.arena, lay.arena_bytes, np.uint8).copy())
                table = torch.from_numpy(self._host_view(lay.block_table, lay.table_entries, np.int32).copy())
                with torch.cuda.stream(s):
                    cached = (self._version, arena.to(qt.obj.device), table.to(qt.obj.device))
                self._device_copy[dev_index] = cached
            dev = KVDeviceCache()
            dev.arena = cached[1].data_ptr() or _EMPTY_PTR
            dev.block_table = cached[2].data_ptr() or _EMPTY_PTR
            dev.stream = s.cuda_stream
            if not self._handle:
                raise ValueError("the KVCache is closed")
            with self._ctx.lock, cctx.lock:
                cctx.check(lib.qattn_kv_decode_cuda(cctx.handle, self._handle, ctypes.byref(dev), ctypes.byref(dp)))
            # the device copy must outlive the queued kernel: tie it to the stream's work
            cached[1].record_stream(s)
            cached[2].record_stream(s)

    def __repr__(self):
        if not self._handle:
            return "KVCache(closed)"
        i = self.info()
        return ("KVCache(kv_heads=%d, head_dim=%d, block_size=%d, dtype=%r, blocks %d/%d used, %d active seqs)"
                % (self.kv_heads, self.head_dim, self.block_size, self.dtype, i["used_blocks"], i["n_blocks"],
                   i["n_active_seqs"]))
