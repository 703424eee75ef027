"""Shared helpers: seeded data and the copy roofline."""

import numpy as np
from numba import njit, prange


def data(shape, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@njit(parallel=True, nogil=True, cache=True)
def copy_parallel(dst, src):
    """dst[:] = src with the rows split over threads: the bytes a forward pass moves."""
    for i in prange(src.shape[0]):
        for j in range(src.shape[1]):
            dst[i, j] = src[i, j]


def best_seconds(f, n=3):
    """Best wall time of f over n calls (for track_ benchmarks, which time themselves)."""
    import time

    f()
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best
