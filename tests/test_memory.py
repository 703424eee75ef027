"""Large outputs from the pool of freed buffers (``lnnumba._memory``): memory is reused only
once no array or view holds it, never shared between live arrays, and bounded."""

import gc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import lnnumba as L
from lnnumba import _memory as P
from lnnumba import reference as R

SMALL_POOL = 1 << 12  # pool arrays from 4 KB, so that tests stay small


@pytest.fixture
def pool(monkeypatch):
    monkeypatch.setattr(P, "POOL_MIN_BYTES", SMALL_POOL)
    P.release_memory()
    yield P
    P.release_memory()


def test_reference_counts_behave_as_the_pool_needs(pool, monkeypatch):
    """The pool is on here: a buffer's count rises by one for each view, views of views
    included. Where the interpreter counted otherwise the pool would be off, every array a
    plain one."""
    assert P._IDLE_REFS is not None and P._calibrate() == P._IDLE_REFS
    import sys

    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    assert P._calibrate() is None  # free-threaded: the counts do not tell, the pool is off
    monkeypatch.setattr(P, "_IDLE_REFS", None)
    a = pool.empty((64, 33), np.float32)
    assert a.flags.owndata and not P._pool


def test_small_arrays_are_plain(pool):
    a = pool.empty((3, 4), np.float32)
    assert a.flags.owndata and a.shape == (3, 4) and a.dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_pooled_array_is_a_normal_writeable_array(pool, dtype):
    a = pool.empty((64, 33), dtype)
    assert a.shape == (64, 33) and a.dtype == dtype
    assert a.flags.c_contiguous and a.flags.writeable and a.flags.aligned
    assert not a.flags.owndata and a.ctypes.data % 64 == 0
    a[...] = np.arange(a.size, dtype=dtype).reshape(a.shape)
    np.testing.assert_array_equal(a.ravel(), np.arange(a.size, dtype=dtype))


def test_memory_is_reused_only_when_no_array_or_view_holds_it(pool):
    a = pool.empty((1024, 4), np.float32)
    pa = a.ctypes.data
    b = pool.empty((1024, 4), np.float32)  # a is alive: other memory
    assert not np.shares_memory(a, b)
    view = a[10:20]
    del a
    c = pool.empty((1024, 4), np.float32)  # a's memory is held by the view
    assert c.ctypes.data != pa and not np.shares_memory(c, view)
    del view
    assert pool.free_bytes() == 1024 * 4 * 4
    d = pool.empty((1024, 4), np.float32)  # now a's memory comes back
    assert d.ctypes.data == pa and pool.free_bytes() == 0
    del d
    e = pool.empty((4, 1024), np.float32)  # the same bytes in another shape: other memory
    assert e.ctypes.data != pa and pool.free_bytes() == 1024 * 4 * 4
    e2 = pool.empty((1024, 4), np.float32)
    assert e2.ctypes.data == pa and not np.shares_memory(e, e2)
    assert e2.base is not None and e2[::2].base is e2.base  # views refer to the buffer itself


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pooled_arrays_at_an_offset_within_a_line(pool, dtype):
    # each place within a line has buffers of its own, reused at that place only
    shape = (1024, 3)
    a = pool.empty(shape, dtype, 16)
    assert a.ctypes.data % 64 == 16 and a.shape == shape and a.dtype == dtype
    assert a.flags.c_contiguous and a.flags.aligned and not a.flags.owndata
    pa = a.ctypes.data
    del a
    b = pool.empty(shape, dtype)  # on a line boundary: other memory, though a's is free
    assert b.ctypes.data % 64 == 0 and b.ctypes.data != pa
    c = pool.empty(shape, dtype, 48)
    assert c.ctypes.data % 64 == 48 and c.ctypes.data != pa
    d = pool.empty(shape, dtype, 16)  # a's memory comes back
    assert d.ctypes.data == pa
    d[...] = 1.0
    assert not np.shares_memory(d, b) and not np.shares_memory(d, c)


