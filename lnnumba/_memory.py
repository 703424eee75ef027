"""Output arrays that reuse freed memory instead of fresh pages.

Memory that glibc's ``malloc`` takes fresh from the operating system is zeroed by it page by
page on first touch, and on the project's 2-core machine (a virtual machine) a page fault costs
microseconds. glibc maps allocations above a threshold (128 KB at first, rising as far as 32 MB
as such blocks are freed) fresh every time, and hands the top of its heap back once more than
twice that threshold is free there. A training step's pattern, several outputs alive at once and
freed together, keeps tripping both. Measured on that machine, float32, k layer norms forward
then backward, before the pool took arrays from 1 MB (it took them from 32 MB) and after, in
alternating processes: k=6 at 512x1024 (2 MB each) 3.9-4.4 ms a step with 3000 page faults, then
0.6-0.7 ms with none; k=4 at 1024x1024 4.8-6.7 against 1.0-1.2 ms; k=4 at 2048x1024 6.1-11.7
against 3.4-3.8 ms; k=2 at 4096x1024 6.5-7.2 against 2.9-3.6 ms; k=1 at 6144x1024 about 5.0
against 2.5-2.8 ms. Single calls repeated with the same shape, where glibc does reuse its
memory, ran as fast as before. Arrays far below 1 MB trip it too, once enough of them are freed
together: with the pool taking arrays from 64 KB rather than 1 MB, k=6 at 128x1024 (512 KB each)
ran 5.7x faster (1000 page faults a step before), k=12 at 24x1024 (96 KB) 4x; an LSTM's forward
(T=100, B=4, H=128, 800 KB buffers) 2.3x and an RNN's training step (T=100, B=16, H=128) 1.4x;
single calls from 64 KB to 1 MB within -4% and +11% of their time. At 32 MB and up every
allocation is mapped fresh: a 4096x1024 float64 ``layer_norm`` took 4.1 ms allocating its output
against 1.7 ms from reused memory. An LSTM's training step (T=100, B=32, H=256) holds about 60
MB of buffers of 1-13 MB, and took about 4000 page faults a step.

``empty`` hands out arrays of ``POOL_MIN_BYTES`` or more from a pool of buffers it has
allocated: each array it returns is a view of one of them (its ``base``), and a buffer is taken
again, for an array of the same shape and dtype, only once no array or view of it is alive,
which its reference count tells (every view of a view of it refers to it directly; checked on
import, and where the interpreter counts otherwise, every array comes from ``np.empty``). A
buffer is claimed without a lock (see ``empty``): a pooled array costs about 0.3 us, against
0.12 us for ``np.empty``; smaller arrays come from ``np.empty``. Before it allocates a new
buffer, the pool drops free ones, used longest ago first, until they total at most
``POOL_MAX_BYTES``. A program that repeats its steps with the same shapes allocates nothing new
after its first step, so the bound does not touch it; one whose shapes keep changing keeps
little. The HTTP server of examples/serve.py, whose batches of prefixes have ever new shapes
(benchmarks/load_test.py, 1600 requests), grew from 174 MB to 277-292 MB with a bound of 64 MB,
and to 205-229 MB with 16 MB; before the pool took arrays below 32 MB, from 197 MB to 211-222
MB. ``release_memory()`` (public as ``lnnumba.release_memory``) hands all the free buffers back.

A pooled array does not own its memory (``a.flags.owndata`` is False; ``a.base`` is the pool's
buffer), so ``a.resize`` cannot resize it in place.
"""

import itertools
import math
import os
import sys
import threading

import numpy as np

# Arrays of at least this many bytes come from the pool.
POOL_MIN_BYTES = 64 << 10
# Free buffers the pool keeps when it allocates a new one, at most (bytes).
POOL_MAX_BYTES = 16 << 20
# Alignment of a pooled array's data (a cache line, and an AVX-512 vector).
_ALIGN = 64
# A page: the block within which ``empty`` places an array when asked for (``align``).
PAGE = 4096

# (shape, dtype), or (shape, dtype, offset, align) for arrays placed otherwise (see ``empty``) ->
# the pool's buffers for such arrays, each an entry [buf, template, last use, nbytes]: buf a
# uint8 array of nbytes + align bytes, template the (shape, dtype) view of its part at the
# offset, of which ``empty`` returns views.
_pool = {}
# (shape, dtype) -> bytes, for the last _SIZES_MAX or so asked for: a small array then comes
# from np.empty without its size worked out again (0.3-0.5 us, twice np.empty's own cost).
_sizes = {}
_SIZES_MAX = 256
_ticks = itertools.count()
_lock = threading.RLock()  # reentrant: a garbage collection inside a locked section may run a
# finalizer that allocates


def _refs(entry):
    """The reference count of an entry's buffer, as every check here reads it."""
    return sys.getrefcount(entry[0])


def _calibrate():
    """The reference count ``_refs`` reads for a buffer no array uses (its entry and its
    template refer to it; what else the interpreter counts differs between versions), checked
    to rise by one for each view and view of a view and to fall back when they go; None, which
    turns the pool off, if it does not behave so, or if the interpreter runs without the GIL
    (free-threaded CPython): there another thread's view of a buffer need not show in the
    count this thread reads, and the count's changes are what make a buffer free."""
    if not getattr(sys, "_is_gil_enabled", lambda: True)():
        return None
    buf = np.empty(64 + _ALIGN, np.uint8)
    template = buf[:64].view(np.float32).reshape(4, 4)
    entry = [buf, template, 0, 64]
    del buf
    idle = _refs(entry)
    a = template.view()
    b = a[::2]
    one_two = (_refs(entry), b.base is entry[0])
    del a
    two_one = _refs(entry)
    del b
    if one_two == (idle + 2, True) and two_one == idle + 1 and _refs(entry) == idle:
        return idle
    return None


