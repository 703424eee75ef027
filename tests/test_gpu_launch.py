"""The GPU launcher's parameter packing, without a GPU: ``lnnumba.gpu._launch.Kernel`` with the
driver call and cuda.core's launch replaced by recorders. (On a GPU, tests/gpu checks that the
lean launches give the bits of Numba's own.)"""

import ctypes
import struct
import threading
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("cuda.bindings")
la = pytest.importorskip("lnnumba.gpu._launch")
if not la._AVAILABLE:
    pytest.skip("numba-cuda's internals differ: the lean launch is off", allow_module_level=True)


def fake_array(ptr, shape, dtype=np.float32):
    dt = np.dtype(dtype)
    strides = tuple(int(s) for s in np.empty(shape, dt).strides)
    return SimpleNamespace(
        device_ctypes_pointer=ctypes.c_void_p(ptr),
        size=int(np.prod(shape)),
        dtype=dt,
        shape=shape,
        strides=strides,
    )


def kernel():
    """A Kernel set up as after its first launch, for (2-d array, 1-d array, float64, bool)."""
    k = la.Kernel(dispatcher=None)
    k._kinds = (la._ARRAY, la._ARRAY, la._F64, la._BOOL)
    k._fn = SimpleNamespace(handle=0)
    k._stream = SimpleNamespace(handle=0)
    k._setup_direct([SimpleNamespace(ndim=2), SimpleNamespace(ndim=1), None, None])
    return k


ARGS = (fake_array(0x1000, (3, 5)), fake_array(0x2000, (5,)), 1e-5, True)
# Numba's layout: (meminfo, parent, size, itemsize, data, *shape, *strides) for each array
WANT = [0, 0, 15, 4, 0x1000, 3, 5, 20, 4, 0, 0, 5, 4, 0x2000, 5, 4, 1e-5, 1]


def read_params(ptrs, n):
    """The n 8-byte parameters the driver would read through the pointer array at ptrs."""
    slots = (ctypes.c_void_p * n).from_address(ptrs)
    vals = [ctypes.c_int64.from_address(p).value for p in slots]
    vals[16] = ctypes.c_double.from_address(slots[16]).value
    vals[17] = ctypes.c_uint8.from_address(slots[17]).value  # a bool is read as one byte
    return vals


def test_direct_launch_packs_numba_layout(monkeypatch):
    seen = []

    def launch(f, gx, gy, gz, bx, by, bz, shmem, stream, params, extra):
        seen.append(((gx, gy, gz, bx, by, bz), shmem, extra, read_params(params, len(WANT))))
        return (la._SUCCESS,)

    monkeypatch.setattr(la, "_cuLaunchKernel", launch)
    k = kernel()
    k._lean(7, 128, ARGS)
    k._lean(2, (32, 16), ARGS[:2] + (0.5, False))
    assert seen[0] == ((7, 1, 1, 128, 1, 1), 0, 0, WANT)
    assert seen[1][0] == (2, 1, 1, 32, 16, 1)
    assert seen[1][3] == WANT[:16] + [0.5, 0]
    assert k._struct.size == 8 * len(WANT)


def test_each_thread_packs_into_its_own_buffer():
    k = kernel()
    got = {}

    def work(i):
        got[i] = k._buffers()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({ptrs for _, ptrs, _ in got.values()}) == 4
    assert k._buffers() is k._buffers()  # one buffer per thread, reused


def test_a_refusing_binding_falls_back_to_cuda_core(monkeypatch):
    calls = []

    def refuse(*a):
        raise TypeError("argument types")

    def core(stream, config, fn, *params):
        calls.append(params)

    monkeypatch.setattr(la, "_cuLaunchKernel", refuse)
    monkeypatch.setattr(la, "_core_launch", core)
    monkeypatch.setattr(la, "_LaunchConfig", lambda grid, block: (grid, block))
    k = kernel()
    k._lean(7, 128, ARGS)
    assert not k._direct  # for good
    k._lean(7, 128, ARGS)
    assert len(calls) == 2
    for params in calls:
        assert list(params[:16]) + [params[17]] == WANT[:16] + [True]
        assert isinstance(params[16], ctypes.c_double) and params[16].value == 1e-5


def test_a_failed_launch_raises(monkeypatch):
    monkeypatch.setattr(la, "_cuLaunchKernel", lambda *a: (la._cudrv.CUresult(1),))
    with pytest.raises(la._driver.CudaAPIError, match="cuLaunchKernel"):
        kernel()._lean(7, 128, ARGS)


def test_launch_shapes_kept_are_bounded(monkeypatch):
    monkeypatch.setattr(la, "_cuLaunchKernel", lambda *a: (la._SUCCESS,))
    k = kernel()
    for g in range(la._MAX_SHAPES + 10):
        k._lean(g + 1, 128, ARGS)
    assert len(k._dims) <= la._MAX_SHAPES


def test_struct_layout_is_8_byte_slots():
    assert struct.calcsize("=qd?") == 17  # the reason bools are packed as "q", not "?"
    assert kernel()._struct.format == "=" + "q" * 16 + "dq"
