"""Public layer norm and RMSNorm: check the arguments once, allocate, call one kernel.

NumPy arrays run on the CPU kernels, into outputs from ``_memory.empty`` (which reuses the
memory of large ones); device arrays (Numba's, or anything exporting
``__cuda_array_interface__``: CuPy arrays, PyTorch CUDA tensors) run on the CUDA kernels and
return Numba device arrays (see ``lnnumba.gpu.norm``).

Semantics follow ONNX ``LayerNormalization`` / ``RMSNormalization`` (see ``lnnumba.reference``
for the executable specification and ``lnnumba._args`` for the dtype rules).
"""

import numpy as np

from . import _args, _memory
from .cpu import norm as _cpu

_ndarray = np.ndarray
_in_kernel_form = _args.in_kernel_form
_SMALL = _cpu.PARALLEL_MIN_ELEMENTS  # x.size below which the forward runs serially
# The largest input (bytes) that the short paths (``_small``, ``_small_stats``,
# ``_small_backward``) take; larger ones take the full checks, whose cost is small beside them.
_DIRECT_MAX_BYTES = _cpu.FORWARD_BLOCK_MIN_BYTES


def _empty_like_rows(x, dy=None):
    """An uninitialized array of x's shape and dtype (C order) for the outputs: from
    ``_memory``'s pool from ``_memory.POOL_MIN_BYTES`` up, else ``np.empty`` (at batch one the
    pool's call would cost a third of the call). A pooled one is placed, within a cache line or
    a page, where the pass that writes it wants it: without dy, a forward pass's y
    (``_cpu.forward_out_place``); with dy (the rows' gradient, x's shape and dtype), a
    backward pass's dx (``_cpu.backward_out_place``)."""
    if x.nbytes < _memory.POOL_MIN_BYTES:
        return np.empty(x.shape, x.dtype)
    if dy is None:
        return _memory.empty(x.shape, x.dtype, *_cpu.forward_out_place(x))
    return _memory.empty(x.shape, x.dtype, *_cpu.backward_out_place(dy, x))


_GPU = None


def _gpu():
    """The CUDA launchers, imported on first use (needs numba-cuda; the CPU path never does)."""
    global _GPU
    if _GPU is None:
        from .gpu import norm

        _GPU = norm
    return _GPU


# --- layer norm -------------------------------------------------------------------------------


def layer_norm(x, weight=None, bias=None, *, eps=1e-5, axis=-1, out=None):
    """Layer normalization: ``(x - mean) / sqrt(var + eps) * weight + bias``.

    The mean and (biased) variance are taken per example over the dimensions ``x.shape[axis:]``.

    Parameters
    ----------
    x : ndarray, shape (*B, *S) with S = x.shape[axis:]
        float32 or float64 (computed natively), float16 (computed in float32), integer or bool
        (converted to float64). Any layout, read-only or not; never modified.
    weight, bias : ndarray of shape S and x's result dtype, or None (1 and 0)
    eps : float >= 0, finite
    axis : int, the first normalized dimension (negative counts from the end)
    out : ndarray of x's shape and result dtype, or None
        Where to write the result; may be ``x`` itself (in place).

    Returns
    -------
    y : ndarray, x's shape, the result dtype (float16 for float16 x, float64 for integer x)
        (``out`` itself when given). Outputs of 64 KB or more reuse the memory of freed ones
        and do not own it (see ``lnnumba.release_memory``).

    Raises
    ------
    TypeError
        unsupported dtype (complex, object, strings, ...), dtype mismatch of weight/bias/out,
        non-integer axis, non-numeric eps.
    ValueError
        0-d x, axis out of range, a zero-length normalized dimension, wrong shape of
        weight/bias/out, negative or non-finite eps, read-only out.
    """
    y = _small(x, weight, bias, eps, axis, out, True)
    if y is not None:
        return y
    fn = "layer_norm"
    if type(x) is not np.ndarray and _args.is_device(x):
        g = _gpu()
        y = g.small_forward(x, weight, bias, eps, axis, out, True)
        if y is not None:
            return y
        return g.forward(fn, x, weight, bias, eps, axis, out, True, False)
    x2, w, b, shape, axis, cdt, rdt = _args.prepare(fn, x, weight, bias, axis)
    eps = _args.check_eps(fn, eps)
    if out is None:  # the batch-1 fast path: no further calls
        y2 = _empty_like_rows(x2)
        _cpu.forward_unaliased(y2, None, None, x2, w, b, eps, True)
        return y2 if x2 is x else _shaped(y2, shape, rdt)
    return _forward_into(fn, out, x, x2, w, b, eps, True, shape, cdt, rdt)


