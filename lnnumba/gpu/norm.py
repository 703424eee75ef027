"""Launchers for the CUDA kernels: the device-array path of the public functions.

Arguments are checked with the same helpers and messages as the CPU path (``lnnumba._args``);
arrays may be Numba device arrays or any object with ``__cuda_array_interface__`` (CuPy arrays,
PyTorch CUDA tensors), used without copying. Results are Numba device arrays. float32 and
float64 are supported on the GPU; device arrays must be C-contiguous.
"""

import math
import threading

import numpy as np
from numba import cuda

from .. import _args
from . import _launch, kernels

_SIM = bool(getattr(cuda, "simulator_is_active", lambda: False)()) or bool(
    getattr(cuda.config, "ENABLE_CUDASIM", False) if hasattr(cuda, "config") else False
)
_DUMMY = {}
_KERNELS = {}
_DEVICE_ARRAY = None  # the type of Numba's device arrays (the simulator's under it), once seen
_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)


def _fast(dispatcher):
    """The lean launcher of a kernel (``_launch.Kernel``), one per dispatcher."""
    k = _KERNELS.get(dispatcher)
    if k is None:
        k = _KERNELS[dispatcher] = _launch.Kernel(dispatcher, enabled=not _SIM)
    return k


def _dummy(dt):
    """A 1-element device array standing in for an absent weight/bias (never read)."""
    global _DEVICE_ARRAY
    a = _DUMMY.get(dt)
    if a is None:
        a = _DUMMY[dt] = cuda.device_array(1, dt)
        _DEVICE_ARRAY = type(a)
    return a


def _shaped(a, *shape):
    """a reshaped to ``shape``, or a itself where it has that shape already: a reshape makes a
    new device array object, a few microseconds of a call."""
    return a if a.shape == shape else a.reshape(*shape)


def as_device(fn, name, a):
    """``a`` as a Numba device array; TypeError for host arrays (mixing is an error)."""
    if a is None:
        return None
    if hasattr(a, "copy_to_host"):  # Numba device arrays (and the simulator's)
        return a
    if hasattr(a, "__cuda_array_interface__"):
        try:
            return cuda.as_cuda_array(a)
        except Exception as e:  # no driver, or a malformed interface
            raise TypeError(
                f"{fn}: {name} exports __cuda_array_interface__ but cannot be used as a device "
                f"array here: {e}"
            ) from None
    raise TypeError(
        f"{fn}: {name} is a host object ({type(a).__name__}) but x is on the GPU; pass device "
        "arrays for every array argument (or NumPy arrays for all of them)"
    )


def _check_layout(fn, name, a):
    if not a.is_c_contiguous():
        raise ValueError(
            f"{fn}: {name} is not C-contiguous (strides {a.strides}); the GPU path expects "
            "C-contiguous device arrays"
        )


def rows(fn, x, axis):
    """Device counterpart of ``_args.rows``: (x2 (M, N), shape, axis, dtype)."""
    x = as_device(fn, "x", x)
    dt = np.dtype(x.dtype)
    if dt not in (np.float32, np.float64):
        _args.dtypes(fn, "x", dt)  # the CPU path's message for unsupported dtypes
        raise TypeError(
            f"{fn}: x has dtype {dt}; the GPU path supports float32 and float64 (convert first)"
        )
    shape = tuple(x.shape)
    if not shape:
        raise ValueError(f"{fn}: x is 0-d (a scalar); expected an array with at least 1 dimension")
    axis = _args.norm_axis(fn, axis, len(shape))
    N = math.prod(shape[axis:])
    if N == 0:
        raise ValueError(
            f"{fn}: the normalized dimensions x.shape[{axis}:] = {shape[axis:]} contain a zero; "
            "expected every normalized dimension to have length >= 1"
        )
    _check_layout(fn, "x", x)
    return _shaped(x, math.prod(shape[:axis]), N), shape, axis, dt


def like(fn, name, a, want_shape, dt, what):
    """A device array of ``want_shape`` and dtype ``dt``, reshaped to 1-d/2-d by the caller."""
    a = as_device(fn, name, a)
    if tuple(a.shape) != want_shape:
        raise ValueError(f"{fn}: {name} has shape {tuple(a.shape)}, expected {want_shape} ({what})")
    if np.dtype(a.dtype) != dt:
        raise TypeError(f"{fn}: {name} has dtype {np.dtype(a.dtype)}, expected {dt} to match x")
    _check_layout(fn, name, a)
    return a


