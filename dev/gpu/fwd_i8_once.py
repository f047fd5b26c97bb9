#!/usr/bin/env python3
"""Two INT8 forwards (B 4, H 16, L 4096, D 128, FP16) through the Python binding, for profilers that skip
the first launch: ncu --launch-skip 1 --launch-count 1 python3 dev/gpu/fwd_i8_once.py (QATTN_LIBRARY set)."""
import torch

import qattn

q, k, v = (torch.randn(4, 16, 4096, 128, device="cuda", dtype=torch.float16) for _ in range(3))
for _ in range(2):
    qattn.attention(q, k, v, precision="int8", layout="bhsd")
torch.cuda.synchronize()
