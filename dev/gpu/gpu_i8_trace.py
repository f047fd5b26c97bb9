#!/usr/bin/env python3
"""Where the cycles of the wgmma INT8 kernel go: a per-step and per-item clock trace, dense and block-sparse.

Needs a library built with dev/gpu/gpu_i8_trace.patch (as a tree variant: copy it to .ab/p/i8trace.patch,
`bash dev/gpu/prebuilt.sh pack` here, then on the device Q/i8trace/libqattn.so). Thread 0 of each consumer
warpgroup of the first 132 blocks records clock64 at ten points of each of its first 256 loop steps; the
producer thread records six points of each of its first 24 items. Printed per case:
- per warpgroup, the median cycles of each segment over the steps that stay inside a work item ("normal")
  and over those that cross into the next item ("crossing"), and each segment's share of all traced cycles
  (where the time of a call goes: e.g. 'wait K/V tile' at crossings is the producer arriving late);
- the item period (cycles between a warpgroup's crossings) and the live tiles per item;
- the producer's per-item segments (median cycles): waiting for a free Q buffer, deciding the item (decode,
  block-sparse count), its Q copy and first tile (first tile's walk and a free stage), the other tiles, the
  next ticket (the atomic).
Cases: dense B1 L 16k H16 (the first 256 steps only), and block-sparse at --densities over random 128 x 128
maps (bench/gpu_blocksparse.py's), where one call fits the trace.

Usage: python3 dev/gpu/gpu_i8_trace.py --lib LIB [--densities 0.1,0.05] [--out DIR]
"""
import argparse
import ctypes as C
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
from gpu_blocksparse import random_map  # noqa: E402
from gpu_compare import PREC_INT8, QAttn, kernel_ms  # noqa: E402

NB, TS, TP, TI, TPP = 132, 256, 10, 24, 6  # as in the patch
SEGMENTS = ["loop top", "next item", "wait K/V tile", "ping-pong turn", "issue P V + S", "wait products",
            "O update", "row store", "wait S", "softmax (+ O update off crossings)"]
PSEG = ["wait Q buffer", "decode + count", "Q copy + first tile", "other tiles", "next ticket"]
FLAG = 1 << 63


def consumer_stats(buf):
    res = {}
    for wg in range(2):
        seg = {"normal": [[] for _ in range(TP)], "crossing": [[] for _ in range(TP)]}
        periods = []
        for b in range(NB):
            base = (b * 2 + wg) * TS * TP
            last_cross = None
            for st in range(1, TS):
                row = [buf[base + st * TP + i] for i in range(TP)]
                prev_end = buf[base + (st - 1) * TP + 9] & ~FLAG
                if row[9] == 0 or prev_end == 0:
                    break
                kind = "crossing" if row[9] & FLAG else "normal"
                r = [x & ~FLAG for x in row]
                seg[kind][0].append(r[0] - prev_end)
                for i in range(1, TP):
                    seg[kind][i].append(r[i] - r[i - 1])
                if kind == "crossing":
                    if last_cross is not None:
                        periods.append(r[9] - last_cross)
                    last_cross = r[9]
        total = sum(sum(x) for s in seg.values() for x in s) or 1
        out = {}
        for kind, s in seg.items():
            out[kind] = {SEGMENTS[i]: round(statistics.median(x)) if x else None for i, x in enumerate(s)}
            out[kind]["steps"] = len(s[0])
            out[kind + " share"] = {SEGMENTS[i]: round(sum(x) / total, 3) for i, x in enumerate(s)}
        out["item period"] = round(statistics.median(periods)) if periods else None
        res["wg%d" % wg] = out
    return res


def producer_stats(buf):
    base = NB * 2 * TS * TP
    seg = [[] for _ in PSEG]
    for b in range(NB):
        for j in range(TI):
            r = [buf[base + (b * TI + j) * TPP + k] for k in range(TPP)]
            if 0 in r:
                continue
            for k in range(len(PSEG)):
                seg[k].append(r[k + 1] - r[k])
    return {PSEG[k]: round(statistics.median(x)) if x else None for k, x in enumerate(seg)} | {"items": len(seg[0])}


