"""CUDA kernels against the float64 reference and the CPU path: tiny grids, awkward sizes.

Runs unchanged on a real GPU and under the CUDA simulator (see conftest.py)."""

import numpy as np
import pytest
from _helpers import dx_err
from _helpers import rel_err as rel

import lnnumba as L
from lnnumba import reference as R

cuda = pytest.importorskip("numba.cuda")

WIDTHS = [1, 3, 33, 1025, 4099]
TOL = {np.float32: 1e-5, np.float64: 1e-12}


def data(N, M, dtype, seed=0, loc=1.0):
    rng = np.random.default_rng(seed + N * 7 + M)
    x = (loc + 2 * rng.standard_normal((M, N))).astype(dtype)
    w = rng.standard_normal(N).astype(dtype)
    b = rng.standard_normal(N).astype(dtype)
    dy = rng.standard_normal((M, N)).astype(dtype)
    return x, w, b, dy


# every width with 1 and 5 rows; the small widths with every batch size from 1 to 5
SIZES = [(N, M) for N in WIDTHS for M in (1, 5)] + [(N, M) for N in (1, 3, 33) for M in (2, 3, 4)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,M", SIZES)
def test_layer_norm_forward_backward(N, M, dtype):
    x, w, b, dy = data(N, M, dtype)
    dX, dW, dB = cuda.to_device(x), cuda.to_device(w), cuda.to_device(b)
    y, mean, rstd = L.layer_norm_forward(dX, dW, dB)
    yr, mr, rr = R.layer_norm_forward(x, w, b)
    assert y.shape == x.shape and mean.shape == (M, 1) and rstd.shape == (M, 1)
    assert rel(y.copy_to_host(), yr) < TOL[dtype] * 10
    assert rel(rstd.copy_to_host(), rr) < TOL[dtype]
    # against the CPU path too
    yc, mc, rc = L.layer_norm_forward(x, w, b)
    assert rel(y.copy_to_host(), yc) < TOL[dtype] * 10
    dx, dw, db = L.layer_norm_backward(cuda.to_device(dy), dX, mean, rstd, dW)
    dxr, dwr, dbr = R.layer_norm_backward(dy, x, mr, rr, w)
    assert dx_err(dx.copy_to_host(), dxr, rr, dy, w) < TOL[dtype] * 100
    assert rel(dw.copy_to_host(), dwr) < TOL[dtype] * 10
    assert rel(db.copy_to_host(), dbr) < TOL[dtype] * 10
    np.testing.assert_array_equal(L.layer_norm(dX, dW, dB).copy_to_host(), y.copy_to_host())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N", [1, 33, 1025])
@pytest.mark.parametrize("M", [1, 4])
def test_rms_norm_forward_backward(N, M, dtype):
    x, w, _, dy = data(N, M, dtype, seed=1)
    dX, dW = cuda.to_device(x), cuda.to_device(w)
    y, rstd = L.rms_norm_forward(dX, dW)
    yr, rr = R.rms_norm_forward(x, w)
    assert rel(y.copy_to_host(), yr) < TOL[dtype] * 10
    dx, dw = L.rms_norm_backward(cuda.to_device(dy), dX, rstd, dW)
    dxr, dwr = R.rms_norm_backward(dy, x, rr, w)
    assert dx_err(dx.copy_to_host(), dxr, rr, dy, w) < TOL[dtype] * 100
    assert rel(dw.copy_to_host(), dwr) < TOL[dtype] * 10
    np.testing.assert_array_equal(L.rms_norm(dX, dW).copy_to_host(), y.copy_to_host())


def test_no_weight_no_bias_axis_and_out():
    x = np.random.default_rng(3).standard_normal((2, 3, 5)).astype(np.float32)
    dX = cuda.to_device(x)
    y, mean, rstd = L.layer_norm_forward(dX, axis=1)
    yr, mr, rr = R.layer_norm_forward(x, axis=1)
    assert mean.shape == (2, 1, 1)
    assert rel(y.copy_to_host(), yr) < 1e-5
    out = cuda.device_array_like(x)
    L.layer_norm(dX, out=out, axis=-1)
    assert rel(out.copy_to_host(), R.layer_norm_forward(x)[0]) < 1e-5
    dx, dw, db = L.layer_norm_backward(cuda.to_device(np.ones_like(x)), dX, mean, rstd, axis=1)
    dxr, dwr, dbr = R.layer_norm_backward(np.ones_like(x), x, mr, rr, axis=1)
    assert dw.shape == (3, 5)
    assert rel(dw.copy_to_host(), dwr) < 1e-5 and rel(db.copy_to_host(), dbr) < 1e-6


def test_float32_large_mean():
    x, w, _, dy = data(1025, 3, np.float32, loc=1e4)
    y, m, r = L.layer_norm_forward(cuda.to_device(x), cuda.to_device(w))
    yr, mr, rr = R.layer_norm_forward(x, w)
    assert rel(y.copy_to_host(), yr) < 1e-4
    g = L.layer_norm_backward(cuda.to_device(dy), cuda.to_device(x), m, r, cuda.to_device(w))
    for a, ref in zip(g, R.layer_norm_backward(dy, x, mr, rr, w)):
        assert rel(a.copy_to_host(), ref) < 1e-4


def test_empty_batch():
    x = cuda.to_device(np.empty((0, 4), np.float32))
    y, m, r = L.layer_norm_forward(x)
    assert y.shape == (0, 4) and m.shape == (0, 1)
    dx, dw, db = L.layer_norm_backward(x, x, m, r)
    np.testing.assert_array_equal(dw.copy_to_host(), 0)


def test_bad_input_on_the_device_path():
    x = cuda.to_device(np.ones((2, 3), np.float32))
    with pytest.raises(TypeError, match="host object"):
        L.layer_norm(x, np.ones(3, np.float32))  # mixing host and device
    with pytest.raises(TypeError, match="GPU array"):
        L.layer_norm(np.ones((2, 3), np.float32), cuda.to_device(np.ones(3, np.float32)))
    with pytest.raises(ValueError, match=r"weight has shape \(4,\), expected \(3,\)"):
        L.layer_norm(x, cuda.to_device(np.ones(4, np.float32)))
    with pytest.raises(TypeError, match="weight has dtype float64, expected float32"):
        L.layer_norm(x, cuda.to_device(np.ones(3)))
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        L.layer_norm(x, axis=2)
    with pytest.raises(ValueError, match="eps must be finite"):
        L.layer_norm(x, eps=-1.0)
    with pytest.raises(ValueError, match="contain a zero"):
        L.layer_norm(cuda.to_device(np.ones((2, 0), np.float32)))
    with pytest.raises(TypeError, match="supports float32 and float64"):
        L.layer_norm(cuda.to_device(np.ones((2, 3), np.float16)))
    _, m, r = L.layer_norm_forward(x)
    with pytest.raises(ValueError, match="dy has shape"):
        L.layer_norm_backward(cuda.to_device(np.ones((3, 2), np.float32)), x, m, r)
    with pytest.raises(ValueError, match="mean has shape"):
        L.layer_norm_backward(x, x, cuda.to_device(np.ones(2, np.float32)), r)


def _simulator():
    from lnnumba.gpu import norm as gn

    return gn._SIM


@pytest.mark.skipif(_simulator(), reason="the simulator always launches through the dispatcher")
def test_lean_launch_matches_the_dispatcher():
    """lnnumba.gpu._launch packs the arguments itself: the same bits as Numba's own launch."""
    from lnnumba.gpu import norm as gn

    x, w, b, dy = data(777, 333, np.float32, seed=5)
    dX, dW, dB, dDY = (cuda.to_device(a) for a in (x, w, b, dy))

    def run():
        y, m, r = L.layer_norm_forward(dX, dW, dB)
        g = L.layer_norm_backward(dDY, dX, m, r, dW)
        z, rr = L.rms_norm_forward(dX, dW)
        return [a.copy_to_host() for a in (y, m, r, *g, z, rr)]

    run()  # compiles; later calls take the lean launch
    fast = run()  # through cuLaunchKernel
    kernels = list(gn._KERNELS.values())
    assert all(k._fn is not None and k._direct for k in kernels)
    try:
        for k in kernels:
            k._direct = False
        core = run()  # through cuda.core's launch
        for k in kernels:
            k.enabled, k._fn = False, None
        slow = run()  # through Numba's dispatcher
    finally:
        for k in kernels:
            k.enabled = True
    for a, c, d in zip(fast, core, slow):
        np.testing.assert_array_equal(a, d)
        np.testing.assert_array_equal(c, d)


@pytest.mark.skipif(_simulator(), reason="the simulator runs launches in the calling thread")
def test_lean_launches_from_many_threads():
    """Each thread packs its launches' parameters into a buffer of its own: 8 threads calling at
    once get the results of one thread calling alone."""
    import threading

    arrays = []
    for i in range(8):
        x, w, b, _ = data(300 + 37 * i, 3 + i, np.float32, seed=i)
        arrays.append(tuple(cuda.to_device(a) for a in (x, w, b)))
    want = [L.layer_norm(*a).copy_to_host() for a in arrays]
    got = [[] for _ in arrays]
    start = threading.Barrier(len(arrays))

    def work(i):
        start.wait()
        for _ in range(50):
            got[i].append(L.layer_norm(*arrays[i]))
        cuda.synchronize()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(arrays))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, ys in enumerate(got):
        assert len(ys) == 50
        for y in ys:
            np.testing.assert_array_equal(y.copy_to_host(), want[i])