def layer_norm_forward(x, weight=None, bias=None, *, eps=1e-5, axis=-1):
    """Layer norm that also returns the statistics the backward pass needs.

    Arguments as ``layer_norm``. Returns ``(y, mean, rstd)``: y of x's shape and result dtype;
    mean and rstd = 1/sqrt(var + eps) of shape ``x.shape[:axis] + (1,) * k`` (the k normalized
    dimensions kept as size 1, as ONNX's Mean/InvStdDev), float32 for float16/float32 x, else
    float64. Raises as ``layer_norm``.
    """
    stats = _small_stats(x, weight, bias, eps, axis, True)
    if stats is not None:
        return stats
    fn = "layer_norm_forward"
    if type(x) is not np.ndarray and _args.is_device(x):
        return _gpu().forward(fn, x, weight, bias, eps, axis, None, True, True)
    x2, w, b, shape, axis, cdt, rdt = _args.prepare(fn, x, weight, bias, axis)
    eps = _args.check_eps(fn, eps)
    M = x2.shape[0]
    y2 = _empty_like_rows(x2)
    mean = np.empty(M, cdt)
    rstd = np.empty(M, cdt)
    _cpu.forward_unaliased(y2, mean, rstd, x2, w, b, eps, True)
    sshape = _args.stats_shape(shape, axis)
    return _shaped(y2, shape, rdt), mean.reshape(sshape), rstd.reshape(sshape)


def layer_norm_backward(dy, x, mean, rstd, weight=None, *, axis=-1):
    """Gradients of ``layer_norm_forward`` with respect to x, weight and bias.

    Parameters
    ----------
    dy : ndarray, x's shape and result dtype: the gradient of the loss with respect to y
    x : ndarray, the forward pass's input
    mean, rstd : ndarray, as returned by ``layer_norm_forward(x, ...)`` (same axis)
    weight : ndarray of shape x.shape[axis:], or None, as given to the forward pass
    axis : int, as given to the forward pass

    Returns
    -------
    (dx, dweight, dbias)
        dx of x's shape; dweight and dbias of shape x.shape[axis:] (returned whether or not the
        forward pass used a weight or bias); all of x's result dtype.

    Raises
    ------
    TypeError, ValueError
        as ``layer_norm``, and for dy/mean/rstd of the wrong shape or dtype.
    """
    grads = _small_backward(dy, x, mean, rstd, weight, axis)
    if grads is not None:
        return grads
    fn = "layer_norm_backward"
    if type(x) is not np.ndarray and _args.is_device(x):
        return _gpu().backward(fn, dy, x, mean, rstd, weight, axis, True)
    x2, shape, axis, cdt, rdt = _args.rows(fn, x, axis)
    N = x2.shape[1]
    dy2 = _args.like_x(fn, "dy", dy, shape, N, cdt, rdt)
    m = _args.stat(fn, "mean", mean, shape, axis, cdt)
    r = _args.stat(fn, "rstd", rstd, shape, axis, cdt)
    w = _args.param(fn, "weight", weight, shape, axis, cdt, rdt)
    dx2 = _empty_like_rows(x2, dy2)
    dw = np.empty(N, cdt)
    db = np.empty(N, cdt)
    _cpu.backward(dx2, dw, db, dy2, x2, m, r, w)
    return _shaped(dx2, shape, rdt), _shaped(dw, shape[axis:], rdt), _shaped(db, shape[axis:], rdt)


# --- RMSNorm ----------------------------------------------------------------------------------