def test_pooled_arrays_at_an_offset_within_a_page(pool):
    # placed within a 4 KB page (align=PAGE): buffers of their own, reused at that place only
    shape = (1024, 3)
    a = pool.empty(shape, np.float32, 1040, P.PAGE)
    assert a.ctypes.data % P.PAGE == 1040 and a.shape == shape and not a.flags.owndata
    pa = a.ctypes.data
    del a
    b = pool.empty(shape, np.float32, 16)  # 16 past a line: other memory, though a's is free
    c = pool.empty(shape, np.float32, 16, P.PAGE)  # and 16 past a page too
    assert b.ctypes.data % 64 == 16 and c.ctypes.data % P.PAGE == 16
    assert pa not in (b.ctypes.data, c.ctypes.data)
    d = pool.empty(shape, np.float32, 1040, P.PAGE)  # a's memory comes back
    assert d.ctypes.data == pa
    assert not np.shares_memory(d, b) and not np.shares_memory(d, c)


def test_memory_kept_is_bounded_and_released(pool, monkeypatch):
    """Before the pool allocates a buffer, it drops free ones, used longest ago first, until
    they total at most POOL_MAX_BYTES; buffers in use are never dropped."""
    monkeypatch.setattr(P, "POOL_MAX_BYTES", 3 * 16384)
    arrays = [pool.empty((4096,), np.float32) for _ in range(5)]  # 16 KB each
    assert not any(a.flags.owndata for a in arrays)  # in use: all pooled
    del arrays
    gc.collect()
    assert pool.free_bytes() == 5 * 16384  # (trimmed at the next new buffer)
    a, b = pool.empty((4096,), np.float32), pool.empty((4096,), np.float32)
    kept = {a.ctypes.data, b.ctypes.data}  # used last
    del a, b
    c = pool.empty((2048,), np.float64)  # a new buffer: two of the five free ones go
    assert not c.flags.owndata and pool.free_bytes() == 3 * 16384
    left = {e[1].ctypes.data for e in P._pool[((4096,), np.float32)]}
    assert len(left) == 3 and kept <= left
    del c
    pool.release_memory()
    assert pool.free_bytes() == 0 and not P._pool


# 3-d inputs: small 2-d ones take layer_norm's batch-1 path, whose outputs are never this large
# outside these tests (it stops at 2^16 elements)


def test_public_outputs_come_from_the_pool_and_stay_independent(pool, rng):
    x1 = rng.standard_normal((8, 8, 32)).astype(np.float32)
    x2 = rng.standard_normal((8, 8, 32)).astype(np.float32) * 3 + 1
    w = rng.standard_normal(32).astype(np.float32)
    y1 = L.layer_norm(x1, w)
    y2 = L.layer_norm(x2, w)
    assert not y1.flags.owndata and not np.shares_memory(y1, y2)
    ref1 = R.layer_norm_forward(x1, w)[0]
    ref2 = R.layer_norm_forward(x2, w)[0]
    np.testing.assert_allclose(y1, ref1, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y2, ref2, rtol=1e-4, atol=1e-5)
    p1 = y1.ctypes.data
    del y1
    y3, m, r = L.layer_norm_forward(x1, w)  # y1's memory, now free
    assert y3.ctypes.data == p1
    np.testing.assert_allclose(y2, ref2, rtol=1e-4, atol=1e-5)  # untouched
    dx, dw, db = L.layer_norm_backward(x2, x1, m, r, w)
    assert not dx.flags.owndata and not np.shares_memory(dx, y2)
    want = R.layer_norm_backward(x2, x1, *R.layer_norm_forward(x1, w)[1:], w)
    np.testing.assert_allclose(dx, want[0], rtol=1e-3, atol=1e-4)
    yr = L.rms_norm(x1, w)
    np.testing.assert_allclose(yr, R.rms_norm_forward(x1, w)[0], rtol=1e-4, atol=1e-5)


def test_a_training_loop_reuses_the_same_buffers(pool, rng):
    """Layers forward then backward, step after step: after the first step every output comes
    from a buffer the pool already has (the memory stays what one step needs), and the results
    do not change from step to step."""
    x = rng.standard_normal((8, 8, 32)).astype(np.float32)
    w = rng.standard_normal(32).astype(np.float32)

    def step():
        h, saved = x, []
        for _ in range(3):
            y, m, r = L.layer_norm_forward(h, w)
            saved.append((h, m, r))
            h = y
        g = h
        for hk, m, r in reversed(saved):
            g = L.layer_norm_backward(g, hk, m, r, w)[0]
        return h, g

    def same(got, want):  # (holds no output once it returns)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)

    first = [a.copy() for a in step()]
    sizes = sorted((k, len(es)) for k, es in P._pool.items())
    assert sizes
    for _ in range(10):
        same(step(), first)
    assert sorted((k, len(es)) for k, es in P._pool.items()) == sizes


