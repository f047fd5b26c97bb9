"""Tests of the qattn command-line tool (tools/qattn), run as a subprocess.

The binary is $QATTN_CLI, else build/qattn under the repository root. Results of `qattn run`
are compared with an independent FP64 attention written here in numpy; bad inputs must give a
non-zero exit, exactly one line on stderr and no output file.

    pip install numpy pytest
    QATTN_CLI=build-cli/qattn python -m pytest -q tests/cli
"""
import io
import json
import os
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
CLI = Path(os.environ.get("QATTN_CLI", REPO / "build" / "qattn"))
if not CLI.is_absolute():
    CLI = REPO / CLI


@pytest.fixture(scope="session", autouse=True)
def cli_exists():
    if not CLI.exists():
        pytest.fail(f"qattn CLI not found at {CLI}; build it or set QATTN_CLI")


def run_cli(*args, timeout=120):
    return subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------- the FP64 reference


def attention_f64(q, k, v, causal=False, window=(-1, -1), scale=None):
    """O [B,Lq,H,D] and LSE [B,H,Lq] in float64; the mask convention of include/qattn.h:
    key j is visible to query i when i+Lk-Lq-left <= j <= i+Lk-Lq+right (-1 = unbounded)."""
    q, k, v = (np.asarray(t, dtype=np.float64) for t in (q, k, v))
    B, Lq, H, D = q.shape
    Lk, HK = k.shape[1], k.shape[2]
    scale = 1.0 / np.sqrt(D) if scale is None else scale
    group = H // HK
    k = np.repeat(k, group, axis=2)  # GQA: query head h uses kv head h // group
    v = np.repeat(v, group, axis=2)
    s = np.einsum("bihd,bjhd->bhij", q, k) * scale
    left, right = window
    if causal:
        right = 0
    i = np.arange(Lq)[:, None]
    j = np.arange(Lk)[None, :]
    diag = i + Lk - Lq
    visible = np.ones((Lq, Lk), dtype=bool)
    if left >= 0:
        visible &= j >= diag - left
    if right >= 0:
        visible &= j <= diag + right
    s = np.where(visible, s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    any_visible = np.isfinite(m)
    m = np.where(any_visible, m, 0.0)
    p = np.exp(s - m)
    l = p.sum(axis=-1, keepdims=True)
    o = np.einsum("bhij,bjhd->bihd", np.where(any_visible, p / np.where(l > 0, l, 1), 0.0), v)
    with np.errstate(divide="ignore"):
        lse = np.where(any_visible[..., 0], (m + np.log(np.where(l > 0, l, 1)))[..., 0], -np.inf)
    return o, lse


def rel_l2(out, ref):
    ref = np.asarray(ref, dtype=np.float64)
    den = np.linalg.norm(ref)
    return np.linalg.norm(np.asarray(out, dtype=np.float64) - ref) / (den if den > 0 else 1.0)


def round_bf16(x):
    """Round float32 to bfloat16 (nearest even) and back, with integer bit tricks."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32)


def round_to(precision, x):
    if precision == "fp16":
        return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)
    if precision == "bf16":
        return round_bf16(x)
    return np.asarray(x, dtype=np.float32)


# ---------------------------------------------------------------- helpers


def random_qkv(rng, B, Lq, Lk, H, HK, D, dtype=np.float32):
    q = rng.standard_normal((B, Lq, H, D)).astype(dtype)
    k = rng.standard_normal((B, Lk, HK, D)).astype(dtype)
    v = rng.standard_normal((B, Lk, HK, D)).astype(dtype)
    return q, k, v


def save_inputs(tmp_path, q, k, v):
    paths = [tmp_path / "q.npy", tmp_path / "k.npy", tmp_path / "v.npy"]
    for p, t in zip(paths, (q, k, v)):
        np.save(p, t)
    return paths


def mask_flags(causal, window):
    flags = []
    if causal:
        flags.append("--causal")
    if window != (-1, -1):
        flags += ["--window", f"{window[0]},{window[1]}"]
    return flags


def run_attention(tmp_path, q, k, v, *flags, lse=False, name="o"):
    qp, kp, vp = save_inputs(tmp_path, q, k, v)
    out = tmp_path / f"{name}.npy"
    lse_path = tmp_path / f"{name}_lse.npy"
    args = ["run", "--q", qp, "--k", kp, "--v", vp, "--out", out, *flags]
    if lse:
        args += ["--lse", lse_path]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    o = np.load(out)
    assert o.dtype == np.float32 and o.shape == q.shape
    if lse:
        l = np.load(lse_path)
        assert l.dtype == np.float32 and l.shape == (q.shape[0], q.shape[2], q.shape[1])
        return o, l
    return o


# (B, Lq, Lk, H, HK, D, causal, window)
SHAPES = [
    (1, 1, 1, 1, 1, 64, False, (-1, -1)),
    (2, 17, 17, 4, 4, 64, False, (-1, -1)),
    (1, 113, 113, 2, 2, 80, True, (-1, -1)),
    (1, 17, 113, 8, 2, 128, True, (-1, -1)),  # causal, Lq < Lk, GQA 4
    (2, 113, 17, 4, 1, 64, True, (-1, -1)),  # causal, Lq > Lk: leading rows see no key
    (1, 1, 203, 8, 8, 128, False, (-1, -1)),  # decode
    (1, 113, 113, 4, 2, 80, False, (16, 0)),  # sliding window
    (1, 64, 96, 2, 2, 64, False, (8, 8)),  # two-sided window, Lq != Lk
    (2, 17, 113, 4, 2, 8, True, (-1, -1)),  # head dims below 32: causal Lq < Lk, GQA
    (1, 113, 17, 4, 1, 16, True, (-1, -1)),  # causal Lq > Lk, MQA
    (1, 1, 203, 4, 4, 24, False, (-1, -1)),  # decode
]


def shape_id(s):
    B, Lq, Lk, H, HK, D, causal, window = s
    return f"B{B}-Lq{Lq}-Lk{Lk}-H{H}-HK{HK}-D{D}" + ("-causal" if causal else "") + (f"-w{window[0]}_{window[1]}" if window != (-1, -1) else "")


# ---------------------------------------------------------------- correctness


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_fp32_matches_fp64(tmp_path, shape):
    B, Lq, Lk, H, HK, D, causal, window = shape
    rng = np.random.default_rng(zlib.crc32(shape_id(shape).encode()))
    q, k, v = random_qkv(rng, B, Lq, Lk, H, HK, D)
    o, lse = run_attention(tmp_path, q, k, v, *mask_flags(causal, window), lse=True)
    ref_o, ref_lse = attention_f64(q, k, v, causal, window)
    assert rel_l2(o, ref_o) <= 1e-5
    # LSE: -inf exactly where the row sees no key, close elsewhere.
    assert np.array_equal(np.isneginf(lse), np.isneginf(ref_lse))
    finite = np.isfinite(ref_lse)
    np.testing.assert_allclose(lse[finite], ref_lse[finite], rtol=1e-5, atol=1e-5)
    # Rows that see no key are exactly zero.
    no_key = np.isneginf(ref_lse).transpose(0, 2, 1)  # [B, Lq, H]
    assert np.all(o[no_key] == 0)


def test_scale_flag(tmp_path):
    rng = np.random.default_rng(7)
    q, k, v = random_qkv(rng, 1, 33, 33, 2, 2, 64)
    o = run_attention(tmp_path, q, k, v, "--scale", "0.3", "--causal")
    ref, _ = attention_f64(q, k, v, causal=True, scale=0.3)
    assert rel_l2(o, ref) <= 1e-5


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("shape", [SHAPES[2], SHAPES[3], SHAPES[5], SHAPES[6]], ids=shape_id)
def test_low_precision_within_2x_of_rounding_baseline(tmp_path, precision, shape):
    """FlashAttention's rule (docs/ARCHITECTURE.md "Tolerances"): error within 2x that of rounding Q, K, V to the
    precision and then computing exactly."""
    B, Lq, Lk, H, HK, D, causal, window = shape
    rng = np.random.default_rng(11)
    q, k, v = random_qkv(rng, B, Lq, Lk, H, HK, D)
    o = run_attention(tmp_path, q, k, v, "--precision", precision, *mask_flags(causal, window))
    exact, _ = attention_f64(q, k, v, causal, window)
    rounded, _ = attention_f64(round_to(precision, q), round_to(precision, k), round_to(precision, v), causal, window)
    baseline = rel_l2(rounded, exact)
    assert baseline > 0
    assert rel_l2(o, exact) <= 2 * baseline + 1e-6, (rel_l2(o, exact), baseline)


def test_float16_inputs(tmp_path):
    rng = np.random.default_rng(3)
    q, k, v = random_qkv(rng, 2, 17, 40, 4, 2, 64, dtype=np.float16)
    o = run_attention(tmp_path, q, k, v, "--causal")
    ref, _ = attention_f64(q, k, v, causal=True)  # exact on the float16 values
    assert rel_l2(o, ref) <= 1e-5


def test_mixed_input_dtypes(tmp_path):
    rng = np.random.default_rng(4)
    q, k, v = random_qkv(rng, 1, 9, 9, 2, 2, 64)
    k = k.astype(np.float16)
    o = run_attention(tmp_path, q, k, v)
    ref, _ = attention_f64(q, k, v)
    assert rel_l2(o, ref) <= 1e-5


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_npy_format_versions(tmp_path, version):
    rng = np.random.default_rng(5)
    q, k, v = random_qkv(rng, 1, 8, 8, 2, 2, 64)
    paths = [tmp_path / "q.npy", tmp_path / "k.npy", tmp_path / "v.npy"]
    for p, t in zip(paths, (q, k, v)):
        with open(p, "wb") as f:
            np.lib.format.write_array(f, t, version=version)
    r = run_cli("run", "--q", paths[0], "--k", paths[1], "--v", paths[2], "--out", tmp_path / "o.npy")
    assert r.returncode == 0, r.stderr
    assert rel_l2(np.load(tmp_path / "o.npy"), attention_f64(q, k, v)[0]) <= 1e-5


@pytest.mark.parametrize("shape", [(1, 113, 113, 4, 4, 64, True), (1, 1, 4096, 8, 2, 128, False)], ids=["prefill", "decode"])
def test_threads_do_not_change_bytes(tmp_path, shape):
    B, Lq, Lk, H, HK, D, causal = shape
    rng = np.random.default_rng(9)
    q, k, v = random_qkv(rng, B, Lq, Lk, H, HK, D)
    flags = ["--causal"] if causal else []
    outs = []
    for threads in (1, 2):
        run_attention(tmp_path, q, k, v, *flags, "--threads", threads, lse=True, name=f"t{threads}")
        outs.append(((tmp_path / f"t{threads}.npy").read_bytes(), (tmp_path / f"t{threads}_lse.npy").read_bytes()))
    assert outs[0] == outs[1]


# ---------------------------------------------------------------- bad inputs


def npy_bytes(arr, version=(1, 0)):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, version=version)
    return buf.getvalue()


def raw_npy(header, data=b"", version=b"\x01\x00"):
    """A .npy file with a hand-written header dict (padded like numpy's)."""
    h = header.encode()
    h += b" " * ((64 - (10 + len(h) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY" + version + struct.pack("<H", len(h)) + h + data


GOOD_Q = np.zeros((1, 4, 2, 64), np.float32)
GOOD_KV = np.zeros((1, 4, 2, 64), np.float32)


def bad_case(name):
    """Returns (q bytes, k bytes, v bytes, extra flags) for a named bad input."""
    q, k, v = npy_bytes(GOOD_Q), npy_bytes(GOOD_KV), npy_bytes(GOOD_KV)
    good_header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 4, 2, 64), }"
    data = GOOD_Q.tobytes()
    cases = {
        "bad-magic": (b"\x93NUMPZ" + q[6:], k, v, []),
        "not-npy-text": (b"hello world\n", k, v, []),
        "empty-file": (b"", k, v, []),
        "bad-version": (q[:6] + b"\x04\x00" + q[8:], k, v, []),
        "truncated-header": (q[:30], k, v, []),
        "truncated-data": (q[:-5], k, v, []),
        "trailing-garbage": (q + b"xx", k, v, []),
        "header-length-huge": (q[:8] + b"\xff\xff" + q[10:], k, v, []),
        "header-not-dict": (raw_npy("['descr', 1]", data), k, v, []),
        "header-missing-shape": (raw_npy("{'descr': '<f4', 'fortran_order': False, }", data), k, v, []),
        "header-extra-key": (raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 4, 2, 64), 'x': 1, }", data), k, v, []),
        "header-bad-shape": (raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1, -4, 2, 64), }", data), k, v, []),
        "header-shape-overflow": (
            raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }", data), k, v, []),
        "header-unterminated": (raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 4, 2, 64", data), k, v, []),
        "structured-dtype": (raw_npy("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1, 4, 2, 64), }", data), k, v, []),
        "float64": (npy_bytes(GOOD_Q.astype(np.float64)), k, v, []),
        "int32": (npy_bytes(GOOD_Q.astype(np.int32)), k, v, []),
        "big-endian": (npy_bytes(GOOD_Q.astype(">f4")), k, v, []),
        "fortran-order": (npy_bytes(np.asfortranarray(GOOD_Q)), k, v, []),
        "three-dims": (npy_bytes(GOOD_Q[0]), k, v, []),
        "k-v-shapes-differ": (q, k, npy_bytes(np.zeros((1, 5, 2, 64), np.float32)), []),
        "batch-differs": (npy_bytes(np.zeros((2, 4, 2, 64), np.float32)), k, v, []),
        "head-dim-differs": (npy_bytes(np.zeros((1, 4, 2, 128), np.float32)), k, v, []),
        "heads-not-divisible": (npy_bytes(np.zeros((1, 4, 3, 64), np.float32)), k, v, []),
        "head-dim-unsupported": (
            npy_bytes(np.zeros((1, 4, 2, 20), np.float32)), npy_bytes(np.zeros((1, 4, 2, 20), np.float32)),
            npy_bytes(np.zeros((1, 4, 2, 20), np.float32)), []),
        "bad-threads": (q, k, v, ["--threads", "-1"]),
        "bad-threads-text": (q, k, v, ["--threads", "two"]),
        "bad-precision": (q, k, v, ["--precision", "fp64"]),
        "bad-window": (q, k, v, ["--window", "3"]),
        "bad-window-value": (q, k, v, ["--window", "-2,0"]),
        "bad-scale": (q, k, v, ["--scale", "nan"]),
        "bad-backend": (q, k, v, ["--backend", "tpu"]),
        "unknown-flag": (q, k, v, ["--frobnicate"]),
        "missing-value": (q, k, v, ["--threads"]),
    }
    assert good_header  # documents the shape the hand-written headers start from
    return cases[name]


BAD_CASES = [
    "bad-magic", "not-npy-text", "empty-file", "bad-version", "truncated-header", "truncated-data", "trailing-garbage",
    "header-length-huge", "header-not-dict", "header-missing-shape", "header-extra-key", "header-bad-shape",
    "header-shape-overflow", "header-unterminated", "structured-dtype", "float64", "int32", "big-endian", "fortran-order",
    "three-dims", "k-v-shapes-differ", "batch-differs", "head-dim-differs", "heads-not-divisible", "head-dim-unsupported",
    "bad-threads", "bad-threads-text", "bad-precision", "bad-window", "bad-window-value", "bad-scale", "bad-backend",
    "unknown-flag", "missing-value",
]


def assert_clean_failure(r, folder, out):
    assert r.returncode != 0
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("qattn run: ") and len(lines[0]) > len("qattn run: ") + 5
    assert r.stdout == ""
    assert not out.exists()
    leftovers = [p.name for p in folder.iterdir() if ".tmp." in p.name]
    assert not leftovers


@pytest.mark.parametrize("name", BAD_CASES)
def test_bad_input_fails_cleanly(tmp_path, name):
    q, k, v, flags = bad_case(name)
    paths = [tmp_path / "q.npy", tmp_path / "k.npy", tmp_path / "v.npy"]
    for p, b in zip(paths, (q, k, v)):
        p.write_bytes(b)
    out = tmp_path / "o.npy"
    args = ["run", "--q", paths[0], "--k", paths[1], "--v", paths[2], "--out", out, "--lse", tmp_path / "lse.npy", *flags]
    if flags == ["--threads"]:  # the flag with no value must be last
        args = ["run", "--q", paths[0], "--k", paths[1], "--v", paths[2], "--out", out, "--threads"]
    r = run_cli(*args)
    assert_clean_failure(r, tmp_path, out)
    assert not (tmp_path / "lse.npy").exists()


def test_missing_input_file(tmp_path):
    np.save(tmp_path / "k.npy", GOOD_KV)
    np.save(tmp_path / "v.npy", GOOD_KV)
    out = tmp_path / "o.npy"
    r = run_cli("run", "--q", tmp_path / "nope.npy", "--k", tmp_path / "k.npy", "--v", tmp_path / "v.npy", "--out", out)
    assert_clean_failure(r, tmp_path, out)
    assert "nope.npy" in r.stderr


def test_missing_required_flag(tmp_path):
    np.save(tmp_path / "k.npy", GOOD_KV)
    out = tmp_path / "o.npy"
    r = run_cli("run", "--k", tmp_path / "k.npy", "--v", tmp_path / "k.npy", "--out", out)
    assert_clean_failure(r, tmp_path, out)


def test_unwritable_output(tmp_path):
    save_inputs(tmp_path, GOOD_Q, GOOD_KV, GOOD_KV)
    out = tmp_path / "no_such_dir" / "o.npy"
    r = run_cli("run", "--q", tmp_path / "q.npy", "--k", tmp_path / "k.npy", "--v", tmp_path / "v.npy", "--out", out)
    assert_clean_failure(r, tmp_path, out)


def test_failed_run_keeps_existing_output(tmp_path):
    """A failure must not clobber a file already at --out."""
    out = tmp_path / "o.npy"
    out.write_bytes(b"previous")
    save_inputs(tmp_path, GOOD_Q, GOOD_KV, np.zeros((1, 5, 2, 64), np.float32))
    r = run_cli("run", "--q", tmp_path / "q.npy", "--k", tmp_path / "k.npy", "--v", tmp_path / "v.npy", "--out", out)
    assert r.returncode != 0 and len(r.stderr.splitlines()) == 1
    assert out.read_bytes() == b"previous"


# ---------------------------------------------------------------- bench, info, help

BENCH_KEYS = {"backend", "isa", "precision", "batch", "heads", "kv_heads", "seqlen_q", "seqlen_k", "head_dim", "causal", "ms",
              "gflops", "gbps", "rel_l2", "max_abs"}


def test_bench_json_tiny_shape():
    r = run_cli("bench", "--batch", 1, "--heads", 2, "--kv-heads", 1, "--seqlen-q", 33, "--seqlen-k", 70, "--head-dim", 64,
                "--causal", "--iters", 2, "--json")
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines() if l.strip()]
    assert len(lines) == 1
    row = json.loads(lines[0])
    assert BENCH_KEYS <= row.keys()
    assert row["seqlen_q"] == 33 and row["seqlen_k"] == 70 and row["kv_heads"] == 1 and row["causal"] is True
    assert row["ms"] > 0 and row["gflops"] > 0 and row["gbps"] > 0
    assert row["rel_l2"] <= 1e-5


def test_bench_sampled_oracle_keeps_the_causal_mask():
    """Above the oracle's work limit bench checks only the last 64 query rows; passing them as
    Lq' = 64 must keep the bottom-right causal alignment (a wrong mask would give a large error)."""
    r = run_cli("bench", "--heads", 8, "--seqlen-q", 1100, "--seqlen-k", 1500, "--head-dim", 128, "--causal", "--iters", 1,
                "--warmup", 0, "--json")
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)
    assert row["oracle_rows"] == 64
    assert row["rel_l2"] <= 1e-5


