"""Block-sparse attention (BlockBERT) for qattn.attention(block_mask=...): checking a user's map and
building the CLI's patterns (qattn bench --block-sparse): random, blockbert, window.

A map is uint8 or bool [H, nq, nk] (every sequence of the batch) or [B, H, nq, nk], with
nq = ceil(Lq / block_q), nk = ceil(Lk / block_k); a nonzero entry computes that (query block,
key block) pair, zero skips it. An axis of length 1 (H or B) is shared (stride 0)."""
import numpy as np

from . import _lib

PATTERNS = ("random", "blockbert", "window")


def _block_sizes(block_size):
    if isinstance(block_size, (tuple, list)):
        if len(block_size) != 2:
            raise ValueError("block_size must be an int or a pair (block_q, block_k), got %r" % (block_size,))
        bq, bk = block_size
    else:
        bq = bk = block_size
    for name, b in (("block_q", bq), ("block_k", bk)):
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 16 or b % 16:
            raise ValueError("%s is %r; mask blocks are a positive multiple of 16 rows" % (name, b))
    return int(bq), int(bk)


def block_mask(pattern, heads, seqlen_q, seqlen_k=None, *, block_size=64, density, seed=0):
    """A uint8 map [heads, nq, nk] for attention(block_mask=..., block_size=block_size):
    "random": each (head, query block) row computes round(density * nk) key blocks drawn without
    replacement (seeded); "blockbert": BlockBERT's permutation pattern, query and key blocks in
    n = round(1 / density) bands, head h letting band i see band (i + h) mod n; "window": a sliding
    window around the diagonal plus one global block (key block 0 for all, query block 0 sees all)."""
    if pattern not in PATTERNS:
        raise ValueError("pattern must be one of %s, got %r" % (", ".join(PATTERNS), pattern))
    if not (0.0 < density <= 1.0):
        raise ValueError("density must be in (0, 1], got %r" % (density,))
    seqlen_k = seqlen_q if seqlen_k is None else seqlen_k
    bq, bk = _block_sizes(block_size)
    nq, nk = max(1, -(-seqlen_q // bq)), max(1, -(-seqlen_k // bk))
    m = np.zeros((heads, nq, nk), dtype=np.uint8)
    if pattern == "random":
        rng = np.random.default_rng(seed)
        want = int(round(density * nk))
        for h in range(heads):
            for i in range(nq):
                m[h, i, rng.choice(nk, size=want, replace=False)] = 1
    elif pattern == "blockbert":
        n = max(1, min(int(round(1.0 / density)), nq, nk))
        band_q = np.arange(nq) * n // nq
        band_k = np.arange(nk) * n // nk
        for h in range(heads):
            m[h] = band_k[None, :] == ((band_q + h) % n)[:, None]
    else:
        w = max(0, int(round((density * nk - 2.0) / 2.0)))
        diag = np.arange(nq) * (nk - 1) // (nq - 1) if nq > 1 else np.full(1, nk - 1)
        j = np.arange(nk)
        band = np.abs(j[None, :] - diag[:, None]) <= w
        band[0, :] = True
        band[:, 0] = True
        m[:] = band
    return m


def attach(p, block_mask, block_size, qt, keep):
    """Point params p (shapes set) at block_mask; the array (or its uint8 copy) goes into keep."""
    bq, bk = _block_sizes(block_size)
    nq, nk = max(1, -(-p.seqlen_q // bq)), max(1, -(-p.seqlen_k // bk))
    torch_mod = None
    if type(block_mask).__module__.startswith("torch"):
        import torch as torch_mod
        t = block_mask
        if t.dtype not in (torch_mod.uint8, torch_mod.bool):
            raise TypeError("block_mask has dtype %s; it must be uint8 or bool" % (t.dtype,))
        shape = tuple(t.shape)
    else:
        a = np.asarray(block_mask)
        if a.dtype not in (np.dtype(np.uint8), np.dtype(np.bool_)):
            raise TypeError("block_mask has dtype %s; it must be uint8 or bool" % (a.dtype,))
        shape = a.shape
    want = "[H, nq, nk] = [%d, %d, %d] or [B, H, nq, nk] with B = %d (blocks %d x %d)" % (p.n_heads, nq, nk, p.batch, bq, bk)
    if len(shape) not in (3, 4) or tuple(shape[-2:]) != (nq, nk) or shape[-3] not in (1, p.n_heads) \
            or (len(shape) == 4 and shape[0] not in (1, p.batch)):
        raise ValueError("block_mask has shape %s; expected %s" % (tuple(shape), want))
    if torch_mod is not None:
        t = block_mask.to(torch_mod.uint8).contiguous() if block_mask.dtype != torch_mod.uint8 or not block_mask.is_contiguous() else block_mask
        if t.device.type != qt.device.split(":")[0]:
            raise ValueError("block_mask is on %s but q is on %s" % (t.device, qt.device))
        ptr = t.data_ptr()
        keep.append(t)
    else:
        a = np.ascontiguousarray(a).view(np.uint8)
        if not qt.device.startswith("cpu"):
            raise ValueError("block_mask is a numpy array but q is on %s; pass a tensor on that device" % (qt.device,))
        ptr = a.ctypes.data
        keep.append(a)
    heads_axis = shape[-3]
    p.block_mask = ptr
    p.block_mask_q, p.block_mask_k = bq, bk
    p.block_mask_row_stride = nk
    p.block_mask_head_stride = nq * nk if heads_axis > 1 else 0
    p.block_mask_batch_stride = heads_axis * nq * nk if len(shape) == 4 and shape[0] > 1 else 0
