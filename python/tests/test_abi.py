"""The ctypes structs in qattn/_lib.py must match include/qattn.h byte for byte: compile a tiny C
program that prints sizeof and every field's offsetof from the real header, and compare.
A field added, removed, reordered or retyped on either side fails here (or fails to compile)."""
import ctypes
import os
import shutil
import subprocess

import pytest

from qattn import _lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEADER_DIR = os.path.join(ROOT, "include")
STRUCTS = {"qattn_params": _lib.Params, "qattn_ctx_options": _lib.CtxOptions, "qattn_ctx_info": _lib.CtxInfo}
# Mirrored ahead of their bindings; checked only once the header declares them.
OPTIONAL = {"qattn_int8_tensor": _lib.Int8Tensor, "qattn_int8_inputs": _lib.Int8Inputs,
            "qattn_kv_cache_options": _lib.KVCacheOptions, "qattn_kv_cache_info": _lib.KVCacheInfo,
            "qattn_decode_params": _lib.DecodeParams, "qattn_kv_cache_layout": _lib.KVCacheLayout,
            "qattn_kv_device_cache": _lib.KVDeviceCache, "qattn_calibration": _lib.CalibrationStruct,
            "qattn_kvcache_params": _lib.KVCacheParams}


def _declared(name):
    path = os.path.join(HEADER_DIR, "qattn.h")
    return os.path.isfile(path) and ("typedef struct %s {" % name) in open(path).read()


STRUCTS.update({k: v for k, v in OPTIONAL.items() if _declared(k)})


def _c_layout(tmp_path):
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        pytest.skip("no C compiler (cc/gcc/clang) to read the header's struct layout")
    if not os.path.isfile(os.path.join(HEADER_DIR, "qattn.h")):
        pytest.skip("include/qattn.h not found (installed package outside a checkout)")
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include \"qattn.h\"", "int main(void) {"]
    for cname, py in STRUCTS.items():
        lines.append('printf("%s sizeof %%zu\\n", sizeof(%s));' % (cname, cname))
        for f in py._fields_:
            lines.append('printf("%s %s %%zu\\n", offsetof(%s, %s));' % (cname, f[0], cname, f[0]))
            lines.append('printf("%s %s.size %%zu\\n", sizeof(((%s *)0)->%s));' % (cname, f[0], cname, f[0]))
            # the C type itself, so that a same-size swap (int32 <-> float) is caught too
            lines.append('printf("%s %s.kind %%s\\n", _Generic(((%s *)0)->%s, float: "f32", double: "f64", '
                         'int32_t: "i32", int64_t: "i64", size_t: "size", default: "other"));' % (cname, f[0], cname, f[0]))
    lines += ["return 0;", "}"]
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines))
    exe = tmp_path / "layout"
    subprocess.run([cc, "-std=c11", "-I", HEADER_DIR, str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {(a, b): c for a, b, c in (line.split() for line in out.splitlines())}


_KINDS = {ctypes.c_float: "f32", ctypes.c_double: "f64", ctypes.c_int32: "i32", ctypes.c_int64: "i64",
          ctypes.c_size_t: "size"}


def test_struct_layout_matches_header(tmp_path):
    c = _c_layout(tmp_path)
    for cname, py in STRUCTS.items():
        assert ctypes.sizeof(py) == int(c[(cname, "sizeof")]), cname
        for name, ctype in py._fields_:
            what = "%s.%s" % (cname, name)
            assert getattr(py, name).offset == int(c[(cname, name)]), what
            assert getattr(py, name).size == int(c[(cname, name + ".size")]), what
            assert _KINDS.get(ctype, "other") == c[(cname, name + ".kind")], what


def test_params_init_defaults():
    """qattn_params_init through the mirror: the defaults documented in qattn.h land in the
    right fields (a shifted field would show up as a wrong default)."""
    p = _lib.Params()
    ctypes.memset(ctypes.byref(p), 0xAB, ctypes.sizeof(p))
    _lib.lib.qattn_params_init(ctypes.byref(p))
    assert (p.window_left, p.window_right, p.scale, p.causal, p.batch) == (-1, -1, 0.0, 0, 0)
    assert (p.qkv_dtype, p.o_dtype, p.precision, p.stream) == (_lib.DTYPE_F32, _lib.DTYPE_F32, 0, None)


def test_every_header_struct_is_mirrored():
    """A struct added to qattn.h without a ctypes mirror (or a mirror the ABI check skips) fails here."""
    import re
    path = os.path.join(HEADER_DIR, "qattn.h")
    if not os.path.isfile(path):
        pytest.skip("include/qattn.h not found (installed package outside a checkout)")
    declared = set(re.findall(r"typedef struct (\w+) \{", open(path).read()))
    assert declared == set(STRUCTS), "unmirrored: %s; stale: %s" % (declared - set(STRUCTS), set(STRUCTS) - declared)


def test_decode_params_init_defaults():
    if not _lib.has_symbol("qattn_decode_params_init"):
        pytest.skip("this libqattn has no KV cache section")
    dp = _lib.DecodeParams()
    ctypes.memset(ctypes.byref(dp), 0xAB, ctypes.sizeof(dp))
    _lib.lib.qattn_decode_params_init(ctypes.byref(dp))
    assert (dp.q_dtype, dp.o_dtype, dp.seqlen_q, dp.causal, dp.window_left, dp.scale) == (0, 0, 1, 1, -1, 0.0)
    assert (dp.q, dp.o, dp.lse, dp.seq_ids, dp.n_seqs) == (None, None, None, None, 0)


def test_max_threads_matches_header(tmp_path):
    """_lib.MAX_THREADS mirrors QATTN_MAX_THREADS (the one thread limit)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc or not os.path.isfile(os.path.join(HEADER_DIR, "qattn.h")):
        pytest.skip("no C compiler or no header")
    src = tmp_path / "t.c"
    src.write_text('#include <stdio.h>\n#include "qattn.h"\nint main(void) { printf("%d\\n", QATTN_MAX_THREADS); return 0; }\n')
    subprocess.run([cc, "-std=c11", "-I", HEADER_DIR, str(src), "-o", str(tmp_path / "t")], check=True)
    out = subprocess.run([str(tmp_path / "t")], check=True, capture_output=True, text=True).stdout
    assert int(out) == _lib.MAX_THREADS
