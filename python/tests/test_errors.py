"""Every bad input raises TypeError/ValueError (the library's own message where it decides), never crashes."""
import numpy as np
import pytest

import qattn
from conftest import randn


@pytest.fixture
def qkv(rng):
    return randn(rng, (2, 8, 4, 64)), randn(rng, (2, 12, 2, 64)), randn(rng, (2, 12, 2, 64))


def test_none(qkv):
    q, k, v = qkv
    for args in [(None, k, v), (q, None, v), (q, k, None)]:
        with pytest.raises(TypeError, match="is None"):
            qattn.attention(*args)


@pytest.mark.parametrize("dt", [np.float64, np.int32, np.int8, np.complex64, bool])
def test_wrong_dtype(qkv, dt):
    q, k, v = qkv
    with pytest.raises(TypeError, match="dtype"):
        qattn.attention(q.astype(dt), k, v)


def test_mixed_dtypes(qkv):
    q, k, v = qkv
    with pytest.raises(TypeError, match="share a dtype"):
        qattn.attention(q, k.astype(np.float16), v)


@pytest.mark.parametrize("bad", [[1.0, 2.0], 3, "q", object()])
def test_not_an_array(qkv, bad):
    _, k, v = qkv
    with pytest.raises(TypeError, match="numpy.ndarray or torch.Tensor"):
        qattn.attention(bad, k, v)


def test_non_contiguous_last_dim(rng, qkv):
    q, k, v = qkv
    wide = randn(rng, (2, 8, 4, 128))
    with pytest.raises(ValueError, match="last .head_dim. dimension must be contiguous"):
        qattn.attention(wide[..., ::2], k, v)
    with pytest.raises(ValueError, match="last .head_dim. dimension must be contiguous"):
        qattn.attention(q, k, np.asfortranarray(v))
    with pytest.raises(ValueError, match="last .head_dim. dimension must be contiguous"):
        qattn.attention(q[..., ::-1], k, v)  # negative last-dim stride: not silently copied


def test_wrong_ndim(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="4 dims"):
        qattn.attention(q[0], k, v)
    with pytest.raises(ValueError, match="4 dims"):
        qattn.attention(q, k[None], v)


def test_mismatched_shapes(qkv, rng):
    q, k, v = qkv
    with pytest.raises(ValueError, match="k has shape .* but v has shape"):
        qattn.attention(q, k, v[:, :11])
    with pytest.raises(ValueError, match="batch"):
        qattn.attention(q[:1], k, v)
    with pytest.raises(ValueError, match="head_dim"):
        qattn.attention(q, randn(rng, (2, 12, 2, 32)), randn(rng, (2, 12, 2, 32)))


def test_heads_not_divisible(rng):
    q, k, v = randn(rng, (1, 4, 12, 64)), randn(rng, (1, 4, 8, 64)), randn(rng, (1, 4, 8, 64))
    with pytest.raises(ValueError, match="k has 8 heads, which does not divide q's 12 heads") as e:
        qattn.attention(q, k, v)
    assert e.value.status == -2 and isinstance(e.value, qattn.QattnError)


@pytest.mark.parametrize("D", [4, 20, 264])
def test_unsupported_head_dim_is_the_librarys_message(rng, D):
    q, k, v = randn(rng, (1, 4, 2, D)), randn(rng, (1, 4, 2, D)), randn(rng, (1, 4, 2, D))
    with pytest.raises(NotImplementedError, match="head_dim %d is not supported; qattn supports 8..256 in steps of 8" % D):
        qattn.attention(q, k, v)


def test_bad_options(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="layout"):
        qattn.attention(q, k, v, layout="sbhd")
    with pytest.raises(ValueError, match="precision"):
        qattn.attention(q, k, v, precision="fp64")
    with pytest.raises(ValueError, match="int8_scheme"):
        qattn.attention(q, k, v, int8_scheme="sage")  # needs precision="int8"
    with pytest.raises(TypeError, match="window"):
        qattn.attention(q, k, v, window=4)
    with pytest.raises(ValueError, match="window"):
        qattn.attention(q, k, v, window=(-2, 0))  # the library's range check
    with pytest.raises(ValueError, match="window"):
        qattn.attention(q, k, v, window=(2**40, 0))  # would wrap in an int32 field
    with pytest.raises(ValueError, match="scale=0"):
        qattn.attention(q, k, v, scale=0.0)
    with pytest.raises(ValueError, match="finite"):
        qattn.attention(q, k, v, scale=float("nan"))
    with pytest.raises(TypeError, match="scale"):
        qattn.attention(q, k, v, scale="1")
    with pytest.raises(ValueError, match="threads"):
        qattn.attention(q, k, v, threads=-1)
    with pytest.raises(ValueError, match="backend"):
        qattn.attention(q, k, v, backend="tpu")
    with pytest.raises(ValueError, match="cannot read tensors on cpu"):
        qattn.attention(q, k, v, backend="cuda")
    with pytest.raises(ValueError, match="max_seqlen"):
        qattn.attention(q, k, v, max_seqlen_q=8)


def test_precision_not_in_this_backend_is_unsupported(qkv):
    """INT8/FP8 are routed to the low-precision entry point; until it exists it must say so."""
    q, k, v = qkv
    try:
        o = qattn.attention(q, k, v, precision="int8")
    except NotImplementedError as e:
        assert "QATTN_ERR_UNSUPPORTED" in str(e)
    else:
        assert o.shape == q.shape and np.isfinite(o).all()