def test_bench_table_and_precisions():
    for precision in ("fp32", "fp16", "bf16"):
        r = run_cli("bench", "--seqlen-q", 64, "--heads", 2, "--head-dim", 64, "--iters", 1, "--precision", precision)
        assert r.returncode == 0, r.stderr
        assert precision in r.stdout and "GFLOP/s" in r.stdout


def test_bench_bad_flag():
    r = run_cli("bench", "--iters", 0)
    assert r.returncode != 0 and len(r.stderr.splitlines()) == 1


def test_info():
    r = run_cli("info")
    assert r.returncode == 0, r.stderr
    assert "qattn" in r.stdout and "cpu" in r.stdout
    r = run_cli("info", "--json")
    assert r.returncode == 0
    info = json.loads(r.stdout)
    assert {"version", "backends", "isa", "threads", "cpu", "cpu_features"} <= info.keys()
    if info["isa"] == "avx512":  # the tier needs these bits, and qattn info names what it found
        assert {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "os:zmm"} <= set(info["cpu_features"].split())


@pytest.mark.parametrize("cmd", [[], ["info"], ["bench"], ["run"], ["accuracy"]])
def test_help(cmd):
    r = run_cli(*cmd, "--help")
    if cmd == ["accuracy"] and r.returncode == 2 and "not available" in r.stderr:
        pytest.skip("accuracy is a stub in this build")
    assert r.returncode == 0, r.stderr
    assert "usage" in r.stdout.lower()


