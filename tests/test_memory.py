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
    e = pool.empty((2048, 2), np.float32)  # same size in bytes, another shape: reused too
    del d
    e2 = pool.empty((4, 1024), np.float32)
    assert e2.ctypes.data == pa and not np.shares_memory(e, e2)


def test_free_memory_kept_is_bounded_and_released(pool, monkeypatch):
    monkeypatch.setattr(P, "POOL_MAX_BYTES", 3 * 16384)
    arrays = [pool.empty((4096,), np.float32) for _ in range(5)]  # 16 KB each
    del arrays
    gc.collect()
    assert pool.free_bytes() == 3 * 16384  # two of the five released at once
    pool.release_memory()
    assert pool.free_bytes() == 0


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