@pytest.mark.skipif(_simulator(), reason="the simulator's groups are one warp at most")
@pytest.mark.parametrize("N", [8193, 16411, 33000])
def test_rows_wider_than_the_widest_group(N):
    """Past FWD_MAX_GROUP / BWD_MAX_GROUP threads a row's group stops growing and each thread
    holds more than the maximum K: those plans against the reference, LN and RMSNorm."""
    from lnnumba.gpu import kernels

    G, K = kernels.group_shape(N, kernels.FWD_MAX_K, kernels.FWD_MAX_GROUP, False)
    assert G * K >= N and (G == min(kernels.FWD_MAX_GROUP, 1024) or K <= kernels.FWD_MAX_K)
    x, w, b, dy = data(N, 3, np.float32, seed=7)
    dX, dW, dB = cuda.to_device(x), cuda.to_device(w), cuda.to_device(b)
    y, mean, rstd = L.layer_norm_forward(dX, dW, dB)
    yr, mr, rr = R.layer_norm_forward(x, w, b)
    assert rel(y.copy_to_host(), yr) < 1e-4
    dx, dw, db = L.layer_norm_backward(cuda.to_device(dy), dX, mean, rstd, dW)
    dxr, dwr, dbr = R.layer_norm_backward(dy, x, mr, rr, w)
    assert dx_err(dx.copy_to_host(), dxr, rr, dy, w) < 1e-3
    assert rel(dw.copy_to_host(), dwr) < 1e-4
    assert rel(db.copy_to_host(), dbr) < 1e-4
    z, zr = L.rms_norm_forward(dX, dW)
    zref, zrr = R.rms_norm_forward(x, w)
    assert rel(z.copy_to_host(), zref) < 1e-4
    dz, dwz = L.rms_norm_backward(cuda.to_device(dy), dX, zr, dW)
    dzr, dwzr = R.rms_norm_backward(dy, x, zrr, w)
    assert rel(dwz.copy_to_host(), dwzr) < 1e-4
    assert dx_err(dz.copy_to_host(), dzr, zrr, dy, w) < 1e-3