def test_help_gives_the_head_dim_range():
    r = run_cli("bench", "--help")
    assert r.returncode == 0 and "8..256 step 8" in r.stdout


def test_unknown_command():
    r = run_cli("frobnicate")
    assert r.returncode != 0 and len(r.stderr.splitlines()) == 1


# ---------------------------------------------------------------- reliability (issue 12, part 1)


def good_inputs(tmp_path, L=8):
    """Small valid inputs (values in [-1, 1]); returns the run arguments naming them."""
    rng = np.random.default_rng(12)
    q, k, v = (rng.uniform(-1, 1, (1, L, 2, 64)).astype(np.float32) for _ in range(3))
    qp, kp, vp = save_inputs(tmp_path, q, k, v)
    return ["run", "--q", qp, "--k", kp, "--v", vp]


def test_failed_lse_keeps_existing_out(tmp_path):
    """--lse in a missing folder used to delete the file already at --out."""
    out = tmp_path / "exist.npy"
    out.write_bytes(b"previous")
    r = run_cli(*good_inputs(tmp_path), "--out", out, "--lse", tmp_path / "nonexistent_dir" / "lse.npy")
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1, r.stderr
    assert out.read_bytes() == b"previous"
    assert not [p.name for p in tmp_path.iterdir() if ".tmp." in p.name]


