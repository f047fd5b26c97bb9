"""qattn: exact and INT8 memory-efficient attention (Python binding over libqattn via ctypes).

    import qattn
    o = qattn.attention(q, k, v, causal=True)            # q, k, v: [batch, seq, heads, dim]
    o = qattn.attention(q, k, v, layout="bhsd")          # torch SDPA's [batch, heads, seq, dim]
    ref = qattn.oracle(q, k, v, causal=True)             # FP64 numpy reference
    m = qattn.block_mask("random", 8, 4096, density=0.1)  # block-sparse map [H, nq, nk], 64 x 64 blocks
    o = qattn.attention(q, k, v, block_mask=m, block_size=64)
    qattn.info()                                         # backend, ISA, threads, version
    qk = qattn.quantize(k, "token", smooth=True)         # INT8 codes, scales, mean (qattn.h layouts)
    o = qattn.attention_quantized(qq, qk, qv)            # attention on pre-quantized inputs
    cal = qattn.calibrate(q, k, v)                       # INT8 static channel transforms of a layer
    o = qattn.attention(q, k, v, precision="int8", calibration=cal)
    with qattn.KVCache(kv_heads=2, head_dim=64, dtype="int8", capacity_blocks=256, max_seqs=8) as c:
        c.append(0, k0, v0); o = c.decode(q0, [0])       # paged KV cache and decode
    o = qattn.attention_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=lens,
                                     block_table=table, causal=True)  # flash_attn_with_kvcache

The library is found in the package folder, $QATTN_LIBRARY, or the build*/ folders of the
checkout (see qattn._lib.candidate_paths).
"""
import atexit as _atexit

from . import _lib
from ._core import (QattnCapacityError, QattnError, QattnMemoryError, QattnUnsupportedError, QattnValueError, attention, info,
                    oracle, _destroy_contexts)

__version__ = _lib.lib.qattn_version().decode()
library_path = _lib.library_path

from ._blockmask import block_mask
from ._int8 import Calibration, QuantizedTensor, attention_quantized, calibrate, quantize
from ._kvcache import KVCache
from ._kvfwd import attention_with_kvcache, rotary_apply

_atexit.register(_destroy_contexts)

__all__ = ["QattnCapacityError", "attention", "oracle", "info", "QattnError", "QattnValueError", "QattnUnsupportedError",
           "QattnMemoryError", "QuantizedTensor", "quantize", "attention_quantized", "Calibration", "calibrate", "KVCache", "attention_with_kvcache", "rotary_apply", "block_mask", "__version__", "library_path"]
