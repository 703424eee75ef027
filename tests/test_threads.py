"""Concurrent calls from many Python threads: correct results, and no abort under any of Numba's
threading layers (``workqueue`` aborts on concurrent parallel calls unless they are guarded)."""

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import lnnumba as L
from lnnumba import reference as R

SCRIPT = textwrap.dedent(
    """
    import numpy as np, numba
    from concurrent.futures import ThreadPoolExecutor
    import lnnumba as L, lnnumba.cpu.norm
    from lnnumba import reference as R
    layer_is_slow = lnnumba.cpu.norm.slow_parallel_launch()
    assert layer_is_slow == (numba.threading_layer() == "workqueue"), numba.threading_layer()
    # the parallel paths all the same, to show that concurrent calls to them are safe
    lnnumba.cpu.norm._slow_launch = False
    rng = np.random.default_rng(0)
    # large enough for the parallel path, small enough to be quick
    xs = [rng.standard_normal((256, 512)).astype(np.float32) for _ in range(8)]
    want = [R.layer_norm_forward(x)[0] for x in xs]
    dys = [rng.standard_normal(x.shape).astype(np.float32) for x in xs]
    # a batch-of-one step whose products are split over the threads (matvec_pair)
    cell = L.LSTM(256, 256, seed=0)
    assert cell._split_products(cell.params["Wx"], cell.params["Wh"])
    lnnumba.cpu.norm.BLAS_SPIN_S = -1.0  # split even right after the forward's BLAS product
    seq = rng.standard_normal((5, 1, 256)).astype(np.float32)
    want_h = cell.forward(seq)[1][0]

    def work(i):
        for _ in range(20):
            y, m, r = L.layer_norm_forward(xs[i])
            L.layer_norm_backward(dys[i], xs[i], m, r)
            L.rms_norm(xs[i])
            s = None
            for t in range(5):
                s = cell.step(seq[t], s)
            assert np.abs(s[0] - want_h).max() < 1e-4
        return float(np.abs(y - want[i]).max())

    with ThreadPoolExecutor(8) as ex:
        errs = list(ex.map(work, range(8)))
    assert max(errs) < 1e-4, errs
    print("layer", numba.threading_layer(), "ok")
    """
)


def test_eight_threads_give_correct_results(rng):
    xs = [rng.standard_normal((256, 512)).astype(np.float32) for _ in range(8)]
    ws = [rng.standard_normal(512).astype(np.float32) for _ in range(8)]

    def work(i):
        out = []
        for _ in range(10):
            out.append(L.layer_norm(xs[i], ws[i]))
        return out

    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(work, range(8)))
    for i, outs in enumerate(results):
        want = R.layer_norm_forward(xs[i], ws[i])[0]
        for y in outs:
            np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)


def test_workqueue_layer_does_not_abort():
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue")
    p = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "layer workqueue ok" in p.stdout


def test_thread_count_follows_each_threads_setting(rng):
    """The forward's thread count (``num_threads``, Numba's own getter without its locks) is
    each calling thread's ``numba.set_num_threads``, in threads that set it and threads that
    did not, and results are the same either way."""
    import numba

    from lnnumba.cpu import norm as K

    x = rng.standard_normal((256, 512)).astype(np.float32)  # the parallel path
    want = L.layer_norm(x)
    assert K._thread_count is not None  # the pool started, and the getter taken
    total = numba.config.NUMBA_NUM_THREADS

    def work(n):
        before = K.num_threads()
        if n:
            numba.set_num_threads(n)
        return before, K.num_threads(), numba.get_num_threads(), L.layer_norm(x)

    with ThreadPoolExecutor(1) as ex:
        for n in (0, 1, total):
            before, after, numba_says, y = ex.submit(work, n).result()
            assert after == numba_says == (n or before)
            np.testing.assert_array_equal(y, want)
    assert K.num_threads() == numba.get_num_threads()
