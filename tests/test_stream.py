"""Non-temporal stores (``lnnumba.cpu.stream``) and the passes that write large outputs with
them, against the float64 reference."""

import threading

import numpy as np
import pytest
from _helpers import dx_err, make, rel_err, spy_drivers

import lnnumba as L
from lnnumba import reference as R
from lnnumba._memory import PAGE, empty_at
from lnnumba.cpu import norm as K
from lnnumba.cpu.stream import LINE_BYTES, stream_copy

LONG = K.FUSE_MIN_ROW_BYTES // 4  # float32 columns past which the ordinary passes fuse
PAST = K.STREAM_PREFETCH_BYTES // 4  # float32 columns past the streamed passes' prefetch distance


def at_offset(shape, dtype, offset):
    """A C-contiguous array of NaNs starting ``offset`` elements (fewer than a line's) past a
    line boundary."""
    shape = (shape,) if isinstance(shape, int) else shape
    a = empty_at(shape, dtype, offset * np.dtype(dtype).itemsize, LINE_BYTES)
    a[...] = np.nan
    assert (a.ctypes.data - offset * a.itemsize) % LINE_BYTES == 0
    return a


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stream_copy_every_alignment_and_length(dtype):
    per_line = LINE_BYTES // np.dtype(dtype).itemsize
    for k in range(per_line + 1):  # every start within a line, and the next line
        for n in [0, 1, per_line - 1, per_line, per_line + 1, 3 * per_line + 5]:
            dst = at_offset(5 * per_line, dtype, 0)
            src = np.arange(1, n + 1, dtype=dtype)
            before = dst.copy()
            stream_copy(dst, k, src)
            want = before
            want[k : k + n] = src
            np.testing.assert_array_equal(dst, want)  # NaN where untouched


def test_stream_copy_into_an_array_not_aligned_to_its_dtype():
    raw = np.zeros(4 * 40 + 1, np.uint8)
    dst = raw[1:].view(np.float32)  # misaligned: ordinary stores throughout
    assert not dst.flags.aligned
    src = np.arange(1, 38, dtype=np.float32)
    stream_copy(dst, 2, src)
    np.testing.assert_array_equal(dst[2:39], src)
    assert np.all(dst[:2] == 0) and dst[39] == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N", [48, 37, LONG + 16, LONG + 3, PAST + 16])
@pytest.mark.parametrize("offset", [0, 1, 3])
@pytest.mark.parametrize("affine", ["none", "weight", "both"])
def test_streamed_passes_match_the_reference(rng, dtype, N, offset, affine):
    # every split of the rows among threads and into blocks of four, LN and RMSNorm, serial and
    # parallel, with and without weight and bias, on outputs that start on and off a line
    # boundary; rows that are not a whole number of lines (N=37, 1027) take the ordinary passes
    # (the fused one for long rows)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    in_phase = N * np.dtype(dtype).itemsize % LINE_BYTES == 0
    for M in [1, 4, 7, 8, 9, 13, 16]:
        x = (3 + make(rng, (M, N), dtype)).astype(dtype)
        dy = make(rng, (M, N), dtype)
        w = make(rng, N, dtype) if affine != "none" else None
        b = make(rng, N, dtype) if affine == "both" else None
        yr, mr, rr = R.layer_norm_forward(x, w, b)
        dxr, dwr, dbr = R.layer_norm_backward(dy, x, mr, rr, w)
        for fwd in (K.forward_serial, K.forward_parallel):
            y, m, r = at_offset((M, N), dtype, offset), np.empty(M, dtype), np.empty(M, dtype)
            fwd(y, m, r, x, w, b, 1e-5, True, True, True, 2)
            assert rel_err(y, yr) < tol and rel_err(r, rr.ravel()) < tol
        for bwd in (K.backward_serial, K.backward_parallel):
            part = np.full((K.n_chunks(M), N), np.nan, dtype)
            dx = at_offset((M, N), dtype, offset)
            dw, db = np.empty(N, dtype), np.empty(N, dtype)
            bwd(dx, dw, db, part, part.copy(), dy, x, m, r, w, True)
            assert dx_err(dx, dxr, rr, dy, w) < tol * 10
            assert rel_err(dw, dwr) < tol and rel_err(db, dbr) < tol
        # the streaming loops do every row, or nothing where the rows are not in phase
        for loop, args in [
            (K._forward_rows_stream, (y, m, r, x, w, b, 1e-5, True)),
            (K._backward_rows_stream, (dx, dw, db, dy, x, m, r, w)),
        ]:
            assert loop(*args, 0, M) == (M if in_phase else 0)
        # RMSNorm
        y, r = at_offset((M, N), dtype, offset), np.empty(M, dtype)
        K.forward_serial(y, None, r, x, w, None, 1e-6, False, True, True, 1)
        yq, rq = R.rms_norm_forward(x, w)
        assert rel_err(y, yq) < tol and rel_err(r, rq.ravel()) < tol
        dx, dw = at_offset((M, N), dtype, offset), np.empty(N, dtype)
        part = np.empty((K.n_chunks(M), N), dtype)
        K.backward_serial(dx, dw, None, part, None, dy, x, None, r, w, True)
        dxq, dwq = R.rms_norm_backward(dy, x, rq, w)
        assert dx_err(dx, dxq, rq, dy, w) < tol * 10 and rel_err(dw, dwq) < tol