def test_threads_never_share_live_memory(pool, rng):
    x = rng.standard_normal((8, 8, 32)).astype(np.float32)
    want = R.layer_norm_forward(x)[0]

    def work(i):
        held = []
        for k in range(50):
            y = L.layer_norm(x * (i + 1))  # each thread's own scale: LN removes it
            assert not y.flags.owndata  # from the pool
            y += i  # a value only this thread writes
            held.append(y)
            if k % 3 == 0:
                held.pop(0)  # frees memory for any thread to take
        return i, held

    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(work, range(8)))
    ptrs = set()
    for i, held in results:
        for y in held:
            np.testing.assert_allclose(y - i, want, rtol=1e-4, atol=1e-4)
            assert y.ctypes.data not in ptrs
            ptrs.add(y.ctypes.data)


def test_concurrent_claims_of_one_shape_never_share_a_buffer(pool, monkeypatch):
    """Buffers are claimed without a lock: threads that race for the same few free buffers,
    switching as often as the interpreter allows and at every reference count the pool reads,
    never hold the same one at once."""
    import sys
    import threading
    import time

    refs = P._refs

    def refs_then_switch(entry):
        n = refs(entry)
        time.sleep(0)  # lets another thread run between this read and the pool's next step
        return n

    monkeypatch.setattr(P, "_refs", refs_then_switch)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        start = threading.Barrier(6)
        clashes = []

        def work(i):
            start.wait()
            for k in range(300):
                a = pool.empty((32, 64), np.float32)  # 8 KB: pooled here
                a.fill(i * 1000 + k)
                b = pool.empty((32, 64), np.float32)  # a second one while a is held
                b.fill(-i)
                if not (a == i * 1000 + k).all() or not (b == -i).all():
                    clashes.append((i, k))
                del a, b

        threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not clashes
    assert 2 <= len(P._pool[((32, 64), np.float32)]) <= 12  # reused, not one per call


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")  # Python >= 3.12
def test_forked_child_can_allocate_while_a_parent_thread_holds_the_lock(pool):
    import os
    import signal
    import threading
    import time

    holding, release = threading.Event(), threading.Event()

    def hold():
        with P._lock:
            holding.set()
            release.wait(10)

    th = threading.Thread(target=hold)
    th.start()
    holding.wait(10)
    try:
        pid = os.fork()
        if pid == 0:  # the child: its copy of the lock is held by a thread it does not have
            code = 1
            try:
                a = pool.empty((4096,), np.float32)
                del a
                code = 0 if pool.free_bytes() == 16384 else 2
            finally:
                os._exit(code)
        for _ in range(1000):  # up to 10 s; a child stuck on the lock is killed
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.01)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child blocked on the pool's lock")
    finally:
        release.set()
        th.join()
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.bool_, np.int64])
@pytest.mark.parametrize("shape", [(0,), (3,), (5, 7), (2, 3, 4)])
def test_aligned_copy(dtype, shape, rng):
    a = (rng.standard_normal(shape) * 10).astype(dtype)
    for src in (a, np.asfortranarray(a), a[..., ::-1]):
        b = P.aligned(src)
        assert b.flags.c_contiguous and b.flags.writeable
        assert b.ctypes.data % 64 == 0 or b.size == 0  # (an empty array's address is moot)
        assert b.shape == a.shape and b.dtype == a.dtype and not np.shares_memory(b, src)
        np.testing.assert_array_equal(b, src)


def test_cell_parameters_start_on_cache_lines(tmp_path):
    """The recurrent kernels read rows of Wh with vector loads: a cell's parameters start on
    64-byte boundaries, and stay there through loading a model file (written into in place)."""
    models = [L.LSTM(3, 5), L.GRU(4, 6, layer_norm=False), L.RNN(2, 3), L.Stacked("lstm", 3, 4)]
    for m in models:
        assert all(v.ctypes.data % 64 == 0 for v in m.params.values())
        L.save_model(tmp_path / "m.npz", m)
        m2 = L.load_model(tmp_path / "m.npz")
        assert all(v.ctypes.data % 64 == 0 for v in m2.params.values())
        for k in m.params:
            np.testing.assert_array_equal(m2.params[k], m.params[k])
