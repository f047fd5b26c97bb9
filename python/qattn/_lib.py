"""ctypes mirror of include/qattn.h: the shared-library loader, the structs and the prototypes.

Nothing here is compiled: the structs below must match qattn.h field for field (same names,
same order, same fixed-width types); tests/test_abi.py compiles a small C program against the
header and compares every offset and size, so a drift in either file fails CI instead of
corrupting memory at run time.
"""
import ctypes
import glob
import os

# ---------------------------------------------------------------- enums (values from qattn.h)

QATTN_OK = 0
QATTN_ERR_NULL_POINTER = -1
QATTN_ERR_INVALID_ARGUMENT = -2
QATTN_ERR_UNSUPPORTED = -3
QATTN_ERR_OUT_OF_MEMORY = -4
QATTN_ERR_OVERFLOW = -5
QATTN_ERR_BACKEND = -6
QATTN_ERR_CAPACITY = -7

DTYPE_F32, DTYPE_F16, DTYPE_BF16, DTYPE_I8 = 0, 1, 2, 3

PRECISIONS = {"auto": 0, "fp32": 1, "fp16": 2, "bf16": 3, "int8": 4, "fp8_e4m3": 5, "fp8_e5m2": 6, "int4": 7}
INT8_SCHEMES = {"qattn": 0, "intfa": 1, "sage": 2}  # the names include/qattn.h and docs/FORMAT.md give
BACKENDS = {"auto": 0, "cpu": 1, "cuda": 2}
BACKEND_NAMES = {v: k for k, v in BACKENDS.items()}
ISAS = {"auto": 0, "ref": 1, "avx2": 2, "avxvnni": 3, "avx512": 4}
MAX_THREADS = 256  # QATTN_MAX_THREADS (tests/test_abi.py checks it against the header)


# ---------------------------------------------------------------- structs

class CtxOptions(ctypes.Structure):
    """qattn_ctx_options. The allocator hooks stay NULL (malloc/free): a Python allocator
    called from library worker threads would need the GIL and buys nothing here."""
    _fields_ = [
        ("backend", ctypes.c_int32),
        ("isa", ctypes.c_int32),
        ("n_threads", ctypes.c_int32),
        ("cuda_device", ctypes.c_int32),
        ("alloc", ctypes.c_void_p),
        ("free", ctypes.c_void_p),
        ("alloc_user", ctypes.c_void_p),
        ("cuda_kernels", ctypes.c_int32),
        ("reserved", ctypes.c_int32),
    ]


class CtxInfo(ctypes.Structure):
    """qattn_ctx_info."""
    _fields_ = [
        ("backend", ctypes.c_int32),
        ("isa", ctypes.c_int32),
        ("n_threads", ctypes.c_int32),
        ("cuda_available", ctypes.c_int32),
        ("isa_name", ctypes.c_char * 16),
        ("device_name", ctypes.c_char * 96),
    ]


class Params(ctypes.Structure):
    """qattn_params. Pointers are c_void_p (same size and alignment as any data pointer in
    the C ABI) so that numpy/torch addresses can be stored as plain integers."""
    _fields_ = [
        ("q", ctypes.c_void_p),
        ("k", ctypes.c_void_p),
        ("v", ctypes.c_void_p),
        ("o", ctypes.c_void_p),
        ("lse", ctypes.c_void_p),
        ("batch", ctypes.c_int64),
        ("seqlen_q", ctypes.c_int64),
        ("seqlen_k", ctypes.c_int64),
        ("n_heads", ctypes.c_int32),
        ("n_kv_heads", ctypes.c_int32),
        ("head_dim", ctypes.c_int32),
        ("qkv_dtype", ctypes.c_int32),
        ("o_dtype", ctypes.c_int32),
        ("precision", ctypes.c_int32),
        ("int8_scheme", ctypes.c_int32),
        ("causal", ctypes.c_int32),
        ("window_left", ctypes.c_int32),
        ("window_right", ctypes.c_int32),
        ("scale", ctypes.c_float),
        ("q_batch_stride", ctypes.c_int64),
        ("q_seq_stride", ctypes.c_int64),
        ("q_head_stride", ctypes.c_int64),
        ("k_batch_stride", ctypes.c_int64),
        ("k_seq_stride", ctypes.c_int64),
        ("k_head_stride", ctypes.c_int64),
        ("v_batch_stride", ctypes.c_int64),
        ("v_seq_stride", ctypes.c_int64),
        ("v_head_stride", ctypes.c_int64),
        ("o_batch_stride", ctypes.c_int64),
        ("o_seq_stride", ctypes.c_int64),
        ("o_head_stride", ctypes.c_int64),
        ("cu_seqlens_q", ctypes.c_void_p),
        ("cu_seqlens_k", ctypes.c_void_p),
        ("workspace", ctypes.c_void_p),
        ("workspace_size", ctypes.c_size_t),
        ("stream", ctypes.c_void_p),
        ("alibi_slopes", ctypes.c_void_p),
        ("alibi_batch_stride", ctypes.c_int64),
        ("softcap", ctypes.c_float),
        ("block_mask_q", ctypes.c_int32),
        ("block_mask", ctypes.c_void_p),
        ("block_mask_k", ctypes.c_int32),
        ("reserved0", ctypes.c_int32),
        ("block_mask_batch_stride", ctypes.c_int64),
        ("block_mask_head_stride", ctypes.c_int64),
        ("block_mask_row_stride", ctypes.c_int64),
    ]


