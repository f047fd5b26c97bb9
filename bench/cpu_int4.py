# precision int4 vs int8 vs fp32 prefill on one thread, CPU time (docs/benchmarks.md):
#   QATTN_LIB=$PWD/build/libqattn.so python3 bench/cpu_int4.py
import time, numpy as np, sys
sys.path.insert(0, "python")
import qattn
rng = np.random.default_rng(1)
q, k, v = (rng.standard_normal((1, 2048, 8, 128)).astype(np.float32) for _ in range(3))
best = {}
for r in range(5):
    for p in ("fp32", "int8", "int4"):
        t = time.process_time(); qattn.attention(q, k, v, precision=p, threads=1); t = time.process_time() - t
        best[p] = min(best.get(p, 1e9), t)
print({p: round(t * 1e3, 1) for p, t in best.items()}, "int8/int4 %.3f fp32/int4 %.2f" % (best["int8"] / best["int4"], best["fp32"] / best["int4"]))
