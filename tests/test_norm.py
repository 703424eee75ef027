"""Public layer_norm / rms_norm (forward + backward) against the float64 reference."""

import numpy as np
import pytest
from _helpers import dx_err, make, rel_err, spy_drivers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import lnnumba as L
from lnnumba import reference as R
from lnnumba.cpu import norm as K

TOL = {np.float64: 1e-12, np.float32: 2e-6, np.float16: 2e-3}


# --- property-based: many shapes, axes, dtypes ------------------------------------------------


@st.composite
def cases(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=9))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.float16]))
    affine = draw(st.sampled_from(["none", "weight", "both"]))
    seed = draw(st.integers(0, 2**31))
    return shape, axis, dtype, affine, seed


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_layer_norm_matches_reference(case):
    shape, axis, dtype, affine, seed = case
    rng = np.random.default_rng(seed)
    x = make(rng, shape, dtype)
    S = x.shape[axis:]
    w = make(rng, S, dtype) if affine != "none" else None
    b = make(rng, S, dtype) if affine == "both" else None
    y, mean, rstd = L.layer_norm_forward(x, w, b, axis=axis)
    yr, mr, rr = R.layer_norm_forward(x, w, b, 1e-5, axis)
    tol = TOL[dtype]
    assert y.dtype == dtype and y.shape == x.shape
    assert mean.shape == mr.shape and rstd.shape == rr.shape
    assert rel_err(y, yr) < tol * 10
    # the mean's error is measured against the row's spread (a mean near 0 has no relative digits)
    assert np.all(np.abs(mean - mr) <= tol * (np.abs(mr) + 1 / rr))
    assert rel_err(rstd, rr) < tol
    np.testing.assert_array_equal(L.layer_norm(x, w, b, axis=axis), y)

    dy = make(rng, shape, dtype)
    dx, dw, db = L.layer_norm_backward(dy, x, mean, rstd, w, axis=axis)
    dxr, dwr, dbr = R.layer_norm_backward(dy, x, mr, rr, w, axis)
    assert dx.dtype == dw.dtype == db.dtype == dtype
    assert dw.shape == db.shape == S
    assert dx_err(dx, dxr, rr, dy, w) < tol * 100
    assert rel_err(dw, dwr) < tol * 10 and rel_err(db, dbr) < tol * 10


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_rms_norm_matches_reference(case):
    shape, axis, dtype, affine, seed = case
    rng = np.random.default_rng(seed)
    x = make(rng, shape, dtype)
    S = x.shape[axis:]
    w = make(rng, S, dtype) if affine != "none" else None
    y, rstd = L.rms_norm_forward(x, w, axis=axis)
    yr, rr = R.rms_norm_forward(x, w, 1e-6, axis)
    tol = TOL[dtype]
    assert y.dtype == dtype and rstd.shape == rr.shape
    assert rel_err(y, yr) < tol * 10 and rel_err(rstd, rr) < tol
    np.testing.assert_array_equal(L.rms_norm(x, w, axis=axis), y)
    dy = make(rng, shape, dtype)
    dx, dw = L.rms_norm_backward(dy, x, rstd, w, axis=axis)
    dxr, dwr = R.rms_norm_backward(dy, x, rr, w, axis)
    assert dx.dtype == dw.dtype == dtype and dw.shape == S
    assert dx_err(dx, dxr, rr, dy, w) < tol * 100 and rel_err(dw, dwr) < tol * 10


# --- sizes that exercise vector remainders and the parallel path --------------------------------


@pytest.mark.parametrize("N", [1, 2, 3, 15, 16, 17, 33, 1000, 1025, 4099])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_widths(rng, N, dtype):
    x = make(rng, (5, N), dtype)
    w, b = make(rng, N, dtype), make(rng, N, dtype)
    y, m, r = L.layer_norm_forward(x, w, b)
    yr, mr, rr = R.layer_norm_forward(x, w, b)
    assert rel_err(y, yr) < TOL[dtype] * 10
    dy = make(rng, (5, N), dtype)
    dx, dw, db = L.layer_norm_backward(dy, x, m, r, w)
    dxr, dwr, dbr = R.layer_norm_backward(dy, x, mr, rr, w)
    assert dx_err(dx, dxr, rr, dy, w) < TOL[dtype] * 100
    assert rel_err(dw, dwr) < TOL[dtype] * 10 and rel_err(db, dbr) < TOL[dtype] * 10


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_serial_parallel_and_blocked_paths_are_identical(rng, dtype):
    M, N = 301, 257  # several backward chunks, more elements than the parallel threshold
    x = make(rng, (M, N), dtype)
    w, b, dy = make(rng, N, dtype), make(rng, N, dtype), make(rng, (M, N), dtype)
    outs = []
    for fwd, bwd in [
        (K.forward_serial, K.backward_serial),
        (K.forward_parallel, K.backward_parallel),
    ]:
        for block in (False, True):  # the forward's output pass one row or four at a time
            y, m, r = np.empty_like(x), np.empty(M, dtype), np.empty(M, dtype)
            fwd(y, m, r, x, w, b, 1e-5, True, block, False, 2)
            dx, dw, db = np.empty_like(x), np.empty(N, dtype), np.empty(N, dtype)
            nc = K.n_chunks(M)
            junk = np.full((nc, N), np.nan, dtype)  # scratch contents must not matter
            bwd(dx, dw, db, junk, junk.copy(), dy, x, m, r, w, False)
            outs.append((y, m, r, dx, dw, db))
    for other in outs[1:]:
        for a, b_ in zip(outs[0], other):
            np.testing.assert_array_equal(a, b_)
    yr, mr, rr = R.layer_norm_forward(x, w, b)
    assert rel_err(outs[0][0], yr) < TOL[dtype] * 10
    assert K.n_chunks(M) > 1


