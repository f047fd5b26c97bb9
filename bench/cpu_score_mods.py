# Cost of softcap and ALiBi on the CPU FP32 prefill path, one thread, CPU time best of 5
# (docs/benchmarks.md, "Softcap and ALiBi cost"):
#   QATTN_LIBRARY=$PWD/build/libqattn.so QATTN_ISA=avx512 python3 bench/cpu_score_mods.py
# B 1, H 8, Lq = Lk = 2048, D 128, not causal; the ALiBi paper's slopes 2^(-8 (h + 1) / H).
import sys
import time

import numpy as np

sys.path.insert(0, "python")
import qattn  # noqa: E402

rng = np.random.default_rng(0)
B, L, H, D = 1, 2048, 8, 128
q, k, v = (rng.standard_normal((B, L, H, D)).astype(np.float32) for _ in range(3))
slopes = np.array([2.0 ** (-8.0 * (h + 1) / H) for h in range(H)], np.float32)
configs = {
    "plain": {},
    "softcap 30": {"softcap": 30.0},
    "alibi": {"alibi_slopes": slopes},
    "softcap 30 + alibi": {"softcap": 30.0, "alibi_slopes": slopes},
}
best = {name: float("inf") for name in configs}
qattn.attention(q, k, v, threads=1)  # warm-up
for _ in range(5):
    for name, kw in configs.items():
        t0 = time.process_time()
        qattn.attention(q, k, v, threads=1, **kw)
        best[name] = min(best[name], time.process_time() - t0)
for name in configs:
    print("%-20s %7.1f ms CPU  %.3fx" % (name, 1e3 * best[name], best[name] / best["plain"]))