def test_streamed_passes_keep_large_means_accurate(rng):
    # float32 rows of 1e4 + N(0, 1): the shifted statistics survive the streaming passes
    N = 1024
    x = (1e4 + rng.standard_normal((12, N))).astype(np.float32)
    dy = rng.standard_normal((12, N)).astype(np.float32)
    w = (1 + 0.1 * rng.standard_normal(N)).astype(np.float32)
    y, m, r = at_offset((12, N), np.float32, 0), np.empty(12), np.empty(12)
    K.forward_serial(y, m, r, x, w, None, 1e-5, True, True, True, 1)
    yr, mr, rr = R.layer_norm_forward(x, w)
    assert rel_err(y, yr) < 1e-4 and rel_err(m, mr.ravel()) < 1e-7
    dx, dw, db = at_offset((12, N), np.float32, 0), np.empty(N, np.float32), np.empty(N, np.float32)
    part = np.empty((K.n_chunks(12), N), np.float32)
    K.backward_serial(dx, dw, db, part, part.copy(), dy, x, m.astype(np.float32),
                      r.astype(np.float32), w, True)  # fmt: skip
    for a, b_ in zip((dx, dw, db), R.layer_norm_backward(dy, x, mr, rr, w)):
        assert rel_err(a, b_) < 1e-4


