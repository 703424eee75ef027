"""Fused per-step kernels of the recurrent cells (PAPER.md §3): everything between the matrix
products, one ``@njit`` pass over the batch per time step, forward and backward side by side.

The matrix products themselves (the input projection of all steps as one GEMM, the recurrence as
one GEMM per step) are BLAS calls made by the caller (``lnnumba.nn.cells``), except for a small
batch with a small recurrent matrix: there the ``*_steps`` kernels run the whole loop over time,
recurrent product included (``matmat``), in one call, which saves a BLAS call and a kernel
launch per step; and for ``step`` at batch one: the ``*_step_one`` kernels compute both
products (``matvec_pair``, split over the cores) and the step in one call. Layer norm is the row
routine of ``cpu.norm`` (``row_ln`` / ``row_ln_backward``), the same code ``layer_norm`` runs.

Shapes: B batch, H hidden size, G = 4 (LSTM), 3 (GRU) or 1 (RNN) gate blocks.
``active`` (B,) bool: rows whose sequence has not ended at this step; for the others the state is
carried unchanged, the output row is zero, and the backward pass passes the state gradient
through untouched. Saved per step: LN statistics (mean, rstd), gate activations, and for the LSTM
the unnormalized cell state; the pre-LN products xw, hw are kept by the caller.
Gradient accumulators (``d*_acc``) are added to (``+=``); zeroing is the caller's job.
"""

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from .norm import row_ln, row_ln_backward

# NumPy's error model: a float division by zero gives inf/nan instead of raising. With Python's,
# every division carries a zero check, and the loops with one (``_tanh``'s rational function,
# hence every gate) do not vectorize: the LN-LSTM step kernel ran 2.4x slower.
_jit = dict(nogil=True, cache=True, error_model="numpy")


# Matrix-vector products: reassociation lets LLVM vectorize the sums over eight rows.
_jit_matvec = dict(nogil=True, cache=True, fastmath={"contract", "nsz", "reassoc", "arcp"})


@njit(**_jit_matvec)
def matmat_rows(Y, A, W, k0, k1):
    """Y = A[:, k0:k1] @ W[k0:k1] for a small batch. Y: (B, G) out; A: (B, K); W: (K, G)
    C-contiguous.

    Eight rows of W at a time, taken for every row of the batch in turn while they are in L1: a
    row of Y (in L1) is loaded and stored once per eight rows of W, W streams through once a call
    in memory order, and the loop over G vectorizes. Each row's arithmetic is the same whatever
    the batch. As fast as BLAS at batch one while W fits in the core's L2 cache (the callers take
    it only then); at larger batches see ``nn.cells.KERNEL_LOOP_MAX_WORK_BYTES``.
    """
    B, G = Y.shape
    t = Y.dtype.type
    for r in range(B):
        y = Y[r]
        for j in range(G):
            y[j] = t(0)
    i = k0
    while i + 8 <= k1:
        w0, w1, w2, w3 = W[i], W[i + 1], W[i + 2], W[i + 3]
        w4, w5, w6, w7 = W[i + 4], W[i + 5], W[i + 6], W[i + 7]
        for r in range(B):
            a, y = A[r], Y[r]
            a0, a1, a2, a3 = a[i], a[i + 1], a[i + 2], a[i + 3]
            a4, a5, a6, a7 = a[i + 4], a[i + 5], a[i + 6], a[i + 7]
            for j in range(G):
                y[j] += ((a0 * w0[j] + a1 * w1[j]) + (a2 * w2[j] + a3 * w3[j])) + (
                    (a4 * w4[j] + a5 * w5[j]) + (a6 * w6[j] + a7 * w7[j])
                )
        i += 8
    while i < k1:
        w0 = W[i]
        for r in range(B):
            a0, y = A[r, i], Y[r]
            for j in range(G):
                y[j] += a0 * w0[j]
        i += 1