def _param(fn, name, p, shape, axis, dt):
    if p is None:
        return None
    p = like(fn, name, p, shape[axis:], dt, f"x.shape[axis:] for x of shape {shape}")
    return _shaped(p, math.prod(shape[axis:]))


def small_forward(x, w, b, eps, axis, out, center):
    """``layer_norm`` (center) or ``rms_norm`` on the GPU: y, or None unless every argument is
    already in the kernels' form. The caller then runs the full checks (``forward``), which
    raise for bad arguments.

    The form: x a 2-d C-contiguous float32/float64 Numba device array with at least one row and
    column; axis -1; eps a finite float >= 0; w, b and out None or Numba device arrays of x's
    dtype, C-contiguous, of shapes (N,), (N,) and x's. The full checks wrap and reshape every
    argument into a new device array object, each several microseconds of a small call.
    """
    T = _DEVICE_ARRAY
    if not (
        type(x) is T
        and type(axis) is int
        and axis == -1
        and type(eps) is float
        and 0.0 <= eps < math.inf
    ):
        return None
    shape = x.shape
    dt = x.dtype
    if not (len(shape) == 2 and (dt is _F32 or dt is _F64) and x.is_c_contiguous()):
        return None
    M, N = shape
    if M == 0 or N == 0:
        return None
    for p in (w, b):
        if p is not None and not (
            type(p) is T and p.shape == (N,) and p.dtype is dt and p.is_c_contiguous()
        ):
            return None
    if out is None:
        out = cuda.device_array(shape, dt)
    elif not (type(out) is T and out.shape == shape and out.dtype is dt and out.is_c_contiguous()):
        return None
    _launch_plain(out, x, w, b, eps, center, M, N, dt)
    return out


_PLANS = {}  # (M, N, dtype, stats) -> (launcher, blocks, threads) of the forward
_MAX_PLANS = 256


def _forward_plan(M, N, dt, stats):
    """(launcher, blocks, threads) of the forward kernel for (M, N) rows of dtype dt, with
    (stats) or without the mean/rstd outputs. Cached: the launch-shape constants of
    ``kernels`` are read when a plan is first made."""
    key = (M, N, dt, stats)
    plan = _PLANS.get(key)
    if plan is None:
        G, K, T, blocks = kernels.forward_plan(M, N, _SIM)
        is64 = dt == np.float64
        cap = kernels.forward_max_regs(K, is64, stats)
        kern = kernels.forward_kernel(K, G, T, is64, _SIM, stats, cap)
        plan = (_fast(kern), blocks, T)
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        _PLANS[key] = plan
    return plan


def _weights(w, b, dt):
    """(w, b, has_w, has_b) as the forward kernels take them: a 1-element stand-in for an
    absent weight or bias (never read)."""
    d = _dummy(dt)
    return (d if w is None else w), (d if b is None else b), w is not None, b is not None


def _launch_plain(y2, x2, w, b, eps, center, M, N, dt):
    """The forward without statistics. y2, x2: (M, N) of dtype dt, M > 0; w, b: (N,) or None."""
    launcher, blocks, T = _forward_plan(M, N, dt, False)
    wv, bv, has_w, has_b = _weights(w, b, dt)
    launcher(blocks, T, y2, x2, wv, bv, eps, center, has_w, has_b)


def _launch_forward(y2, mean, rstd, x2, w, b, eps, center):
    M, N = x2.shape
    if M == 0:
        return
    dt = np.dtype(x2.dtype)
    if mean is None and rstd is None:
        _launch_plain(y2, x2, w, b, eps, center, M, N, dt)
        return
    launcher, blocks, T = _forward_plan(M, N, dt, True)
    d = _dummy(dt)
    wv, bv, has_w, has_b = _weights(w, b, dt)
    m = d if mean is None else mean
    r = d if rstd is None else rstd
    launcher(blocks, T, y2, m, r, x2, wv, bv, eps, center, has_w, has_b, True)


_scratch = threading.local()


