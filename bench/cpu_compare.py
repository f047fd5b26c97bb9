"""qattn on the CPU against torch.nn.functional.scaled_dot_product_attention on the CPU, same
inputs, same process, same thread count; prints one table (GFLOP/s and the ratio) and, with
--json, one JSON object per line.

    PYTHONPATH=python QATTN_LIBRARY=build/libqattn.so python3 bench/cpu_compare.py --threads 2
    ... --isa avx2,avx512      # one qattn column per ISA tier, timed in the same rounds
    ... --only prefill         # or decode
    ... --baseline-lib /tmp/old/libqattn.so   # a column 'base' (that build, first --isa tier), same rounds

Cases: prefill B1 H8 L 2048 and 4096 D128, causal and not, FP32 and BF16 inputs (qattn
accumulates in FP32 in both; torch's BF16 SDPA is its own kernel); decode with GQA, B1 H32 HK8
D128, one query over 32768 keys, FP32 and BF16. FLOPs: 4 * B * H * D * (visible query/key
pairs), the FlashAttention convention with causal counted exactly. Both sides get the same
tensors in torch SDPA's [B, H, L, D] layout (qattn reads it through strides, no copy); for GQA
torch gets enable_gqa=True (the same [B, HK, L, D] K/V), or, with --torch-kv expanded or where
its SDPA lacks enable_gqa, K/V expanded to H heads outside the timed region (torch 2.15's CPU
decode is several times faster that way). --ggml adds ggml's CPU flash attention
(ggml_flash_attn_ext, the kernel llama.cpp runs on CPU) through the ggml-python package
(`pip install ggml-python`, which builds its vendored ggml from source with -march=native), with
the same values as FP32 K/V (ggml-python has no BF16 arrays), an F16 -inf mask for causal, graph
built once, ggml_graph_compute_with_ctx timed. Timing: --iters rounds after one warm-up of each;
in each round every contender runs once, in turn (so a load change on a shared machine hits all
alike); medians per contender, ratio = torch median / qattn median.
"""
import argparse
import importlib.util
import json
import os
import statistics
import sys
import time

import torch
import qattn