@njit(**_jit_matvec)
def matmat(Y, A, W, active, Ac, Yc):
    """Y[r] = A[r] @ W for the rows r with active[r] (``matmat_rows`` over all of W's rows), for
    a small batch; the other rows of Y (ended sequences, whose steps do not read them) are not
    written. Y: (B, G) out; A: (B, K); W: (K, G); active: (B,) bool; Ac: (B, K), Yc: (B, G)
    scratch. Where some rows have ended, the others are gathered into Ac and computed in one
    pass over W, with the same arithmetic (bits) as in place."""
    B, K = A.shape
    n = 0
    for r in range(B):
        n += active[r]
    if n == B:
        matmat_rows(Y, A, W, 0, K)
        return
    if n == 0:
        return
    q = 0
    for r in range(B):
        if active[r]:
            Ac[q] = A[r]
            q += 1
    matmat_rows(Yc[:n], Ac[:n], W, 0, K)
    q = 0
    for r in range(B):
        if active[r]:
            Y[r] = Yc[q]
            q += 1


@njit(**_jit_matvec)
def matvec_rows(y, a, W, k0, k1):
    """y = a[k0:k1] @ W[k0:k1] for one row (``matmat_rows`` of a batch of one). y: (G,) out;
    a: (K,); W: (K, G) C-contiguous."""
    matmat_rows(y.reshape((1, y.shape[0])), a.reshape((1, a.shape[0])), W, k0, k1)


@njit(**_jit_matvec)
def _matvec_pair_task(xw, hw, part, x, h, Wx, Wh, k, nt):
    """Task k of ``matvec_pair``: rows k*K/nt .. (k+1)*K/nt - 1 of [Wx; Wh] (K = I + H rows).
    A matrix the task covers whole goes straight into its output, a part of one into
    part[k, 0] (Wx) or part[k, 1] (Wh)."""
    I = Wx.shape[0]
    K = I + Wh.shape[0]
    k0 = k * K // nt
    k1 = (k + 1) * K // nt
    if k0 < I:
        if k0 == 0 and k1 >= I:
            matvec_rows(xw, x, Wx, 0, I)
        else:
            matvec_rows(part[k, 0], x, Wx, k0, min(k1, I))
    if k1 > I:
        if k0 <= I and k1 == K:
            matvec_rows(hw, h, Wh, 0, K - I)
        else:
            matvec_rows(part[k, 1], h, Wh, max(k0 - I, 0), k1 - I)


@njit(**_jit_matvec)
def _sum_parts(y, part, m, I, K, nt):
    """y = the sum of part[k, m] over the tasks k that hold a part of matrix m (rows I .. K-1
    of the stacked K rows for m = 1, 0 .. I-1 for m = 0), when more than one task does."""
    lo = 0 if m == 0 else I
    hi = I if m == 0 else K
    first = lo * nt // K  # the first task whose rows reach [lo, hi)
    while (first + 1) * K // nt <= lo:
        first += 1
    last = first
    while (last + 1) * K // nt < hi:
        last += 1
    if last == first:
        return  # one task held the whole matrix and wrote y itself
    G = y.shape[0]
    for j in range(G):
        y[j] = part[first, m, j]
    for k in range(first + 1, last + 1):
        pk = part[k, m]
        for j in range(G):
            y[j] += pk[j]


@njit(parallel=True, **_jit_matvec)
def matvec_pair(xw, hw, x, h, Wx, Wh, nt):
    """xw = x @ Wx and hw = h @ Wh for one row, the rows of [Wx; Wh] split into ``nt``
    contiguous blocks, one task each: with a task per core, each core streams its share of the
    weights, which stays in its own caches from call to call (a recurrent step at batch one; in
    L2 where the share fits).

    xw, hw: (G,) out; x: (I,); h: (H,); Wx: (I, G), Wh: (H, G) C-contiguous; nt: tasks, 1 to
    I + H.
    """
    I = Wx.shape[0]
    K = I + Wh.shape[0]
    split = False  # whether a task boundary falls inside a matrix (then partial products)
    for k in range(1, nt):
        e = k * K // nt
        split = split or (0 < e < I) or (I < e < K)
    # (nt, 2, G) the tasks' partial products; none when each matrix is one task's (I = H, 2 tasks)
    part = np.empty((nt if split else 0, 2, xw.shape[0]), xw.dtype)
    for k in prange(nt):
        _matvec_pair_task(xw, hw, part, x, h, Wx, Wh, k, nt)
    _sum_parts(xw, part, 0, I, K, nt)
    _sum_parts(hw, part, 1, I, K, nt)


def _tanh(v):
    """tanh, as a rational function for float32 (vectorizable: no libm call in the loop) and
    ``np.tanh`` for float64."""
    return np.tanh(v)