def _partials(ctx, P, N, dt):
    """Two (P, N) device arrays for the backward's partial sums in context ctx, reused by this
    thread.

    Every launch goes to the default stream, in order, so a thread's next backward cannot
    overwrite them before its sum kernel has read them; other threads get their own.
    """
    cache = getattr(_scratch, "bufs", None)
    if cache is None:
        cache = _scratch.bufs = {}
    key = (P, N, dt.str, id(ctx))
    bufs = cache.get(key)
    if bufs is None:
        if len(cache) >= 4:
            cache.clear()
        bufs = cache[key] = (cuda.device_array((P, N), dt), cuda.device_array((P, N), dt))
    return bufs


def _multiprocessors(ctx):
    """The multiprocessor count of ctx's device (looked up once per device)."""
    dev = ctx.device
    n = _SMS.get(dev.id)
    if n is None:
        n = _SMS[dev.id] = dev.MULTIPROCESSOR_COUNT
    return n


_SMS = {}


def _launch_backward(dx2, dw, db, dy2, x2, mean, rstd, w, center):
    M, N = x2.shape
    dt = np.dtype(x2.dtype)
    is64 = dt == np.float64
    ctx = cuda.current_context()  # looked up once for the two launches and the scratch
    G, K, T, blocks = kernels.backward_plan(M, N, _SIM, 0 if _SIM else _multiprocessors(ctx))
    part_w, part_b = _partials(ctx, blocks, N, dt)  # row p: block p's sums
    d = _dummy(dt)
    _fast(kernels.backward_kernel(K, G, T, is64, _SIM)).launch(
        ctx,
        blocks,
        T,
        dx2,
        part_w,
        part_b,
        dy2,
        x2,
        mean if mean is not None else d,
        rstd,
        w if w is not None else d,
        center,
        w is not None,
    )
    CX, SL = (64, 1) if _SIM else (kernels.SUM_COLS, kernels.SUM_SLICES)
    _fast(kernels.sum_partials_kernel(is64, CX, SL, _SIM)).launch(
        ctx, max(1, math.ceil(N / CX)), (CX, SL), dw, db, part_w, part_b
    )


def forward(fn, x, weight, bias, eps, axis, out, center, with_stats):
    """The device path of layer_norm(_forward) / rms_norm(_forward)."""
    x2, shape, axis, dt = rows(fn, x, axis)
    w = _param(fn, "weight", weight, shape, axis, dt)
    b = _param(fn, "bias", bias, shape, axis, dt)
    eps = _args.check_eps(fn, eps)
    M, N = x2.shape
    if out is not None:
        y = like(fn, "out", out, shape, dt, "the shape of x")
    else:
        y = cuda.device_array(shape, dt)
    y2 = _shaped(y, M, N)
    mean = cuda.device_array(M, dt) if with_stats and center else None
    rstd = cuda.device_array(M, dt) if with_stats else None
    _launch_forward(y2, mean, rstd, x2, w, b, eps, center)
    if not with_stats:
        return y
    sshape = _args.stats_shape(shape, axis)
    if center:
        return y, _shaped(mean, *sshape), _shaped(rstd, *sshape)
    return y, _shaped(rstd, *sshape)


def backward(fn, dy, x, mean, rstd, weight, axis, center):
    """The device path of layer_norm_backward / rms_norm_backward."""
    x2, shape, axis, dt = rows(fn, x, axis)
    M, N = x2.shape
    dy2 = _shaped(like(fn, "dy", dy, shape, dt, "the shape of x"), M, N)
    sshape = _args.stats_shape(shape, axis)
    what = "x.shape[:axis] + (1,) * k, as returned by the forward pass"
    m = _shaped(like(fn, "mean", mean, sshape, dt, what), M) if center else None
    r = _shaped(like(fn, "rstd", rstd, sshape, dt, what), M)
    w = _param(fn, "weight", weight, shape, axis, dt)
    dx = cuda.device_array(shape, dt)
    dw = cuda.device_array(N, dt)
    db = cuda.device_array(N, dt)
    if M == 0:
        zeros = np.zeros(N, dt)
        dw.copy_to_device(zeros)
        db.copy_to_device(zeros)
    else:
        _launch_backward(_shaped(dx, M, N), dw, db, dy2, x2, m, r, w, center)
    S = shape[axis:]
    if center:
        return dx, _shaped(dw, *S), _shaped(db, *S)
    return dx, _shaped(dw, *S)