def test_failed_lse_keeps_input_named_as_out(tmp_path):
    """--out equal to an input: a failed run must not delete the input."""
    args = good_inputs(tmp_path)
    before = (tmp_path / "q.npy").read_bytes()
    r = run_cli(*args, "--out", tmp_path / "q.npy", "--lse", tmp_path / "nonexistent_dir" / "lse.npy")
    assert r.returncode == 1, r.stderr
    assert (tmp_path / "q.npy").read_bytes() == before


@pytest.mark.parametrize("lse_name", ["./same.npy", "sub/../same.npy", "link_dir/same.npy"])
def test_out_and_lse_same_file_by_identity(tmp_path, lse_name):
    """--out same.npy --lse ./same.npy exited 0 and lost O: compare files, not strings."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "link_dir").symlink_to(tmp_path)
    args = good_inputs(tmp_path)
    r = subprocess.run([str(CLI), *map(str, args), "--out", "same.npy", "--lse", lse_name], capture_output=True, text=True,
                       cwd=tmp_path, timeout=60)
    assert r.returncode == 2 and "same file" in r.stderr, r.stderr
    assert not (tmp_path / "same.npy").exists()


def test_out_and_lse_hard_links_are_the_same_file(tmp_path):
    out = tmp_path / "o.npy"
    out.write_bytes(b"x")
    os.link(out, tmp_path / "alias.npy")
    r = run_cli(*good_inputs(tmp_path), "--out", out, "--lse", tmp_path / "alias.npy")
    assert r.returncode == 2 and "same file" in r.stderr, r.stderr
    assert out.read_bytes() == b"x"


def test_fifo_input_is_refused_not_waited_on(tmp_path):
    args = good_inputs(tmp_path)
    fifo = tmp_path / "fifo.npy"
    os.mkfifo(fifo)
    args[2] = fifo  # --q
    r = run_cli(*args, "--out", tmp_path / "o.npy", timeout=20)
    assert r.returncode == 1 and "not a regular file" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert not (tmp_path / "o.npy").exists()


def test_non_regular_outputs_are_refused(tmp_path):
    target = tmp_path / "target.npy"
    target.write_bytes(b"keep")
    (tmp_path / "link.npy").symlink_to(target)
    args = good_inputs(tmp_path)
    for flag, path in (("--out", tmp_path / "link.npy"), ("--out", "/dev/null"), ("--lse", tmp_path / "link.npy"),
                       ("--out", tmp_path)):
        extra = ["--out", tmp_path / "o.npy"] if flag == "--lse" else []
        r = run_cli(*args, *extra, flag, path)
        assert r.returncode == 2 and "not a regular file" in r.stderr, (flag, path, r.stderr)
    assert (tmp_path / "link.npy").is_symlink() and target.read_bytes() == b"keep"
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")


@pytest.mark.parametrize("flags,message", [
    (["--int8-scheme", "sage"], "needs --precision int8"),
    (["--precision", "fp32", "--int8-scheme", "intfa"], "needs --precision int8"),
    (["--json"], "not used by run"),
    (["--iters", "3"], "not used by run"),
    (["--causal", "--causal"], "given twice"),
    (["--threads", "1", "--threads=2"], "given twice"),
    (["--precision", "fp32", "--precision", "fp16"], "given twice"),
    (["--scale", "1e-50"], "below the smallest float32"),
    (["--threads", "100000"], "--threads"),
])
def test_run_rejects_ignored_or_repeated_flags(tmp_path, flags, message):
    out = tmp_path / "o.npy"
    r = run_cli(*good_inputs(tmp_path), "--out", out, *flags)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert not out.exists()


def test_repeated_path_flag_is_rejected(tmp_path):
    args = good_inputs(tmp_path)
    r = run_cli(*args, "--out", tmp_path / "a.npy", "--out", tmp_path / "b.npy")
    assert r.returncode == 2 and "--out is given twice" in r.stderr, r.stderr


def test_int8_scheme_with_int8_precision_runs(tmp_path):
    r = run_cli(*good_inputs(tmp_path), "--out", tmp_path / "o.npy", "--precision", "int8", "--int8-scheme", "sage")
    assert r.returncode == 0, r.stderr


def test_context_failure_says_why(tmp_path):
    """QATTN_ISA=bogus gave a generic 'invalid argument'."""
    env = dict(os.environ, QATTN_ISA="bogus")
    for cmd in (["info"], [*good_inputs(tmp_path), "--out", tmp_path / "o.npy"]):
        r = subprocess.run([str(CLI), *map(str, cmd)], capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 1 and "QATTN_ISA=bogus is not one of" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr


def test_help_lists_every_isa():
    info = run_cli("info", "--json")
    for cmd in (["run"], ["bench"], ["info"], ["bench", "--decode"], ["bench", "--kvcache"], []):
        r = run_cli(*cmd, "--help")
        assert r.returncode == 0
        for isa in ("ref", "avx2", "avxvnni", "avx512"):
            assert isa in r.stdout, (cmd, isa)
    assert json.loads(info.stdout)["isa"] in run_cli("run", "--help").stdout


def test_scale_overflow_is_an_error_not_nan(tmp_path):
    """scale 3e37 on finite inputs gave NaN outputs with exit 0."""
    out = tmp_path / "o.npy"
    for precision in ("fp32", "fp16", "bf16"):
        r = run_cli(*good_inputs(tmp_path, L=64), "--out", out, "--scale", "3e37", "--precision", precision)
        assert r.returncode == 1 and "overflow float32" in r.stderr, r.stderr
        assert not out.exists()


def test_bench_size_overflow_and_oom_are_one_line():
    r = run_cli("bench", "--batch", 2147483647, "--seqlen-q", 2147483647, "--heads", 4096, "--head-dim", 256, "--iters", 1)
    err = r.stderr.splitlines()
    assert r.returncode == 1 and len(err) == 1 and "2147483647" in err[0] and "overflow" in err[0], r.stderr
    # 2^31 * 8 * 128 * 4 bytes per tensor: far beyond any machine's memory, but no overflow.
    # (ASan aborts on such a request unless told to return NULL like malloc.)
    env = dict(os.environ, ASAN_OPTIONS=os.environ.get("ASAN_OPTIONS", "") + ":allocator_may_return_null=1")
    r = subprocess.run([str(CLI), "bench", "--batch", "2147483647", "--seqlen-q", "1", "--seqlen-k", "1000000", "--heads", "8",
                        "--head-dim", "128", "--iters", "1"], capture_output=True, text=True, timeout=120, env=env)
    err = [l for l in r.stderr.splitlines() if not l.startswith("==")]  # an ASan build's allocator warning
    assert r.returncode == 1 and len(err) == 1 and "out of memory" in err[0], r.stderr


def test_bench_int8_row_has_a_baseline_verdict():
    r = run_cli("bench", "--seqlen-q", 64, "--heads", 2, "--head-dim", 64, "--iters", 1, "--precision", "int8", "--json")
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)
    assert row["precision"] == "int8" and row["int8_scheme"] == "qattn"
    assert 0 < row["int8_baseline"] < row["rel_l2"] * 2  # the scheme's error is of the baseline's order
    assert row["tolerance"] == pytest.approx(3 * row["int8_baseline"] + 1e-6) and row["within_tolerance"] is True
    r = run_cli("bench", "--seqlen-q", 64, "--heads", 2, "--head-dim", 64, "--iters", 1)
    assert r.returncode == 0 and "ok: rel_l2" in r.stdout and "verdict" in r.stdout, r.stdout


@pytest.mark.skipif(os.environ.get("QATTN_SANITIZE") == "ON", reason="the whole main job under ASan takes minutes")
def test_bench_main_job_has_int8_rows_with_speedup_and_verdict():
    """`qattn bench` with no flags showed FP32 rows only. The INT8 row of a decode shape (Lq 1)
    decodes over the INT8 KV cache (re-quantizing all of K/V every call made it 10x slower than
    FP32), with its tolerance from the cache's own baseline; prefill INT8 rows are the forward."""
    r = run_cli("bench", "--iters", 1, "--warmup", 0, "--json", timeout=600)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(l) for l in r.stdout.splitlines()]
    fp32 = [x for x in rows if x["precision"] == "fp32"]
    int8 = [x for x in rows if x["precision"] == "int8"]
    assert len(fp32) == len(int8) >= 8
    assert any(b["seqlen_q"] == 1 for b in int8)
    for a, b in zip(fp32, int8):
        assert (a["seqlen_q"], a["seqlen_k"], a["head_dim"], a["causal"]) == (b["seqlen_q"], b["seqlen_k"], b["head_dim"], b["causal"])
        assert b["speedup_vs_fp32"] == pytest.approx(a["ms"] / b["ms"], rel=1e-6)
        assert a["within_tolerance"] and b["within_tolerance"]
        assert "kv_cache" not in a and b["tolerance"] > a["tolerance"]
        if b["seqlen_q"] == 1:
            assert b["kv_cache"] == "int8" and "int8_scheme" not in b and "int8_baseline" not in b
            assert b["tolerance"] == pytest.approx(3 * b["kv_cache_baseline"] + 1e-6)
        else:
            assert b["int8_scheme"] == "qattn" and "kv_cache" not in b
            assert b["tolerance"] == pytest.approx(3 * b["int8_baseline"] + 1e-6)
