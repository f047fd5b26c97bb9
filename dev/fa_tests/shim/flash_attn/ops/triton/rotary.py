"""apply_rotary on the CPU in plain torch (FlashAttention's Triton kernel does not run here).

The rule of FlashAttention's kernel: x (batch, seqlen, nheads, headdim), or (total, nheads, headdim)
with cu_seqlens; cos/sin (seqlen_ro, rotary_dim / 2); token t of sequence b at position
seqlen_offsets[b] + t; positions at or beyond seqlen_ro use cos = 1, sin = 0 (the kernel's masked
loads); only the first rotary_dim channels turn, in float32, rounded once to x's dtype; pairs
(2c, 2c + 1) when interleaved, else (c, c + rotary_dim / 2); conjugate negates sin.
This is the test reference for q and k in test_flash_attn_kvcache, so it does not use qattn.
"""
import torch


def apply_rotary(x, cos, sin, seqlen_offsets=0, cu_seqlens=None, max_seqlen=None, interleaved=False,
                 inplace=False, conjugate=False):
    ro_half = cos.shape[-1]
    rd = 2 * ro_half
    assert sin.shape == cos.shape and rd <= x.shape[-1]
    if cu_seqlens is not None:
        # (total, nheads, headdim): rotate each sequence with its own offset.
        out = x if inplace else x.clone()
        cu = cu_seqlens.tolist()
        for b in range(len(cu) - 1):
            off = seqlen_offsets[b] if isinstance(seqlen_offsets, torch.Tensor) else seqlen_offsets
            seg = x[cu[b]:cu[b + 1]].unsqueeze(0)
            out[cu[b]:cu[b + 1]] = apply_rotary(seg, cos, sin, int(off), None, None, interleaved, False, conjugate)[0]
        return out
    batch, seqlen = x.shape[0], x.shape[1]
    if isinstance(seqlen_offsets, torch.Tensor):
        offs = seqlen_offsets.to(device=x.device, dtype=torch.long).reshape(batch, 1)
    else:
        offs = torch.full((batch, 1), int(seqlen_offsets), dtype=torch.long, device=x.device)
    pos = offs + torch.arange(seqlen, device=x.device).reshape(1, seqlen)          # (b, s)
    valid = (pos < cos.shape[0]).unsqueeze(-1)
    idx = pos.clamp(max=cos.shape[0] - 1)
    c = torch.where(valid, cos.float()[idx], torch.ones((), dtype=torch.float32))   # (b, s, ro_half)
    s = torch.where(valid, sin.float()[idx], torch.zeros((), dtype=torch.float32))
    if conjugate:
        s = -s
    c, s = c.unsqueeze(2), s.unsqueeze(2)                                            # (b, s, 1, ro_half)
    xr = x[..., :rd].float()
    if interleaved:
        x0, x1 = xr[..., 0::2], xr[..., 1::2]
    else:
        x0, x1 = xr[..., :ro_half], xr[..., ro_half:]
    y0, y1 = x0 * c - x1 * s, x0 * s + x1 * c
    if interleaved:
        yr = torch.stack((y0, y1), dim=-1).flatten(-2)
    else:
        yr = torch.cat((y0, y1), dim=-1)
    out = x if inplace else x.clone()
    out[..., :rd] = yr.to(x.dtype)
    return out