class KVCacheParams(ctypes.Structure):
    """qattn_kvcache_params (qattn_forward_kvcache)."""
    _fields_ = [
        ("k_cache", ctypes.c_void_p),
        ("v_cache", ctypes.c_void_p),
        ("k_page_stride", ctypes.c_int64),
        ("k_seq_stride", ctypes.c_int64),
        ("k_head_stride", ctypes.c_int64),
        ("v_page_stride", ctypes.c_int64),
        ("v_seq_stride", ctypes.c_int64),
        ("v_head_stride", ctypes.c_int64),
        ("block_table", ctypes.c_void_p),
        ("block_table_stride", ctypes.c_int64),
        ("max_blocks", ctypes.c_int64),
        ("n_pages", ctypes.c_int64),
        ("cache_len", ctypes.c_int64),
        ("page_size", ctypes.c_int32),
        ("rotary_dim", ctypes.c_int32),
        ("cache_seqlens", ctypes.c_void_p),
        ("k_new", ctypes.c_void_p),
        ("v_new", ctypes.c_void_p),
        ("seqlen_new", ctypes.c_int64),
        ("k_new_batch_stride", ctypes.c_int64),
        ("k_new_seq_stride", ctypes.c_int64),
        ("k_new_head_stride", ctypes.c_int64),
        ("v_new_batch_stride", ctypes.c_int64),
        ("v_new_seq_stride", ctypes.c_int64),
        ("v_new_head_stride", ctypes.c_int64),
        ("rotary_cos", ctypes.c_void_p),
        ("rotary_sin", ctypes.c_void_p),
        ("rotary_len", ctypes.c_int64),
        ("rotary_interleaved", ctypes.c_int32),
        ("reserved0", ctypes.c_int32),
        ("reserved", ctypes.c_int64 * 4),
    ]


# Structs of the INT8 and KV-cache sections of qattn.h (checked by tests/test_abi.py).

GRANULARITIES = {"token": 0, "block": 1, "head": 2, "channel": 3}
GRANULARITY_NAMES = {v: k for k, v in GRANULARITIES.items()}
TENSOR_IDS = {"q": 0, "k": 1, "v": 2}
KV_DTYPES = {"fp16": DTYPE_F16, "bf16": DTYPE_BF16, "int8": DTYPE_I8}
KV_DTYPE_NAMES = {v: k for k, v in KV_DTYPES.items()}

class Int8Tensor(ctypes.Structure):
    """qattn_int8_tensor (64 bytes)."""
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("scale", ctypes.c_void_p),
        ("mean", ctypes.c_void_p),
        ("granularity", ctypes.c_int32),
        ("block_size", ctypes.c_int32),
        ("batch_stride", ctypes.c_int64),
        ("seq_stride", ctypes.c_int64),
        ("head_stride", ctypes.c_int64),
        ("reserved", ctypes.c_int64),
    ]


class Int8Inputs(ctypes.Structure):
    """qattn_int8_inputs (192 bytes)."""
    _fields_ = [("q", Int8Tensor), ("k", Int8Tensor), ("v", Int8Tensor)]


class CalibrationStruct(ctypes.Structure):
    """qattn_calibration."""
    _fields_ = [
        ("n_kv_heads", ctypes.c_int32),
        ("head_dim", ctypes.c_int32),
        ("tokens", ctypes.c_int64),
        ("k_factor", ctypes.c_void_p),
        ("k_mean", ctypes.c_void_p),
        ("v_mean", ctypes.c_void_p),
        ("q_absmax", ctypes.c_void_p),
        ("k_min", ctypes.c_void_p),
        ("k_max", ctypes.c_void_p),
    ]


