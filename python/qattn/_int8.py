"""quantize(), QuantizedTensor.dequantize() and attention_quantized(): the INT8 section of qattn.h.

Nothing is computed here: the codes, scales and means are the library's (qattn_quantize_int8),
laid out exactly as qattn.h / docs/FORMAT.md describe; this module only allocates the arrays
with the right shapes, checks what the library cannot see (dtypes, extents, devices) and passes
pointers.
"""
import ctypes
import dataclasses
from typing import Any, Optional

import numpy as np

from . import _lib
from ._lib import lib, Int8Tensor, Int8Inputs
from ._core import (_build, _get_context, _int_arg, _is_torch, _lse_output, _set_output, _torch, _wrap, _empty_like_kind,
                    _EMPTY_PTR)


@dataclasses.dataclass
class QuantizedTensor:
    """One INT8 tensor as qattn_int8_tensor describes it: x ~= data * scale + mean.

    data:  int8 codes in [-127, 127] with the FP tensor's shape and layout ([B, L, Ht, D] for
           layout "bshd", [B, Ht, L, D] for "bhsd", packed [total, Ht, D] with cu_seqlens).
    scale: float32, contiguous, laid out by granularity (qattn.h):
           "token" [B, L, Ht] (varlen [total, Ht]), "block" [B, Ht, ceil(L / block_size)],
           "head" [B, Ht], "channel" [B, Ht, D].
    mean:  float32 [B, Ht, D] smoothing mean (smooth=True), else None.
    numpy arrays, or torch CPU tensors sharing their memory when the input was a torch tensor.
    """
    data: Any
    scale: Any
    mean: Optional[Any]
    granularity: str
    block_size: int
    layout: str = "bshd"
    cu_seqlens: Optional[np.ndarray] = None
    max_seqlen: Optional[int] = None

    @property
    def shape(self):
        return tuple(self.data.shape)

    def dequantize(self, *, threads=None):
        """code * scale + mean as float32 (qattn_dequantize_int8), in data's shape and layout;
        the same kind (numpy / torch) as data."""
        _lib.require("qattn_dequantize_int8", "QuantizedTensor.dequantize")
        codes = _host("data", self.data, np.int8)
        out = np.zeros(codes.shape, dtype=np.float32)
        p, meta, keep = _shape_params(out, self.layout, self.cu_seqlens, self.max_seqlen)
        t, keep2 = _int8_struct("tensor", self, p, _lib.TENSOR_IDS["q"], meta)
        ctx = _get_context("cpu", threads)
        with ctx.lock:
            ctx.check(lib.qattn_dequantize_int8(ctx.handle, ctypes.byref(p), _lib.TENSOR_IDS["q"], ctypes.byref(t),
                                                out.ctypes.data if out.size else _EMPTY_PTR))
        del keep, keep2
        return _torch().from_numpy(out) if _is_torch(self.data) else out


def _host(name, x, dtype):
    """A CPU numpy view of x (numpy array or CPU torch tensor) of exactly `dtype`."""
    if _is_torch(x):
        if x.device.type != "cpu":
            raise ValueError("%s is on %s; INT8 quantization runs on the CPU (host memory): call .cpu() first"
                             % (name, x.device))
        x = x.detach()
        if x.is_conj() or x.is_neg():
            x = x.resolve_conj().resolve_neg()
        torch = _torch()
        want = {np.int8: torch.int8, np.float32: torch.float32}[dtype]
        if x.dtype != want:
            raise TypeError("%s has dtype %s; expected %s" % (name, x.dtype, want))
        x = x.numpy()
    elif not isinstance(x, np.ndarray):
        raise TypeError("%s must be a numpy.ndarray or torch.Tensor, got %s" % (name, type(x).__name__))
    if x.dtype != np.dtype(dtype):
        raise TypeError("%s has dtype %s; expected %s" % (name, x.dtype, np.dtype(dtype).name))
    return x


def _shape_params(x, layout, cu_seqlens, max_seqlen):
    """qattn_params describing FP tensor x in every slot (q = k = v, H = HK): the shapes,
    strides, and varlen offsets that quantization reads through p."""
    p, _, _, _, meta, keep = _build(x, x, x, causal=False, scale=None, window=None, precision=None, int8_scheme=None,
                                    cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens, max_seqlen_q=max_seqlen,
                                    max_seqlen_k=max_seqlen, layout=layout)
    return p, meta, keep