def test_bad_out(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="out has shape"):
        qattn.attention(q, k, v, out=np.empty((2, 8, 4, 32), np.float32))
    with pytest.raises(TypeError, match="dtype"):
        qattn.attention(q, k, v, out=np.empty(q.shape, np.float64))
    ro = np.empty(q.shape, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        qattn.attention(q, k, v, out=ro)
    with pytest.raises(ValueError, match="negative"):
        qattn.attention(q, k, v, out=np.empty(q.shape, np.float32)[:, ::-1])
    with pytest.raises(ValueError, match="overlaps q"):
        qattn.attention(q, k, v, out=q)
    big = np.empty((2, 8, 4, 64), np.float32)
    with pytest.raises(ValueError, match="overlap"):  # the library's injectivity check
        qattn.attention(q, k, v, out=np.lib.stride_tricks.as_strided(big, strides=(0, 256 * 4, 64 * 4, 4)))


def test_varlen_errors(rng):
    H, D = 2, 64
    q, k, v = randn(rng, (10, H, D)), randn(rng, (12, H, D)), randn(rng, (12, H, D))
    cq, ck = np.array([0, 4, 10], np.int32), np.array([0, 5, 12], np.int32)
    with pytest.raises(TypeError, match="pass both or neither"):
        qattn.attention(q, k, v, cu_seqlens_q=cq)
    with pytest.raises(ValueError, match="ends at 11 but the packed tensor has 10 rows"):
        qattn.attention(q, k, v, cu_seqlens_q=[0, 4, 11], cu_seqlens_k=ck)
    with pytest.raises(ValueError, match="ends at 13"):
        qattn.attention(q, k, v, cu_seqlens_q=cq, cu_seqlens_k=[0, 5, 13])
    with pytest.raises(ValueError, match="non-decreasing"):
        qattn.attention(q, k, v, cu_seqlens_q=[0, 12, 10], cu_seqlens_k=ck)
    with pytest.raises(ValueError, match="must be 0"):
        qattn.attention(q, k, v, cu_seqlens_q=[1, 4, 10], cu_seqlens_k=ck)
    with pytest.raises(ValueError, match="batch\\+1"):
        qattn.attention(q, k, v, cu_seqlens_q=cq, cu_seqlens_k=[0, 12])
    with pytest.raises(TypeError, match="integers"):
        qattn.attention(q, k, v, cu_seqlens_q=cq.astype(np.float32), cu_seqlens_k=ck)
    with pytest.raises(ValueError, match="outside"):
        qattn.attention(q, k, v, cu_seqlens_q=np.array([0, 4, 2**33]), cu_seqlens_k=ck)
    with pytest.raises(ValueError, match="1-D"):
        qattn.attention(q, k, v, cu_seqlens_q=cq[None], cu_seqlens_k=ck)
    with pytest.raises(ValueError, match="max_seqlen_q is 3 but the longest sequence has 6"):
        qattn.attention(q, k, v, cu_seqlens_q=cq, cu_seqlens_k=ck, max_seqlen_q=3)
    with pytest.raises(ValueError, match="packed"):
        qattn.attention(q[None], k, v, cu_seqlens_q=cq, cu_seqlens_k=ck)
    with pytest.raises(ValueError, match="layout must be 'bshd'"):
        qattn.attention(q, k, v, cu_seqlens_q=cq, cu_seqlens_k=ck, layout="bhsd")


def test_oracle_errors(qkv):
    q, k, v = qkv
    with pytest.raises(TypeError, match="dtype"):
        qattn.oracle(q.astype(np.float64), k, v)
    with pytest.raises(ValueError, match="does not divide"):
        qattn.oracle(q[:, :, :3], k, v)


def test_info_errors():
    with pytest.raises(ValueError, match="backend"):
        qattn.info(backend="gpu")
    with pytest.raises(ValueError, match="isa"):
        qattn.info(isa="avx1024")


def test_context_failure_raises_the_librarys_reason(qkv, monkeypatch):
    """QATTN_ISA=bogus used to raise a generic 'invalid argument': the reason comes from
    qattn_ctx_create_ex now. threads=7 gives a context not cached by earlier tests."""
    q, k, v = qkv
    monkeypatch.setenv("QATTN_ISA", "bogus")
    with pytest.raises(qattn.QattnValueError, match="QATTN_ISA=bogus is not one of"):
        qattn.attention(q, k, v, threads=7)


def test_thread_limit_is_the_librarys(qkv):
    q, k, v = qkv
    from qattn import _lib
    with pytest.raises(ValueError, match="threads"):
        qattn.attention(q, k, v, threads=_lib.MAX_THREADS + 1)


def test_only_documented_scheme_names(qkv):
    """'default' was accepted although no document names it; the schemes are qattn, intfa, sage."""
    q, k, v = qkv
    from qattn import _lib
    assert sorted(_lib.INT8_SCHEMES) == ["intfa", "qattn", "sage"]
    with pytest.raises(ValueError, match="int8_scheme"):
        qattn.attention(q, k, v, precision="int8", int8_scheme="default")
