"""Helpers shared by the test modules (CPU and GPU)."""

import numpy as np


def make(rng, shape, dtype):
    """Test data of ``dtype``: N(0.5, 2) entries, so rows have a mean to remove."""
    return (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)


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


def fd_check(loss, targets, h=1e-6, tol=1e-6):
    """Compares each (array, gradient) pair in ``targets`` with central finite differences of
    ``loss()`` (a float64 function of the arrays, which are perturbed in place and restored)."""
    for arr, grad in targets:
        assert grad.shape == arr.shape
        flat, gflat = arr.reshape(-1), grad.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + h
            fp = loss()
            flat[i] = old - h
            fm = loss()
            flat[i] = old
            num = (fp - fm) / (2 * h)
            assert abs(num - gflat[i]) < tol * (1 + abs(num)), (i, num, gflat[i])


def spy_drivers(monkeypatch, record):
    """Calls ``record(name, args)`` on every call of a CPU driver (``forward_serial``,
    ``forward_parallel``, ``backward_serial``, ``backward_parallel``) for the rest of the test:
    the drivers are called through their entry points (``cpu.norm.entry_point``), made anew
    here."""
    from lnnumba.cpu import norm as K

    entry_point = K.entry_point

    def spied_entry(dispatcher, args, inputs=()):
        f = entry_point(dispatcher, args, inputs)
        name = dispatcher.__name__

        def spied(*a):
            record(name, a)
            return f(*a)

        return spied

    monkeypatch.setattr(K, "entry_point", spied_entry)
    for entries in ("forward_entries", "forward_parallel_entries", "backward_entries"):
        monkeypatch.setattr(K, entries, {})
