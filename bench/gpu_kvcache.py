#!/usr/bin/env python3
"""qattn_forward_kvcache on the GPU (qattn.attention_with_kvcache with CUDA tensors) against the same
attention on contiguous tensors: qattn.attention (the forward it runs after its gather) and torch SDPA
(enable_gqa), all in one run, FP16, D 128, H 32, HK 8.

Workloads (paged caches, shuffled 16-token pages for decode, 256-token pages for prefill):
  decode:  B 16, Lq 1, one new token per sequence, 8192 cached (all equal: dense calls), and the
           same with lengths 4096..7936 (unequal: one varlen call);
  prefill: B 2, Lq 2048 new tokens after a 6144-token prefix, causal.
Times: one call between two CUDA events, synchronised, warm-up then the median of 20 (the cache is
restored between calls outside the timed region: the append rewrites the same slots anyway).
Peer, when importable: FlashInfer on the same pages (batch decode for Lq 1, the paged prefill wrapper
with backend "fa3" otherwise), attention only (no append, no rotary). Floors: the gather reads and writes every attended key and value once (2 x K/V bytes at the copy
bandwidth of a 4 GiB clone measured here); the forward's own figures are in docs/benchmarks.md.
Correctness is the test suite's (tests/ops.c CUDA targets, python/tests/test_gpu.py); here each row
also reports its relative L2 against qattn.attention on the contiguous tensors.

Usage: QATTN_LIBRARY=build/libqattn.so PYTHONPATH=python python3 bench/gpu_kvcache.py [--out DIR]
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

import qattn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_compare import time_ms  # noqa: E402  (CUDA-event timing)

H, HK, D = 32, 8, 128


def timeit(fn, reps=20):
    """Seconds per call: the median of reps single calls between two CUDA events, after a warm-up."""
    return time_ms(fn, warmup=3, reps=reps)[0] / 1e3


def copy_bandwidth():
    x = torch.empty(2 << 30, dtype=torch.float16, device="cuda")
    t = timeit(lambda: x.clone(), reps=5)
    del x
    return 2 * (2 << 30) * 2 / t


def flashinfer_peer(q, kc, vc, table, blocks, lens_total, page, causal):
    """FlashInfer over the same pages (attention only: no append, no rotary): batch decode for Lq 1,
    else the paged prefill wrapper with its FA3 backend. Returns a callable giving o [B, Lq, H, D]."""
    import flashinfer
    B, Lq = q.shape[:2]
    fws = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    indptr = torch.tensor([0] + [sum(blocks[:b + 1]) for b in range(B)], dtype=torch.int32, device="cuda")
    indices = torch.cat([table[b, :blocks[b]] for b in range(B)]).to(torch.int32).cuda()
    last = torch.tensor([(n - 1) % page + 1 for n in lens_total], dtype=torch.int32, device="cuda")
    if Lq == 1:
        w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(fws, "NHD", use_tensor_cores=True)
        w.plan(indptr, indices, last, H, HK, D, page, q_data_type=torch.float16, kv_data_type=torch.float16)
        q3 = q.view(B, H, D)
        return lambda: w.run(q3, (kc, vc)).view(B, 1, H, D)
    w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(fws, "NHD", backend="fa3")
    qo = torch.arange(0, (B + 1) * Lq, Lq, dtype=torch.int32, device="cuda")
    w.plan(qo, indptr, indices, last, H, HK, D, page, causal=causal, q_data_type=torch.float16, kv_data_type=torch.float16)
    qp = q.reshape(B * Lq, H, D)
    return lambda: w.run(qp, (kc, vc)).view(B, Lq, H, D)


def workload(name, B, Lq, sn, lens, page, causal, copy_bw):
    g = torch.Generator().manual_seed(1)
    blocks = [(n + sn + page - 1) // page for n in lens]
    n_pages = sum(blocks) + 4
    perm = torch.randperm(n_pages, generator=g).to(torch.int32)
    table = torch.zeros(B, max(blocks), dtype=torch.int32)
    at = 0
    for b in range(B):
        table[b, :blocks[b]] = perm[at:at + blocks[b]]
        at += blocks[b]
    kc = torch.randn(n_pages, page, HK, D, dtype=torch.float16, device="cuda")
    vc = torch.randn(n_pages, page, HK, D, dtype=torch.float16, device="cuda")
    q = torch.randn(B, Lq, H, D, dtype=torch.float16, device="cuda")
    kn = torch.randn(B, sn, HK, D, dtype=torch.float16, device="cuda")
    vn = torch.randn(B, sn, HK, D, dtype=torch.float16, device="cuda")
    cs = torch.tensor(lens, dtype=torch.int32, device="cuda")
    tab = table.cuda()
    out = qattn.attention_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=cs, block_table=tab, causal=causal)
    # the contiguous tensors the call attends to (after its append): per sequence, then padded runs of equal length
    ks = [kc[tab[b, :blocks[b]].long()].reshape(-1, HK, D)[:lens[b] + sn] for b in range(B)]
    vs = [vc[tab[b, :blocks[b]].long()].reshape(-1, HK, D)[:lens[b] + sn] for b in range(B)]
    sdpa = None
    if len(set(lens)) == 1:  # one tensor; SDPA too when there is no mask (its causal is top-left aligned)
        kd, vd = torch.stack(ks), torch.stack(vs)

        def contiguous():
            return qattn.attention(q, kd, vd, causal=causal)
        if not causal:
            qs, kt, vt = q.transpose(1, 2), kd.transpose(1, 2), vd.transpose(1, 2)

            def sdpa():
                return F.scaled_dot_product_attention(qs, kt, vt, enable_gqa=True)
    else:
        def contiguous():
            return [qattn.attention(q[b:b + 1], ks[b][None], vs[b][None], causal=causal) for b in range(B)]
    ref = contiguous()
    ref = torch.stack([r[0] for r in ref]) if isinstance(ref, list) else ref
    err = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
    kv_bytes = sum(k.numel() + v.numel() for k, v in zip(ks, vs)) * 2
    t_kv = timeit(lambda: qattn.attention_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=cs, block_table=tab, causal=causal))
    t_c = timeit(contiguous)
    row = dict(name=name, B=B, Lq=Lq, new=sn, lens=[min(lens), max(lens)], page=page, causal=causal, kvcache_ms=t_kv * 1e3,
               contiguous_ms=t_c * 1e3, ratio_to_contiguous=t_c / t_kv, gather_floor_ms=2 * kv_bytes / copy_bw * 1e3, relL2_vs_contiguous=err)
    if sdpa is not None:
        row["sdpa_ms"] = timeit(sdpa) * 1e3
        row["ratio_to_sdpa"] = row["sdpa_ms"] / row["kvcache_ms"]
    try:  # attention alone; the qattn call also appends the new tokens
        fi = flashinfer_peer(q, kc, vc, table, blocks, [n + sn for n in lens], page, causal)
        fi()
        row["flashinfer_ms"] = timeit(fi) * 1e3
        row["ratio_to_flashinfer"] = row["flashinfer_ms"] / row["kvcache_ms"]
    except Exception as e:  # not installed, or an API of another version
        print("flashinfer skipped: %s: %s" % (type(e).__name__, e), flush=True)
    print(json.dumps(row), flush=True)
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    copy_bw = copy_bandwidth()
    print("copy bandwidth (clone 4 GiB, read+write): %.0f GB/s" % (copy_bw / 1e9), flush=True)
    rows = [workload("decode equal", 16, 1, 1, [8192] * 16, 16, False, copy_bw),
            workload("decode unequal", 16, 1, 1, [4096 + 256 * i for i in range(16)], 16, False, copy_bw),
            workload("prefill after prefix", 2, 2048, 2048, [6144, 6144], 256, True, copy_bw)]
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "gpu_kvcache.json"), "w") as f:
            json.dump(dict(copy_GBps=copy_bw / 1e9, device=torch.cuda.get_device_name(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