@overload(_tanh, jit_options=dict(inline="always"))
def _tanh_impl(v):
    if v == types.float32:
        # The rational approximation of Eigen's float tanh: odd degree-13 over even degree-6
        # polynomial on [-7.9, 7.9], where tanh saturates to 1 in float32; about 2 ulp.
        a1, a3, a5 = (
            np.float32(4.89352455891786e-03),
            np.float32(6.37261928875436e-04),
            np.float32(1.48572235717979e-05),
        )
        a7, a9 = np.float32(5.12229709037114e-08), np.float32(-8.60467152213735e-11)
        a11, a13 = np.float32(2.00018790482477e-13), np.float32(-2.76076847742355e-16)
        b0, b2 = np.float32(4.89352518554385e-03), np.float32(2.26843463243900e-03)
        b4, b6 = np.float32(1.18534705686654e-04), np.float32(1.19825839466702e-06)
        clamp = np.float32(7.90531110763549805)

        def impl(v):
            x = min(max(v, -clamp), clamp)
            x2 = x * x
            p = x2 * a13 + a11
            p = p * x2 + a9
            p = p * x2 + a7
            p = p * x2 + a5
            p = p * x2 + a3
            p = p * x2 + a1
            p = p * x
            q = x2 * b6 + b4
            q = q * x2 + b2
            q = q * x2 + b0
            return p / q

        return impl
    return lambda v: np.tanh(v)


@njit(**_jit)
def _sigmoid(v):
    """Logistic sigmoid in v's own float type, through ``_tanh`` (vectorizable for float32)."""
    half = type(v)(0.5)
    return half + half * _tanh(half * v)


# --- LSTM ----------------------------------------------------------------------------------------


@njit(**_jit)
def lstm_step(h, c, acts, cn, st, xw, hw, h0, c0, b, gx, bx, gh, bh, gc, bc, active, eps, ln, tmp):
    """One LSTM step for the batch.

    h, c: (B, H) out, new state; acts: (B, 4H) out, gate activations i, f, g, o (after sigmoid /
    tanh); cn: (B, H) out, tanh of the (normalized, when ``ln``) new cell state; st: (B, 6) out,
    LN statistics (mean, rstd) of xw, hw and c. xw, hw: (B, 4H) x_t Wx and h_{t-1} Wh; h0, c0:
    (B, H) previous state; b: (4H,); gx, bx, gh, bh: (4H,) and gc, bc: (H,) LN gains/shifts
    (unused when not ``ln``); active: (B,) bool; tmp: (4H,) scratch.
    """
    B, H = h.shape
    t = xw.dtype.type
    for r in range(B):
        # one-dimensional views of the row: loops over them vectorize; the same loops over
        # [r, j] with a gate's offset did not (the gates of B=64, H=256 ran 7x slower)
        hr, cr, h0r, c0r = h[r], c[r], h0[r], c0[r]
        if not active[r]:
            for j in range(H):
                hr[j] = h0r[j]
                cr[j] = c0r[j]
            continue
        a = acts[r]
        xwr, hwr = xw[r], hw[r]
        if ln:
            st[r, 0], st[r, 1] = row_ln(a, xwr, gx, bx, eps, True)
            st[r, 2], st[r, 3] = row_ln(tmp, hwr, gh, bh, eps, True)
            for j in range(4 * H):
                a[j] += tmp[j] + b[j]
        else:
            for j in range(4 * H):
                a[j] = xwr[j] + hwr[j] + b[j]
        ai, af, ag, ao = a[:H], a[H : 2 * H], a[2 * H : 3 * H], a[3 * H :]
        for j in range(H):
            ig = t(_sigmoid(ai[j]))
            fg = t(_sigmoid(af[j]))
            gg = t(_tanh(ag[j]))
            ai[j] = ig
            af[j] = fg
            ag[j] = gg
            ao[j] = t(_sigmoid(ao[j]))
            cr[j] = fg * c0r[j] + ig * gg
        cnr = cn[r]
        if ln:
            st[r, 4], st[r, 5] = row_ln(cnr, cr, gc, bc, eps, True)
        else:
            for j in range(H):
                cnr[j] = cr[j]
        for j in range(H):
            cnr[j] = _tanh(cnr[j])
            hr[j] = ao[j] * cnr[j]


