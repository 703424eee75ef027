"""Losses with their gradients."""

import numpy as np

from .. import _args


def softmax_cross_entropy(logits, targets):
    """Mean softmax cross-entropy and its gradient.

    logits: (N, V) float32/float64; targets: (N,) integers in [0, V). Returns (loss, dlogits):
    loss a Python float (the mean over the N rows), dlogits (N, V) of logits' dtype, the
    gradient of that mean. Numerically stable for large logits (the row maximum is subtracted
    before exponentiating). Raises TypeError/ValueError for bad shapes, dtypes or targets.
    """
    fn = "softmax_cross_entropy"
    logits = _args.as_array(fn, "logits", logits)
    targets = _args.as_array(fn, "targets", targets)
    if logits.ndim != 2 or logits.shape[1] < 1:
        raise ValueError(f"{fn}: logits has shape {logits.shape}, expected (N, V) with V >= 1")
    if logits.dtype not in (np.float32, np.float64):
        raise TypeError(f"{fn}: logits has dtype {logits.dtype}, expected float32 or float64")
    if targets.dtype.kind not in "iu":
        raise TypeError(
            f"{fn}: targets must be integers (class indices), got dtype {targets.dtype}"
        )
    N, V = logits.shape
    if targets.shape != (N,):
        raise ValueError(f"{fn}: targets has shape {targets.shape}, expected {(N,)}")
    if N == 0:
        raise ValueError(f"{fn}: empty batch (N = 0); the mean loss is undefined")
    if targets.min() < 0 or targets.max() >= V:
        raise ValueError(
            f"{fn}: targets must lie in [0, {V}), got values {targets.min()}..{targets.max()}"
        )
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    rows = np.arange(N)
    loss = float(np.mean(np.log(s[:, 0]) - z[rows, targets]))
    d = e / s
    d[rows, targets] -= 1
    d /= N
    return loss, d.astype(logits.dtype, copy=False)