@pytest.mark.parametrize("long_rows", [False, True])
@pytest.mark.parametrize("affine", ["none", "weight", "both"])
@pytest.mark.parametrize("M", range(1, 14))
def test_forward_four_row_blocks_and_remainders(rng, M, affine, long_rows):
    # the blocked forward (taken for large inputs) on every split of rows into blocks of four
    # and a remainder, LN and RMSNorm, against the reference; long rows fuse each block's
    # output pass with the next block's statistics
    N = K.FUSE_MIN_ROW_BYTES // 4 + 3 if long_rows else 37
    x = (3 + make(rng, (M, N), np.float32)).astype(np.float32)
    w = make(rng, N, np.float32) if affine != "none" else None
    b = make(rng, N, np.float32) if affine == "both" else None
    y, m, r = np.empty_like(x), np.empty(M), np.empty(M)
    K.forward_serial(y, m, r, x, w, b, 1e-5, True, True, False, 1)
    yr, mr, rr = R.layer_norm_forward(x, w, b)
    assert rel_err(y, yr) < 2e-5
    assert rel_err(m, mr.ravel()) < 2e-6 and rel_err(r, rr.ravel()) < 2e-6
    K.forward_serial(y, None, r, x, w, None, 1e-6, False, True, False, 1)
    yr, rr = R.rms_norm_forward(x, w)
    assert rel_err(y, yr) < 2e-5 and rel_err(r, rr.ravel()) < 2e-6