def rms_norm(x, weight=None, *, eps=1e-6, axis=-1, out=None):
    """RMS normalization: ``x / sqrt(mean(x**2) + eps) * weight`` over ``x.shape[axis:]``.

    Arguments, dtypes, result and errors as ``layer_norm`` (there is no bias).
    """
    y = _small(x, weight, None, eps, axis, out, False)
    if y is not None:
        return y
    fn = "rms_norm"
    if type(x) is not np.ndarray and _args.is_device(x):
        g = _gpu()
        y = g.small_forward(x, weight, None, eps, axis, out, False)
        if y is not None:
            return y
        return g.forward(fn, x, weight, None, eps, axis, out, False, False)
    x2, w, _, shape, axis, cdt, rdt = _args.prepare(fn, x, weight, None, axis)
    eps = _args.check_eps(fn, eps)
    if out is None:
        y2 = _empty_like_rows(x2)
        _cpu.forward_unaliased(y2, None, None, x2, w, None, eps, False)
        return y2 if x2 is x else _shaped(y2, shape, rdt)
    return _forward_into(fn, out, x, x2, w, None, eps, False, shape, cdt, rdt)


def rms_norm_forward(x, weight=None, *, eps=1e-6, axis=-1):
    """RMSNorm that also returns ``rstd = 1/sqrt(mean(x**2) + eps)`` for the backward pass.

    Returns ``(y, rstd)``, shapes and dtypes as ``layer_norm_forward``. Raises as ``layer_norm``.
    """
    stats = _small_stats(x, weight, None, eps, axis, False)
    if stats is not None:
        return stats
    fn = "rms_norm_forward"
    if type(x) is not np.ndarray and _args.is_device(x):
        return _gpu().forward(fn, x, weight, None, eps, axis, None, False, True)
    x2, w, _, shape, axis, cdt, rdt = _args.prepare(fn, x, weight, None, axis)
    eps = _args.check_eps(fn, eps)
    y2 = _empty_like_rows(x2)
    rstd = np.empty(x2.shape[0], cdt)
    _cpu.forward_unaliased(y2, None, rstd, x2, w, None, eps, False)
    return _shaped(y2, shape, rdt), rstd.reshape(_args.stats_shape(shape, axis))


def rms_norm_backward(dy, x, rstd, weight=None, *, axis=-1):
    """Gradients of ``rms_norm_forward`` with respect to x and weight.

    Arguments as ``layer_norm_backward`` without ``mean``. Returns ``(dx, dweight)``: dx of x's
    shape, dweight of shape x.shape[axis:] (returned whether or not the forward used a weight),
    both of x's result dtype. Raises as ``layer_norm_backward``.
    """
    grads = _small_backward(dy, x, None, rstd, weight, axis)
    if grads is not None:
        return grads
    fn = "rms_norm_backward"
    if type(x) is not np.ndarray and _args.is_device(x):
        return _gpu().backward(fn, dy, x, None, rstd, weight, axis, False)
    x2, shape, axis, cdt, rdt = _args.rows(fn, x, axis)
    N = x2.shape[1]
    dy2 = _args.like_x(fn, "dy", dy, shape, N, cdt, rdt)
    r = _args.stat(fn, "rstd", rstd, shape, axis, cdt)
    w = _args.param(fn, "weight", weight, shape, axis, cdt, rdt)
    dx2 = _empty_like_rows(x2, dy2)
    dw = np.empty(N, cdt)
    _cpu.backward(dx2, dw, None, dy2, x2, None, r, w)
    return _shaped(dx2, shape, rdt), _shaped(dw, shape[axis:], rdt)


def _small(x, w, b, eps, axis, out, center):
    """``layer_norm`` (center) or ``rms_norm`` of x over its last axis: y, or None unless every
    argument is already in the kernels' form (``_args.in_kernel_form``; out None, or a writeable
    C-contiguous ndarray of x's shape and dtype that is x itself or shares no memory with it)
    and, for the serial kernel's sizes, its entry point is compiled. The caller then runs the
    full checks, which raise for bad arguments.

    At batch 1 the checks are most of a call's cost; these are the fewest that prove the
    arguments valid, and the serial kernel's entry point is called without Numba's type
    dispatch. Larger inputs go straight to ``cpu.norm.forward_unaliased`` (serial or parallel;
    the overlap of out and x is known from here), skipping the full checks: measured side by
    side on 2 cores, float32, 0.5-0.6 us less a call, 1.04-1.07x faster from 64x1024 to
    256x1024 and 64x4096.
    """
    if not (
        _in_kernel_form(x, w, b, axis, eps, _DIRECT_MAX_BYTES)
        and (
            out is None
            or (
                type(out) is _ndarray
                and out.dtype is x.dtype
                and out.shape == x.shape
                and out.flags.c_contiguous
                and out.flags.writeable
                and (out is x or not np.may_share_memory(out, x))
            )
        )
    ):
        return None
    dt = x.dtype
    inplace = out is x
    if x.size >= _SMALL:
        y = out if out is not None else _empty_like_rows(x)
        _cpu.forward_unaliased(None if inplace else y, None, None, x, w, b, eps, center)
        return y
    f = _cpu.forward_entries.get((dt, inplace, True, True, w is None, b is None))
    if f is None:
        return None
    y = np.empty(x.shape, dt) if out is None else out
    f(None if inplace else y, None, None, x, w, b, eps, center, False, False, 1)
    return y