@njit(**_jit)
def lstm_steps(h, c, acts, cn, st, xw, hw, Wh, b, gx, bx, gh, bh, gc, bc, active, eps, ln, tmp):
    """``lstm_step`` for t = 0..T-1, with hw[t] = h[t] Wh computed in the loop (``matmat``; the
    rows of ended sequences, which the step does not read, left unwritten).

    h, c: (T + 1, B, H), h[0], c[0] the initial state, h[t + 1], c[t + 1] out; acts: (T, B, 4H),
    cn: (T, B, H), st: (T, B, 6) out; xw: (T, B, 4H); hw: (T, B, 4H) out; Wh: (H, 4H); active:
    (T, B); the rest as ``lstm_step``.
    """
    Ac, Yc = np.empty_like(h[0]), np.empty_like(hw[0])  # matmat's scratch
    for t in range(xw.shape[0]):
        matmat(hw[t], h[t], Wh, active[t], Ac, Yc)
        lstm_step(
            h[t + 1], c[t + 1], acts[t], cn[t], st[t], xw[t], hw[t], h[t], c[t],
            b, gx, bx, gh, bh, gc, bc, active[t], eps, ln, tmp,
        )  # fmt: skip


@njit(**_jit)
def lstm_step_one(
    h, c, acts, cn, st, xw, hw, x, h0, c0, Wx, Wh, b, gx, bx, gh, bh, gc, bc, active, eps, ln, tmp,
    nt,
):  # fmt: skip
    """``lstm_step`` for a batch of one, with its products xw = x Wx and hw = h0 Wh
    (``matvec_pair``, ``nt`` tasks) in the same call: the inference step of a small model.

    xw, hw: (1, 4H) out; x: (1, I); Wx: (I, 4H); Wh: (H, 4H); the
    rest as ``lstm_step``.
    """
    matvec_pair(xw[0], hw[0], x[0], h0[0], Wx, Wh, nt)
    lstm_step(h, c, acts, cn, st, xw, hw, h0, c0, b, gx, bx, gh, bh, gc, bc, active, eps, ln, tmp)


@njit(**_jit)
def lstm_step_backward(
    dxw,
    dhw,
    dh0,
    dc0,
    dh,
    dc,
    acts,
    cn,
    st,
    xw,
    hw,
    c,
    c0,
    gx,
    gh,
    gc,
    db,
    dgx,
    dbx,
    dgh,
    dbh,
    dgc,
    dbc,
    active,
    ln,
    tmp,
):
    """Backward of ``lstm_step``.

    dxw, dhw: (B, 4H) out, gradients of x_t Wx and h_{t-1} Wh; dh0, dc0: (B, H) out, the part
    of the previous state's gradient that does not go through Wh (all of it for ended rows);
    dh, dc: (B, H) gradients of the new state (dh includes this step's output gradient);
    acts, cn, st: as saved by ``lstm_step``; xw, hw: (B, 4H) the pre-LN products; c, c0: (B, H)
    new and previous cell state; gx, gh: (4H,), gc: (H,) LN gains; db, dgx, dbx, dgh, dbh: (4H,)
    and dgc, dbc: (H,) accumulators; active: (B,) bool; tmp: (2, 4H) scratch.
    """
    B, H = dh.shape
    for r in range(B):
        # one-dimensional views of the row, as in ``lstm_step``
        dhr, dcr, dh0r, dc0r, dxwr, dhwr = dh[r], dc[r], dh0[r], dc0[r], dxw[r], dhw[r]
        if not active[r]:
            for j in range(H):
                dh0r[j] = dhr[j]
                dc0r[j] = dcr[j]
            for j in range(4 * H):
                dxwr[j] = 0
                dhwr[j] = 0
            continue
        a = acts[r]
        ai, af, ag, ao = a[:H], a[H : 2 * H], a[2 * H : 3 * H], a[3 * H :]
        cnr, c0r = cn[r], c0[r]
        da = tmp[0]
        dai, daf, dag, dao = da[:H], da[H : 2 * H], da[2 * H : 3 * H], da[3 * H :]
        dcn = tmp[1, :H]
        dct = tmp[1, H : 2 * H]
        for j in range(H):
            do = dhr[j] * cnr[j]
            dcn[j] = dhr[j] * ao[j] * (1 - cnr[j] * cnr[j])
            dao[j] = do * ao[j] * (1 - ao[j])
        if ln:
            row_ln_backward(dct, dgc, dbc, dcn, c[r], gc, st[r, 4], st[r, 5], True)
        else:
            for j in range(H):
                dct[j] = dcn[j]
        for j in range(H):
            dcj = dcr[j] + dct[j]
            ig = ai[j]
            fg = af[j]
            gg = ag[j]
            dai[j] = dcj * gg * ig * (1 - ig)
            daf[j] = dcj * c0r[j] * fg * (1 - fg)
            dag[j] = dcj * ig * (1 - gg * gg)
            dc0r[j] = dcj * fg
            dh0r[j] = 0
        for j in range(4 * H):
            db[j] += da[j]
        if ln:
            row_ln_backward(dxwr, dgx, dbx, da, xw[r], gx, st[r, 0], st[r, 1], True)
            row_ln_backward(dhwr, dgh, dbh, da, hw[r], gh, st[r, 2], st[r, 3], True)
        else:
            for j in range(4 * H):
                dxwr[j] = da[j]
                dhwr[j] = da[j]