class KVCacheOptions(ctypes.Structure):
    """qattn_kv_cache_options."""
    _fields_ = [
        ("n_kv_heads", ctypes.c_int32),
        ("head_dim", ctypes.c_int32),
        ("block_size", ctypes.c_int32),
        ("dtype", ctypes.c_int32),
        ("n_blocks", ctypes.c_int64),
        ("max_seqs", ctypes.c_int32),
        ("reserved", ctypes.c_int32),
        ("max_blocks_per_seq", ctypes.c_int64),
    ]


class KVCacheInfo(ctypes.Structure):
    """qattn_kv_cache_info."""
    _fields_ = [
        ("n_blocks", ctypes.c_int64),
        ("free_blocks", ctypes.c_int64),
        ("used_blocks", ctypes.c_int64),
        ("block_bytes", ctypes.c_int64),
        ("bytes_total", ctypes.c_int64),
        ("bytes_used", ctypes.c_int64),
        ("tokens_stored", ctypes.c_int64),
        ("n_active_seqs", ctypes.c_int32),
        ("reserved", ctypes.c_int32),
    ]


class DecodeParams(ctypes.Structure):
    """qattn_decode_params."""
    _fields_ = [
        ("q", ctypes.c_void_p),
        ("o", ctypes.c_void_p),
        ("lse", ctypes.c_void_p),
        ("seq_ids", ctypes.c_void_p),
        ("n_seqs", ctypes.c_int32),
        ("seqlen_q", ctypes.c_int32),
        ("n_heads", ctypes.c_int32),
        ("q_dtype", ctypes.c_int32),
        ("o_dtype", ctypes.c_int32),
        ("causal", ctypes.c_int32),
        ("window_left", ctypes.c_int32),
        ("scale", ctypes.c_float),
    ]


class KVCacheLayout(ctypes.Structure):
    """qattn_kv_cache_layout (qattn_kv_cache_export)."""
    _fields_ = [
        ("arena", ctypes.c_void_p),
        ("block_table", ctypes.c_void_p),
        ("arena_bytes", ctypes.c_int64),
        ("table_entries", ctypes.c_int64),
        ("n_blocks", ctypes.c_int64),
        ("block_bytes", ctypes.c_int64),
        ("max_blocks_per_seq", ctypes.c_int64),
        ("head_bytes", ctypes.c_int64),
        ("v_offset", ctypes.c_int64),
        ("ks_offset", ctypes.c_int64),
        ("vs_offset", ctypes.c_int64),
        ("n_kv_heads", ctypes.c_int32),
        ("head_dim", ctypes.c_int32),
        ("block_size", ctypes.c_int32),
        ("dtype", ctypes.c_int32),
        ("max_seqs", ctypes.c_int32),
        ("reserved", ctypes.c_int32),
    ]


class KVDeviceCache(ctypes.Structure):
    """qattn_kv_device_cache (qattn_kv_decode_cuda)."""
    _fields_ = [
        ("arena", ctypes.c_void_p),
        ("block_table", ctypes.c_void_p),
        ("stream", ctypes.c_void_p),
    ]


# ---------------------------------------------------------------- loading

_LIB_NAMES = ("libqattn.so", "libqattn.dylib", "qattn.dll")


def _package_dir():
    return os.path.dirname(os.path.abspath(__file__))


def candidate_paths():
    """Where the shared library is looked for, in order:
    1. $QATTN_LIBRARY (a file path), so a user or CI can pin one build;
    2. the package folder (what `pip install ./python` bundles);
    3. the build tree of the checkout this package sits in (python/qattn -> repo root):
       build/ first, then any other build*/ folder, newest first (PYTHONPATH=python use)."""
    env = os.environ.get("QATTN_LIBRARY")
    if env:
        return [env]
    out = [os.path.join(_package_dir(), n) for n in _LIB_NAMES]
    root = os.path.dirname(os.path.dirname(_package_dir()))
    dirs = [os.path.join(root, "build")]
    others = [d for d in glob.glob(os.path.join(root, "build*")) if os.path.isdir(d) and d not in dirs]
    others.sort(key=lambda d: os.path.getmtime(d), reverse=True)
    for d in dirs + others:
        out += [os.path.join(d, n) for n in _LIB_NAMES]
    return out


def _load():
    tried = []
    for path in candidate_paths():
        if not os.path.isfile(path):
            tried.append(path + " (missing)")
            continue
        try:
            return ctypes.CDLL(path), path
        except OSError as e:  # a broken or foreign-architecture file: say so, keep looking
            tried.append("%s (%s)" % (path, e))
    raise ImportError(
        "qattn: cannot find the shared library libqattn.so. Build it (cmake -S . -B build && "
        "cmake --build build), set QATTN_LIBRARY=/path/to/libqattn.so, or pip install ./python. Tried:\n  "
        + "\n  ".join(tried))