def test_public_calls_stream_large_outputs(rng, monkeypatch):
    x = make(rng, (256, 320), np.float32)  # past the serial-only size; rows of whole lines
    dy = make(rng, x.shape, np.float32)
    w, b = make(rng, 320, np.float32), make(rng, 320, np.float32)
    want = [
        L.layer_norm(x, w, b),
        *L.layer_norm_backward(dy, x, *L.layer_norm_forward(x, w, b)[1:], w),
        L.rms_norm(x, w),
    ]
    streamed = []
    spy_drivers(monkeypatch, lambda name, a: streamed.append(a[-2] if "forward" in name else a[-1]))
    assert not K._streams(x, K.STREAM_MIN_BYTES)  # 320 KB: ordinary stores
    assert not K._streams(x, K.BACKWARD_STREAM_MIN_BYTES)
    monkeypatch.setattr(K, "STREAM_MIN_BYTES", x.nbytes)
    monkeypatch.setattr(K, "BACKWARD_STREAM_MIN_BYTES", x.nbytes)
    assert K._streams(x, x.nbytes)
    y = L.layer_norm(x, w, b)
    _, mean, rstd = L.layer_norm_forward(x, w, b)
    dx, dw, db = L.layer_norm_backward(dy, x, mean, rstd, w)
    yq = L.rms_norm(x, w)
    assert streamed == [True] * 4
    for a, b_ in zip([y, dx, dw, db, yq], want):
        assert rel_err(a, b_) < 1e-5
    # in place the forward touches half the bytes: streamed from twice STREAM_MIN_BYTES
    z = x.copy()
    del streamed[:]
    L.layer_norm(z, w, b, out=z)
    monkeypatch.setattr(K, "STREAM_MIN_BYTES", x.nbytes // 2)
    z2 = x.copy()
    L.layer_norm(z2, w, b, out=z2)
    assert streamed == [False, True]
    np.testing.assert_array_equal(z, z2)
    assert rel_err(z, want[0]) < 1e-5
    monkeypatch.setattr(K, "STREAM_MAX_ROW_BYTES", x.shape[1] * x.itemsize - 1)
    assert not K._streams(x, 0)  # rows too long to stay in L2 between the two reads


@pytest.mark.parametrize("page_offset", [16, 1040, 3520])
def test_new_outputs_start_where_the_passes_write_them_fastest(rng, monkeypatch, page_offset):
    # a streamed pass's new output starts at x's place within a 4 KB page (see
    # ``forward_out_place``, ``backward_out_place``); without streaming, on a line boundary;
    # the results are those of the reference wherever they are
    x = empty_at((256, 320), np.float32, page_offset, PAGE)  # 320 KB: pooled
    x[...] = make(rng, x.shape, np.float32)
    dy = empty_at(x.shape, np.float32, page_offset, PAGE)
    dy[...] = make(rng, x.shape, np.float32)
    w, b = make(rng, 320, np.float32), make(rng, 320, np.float32)
    yr, mr, rr = R.layer_norm_forward(x, w, b)
    dxr = R.layer_norm_backward(dy, x, mr, rr, w)[0]

    def outputs():
        _, mean, rstd = L.layer_norm_forward(x, w, b)
        return [
            L.layer_norm(x, w, b),
            L.layer_norm_forward(x, w, b)[0],
            L.rms_norm(x, w),
            L.rms_norm_forward(x, w)[0],
        ], L.layer_norm_backward(dy, x, mean, rstd, w)[0]

    ys, dx = outputs()
    assert all(a.ctypes.data % LINE_BYTES == 0 for a in [*ys, dx])
    assert K.forward_out_place(x) == K.backward_out_place(dy, x) == (0, LINE_BYTES)
    monkeypatch.setattr(K, "STREAM_MIN_BYTES", x.nbytes)
    monkeypatch.setattr(K, "BACKWARD_STREAM_MIN_BYTES", x.nbytes)
    assert K.forward_out_place(x) == K.backward_out_place(dy, x) == (page_offset, PAGE)
    # dy elsewhere: dx at whichever of x's and dy's places the other follows within half a page
    for shift, place in [(16, page_offset), (2032, page_offset), (-16, page_offset - 16),
                         (-64, page_offset - 64), (2064, page_offset + 2064)]:  # fmt: skip
        other = empty_at(x.shape, np.float32, (page_offset + shift) % PAGE, PAGE)
        assert K.backward_out_place(other, x) == (place % PAGE, PAGE), shift
        assert K.backward_out_place(x, other) == (place % PAGE, PAGE), shift
    other = empty_at(x.shape, np.float32, (page_offset + 64) % PAGE, PAGE)
    other[...] = dy
    assert (L.layer_norm_backward(other, x, *L.layer_norm_forward(x, w, b)[1:], w)[0].ctypes.data
            - x.ctypes.data) % PAGE == 0  # fmt: skip
    ys, dx = outputs()
    assert all((y.ctypes.data - x.ctypes.data) % PAGE == 0 for y in ys)
    assert (dx.ctypes.data - x.ctypes.data) % PAGE == 0
    for y in ys[:2]:
        assert rel_err(y, yr) < 1e-5
    assert dx_err(dx, dxr, rr, dy, w) < 1e-4


def test_streamed_outputs_from_many_threads(rng, monkeypatch):
    # every thread's streamed output is complete when its call returns
    monkeypatch.setattr(K, "STREAM_MIN_BYTES", 0)
    monkeypatch.setattr(K, "BACKWARD_STREAM_MIN_BYTES", 0)
    x = make(rng, (48, 2048), np.float32)
    w = make(rng, 2048, np.float32)
    ref = R.layer_norm_forward(x, w)[0]
    errors = []

    def work():
        for _ in range(20):
            y = L.layer_norm(x, w)
            if not rel_err(y, ref) < 1e-5:
                errors.append(rel_err(y, ref))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N", [5, 16, 21, 37, 48, 64, 100])
def test_backward_lines_at_every_alignment(rng, dtype, N):
    # the backward's second pass with ordinary stores (``_backward_rows_lines``) starts its whole
    # lines at dx's first line boundary and takes the columns before and after as whole lines
    # overlapping them, their dw/db terms masked: every start within a line, for dx, x, dy and
    # the accumulators together (NumPy's large arrays) and apart, rows shorter than a line, and
    # rows that are not a whole number of lines, against the reference
    tol = 2e-5 if dtype == np.float32 else 1e-12
    per_line = LINE_BYTES // np.dtype(dtype).itemsize
    M = 3
    x0 = (3 + make(rng, (M, N), dtype)).astype(dtype)
    dy0 = make(rng, (M, N), dtype)
    w = make(rng, N, dtype)
    yr, mr, rr = R.layer_norm_forward(x0, w)
    dxr, dwr, dbr = R.layer_norm_backward(dy0, x0, mr, rr, w)
    m, r = mr.ravel().astype(dtype), rr.ravel().astype(dtype)
    _, rq = R.rms_norm_forward(x0, w)
    dxq, dwq = R.rms_norm_backward(dy0, x0, rq, w)
    for off in range(per_line):
        for other in (off, (off + 1) % per_line):  # x, dy and accumulators with dx, or apart
            x = at_offset((M, N), dtype, other)
            dy = at_offset((M, N), dtype, other)
            x[:], dy[:] = x0, dy0
            dx = at_offset((M, N), dtype, off)
            dw, db = at_offset(N, dtype, other), at_offset(N, dtype, other)
            dw[:], db[:] = 0, 0
            K._backward_rows_lines(dx, dw, db, dy, x, m, r, w, 0, M)
            assert dx_err(dx, dxr, rr, dy0, w) < tol * 10, (off, other)
            assert rel_err(dw, dwr) < tol and rel_err(db, dbr) < tol, (off, other)
            dx[:], dw[:] = np.nan, 0
            K._backward_rows_lines(dx, dw, None, dy, x, None, rq.ravel().astype(dtype), w, 0, M)
            assert dx_err(dx, dxq, rq, dy0, w) < tol * 10 and rel_err(dw, dwq) < tol, (off, other)
    assert np.array_equal(x, x0) and np.array_equal(dy, dy0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lines", [1, 3])
def test_forward_stream_seams_at_every_alignment(rng, dtype, lines):
    # the streamed forward (``_forward_rows_stream``) writes the line where one row ends and
    # the next begins with both rows' statistics: every start of the rows within a line, ranges
    # of rows that start and end inside the array, with and without weight and bias, LN and
    # RMSNorm, in place and not, against the reference; the rows outside the range stay
    # untouched
    tol = 2e-5 if dtype == np.float32 else 1e-12
    per_line = LINE_BYTES // np.dtype(dtype).itemsize
    M, N = 6, lines * per_line
    x0 = (3 + make(rng, (M, N), dtype)).astype(dtype)
    wa, ba = make(rng, N, dtype), make(rng, N, dtype)
    for off in range(per_line):
        for w, b in [(wa, ba), (wa, None), (None, None)]:
            for lo, hi in [(0, M), (1, 2), (2, 5), (4, M)]:
                for center in (True, False):
                    eps = 1e-5 if center else 1e-6  # the reference's defaults
                    if center:
                        yr, mr, rr = R.layer_norm_forward(x0[lo:hi], w, b, eps=eps)
                    else:
                        yr, rr = R.rms_norm_forward(x0[lo:hi], w, eps=eps)
                        mr = None
                    for inplace in (False, True):
                        x = at_offset((M, N), dtype, off)
                        x[:] = x0
                        y = x if inplace else at_offset((M, N), dtype, off)
                        mean = np.full(M, np.nan, dtype) if center else None
                        rstd = np.full(M, np.nan, dtype)
                        got = K._forward_rows_stream(
                            y, mean, rstd, x, w, b if center else None, eps, center, lo, hi
                        )
                        case = (off, w is None, b is None, lo, hi, center, inplace)
                        assert got == hi, case
                        assert rel_err(y[lo:hi], yr) < tol, case
                        assert rel_err(rstd[lo:hi], rr.ravel()) < tol, case
                        if center:
                            assert rel_err(mean[lo:hi], mr.ravel()) < tol, case
                        out = np.concatenate([y[:lo], y[hi:]])
                        if inplace:
                            assert np.array_equal(out, np.concatenate([x0[:lo], x0[hi:]])), case
                        else:
                            assert np.isnan(out).all(), case
                            assert np.array_equal(x, x0), case


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lines", [1, 3])
def test_backward_stream_seams_at_every_alignment(rng, dtype, lines):
    # the streamed backward (``_backward_rows_stream``) writes the line where one row ends and
    # the next begins with both rows' constants, its dw/db terms gathered in the lanes of a
    # line of their own: every start of the rows within a line, ranges of rows that start
    # and end inside the array (the parallel chunks), with and without weight, LN and RMSNorm,
    # against the reference; the rows outside the range stay untouched
    tol = 2e-5 if dtype == np.float32 else 1e-12
    per_line = LINE_BYTES // np.dtype(dtype).itemsize
    M, N = 6, lines * per_line
    x0 = (3 + make(rng, (M, N), dtype)).astype(dtype)
    dy0 = make(rng, (M, N), dtype)
    for off in range(per_line):
        x, dy = at_offset((M, N), dtype, off), at_offset((M, N), dtype, off)
        x[:], dy[:] = x0, dy0
        for w in (make(rng, N, dtype), None):
            for lo, hi in [(0, M), (1, 2), (2, 5), (0, 3), (4, M)]:
                xs, dys = x0[lo:hi], dy0[lo:hi]
                _, mr, rr = R.layer_norm_forward(xs, w)
                dxr, dwr, dbr = R.layer_norm_backward(dys, xs, mr, rr, w)
                _, rq = R.rms_norm_forward(xs, w)
                dxq, dwq = R.rms_norm_backward(dys, xs, rq, w)
                m, r = np.zeros(M, dtype), np.ones(M, dtype)
                for mean, rstd, want in [
                    (mr, rr, (dxr, dwr, dbr)),
                    (None, rq, (dxq, dwq, None)),
                ]:
                    if mean is not None:
                        m[lo:hi] = mean.ravel()
                    r[lo:hi] = rstd.ravel()
                    dx = at_offset((M, N), dtype, off)
                    dw = np.zeros(N, dtype)
                    db = None if want[2] is None else np.zeros(N, dtype)
                    got = K._backward_rows_stream(
                        dx, dw, db, dy, x, None if mean is None else m, r, w, lo, hi
                    )
                    case = (off, w is None, lo, hi, mean is None)
                    assert got == hi, case
                    assert dx_err(dx[lo:hi], want[0], rstd, dys, w) < tol * 10, case
                    assert np.isnan(dx[:lo]).all() and np.isnan(dx[hi:]).all(), case
                    assert rel_err(dw, want[1]) < tol, case
                    if db is not None:
                        assert rel_err(db, want[2]) < tol, case
    assert np.array_equal(x, x0) and np.array_equal(dy, dy0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_results_do_not_depend_on_where_the_arrays_start(rng, dtype):
    # the forward gives the same bits, output and statistics, wherever x and y start within a
    # line, streamed (seam lines, with and without weight and bias) or not, LN and RMSNorm
    per_line = LINE_BYTES // np.dtype(dtype).itemsize
    M, N, lo, hi = 11, 3 * per_line, 1, 10
    x0 = (3 + make(rng, (M, N), dtype)).astype(dtype)
    wb = [(make(rng, N, dtype), make(rng, N, dtype)), (None, None)]
    first = {}
    for off in range(per_line):
        x = at_offset((M, N), dtype, off)
        x[:] = x0
        for k, (w, b) in enumerate(wb):
            for center in (True, False):
                for stream in (True, False):
                    y = at_offset((M, N), dtype, off)
                    mean = np.full(M, np.nan, dtype) if center else None
                    rstd = np.full(M, np.nan, dtype)
                    b_ = b if center else None
                    K._forward_rows(y, mean, rstd, x, w, b_, 1e-5, center, False, stream, lo, hi)
                    got = [y[lo:hi], rstd[lo:hi]] + ([mean[lo:hi]] if center else [])
                    want = first.setdefault((k, center), got)
                    for a, c in zip(got, want):
                        np.testing.assert_array_equal(a, c, err_msg=str((off, k, center, stream)))
    assert np.array_equal(x, x0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("long_rows", [False, True])
def test_backward_stream_results_do_not_depend_on_where_dx_starts(rng, dtype, long_rows):
    # the streamed backward gives the same bits wherever dx (with x and dy) starts within a
    # line: the unstreamed pass's bits (with seam lines), dx, dw and db, also with accumulators
    # that do not start at zero, for rows short and longer than the prefetch distance
    # (STREAM_PREFETCH_BYTES of x and dy). LN and RMSNorm, with and without weight, a range of
    # rows inside the array
    per_line = LINE_BYTES // np.dtype(dtype).itemsize
    N = K.STREAM_PREFETCH_BYTES // (2 * np.dtype(dtype).itemsize) + per_line
    if not long_rows:
        N = 3 * per_line
    assert (2 * N * np.dtype(dtype).itemsize > K.STREAM_PREFETCH_BYTES) == long_rows
    M, lo, hi = 11, 1, 10
    x0 = (3 + make(rng, (M, N), dtype)).astype(dtype)
    dy0 = make(rng, (M, N), dtype)
    _, m, r = R.layer_norm_forward(x0)
    m, r = m.ravel().astype(dtype), r.ravel().astype(dtype)
    _, rq = R.rms_norm_forward(x0)
    rq = rq.ravel().astype(dtype)
    acc0 = make(rng, N, dtype)
    weight = make(rng, N, dtype)
    for off in range(per_line):
        x, dy = at_offset((M, N), dtype, off), at_offset((M, N), dtype, off)
        x[:], dy[:] = x0, dy0
        for w in (weight, None):
            for mean, rstd in [(m, r), (None, rq)]:
                got = []
                for stream in (True, False):
                    dx = at_offset((M, N), dtype, off)
                    dw = acc0.copy()
                    db = None if mean is None else acc0.copy()
                    K._backward_rows(dx, dw, db, dy, x, mean, rstd, w, stream, lo, hi)
                    assert np.isnan(dx[:lo]).all() and np.isnan(dx[hi:]).all()
                    got.append((dx[lo:hi], dw, db))
                case = (off, w is None, mean is None)
                streamed, lines = got
                for a, b in zip(streamed, lines):
                    if a is not None:
                        np.testing.assert_array_equal(a, b, err_msg=str(case))
    assert np.array_equal(x, x0) and np.array_equal(dy, dy0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N", [1, 5, 16, 37, 100, 128])
def test_forward_rows_two_at_a_time(rng, dtype, N):
    # rows up to FORWARD_PAIRS_MAX_ROW_BYTES go through the row loop two at a time, an odd row
    # last: every row count, serial and parallel, LN and RMSNorm, with and without weight, bias
    # and saved statistics, in place and not, at a start within a line, against the reference;
    # the rows outside the range a call is given stay untouched
    tol = 2e-5 if dtype == np.float32 else 1e-12
    assert N * np.dtype(dtype).itemsize <= K.FORWARD_PAIRS_MAX_ROW_BYTES
    w, b = make(rng, N, dtype), make(rng, N, dtype)
    for M in (1, 2, 3, 4, 5, 8):
        x0 = (3 + make(rng, (M, N), dtype)).astype(dtype)
        yr, mr, rr = R.layer_norm_forward(x0, w, b)
        yq, rq = R.rms_norm_forward(x0, w)
        for fwd in (K.forward_serial, K.forward_parallel):
            for inplace in (False, True):
                x = at_offset((M, N), dtype, 1)
                x[:] = x0
                y = x if inplace else at_offset((M, N), dtype, 2)
                m, r = np.empty(M, dtype), np.empty(M, dtype)
                fwd(y, m, r, x, w, b, 1e-5, True, False, False, 2)
                case = (M, fwd.__name__, inplace)
                assert rel_err(y, yr) < tol and rel_err(m, mr.ravel()) < tol, case
                assert rel_err(r, rr.ravel()) < tol, case
                x[:] = x0
                fwd(y, None, r, x, w, None, 1e-6, False, False, False, 2)
                assert rel_err(y, yq) < tol and rel_err(r, rq.ravel()) < tol, case
                x[:] = x0
                fwd(y, None, None, x, None, None, 1e-5, True, False, False, 2)
                assert rel_err(y, R.layer_norm_forward(x0)[0]) < tol, case
                if not inplace:
                    assert np.array_equal(x, x0), case
        if M > 2:  # rows 1..M-2 only
            y = np.full((M, N), np.nan, dtype)
            K._forward_rows(y, None, None, x0, w, b, 1e-5, True, False, False, 1, M - 1)
            assert rel_err(y[1 : M - 1], yr[1 : M - 1]) < tol, M
            assert np.isnan(y[0]).all() and np.isnan(y[M - 1]).all(), M


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_line_len_is_the_elements_of_a_line(dtype):
    from numba import njit

    from lnnumba.cpu.stream import line_len

    a = np.zeros(3, dtype)
    assert line_len(a) == njit(lambda a: line_len(a))(a) == LINE_BYTES // a.itemsize


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_line_copy_places_a_copy_within_a_line(rng, dtype):
    from numba import njit

    @njit
    def line_copy(a, off):
        return K._line_copy(a, off)

    @njit
    def no_weight(off):
        return K._line_copy(None, off) is None

    size = np.dtype(dtype).itemsize
    a = make(rng, 2 * LINE_BYTES + 3, dtype)[1:]  # not where a copy goes
    for off in range(0, LINE_BYTES, size):
        for f in (line_copy, K._line_copy):  # compiled, and in Python
            c = f(a, off)
            assert c.ctypes.data % LINE_BYTES == off and np.array_equal(c, a), off
            assert not np.shares_memory(c, a)
    assert no_weight(0) and K._line_copy(None, 0) is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", ["long", "short", "odd"])
def test_forward_rows_with_weights_copied(rng, dtype, rows):
    # a thread's rows, LINES_MIN_ROWS or more, take the row loop with w and b copied: rows of
    # more than FORWARD_PAIRS_MAX_ROW_BYTES whose length is whole lines with w and b at y's
    # place within a line, split at its line boundaries (_forward_rows_lines); shorter rows
    # two at a time with w and b on a line boundary (_forward_pairs), an odd row last. The
    # same bits as the loops without the copies (the same rows a few at a time), for y at
    # every place within a line, x elsewhere, in place and not, LN and RMSNorm, with and
    # without weight, bias and saved statistics, rows with an outlier first element (the
    # two-pass statistics) included; against the reference; x is not modified
    per_line = LINE_BYTES // np.dtype(dtype).itemsize
    N = {
        "long": K.FORWARD_PAIRS_MAX_ROW_BYTES // np.dtype(dtype).itemsize + per_line,
        "short": K.FORWARD_PAIRS_MAX_ROW_BYTES // np.dtype(dtype).itemsize,
        "odd": 37,
    }[rows]
    M = K.LINES_MIN_ROWS + 3
    tol = 2e-5 if dtype == np.float32 else 1e-12
    x0 = (3 + make(rng, (M, N), dtype)).astype(dtype)
    x0[[2, M - 1], 0] = 3e3
    w, b = make(rng, N, dtype), make(rng, N, dtype)
    yr = R.layer_norm_forward(x0, w, b)[0]
    for off in range(per_line):
        for inplace in (False, True):
            for wt, bt, center, stats in [
                (w, b, True, True),
                (w, None, False, True),
                (None, None, True, False),
                (w[::-1].copy(), b, True, False),
            ]:
                case = (off, inplace, wt is None, bt is None, center, stats)
                got = []
                for step in (M, 5):  # all rows in one call; a few at a time (the plain loop)
                    x = at_offset((M, N), dtype, 3)
                    x[:] = x0
                    y = None if inplace else at_offset((M, N), dtype, off)
                    if inplace:  # y's place is x's
                        x = at_offset((M, N), dtype, off)
                        x[:] = x0
                    m = np.empty(M, dtype) if stats else None
                    r = np.empty(M, dtype) if stats else None
                    for lo in range(0, M, step):
                        hi = min(M, lo + step)
                        K._forward_rows(y, m, r, x, wt, bt, 1e-5, center, False, False, lo, hi)
                    out = x if inplace else y
                    if not inplace:
                        assert np.array_equal(x, x0), case
                    got.append((out, m, r))
                for a, c in zip(*got):
                    if a is not None:
                        np.testing.assert_array_equal(a, c, err_msg=str(case))
                if wt is w and bt is b and center:
                    assert rel_err(got[0][0], yr) < 1e-4, case
                    ok = [i for i in range(M) if i not in (2, M - 1)]
                    assert rel_err(got[0][0][ok], yr[ok]) < tol, case


def first_pass_mean(x):
    """The mean that one pass of sums shifted by x[0] finds, rounded to x's dtype: the
    fallback's shift."""
    return K.row_stats_one_pass(x, x[0], 1e-5, True)[0]


def stats_exact(mean, rstd, x, eps=1e-5):
    """Whether a row's (mean, rstd) are its float64 ones to 4 units in the last place of x's
    dtype: the mean relative to |mean| + the spread, rstd relative to itself. x: (N,)."""
    m, s = x.astype(np.float64).mean(), x.astype(np.float64).std()
    tol = 4 * np.finfo(x.dtype).eps
    return abs(mean - m) <= tol * (abs(m) + s) and abs(rstd - 1 / np.sqrt(s**2 + eps)) <= tol * rstd


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_stats_retry_is_exact_and_falls_back_to_two_passes(rng, dtype):
    # the second pass, shifted by the first pass's mean, gives the float64 statistics to a few
    # units in the last place of the mean and of the spread (with an outlier in front, closer
    # than the two passes of row_stats, whose first pass sums the distances to the outlier);
    # where it too cancels or is not finite it returns row_stats' own
    for x in [
        (1e4 + make(rng, 1000, dtype)).astype(dtype),
        np.concatenate([[dtype(5e3)], make(rng, 999, dtype)]).astype(dtype),
        (-7 + 1e-3 * make(rng, 333, dtype)).astype(dtype),
    ]:
        x0, c, r = K.row_stats_retry(x, first_pass_mean(x), 1e-5, True)
        assert stats_exact(x0 + c, r, x)
    x = make(rng, 64, dtype)
    x[5] = np.inf
    got = K.row_stats_retry(x, first_pass_mean(x), 1e-5, True)
    np.testing.assert_array_equal(np.array(got), np.array(K.row_stats(x, 1e-5, True)))
    # a shift far off the mean (not the first pass's) cancels too: row_stats' own
    x = (3 + make(rng, 64, dtype)).astype(dtype)
    got = K.row_stats_retry(x, dtype(1e3), 1e-5, True)
    np.testing.assert_array_equal(np.array(got), np.array(K.row_stats(x, 1e-5, True)))


@pytest.mark.parametrize("N", [48, 256, 2048])
def test_outlier_rows_take_the_fallback_statistics_on_every_forward_path(rng, N):
    # rows whose first element is far from their mean (the one-pass sums' shift) take the
    # fallback row_stats_retry, shifted by the mean the one pass found, which every forward
    # path calls in its own code (the one-row, two-row, streamed, blocked and fused paths,
    # serial and parallel, in place and not): their saved statistics are exact, and the same
    # on every path whose one-pass sums are the same (the fused path's sums of four rows at
    # once, float32 rows from FUSE_MIN_ROW_BYTES, add in another order)
    M, dtype = 13, np.float32
    x0 = (3 + make(rng, (M, N), dtype)).astype(dtype)
    odd = [1, 6, 7, 12]
    x0[odd, 0] = 3e3
    rest = [i for i in range(M) if i not in odd]
    assert not any(K.row_stats_one_pass(x0[i], x0[i, 0], 1e-5, True)[3] for i in odd)
    w, b = make(rng, N, dtype), make(rng, N, dtype)
    yr = R.layer_norm_forward(x0, w, b)[0]
    first = None
    for fwd in (K.forward_serial, K.forward_parallel):
        for block, stream, inplace in [
            (False, False, False),
            (False, False, True),
            (True, False, False),
            (False, True, False),
            (False, True, True),
        ]:
            x = at_offset((M, N), dtype, 3)
            x[:] = x0
            y = x if inplace else at_offset((M, N), dtype, 3)
            m, r = np.empty(M, dtype), np.empty(M, dtype)
            fwd(y, m, r, x, w, b, 1e-5, True, block, stream, 2)
            case = (fwd.__name__, block, stream, inplace)
            for i in odd:
                assert stats_exact(m[i], r[i], x0[i]), (case, i)
            if first is None:
                first = m, r
            elif np.array_equal(m[rest], first[0][rest]) and np.array_equal(
                r[rest], first[1][rest]
            ):
                assert np.array_equal(m[odd], first[0][odd]), case
                assert np.array_equal(r[odd], first[1][odd]), case
            else:
                assert block and N * 4 >= K.FUSE_MIN_ROW_BYTES, case
            assert rel_err(y, yr) < 1e-4, case


def test_row_ln_takes_the_fallback_statistics_for_an_outlier_first_element(rng):
    # the recurrent cells' row routine has the same fallback as the forward paths
    x = (3 + make(rng, 256, np.float32)).astype(np.float32)
    x[0] = 3e3
    y = np.empty_like(x)
    mean, rstd = K.row_ln(y, x, None, None, 1e-5, True)
    assert not K.row_stats_one_pass(x, x[0], 1e-5, True)[3]
    # exact (the one pass alone, cancelling about 8 bits here, is not), as the forward's
    assert stats_exact(mean, rstd, x)
    fm, fr = np.empty(1, np.float32), np.empty(1, np.float32)
    K.forward_serial(np.empty((1, 256), np.float32), fm, fr, x[None], None, None, 1e-5, True,
                     False, False, 1)  # fmt: skip
    assert np.float32(mean) == fm[0] and np.float32(rstd) == fr[0]
    assert rel_err(y, R.layer_norm_forward(x[None])[0][0]) < 1e-4


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "N, block, stream",
    [
        (37, False, False),  # rows two at a time, the last one alone
        (300, False, False),  # one at a time
        (37, True, False),  # blocks of four
        (LONG + 3, True, False),  # blocks of four fused with the next block's statistics
        (48, False, True),  # streamed, one row at a time
        (PAST + 16, False, True),  # streamed, rows past the prefetch distance
    ],
)
@pytest.mark.parametrize("center", [True, False])
def test_forward_in_place_matches_a_separate_output_on_every_path(rng, dtype, N, block, stream,
                                                                  center):  # fmt: skip
    # y None writes the output into x (lnnumba.norm passes it for out=x): the same bits as into
    # a separate array, statistics too, serial and parallel, on every path but the fused one,
    # whose statistics' sums LLVM vectorizes in a different order for the two (within float
    # rounding of each other; they differ from the unfused sums of a block's first rows anyway)
    fused = block and N * np.dtype(dtype).itemsize > K.FUSE_MIN_ROW_BYTES
    M = 13
    x0 = (3 + make(rng, (M, N), dtype)).astype(dtype)
    w, b = make(rng, N, dtype), (make(rng, N, dtype) if center else None)
    for fwd in (K.forward_serial, K.forward_parallel):
        x = at_offset((M, N), dtype, 3)
        x[:] = x0
        y, m, r = at_offset((M, N), dtype, 3), np.empty(M, dtype), np.empty(M, dtype)
        fwd(y, m, r, x, w, b, 1e-5, center, block, stream, 2)
        mi, ri = np.empty(M, dtype), np.empty(M, dtype)
        fwd(None, mi, ri, x, w, b, 1e-5, center, block, stream, 2)
        case = (fwd.__name__, N, block, stream, center)
        if fused:
            tol = 1e-6 if dtype == np.float32 else 1e-14
            assert rel_err(x, y) < tol and rel_err(mi, m) < tol and rel_err(ri, r) < tol, case
            continue
        np.testing.assert_array_equal(x, y, err_msg=str(case))
        np.testing.assert_array_equal(mi, m, err_msg=str(case))
        np.testing.assert_array_equal(ri, r, err_msg=str(case))


@pytest.mark.parametrize("shape", [(3, 37), (300, 257), (40, 1000)])  # serial and parallel sizes
def test_public_forward_in_place(rng, shape):
    x = (3 + make(rng, shape, np.float32)).astype(np.float32)
    w, b = make(rng, shape[-1], np.float32), make(rng, shape[-1], np.float32)
    for norm, args in ((L.layer_norm, (w, b)), (L.rms_norm, (w,))):
        want = norm(x, *args)
        z = x.copy()
        assert norm(z, *args, out=z) is z
        np.testing.assert_array_equal(z, want)
        z = x.copy()
        z3 = z[:, None]  # 3-d, through the full checks, in place: out is x itself
        assert norm(z3, *args, out=z3) is z3
        np.testing.assert_array_equal(z, want)


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_public_backward_places_a_streamed_dx_where_x_or_dy_starts(monkeypatch, rng, norm):
    # where the backward streams, a new dx starts at x's place or dy's within a page (the
    # streamed lines are dx's): at the one the other follows within half a page, so that
    # neither starts just before dx; the gradients are the reference's wherever that is
    monkeypatch.setattr(K, "BACKWARD_STREAM_MIN_BYTES", 0)
    M, N = 1024, 64  # 256 KB: past the small paths' pool threshold, parallel
    x0 = (3 + make(rng, (M, N), np.float32)).astype(np.float32)
    dy0 = make(rng, (M, N), np.float32)
    w = make(rng, N, np.float32)
    for xoff, dyoff, want in [(4, 4, 16), (12, 12, 48), (0, 0, 0), (4, 8, None)]:
        x, dy = at_offset((M, N), np.float32, xoff), at_offset((M, N), np.float32, dyoff)
        x[:], dy[:] = x0, dy0
        for direct in (True, False):  # the short path's checks, and the full ones (3-d)
            xs, dys = (x, dy) if direct else (x.reshape(M // 2, 2, N), dy.reshape(M // 2, 2, N))
            if norm == "layer":
                _, m, r = L.layer_norm_forward(xs, w, None)
                got = L.layer_norm_backward(dys, xs, m, r, w)
                ref = R.layer_norm_backward(dys, xs, *R.layer_norm_forward(xs, w, None)[1:], w)
            else:
                _, r = L.rms_norm_forward(xs, w)
                got = L.rms_norm_backward(dys, xs, r, w)
                ref = R.rms_norm_backward(dys, xs, R.rms_norm_forward(xs, w)[1], w)
            at = got[0].ctypes.data % PAGE
            assert at in (x.ctypes.data % PAGE, dy.ctypes.data % PAGE), (xoff, dyoff, direct)
            for a in (x, dy):  # neither starts before dx, within half a page
                assert (a.ctypes.data - at) % PAGE <= PAGE // 2, (xoff, dyoff, direct)
            if want is not None:  # x and dy at one place within a line: dx there too
                assert at % LINE_BYTES == want, (xoff, dyoff, direct)
            for a, b in zip(got, ref):
                assert rel_err(a, b) < 1e-4, (xoff, dyoff, direct)
    assert np.array_equal(x, x0) and np.array_equal(dy, dy0)
