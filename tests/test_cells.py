"""RNN / LSTM / GRU cells, with and without layer norm: the float64 reference, finite
differences, step-by-step vs whole sequence, chunks, variable lengths, and PyTorch's cells."""

import numpy as np
import pytest
from _helpers import fd_check

import lnnumba as L
from lnnumba import reference as R
from lnnumba.nn import cells as NC

CELLS = [("lstm", L.LSTM), ("gru", L.GRU), ("rnn", L.RNN)]


@pytest.fixture
def split_steps(monkeypatch):
    """Batch-of-one steps split their products whatever the weights' size, however recently
    a BLAS product ran and whatever Numba's threading layer; returns a list that counts the
    split steps taken."""
    from lnnumba.cpu import norm as N

    monkeypatch.setattr(NC, "STEP_SPLIT_MIN_BYTES", 0)
    monkeypatch.setattr(N, "BLAS_SPIN_S", -1.0)
    monkeypatch.setattr(N, "_slow_launch", False)
    calls = []
    for cls in (L.LSTM, L.GRU, L.RNN):
        orig = cls._step_one

        def counted(self, *a, _orig=orig):
            calls.append(type(self).__name__)
            return _orig(self, *a)

        monkeypatch.setattr(cls, "_step_one", counted)
    return calls


def make_cell(cls, ln, dtype=np.float64, I=3, H=4, seed=0):
    """A cell with every parameter randomized (LN gains away from 1, biases away from 0)."""
    cell = cls(I, H, layer_norm=ln, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for k, v in cell.params.items():
        if k not in ("Wx", "Wh"):
            v[...] = rng.standard_normal(v.shape) * 0.5 + (1.0 if k.endswith("_g") else 0.0)
    return cell


def rand_state(cell, B, rng, dtype=np.float64):
    return tuple(
        rng.standard_normal((B, cell.hidden_size)).astype(dtype) for _ in range(cell.n_state)
    )


@pytest.mark.parametrize("kind,cls", CELLS)
@pytest.mark.parametrize("ln", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_matches_reference(kind, cls, ln, dtype, rng):
    cell = make_cell(cls, ln, dtype)
    x = rng.standard_normal((5, 3, 3)).astype(dtype)
    st = rand_state(cell, 3, rng, dtype)
    lengths = np.array([5, 2, 0])
    hs, last, _ = cell.forward(x, st, lengths)
    hr, lr = R.cell_forward(kind, cell.params, x, st, lengths, ln)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    assert hs.dtype == dtype and hs.shape == (5, 3, 4)
    np.testing.assert_allclose(hs, hr, atol=tol, rtol=tol)
    for a, b in zip(last, lr):
        np.testing.assert_allclose(a, b, atol=tol, rtol=tol)
    np.testing.assert_array_equal(hs[2:, 1], 0)  # past its length: zero output
    np.testing.assert_array_equal(last[0][2], st[0][2])  # length 0: the initial state


@pytest.mark.parametrize("kind,cls", CELLS)
@pytest.mark.parametrize("ln", [True, False])
def test_backward_matches_finite_differences(kind, cls, ln, rng):
    cell = make_cell(cls, ln)
    T, B = 4, 3
    x = rng.standard_normal((T, B, 3))
    st = rand_state(cell, B, rng)
    lengths = np.array([4, 2, 3])
    G = rng.standard_normal((T, B, 4))
    Gl = rand_state(cell, B, rng)

    def loss():
        hs, last, _ = cell.forward(x, st, lengths)
        return np.sum(hs * G) + sum(np.sum(a * g) for a, g in zip(last, Gl))

    _, _, cache = cell.forward(x, st, lengths)
    dx, grads, dstate = cell.backward(G, cache, Gl)
    assert set(grads) == set(cell.params)
    targets = [(x, dx)] + [(cell.params[k], grads[k]) for k in cell.params]
    targets += list(zip(st, dstate))
    fd_check(loss, targets)


@pytest.mark.parametrize("kind,cls", CELLS)
@pytest.mark.parametrize("ln", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_steps_equal_one_forward(kind, cls, ln, dtype, rng):
    cell = make_cell(cls, ln, dtype)
    x = rng.standard_normal((6, 2, 3)).astype(dtype)
    st = rand_state(cell, 2, rng, dtype)
    hs, last, _ = cell.forward(x, st)
    s = st
    for t in range(6):
        s = cell.step(x[t], s)
        np.testing.assert_allclose(s[0], hs[t], rtol=1e-5, atol=1e-6)
    for a, b in zip(s, last):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind,cls", CELLS)
@pytest.mark.parametrize("ln", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B", [1, 3])
def test_small_batch_loop_in_one_kernel_call(kind, cls, ln, dtype, B, rng, monkeypatch):
    # a small batch with a small Wh runs its loop over time inside one kernel call, recurrent
    # product included: forward and the backward from its cache must agree with the
    # BLAS-per-step loop (forced by a limit of 0), with the reference and with step
    cell = make_cell(cls, ln, dtype, I=5, H=6)
    T = 7
    x = rng.standard_normal((T, B, 5)).astype(dtype)
    st = rand_state(cell, B, rng, dtype)
    G = rng.standard_normal((T, B, 6)).astype(dtype)
    lengths = None if B == 1 else np.array([7, 3, 5])  # ended rows too
    lens = np.full(B, T) if lengths is None else lengths
    runs = []
    for limit in (NC.KERNEL_LOOP_MAX_BYTES, 0):
        monkeypatch.setattr(NC, "KERNEL_LOOP_MAX_BYTES", limit)
        assert cell._kernel_loop(B, cell.params["Wh"]) == (limit > 0)
        hs, last, cache = cell.forward(x, st, lengths)
        dx, grads, dst = cell.backward(G, cache)
        runs.append([hs, *last, dx, *grads.values(), *dst])
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for a, b in zip(*runs):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    hs = runs[0][0]
    hr, _ = R.cell_forward(kind, cell.params, x, st, lens, ln)
    np.testing.assert_allclose(hs, hr, rtol=tol, atol=tol)
    if lengths is None:
        s = st
        for t in range(T):
            s = cell.step(x[t], s)
            np.testing.assert_allclose(s[0], hs[t], rtol=tol, atol=tol)


def test_kernel_loop_batch_and_weight_limits(monkeypatch):
    """The loop runs in one kernel call up to KERNEL_LOOP_MAX_BYTES of Wh and
    KERNEL_LOOP_MAX_WORK_BYTES of batch rows times Wh's bytes."""
    Wh = np.zeros((256, 1024), np.float32)  # 1 MB
    assert NC._Cell._kernel_loop(1, Wh) and NC._Cell._kernel_loop(3, Wh)
    assert not NC._Cell._kernel_loop(4, Wh)
    assert NC._Cell._kernel_loop(12, Wh[:64]) and not NC._Cell._kernel_loop(13, Wh[:64])
    assert not NC._Cell._kernel_loop(1, np.zeros((257, 1024), np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B,K,G", [(1, 16, 8), (3, 13, 5), (5, 8, 33), (2, 3, 4), (4, 1, 1)])
def test_matmat_rows_are_matvec_rows(B, K, G, dtype, rng):
    """Each row of the small-batch product has the arithmetic (the bits) of the one-row
    product, whatever the batch, and matches NumPy's."""
    from lnnumba.cpu import cells as KC

    A = rng.standard_normal((B, K)).astype(dtype)
    W = rng.standard_normal((K, G)).astype(dtype)
    Y = np.full((B, G), np.nan, dtype)
    KC.matmat(Y, A, W, np.ones(B, bool), np.empty_like(A), np.empty_like(Y))
    y = np.empty(G, dtype)
    for r in range(B):
        KC.matvec_rows(y, A[r], W, 0, K)
        np.testing.assert_array_equal(Y[r], y)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(Y, A.astype(np.float64) @ W, rtol=tol, atol=tol)
    # rows of ended sequences are skipped, not written; the others keep their bits
    active = np.arange(B) % 2 == 1
    Z = np.full((B, G), np.nan, dtype)
    KC.matmat(Z, A, W, active, np.empty_like(A), np.empty_like(Y))
    np.testing.assert_array_equal(Z[active], Y[active])
    assert np.isnan(Z[~active]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("I,H,G", [(5, 5, 8), (3, 9, 12), (9, 2, 6), (1, 1, 3), (16, 8, 33)])
@pytest.mark.parametrize("nt", [1, 2, 3, 5])
def test_matvec_pair(I, H, G, nt, dtype, rng):
    # the rows of [Wx; Wh] split into nt blocks, in every way: a block inside one matrix, one
    # spanning both, a matrix held whole by one task or summed from several
    from lnnumba.cpu.cells import matvec_pair

    nt = min(nt, I + H)
    x, h = rng.standard_normal(I).astype(dtype), rng.standard_normal(H).astype(dtype)
    Wx, Wh = rng.standard_normal((I, G)).astype(dtype), rng.standard_normal((H, G)).astype(dtype)
    xw, hw = np.full(G, np.nan, dtype), np.full(G, np.nan, dtype)
    matvec_pair(xw, hw, x, h, Wx, Wh, nt)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(xw, x.astype(np.float64) @ Wx, rtol=tol, atol=tol)
    np.testing.assert_allclose(hw, h.astype(np.float64) @ Wh, rtol=tol, atol=tol)


@pytest.mark.parametrize("kind,cls", CELLS)
@pytest.mark.parametrize("ln", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_of_one_step_with_split_products(kind, cls, ln, dtype, rng, monkeypatch, split_steps):
    # a batch-of-one step with its products split over threads (forced here on small weights,
    # with one to five tasks) gives the BLAS step's result, and the reference's
    cell = make_cell(cls, ln, dtype, I=5, H=6)
    x = rng.standard_normal((3, 1, 5)).astype(dtype)
    st = rand_state(cell, 1, rng, dtype)
    hs_ref, _ = R.cell_forward(kind, cell.params, x, st, np.array([3]), ln)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    Wx, Wh = cell.params["Wx"], cell.params["Wh"]
    monkeypatch.setattr(NC, "STEP_SPLIT_MIN_BYTES", 10**9)  # BLAS
    assert not cell._split_products(Wx, Wh)
    want = [cell.step(x[0], st)]
    for t in (1, 2):
        want.append(cell.step(x[t], want[-1]))
    assert split_steps == []
    monkeypatch.setattr(NC, "STEP_SPLIT_MIN_BYTES", 0)
    assert cell._split_products(Wx, Wh)
    for tasks in (1, 2, 3, 5):
        monkeypatch.setattr(NC, "_MAX_THREADS", tasks)
        monkeypatch.setattr(NC, "STEP_TASK_MIN_BYTES", 1)
        s = st
        for t in range(3):
            s = cell.step(x[t], s)
            np.testing.assert_allclose(s[0], hs_ref[t], rtol=tol, atol=tol)
            for a, b in zip(s, want[t]):
                np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    for tasks, task_bytes in ((2, 10**9), (10**6, 1)):  # rounded down to 0 tasks; over I + H
        monkeypatch.setattr(NC, "_MAX_THREADS", tasks)
        monkeypatch.setattr(NC, "STEP_TASK_MIN_BYTES", task_bytes)
        s = cell.step(x[0], st)
        np.testing.assert_allclose(s[0], hs_ref[0], rtol=tol, atol=tol)
    assert len(split_steps) == 4 * 3 + 2


def test_no_split_step_right_after_a_threaded_blas_product(rng, monkeypatch, split_steps):
    # for BLAS_SPIN_S after a product big enough for BLAS threads (a forward's input
    # projection), a batch-of-one step takes the BLAS route, then splits again
    from lnnumba.cpu import norm as N

    now = [1000.0]
    monkeypatch.setattr(N, "_clock", lambda: now[0])
    monkeypatch.setattr(N, "BLAS_SPIN_S", 0.1)
    cell = L.LSTM(64, 64, seed=0)
    x = rng.standard_normal((8, 1, 64)).astype(np.float32)
    _, last, _ = cell.forward(x)  # (8, 64) @ (64, 256): 131072 flops, one BLAS thread
    assert not N.blas_recent()
    x = rng.standard_normal((16, 1, 64)).astype(np.float32)
    _, last, _ = cell.forward(x)  # (16, 64) @ (64, 256): threaded
    assert N.blas_recent()
    s = cell.step(x[0, :], last)  # the BLAS route, which as a batch of one notes nothing
    assert split_steps == []
    now[0] += 0.05
    s = cell.step(x[1], s)
    assert split_steps == []
    now[0] += 0.06
    s = cell.step(x[2], s)
    assert split_steps == ["LSTM"]
    N.note_blas(1, 10**6, 10**6)  # one row: NumPy's gemv, measured not to wake BLAS threads
    assert not N.blas_recent()


def test_no_split_step_under_a_slow_launch_threading_layer(rng, monkeypatch, split_steps):
    # under workqueue a parallel launch costs more than the split saves: the step calls BLAS
    from lnnumba.cpu import norm as N

    cell = L.LSTM(256, 256, seed=0)
    x = rng.standard_normal((1, 256)).astype(np.float32)
    split = cell.step(x)
    assert split_steps == ["LSTM"]
    monkeypatch.setattr(N, "_slow_launch", True)
    blas = cell.step(x)
    assert split_steps == ["LSTM"]
    for a, b in zip(split, blas):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_split_step_tasks_chosen_by_weight_size(monkeypatch):
    # on 2 threads: LSTM I=H=32 float32 (64 KB of weights) calls BLAS; I=H=256 (2 MB) and
    # I=H=320 (3.1 MB) split the products one task a thread; from 2 MB a thread (I=H=384,
    # 4.5 MB; I=H=1024, 32 MB) two tasks a thread; never more tasks than rows (I + H)
    monkeypatch.setattr(NC, "_MAX_THREADS", 2)
    for H, tasks in ((32, 0), (256, 2), (320, 2), (384, 4), (1024, 4)):
        Wx = np.zeros((H, 4 * H), np.float32)
        assert NC._Cell._split_tasks(Wx, Wx) == tasks, H
    monkeypatch.setattr(NC, "STEP_SPLIT_MIN_BYTES", 0)
    monkeypatch.setattr(NC, "STEP_TASK_MIN_BYTES", 1)
    monkeypatch.setattr(NC, "_MAX_THREADS", 16)
    Wx = np.zeros((2, 4), np.float32)
    assert NC._Cell._split_tasks(Wx, Wx[:1]) == 3


def test_step_tasks_follow_the_weights_and_settings(monkeypatch):
    # the tasks a cell keeps for its step are those of its current weights and settings
    monkeypatch.setattr(NC, "_MAX_THREADS", 2)
    cell = L.LSTM(256, 256, seed=0)
    p = cell.params
    assert cell._step_tasks(p["Wx"], p["Wh"]) == 2
    p["Wx"] = np.zeros((1024, 1024), np.float32)  # replaced (LSTM I=1024, H=256)
    p["Wh"] = np.zeros((256, 1024), np.float32)
    assert cell._step_tasks(p["Wx"], p["Wh"]) == 4
    monkeypatch.setattr(NC, "STEP_TWO_TASKS_MIN_SHARE", 10**9)
    assert cell._step_tasks(p["Wx"], p["Wh"]) == 2
    monkeypatch.setattr(NC, "STEP_SPLIT_MIN_BYTES", 10**9)
    assert cell._step_tasks(p["Wx"], p["Wh"]) == 0


@pytest.mark.parametrize("kind,cls", CELLS)
@pytest.mark.parametrize("ln", [True, False])
def test_missing_parameter(kind, cls, ln, rng):
    # a parameter removed from params is named in a ValueError, by step, forward and backward
    for name in sorted(k for k in make_cell(cls, ln).params if k not in ("Wx", "Wh")):
        cell = make_cell(cls, ln)
        x = rng.standard_normal((2, 1, cell.input_size))
        _, _, cache = cell.forward(x)
        del cell.params[name]
        with pytest.raises(ValueError, match=f"params has no '{name}'"):
            cell.step(x[0])
        with pytest.raises(ValueError, match=f"params has no '{name}'"):
            cell.forward(x)
        with pytest.raises(ValueError, match=f"params has no '{name}'"):
            cell.backward(np.ones((2, 1, cell.hidden_size)), cache)


@pytest.mark.parametrize("kind,cls", CELLS)
@pytest.mark.parametrize("ln", [True, False])
def test_two_chunks_equal_one_run(kind, cls, ln, rng):
    cell = make_cell(cls, ln)
    x = rng.standard_normal((6, 2, 3))
    st = rand_state(cell, 2, rng)
    G = rng.standard_normal((6, 2, 4))
    hs, last, cache = cell.forward(x, st)
    dx, grads, dst = cell.backward(G, cache)
    hs1, mid, c1 = cell.forward(x[:4], st)
    hs2, last2, c2 = cell.forward(x[4:], mid)
    np.testing.assert_allclose(np.concatenate([hs1, hs2]), hs, rtol=1e-12, atol=1e-12)
    dx2, g2, dmid = cell.backward(G[4:], c2)
    dx1, g1, dst1 = cell.backward(G[:4], c1, dmid)
    np.testing.assert_allclose(np.concatenate([dx1, dx2]), dx, rtol=1e-10, atol=1e-12)
    for k in grads:
        np.testing.assert_allclose(g1[k] + g2[k], grads[k], rtol=1e-10, atol=1e-12)
    for a, b in zip(dst1, dst):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind,cls", CELLS)
@pytest.mark.parametrize("ln", [True, False])
def test_lengths_equal_each_sequence_alone(kind, cls, ln, rng):
    cell = make_cell(cls, ln)
    T, B = 5, 3
    x = rng.standard_normal((T, B, 3))
    st = rand_state(cell, B, rng)
    lengths = np.array([5, 1, 3])
    G = rng.standard_normal((T, B, 4))
    Gl = rand_state(cell, B, rng)
    hs, last, cache = cell.forward(x, st, lengths)
    dx, grads, dst = cell.backward(G, cache, Gl)
    total = {k: np.zeros_like(v) for k, v in grads.items()}
    for b in range(B):
        n = lengths[b]
        sb = tuple(s[b : b + 1] for s in st)
        hb, lb, cb = cell.forward(x[:n, b : b + 1], sb)
        np.testing.assert_allclose(hs[:n, b], hb[:, 0], rtol=1e-12, atol=1e-12)
        for a, c in zip(last, lb):
            np.testing.assert_allclose(a[b], c[0], rtol=1e-12, atol=1e-12)
        dxb, gb, dsb = cell.backward(G[:n, b : b + 1], cb, tuple(g[b : b + 1] for g in Gl))
        np.testing.assert_allclose(dx[:n, b], dxb[:, 0], rtol=1e-10, atol=1e-12)
        np.testing.assert_array_equal(dx[n:, b], 0)
        for a, c in zip(dst, dsb):
            np.testing.assert_allclose(a[b], c[0], rtol=1e-10, atol=1e-12)
        for k in total:
            total[k] += gb[k]
    for k in grads:
        np.testing.assert_allclose(grads[k], total[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind,cls", CELLS)
@pytest.mark.parametrize("ln", [True, False])
@pytest.mark.parametrize("B", [1, 3])  # 1: the loop over time in one kernel call
def test_work_buffers_are_written_before_they_are_read(kind, cls, ln, B, rng, monkeypatch):
    """``forward`` / ``backward`` take their large buffers uninitialized, from the pool of freed
    ones (``_Cell._work``). Filled with NaN, every buffer of every size gives the same bits as
    before: each is written whole, ended sequences' rows included, before it is read."""
    cell = make_cell(cls, ln)
    T = 5
    x = rng.standard_normal((T, B, 3))
    st = rand_state(cell, B, rng)
    lengths = np.array([5, 2, 4][:B]) if B > 1 else None
    G = rng.standard_normal((T, B, 4))
    Gl = rand_state(cell, B, rng)

    def run():
        hs, last, cache = cell.forward(x, st, lengths)
        dx, grads, dst = cell.backward(G, cache, Gl)
        return [hs, *last, dx, *dst, *(grads[k] for k in sorted(grads))]

    want = run()
    assert all(np.isfinite(w).all() for w in want)  # (NaN compares equal below)
    taken = []

    def nan_work(self, shape):
        taken.append(shape)
        return np.full(shape, np.nan, self.dtype)

    monkeypatch.setattr(NC._Cell, "_work", nan_work)
    got = run()
    assert taken  # the buffers did come from _work
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("kind,cls", CELLS)
@pytest.mark.parametrize("ln", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("kernel_loop", [True, False])
def test_predict_equals_forward(kind, cls, ln, dtype, B, kernel_loop, rng, monkeypatch):
    """``predict`` (no cache, time in chunks) gives ``forward``'s outputs and last state, with
    steps one per chunk, a few per chunk and all in one, in the kernel loop and the BLAS loop,
    with and without ended sequences."""
    if not kernel_loop:
        monkeypatch.setattr(NC, "KERNEL_LOOP_MAX_WORK_BYTES", 0)
    cell = make_cell(cls, ln, dtype)
    T = 7
    x = rng.standard_normal((T, B, 3)).astype(dtype)
    st = rand_state(cell, B, rng, dtype)
    GH = cell.G * cell.hidden_size * np.dtype(dtype).itemsize
    tol = 1e-12 if dtype == np.float64 else 2e-6
    for lengths in (None, np.array([7, 3, 0][:B])):
        hs, last, _ = cell.forward(x, st, lengths)
        hr, lr = R.cell_forward(kind, cell.params, x, st, lengths, ln)
        for steps in (1, 3, T):
            monkeypatch.setattr(NC, "PREDICT_CHUNK_BYTES", steps * B * GH)
            hp, lp = cell.predict(x, st, lengths)
            assert hp.shape == hs.shape and hp.dtype == dtype and len(lp) == len(last)
            np.testing.assert_allclose(hp, hs, rtol=tol, atol=tol)
            np.testing.assert_allclose(hp, hr, rtol=10 * tol, atol=10 * tol)
            for a, b in zip(lp, last):
                assert a.shape == b.shape and a.dtype == dtype
                np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
            for b, n in enumerate(lengths if lengths is not None else ()):
                np.testing.assert_array_equal(hp[n:, b], 0)  # past its length: zero output
    # nothing before the first step or after the last
    hp, lp = cell.predict(x[:0], st)
    assert hp.shape == (0, B, 4) and all(np.array_equal(a, b) for a, b in zip(lp, st))


@pytest.mark.parametrize("kind,cls", CELLS)
@pytest.mark.parametrize("B", [1, 3])
def test_predict_buffers_are_written_before_they_are_read(kind, cls, B, rng, monkeypatch):
    """``predict``'s scratch (from ``_Cell._work``) filled with NaN gives the same bits."""
    cell = make_cell(cls, True)
    x = rng.standard_normal((6, B, 3))
    st = rand_state(cell, B, rng)
    lengths = np.array([6, 2, 5][:B])
    monkeypatch.setattr(NC, "PREDICT_CHUNK_BYTES", 2 * B * cell.G * 4 * 8)  # 2 steps a chunk
    want = cell.predict(x, st, lengths)
    taken = []

    def nan_work(self, shape):
        taken.append(shape)
        return np.full(shape, np.nan, self.dtype)

    monkeypatch.setattr(NC._Cell, "_work", nan_work)
    got = cell.predict(x, st, lengths)
    assert taken
    np.testing.assert_array_equal(got[0], want[0])
    for g, w in zip(got[1], want[1]):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("kind,cls", CELLS)
@pytest.mark.parametrize("ln", [True, False])
@pytest.mark.parametrize("kernel_loop", [True, False])
def test_lengths_sorted_longest_first_equal_any_order(kind, cls, ln, kernel_loop, rng, monkeypatch):
    """With the sequences sorted longest first, each step's products take only the rows still
    running (``prefix_rows``); the results are those of the same batch in another order."""
    if not kernel_loop:
        monkeypatch.setattr(NC, "KERNEL_LOOP_MAX_WORK_BYTES", 0)
    cell = make_cell(cls, ln)
    T, B = 6, 5
    x = rng.standard_normal((T, B, 3))
    st = rand_state(cell, B, rng)
    lengths = np.array([6, 4, 4, 1, 0])
    G = rng.standard_normal((T, B, 4))
    Gl = rand_state(cell, B, rng)
    assert NC.prefix_rows(cell._check_lengths(lengths, T, B)).tolist() == [4, 3, 3, 3, 1, 1]
    perm = np.array([3, 0, 4, 2, 1])  # an order that is not longest first
    assert NC.prefix_rows(cell._check_lengths(lengths[perm], T, B)) is None

    def run(p):
        sp = tuple(s[p] for s in st)
        hs, last, cache = cell.forward(x[:, p], sp, lengths[p])
        hp, lp = cell.predict(x[:, p], sp, lengths[p])
        dx, grads, dst = cell.backward(G[:, p], cache, tuple(g[p] for g in Gl))
        inv = np.argsort(p)
        return [hs[:, inv], hp[:, inv], dx[:, inv]] + [a[inv] for a in (*last, *lp, *dst)], grads

    a, ga = run(np.arange(B))
    b, gb = run(perm)
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)
    for k in ga:
        np.testing.assert_allclose(ga[k], gb[k], rtol=1e-12, atol=1e-12)


def test_parameters_and_init():
    c = L.LSTM(3, 5, seed=0)
    assert {k: v.shape for k, v in c.params.items()} == {
        "Wx": (3, 20),
        "Wh": (5, 20),
        "b": (20,),
        "ln_x_g": (20,),
        "ln_x_b": (20,),
        "ln_h_g": (20,),
        "ln_h_b": (20,),
        "ln_c_g": (5,),
        "ln_c_b": (5,),
    }
    assert all(v.dtype == np.float32 for v in c.params.values())
    assert np.abs(c.params["Wx"]).max() <= 1 / np.sqrt(5)
    np.testing.assert_array_equal(c.params["ln_x_g"], 1)
    np.testing.assert_array_equal(L.LSTM(3, 5, seed=0).params["Wh"], c.params["Wh"])  # seeded
    assert L.LSTM(3, 5, forget_bias=1.0).params["b"][5:10].tolist() == [1.0] * 5
    assert set(L.LSTM(3, 5, layer_norm=False).params) == {"Wx", "Wh", "b"}
    assert set(L.GRU(3, 5, layer_norm=False).params) == {"Wx", "Wh", "bx", "bh"}
    assert set(L.GRU(3, 5).params) == {
        "Wx",
        "Wh",
        "ln_x_g",
        "ln_x_b",
        "ln_h_g",
        "ln_h_b",
        "ln_xn_g",
        "ln_xn_b",
        "ln_hn_g",
        "ln_hn_b",
    }
    assert L.GRU(3, 5).params["ln_x_g"].shape == (10,)
    assert set(L.RNN(3, 5).params) == {"Wx", "Wh", "ln_g", "ln_b"}
    assert set(L.RNN(3, 5, layer_norm=False).params) == {"Wx", "Wh", "b"}


def test_params_updated_in_place_are_used(rng):
    cell = L.LSTM(3, 4, dtype=np.float64, seed=0)
    x = rng.standard_normal((2, 1, 3))
    before = cell.forward(x)[0]
    cell.params["Wx"] *= 2.0
    after = cell.forward(x)[0]
    np.testing.assert_allclose(after, R.cell_forward("lstm", cell.params, x)[0], atol=1e-12)
    assert not np.allclose(before, after)


def test_inputs_are_not_modified(rng, split_steps):
    cell = make_cell(L.LSTM, True)
    x = rng.standard_normal((3, 2, 3))
    st = rand_state(cell, 2, rng)
    copies = [x.copy()] + [s.copy() for s in st]
    hs, last, cache = cell.forward(x, st)
    G = rng.standard_normal(hs.shape)
    Gc = G.copy()
    cell.backward(G, cache, st)
    cell.predict(x, st, np.array([3, 1]))
    cell.step(x[0], st)
    cell.step(x[0, :1], tuple(s[:1] for s in st))
    assert split_steps == ["LSTM"]  # the batch-of-one step split its products
    for a, c in zip([x, *st], copies):
        np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(G, Gc)


def test_bad_input():
    c = L.LSTM(3, 4)
    x = np.zeros((2, 1, 3), np.float32)
    with pytest.raises(ValueError, match="expected 3"):
        c.forward(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="input_size=3"):
        c.forward(np.zeros((2, 1, 5), np.float32))
    with pytest.raises(TypeError, match="dtype float64, expected float32"):
        c.forward(np.zeros((2, 1, 3)))
    with pytest.raises(ValueError, match="state has 1 arrays, expected 2"):
        c.forward(x, (np.zeros((1, 4), np.float32),))
    with pytest.raises(ValueError, match=r"state\[1\] has shape"):
        c.forward(x, (np.zeros((1, 4), np.float32), np.zeros((2, 4), np.float32)))
    with pytest.raises(TypeError, match="must be a tuple"):
        c.forward(x, np.zeros((1, 4), np.float32))
    with pytest.raises(TypeError, match=r"state\[0\] has dtype"):
        c.forward(x, (np.zeros((1, 4)), np.zeros((1, 4))))
    with pytest.raises(ValueError, match="lengths must lie in"):
        c.forward(x, lengths=np.array([3]))
    with pytest.raises(TypeError, match="lengths must be integers"):
        c.forward(x, lengths=np.array([1.0]))
    with pytest.raises(ValueError, match="lengths has shape"):
        c.forward(x, lengths=np.array([1, 1]))
    with pytest.raises(ValueError, match=r"LSTM\.predict: x has 2 dimensions, expected 3"):
        c.predict(np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match=r"LSTM\.predict: x has dtype float64"):
        c.predict(np.zeros((2, 1, 3)))
    with pytest.raises(ValueError, match=r"LSTM\.predict: state\[1\] has shape"):
        c.predict(x, (np.zeros((1, 4), np.float32), np.zeros((2, 4), np.float32)))
    with pytest.raises(ValueError, match=r"LSTM\.predict: lengths must lie in"):
        c.predict(x, lengths=np.array([3]))
    _, _, cache = L.LSTM(3, 4).forward(x)
    with pytest.raises(ValueError, match="cache does not come from this cell"):
        c.backward(np.zeros((2, 1, 4), np.float32), cache)
    _, _, cache = c.forward(x)
    with pytest.raises(ValueError, match="dhs has shape"):
        c.backward(np.zeros((2, 1, 5), np.float32), cache)
    with pytest.raises(ValueError, match="dlast has 1 arrays"):
        c.backward(np.zeros((2, 1, 4), np.float32), cache, (np.zeros((1, 4), np.float32),))
    with pytest.raises(ValueError, match="expected 2"):
        c.step(x)
    with pytest.raises(ValueError, match="hidden_size must be >= 1"):
        L.GRU(3, 0)
    with pytest.raises(TypeError, match="input_size must be an int"):
        L.RNN(3.0, 4)
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        L.RNN(3, 4, dtype=np.int32)
    for make_model in (
        lambda s: L.LSTM(3, 4, seed=s),
        lambda s: L.Stacked("gru", 3, 4, seed=s),
        lambda s: L.Linear(3, 4, seed=s),
        lambda s: L.Embedding(3, 4, seed=s),
    ):
        with pytest.raises(TypeError, match=r"seed must be None, an int >= 0 .* got str"):
            make_model("0")
        with pytest.raises(ValueError, match="seed must be None or ints >= 0, got -1"):
            make_model(-1)
        a, b = make_model(7), make_model(np.random.default_rng(7))  # a Generator is taken too
        assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)


# --- the plain cells compute exactly what PyTorch's do -------------------------------------------


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_plain_cells_match_pytorch(kind, rng):
    torch = pytest.importorskip("torch")
    I, H, T, B = 3, 5, 4, 2
    mod = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind](I, H).double()
    sd = {k: v.detach().numpy() for k, v in mod.state_dict().items()}
    cls = {"rnn": L.RNN, "lstm": L.LSTM, "gru": L.GRU}[kind]
    cell = cls(I, H, layer_norm=False, dtype=np.float64)
    cell.params["Wx"][...] = sd["weight_ih_l0"].T
    cell.params["Wh"][...] = sd["weight_hh_l0"].T
    if kind == "gru":
        cell.params["bx"][...] = sd["bias_ih_l0"]
        cell.params["bh"][...] = sd["bias_hh_l0"]
    else:
        cell.params["b"][...] = sd["bias_ih_l0"] + sd["bias_hh_l0"]
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((1, B, H))
    if kind == "lstm":
        c0 = rng.standard_normal((1, B, H))
        out, (hT, cT) = mod(torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(c0)))
        hs, last, _ = cell.forward(x, (h0[0], c0[0]))
        np.testing.assert_allclose(last[1], cT.detach().numpy()[0], rtol=1e-12, atol=1e-12)
    else:
        out, hT = mod(torch.from_numpy(x), torch.from_numpy(h0))
        hs, last, _ = cell.forward(x, (h0[0],))
    np.testing.assert_allclose(hs, out.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(last[0], hT.detach().numpy()[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind,cls", CELLS)
@pytest.mark.parametrize("ln", [True, False])
def test_float32_backward_matches_float64(kind, cls, ln, rng):
    """The float32 kernels' gradients agree with the float64 ones (checked by finite differences
    above) to float32 accuracy."""
    c64 = make_cell(cls, ln, np.float64, I=6, H=8)
    c32 = cls(6, 8, layer_norm=ln, dtype=np.float32)
    for k, v in c64.params.items():
        c32.params[k][...] = v
    x = rng.standard_normal((7, 3, 6))
    G = rng.standard_normal((7, 3, 8))
    lengths = np.array([7, 4, 6])
    out = []
    for cell, dt in [(c64, np.float64), (c32, np.float32)]:
        hs, last, cache = cell.forward(x.astype(dt), lengths=lengths)
        out.append(cell.backward(G.astype(dt), cache))
    (dx64, g64, s64), (dx32, g32, s32) = out
    assert dx32.dtype == np.float32 and all(v.dtype == np.float32 for v in g32.values())
    np.testing.assert_allclose(dx32, dx64, rtol=1e-4, atol=1e-5)
    for k in g64:
        np.testing.assert_allclose(g32[k], g64[k], rtol=1e-4, atol=1e-4 * np.abs(g64[k]).max())
    np.testing.assert_allclose(s32[0], s64[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("split", [False, True])
def test_concurrent_steps_on_one_cell(split, rng, request):
    # with split products, one thread at a time runs them in parallel and the others call BLAS
    from concurrent.futures import ThreadPoolExecutor

    if split:
        request.getfixturevalue("split_steps")
    cell = L.LSTM(16, 32, seed=0)
    xs = [rng.standard_normal((20, 1, 16)).astype(np.float32) for _ in range(8)]

    def run(i):
        s = None
        for t in range(20):
            s = cell.step(xs[i][t], s)
        return s[0]

    with ThreadPoolExecutor(8) as ex:
        got = list(ex.map(run, range(8)))
    # step and forward round differently (float32, 20 steps); another thread's state leaking
    # in would be off by the state's own size
    for i in range(8):
        np.testing.assert_allclose(got[i], cell.forward(xs[i])[1][0], rtol=1e-4, atol=1e-5)