# ---------------------------------------------------------------- qattn calibrate


def test_calibrate_writes_static_transforms_and_run_uses_them(tmp_path):
    """qattn calibrate on one sequence's own Q, K, V, then qattn run --calibration: the same bits as
    the dynamic --precision int8 (the same statistics, docs/FORMAT.md section 7); the file is
    float32 [3, HK, D] with power-of-two factors. Two samples accumulate."""
    rng = np.random.default_rng(11)
    q, k, v = random_qkv(rng, 1, 70, 70, 4, 2, 64)
    k[..., 9] = k[..., 9] * 12 + 5
    qp, kp, vp = save_inputs(tmp_path, q, k, v)
    cal = tmp_path / "cal.npy"
    r = run_cli("calibrate", "--out", cal, qp, kp, vp)
    assert r.returncode == 0, r.stderr
    c = np.load(cal)
    assert c.dtype == np.float32 and c.shape == (3, 2, 64)
    m, _ = np.frexp(c[0])
    assert np.all(m == 0.5) and c[0][:, 9].min() >= 2  # powers of two; the outlier channel scaled
    o_dyn = run_attention(tmp_path, q, k, v, "--precision", "int8", "--causal", name="dyn")
    o_cal = run_attention(tmp_path, q, k, v, "--precision", "int8", "--causal", "--calibration", cal, name="cal")
    np.testing.assert_array_equal(o_dyn, o_cal)
    r = run_cli("calibrate", "--out", tmp_path / "two.npy", qp, kp, vp, qp, kp, vp)
    assert r.returncode == 0 and "140 key tokens" in r.stdout, r.stdout + r.stderr