def _small_stats(x, w, b, eps, axis, center):
    """``layer_norm_forward`` (center: (y, mean, rstd)) or ``rms_norm_forward`` ((y, rstd)),
    or None unless every argument is already in the kernels' form (``_args.in_kernel_form``).
    The full checks and their reshaping cost about 1.5 us, half of a batch-1 call."""
    if not _in_kernel_form(x, w, b, axis, eps, _DIRECT_MAX_BYTES):
        return None
    M = x.shape[0]
    dt = x.dtype
    y = _empty_like_rows(x)
    rstd = np.empty(M, dt)
    if not center:
        _cpu.forward_unaliased(y, None, rstd, x, w, None, eps, False)
        return y, rstd.reshape(M, 1)
    mean = np.empty(M, dt)
    _cpu.forward_unaliased(y, mean, rstd, x, w, b, eps, True)
    return y, mean.reshape(M, 1), rstd.reshape(M, 1)


def _small_backward(dy, x, mean, rstd, w, axis):
    """``layer_norm_backward`` (mean given) or ``rms_norm_backward`` (mean None) of a 2-d
    ndarray x of up to ``_DIRECT_MAX_BYTES`` over its last axis: the gradients, or None unless
    every argument is already in the kernels' form (x and dy C-contiguous float32/float64 of
    one shape and dtype with a nonzero row length N; mean and rstd C-contiguous (M, 1) ndarrays
    of that dtype, as the forward pass returns them; w None or a C-contiguous (N,) ndarray of
    that dtype). The caller then runs the full checks, which raise for bad arguments.

    The full checks cost about 3 us a call: at 64x1024 float32 a fifth of the call, at batch
    one most of it."""
    if not _in_kernel_form(x, w, None, axis, 0.0, _DIRECT_MAX_BYTES):  # x and w as forward's
        return None
    dt = x.dtype
    M = x.shape[0]
    stat = (M, 1)
    if not (
        type(dy) is _ndarray
        and dy.dtype is dt
        and dy.shape == x.shape
        and dy.flags.c_contiguous
        and type(rstd) is _ndarray
        and rstd.dtype is dt
        and rstd.shape == stat
        and rstd.flags.c_contiguous
        and (
            mean is None
            or (
                type(mean) is _ndarray
                and mean.dtype is dt
                and mean.shape == stat
                and mean.flags.c_contiguous
            )
        )
    ):
        return None
    dx = _empty_like_rows(x, dy)
    dw = np.empty(x.shape[1], dt)
    if mean is None:
        _cpu.backward(dx, dw, None, dy, x, None, rstd.reshape(M), w)
        return dx, dw
    db = np.empty(x.shape[1], dt)
    _cpu.backward(dx, dw, db, dy, x, mean.reshape(M), rstd.reshape(M), w)
    return dx, dw, db


def _forward_into(fn, out, x, x2, w, b, eps, center, shape, cdt, rdt):
    """The forward pass of layer_norm / rms_norm (without statistics) into ``out``.
    x: the caller's array; x2: its (M, N) rows; the rest as ``_args.prepare`` returns."""
    y2, direct = _args.out_rows(fn, out, x, shape, x2.shape[1], cdt, rdt)
    _cpu.forward(y2, None, None, x2, w, b, eps, center)
    if not direct:
        np.copyto(out, y2.reshape(shape), casting="unsafe")
    return out


def _shaped(a, shape, rdt):
    """``a`` reshaped to ``shape`` in the result dtype (``a`` itself, or a view of it, when no
    conversion is needed)."""
    if a.dtype is not rdt:
        a = a.astype(rdt)
    return a if a.shape == shape else a.reshape(shape)