def test_slow_launch_layer_raises_the_parallel_threshold(rng, monkeypatch):
    import numba

    assert K.slow_parallel_launch() == (numba.threading_layer() in K.SLOW_LAUNCH_LAYERS)
    calls = []
    spy_drivers(monkeypatch, lambda name, a: calls.append(name) if "parallel" in name else None)
    small = make(rng, (256, 512), np.float32)  # parallel unless launches are slow
    large = make(rng, (K.SLOW_LAUNCH_PARALLEL_MIN_ELEMENTS // 512, 512), np.float32)
    assert K.PARALLEL_MIN_ELEMENTS <= small.size < K.SLOW_LAUNCH_PARALLEL_MIN_ELEMENTS
    for slow, x, want in [
        (False, small, ["forward_parallel", "backward_parallel"]),
        (True, small, []),
        (True, large, ["forward_parallel", "backward_parallel"]),
    ]:
        monkeypatch.setattr(K, "_slow_launch", slow)
        calls.clear()
        y, m, r = L.layer_norm_forward(x)
        dx, dw, db = L.layer_norm_backward(x, x, m, r)
        assert calls == want, (slow, x.shape)
        yr, mr, rr = R.layer_norm_forward(x)
        assert rel_err(y, yr) < TOL[np.float32] * 10
        dxr, dwr, dbr = R.layer_norm_backward(x, x, mr, rr)
        assert dx_err(dx, dxr, rr, x, None) < TOL[np.float32] * 100
        assert rel_err(db, dbr) < TOL[np.float32] * 10


def test_large_public_call_uses_parallel_path_and_matches(rng):
    x = make(rng, (512, 1024), np.float32)
    assert x.size >= K.PARALLEL_MIN_ELEMENTS
    w, b = make(rng, 1024, np.float32), make(rng, 1024, np.float32)
    y, m, r = L.layer_norm_forward(x, w, b)
    assert rel_err(y, R.layer_norm_forward(x, w, b)[0]) < 1e-5
    dy = make(rng, x.shape, np.float32)
    got = L.layer_norm_backward(dy, x, m, r, w)
    ref = R.layer_norm_backward(dy, x, *R.layer_norm_forward(x, w, b)[1:], w)
    for a, b_ in zip(got, ref):
        assert rel_err(a, b_) < 1e-5
    _, r = L.rms_norm_forward(x, w)  # RMSNorm's parallel backward (no bias gradient)
    got = L.rms_norm_backward(dy, x, r, w)
    ref = R.rms_norm_backward(dy, x, R.rms_norm_forward(x, w)[1], w)
    for a, b_ in zip(got, ref):
        assert rel_err(a, b_) < 1e-5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("long_rows", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("M", range(1, 14))
def test_backward_four_row_blocks_and_remainders(rng, M, weighted, long_rows, dtype):
    # the backward takes rows four at a time (for long rows each block but the last fused with
    # the next block's first pass) and the rest one by one: every split must agree with the
    # reference and with the rows taken alone
    N = K.FUSE_MIN_ROW_BYTES // np.dtype(dtype).itemsize + 3 if long_rows else 37
    tol = TOL[dtype]
    x = make(rng, (M, N), dtype)
    dy = make(rng, (M, N), dtype)
    w = make(rng, N, dtype) if weighted else None
    _, m, r = L.layer_norm_forward(x, w)
    dx, dw, db = L.layer_norm_backward(dy, x, m, r, w)
    dxr, dwr, dbr = R.layer_norm_backward(dy, x, *R.layer_norm_forward(x, w)[1:], w)
    assert dx_err(dx, dxr, R.layer_norm_forward(x, w)[2], dy, w) < tol * 100
    assert rel_err(dw, dwr) < tol * 10 and rel_err(db, dbr) < tol * 10
    for i in range(M):
        dxi = L.layer_norm_backward(dy[i : i + 1], x[i : i + 1], m[i : i + 1], r[i : i + 1], w)[0]
        np.testing.assert_allclose(dx[i : i + 1], dxi, rtol=tol * 5, atol=tol)
    _, r = L.rms_norm_forward(x, w)
    dx, dw = L.rms_norm_backward(dy, x, r, w)
    dxr, dwr = R.rms_norm_backward(dy, x, R.rms_norm_forward(x, w)[1], w)
    assert rel_err(dx, dxr) < tol * 10 and rel_err(dw, dwr) < tol * 10


@pytest.mark.parametrize("N", [7, 1024, 4096])
def test_float32_large_mean_stays_accurate(rng, N):
    # 10 rows: the backward's pipelined four-row blocks, its last block and two single rows
    x = (1e4 + rng.standard_normal((10, N))).astype(np.float32)
    dy = rng.standard_normal((10, N)).astype(np.float32)
    w = (1 + 0.1 * rng.standard_normal(N)).astype(np.float32)
    y, m, r = L.layer_norm_forward(x, w)
    yr, mr, rr = R.layer_norm_forward(x, w)
    assert rel_err(y, yr) < 1e-4
    # the blocked forward of large inputs (fused for N=4096), on these rows
    yb, mb, rb = np.empty_like(x), np.empty(10), np.empty(10)
    K.forward_serial(yb, mb, rb, x, w, None, 1e-5, True, True, False, 1)
    assert rel_err(yb, yr) < 1e-4 and rel_err(mb, mr.ravel()) < 1e-7
    for a, b_ in zip(
        L.layer_norm_backward(dy, x, m, r, w), R.layer_norm_backward(dy, x, mr, rr, w)
    ):
        assert rel_err(a, b_) < 1e-4
    y, r = L.rms_norm_forward(x, w)
    assert rel_err(y, R.rms_norm_forward(x, w)[0]) < 1e-4


@pytest.mark.parametrize("M", [1, 3])
def test_long_rows_sum_in_blocks(rng, M):
    # rows of LONG_ROW_MIN elements or more sum in blocks added in float64 (one row: the serial
    # driver; three: the parallel one). Summed whole in float32, these rows of 2^20 elements
    # gave y errors of 2e-6 (LN) and 4e-5 (RMSNorm of 1e4 + N(0, 1)); in blocks, 5e-8.
    N = 1 << 20
    assert N >= K.LONG_ROW_MIN
    tol = 1e-6
    x = rng.standard_normal((M, N)).astype(np.float32)
    x[-1, 0] = 50.0  # a shift far from the mean: the second pass of row_stats_long
    x[0] += 3  # a row whose mean is not 0
    w = (1 + 0.1 * rng.standard_normal(N)).astype(np.float32)
    b = (0.1 * rng.standard_normal(N)).astype(np.float32)
    dy = rng.standard_normal((M, N)).astype(np.float32)
    y, m, r = L.layer_norm_forward(x, w, b)
    yr, mr, rr = R.layer_norm_forward(x, w, b)
    assert rel_err(y, yr) < tol and rel_err(m, mr) < tol and rel_err(r, rr) < tol
    inplace = x.copy()
    L.layer_norm(inplace, w, b, out=inplace)
    np.testing.assert_array_equal(inplace, y)
    for a, b_ in zip(
        L.layer_norm_backward(dy, x, m, r, w), R.layer_norm_backward(dy, x, mr, rr, w)
    ):
        assert rel_err(a, b_) < tol
    x = (1e4 + rng.standard_normal((M, N))).astype(np.float32)
    y, r = L.rms_norm_forward(x)
    yr, rr = R.rms_norm_forward(x)
    assert rel_err(y, yr) < tol and rel_err(r, rr) < tol
    dx, dw = L.rms_norm_backward(dy, x, r)
    dxr, dwr = R.rms_norm_backward(dy, x, rr)
    assert rel_err(dx, dxr) < tol and rel_err(dw, dwr) < tol


def test_outlier_first_element_stays_accurate(rng):
    x = rng.standard_normal((3, 256)).astype(np.float32)
    x[:, 0] = 3e3  # a shift far from the mean takes the exact two-pass route
    y, m, r = L.layer_norm_forward(x)
    assert rel_err(y, R.layer_norm_forward(x)[0]) < 1e-5


# --- backward by finite differences (float64, through the public API) --------------------------


@pytest.mark.parametrize("shape,axis", [((3, 6), -1), ((2, 3, 4), 1)])
def test_layer_norm_backward_finite_differences(rng, shape, axis):
    x = rng.standard_normal(shape)
    w = rng.standard_normal(shape[axis:])
    b = rng.standard_normal(shape[axis:])
    g = rng.standard_normal(shape)
    _, m, r = L.layer_norm_forward(x, w, b, axis=axis)
    dx, dw, db = L.layer_norm_backward(g, x, m, r, w, axis=axis)
    h = 1e-6
    for arr, grad in [(x, dx), (w, dw), (b, db)]:
        flat = arr.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + h
            fp = np.sum(L.layer_norm(x, w, b, axis=axis) * g)
            flat[i] = old - h
            fm = np.sum(L.layer_norm(x, w, b, axis=axis) * g)
            flat[i] = old
            assert abs((fp - fm) / (2 * h) - grad.reshape(-1)[i]) < 1e-6 * (1 + abs(grad).max())


def test_rms_norm_backward_finite_differences(rng):
    x = rng.standard_normal((3, 5))
    w = rng.standard_normal(5)
    g = rng.standard_normal((3, 5))
    _, r = L.rms_norm_forward(x, w)
    dx, dw = L.rms_norm_backward(g, x, r, w)
    h = 1e-6
    for arr, grad in [(x, dx), (w, dw)]:
        flat = arr.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + h
            fp = np.sum(L.rms_norm(x, w) * g)
            flat[i] = old - h
            fm = np.sum(L.rms_norm(x, w) * g)
            flat[i] = old
            assert abs((fp - fm) / (2 * h) - grad.reshape(-1)[i]) < 1e-6 * (1 + abs(grad).max())


# --- layouts, dtypes, out= ---------------------------------------------------------------------


def test_strided_fortran_and_noncontiguous_inputs(rng):
    base = make(rng, (8, 12), np.float64)
    w = make(rng, 6, np.float64)
    for x in [base[:, ::2], base[::2, ::2], np.asfortranarray(base)[:, :6], base.T[:6, :].T]:
        before = x.copy()
        y, m, r = L.layer_norm_forward(x, w)
        np.testing.assert_allclose(y, R.layer_norm_forward(x, w)[0], rtol=1e-12, atol=1e-12)
        dx, dw, db = L.layer_norm_backward(np.asfortranarray(x), x, m, r, w[::-1][::-1])
        ref = R.layer_norm_backward(x, x, *R.layer_norm_forward(x, w)[1:], w)
        for a, b_ in zip((dx, dw, db), ref):
            np.testing.assert_allclose(a, b_, rtol=1e-10, atol=1e-12)
        np.testing.assert_array_equal(x, before)
    wide = make(rng, (4, 20), np.float64)
    ws = make(rng, 40, np.float64)[::2]  # strided weight
    np.testing.assert_allclose(
        L.layer_norm(wide, ws), R.layer_norm_forward(wide, ws)[0], rtol=1e-12, atol=1e-12
    )


def _outcome(fn, args, kw):
    """What ``fn(*args, **kw)`` gives: ("ok", result) or ("raises", exception type, message)."""
    try:
        return ("ok", fn(*args, **kw))
    except (TypeError, ValueError) as e:
        return ("raises", type(e), str(e))


def _count_calls(monkeypatch, module, name):
    """A list that grows by one at each call of ``module.name`` (replaced by a counting
    wrapper for the test's duration)."""
    calls = []
    f = getattr(module, name)

    def counting(*args):
        calls.append(1)
        return f(*args)

    monkeypatch.setattr(module, name, counting)
    return calls


def _read_only(a):
    a.flags.writeable = False
    return a


def _overlapping(v):
    """x (a copy of v) and an out of its shape one element further along the same buffer."""
    buf = np.empty(v.size + 1, v.dtype)
    x = buf[: v.size].reshape(v.shape)
    x[...] = v
    return x, buf[1:].reshape(v.shape)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix
def test_small_input_short_path_equals_the_full_checks(rng, monkeypatch):
    """layer_norm / rms_norm (and their _forward versions, which also return the statistics)
    of 2-d arrays up to ``_DIRECT_MAX_BYTES`` skip the general argument handling when every
    argument is already in the kernels' form. Every variant gives exactly what the full checks
    give (the same values, or the same error), and only the canonical ones take the short path
    (which never calls ``_args.prepare``)."""
    from lnnumba import _args
    from lnnumba import norm as P

    x = make(rng, (3, 16), np.float32)
    w, b = make(rng, 16, np.float32), make(rng, 16, np.float32)
    xd = x.astype(np.float64)
    wide = make(rng, (2, 32), np.float32)
    big = np.resize(x, (K.PARALLEL_MIN_ELEMENTS // 16 + 3, 16))
    huge = np.resize(x, (P._DIRECT_MAX_BYTES // 64 + 1, 16))
    assert big.nbytes <= P._DIRECT_MAX_BYTES < huge.nbytes
    variants = {  # name: (x, weight, bias, keyword arguments, short path expected)
        "canonical": (x, w, b, {}, True),
        "float64": (xd, w.astype(np.float64), None, {}, True),
        "no weight": (x, None, None, {}, True),
        "explicit eps": (x, w, b, {"eps": 1e-3}, True),
        "zero eps": (x, w, b, {"eps": 0.0}, True),
        "one row": (x[:1], w, b, {}, True),
        "strided weight": (x, wide[0, ::2], b, {}, False),
        "strided bias": (x, w, wide[1, ::2], {}, False),
        "2-d weight": (x, w[None], b, {}, False),
        "2-d bias": (x, w, b[None], {}, False),
        "short weight": (x, w[:8], b, {}, False),
        "float64 weight": (x, w.astype(np.float64), b, {}, False),
        "list bias": (x, w, b.tolist(), {}, False),
        "negative eps": (x, w, b, {"eps": -1e-5}, False),
        "nan eps": (x, w, b, {"eps": float("nan")}, False),
        "inf eps": (x, w, b, {"eps": float("inf")}, False),
        "numpy eps": (x, w, b, {"eps": np.float64(1e-3)}, False),
        "int eps": (x, w, b, {"eps": 1}, False),
        "bool eps": (x, w, b, {"eps": True}, False),
        "string eps": (x, w, b, {"eps": "1e-5"}, False),
        "axis 1": (x, w, b, {"axis": 1}, False),
        "numpy axis": (x, w, b, {"axis": np.int64(-1)}, False),
        "bool axis": (x, w, b, {"axis": True}, False),
        "array axis": (x, w, b, {"axis": np.array([-1, -1])}, False),
        "axis -2": (x, None, None, {"axis": -2}, False),
        # out: a function of a fresh copy of x giving (x, out), called anew for every call
        "out": (x, w, b, {"out": lambda v: (v, np.empty_like(v))}, True),
        "out is x": (x, w, b, {"out": lambda v: (v, v)}, True),
        "out overlapping x": (x, w, b, {"out": _overlapping}, False),
        "float64 out": (x, w, b, {"out": lambda v: (v, np.empty(v.shape))}, False),
        "fortran out": (x, w, b, {"out": lambda v: (v, np.empty(v.shape, v.dtype, "F"))}, False),
        "strided out": (x, w, b, {"out": lambda v: (v, np.empty((3, 32), v.dtype)[:, ::2])}, False),
        "read-only out": (x, w, b, {"out": lambda v: (v, _read_only(np.empty_like(v)))}, False),
        "1-d out": (x[:1], w, b, {"out": lambda v: (v, np.empty(16, np.float32))}, False),
        "fortran x": (np.asfortranarray(x), w, b, {}, False),
        "strided x": (wide[:, ::2], w, b, {}, False),
        "zero columns": (x[:, :0], None, None, {}, False),
        "float16": (x.astype(np.float16), w.astype(np.float16), None, {}, False),
        "int x": (np.arange(12).reshape(3, 4), None, None, {}, False),
        "matrix x": (np.asmatrix(x), w, b, {}, False),
        "masked x, nothing masked": (np.ma.array(x), w, b, {}, False),
        "big-endian x": (x.astype(">f4"), w, b, {}, False),
        "big-endian weight": (x, w.astype(">f4"), b, {}, False),
        "big-endian out": (x, w, b, {"out": lambda v: (v, np.empty(v.shape, ">f4"))}, False),
        "big-endian out is x": (x.astype(">f4"), w, None, {"out": lambda v: (v, v)}, False),
        "1-d x": (x[0], w, b, {}, False),
        "3-d x": (x[None], w, b, {}, False),
        # from the parallel kernel's sizes on, the short path calls cpu.norm.forward_unaliased
        "above serial size": (big, w, b, {}, True),
        "above serial size, float64": (big.astype(np.float64), None, None, {}, True),
        "above serial size, out": (big, w, b, {"out": lambda v: (v, np.empty_like(v))}, True),
        "above serial size, out is x": (big, w, None, {"out": lambda v: (v, v)}, True),
        "above serial size, out overlapping x": (big, w, b, {"out": _overlapping}, False),
        "above serial size, big-endian": (big.astype(">f4"), None, None, {}, False),
        "above serial size, float16": (big.astype(np.float16), None, None, {}, False),
        "above the short path's size": (huge, w, b, {}, False),
    }

    def fresh(xv, kw):
        """x and the keyword arguments of one call, out (if any) made anew for it."""
        if "out" not in kw:
            return xv, kw
        xv, o = kw["out"](np.array(xv, copy=True))
        return xv, dict(kw, out=o)

    for xv, wv, bv, kw, short in variants.values():  # compiles (or loads) the short path's kernels
        if short:  # (in place has kernels of its own)
            xs, kws = fresh(xv, kw)
            L.layer_norm(xs, wv, bv, **kws)
            xs, kws = fresh(xv, kw)
            L.rms_norm(xs, wv, **kws)

    calls = _count_calls(monkeypatch, _args, "prepare")
    for name, (xv, wv, bv, kw, ln_short) in variants.items():
        # rms_norm takes no bias, so a bad bias does not keep it off the short path
        rms_short = ln_short or name in ("strided bias", "2-d bias", "list bias")
        calls_ = [
            (L.layer_norm, (xv, wv, bv), ln_short),
            (L.rms_norm, (xv, wv), rms_short),
        ]
        if "out" not in kw:  # the forward passes that also return the statistics
            calls_ += [
                (L.layer_norm_forward, (xv, wv, bv), ln_short),
                (L.rms_norm_forward, (xv, wv), rms_short),
            ]
        for fn, args, short in calls_:
            xs, kws = fresh(xv, kw)
            args = (xs,) + args[1:]
            before = [np.array(a, copy=True) if a is not None else None for a in args]
            # an out on x's memory writes x
            inplace = int("out" in kws and np.may_share_memory(kws["out"], xs))
            calls.clear()
            got = _outcome(fn, args, kws)
            took_short = got[0] == "ok" and not calls
            xs2, kws2 = fresh(xv, kw)
            with monkeypatch.context() as m:
                m.setattr(P, "_small", lambda *a: None)
                m.setattr(P, "_small_stats", lambda *a: None)
                want = _outcome(fn, (xs2,) + args[1:], kws2)
            assert got[0] == want[0] and got[1:-1] == want[1:-1], name
            if got[0] == "ok":
                results = got[1] if type(got[1]) is tuple else (got[1],)
                wanted = want[1] if type(want[1]) is tuple else (want[1],)
                assert len(results) == len(wanted), name
                for a, b_ in zip(results, wanted):
                    assert type(a) is type(b_) and a.dtype == b_.dtype and a.shape == b_.shape
                    np.testing.assert_array_equal(a, b_, err_msg=name)
            else:
                assert got[2] == want[2], name
            assert took_short == short, (name, fn.__name__)
            for a, c in zip(args[inplace:], before[inplace:]):
                if a is not None:
                    np.testing.assert_array_equal(a, c, err_msg=name)


def test_small_backward_short_path_equals_the_full_checks(rng, monkeypatch):
    """layer_norm_backward / rms_norm_backward of 2-d arrays up to ``_DIRECT_MAX_BYTES`` skip
    the general argument handling when every argument is already in the kernels' form. Every
    variant gives exactly what the full checks give (the same values, or the same error), and
    only the canonical ones take the short path (which never calls ``_args.rows``)."""
    from lnnumba import _args
    from lnnumba import norm as P

    def case(x, w=None):
        """(dy, x, mean, rstd, rms_rstd, w) of a forward pass over x."""
        _, m, r = L.layer_norm_forward(x, w)
        return [make(rng, x.shape, x.dtype), x, m, r, L.rms_norm_forward(x, w)[1], w]

    x = make(rng, (5, 16), np.float32)
    w = make(rng, 16, np.float32)
    base = case(x, w)
    big = case(np.resize(x, (K.PARALLEL_MIN_ELEMENTS // 16 + 3, 16)), w)
    huge = case(np.resize(x, (P._DIRECT_MAX_BYTES // 64 + 1, 16)), w)
    assert big[1].nbytes <= P._DIRECT_MAX_BYTES < huge[1].nbytes

    def changed(args, **kw):
        names = ["dy", "x", "mean", "rstd", "rms_rstd", "w"]
        return [kw.get(n, a) for n, a in zip(names, args)]

    dy, _, m, r, rr, _ = base

    def stats(f):
        """base with f applied to its saved statistics."""
        return changed(base, mean=f(m), rstd=f(r), rms_rstd=f(rr))

    variants = {  # name: (dy, x, mean, rstd, rms_rstd, weight, axis, short path expected)
        "canonical": (*base, -1, True),
        "no weight": (*changed(base, w=None), -1, True),
        "float64": (*case(x.astype(np.float64), w.astype(np.float64)), -1, True),
        "above serial size": (*big, -1, True),
        "above the short path's size": (*huge, -1, False),
        "axis 1": (*base, 1, False),
        "strided dy": (*changed(base, dy=np.repeat(dy, 2, axis=1)[:, ::2]), -1, False),
        "fortran x": (*changed(base, x=np.asfortranarray(x)), -1, False),
        "3-d x": (
            *changed(base, x=x[None], dy=dy[None], mean=m[None], rstd=r[None], rms_rstd=rr[None]),
            -1,
            False,
        ),
        "strided stats": (*stats(lambda a: np.repeat(a, 2, axis=1)[:, :1]), -1, False),
        "1-d stats": (*stats(np.ravel), -1, False),
        "float64 stats": (*stats(lambda a: a.astype(np.float64)), -1, False),
        "float64 dy": (*changed(base, dy=dy.astype(np.float64)), -1, False),
        "short weight": (*changed(base, w=w[:8]), -1, False),
        "strided weight": (*changed(base, w=np.repeat(w, 2)[::2]), -1, False),
        "list dy": (*changed(base, dy=dy.tolist()), -1, False),
        "float16": (*case(x.astype(np.float16), w.astype(np.float16)), -1, False),
    }
    calls = _count_calls(monkeypatch, _args, "rows")
    for name, (dyv, xv, mv, rv, rrv, wv, axis, short) in variants.items():
        for fn, args in [
            (L.layer_norm_backward, (dyv, xv, mv, rv, wv)),
            (L.rms_norm_backward, (dyv, xv, rrv, wv)),
        ]:
            before = [np.array(a, copy=True) if a is not None else None for a in args]
            calls.clear()
            got = _outcome(fn, args, {"axis": axis})
            took_short = got[0] == "ok" and not calls
            with monkeypatch.context() as mp:
                mp.setattr(P, "_small_backward", lambda *a: None)
                want = _outcome(fn, args, {"axis": axis})
            assert got[0] == want[0], (name, fn.__name__)
            if got[0] == "ok":
                assert len(got[1]) == len(want[1]), name
                for a, b_ in zip(got[1], want[1]):
                    assert type(a) is type(b_) and a.dtype == b_.dtype and a.shape == b_.shape
                    np.testing.assert_array_equal(a, b_, err_msg=name)
            else:
                assert got[1:] == want[1:], (name, fn.__name__)
            assert took_short == short, (name, fn.__name__)
            for a, c in zip(args, before):
                if a is not None:
                    np.testing.assert_array_equal(a, c, err_msg=name)


def test_inputs_are_never_modified(rng):
    x = make(rng, (4, 9), np.float32)
    w, b, dy = make(rng, 9, np.float32), make(rng, 9, np.float32), make(rng, (4, 9), np.float32)
    copies = [a.copy() for a in (x, w, b, dy)]
    y, m, r = L.layer_norm_forward(x, w, b)
    mc, rc = m.copy(), r.copy()
    L.layer_norm(x, w, b)
    L.layer_norm_backward(dy, x, m, r, w)
    L.rms_norm_backward(dy, x, L.rms_norm_forward(x, w)[1], w)
    for a, c in zip((x, w, b, dy, m, r), copies + [mc, rc]):
        np.testing.assert_array_equal(a, c)


# One shape for each of the CPU drivers' paths, with the thresholds that route it there
# (``take_path``): (shape, stream, block).
PATHS = [
    ((4, 9), False, False),  # the short path, serial
    ((256, 256), False, False),  # rows two at a time, parallel
    ((256, 320), False, False),  # rows split at line boundaries
    ((256, 320), True, False),  # streamed
    ((64, 1040), False, True),  # blocks of four rows, fused with the next's sums
]


def take_path(monkeypatch, x, stream, block):
    """Routes x (and a backward pass of x's shape) to a path of ``PATHS``."""
    if stream:
        for name in ("STREAM_MIN_BYTES", "BACKWARD_STREAM_MIN_BYTES"):
            monkeypatch.setattr(K, name, x.nbytes)
    if block:
        monkeypatch.setattr(K, "FORWARD_BLOCK_MIN_BYTES", 0)


@pytest.mark.parametrize(
    "shape,stream,block,dtype",
    [(*p, np.float32) for p in PATHS] + [((4, 9), False, False, np.float64)],
)
def test_read_only_inputs_take_every_path(rng, monkeypatch, shape, stream, block, dtype):
    # inputs whose memory cannot be written (np.load(..., mmap_mode="r"), np.frombuffer of
    # bytes) give the writeable inputs' results bit for bit, also as the first call of each
    # compiled driver (made anew here)
    x, dy = make(rng, shape, dtype), make(rng, shape, dtype)
    w, b = make(rng, shape[1], dtype), make(rng, shape[1], dtype)
    take_path(monkeypatch, x, stream, block)
    spy_drivers(monkeypatch, lambda name, a: None)

    def frozen(a):
        a = a.copy()
        a.flags.writeable = False
        return a

    def results(x, w, b, dy, f):  # f: what the statistics are passed on as
        y, m, r = L.layer_norm_forward(x, w, b)
        yq, rq = L.rms_norm_forward(x, w)
        return (L.layer_norm(x, w, b), L.layer_norm(x, w, b, out=np.empty_like(y)), y, m, r,
                L.rms_norm(x, w), yq, rq, *L.layer_norm_backward(dy, x, f(m), f(r), w),
                *L.rms_norm_backward(dy, x, f(rq), w))  # fmt: skip

    got = results(*map(frozen, (x, w, b, dy)), frozen)
    want = results(x, w, b, dy, lambda a: a)
    for g, h in zip(got, want):
        np.testing.assert_array_equal(g, h)
    assert rel_err(got[0], R.layer_norm_forward(x, w, b)[0]) < TOL[dtype] * 10


def test_integer_and_bool_inputs_promote_to_float64(rng):
    xi = rng.integers(-5, 5, (3, 4)).astype(np.int32)
    y = L.layer_norm(xi)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, R.layer_norm_forward(xi)[0], rtol=1e-12, atol=1e-12)
    xb = np.array([[True, False, True], [False, False, True]])
    y, m, r = L.layer_norm_forward(xb)
    assert y.dtype == m.dtype == np.float64
    np.testing.assert_allclose(y, R.layer_norm_forward(xb)[0], rtol=1e-12, atol=1e-12)
    dx, dw, db = L.layer_norm_backward(np.ones((2, 3)), xb, m, r)
    assert dx.dtype == np.float64
    assert L.rms_norm(xi).dtype == np.float64


def test_float16_computed_in_float32(rng):
    x = make(rng, (3, 64), np.float16)
    w = make(rng, 64, np.float16)
    y, m, r = L.layer_norm_forward(x, w)
    assert y.dtype == np.float16 and m.dtype == r.dtype == np.float32
    ref = R.layer_norm_forward(x, w)[0].astype(np.float16)
    np.testing.assert_array_equal(y, ref)  # float32 compute rounds to the same float16


def test_out_argument(rng):
    x = make(rng, (4, 8), np.float32)
    w = make(rng, 8, np.float32)
    want = L.layer_norm(x, w)
    out = np.empty_like(x)
    assert L.layer_norm(x, w, out=out) is out
    np.testing.assert_array_equal(out, want)
    fo = np.empty((4, 8), np.float32, order="F")  # non-contiguous out
    L.layer_norm(x, w, out=fo)
    np.testing.assert_array_equal(fo, want)
    xi = x.copy()  # in place
    assert L.layer_norm(xi, w, out=xi) is xi
    np.testing.assert_array_equal(xi, want)
    xo = x.copy()  # overlapping, shifted: goes through a temporary
    big = np.concatenate([xo.reshape(-1), np.zeros(8, np.float32)])
    L.layer_norm(big[:32].reshape(4, 8), w, out=big[8:].reshape(4, 8))
    np.testing.assert_array_equal(big[8:].reshape(4, 8), want)
    h = make(rng, (2, 8), np.float16)
    oh = np.empty_like(h)
    np.testing.assert_array_equal(L.rms_norm(h, out=oh), L.rms_norm(h))
    o = np.empty_like(x)
    np.testing.assert_array_equal(L.rms_norm(x, w, out=o), L.rms_norm(x, w))


def test_empty_batch_returns_empty():
    x = np.empty((0, 5), np.float32)
    assert L.layer_norm(x).shape == (0, 5)
    y, m, r = L.layer_norm_forward(np.empty((2, 0, 5)), axis=-1)
    assert y.shape == (2, 0, 5) and m.shape == (2, 0, 1)
    dx, dw, db = L.layer_norm_backward(np.empty((2, 0, 5)), np.empty((2, 0, 5)), m, r)
    assert dx.shape == (2, 0, 5) and dw.shape == (5,)
    np.testing.assert_array_equal(dw, 0)
    assert L.rms_norm(x).shape == (0, 5)


def test_nan_and_inf_stay_in_their_row(rng):
    x = make(rng, (4, 16), np.float32)
    x[1, 3] = np.nan
    x[2, 5] = np.inf
    y, m, r = L.layer_norm_forward(x)
    assert np.isnan(y[1]).all() and np.isnan(y[2]).all()
    ok = [0, 3]
    np.testing.assert_allclose(y[ok], R.layer_norm_forward(x[ok])[0], rtol=1e-5, atol=1e-5)
    dx, dw, db = L.layer_norm_backward(np.ones_like(x), x, m, r)
    assert np.isfinite(dx[ok]).all() and np.isnan(dx[1]).all()
    yr = L.rms_norm(x)
    assert np.isnan(yr[1]).all() and np.isfinite(yr[ok]).all()


def test_eps_is_used(rng):
    x = make(rng, (2, 4), np.float64)
    for eps in (0.0, 1e-3, 1, np.float32(0.5)):
        np.testing.assert_allclose(
            L.layer_norm(x, eps=eps), R.layer_norm_forward(x, eps=float(eps))[0], rtol=1e-12
        )
        np.testing.assert_allclose(
            L.rms_norm(x, eps=eps), R.rms_norm_forward(x, eps=float(eps))[0], rtol=1e-12
        )


@pytest.mark.parametrize("shape,stream,block", PATHS)
def test_eps_zero_and_a_row_without_spread(rng, monkeypatch, shape, stream, block):
    # eps = 0 is allowed: a row of equal elements (all zeros for RMSNorm) then has rstd = 1/0 =
    # inf and NaN outputs and gradients, as the reference's, on every path; the other rows are
    # untouched, and nothing raises (a division by zero inside a kernel used to raise
    # ZeroDivisionError, or SystemError from a parallel region)
    x, dy = make(rng, shape, np.float32), make(rng, shape, np.float32)
    w, b = make(rng, shape[1], np.float32), make(rng, shape[1], np.float32)
    take_path(monkeypatch, x, stream, block)
    x[1] = 2.5
    x[2] = 0.0
    ok = np.ones(shape[0], bool)
    ok[[1, 2]] = False
    with np.errstate(divide="ignore", invalid="ignore"):
        y, m, r = L.layer_norm_forward(x, w, b, eps=0)
        want = R.layer_norm_forward(x, w, b, eps=0)[0]
        dx, dw, db = L.layer_norm_backward(dy, x, m, r, w)
        yq, rq = L.rms_norm_forward(x, w, eps=0)
        dxq = L.rms_norm_backward(dy, x, rq, w)[0]
    assert r[1, 0] == r[2, 0] == rq[2, 0] == np.inf
    for a in (y, L.layer_norm(x, w, b, eps=0), dx):
        assert np.isnan(a[[1, 2]]).all() and np.isfinite(a[ok]).all()
    assert rel_err(y[ok], want[ok]) < TOL[np.float32]
    for a in (yq, L.rms_norm(x, w, eps=0), dxq):
        assert np.isnan(a[2]).all() and np.isfinite(a[ok | (np.arange(shape[0]) == 1)]).all()
    assert np.isnan(dw).all()  # every column has a row's NaN term
    np.testing.assert_allclose(db, dy.sum(0, dtype=np.float64), rtol=1e-5, atol=1e-4)


def test_either_byte_order_gives_the_same_bits(rng):
    """Arrays of the other byte order (here big-endian, as read from some files) are taken as
    NumPy takes them: converted, with results in the machine's order, or written to ``out`` in
    its own order. Every public function, the modules and a cell give the native call's bits."""
    swap = lambda a: a.astype(a.dtype.newbyteorder("S"))  # noqa: E731
    x = make(rng, (5, 16), np.float32)
    w, b = make(rng, 16, np.float32), make(rng, 16, np.float32)
    xs, ws, bs = swap(x), swap(w), swap(b)
    assert not xs.dtype.isnative and np.array_equal(xs, x)

    def same(got, want):
        for g, v in zip(got, want):
            assert g.dtype.isnative and g.dtype == v.dtype
            np.testing.assert_array_equal(g, v)

    same([L.layer_norm(xs, ws, bs)], [L.layer_norm(x, w, b)])
    same([L.rms_norm(xs, ws)], [L.rms_norm(x, w)])
    fw = L.layer_norm_forward(x, w, b)
    same(L.layer_norm_forward(xs, ws, bs), fw)
    same(L.rms_norm_forward(xs, ws), L.rms_norm_forward(x, w))
    dy = make(rng, (5, 16), np.float32)
    same(L.layer_norm_backward(swap(dy), xs, *map(swap, fw[1:]), ws),
         L.layer_norm_backward(dy, x, *fw[1:], w))  # fmt: skip
    rr = L.rms_norm_forward(x, w)[1]
    same(L.rms_norm_backward(swap(dy), xs, swap(rr), ws), L.rms_norm_backward(dy, x, rr, w))
    h = make(rng, (3, 8), np.float16)
    same([L.layer_norm(swap(h))], [L.layer_norm(h)])
    xd = make(rng, (2, 3, 4), np.float64)
    same([L.layer_norm(swap(xd), axis=1)], [L.layer_norm(xd, axis=1)])
    # out of the other byte order keeps it; in place too
    out = np.empty(x.shape, ">f4")
    assert L.layer_norm(x, w, b, out=out) is out
    np.testing.assert_array_equal(out, L.layer_norm(x, w, b))
    xi = xs.copy()
    assert L.rms_norm(xi, out=xi) is xi and xi.dtype == xs.dtype
    np.testing.assert_array_equal(xi, L.rms_norm(x))
    assert np.array_equal(xs, x) and np.array_equal(ws, w)  # inputs untouched
    # the modules and the cells
    m = L.LayerNorm(16)
    y, cache = m.forward(xs)
    same([y], [m.forward(x)[0]])
    same([m.backward(swap(dy), cache)[0]], [m.backward(dy, m.forward(x)[1])[0]])
    cell = L.LSTM(16, 4, seed=0)
    seq = make(rng, (3, 5, 16), np.float32)
    same([cell.forward(swap(seq))[0]], [cell.forward(seq)[0]])
    st = cell.step(seq[0])
    same(cell.step(swap(seq[1]), tuple(map(swap, st))), cell.step(seq[1], st))


def test_array_likes_are_accepted():
    y = L.layer_norm([[1.0, 2.0, 4.0]])
    np.testing.assert_allclose(y, R.layer_norm_forward(np.array([[1.0, 2.0, 4.0]]))[0])


def test_backward_partial_sums_start_where_dx_does():
    # the scratch partial sums start as far past a cache line boundary as dx does, so that
    # dx's line-aligned columns are line-aligned in them too, and away from dx's place within
    # a page and from each other's (their shifts); each offset's views are reused
    from lnnumba._memory import PAGE
    from lnnumba.cpu.stream import LINE_BYTES

    shifts = (K.PARTIALS_W_SHIFT, K.PARTIALS_B_SHIFT)
    assert all(s % LINE_BYTES == 0 and LINE_BYTES <= s <= PAGE - LINE_BYTES for s in shifts)
    assert abs(shifts[0] - shifts[1]) >= LINE_BYTES
    for dtype in (np.float32, np.float64):
        size = np.dtype(dtype).itemsize
        for offset in [*range(0, LINE_BYTES, size), 16 + 1024, PAGE - size, 3 * PAGE // 4 + 48]:
            pw, pb = K._scratch_partials(3, 40, dtype, offset)
            assert pw.shape == pb.shape == (3, 40) and pw.dtype == pb.dtype == dtype
            assert pw.ctypes.data % LINE_BYTES == pb.ctypes.data % LINE_BYTES == offset % LINE_BYTES
            assert pw.ctypes.data % PAGE == (offset + K.PARTIALS_W_SHIFT) % PAGE
            assert pb.ctypes.data % PAGE == (offset + K.PARTIALS_B_SHIFT) % PAGE
            assert pw.flags.c_contiguous and not np.shares_memory(pw, pb)
            again = K._scratch_partials(3, 40, dtype, offset)
            assert again[0] is pw and again[1] is pb
