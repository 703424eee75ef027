"""Large output arrays that reuse freed memory instead of fresh pages.

An array of 32 MB or more (glibc's largest threshold for serving an allocation from its heap)
is mapped fresh from the operating system on every allocation and unmapped when freed, and the
OS zeroes each fresh page on first touch. Measured on the project's 2-core machine, that cost
more than the computation: a 4096x1024 float64 ``layer_norm`` took 4.1 ms allocating its output
against 1.7 ms from reused memory, its backward 6.0 ms against 2.6-4.0 ms.

``empty`` hands out such arrays from a pool of freed buffers: an array's memory goes back to the
pool when the array and every view of it are gone, and the next allocation of the same number
of bytes takes it. Smaller arrays come from ``np.empty``, unless the caller lowers the bound:
the recurrent cells take their internal buffers from the pool from 1 MB
(``nn.cells.WORK_POOL_MIN_BYTES``). A forward and backward pass of an LSTM at T=100, B=32,
H=256 holds about 60 MB of them at once; from ``np.empty`` they cost about 4000 page faults
every training step, as glibc's heap hands the freed memory back to the operating system and
maps it anew. The pool keeps at most
``POOL_MAX_BYTES`` of free memory; ``release_memory()`` (public as ``lnnumba.release_memory``)
hands it all back to the operating system.

A pooled array does not own its memory (``a.flags.owndata`` is False; ``a.base`` is the object
that gives it back), so ``a.resize`` cannot resize it in place.
"""

import math
import os
import threading

import numpy as np

# Arrays of at least this many bytes come from the pool.
POOL_MIN_BYTES = 32 << 20
# Free memory the pool keeps for reuse, at most; a buffer freed past this is released.
POOL_MAX_BYTES = 512 << 20
# Alignment of a pooled array's data (a cache line, and an AVX-512 vector).
_ALIGN = 64

_free = {}  # size in bytes -> free buffers (uint8 arrays of size + _ALIGN bytes)
_free_bytes = 0
_lock = threading.RLock()  # reentrant: a lease freed by the garbage collector inside a locked
# section, on the same thread, gives its buffer back through the same lock


def _new_lock():
    """A fresh lock in a forked child: the parent's may have been held by another thread."""
    global _lock
    _lock = threading.RLock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_new_lock)


class _Lease:
    """The owner of one pooled array's memory: the array's ``base``. Exposes the memory through
    ``__array_interface__``; returns the buffer to the pool when it is collected."""

    __slots__ = ("_buf", "_nbytes", "__array_interface__")

    def __init__(self, buf, nbytes, shape, dtype):
        self._buf = buf  # uint8 (nbytes + _ALIGN,)
        self._nbytes = nbytes
        ptr = buf.ctypes.data
        self.__array_interface__ = {
            "shape": shape,
            "typestr": dtype.str,
            "data": (ptr + (-ptr) % _ALIGN, False),
            "version": 3,
        }

    def __del__(self):
        try:
            _give_back(self._buf, self._nbytes)
        except Exception:  # interpreter shutdown: module state already gone
            pass


def _give_back(buf, nbytes):
    global _free_bytes
    with _lock:
        if _free_bytes + nbytes <= POOL_MAX_BYTES:
            _free.setdefault(nbytes, []).append(buf)
            _free_bytes += nbytes


def _take(nbytes):
    """A free buffer of ``nbytes`` (+ alignment) from the pool, or None."""
    global _free_bytes
    with _lock:
        bufs = _free.get(nbytes)
        if not bufs:
            return None
        _free_bytes -= nbytes
        return bufs.pop()


def empty(shape, dtype, min_bytes=None):
    """``np.empty(shape, dtype)`` (C order), from the pool when it takes ``min_bytes`` or more
    (None: ``POOL_MIN_BYTES``). shape: tuple of ints; dtype: a NumPy dtype."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < (POOL_MIN_BYTES if min_bytes is None else min_bytes):
        return np.empty(shape, dtype)
    buf = _take(nbytes)
    if buf is None:
        buf = np.empty(nbytes + _ALIGN, np.uint8)
    return np.asarray(_Lease(buf, nbytes, tuple(shape), dtype))


def free_bytes():
    """Bytes of free memory the pool holds for reuse."""
    return _free_bytes


def release_memory():
    """Hands the free memory kept for reuse by large outputs and the recurrent cells' buffers
    (see ``lnnumba._memory``) back to the operating system. Arrays still in use keep their
    memory; it is kept for reuse (up to ``POOL_MAX_BYTES``) when they are gone. Takes no
    arguments; returns None."""
    global _free_bytes
    with _lock:
        bufs = list(_free.values())
        _free.clear()
        _free_bytes = 0
    del bufs  # freed here, outside the lock