# --- GRU -----------------------------------------------------------------------------------------


@njit(**_jit)
def gru_step(
    h, acts, st, xw, hw, h0, gx, bx, gh, bh, gxn, bxn, ghn, bhn, bxp, bhp, active, eps, ln, tmp
):
    """One GRU step for the batch.

    h: (B, H) out; acts: (B, 4H) out, saved r, z, n and the candidate's recurrent term hn (LN of
    h_{t-1} Wh_n, or it plus bh_n); st: (B, 8) out, LN statistics of xw[:2H], hw[:2H], xw[2H:],
    hw[2H:]; xw, hw: (B, 3H); h0: (B, H); gx, bx, gh, bh: (2H,), gxn, bxn, ghn, bhn: (H,) LN
    parameters (when ``ln``); bxp, bhp: (3H,) plain biases (when not ``ln``); tmp: (2, 3H) scratch.
    """
    B, H = h.shape
    H2 = 2 * H
    t = xw.dtype.type
    for r in range(B):
        hr, h0r = h[r], h0[r]  # one-dimensional views: see ``lstm_step``
        if not active[r]:
            for j in range(H):
                hr[j] = h0r[j]
            continue
        a = acts[r]
        xwr, hwr = xw[r], hw[r]
        u = tmp[0]  # r, z pre-activations, then the candidate's input term
        v = tmp[1]
        if ln:
            st[r, 0], st[r, 1] = row_ln(u[:H2], xwr[:H2], gx, bx, eps, True)
            st[r, 2], st[r, 3] = row_ln(v[:H2], hwr[:H2], gh, bh, eps, True)
            st[r, 4], st[r, 5] = row_ln(u[H2:], xwr[H2:], gxn, bxn, eps, True)
            st[r, 6], st[r, 7] = row_ln(v[H2:], hwr[H2:], ghn, bhn, eps, True)
            for j in range(H2):
                u[j] += v[j]
        else:
            for j in range(3 * H):
                u[j] = xwr[j] + bxp[j]
                v[j] = hwr[j] + bhp[j]
            for j in range(H2):
                u[j] += v[j]
        ur, uz, un, vn = u[:H], u[H:H2], u[H2:], v[H2:]
        ar, az, an, ah = a[:H], a[H:H2], a[H2 : 3 * H], a[3 * H :]
        for j in range(H):
            rg = t(_sigmoid(ur[j]))
            zg = t(_sigmoid(uz[j]))
            hn = vn[j]
            n = t(_tanh(un[j] + rg * hn))
            ar[j] = rg
            az[j] = zg
            an[j] = n
            ah[j] = hn
            hr[j] = zg * h0r[j] + (1 - zg) * n