def _prototype(lib):
    c = ctypes
    S = c.c_int  # qattn_status: a C enum, int-sized
    P = c.POINTER
    protos = {
        "qattn_status_str": (c.c_char_p, [c.c_int]),
        "qattn_version": (c.c_char_p, []),
        "qattn_ctx_create": (S, [P(c.c_void_p), P(CtxOptions)]),
        "qattn_ctx_create_ex": (S, [P(c.c_void_p), P(CtxOptions), c.c_char_p, c.c_size_t]),
        "qattn_ctx_destroy": (None, [c.c_void_p]),
        "qattn_ctx_last_error": (c.c_char_p, [c.c_void_p]),
        "qattn_ctx_get_info": (S, [c.c_void_p, P(CtxInfo)]),
        "qattn_ctx_set_threads": (S, [c.c_void_p, c.c_int32]),
        "qattn_params_init": (None, [P(Params)]),
        "qattn_params_set_contiguous": (None, [P(Params)]),
        "qattn_supports": (S, [c.c_void_p, P(Params)]),
        "qattn_workspace_size": (S, [c.c_void_p, P(Params), P(c.c_size_t)]),
        "qattn_forward": (S, [c.c_void_p, P(Params)]),
        "qattn_oracle_f64": (S, [c.c_void_p, P(Params), c.c_void_p, c.c_void_p]),
    }
    V = c.c_void_p
    i32, i64 = c.c_int32, c.c_int64
    # INT8 quantization and KV cache sections: prototyped only where this build exports them
    # (an older libqattn.so still loads; the Python functions then say what is missing).
    optional = {
        "qattn_int8_scale_count": (S, [V, P(Params), i32, i32, i32, P(i64)]),
        "qattn_quantize_int8": (S, [V, P(Params), i32, P(Int8Tensor)]),
        "qattn_dequantize_int8": (S, [V, P(Params), i32, P(Int8Tensor), V]),
        "qattn_forward_quantized": (S, [V, P(Params), P(Int8Inputs)]),
        "qattn_calibrate": (S, [V, P(Params), P(CalibrationStruct)]),
        "qattn_forward_calibrated": (S, [V, P(Params), P(CalibrationStruct)]),
        "qattn_kv_cache_set_calibration": (S, [V, V, P(CalibrationStruct)]),
        "qattn_kv_cache_create": (S, [V, P(KVCacheOptions), P(V)]),
        "qattn_kv_cache_destroy": (None, [V, V]),
        "qattn_kv_cache_append": (S, [V, V, i32, V, V, i64, i32]),
        "qattn_kv_cache_free_seq": (S, [V, V, i32]),
        "qattn_kv_cache_fork": (S, [V, V, i32, i32]),
        "qattn_kv_cache_seq_len": (S, [V, V, i32, P(i64)]),
        "qattn_kv_cache_get_info": (S, [V, V, P(KVCacheInfo)]),
        "qattn_kv_cache_read": (S, [V, V, i32, i64, i64, V, V]),
        "qattn_decode_params_init": (None, [P(DecodeParams)]),
        "qattn_kv_decode": (S, [V, V, P(DecodeParams)]),
        "qattn_kv_cache_export": (S, [V, V, P(KVCacheLayout)]),
        "qattn_kv_decode_cuda": (S, [V, V, P(KVDeviceCache), P(DecodeParams)]),
        "qattn_kv_cache_append_rotary": (S, [V, V, i32, V, V, i64, i32, V, V, i64, i32, i32]),
        "qattn_kvcache_params_init": (None, [P(KVCacheParams)]),
        "qattn_kvcache_params_set_contiguous": (None, [P(KVCacheParams), P(Params)]),
        "qattn_forward_kvcache": (S, [V, P(Params), P(KVCacheParams)]),
        "qattn_rotary_apply": (S, [V, V, i32, i64, i32, i32, i64, V, V, i64, i32, i32]),
    }
    protos.update({k: v for k, v in optional.items() if hasattr(lib, k)})
    for name, (res, args) in protos.items():
        fn = getattr(lib, name)
        fn.restype = res
        fn.argtypes = args
    return lib


lib, library_path = _load()
_prototype(lib)


def status_str(status):
    s = lib.qattn_status_str(status)
    return s.decode() if s else "unknown qattn status %d" % status


def has_symbol(name):
    """Whether this libqattn exports `name` (the INT8 / KV-cache functions are optional)."""
    return hasattr(lib, name)


def require(name, what):
    if not has_symbol(name):
        raise NotImplementedError("%s needs %s, which %s does not export (an older libqattn?); rebuild it"
                                  % (what, name, library_path))