def trace(qa, q, k, v, o, bmask=None, bs=128):
    p = qa.params(q, k, v, o, False, PREC_INT8)
    if bmask is not None:
        H, nqb, nkb = bmask.shape
        p.block_mask, p.block_mask_q, p.block_mask_k = bmask.data_ptr(), bs, bs
        p.block_mask_batch_stride, p.block_mask_head_stride, p.block_mask_row_stride = H * nqb * nkb, nqb * nkb, nkb
    res = {"kernel ms": kernel_ms(lambda: qa.forward(p), "fwd_i8")}
    torch.cuda.synchronize()
    if qa.lib.qattn_debug_trace_clear() != 0:
        raise RuntimeError("qattn_debug_trace_clear failed")
    qa.forward(p)
    buf = (C.c_ulonglong * (NB * 2 * TS * TP + NB * TI * TPP))()
    if qa.lib.qattn_debug_trace(buf) != 0:
        raise RuntimeError("qattn_debug_trace failed (library not built with the trace patch?)")
    res["consumers"] = consumer_stats(buf)
    res["producer"] = producer_stats(buf)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--densities", default="0.1,0.05")
    ap.add_argument("--seqlen", type=int, default=16384)
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    qa = QAttn(args.lib)
    qa.lib.qattn_debug_trace.argtypes = [C.c_void_p]
    L, H, D, bs = args.seqlen, 16, 128, 128
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, L, H, D, device="cuda", dtype=torch.float16) for _ in range(3))
    o = torch.empty_like(q)
    gen = torch.Generator().manual_seed(7)
    out = {"dense": trace(qa, q, k, v, o)}
    nb = (L + bs - 1) // bs
    for d in (float(x) for x in args.densities.split(",")):
        m = random_map(H, nb, nb, d, gen).cuda().contiguous()
        out["bs %.2f (%d tiles)" % (d, int(m[0, 0].sum()))] = trace(qa, q, k, v, o, m, bs)
    print("Median cycles (SM clock) per segment of a consumer loop step, B1 L %d H16 D128 INT8, device %s"
          % (L, torch.cuda.get_device_name()))
    cols = [(n, wg, kind) for n in out for wg in ("wg0", "wg1") for kind in ("normal", "crossing")]
    print("| segment | " + " | ".join("%s %s %s" % c for c in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for sname in SEGMENTS + ["steps"]:
        print("| %s | " % sname + " | ".join(str(out[n]["consumers"][wg][kind][sname]) for n, wg, kind in cols) + " |")
    print("\nShare of all traced consumer cycles per segment (normal + crossing steps)")
    cols2 = [(n, wg) for n in out for wg in ("wg0", "wg1")]
    print("| segment | " + " | ".join("%s %s" % c for c in cols2) + " |")
    print("|---|" + "---|" * len(cols2))
    for sname in SEGMENTS:
        print("| %s | " % sname + " | ".join("%.3f / %.3f" % (out[n]["consumers"][wg]["normal share"][sname],
                                                                 out[n]["consumers"][wg]["crossing share"][sname])
                                               for n, wg in cols2) + " |")
    print("| item period (cycles) | " + " | ".join(str(out[n]["consumers"][wg]["item period"]) for n, wg in cols2) + " |")
    print("| kernel ms (this traced build) | " + " | ".join("%.3f" % out[n]["kernel ms"] for n, _ in cols2) + " |")
    print("\nProducer, median cycles per item")
    print("| segment | " + " | ".join(out) + " |")
    print("|---|" + "---|" * len(out))
    for sname in PSEG + ["items"]:
        print("| %s | " % sname + " | ".join(str(out[n]["producer"][sname]) for n in out) + " |")
    with open(os.path.join(args.out, "gpu_i8_trace.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