# A buffer's reference count while no array uses it.
_IDLE_REFS = _calibrate()


def _new_lock():
    """A fresh lock in a forked child: the parent's may have been held by another thread."""
    global _lock
    _lock = threading.RLock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_new_lock)


def empty(shape, dtype, offset=0, align=_ALIGN):
    """``np.empty(shape, dtype)`` (C order), from the pool when it takes ``POOL_MIN_BYTES`` or
    more, its data then ``offset`` bytes past an ``align``-byte boundary. shape: tuple of ints;
    dtype: a NumPy dtype; align: 64 (a cache line) or ``PAGE``; offset: a multiple of the
    dtype's itemsize below ``align``."""
    key = (shape, dtype)
    nbytes = _sizes.get(key)
    if nbytes is not None and nbytes < POOL_MIN_BYTES:
        return np.empty(shape, dtype)
    pkey = (shape, dtype, offset, align) if offset or align != _ALIGN else key
    es = _pool.get(pkey)
    if es is not None:
        # Claimed without the lock: a view is made first, and kept only if it is then the one
        # view alive. Two threads that both make a view of the same buffer both see two and
        # let go; one that makes its view after another's check sees two. A buffer dropped
        # from the pool meanwhile (``_drop``) stays valid while the view refers to it.
        for e in es:
            if _refs(e) == _IDLE_REFS:
                a = e[1].view()
                if _refs(e) == _IDLE_REFS + 1:
                    e[2] = next(_ticks)
                    return a
                del a
    dtype = np.dtype(dtype)
    if nbytes is None:
        nbytes = math.prod(shape) * dtype.itemsize
        if len(_sizes) >= _SIZES_MAX:
            _sizes.clear()
        _sizes[key] = nbytes
    if nbytes < POOL_MIN_BYTES or _IDLE_REFS is None:
        return np.empty(shape, dtype)
    _make_room()
    buf, template = _aligned_empty(shape, dtype, nbytes, offset, align)
    a = template.view()
    with _lock:
        _pool.setdefault(pkey, []).append([buf, template, next(_ticks), nbytes])
    return a


def _aligned_empty(shape, dtype, nbytes, offset=0, align=_ALIGN):
    """(buf, a): buf a uint8 array of nbytes + align bytes, a the uninitialized (shape, dtype)
    C-ordered view of its part that starts ``offset`` bytes past an align-byte boundary (nbytes
    its size; 0 <= offset < align)."""
    buf = np.empty(nbytes + align, np.uint8)
    k = (offset - buf.ctypes.data) % align
    return buf, buf[k : k + nbytes].view(dtype).reshape(shape)


def empty_at(shape, dtype, offset=0, align=_ALIGN):
    """An uninitialized C-ordered (shape, dtype) array, not from the pool, whose data starts
    ``offset`` bytes past an ``align``-byte boundary (0 <= offset < align; a multiple of the
    dtype's itemsize). It does not own its memory (its ``base`` is a byte buffer)."""
    dtype = np.dtype(dtype)
    return _aligned_empty(shape, dtype, math.prod(shape) * dtype.itemsize, offset, align)[1]


def aligned(a):
    """A C-ordered copy of array ``a`` whose data starts on a 64-byte boundary (a cache line and
    an AVX-512 vector; NumPy's own arrays start wherever malloc puts them, 16 bytes past a line
    as often as not). The copy does not own its memory (its ``base`` is a byte buffer)."""
    a = np.asarray(a)
    out = empty_at(a.shape, a.dtype)
    out[...] = a
    return out


def _idle():
    """(key, entry) of every buffer no array uses."""
    return [(k, e) for k, es in _pool.items() for e in es if _refs(e) == _IDLE_REFS]


def _drop(items):
    """Removes these (key, entry) from the pool; the caller frees them."""
    for k, e in items:
        es = [x for x in _pool[k] if x is not e]  # (by identity: entries hold arrays)
        if es:
            _pool[k] = es
        else:
            del _pool[k]


def _make_room():
    """Before a new buffer joins the pool: drops free buffers, used longest ago first, until
    they total at most ``POOL_MAX_BYTES``."""
    out = []
    with _lock:
        idle = _idle()
        total = sum(e[3] for _, e in idle)
        if total > POOL_MAX_BYTES:
            for k, e in sorted(idle, key=lambda ke: ke[1][2]):
                if total <= POOL_MAX_BYTES:
                    break
                out.append((k, e))
                total -= e[3]
            _drop(out)
        del idle
    del out  # freed here, outside the lock


def free_bytes():
    """Bytes of free memory the pool holds for reuse."""
    with _lock:
        return sum(e[3] for _, e in _idle())


def release_memory():
    """Hands the free memory kept for reuse by large outputs and the recurrent cells' buffers
    (see ``lnnumba._memory``) back to the operating system. Arrays still in use keep their
    memory, and it is kept for reuse when they are gone. Takes no arguments; returns None."""
    with _lock:
        idle = _idle()
        _drop(idle)
    del idle  # freed here, outside the lock