def test_calibrate_and_run_refuse_bad_input(tmp_path):
    rng = np.random.default_rng(12)
    q, k, v = random_qkv(rng, 1, 8, 8, 2, 2, 32)
    qp, kp, vp = save_inputs(tmp_path, q, k, v)
    out = tmp_path / "cal.npy"
    for args in (["calibrate", qp, kp, vp], ["calibrate", "--out", out, qp, kp], ["calibrate", "--out", out, qp, kp, vp, "--heads", "2"]):
        r = run_cli(*args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and not out.exists(), (args, r.stderr)
    bad = v.copy()
    bad[0, 3, 1, 2] = np.inf
    np.save(tmp_path / "bad.npy", bad)
    r = run_cli("calibrate", "--out", out, qp, kp, tmp_path / "bad.npy")
    assert r.returncode == 1 and "non-finite" in r.stderr and len(r.stderr.strip().splitlines()) == 1 and not out.exists()
    np.save(tmp_path / "wrong.npy", np.ones((3, 4, 32), np.float32))  # 4 kv heads, inputs have 2
    r = run_cli("run", "--q", qp, "--k", kp, "--v", vp, "--out", tmp_path / "o.npy", "--precision", "int8",
                "--calibration", tmp_path / "wrong.npy")
    assert r.returncode != 0 and "[3, 2, 32]" in r.stderr and not (tmp_path / "o.npy").exists(), r.stderr


# ---------------------------------------------------------------- qattn accuracy


def test_accuracy_progress_and_verdict():
    """qattn accuracy on a small shape: the tables on stdout, one progress line per input on
    stderr, a verdict line per method; --full with shape flags and unknown inputs are refused."""
    r = run_cli("accuracy", "--seqlen-q", "96", "--heads", "4", "--kv-heads", "2", "--head-dim", "64",
                "--inputs", "normal,rotary,sinkout", "--methods", "int8,int8-calibrated,kv-int8-calibrated", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "[1/3]" in r.stderr and "[3/3]" in r.stderr and "inputs sinkout" in r.stderr
    verdicts = [l for l in r.stdout.splitlines() if "meets the bar" in l or "does not meet the bar" in l]
    assert len(verdicts) == 3, r.stdout
    assert "kv-int8-calibrated" in r.stdout and "inputs rotary" in r.stdout
    r = run_cli("accuracy", "--full", "--seqlen-q", "64")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("accuracy", "--inputs", "normal,bogus")
    assert r.returncode == 2 and "bogus" in r.stderr


def test_bench_kvcache_json_and_errors():
    """qattn bench --kvcache: one JSON line whose outputs match the FP64 oracle as closely as the
    plain forward on the gathered keys; a page size the library refuses is one stderr line, exit 1."""
    for page in (16, 0):
        r = run_cli("bench", "--kvcache", "--kv-len", 77, "--seqlen-q", 5, "--heads", 4, "--kv-heads", 2, "--head-dim", 64,
                    "--page-size", page, "--rotary-dim", 32, "--dtype", "fp32", "--iters", 1, "--threads", 1, "--json")
        assert r.returncode == 0, r.stderr
        row = json.loads(r.stdout)
        assert row["bench"] == "kvcache" and row["page_size"] == page and row["kv_len"] == 77
        assert row["rel_l2"] < 1e-5 and row["forward_rel_l2"] < 1e-5 and row["seconds"] > 0
    r = run_cli("bench", "--kvcache", "--page-size", 24, "--kv-len", 40, "--iters", 1)
    assert r.returncode == 1 and "page_size is 24" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    r = run_cli("bench", "--kvcache", "--rotary-dim", 7)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    r = run_cli("bench", "--kvcache", "--backend", "tpu")
    assert r.returncode == 2 and "--backend" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr


def test_bench_kvcache_cuda():
    """qattn bench --kvcache --backend cuda: on a device, both calls on the GPU within its FP16 bound of
    the oracle (tests/ops.c, CUDA targets: relative L2 2e-3); without one, one stderr line, exit 1."""
    info = json.loads(run_cli("info", "--json").stdout)
    r = run_cli("bench", "--kvcache", "--backend", "cuda", "--kv-len", 77, "--seqlen-q", 5, "--heads", 4, "--kv-heads", 2,
                "--head-dim", 64, "--rotary-dim", 32, "--iters", 1, "--json")
    if not info["cuda_available"]:
        assert r.returncode == 1 and len(r.stderr.splitlines()) == 1, r.stderr
        return
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)
    assert row["backend"] == "cuda" and row["rel_l2"] < 2e-3 and row["forward_rel_l2"] < 2e-3, row


# ---------------------------------------------------------------- precision int4


def test_run_int4_is_worse_than_int8_and_bench_has_no_verdict(tmp_path):
    """--precision int4 in run (4-bit Q/K: error ~0.1-0.2 on N(0,1), far above int8's) and in bench
    (no tolerance defined: the row says so), and the accuracy tool's int4 row and verdict."""
    rng = np.random.default_rng(17)
    q, k, v = random_qkv(rng, 1, 113, 113, 4, 2, 64)
    exact, _ = attention_f64(q, k, v, True, (-1, -1))
    o4 = run_attention(tmp_path, q, k, v, "--precision", "int4", "--causal")
    o8 = run_attention(tmp_path, q, k, v, "--precision", "int8", "--causal")
    e4, e8 = rel_l2(o4, exact), rel_l2(o8, exact)
    assert e4 < 0.3 and e8 < e4 / 4, (e4, e8)
    r = run_cli("bench", "--seqlen-q", "64", "--heads", "2", "--head-dim", "64", "--precision", "int4", "--iters", "1")
    assert r.returncode == 0 and "int4" in r.stdout, r.stdout + r.stderr
    r = run_cli("accuracy", "--seqlen-q", "64", "--heads", "2", "--kv-heads", "1", "--head-dim", "64",
                "--inputs", "normal", "--methods", "int4", timeout=300)
    assert r.returncode == 0, r.stderr
    assert any(l.strip().startswith("int4") and "bar" in l for l in r.stdout.splitlines()), r.stdout
    r = run_cli(*good_inputs(tmp_path), "--out", tmp_path / "o.npy", "--precision", "int3")
    assert r.returncode == 2 and "int4" in r.stderr


# ---------------------------------------------------------------- softcap and ALiBi


def paper_slopes(H):
    """The ALiBi paper's slopes (its reference get_slopes), written independently of the CLI."""
    def pow2(n):
        start = 2.0 ** (-(2.0 ** -(np.log2(n) - 3)))
        return [start * start ** i for i in range(n)]
    if np.log2(H).is_integer():
        return pow2(H)
    closest = 2 ** int(np.floor(np.log2(H)))
    return pow2(closest) + paper_slopes(2 * closest)[0::2][: H - closest]


def modified_attention_f64(q, k, v, causal, softcap, slopes):
    q, k, v = (np.asarray(t, dtype=np.float64) for t in (q, k, v))
    B, Lq, H, D = q.shape
    Lk, HK = k.shape[1], k.shape[2]
    k, v = np.repeat(k, H // HK, axis=2), np.repeat(v, H // HK, axis=2)
    s = np.einsum("bihd,bjhd->bhij", q, k) * float(np.float32(1) / np.sqrt(np.float32(D)))
    if softcap:
        s = softcap * np.tanh(s / softcap)
    i, j = np.arange(Lq)[:, None], np.arange(Lk)[None, :]
    s = s - np.broadcast_to(np.asarray(slopes, np.float64), (B, H))[:, :, None, None] * np.abs(i + Lk - Lq - j)
    if causal:
        s = np.where(j <= i + Lk - Lq, s, -np.inf)
    e = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("bhij,bjhd->bihd", e / e.sum(-1, keepdims=True), v)


@pytest.mark.parametrize("H", [8, 6])
def test_run_softcap_and_paper_alibi(tmp_path, H):
    rng = np.random.default_rng(7)
    q, k, v = random_qkv(rng, 2, 40, 70, H, 2, 64)
    o = run_attention(tmp_path, q, k, v, "--causal", "--softcap", "5", "--alibi")
    ref = modified_attention_f64(q, k, v, True, 5.0, np.array(paper_slopes(H)))
    assert rel_l2(o, ref) <= 1e-5


def test_run_alibi_slopes_file(tmp_path):
    rng = np.random.default_rng(8)
    q, k, v = random_qkv(rng, 2, 30, 30, 4, 4, 64)
    slopes = rng.uniform(0.01, 0.5, (2, 4)).astype(np.float32)
    np.save(tmp_path / "slopes.npy", slopes)
    o = run_attention(tmp_path, q, k, v, "--alibi-slopes", tmp_path / "slopes.npy")
    assert rel_l2(o, modified_attention_f64(q, k, v, False, 0.0, slopes)) <= 1e-5
    np.save(tmp_path / "bad.npy", slopes[:, :3])
    qp, kp, vp = save_inputs(tmp_path, q, k, v)
    r = run_cli("run", "--q", qp, "--k", kp, "--v", vp, "--out", tmp_path / "x.npy", "--alibi-slopes", tmp_path / "bad.npy")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.npy").exists()


def test_bench_json_echoes_score_mods():
    r = run_cli("bench", "--heads", 4, "--seqlen-q", 50, "--head-dim", 64, "--softcap", 20, "--alibi", "--iters", 1, "--json")
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout.strip().splitlines()[0])
    assert row["softcap"] == 20 and row["alibi"] == "paper" and row["rel_l2"] <= 1e-5
    for bad in (["--softcap", "0"], ["--softcap", "nan"], ["--alibi", "--alibi-slopes", "x.npy"]):
        r = run_cli("bench", "--heads", 4, "--seqlen-q", 50, *bad)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- block-sparse attention


def block_sparse_f64(q, k, v, mask, bq, bk, causal=False):
    """FP64 attention with a [H, nq, nk] or [B, H, nq, nk] block map (0: the pair of blocks is skipped)."""
    B, Lq, H, D = q.shape
    Lk, HK = k.shape[1], k.shape[2]
    m = mask.astype(bool)
    if m.ndim == 3:
        m = np.broadcast_to(m, (B,) + m.shape)
    o = np.zeros((B, Lq, H, D))
    i, j = np.arange(Lq)[:, None], np.arange(Lk)[None, :]
    for b in range(B):
        for h in range(H):
            vis = m[b, h][i // bq, j // bk] & ((j <= i + Lk - Lq) if causal else True)
            g = h // (H // HK)
            s = np.where(vis, q[b, :, h].astype(np.float64) @ k[b, :, g].T.astype(np.float64) / np.sqrt(D), -np.inf)
            rows = vis.any(axis=1)
            e = np.exp(s[rows] - s[rows].max(axis=1, keepdims=True))
            o[b, rows, h] = (e / e.sum(axis=1, keepdims=True)) @ v[b, :, g].astype(np.float64)
    return o


@pytest.mark.parametrize("dims,dtype", [(3, np.uint8), (4, np.bool_)])
def test_run_block_mask_matches_fp64(tmp_path, dims, dtype):
    rng = np.random.default_rng(11)
    B, Lq, Lk, H, HK, D, bq, bk = 2, 150, 200, 4, 2, 64, 32, 48
    q, k, v = random_qkv(rng, B, Lq, Lk, H, HK, D)
    shape = ((B,) if dims == 4 else ()) + (H, -(-Lq // bq), -(-Lk // bk))
    mask = (rng.random(shape) < 0.5).astype(dtype)
    np.save(tmp_path / "m.npy", mask)
    o, lse = run_attention(tmp_path, q, k, v, "--causal", "--block-mask", tmp_path / "m.npy", "--block-size", f"{bq},{bk}", lse=True)
    ref = block_sparse_f64(q, k, v, mask, bq, bk, causal=True)
    assert rel_l2(o, ref) <= 1e-5
    assert np.array_equal(np.isinf(lse), ~np.any(ref != 0, axis=3).transpose(0, 2, 1))


def test_run_block_mask_bad_maps(tmp_path):
    rng = np.random.default_rng(12)
    q, k, v = random_qkv(rng, 1, 100, 100, 2, 2, 64)
    qp, kp, vp = save_inputs(tmp_path, q, k, v)
    out = tmp_path / "o.npy"
    base = ["run", "--q", qp, "--k", kp, "--v", vp, "--out", out]
    np.save(tmp_path / "wrong_shape.npy", np.ones((2, 3, 2), dtype=np.uint8))
    np.save(tmp_path / "float.npy", np.ones((2, 2, 2), dtype=np.float32))
    for flags, text in ((["--block-mask", tmp_path / "wrong_shape.npy"], "the mask must be"),
                        (["--block-mask", tmp_path / "float.npy"], "uint8"),
                        (["--block-mask", tmp_path / "absent.npy"], "cannot open"),
                        (["--block-mask", tmp_path / "wrong_shape.npy", "--block-size", "40"], "multiple of 16"),
                        (["--block-size", "64"], "needs --block-mask"),
                        (["--block-sparse", "random", "--density", "0.5"], "unknown option")):
        r = run_cli(*base, *flags)
        assert r.returncode != 0 and len(r.stderr.splitlines()) == 1 and text in r.stderr, (flags, r.stderr)
        assert not out.exists()
    # a float .npy as Q is still refused with the float message, a mask as Q too
    np.save(tmp_path / "maskq.npy", np.ones((1, 100, 2, 64), dtype=np.uint8))
    r = run_cli("run", "--q", tmp_path / "maskq.npy", "--k", kp, "--v", vp, "--out", out)
    assert r.returncode != 0 and "uint8/bool is not supported here" in r.stderr


@pytest.mark.parametrize("pattern", ["random", "blockbert", "window"])
def test_bench_block_sparse(pattern):
    r = run_cli("bench", "--heads", 2, "--seqlen-q", 600, "--seqlen-k", 700, "--head-dim", 64, "--causal", "--iters", 1, "--warmup", 0,
                "--block-sparse", pattern, "--density", 0.25, "--block-size", "32,64", "--json")
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)
    assert 0 < row["density"] < 0.6 and row["rel_l2"] <= 1e-5 and row["within_tolerance"] is True


def test_bench_block_sparse_flags():
    for flags, text in ((["--block-sparse", "random"], "needs --density"), (["--density", "0.5"], "needs --block-sparse"),
                        (["--block-sparse", "diagonal", "--density", "0.5"], "not one of"),
                        (["--block-sparse", "random", "--density", "1.5"], "(0, 1]")):
        r = run_cli("bench", "--seqlen-q", 64, *flags)
        assert r.returncode != 0 and len(r.stderr.splitlines()) == 1 and text in r.stderr, (flags, r.stderr)


def test_bench_block_sparse_sampled_oracle_aligned():
    """Above the oracle's work limit the sample of last rows starts on a mask block boundary
    (1100 - 64 rows is not a multiple of 48: the sample grows to 92 rows); a misaligned map would
    give a large error."""
    r = run_cli("bench", "--heads", 8, "--seqlen-q", 1100, "--seqlen-k", 1500, "--head-dim", 128, "--iters", 1, "--warmup", 0,
                "--block-sparse", "random", "--density", 0.9, "--block-size", "48,64", "--json")
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)
    assert row["oracle_rows"] == 92 and row["rel_l2"] <= 1e-5
