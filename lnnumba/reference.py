"""Float64 NumPy reference of every operation: the executable form of the specification.

Plain, readable, slow; used by the tests (and as documentation), never on a fast path. Semantics
follow ONNX ``LayerNormalization`` / ``RMSNormalization``: normalize over the dimensions from
``axis`` to the last; ``weight``/``bias`` have shape ``x.shape[axis:]``; the saved ``mean`` and
``rstd`` have shape ``x.shape[:axis] + (1,) * k`` (the reduced dimensions kept as size 1).
Arguments are converted to float64; ``weight``/``bias`` ``None`` mean 1 and 0.
"""

import numpy as np


def _axes(x, axis):
    axis = axis % x.ndim
    return tuple(range(axis, x.ndim))


# --- layer norm -------------------------------------------------------------------------------


def layer_norm_forward(x, weight=None, bias=None, eps=1e-5, axis=-1):
    """Returns (y, mean, rstd), float64. x: (..., *S); weight, bias: S or None."""
    x = np.asarray(x, np.float64)
    red = _axes(x, axis)
    mean = x.mean(axis=red, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=red, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    y = (x - mean) * rstd
    if weight is not None:
        y = y * np.asarray(weight, np.float64)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return y, mean, rstd


def layer_norm_backward(dy, x, mean, rstd, weight=None, axis=-1):
    """Returns (dx, dweight, dbias), float64. dy, x: (..., *S); mean, rstd as saved."""
    dy = np.asarray(dy, np.float64)
    x = np.asarray(x, np.float64)
    red = _axes(x, axis)
    batch = tuple(range(0, red[0]))
    xhat = (x - mean) * rstd
    gy = dy if weight is None else dy * np.asarray(weight, np.float64)
    dx = rstd * (
        gy  # the direct term
        - gy.mean(axis=red, keepdims=True)  # through the mean
        - xhat * (gy * xhat).mean(axis=red, keepdims=True)  # through the variance
    )
    return dx, (dy * xhat).sum(axis=batch), dy.sum(axis=batch)


# --- RMSNorm ----------------------------------------------------------------------------------


def rms_norm_forward(x, weight=None, eps=1e-6, axis=-1):
    """Returns (y, rstd), float64. x: (..., *S); weight: S or None."""
    x = np.asarray(x, np.float64)
    red = _axes(x, axis)
    rstd = 1.0 / np.sqrt((x * x).mean(axis=red, keepdims=True) + eps)
    y = x * rstd
    if weight is not None:
        y = y * np.asarray(weight, np.float64)
    return y, rstd


def rms_norm_backward(dy, x, rstd, weight=None, axis=-1):
    """Returns (dx, dweight), float64. dy, x: (..., *S); rstd as saved."""
    dy = np.asarray(dy, np.float64)
    x = np.asarray(x, np.float64)
    red = _axes(x, axis)
    batch = tuple(range(0, red[0]))
    xhat = x * rstd
    gy = dy if weight is None else dy * np.asarray(weight, np.float64)
    dx = rstd * (gy - xhat * (gy * xhat).mean(axis=red, keepdims=True))
    return dx, (dy * xhat).sum(axis=batch)