PREFILL = [(1, 8, 8, L, L, 128, causal) for L in (2048, 4096) for causal in (False, True)]
DECODE = [(1, 32, 8, 1, 32768, 128, False)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def ggml_fn(q, k, v, causal, threads):
    """ggml_flash_attn_ext on the same values (FP32), graph built once; returns (run, result)."""
    import ctypes
    import math
    import numpy as np
    import ggml
    import ggml.utils as gu
    b, h, lq, d = q.shape
    lk = k.shape[2]
    pad = (lq + 63) // 64 * 64  # mask rows padded (ggml asks for GGML_KQ_MASK_PAD)
    mem = (q.numel() + 2 * k.numel() + b * h * lq * d) * 4 + lk * pad * 2 + (64 << 20)
    ctx = ggml.ggml_init(ggml.ggml_init_params(mem_size=mem, mem_buffer=None, no_alloc=False))
    # torch [B, H, L, D] contiguous is ggml's ne = [D, L, H, B]: the same bytes
    gq, gk, gv = (gu.from_numpy(np.ascontiguousarray(x.float().numpy()), ctx) for x in (q, k, v))
    mask = None
    if causal:
        m = np.zeros((pad, lk), np.float16)
        m[np.triu_indices(lq, lk - lq + 1, lk)] = -np.inf  # bottom-right aligned, as qattn
        mask = gu.from_numpy(m, ctx)
    out = ggml.ggml_flash_attn_ext(ctx, gq, gk, gv, mask, 1.0 / math.sqrt(d), 0.0, 0.0)
    gf = ggml.ggml_new_graph(ctx)
    ggml.ggml_build_forward_expand(gf, out)
    run = lambda: ggml.ggml_graph_compute_with_ctx(ctx, gf, threads)
    # out: ne = [D, H, Lq, B] -> [B, Lq, H, D] -> [B, H, Lq, D]
    result = lambda: torch.from_numpy(gu.to_numpy(out).copy()).reshape(b, lq, h, d).permute(0, 2, 1, 3)
    run.keep = (ctx, gq, gk, gv, mask, out, gf)  # alive as long as run
    return run, result


def load_baseline(path):
    """A second copy of the qattn package bound to the library at path (before/after in one process)."""
    pkg = os.path.dirname(os.path.abspath(qattn.__file__))
    saved = os.environ.get("QATTN_LIBRARY")
    os.environ["QATTN_LIBRARY"] = path
    try:
        spec = importlib.util.spec_from_file_location("qattn_base", os.path.join(pkg, "__init__.py"), submodule_search_locations=[pkg])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["qattn_base"] = mod
        spec.loader.exec_module(mod)
        mod.info()  # loads the library now, while QATTN_LIBRARY names it
    finally:
        if saved is None:
            del os.environ["QATTN_LIBRARY"]
        else:
            os.environ["QATTN_LIBRARY"] = saved
    return mod


BASE = {}  # "base" -> (module, isa) with --baseline-lib


def visible_pairs(lq, lk, causal):
    if not causal:
        return lq * lk
    return sum(max(0, min(lk, i + lk - lq + 1)) for i in range(lq))


def sdpa_fn(q, k, v, causal, expand_kv):
    """torch SDPA on [B, H, L, D] q and [B, HK, L, D] k/v; GQA natively where torch has it, unless
    expand_kv (K/V repeated to H heads outside the timed region: torch's fastest decode form)."""
    h, hk = q.shape[1], k.shape[1]
    f = torch.nn.functional.scaled_dot_product_attention
    if h != hk and expand_kv:
        ke, ve = k.repeat_interleave(h // hk, dim=1), v.repeat_interleave(h // hk, dim=1)
        return lambda: f(q, ke, ve, is_causal=causal), "expanded K/V"
    if h != hk:
        try:
            f(q[:, :, :1], k[:, :, :1], v[:, :, :1], enable_gqa=True)
            return lambda: f(q, k, v, is_causal=causal, enable_gqa=True), "enable_gqa"
        except TypeError:
            ke, ve = k.repeat_interleave(h // hk, dim=1), v.repeat_interleave(h // hk, dim=1)
            return lambda: f(q, ke, ve, is_causal=causal), "expanded K/V"
    return lambda: f(q, k, v, is_causal=causal), ""


def run_case(shape, dtype_name, isas, threads, iters, with_ggml, expand_kv, clock):
    b, h, hk, lq, lk, d, causal = shape
    if causal and lq != lk:
        raise SystemExit("causal Lq != Lk differs between SDPA (top-left) and qattn (bottom-right)")
    dt = DTYPES[dtype_name]
    q = torch.randn(b, h, lq, d).to(dt)
    k = torch.randn(b, hk, lk, d).to(dt)
    v = torch.randn(b, hk, lk, d).to(dt)
    sdpa, gqa_note = sdpa_fn(q, k, v, causal, expand_kv)
    fns = {"torch": sdpa}
    for isa in isas:
        mod, tier = BASE[isa] if isa in BASE else (qattn, isa)
        fns[isa] = (lambda mod=mod, tier=tier: mod.attention(q, k, v, causal=causal, layout="bhsd", threads=threads,
                                                             isa=None if tier == "auto" else tier))
    if with_ggml:
        fns["ggml"], ggml_result = ggml_fn(q, k, v, causal, threads)
    times = {name: [] for name in fns}
    for f in fns.values():
        f()  # warm-up (and the context cache)
    for _ in range(iters):
        for name, f in fns.items():
            t0 = clock()
            f()
            times[name].append(clock() - t0)
    ref = sdpa().float()
    flops = 4.0 * b * h * d * visible_pairs(lq, lk, causal)
    row = dict(batch=b, heads=h, kv_heads=hk, seqlen_q=lq, seqlen_k=lk, head_dim=d, causal=causal, dtype=dtype_name,
               threads=threads, torch_gflops=flops / statistics.median(times["torch"]) / 1e9, torch_gqa=gqa_note)
    for isa in isas:
        med = statistics.median(times[isa])
        row[f"qattn_{isa}_gflops"] = flops / med / 1e9
        row[f"ratio_{isa}"] = statistics.median(times["torch"]) / med
        row[f"max_abs_diff_{isa}"] = (fns[isa]().float() - ref).abs().max().item()
    if with_ggml:
        med = statistics.median(times["ggml"])
        row["ggml_gflops"], row["ratio_ggml"] = flops / med / 1e9, statistics.median(times["torch"]) / med
        row["max_abs_diff_ggml"] = (ggml_result() - ref).abs().max().item()
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--isa", default="auto", help="comma-separated qattn ISA tiers (auto, avx2, avx512, ...)")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--only", choices=("prefill", "decode"), default=None)
    ap.add_argument("--ggml", action="store_true", help="add ggml_flash_attn_ext (needs the ggml-python package)")
    ap.add_argument("--torch-kv", choices=("native", "expanded"), default="native",
                    help="GQA for torch: enable_gqa on the same K/V (default), or K/V expanded to H heads beforehand")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: process CPU time (with --threads 1 only; other load on a shared machine then matters less)")
    ap.add_argument("--baseline-lib", default=None,
                    help="another libqattn.so, timed as column 'base' (first --isa tier) in the same rounds")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    isas = args.isa.split(",")
    if args.baseline_lib:
        BASE["base"] = (load_baseline(args.baseline_lib), isas[0])
        isas = ["base"] + isas
    if args.clock == "cpu" and args.threads != 1:
        raise SystemExit("--clock cpu needs --threads 1 (process CPU time sums over threads)")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shapes = (PREFILL if args.only != "decode" else []) + (DECODE if args.only != "prefill" else [])
    if not args.json:
        print(f"qattn {qattn.__version__} (default isa {qattn.info()['isa']}) vs torch {torch.__version__} SDPA "
              f"(cpu capability {torch.backends.cpu.get_cpu_capability()}), CPU, {args.threads} threads, "
              f"medians of {args.iters} alternated rounds, {args.clock} clock")
        cols = " ".join(f"{'qattn ' + i:>13} {'ratio':>6}" for i in isas) + (f" {'ggml':>7} {'ratio':>6}" if args.ggml else "")
        print(f"{'dtype':>5} {'B':>2} {'H':>3} {'HK':>3} {'Lq':>6} {'Lk':>6} {'D':>4} {'causal':>6} | {'torch GF/s':>10} {cols} {'max|diff|':>9}")
    for dtype_name in args.dtypes.split(","):
        for shape in shapes:
            row = run_case(shape, dtype_name, isas, args.threads, args.iters, args.ggml, args.torch_kv == "expanded", clock)
            if args.json:
                print(json.dumps(row), flush=True)
                continue
            b, h, hk, lq, lk, d, causal = shape
            cols = " ".join(f"{row[f'qattn_{i}_gflops']:>13.1f} {row[f'ratio_{i}']:>6.2f}" for i in isas)
            if args.ggml:
                cols += f" {row['ggml_gflops']:>7.1f} {row['ratio_ggml']:>6.2f}"
            diff = max(row[f"max_abs_diff_{i}"] for i in isas + (["ggml"] if args.ggml else []))
            print(f"{dtype_name:>5} {b:>2} {h:>3} {hk:>3} {lq:>6} {lk:>6} {d:>4} {str(causal):>6} | {row['torch_gflops']:>10.1f} "
                  f"{cols} {diff:>9.1e}", flush=True)


if __name__ == "__main__":
    main()
