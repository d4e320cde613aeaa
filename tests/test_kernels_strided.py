"""The attention kernels address their operands through (flat buffer, element strides): any
(B, H, T, hs) view works, whatever the layout of the array that owns the memory.

Found by benchmarks/mutation_score.py: with every test operand a view of a C-ordered buffer, a
wrong fast-path condition (taking a Fortran-ordered owner for a C-ordered one) and a flat buffer one
element too short (Numba does not check bounds, so the read past its end still found the right
value) both went unnoticed."""

import numpy as np
import pytest

from kernels.attention import _strided, heads_backward, heads_forward

pytestmark = pytest.mark.usefixtures("one_numba_thread")  # tests/conftest.py

B, H, T, hs = 2, 3, 5, 4


def operand_views(rng, dtype=np.float64):
    """(B, H, T, hs) arrays of one shape and different layouts: C-ordered, Fortran-ordered,
    a head view of a fused (B, T, 3, H, hs) buffer, a view of a Fortran-ordered owner, read-only."""
    x = rng.normal(size=(B, H, T, hs)).astype(dtype)
    fused = np.zeros((B, T, 3, H, hs), dtype=dtype)
    fused[:, :, 1] = x.transpose(0, 2, 1, 3)
    f_owner = np.asfortranarray(np.zeros((B + 1, H, T, hs), dtype=dtype))
    f_owner[1:] = x
    readonly = x.copy()
    readonly.flags.writeable = False
    return {"C": np.ascontiguousarray(x), "F": np.asfortranarray(x),
            "fused head": fused[:, :, 1].transpose(0, 2, 1, 3), "F owner slice": f_owner[1:],
            "read-only": readonly}


@pytest.mark.parametrize("layout", ["C", "F", "fused head", "F owner slice", "read-only"])
def test_flat_buffer_and_strides_reach_every_element(layout):
    """flat[sum_i idx_i * stride_i] is a[idx] for every index, with NumPy's bounds-checked
    indexing, and writing there writes into a."""
    a = operand_views(np.random.default_rng(0))[layout]
    flat, st = _strided(a)
    idx = np.indices(a.shape).reshape(4, -1)                       # every (b, h, t, d)
    offsets = (idx * st[:4, None]).sum(axis=0)
    assert st[4] == a.shape[3]
    np.testing.assert_array_equal(flat[offsets], a[tuple(idx)])
    if a.flags.writeable:
        flat[offsets] = np.arange(a.size, dtype=a.dtype)
        np.testing.assert_array_equal(a[tuple(idx)], np.arange(a.size))


@pytest.mark.parametrize("layout", ["F", "fused head", "F owner slice", "read-only"])
def test_attention_kernels_give_the_same_result_for_any_layout(layout):
    rng = np.random.default_rng(1)
    q, k, v, dout = (operand_views(rng)[layout] for _ in range(4))
    ref = [np.ascontiguousarray(t) for t in (q, k, v, dout)]
    out_ref, att_ref = heads_forward(*ref[:3])
    dq_ref, dk_ref, dv_ref = heads_backward(ref[3], *ref[:3], att_ref)

    out, att = heads_forward(q, k, v)
    np.testing.assert_array_equal(out, out_ref)
    np.testing.assert_array_equal(att, att_ref)
    grads = [np.asfortranarray(np.full((B, H, T, hs), np.nan)) for _ in range(3)]   # F-ordered
    heads_backward(dout, q, k, v, att, dq=grads[0], dk=grads[1], dv=grads[2])
    for got, want in zip(grads, (dq_ref, dk_ref, dv_ref), strict=True):
        np.testing.assert_array_equal(got, want)