def _scale_count(p, which, granularity, block_size):
    n = ctypes.c_int64()
    ctx = _get_context("cpu")
    with ctx.lock:
        ctx.check(lib.qattn_int8_scale_count(ctx.handle, ctypes.byref(p), which, granularity, block_size,
                                             ctypes.byref(n)))
    return n.value


def _scale_shape(p, meta, granularity, block_size, ht):
    B, L, D = p.batch, p.seqlen_q, p.head_dim
    if granularity == 0:
        return (meta["o_shape"][0], ht) if meta["varlen"] else (B, L, ht)
    if granularity == 1:
        return (B, ht, -(-L // block_size))
    if granularity == 2:
        return (B, ht)
    return (B, ht, D)


def _strides_of(arr, meta):
    """(batch, seq, head) element strides of an int8 array in the params' layout."""
    st = tuple(s // arr.itemsize for s in arr.strides)
    if meta["varlen"]:
        return (0, st[0], st[1])
    ax = (0, 1, 2) if meta["layout"] == "bshd" else (0, 2, 1)
    return tuple(st[a] for a in ax)


def _int8_struct(name, qt, p, which, meta):
    """Check a QuantizedTensor against params p (tensor `which`) and fill a qattn_int8_tensor.
    The library cannot know the arrays' extents: every size is checked here."""
    if not isinstance(qt, QuantizedTensor):
        raise TypeError("%s must be a qattn.QuantizedTensor (from qattn.quantize), got %s" % (name, type(qt).__name__))
    if qt.granularity not in _lib.GRANULARITIES:
        raise ValueError("%s.granularity must be one of %s, got %r" % (name, sorted(_lib.GRANULARITIES), qt.granularity))
    gran = _lib.GRANULARITIES[qt.granularity]
    block = _int_arg("%s.block_size" % name, qt.block_size, 1, 2**31 - 1) if gran == 1 else 1
    data = _host(name + ".data", qt.data, np.int8)
    scale = _host(name + ".scale", qt.scale, np.float32)
    ht = p.n_heads if which == 0 else p.n_kv_heads
    if data.size and (data.ndim < 1 or data.shape[-1] > 1 and data.strides[-1] != 1):
        raise ValueError("%s.data: the last (head_dim) dimension must be contiguous" % name)
    if any(s < 0 for s in data.strides):
        raise ValueError("%s.data has negative strides %s; pass a fresh array" % (name, data.strides))
    count = _scale_count(p, which, gran, block)
    if not scale.flags.c_contiguous or scale.size != count:
        raise ValueError("%s.scale must be a contiguous float32 array of %d values %s for granularity %r; got shape %s%s"
                         % (name, count, _scale_shape(p, meta, gran, block, ht), qt.granularity, scale.shape,
                            "" if scale.flags.c_contiguous else " (not contiguous)"))
    t = Int8Tensor()
    t.granularity, t.block_size = gran, block
    t.data = data.ctypes.data if data.size else _EMPTY_PTR
    t.scale = scale.ctypes.data if scale.size else _EMPTY_PTR
    keep = [data, scale]
    if qt.mean is not None:
        mean = _host(name + ".mean", qt.mean, np.float32)
        want = (p.batch, ht, p.head_dim)
        if not mean.flags.c_contiguous or mean.size != int(np.prod(want)):
            raise ValueError("%s.mean must be a contiguous float32 array of shape %s, got %s" % (name, want, mean.shape))
        t.mean = mean.ctypes.data if mean.size else _EMPTY_PTR
        keep.append(mean)
    t.batch_stride, t.seq_stride, t.head_stride = _strides_of(data, meta)
    return t, keep


def quantize(x, granularity="token", *, block_size=64, smooth=False, layout="bshd", cu_seqlens=None,
             max_seqlen=None, tensor="q", threads=None):
    """Symmetric INT8 quantization of one attention input (qattn_quantize_int8).

    x: [B, L, Ht, D] (layout "bshd") or [B, Ht, L, D] ("bhsd"), or packed [total, Ht, D] with
    cu_seqlens (batch+1 int32 offsets); float32/float16 numpy or float32/float16/bfloat16 torch
    on the CPU. granularity: "token" | "block" (block_size tokens of one sequence and head) |
    "head" | "channel" (which values share one scale; qattn.h gives the scale layouts).
    smooth=True subtracts the per-(sequence, head) channel mean over tokens first (returned as
    .mean). Codes: rne((x - mean) * 127 / amax) in [-127, 127], scale = amax / 127 (0 and codes 0
    for an all-zero group). Non-finite inputs raise QattnValueError naming the position.
    `tensor` ("q", "k", "v") only names x in the library's messages.

    Returns a QuantizedTensor (numpy arrays, or torch CPU tensors for a torch input)."""
    _lib.require("qattn_quantize_int8", "qattn.quantize")
    if granularity not in _lib.GRANULARITIES:
        raise ValueError("granularity must be one of %s, got %r" % (sorted(_lib.GRANULARITIES), granularity))
    if tensor not in _lib.TENSOR_IDS:
        raise ValueError("tensor must be 'q', 'k' or 'v', got %r" % (tensor,))
    gran = _lib.GRANULARITIES[granularity]
    block = _int_arg("block_size", block_size, 1, 2**31 - 1) if gran == 1 else 1
    if _is_torch(x) and x.device.type != "cpu":
        raise ValueError("x is on %s; INT8 quantization runs on the CPU (host memory): call .cpu() first" % x.device)
    p, meta, keep = _shape_params(x, layout, cu_seqlens, max_seqlen)
    which = _lib.TENSOR_IDS[tensor]
    xt = _wrap("x", x)
    codes = np.zeros(xt.shape, dtype=np.int8)
    ht = p.n_heads
    scale = np.zeros(_scale_shape(p, meta, gran, block, ht), dtype=np.float32)
    count = _scale_count(p, which, gran, block)
    if scale.size != count:  # the documented layout and the library disagree: never hand over a short array
        raise AssertionError("qattn: scale layout %s (%d) != qattn_int8_scale_count %d"
                             % (scale.shape, scale.size, count))
    mean = np.zeros((p.batch, ht, p.head_dim), dtype=np.float32) if smooth else None
    t = Int8Tensor()
    t.granularity, t.block_size = gran, block
    t.data = codes.ctypes.data if codes.size else _EMPTY_PTR
    t.scale = scale.ctypes.data if scale.size else _EMPTY_PTR
    if mean is not None:
        t.mean = mean.ctypes.data if mean.size else _EMPTY_PTR
    t.batch_stride, t.seq_stride, t.head_stride = _strides_of(codes, meta)
    ctx = _get_context("cpu", threads)
    with ctx.lock:
        ctx.check(lib.qattn_quantize_int8(ctx.handle, ctypes.byref(p), which, ctypes.byref(t)))
    del keep
    cu = None
    if cu_seqlens is not None:
        cu = np.ascontiguousarray(cu_seqlens.detach().cpu().numpy() if _is_torch(cu_seqlens) else cu_seqlens,
                                  dtype=np.int32)
    if _is_torch(x):
        torch = _torch()
        codes, scale = torch.from_numpy(codes), torch.from_numpy(scale)
        mean = None if mean is None else torch.from_numpy(mean)
    return QuantizedTensor(codes, scale, mean, granularity, int(block_size), layout, cu,
                           None if max_seqlen is None else int(max_seqlen))


def attention_quantized(q, k, v, *, causal=False, scale=None, window=None, int8_scheme=None, return_lse=False,
                        out=None, out_dtype=None, threads=None, isa=None):
    """Attention on pre-quantized inputs (qattn_forward_quantized), CPU only.

    q, k, v: QuantizedTensor (from qattn.quantize, or built by hand with the same layouts), all
    with the same layout and, for varlen, cu_seqlens (q's offsets are cu_seqlens_q, k's and v's
    must be equal and are cu_seqlens_k). The result is attention of the dequantized tensors
    computed with INT8 x INT8 -> INT32 products (docs/FORMAT.md §2-3): int8_scheme "qattn"
    (default), "intfa" (V "head" or "channel") or "sage". Q and K: any granularity but
    "channel"; Q smoothing is refused. Options as in qattn.attention. Returns float32 (or
    out_dtype: np.float16 / torch.float16 / torch.bfloat16, or `out`) in q's layout, same kind
    as q.data; with return_lse also the LSE [B, H, Lq] (varlen [H, total_q])."""
    _lib.require("qattn_forward_quantized", "qattn.attention_quantized")
    for n, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, QuantizedTensor):
            raise TypeError("%s must be a qattn.QuantizedTensor (from qattn.quantize), got %s" % (n, type(t).__name__))
    kinds = {n: _is_torch(t.data) for n, t in (("q", q), ("k", k), ("v", v))}
    if len(set(kinds.values())) != 1:
        raise TypeError("q, k and v must all hold numpy arrays or all torch tensors; got %s"
                        % {n: ("torch" if b else "numpy") for n, b in kinds.items()})
    if k.layout != q.layout or v.layout != q.layout:
        raise ValueError("q, k, v have layouts %s, %s, %s; they must match" % (q.layout, k.layout, v.layout))
    if (q.cu_seqlens is None) != (k.cu_seqlens is None) or (k.cu_seqlens is None) != (v.cu_seqlens is None):
        raise ValueError("q, k and v must all be varlen (cu_seqlens) or none")
    if k.cu_seqlens is not None and not np.array_equal(np.asarray(k.cu_seqlens), np.asarray(v.cu_seqlens)):
        raise ValueError("k.cu_seqlens and v.cu_seqlens differ")
    # Shapes, masks and offsets through the FP parameter builder, on stand-ins of the right
    # shape that occupy D floats (stride 0 elsewhere): the library ignores q/k/v here.
    stand = []
    for n, t in (("q", q), ("k", k), ("v", v)):
        d = _host(n + ".data", t.data, np.int8)
        zero = np.zeros(d.shape[-1:] if d.ndim else (0,), dtype=np.float32)
        stand.append(np.broadcast_to(zero, d.shape))
    p, qt, _, _, meta, keep = _build(stand[0], stand[1], stand[2], causal=causal, scale=scale, window=window,
                                     precision="int8", int8_scheme=int8_scheme, cu_seqlens_q=q.cu_seqlens,
                                     cu_seqlens_k=k.cu_seqlens, max_seqlen_q=q.max_seqlen,
                                     max_seqlen_k=k.max_seqlen, layout=q.layout)
    qi = Int8Inputs()
    keep2 = []
    for n, t, which in (("q", q, 0), ("k", k, 1), ("v", v, 2)):
        st, kp = _int8_struct(n, t, p, which, meta)
        setattr(qi, n, st)
        keep2 += kp
    torch = _torch() if kinds["q"] else None
    if out is None:
        if out_dtype is None:
            out = np.empty(meta["o_shape"], np.float32) if torch is None else torch.empty(meta["o_shape"])
        elif torch is None:
            out = np.empty(meta["o_shape"], np.dtype(out_dtype))
        else:
            out = torch.empty(meta["o_shape"], dtype=out_dtype)
    ot = _wrap("out", out, output=True)
    if ot.device != "cpu" or (ot.kind == "torch") != (torch is not None):
        raise ValueError("out must be a CPU %s like q.data" % ("torch tensor" if torch is not None else "numpy array"))
    _set_output(p, ot, meta)
    lse = None
    if return_lse:
        lse = _lse_output(p, ot, meta["lse_shape"], keep)
    ctx = _get_context("cpu", threads, isa)
    with ctx.lock:
        ctx.check(lib.qattn_forward_quantized(ctx.handle, ctypes.byref(p), ctypes.byref(qi)))
    del keep, keep2
    return (ot.obj, lse) if return_lse else ot.obj


@dataclasses.dataclass
class Calibration:
    """Static channel transforms of the default INT8 scheme for one layer (qattn_calibration,
    docs/FORMAT.md section 7): float32 numpy arrays [HK, D].

    k_factor: powers of two f (Q channel times f, K channel minus k_mean divided by f);
    k_mean, v_mean: means over the calibration tokens; q_absmax, k_min, k_max: the running
    statistics qattn.calibrate accumulates (None after load(): a file holds the first three).
    tokens: key tokens seen."""
    k_factor: np.ndarray
    k_mean: np.ndarray
    v_mean: np.ndarray
    q_absmax: Optional[np.ndarray] = None
    k_min: Optional[np.ndarray] = None
    k_max: Optional[np.ndarray] = None
    tokens: int = 0

    @property
    def shape(self):
        return tuple(self.k_factor.shape)

    def to(self, device):
        """A copy whose k_factor, k_mean, v_mean are float32 torch tensors on device (e.g. "cuda:0"),
        what qattn.attention reads for CUDA inputs (the running statistics stay behind)."""
        torch = _torch()
        dev = [torch.as_tensor(np.asarray(getattr(self, n), dtype=np.float32)).to(device).contiguous() for n in _CAL_FIELDS[:3]]
        return Calibration(dev[0], dev[1], dev[2], tokens=self.tokens)

    def save(self, path):
        """Write the file `qattn calibrate` writes: float32 .npy [3, HK, D] = k_factor, k_mean, v_mean."""
        np.save(path, np.stack([self.k_factor, self.k_mean, self.v_mean]).astype(np.float32))

    @classmethod
    def load(cls, path):
        """Read a calibration file (qattn calibrate, Calibration.save)."""
        a = np.load(path)
        if a.dtype != np.float32 or a.ndim != 3 or a.shape[0] != 3:
            raise ValueError("%s: a calibration file is float32 [3, HK, D]; got %s %s" % (path, a.dtype, a.shape))
        return cls(np.ascontiguousarray(a[0]), np.ascontiguousarray(a[1]), np.ascontiguousarray(a[2]))


_CAL_FIELDS = ("k_factor", "k_mean", "v_mean", "q_absmax", "k_min", "k_max")


def _calibration_struct(cal, kv_heads, head_dim, stats=False, device=None):
    """A qattn_calibration over cal's arrays (checked: float32, contiguous, [HK, D]): numpy arrays, or
    with device (a torch device of CUDA inputs) torch tensors on it (Calibration.to)."""
    if not isinstance(cal, Calibration):
        raise TypeError("calibration must be a qattn.Calibration (from qattn.calibrate or Calibration.load), got %s"
                        % type(cal).__name__)
    cs = _lib.CalibrationStruct()
    cs.n_kv_heads, cs.head_dim, cs.tokens = kv_heads, head_dim, int(cal.tokens)
    keep = []
    for name in _CAL_FIELDS[:6 if stats else 3]:
        a = getattr(cal, name)
        if a is None:
            raise ValueError("calibration.%s is None; qattn.calibrate needs the running statistics (start from "
                             "calibration=None to begin new ones)" % name)
        if device is not None:
            torch = _torch()
            if (not _is_torch(a) or a.device != device or a.dtype != torch.float32 or not a.is_contiguous()
                    or tuple(a.shape) != (kv_heads, head_dim)):
                raise ValueError("calibration.%s must be a contiguous float32 tensor of shape %s on %s for CUDA inputs "
                                 "(Calibration.to(device)), got %s" % (name, (kv_heads, head_dim), device,
                                                                       getattr(a, "device", type(a).__name__)))
            setattr(cs, name, a.data_ptr())
            keep.append(a)
            continue
        if not isinstance(a, np.ndarray) or a.dtype != np.float32 or not a.flags.c_contiguous or a.shape != (kv_heads, head_dim):
            raise ValueError("calibration.%s must be a contiguous float32 numpy array of shape %s, got %s"
                             % (name, (kv_heads, head_dim), getattr(a, "shape", type(a).__name__)))
        if not a.flags.writeable and stats:
            raise ValueError("calibration.%s is read-only" % name)
        setattr(cs, name, a.ctypes.data)
        keep.append(a)
    return cs, keep


def calibrate(q, k, v, *, calibration=None, layout="bshd", cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None,
              max_seqlen_k=None, threads=None):
    """Accumulate sample q, k, v of one layer into a Calibration (qattn_calibrate), CPU only.

    Shapes, layouts and dtypes as in qattn.attention (every position counts; no mask). With
    calibration=None, new statistics start; otherwise the given Calibration (from an earlier
    call) is updated in place. Returns it; pass it as qattn.attention(..., precision="int8",
    calibration=cal), or save it (Calibration.save, the `qattn calibrate` file format).
    Non-finite samples raise QattnValueError and leave the calibration unchanged."""
    _lib.require("qattn_calibrate", "qattn.calibrate")
    p, qt, _, _, meta, keep = _build(q, k, v, causal=False, scale=None, window=None, precision=None, int8_scheme=None,
                                     cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_q=max_seqlen_q,
                                     max_seqlen_k=max_seqlen_k, layout=layout)
    if qt.device != "cpu":
        raise ValueError("q is on %s; qattn.calibrate reads host memory: call .cpu() first" % qt.device)
    hk, d = p.n_kv_heads, p.head_dim
    if calibration is None:
        z = lambda: np.zeros((hk, d), dtype=np.float32)
        calibration = Calibration(z(), z(), z(), z(), z(), z(), 0)
    cs, ckeep = _calibration_struct(calibration, hk, d, stats=True)
    ctx = _get_context("cpu", threads)
    with ctx.lock:
        ctx.check(lib.qattn_calibrate(ctx.handle, ctypes.byref(p), ctypes.byref(cs)))
    calibration.tokens = int(cs.tokens)
    del keep, ckeep
    return calibration
