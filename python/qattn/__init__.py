"""qattn: exact and INT8 memory-efficient attention (Python binding over libqattn via ctypes).

    import qattn
    o = qattn.attention(q, k, v, causal=True)            # q, k, v: [batch, seq, heads, dim]
    o = qattn.attention(q, k, v, layout="bhsd")          # torch SDPA's [batch, heads, seq, dim]
    ref = qattn.oracle(q, k, v, causal=True)             # FP64 numpy reference
    qattn.info()                                         # backend, ISA, threads, version

The library is found in the package folder, $QATTN_LIBRARY, or the build*/ folders of the
checkout (see qattn._lib.candidate_paths).
"""
import atexit as _atexit

from . import _lib
from ._core import (QattnError, QattnMemoryError, QattnUnsupportedError, QattnValueError, attention, info,
                    oracle, _destroy_contexts)

__version__ = _lib.lib.qattn_version().decode()
library_path = _lib.library_path

# TODO(int8, kv-cache): qattn.h's "INT8 quantization" and "KV cache and decode" sections are
# empty in this version of the library; qattn.quantize() and qattn.KVCache will mirror them
# (structs in _lib.py, checked by tests/test_abi.py) once they land. precision="int8" is
# already passed through to qattn_forward and raises NotImplementedError until a backend
# implements it.

_atexit.register(_destroy_contexts)

__all__ = ["attention", "oracle", "info", "QattnError", "QattnValueError", "QattnUnsupportedError",
           "QattnMemoryError", "__version__", "library_path"]
