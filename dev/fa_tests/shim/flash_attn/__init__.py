"""A CPU stand-in for the `flash_attn` package that maps FlashAttention's Python API onto qattn.

Used only by dev/fa_tests/run.sh to run FlashAttention's own forward tests against qattn; see
docs/fa_compat.md. bert_padding.py and layers/rotary.py are FlashAttention's own files, copied
from a snapshot into a temporary directory at run time (never into this repository).
"""
__version__ = "qattn-shim"

from flash_attn.flash_attn_interface import (  # noqa: E402
    Unsupported,
    flash_attn_func,
    flash_attn_kvpacked_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_func,
    flash_attn_varlen_kvpacked_func,
    flash_attn_varlen_qkvpacked_func,
    flash_attn_with_kvcache,
)
