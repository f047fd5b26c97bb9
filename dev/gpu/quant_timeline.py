#!/usr/bin/env python3
"""Per-item timeline of the INT8 quantization pass (dev only): a library built from a quant_i8.cu that
dev/gpu/quant_trace.py instrumented. Runs the INT8 forward on N(0,1) FP16 inputs (B*L 16k, H 16, D 128)
and prints, per item kind, the count, the mean and median time per item, the mean wait, the block-time
share and when the kind's items started and ended within the launch.

    python3 dev/gpu/quant_timeline.py --lib LIB [--lens 4096,16384] [--json OUT.json]"""
import argparse
import ctypes as C
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
from gpu_compare import PREC_INT8, QAttn  # noqa: E402

KINDS = ("Q ranges", "statistics", "K/V tiles", "Q rows")


class Rec(C.Structure):
    _fields_ = [("item", C.c_int), ("kind", C.c_int), ("sm", C.c_int), ("pad", C.c_int),
                ("t0", C.c_ulonglong), ("t1", C.c_ulonglong), ("t2", C.c_ulonglong)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--lens", default="4096,16384")
    ap.add_argument("--json")
    args = ap.parse_args()
    qa = QAttn(args.lib)
    lib = C.CDLL(args.lib)
    out = {}
    for L in [int(x) for x in args.lens.split(",")]:
        B, H, D = 16384 // L, 16, 128
        q, k, v = (torch.randn(B, L, H, D, device="cuda", dtype=torch.float16) for _ in range(3))
        o = torch.empty_like(q)
        p = qa.params(q, k, v, o, False, PREC_INT8)
        for _ in range(3):
            qa.forward(p)
        torch.cuda.synchronize()
        lib.qattn_dev_qtrace_reset()
        qa.forward(p)
        torch.cuda.synchronize()
        n = 1 << 16
        recs = (Rec * n)()
        lib.qattn_dev_qtrace(recs, n)
        rs = [r for r in recs if r.t2 > 0]
        t0 = min(r.t0 for r in rs)
        span = (max(r.t2 for r in rs) - t0) / 1e3
        print("L %d: %d items, span %.1f us (first start to last end)" % (L, len(rs), span))
        print("  kind        count  mean us  median us  mean wait us  block-us share  starts (us)  ends (us)")
        tot = sum(r.t2 - r.t0 for r in rs)
        row = {"span_us": span, "items": len(rs), "kinds": {}}
        for kd, name in enumerate(KINDS):
            ks = [r for r in rs if r.kind == kd]
            if not ks:
                continue
            d = [(r.t2 - r.t0) / 1e3 for r in ks]
            wt = [(r.t1 - r.t0) / 1e3 for r in ks if r.t1 > 0]
            st = sorted((r.t0 - t0) / 1e3 for r in ks)
            en = sorted((r.t2 - t0) / 1e3 for r in ks)
            share = sum(r.t2 - r.t0 for r in ks) / tot
            print("  %-10s %6d %8.2f %10.2f %13.2f %15.2f  %5.1f-%5.1f  %5.1f-%5.1f" % (
                name, len(ks), statistics.mean(d), statistics.median(d), statistics.mean(wt) if wt else 0.0, share,
                st[0], st[-1], en[0], en[-1]))
            row["kinds"][name] = dict(count=len(ks), mean_us=statistics.mean(d), median_us=statistics.median(d),
                                      wait_us=statistics.mean(wt) if wt else 0.0, share=share)
        # concurrency: blocks resident over time, in 10 slices of the span
        sl = []
        for i in range(10):
            a, b = t0 + span * 1e3 * i / 10, t0 + span * 1e3 * (i + 1) / 10
            busy = sum(max(0, min(r.t2, b) - max(r.t0, a)) for r in rs) / (b - a)
            kinds = [sum(max(0, min(r.t2, b) - max(r.t0, a)) for r in rs if r.kind == kd) / (b - a) for kd in range(4)]
            sl.append((busy, kinds))
        print("  resident blocks per tenth of the span (Q ranges / statistics / tiles / Q rows):")
        print("   " + "  ".join("%.0f(%s)" % (b, "/".join("%.0f" % x for x in ks)) for b, ks in sl))
        row["slices"] = sl
        out[L] = row
    if args.json:
        json.dump(out, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