def test_short_path_takes_only_canonical_arguments():
    """``gpu.norm.small_forward`` skips the full checks: it must take only arguments already in
    the kernels' form, and give the full path's bits there; every other variant falls through
    (to the full path's result or error)."""
    from lnnumba.gpu import norm as gn

    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 6)).astype(np.float32)
    w = rng.standard_normal(6).astype(np.float32)
    dX, dW, dB = cuda.to_device(x), cuda.to_device(w), cuda.to_device(w + 1)
    L.layer_norm(dX, dW, dB)  # the first launch sets up what the short path needs
    out = cuda.device_array_like(dX)
    canonical = [
        dict(weight=dW, bias=dB),
        dict(weight=dW, bias=dB, out=out),
        dict(weight=dW),
        dict(),
        dict(weight=dW, bias=dB, eps=1e-3),
    ]
    others = [
        dict(weight=dW, axis=1),  # the same rows, but not the short path's spelling
        dict(weight=dW, eps=1),  # an int eps
        dict(weight=dW, eps=-1.0),
        dict(weight=dW, eps=float("nan")),
        dict(weight=cuda.to_device(np.ones(6))),  # float64 weight
        dict(weight=cuda.to_device(np.ones((1, 6), np.float32))),
        dict(weight=cuda.to_device(np.ones(7, np.float32))),
        dict(weight=w),  # a host weight
        dict(out=cuda.device_array((4, 6), np.float64)),
        dict(out=cuda.device_array((4, 12), np.float32)[:, ::2]),  # strided
        dict(out=cuda.device_array(24, np.float32)),
    ]
    for i, kw in enumerate(canonical + others):
        args = (kw.get("weight"), kw.get("bias"), kw.get("eps", 1e-5), kw.get("axis", -1))
        short = gn.small_forward(dX, *args, kw.get("out"), True)
        assert (short is not None) == (i < len(canonical)), kw
        try:
            full = gn.forward("layer_norm", dX, *args, kw.get("out"), True, False)
        except (TypeError, ValueError) as e:
            with pytest.raises(type(e)) as info:
                L.layer_norm(dX, **kw)
            assert str(info.value) == str(e)
            continue
        np.testing.assert_array_equal(L.layer_norm(dX, **kw).copy_to_host(), full.copy_to_host())
        if short is not None:
            np.testing.assert_array_equal(short.copy_to_host(), full.copy_to_host())
    for bad in (cuda.to_device(x[:, :3].copy().T), cuda.to_device(x.astype(np.float16))):
        assert gn.small_forward(bad, None, None, 1e-5, -1, None, True) is None
    assert gn.small_forward(dX[:, ::2], None, None, 1e-5, -1, None, True) is None
    assert (
        gn.small_forward(cuda.to_device(x.reshape(2, 2, 6)), None, None, 1e-5, -1, None, True)
        is None
    )
    assert gn.small_forward(cuda.to_device(x[:0]), None, None, 1e-5, -1, None, True) is None
    z = gn.small_forward(dX, dW, None, 1e-5, -1, None, False)  # RMSNorm
    np.testing.assert_array_equal(
        z.copy_to_host(), L.rms_norm(dX[:], dW, eps=1e-5, axis=1).copy_to_host()
    )