@njit(**_jit)
def gru_steps(
    h, acts, st, xw, hw, Wh, gx, bx, gh, bh, gxn, bxn, ghn, bhn, bxp, bhp, active, eps, ln, tmp
):
    """``gru_step`` for t = 0..T-1, with hw[t] = h[t] Wh computed in the loop (``matmat``; the
    rows of ended sequences, which the step does not read, left unwritten).

    h: (T + 1, B, H), h[0] the initial state, h[t + 1] out; acts: (T, B, 4H), st: (T, B, 8) out;
    xw: (T, B, 3H); hw: (T, B, 3H) out; Wh: (H, 3H); active: (T, B); the rest as ``gru_step``.
    """
    Ac, Yc = np.empty_like(h[0]), np.empty_like(hw[0])  # matmat's scratch
    for t in range(xw.shape[0]):
        matmat(hw[t], h[t], Wh, active[t], Ac, Yc)
        gru_step(
            h[t + 1], acts[t], st[t], xw[t], hw[t], h[t], gx, bx, gh, bh, gxn, bxn, ghn, bhn,
            bxp, bhp, active[t], eps, ln, tmp,
        )  # fmt: skip


@njit(**_jit)
def gru_step_one(
    h, acts, st, xw, hw, x, h0, Wx, Wh, gx, bx, gh, bh, gxn, bxn, ghn, bhn, bxp, bhp, active, eps,
    ln, tmp, nt,
):  # fmt: skip
    """``gru_step`` for a batch of one, with its products (``matvec_pair``, ``nt`` tasks) in the
    same call. xw, hw: (1, 3H) out; x: (1, I); Wx: (I, 3H); Wh: (H, 3H); the rest as
    ``gru_step``.
    """
    matvec_pair(xw[0], hw[0], x[0], h0[0], Wx, Wh, nt)
    gru_step(
        h, acts, st, xw, hw, h0, gx, bx, gh, bh, gxn, bxn, ghn, bhn, bxp, bhp, active, eps, ln, tmp
    )


@njit(**_jit)
def gru_step_backward(
    dxw,
    dhw,
    dh0,
    dh,
    acts,
    st,
    xw,
    hw,
    h0,
    gx,
    gh,
    gxn,
    ghn,
    dgx,
    dbx,
    dgh,
    dbh,
    dgxn,
    dbxn,
    dghn,
    dbhn,
    dbxp,
    dbhp,
    active,
    ln,
    tmp,
):
    """Backward of ``gru_step``.

    dxw, dhw: (B, 3H) out; dh0: (B, H) out, the previous state's gradient not through Wh;
    dh: (B, H) gradient of the new state; acts, st: as saved; xw, hw: (B, 3H); h0: (B, H);
    LN gains and their accumulators as in ``gru_step``; dbxp, dbhp: (3H,) plain-bias
    accumulators; tmp: (2, 3H) scratch.
    """
    B, H = dh.shape
    H2 = 2 * H
    for r in range(B):
        # one-dimensional views of the row, as in ``lstm_step``
        dhr, dh0r, h0r, dxwr, dhwr = dh[r], dh0[r], h0[r], dxw[r], dhw[r]
        if not active[r]:
            for j in range(H):
                dh0r[j] = dhr[j]
            for j in range(3 * H):
                dxwr[j] = 0
                dhwr[j] = 0
            continue
        a = acts[r]
        ar, az, an, ah = a[:H], a[H:H2], a[H2 : 3 * H], a[3 * H :]
        du = tmp[0]  # gradients of the input-side pre-activations [r, z, n]
        dv = tmp[1]  # and of the recurrent side
        dur, duz, dun, dvr, dvz, dvn = du[:H], du[H:H2], du[H2:], dv[:H], dv[H:H2], dv[H2:]
        for j in range(H):
            rg = ar[j]
            zg = az[j]
            n = an[j]
            hn = ah[j]
            g = dhr[j]
            dh0r[j] = g * zg
            dn = g * (1 - zg) * (1 - n * n)
            dr = dn * hn * rg * (1 - rg)
            dz = g * (h0r[j] - n) * zg * (1 - zg)
            dur[j] = dr
            duz[j] = dz
            dun[j] = dn
            dvr[j] = dr
            dvz[j] = dz
            dvn[j] = dn * rg
        if ln:
            row_ln_backward(
                dxw[r, :H2], dgx, dbx, du[:H2], xw[r, :H2], gx, st[r, 0], st[r, 1], True
            )
            row_ln_backward(
                dhw[r, :H2], dgh, dbh, dv[:H2], hw[r, :H2], gh, st[r, 2], st[r, 3], True
            )
            row_ln_backward(
                dxw[r, H2:], dgxn, dbxn, du[H2:], xw[r, H2:], gxn, st[r, 4], st[r, 5], True
            )
            row_ln_backward(
                dhw[r, H2:], dghn, dbhn, dv[H2:], hw[r, H2:], ghn, st[r, 6], st[r, 7], True
            )
        else:
            for j in range(3 * H):
                dxwr[j] = du[j]
                dhwr[j] = dv[j]
                dbxp[j] += du[j]
                dbhp[j] += dv[j]


