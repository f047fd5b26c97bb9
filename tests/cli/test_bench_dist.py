"""`qattn bench --dist mpi|nccl` (tools/qattn/bench_dist.c), run as a subprocess: the JSON line
of rank 0 for the exact, Star and decode modes under mpirun with 1 and 2 ranks (skipped without mpirun
or without MPI in the build), and clean usage errors."""
import json
import os
import shutil
import subprocess

import pytest

from test_cli import CLI, run_cli

MPIRUN = shutil.which("mpirun")
# In an ASan build, MPI_Finalize unloads plugins whose memory LeakSanitizer cannot attribute; the
# library's own leaks are checked by test_dist (before MPI_Finalize), so the CLI's exit check is off.
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1",
           LSAN_OPTIONS="leak_check_at_exit=0")


def mpi_json(n, *args):
    r = subprocess.run([MPIRUN, "-np", str(n), str(CLI), "bench", "--dist", "mpi", "--json", "--threads", "1", *map(str, args)],
                       capture_output=True, text=True, timeout=300, env=ENV)
    if r.returncode != 0 and "built without MPI" in r.stderr:
        pytest.skip("this qattn was built without MPI")
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    assert len(lines) == 1, r.stdout  # rank 0 prints, the others stay silent
    return json.loads(lines[0])


@pytest.mark.skipif(MPIRUN is None, reason="mpirun not installed")
@pytest.mark.parametrize("ranks", [1, 2])
@pytest.mark.parametrize("causal", [False, True])
def test_exact_json(ranks, causal):
    args = ["--seqlen-q", 300, "--seqlen-k", 517, "--heads", 4, "--kv-heads", 2, "--head-dim", 64, "--iters", 1, "--warmup", 0]
    j = mpi_json(ranks, *args, *(["--causal"] if causal else []))
    assert j["mode"] == "exact" and j["transport"] == "mpi" and j["ranks"] == ranks and j["causal"] == causal
    # 2 (N-1)/N of the records (D+1 floats per row and head) plus the 80-byte descriptor, per peer
    chunk = (300 + ranks - 1) // ranks
    assert j["bytes_sent"] == (ranks - 1) * (80 + 2 * chunk * 4 * 65 * 4)
    assert j["comm_ms"] >= j["sync_ms"] >= 0 and j["cpu_ms"] > 0
    assert j["rel_l2"] < 1e-5 and j["oracle_rows"] == 64


@pytest.mark.skipif(MPIRUN is None, reason="mpirun not installed")
def test_star_json():
    j = mpi_json(2, "--mode", "star", "--seqlen-k", 1024, "--seqlen-q", 16, "--anchor", 128, "--heads", 2, "--head-dim", 64,
                 "--iters", 1, "--warmup", 0)
    assert j["mode"] == "star" and j["anchor"] == 128 and j["phase1_ms"] > 0
    assert j["rel_l2"] < 1e-5  # phase 2 is exact
    assert 0 < j["phase1_rel_l1_vs_exact"] < 2  # block-local phase 1 differs from exact attention


@pytest.mark.skipif(MPIRUN is None, reason="mpirun not installed")
@pytest.mark.parametrize("kv_dtype, tol", [("fp16", 2e-6), ("int8", 2e-4)])
def test_decode_json(kv_dtype, tol):
    j = mpi_json(2, "--mode", "decode", "--kv-len", 1000, "--batch", 3, "--seqlen-q", 4, "--heads", 8, "--kv-heads", 2,
                 "--head-dim", 64, "--kv-dtype", kv_dtype, "--iters", 2, "--warmup", 0)
    assert j["mode"] == "decode" and j["kv_len"] == 1000 and j["seqlen_k"] == 1000 and j["kv_dtype"] == kv_dtype
    assert j["bytes_sent"] == 80 + 2 * 6 * 8 * 65 * 4  # chunk = ceil(3*4/2) rows of 8 heads
    assert j["rel_l2_vs_single"] < tol  # the bounds of tests/test_dist.c


@pytest.mark.parametrize("args, text", [(["--dist", "tcp"], "not one of normal, uniform"),
                                        (["--dist", "mpi", "--mode", "ring"], "--mode"),
                                        (["--dist", "mpi", "--shards", "odd"], "--shards"),
                                        (["--dist", "mpi", "--mode", "decode", "--seqlen-q", "65"], "1..64"),
                                        (["--dist", "mpi", "--kv-dtype", "fp8"], "--kv-dtype")])
def test_usage_errors(args, text):
    r = run_cli("bench", *args)
    assert r.returncode == 2 and text in r.stderr and r.stderr.count("\n") == 1
