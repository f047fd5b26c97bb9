#!/usr/bin/env python3
"""Stall samples of one kernel from `ncu -i REP --page source --csv --print-source sass` (CSV path): the share
per opcode and the N hottest SASS lines.  Usage: python3 dev/gpu/ncu_stalls.py SOURCE.csv [N]"""
import collections
import csv
import sys


def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return 0.0


rows = list(csv.DictReader(open(sys.argv[1])))
top = int(sys.argv[2]) if len(sys.argv) > 2 else 30
col = next((k for k in (rows[0] if rows else {}) if k.startswith("Warp Stall Sampling (All")), None)
if col is None:
    sys.exit("no stall-sampling column; columns: %s" % (list(rows[0]) if rows else "none"))
total = sum(num(r[col]) for r in rows) or 1.0
by_op = collections.Counter()
for r in rows:
    words = r.get("Source", "").split()
    op = words[0] if words and not words[0].startswith("@") else (words[1] if len(words) > 1 else "?")
    by_op[op.split(".")[0]] += num(r[col])
print("stall samples by opcode (%):", ", ".join("%s %.1f" % (o, 100 * c / total) for o, c in by_op.most_common(20)))
for r in sorted(rows, key=lambda r: -num(r[col]))[:top]:
    print("%5.2f  %s  %s" % (100 * num(r[col]) / total, r.get("Address", ""), r.get("Source", "")[:100]))