# --- RNN -----------------------------------------------------------------------------------------


@njit(**_jit)
def rnn_step(h, st, xw, hw, h0, g, b, active, eps, ln):
    """One tanh-RNN step. h: (B, H) out; st: (B, 2) out, LN statistics of a = xw + hw (which is
    written into xw); xw, hw: (B, H); h0: (B, H); g, b: (H,) LN gain/shift or (b) plain bias."""
    B, H = h.shape
    for r in range(B):
        hr, xwr, hwr, h0r = h[r], xw[r], hw[r], h0[r]  # one-dimensional views: see ``lstm_step``
        if not active[r]:
            for j in range(H):
                hr[j] = h0r[j]
            continue
        for j in range(H):
            xwr[j] += hwr[j]
        if ln:
            st[r, 0], st[r, 1] = row_ln(hr, xwr, g, b, eps, True)
        else:
            for j in range(H):
                hr[j] = xwr[j] + b[j]
        for j in range(H):
            hr[j] = _tanh(hr[j])


@njit(**_jit)
def rnn_steps(h, st, xw, hw, Wh, g, b, active, eps, ln):
    """``rnn_step`` for t = 0..T-1, with hw[t] = h[t] Wh computed in the loop (``matmat``; the
    rows of ended sequences, which the step does not read, left unwritten).

    h: (T + 1, B, H), h[0] the initial state, h[t + 1] out; st: (T, B, 2) out; xw: (T, B, H)
    (each xw[t] becomes xw[t] + hw[t], as in ``rnn_step``); hw: (T, B, H) out; Wh: (H, H);
    active: (T, B); the rest as ``rnn_step``.
    """
    Ac, Yc = np.empty_like(h[0]), np.empty_like(hw[0])  # matmat's scratch
    for t in range(xw.shape[0]):
        matmat(hw[t], h[t], Wh, active[t], Ac, Yc)
        rnn_step(h[t + 1], st[t], xw[t], hw[t], h[t], g, b, active[t], eps, ln)


@njit(**_jit)
def rnn_step_one(h, st, xw, hw, x, h0, Wx, Wh, g, b, active, eps, ln, nt):
    """``rnn_step`` for a batch of one, with its products (``matvec_pair``, ``nt`` tasks) in the
    same call. xw, hw: (1, H) out; x: (1, I); Wx: (I, H); Wh: (H, H); the rest as ``rnn_step``.
    """
    matvec_pair(xw[0], hw[0], x[0], h0[0], Wx, Wh, nt)
    rnn_step(h, st, xw, hw, h0, g, b, active, eps, ln)


@njit(**_jit)
def rnn_step_backward(da, dh0, dh, h, st, a, g, dg, db, active, ln, tmp):
    """Backward of ``rnn_step``. da: (B, H) out, gradient of a = x_t Wx + h_{t-1} Wh; dh0: (B, H)
    out, the previous state's gradient not through Wh; dh: (B, H); h: (B, H) the step's output;
    st, a: as saved; g: (H,) LN gain; dg, db: (H,) accumulators; tmp: (H,) scratch."""
    B, H = dh.shape
    for r in range(B):
        dar, dh0r, dhr, hr = da[r], dh0[r], dh[r], h[r]  # one-dimensional views: ``lstm_step``
        if not active[r]:
            for j in range(H):
                dh0r[j] = dhr[j]
                dar[j] = 0
            continue
        for j in range(H):
            tmp[j] = dhr[j] * (1 - hr[j] * hr[j])
            dh0r[j] = 0
        if ln:
            row_ln_backward(dar, dg, db, tmp, a[r], g, st[r, 0], st[r, 1], True)
        else:
            for j in range(H):
                dar[j] = tmp[j]
                db[j] += tmp[j]
