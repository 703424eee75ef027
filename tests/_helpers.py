"""Helpers shared by the test modules (CPU and GPU)."""

import numpy as np


def rel_err(a, b):
    """Norm-wise relative error of a against the reference b (float64)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    nb = np.linalg.norm(b)
    return np.linalg.norm(a - b) / (nb if nb > 0 else 1.0)


def dx_err(dx, dxr, rstd, dy, w):
    """Error of a dx against the reference dxr, relative to the size of the terms dx is made of
    (rstd * dy * w): dx cancels to ~0 for rows of 1-2 elements, where LN's output does not depend
    on x, and a relative error against ~0 means nothing."""
    scale = max(
        np.linalg.norm(dxr), np.linalg.norm(rstd * dy.astype(np.float64) * (1 if w is None else w))
    )
    return np.linalg.norm(np.asarray(dx, np.float64) - dxr) / (scale if scale > 0 else 1.0)
