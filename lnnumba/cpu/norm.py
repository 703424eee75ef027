"""CPU kernels for layer norm and RMSNorm: Numba ``@njit`` C-style loops.

Everything here works on a 2-d row view of the data: ``M`` rows (examples) of ``N`` elements
(the normalized dimensions, flattened). The caller (``lnnumba.norm``) validates arguments and
builds those views; kernels trust them.

One row routine per operation serves every path: the serial drivers loop over rows, the parallel
drivers split the rows among threads, and the recurrent cells call the row routines directly.
The forward's blocks of four rows have their own routines (``rows4_*``), the same arithmetic
with each column's parameters loaded once per four rows, taken where that is faster; the
backward's second pass runs a cache line at a time in vector registers (``lines_backward``).
LN and RMSNorm share the routines: ``center=False`` skips the mean (RMSNorm). Large outputs
(``STREAM_MIN_BYTES``) are written with non-temporal stores, a cache line at a time from vector
registers, one row at a time while the rows ahead are prefetched (``_forward_rows_stream``,
``_backward_rows_stream``; see ``lnnumba.cpu.stream``).

Numerics
--------
Arithmetic runs in the storage dtype (float32 at full SIMD width), made accurate by shifting
each row before summing, never E[x^2]-E[x]^2, so float32 rows with a large mean (1e4 + N(0, 1))
stay accurate: one pass of sums shifted by the row's first element where that cancels at most
two bits (``row_stats_one_pass``), else one more pass shifted by the mean that pass found
(``row_stats_retry``), else the two passes of ``row_stats`` (the mean, then the sum of squared
deviations). Rows of ``LONG_ROW_MIN`` elements or more sum in blocks of ``LONG_BLOCK`` in the
storage dtype, the blocks' sums added in float64. The weight-gradient partial sums are added
up across chunks in float64.
``fastmath`` is limited to flags that keep NaN/Inf semantics (no ``nnan``/``ninf``): a NaN or
Inf in a row poisons that row only.

Argument order (as in the rest of the package): outputs, inputs, parameters, sizes/scalars.
Optional arrays are ``None``; Numba compiles a specialization per None/array combination and
prunes the dead branches.
"""

import threading
import time

import numba
import numpy as np
from numba import get_num_threads, njit, prange, types
from numba.extending import overload
from numba.np.ufunc import parallel as _numba_parallel

from .._memory import PAGE
from .stream import (
    LINE_BYTES,
    line_backward_masked,
    line_head,
    line_len,
    lines_backward,
    prefetch_l1,
    store_fence,
    store_lines_backward,
    store_lines_normalized,
    store_seam_backward,
    store_seam_normalized,
)

# Flags for reduction loops: reassociation lets LLVM vectorize them; no nnan/ninf, so NaN/Inf
# propagate.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

# Below this many elements a call runs serially: a parallel launch costs more than it saves.
PARALLEL_MIN_ELEMENTS = 1 << 16
# The same under a threading layer whose launches are slow (``SLOW_LAUNCH_LAYERS``): there a
# parallel call measured 2x slower than a serial one at 256x1024 float32 and 1.1x faster at
# 512x1024 (forward and backward), on 2 cores.
SLOW_LAUNCH_PARALLEL_MIN_ELEMENTS = 1 << 19

# Above this many bytes of input the forward's output pass takes four rows at a time. Measured
# side by side: about 1.1x faster at 8192x4096 float32 (128 MB), no faster at 4096x1024 (16 MB),
# and up to 2x slower on inputs that fit the cores' L2 caches (256x1024), where the one-row pass
# reads its row straight back from L1.
FORWARD_BLOCK_MIN_BYTES = 16 << 20

# Rows of the blocked forward (``FORWARD_BLOCK_MIN_BYTES``) longer than this run each block's
# output pass fused with the statistics pass of the next (``rows4_forward_fused``), so the next
# rows stream in from memory while this block computes: 1.12x faster at 8192x4096 float32, and
# 1.5x slower at 4096x1024, where the row passes stay apart (the eight rows a fused pass touches
# would not fit L1).
FUSE_MIN_ROW_BYTES = 4096

# From this many bytes of output, the forward pass writes it with non-temporal stores (see
# ``lnnumba.cpu.stream`` and ``_forward_rows_stream``), and from ``BACKWARD_STREAM_MIN_BYTES``
# the backward (``_backward_rows_stream``). At 16 MB (4096x1024 float32) the inputs and outputs
# together fill a 32 MB last-level cache, and which stores win depends on the machine and on
# what else runs on it. Measured side by side on 2 cores, streamed against ordinary stores,
# forward / backward: at 4096x1024 float32 0.90x / 1.03x on an Intel Xeon, 0.70x / 1.5x on an
# AMD EPYC (the backward against its former blocks of four); on an AMD EPYC (Zen 3, AVX2)
# with the memory busy, forward 1.9-2.2x at 4096x1024, 1.0x at 2048x1024 (8 MB), 0.65x at
# 1024x1024 (4 MB, in the cache); 1.14-1.26x / 1.19-1.30x at 8192x1024 float32 and 4096x1024
# float64 (32 MB), 1.47x / 1.30x at 8192x4096 float32 (128 MB), on the Xeon. In place the
# forward touches half the bytes, and streams from twice ``STREAM_MIN_BYTES``: on the Zen 3,
# streamed against ordinary stores in place, 0.65-0.68x at 2048x1024 and 4096x1024, 1.13x at
# 8192x1024.
STREAM_MIN_BYTES = 16 << 20
BACKWARD_STREAM_MIN_BYTES = 16 << 20
# Rows longer than this are not streamed: the streamed passes read each row twice, and a longer
# row, with the next one prefetched, would no longer stay in L2 between the two reads.
STREAM_MAX_ROW_BYTES = 128 << 10

# The streamed passes take their rows one at a time, x (and dy) ``STREAM_PREFETCH_BYTES`` ahead
# (in all, at least the next row) prefetched (``_forward_rows_stream``, ``_backward_rows_stream``).
# Rows of more than 16 KB of inputs used to go in blocks of four, the next block prefetched,
# which measured alike when first measured (one row against blocks: forward 1.0-1.25x at
# 8192x4096, 0.93x at 2048x16384; backward 0.96x at 8192x4096) but, side by side on 2 cores
# (AMD EPYC, Zen 3) with the memory system busier, float32: forward 2.5x at 2048x8192, 2.2x at
# 1024x16384; backward 2.8-3.4x at 2048x4096, 8192x4096, 1024x16384 and 512x32768.
# Rows up to this long (not streamed) go two at a time through the forward's row loop, the
# output pass of the two together (``rows2_forward_at``): each column's w and b loaded once for
# both rows, and twice the work between two rows' scalar statistics. Measured side by side on 2
# cores against the former one row at a time (line by line in vector registers, then the faster
# for such rows), float32, in the machine's fast state: 65536x64 1.17x, 32768x64 1.14-1.19x,
# 16384x128 1.12x, 8192x256 1.18-1.36x, 4096x256 1.24x, 8192x64 1.19x, 16384x32 1.11x, 65536x8
# 1.01x; on one thread 4096x64 1.10x, 1024x256 1.13x, 256x256 1.25x; in its slow state, where
# memory bounds both, 16384x256 0.98x. Longer rows stay one at a time: two rows of 4 KB measured
# 1.06-1.15x faster at 8 MB (2048x1024) but 0.70-0.76x at 16 MB (4096x1024), and 8 KB rows
# (1024x2048) 0.92x.
FORWARD_PAIRS_MAX_ROW_BYTES = 1 << 10
# The forward's row loop (not streamed) asks for the next row (two rows ahead: the next two) in
# L1 before each row, for inputs past the cores' L2 caches and rows of up to a page: the
# hardware prefetchers stop at page boundaries. ``forward_parallel``, float32, 2 threads,
# against no prefetch side by side: 8192x512 1.14-1.4x, 4096x1024 1.04-1.13x; rows of 8 KB
# (2048x2048) 0.92x and 16 KB (1024x4096) 0.95-1.0x, so not those.
PREFETCH_MIN_BYTES = 2 << 20
PREFETCH_MAX_ROW_BYTES = 4 << 10
STREAM_PREFETCH_BYTES = 16 << 10
# From this many rows, a thread's forward row loop takes copies of w and b of its own: rows of
# more than ``FORWARD_PAIRS_MAX_ROW_BYTES``, whole lines long, with w and b at y's place within a
# cache line, each row's output pass split at y's line boundaries (``_forward_rows_lines``), so
# that no vector load or store spans two lines; shorter rows with w and b on a line boundary
# (``_forward_pairs``). NumPy's large arrays all start 16 bytes past a line, and its small ones
# (weights) at any multiple of 16, so each vector of x, y, w and b used to span two. One core,
# 64 rows of 1024 float32 in L2, the output pass alone: 80 ns a row, 48 with all four aligned,
# 60-68 with only w and b or only x and y. For the short rows see ``_forward_pairs``.
LINES_MIN_ROWS = 64

# Where the backward's partial sums for dw and db start within a 4 KB page, in bytes past dx's
# place (see ``_scratch_partials``): multiples of ``LINE_BYTES``, a quarter of a page apart
# from dx and from each other at least.
PARTIALS_W_SHIFT = 1024
PARTIALS_B_SHIFT = 3072

# Rows of at least this many elements take the long-row passes (``_forward_rows_long``,
# ``_backward_rows_long``): their sums run in blocks of ``LONG_BLOCK`` elements in x's dtype,
# the blocks' sums added in float64. The passes for shorter rows sum a whole row in x's dtype,
# in as many partial sums as LLVM's vectorized loop keeps (a few dozen), each of N / 32 or so
# terms. float32 against the float64 reference, norm-wise (y, rstd, dx and dw alike), two rows
# of N(0, 1) summed whole: 3e-7 at 2^18 elements, 2e-6 at 2^20, 1.4e-5 at 2^22, 9e-5 at 2^24;
# RMSNorm of rows of 1e4 + N(0, 1), where every term of the sum of squares is positive: 4e-6,
# 4e-5, 4.3e-4, 1.9e-3. In blocks: 4e-8 to 6e-8 at every one of those lengths, for both.
LONG_ROW_MIN = 1 << 18
LONG_BLOCK = 1 << 12

# Rows per chunk of the backward pass's weight-gradient partial sums (see ``n_chunks``).
_CHUNK_ROWS = 32
_MAX_CHUNKS = 64

# NumPy's error model: a float division by zero gives inf or NaN, as in NumPy, instead of
# raising ZeroDivisionError (which a parallel region cannot even raise cleanly). With eps = 0
# a row of equal elements (an all-zero row for RMSNorm) has rstd = 1/0 = inf and NaN outputs,
# as the reference's.
_jit = dict(nogil=True, cache=True, error_model="numpy")
# Reductions: reassociation lets LLVM vectorize them; each difference inside is a single one,
# which reassociation cannot regroup.
_jit_reduce = dict(_jit, fastmath=FASTMATH)
# Element-wise loops vectorize without reassociation, and must not reassociate: (x - x0) - c
# would become x - (x0 + c), losing the digits the shift keeps.
_jit_elementwise = dict(_jit, fastmath={"contract", "nsz"})


# ---------------------------------------------------------------------------------------------
# Row routines: one example each. Forward and backward side by side.
# ---------------------------------------------------------------------------------------------


@njit(**_jit_reduce)
def row_stats(x, eps, center):
    """Statistics of one row: (x0, c, r) with mean = x0 + c and r = 1/sqrt(var + eps).

    x: (N,) float32/float64. x0 is the mean rounded to x's dtype, c = mean - x0 the rounding
    (float64), r is float64. For RMSNorm (``center=False``) x0 = c = 0 and var is mean(x^2).

    The sums run in x's dtype at full SIMD width and are made accurate by shifting: pass 1 sums
    x - x[0], pass 2 sums (x - x0)^2, each difference exact or nearly (Sterbenz), so the sums add
    numbers of the size of the spread, not of the mean; var = mean((x - x0)^2) - c^2 loses
    nothing because |c| is half an ulp of the mean. No E[x^2] - E[x]^2: a float32 row of
    1e4 + N(0, 1) keeps all its digits.
    """
    n = x.shape[0]
    t = x.dtype.type
    x0 = t(0)
    c = 0.0
    if center:
        k = x[0]
        s = t(0)
        for j in range(n):
            s += x[j] - k
        mean = k + s / n
        x0 = t(mean)
        c = mean - x0
    v = t(0)
    for j in range(n):
        d = x[j] - x0
        v += d * d
    return x0, c, 1.0 / np.sqrt(max(v / n - c * c, 0.0) + eps)


@njit(**_jit_reduce)
def row_sums(x, k):
    """One pass of shifted sums: (sum(x - k), sum((x - k)^2)) in x's dtype. x: (N,)."""
    t = x.dtype.type
    s1 = t(0)
    s2 = t(0)
    for j in range(x.shape[0]):
        d = x[j] - k
        s1 += d
        s2 += d * d
    return s1, s2


@njit(inline="always", **_jit)
def row_stats_one_pass(x, k, eps, center):
    """``row_stats`` in one pass over the row where that is exact enough: (x0, c, r, ok), ok
    False where the caller must take the fallback ``row_stats_retry`` instead.

    x: (N,); k: the shift, x[0] (0 for RMSNorm), in x's dtype. With it, var = mean((x-k)^2) -
    mean(x-k)^2 cancels by a factor 1 + (mean - k)^2 / var. An element of the row is usually
    within a few standard deviations of the mean, so the one pass loses at most a few bits;
    when the shift is far from the mean (an outlier in front) or the sums are not finite, ok is
    False. (x0, c, r) as ``row_stats`` (meaningless where not ok).

    The caller chooses the shift and takes the fallback in its own code, and the row is used
    before any branch here: inlined (Numba IR), a branch on center or ok with the row still
    live kept Numba's reference-count pruning from removing the atomic increments and
    decrements of the arrays around it, which cost more than the statistics of a short row
    (1024x64 float32 with mean and rstd saved, one core: 52 ns a row, 22 without them).

    The shift x[0] is more than sqrt(3) standard deviations from the mean in 8.5% of rows of
    normally distributed numbers, which then take a second pass as well. The mean of the
    first four elements (0.05% of such rows) measured 0.96-1.09x on the streamed forward at
    4096x1024 float32 and no faster on rows in the cache (64x1024 to 256x4096, through
    ``layer_norm``): not kept.
    """
    t = x.dtype.type
    n = x.shape[0]
    s1, s2 = row_sums(x, k)
    return stats_from_sums(t, n, k, s1, s2, eps, center)


@njit(inline="always", **_jit)
def stats_from_sums(t, n, k, s1, s2, eps, center):
    """(x0, c, r, ok) of ``row_stats_one_pass`` from a row's shifted sums s1 = sum(x - k),
    s2 = sum((x - k)^2): t is x's dtype (its scalar type), n the row's length, k the shift
    (x[0], 0 for RMSNorm); ok False where the sums cancel too much or are not finite (the caller
    then takes ``row_stats_retry``). Scalars only.

    Inlined into its callers (Numba IR), and the sums are scaled by 1/n rather than divided by
    n: the scalar float64 divisions of a call took about 35 ns a row, more than the sums of a
    row of 256 float32. Inlined, the statistics of the rows of a block overlap, and one division
    (1/n) is off their critical path."""
    inv = 1.0 / n
    if not center:
        return t(0), 0.0, 1.0 / np.sqrt(s2 * inv + eps), True
    ms = s1 * inv
    var = s2 * inv - ms * ms
    ok = ms * ms <= 3.0 * var  # else cancels more than 2 bits, or NaN/Inf
    mean = k + ms
    x0 = t(mean)
    return x0, mean - x0, 1.0 / np.sqrt(var + eps), ok


@njit(**_jit_reduce)
def row_stats_retry(x, k, eps, center):
    """``row_stats`` of a row whose ``row_stats_one_pass`` was not exact enough (not ok): one
    more pass of shifted sums, shifted by k, the mean that pass found (its x0), near enough the
    mean that nothing cancels; the two passes of ``row_stats`` where even that is not ok (a row
    with a NaN or Inf, sums that overflow, or a spread below the rounding of the mean). Returns
    (x0, c, r) as ``row_stats``.

    x: (N,); k: in x's dtype. Every forward path and the cells' row routine take this
    fallback in their own code (see ``row_stats_one_pass``), for 8.5% of rows of normally
    distributed numbers: one pass where ``row_stats`` takes two, and a mean closer to the
    row's (``row_stats``' first pass adds up the distances to x[0], an outlier here). Through
    ``layer_norm(x, w, b, out=y)`` on 2 cores, float32, against ``row_stats`` as the fallback,
    the median of 30 interleaved rounds' ratios: 4096x1024 1.02-1.06x faster (two runs),
    8192x4096 1.02x, 8192x256 0.98x, 64x1024 1.01x; RMSNorm, which has no fallback, 0.99-1.0x.

    A looser test in ``stats_from_sums`` (``ms * ms <= 15 * var``: up to 4 bits lost, and
    0.01% of such rows falling back) measured 1.07x at 4096x1024 and 1.05x at 64x1024 with
    this fallback: not taken, for those two bits.
    """
    x0, c, r, ok = row_stats_one_pass(x, k, eps, center)
    if ok:
        return x0, c, r
    return row_stats(x, eps, center)


@njit(**_jit)
def row_sums_long(x, k):
    """``row_sums`` of a long row (``LONG_ROW_MIN``): (sum(x - k), sum((x - k)^2)) as float64,
    each block of ``LONG_BLOCK`` elements summed in x's dtype by ``row_sums``. x: (N,)."""
    n = x.shape[0]
    s1 = 0.0
    s2 = 0.0
    for j0 in range(0, n, LONG_BLOCK):
        a, q = row_sums(x[j0 : min(j0 + LONG_BLOCK, n)], k)
        s1 += a
        s2 += q
    return s1, s2


@njit(**_jit)
def row_stats_long(x, eps, center):
    """``row_stats`` of a long row: (x0, c, r) from sums taken in blocks (``row_sums_long``).

    One pass shifted by x[0] (0 for RMSNorm) where that cancels at most two bits
    (``stats_from_sums``); else the two passes of ``row_stats``, the mean from that pass and the
    squared deviations from x0, the mean rounded to x's dtype, in a second. x: (N,)."""
    n = x.shape[0]
    t = x.dtype.type
    k = x[0] if center else t(0)
    s1, s2 = row_sums_long(x, k)
    x0, c, r, ok = stats_from_sums(t, n, k, s1, s2, eps, center)
    if not ok:
        v = row_sums_long(x, x0)[1]
        r = 1.0 / np.sqrt(max(v / n - c * c, 0.0) + eps)
    return x0, c, r


def _out(y, x):
    """The array a forward routine writes: y, or x itself where y is None (in place).

    The drivers take y None for an output that is x's own memory. Written through the same
    array as it is read, a routine's loop vectorizes as it does for a separate output; given
    the same memory as a second array, LLVM's run-time overlap check sends it to its scalar
    loop instead. Measured side by side on 2 cores, forward in place with y None against y
    given as x (two runs, the arrays swapped between them): 2.7-2.9x faster at 64x1024
    float32, 3.7-4.1x at 256x1024, 3.6-3.7x at 8192x256, 3.5-4.2x at 4096x1024, 3.2x at
    512x512 float64, and then 1.1-2x faster than into a separate array; the same at 8192x4096,
    where the streamed passes (``_forward_rows_stream``), intrinsics, need no such analysis.
    Resolved at compile time."""
    return x if y is None else y


@overload(_out, inline="always")
def _out_impl(y, x):
    if isinstance(y, types.NoneType):
        return lambda y, x: x
    return lambda y, x: y


def _rows4(y, i):
    """Rows i..i+3 of y (M, N), a view; None for None (in place, see ``_out``)."""
    return None if y is None else y[i : i + 4]


@overload(_rows4, inline="always")
def _rows4_impl(y, i):
    if isinstance(y, types.NoneType):
        return lambda y, i: None
    return lambda y, i: y[i : i + 4]


@njit(**_jit_elementwise)
def row_forward(y, x, w, b, x0, cr, r):
    """y = ((x - x0) * r - cr) * w + b for one row; ``w``/``b`` may be None (1 and 0).

    y: (N,) out, dtype of x; x: (N,); w, b: (N,) or None; x0, cr, r: scalars in x's dtype, with
    x0, c, r as ``row_stats`` returns them and cr = c * r. The arithmetic of every forward path
    (``store_lines_normalized`` and ``store_seam_normalized`` too): an exact difference x - x0
    (compiled without reassociation, which could regroup it), then one fused multiply-add,
    (x - x0) * r - cr, rounded once, where ((x - x0) - c) * r rounded twice and took one
    operation more.
    """
    for j in range(x.shape[0]):
        _col_out(y, w, b, j, (x[j] - x0) * r - cr)


@njit(**_jit_elementwise)
def row_forward_cols(y, x, i, w, b, x0, cr, r, j0, j1):
    """``row_forward`` of columns j0..j1-1 of row i of y, x: (M, N); y None: into x (see
    ``_out``). Indexed in place rather than through row views: a view made in a loop with a
    branch (the statistics' fallback) kept its reference counting, atomic operations that cost
    a long row several percent; three views of four arrays a row cost about 110 ns a row of
    1024 float32. i, j0, j1: unsigned (np.uint64), which Numba indexes without the wrap of a
    negative index (see ``_cols``): a loop over a signed range(j0, j1) vectorizes with gathers
    and scatters."""
    yo = _out(y, x)
    for j in range(j0, j1):
        v = (x[i, j] - x0) * r - cr
        if w is not None:
            v = v * w[j]
        if b is not None:
            v = v + b[j]
        yo[i, j] = v


def _line_copy(a, off):
    """A copy of a (N,) whose first element lies ``off`` bytes past a cache line boundary (off
    a multiple of a's itemsize, below ``LINE_BYTES``); None for None (an absent weight)."""
    if a is None:
        return None
    buf = np.empty(a.shape[0] + LINE_BYTES // a.itemsize, a.dtype)
    c = _view_at(buf, 1, a.shape[0], off)[0]
    c[...] = a
    return c


@overload(_line_copy, inline="always")
def _line_copy_impl(a, off):
    """``_line_copy`` in compiled code: an overload, resolved by the type of a at compile time
    (a function with a branch on ``a is None``, inlined, kept Numba's reference-count pruning
    from removing the atomic operations of its caller's row views)."""
    if isinstance(a, types.NoneType):
        return lambda a, off: None

    def impl(a, off):
        n = a.shape[0]
        buf = np.empty(n + LINE_BYTES // a.itemsize, a.dtype)
        k = (off - np.intp(buf.ctypes.data)) % LINE_BYTES // buf.itemsize
        c = buf[k : k + n]
        for j in range(n):  # a loop: 90 ns for 1024 float32 with the allocation, a slice 250
            c[j] = a[j]
        return c

    return impl


@njit(**_jit_elementwise)
def rows2_forward_at(y, x, i, w, b, x0, cr, r, x0n, crn, rn):
    """``row_forward_cols`` of every column of rows i and i + 1 at once, loading each column's
    w and b once for the two: (x0, cr, r) are row i's statistics, (x0n, crn, rn) row i + 1's.
    Each column of both rows is read before it is written; y None writes x (see ``_out``)."""
    yo = _out(y, x)
    for j in range(x.shape[1]):
        v = (x[i, j] - x0) * r - cr
        vn = (x[i + 1, j] - x0n) * rn - crn
        if w is not None:
            wj = w[j]
            v = v * wj
            vn = vn * wj
        if b is not None:
            bj = b[j]
            v = v + bj
            vn = vn + bj
        yo[i, j] = v
        yo[i + 1, j] = vn


@njit(inline="always")
def _cols(a, j0, j1):
    """Columns j0..j1-1 of a (N,) array, a view; None for None (an absent weight).

    The column-range routines (``row_forward_range`` and the like) run their loops over such
    views from column 0 rather than over j in range(j0, j1): Numba cannot tell that such a j
    is not negative, wraps every index (a[j] is a[j + N] for j < 0), and LLVM vectorizes the
    wrapping with gathers and scatters, about 1 ns an element."""
    if a is None:
        return None
    return a[j0:j1]


@njit(inline="always")
def _col_out(y, w, b, j, v):
    """Column j of one row's output from its normalized value v: times w[j], plus b[j] (w, b
    None: 1 and 0), into y (N,). Inlined into its callers' loops, which it shares."""
    if w is not None:
        v = v * w[j]
    if b is not None:
        v = v + b[j]
    y[j] = v


@njit(inline="always")
def _col4_out(y, w, b, j, v0, v1, v2, v3):
    """Column j of four rows' output from their normalized values v0..v3: times w[j], plus b[j]
    (w, b None: 1 and 0), into y (4, N). Inlined into its callers' loops, which it shares."""
    if w is not None:
        wj = w[j]
        v0 = v0 * wj
        v1 = v1 * wj
        v2 = v2 * wj
        v3 = v3 * wj
    if b is not None:
        bj = b[j]
        v0 = v0 + bj
        v1 = v1 + bj
        v2 = v2 + bj
        v3 = v3 + bj
    y[0, j] = v0
    y[1, j] = v1
    y[2, j] = v2
    y[3, j] = v3


@njit(**_jit_elementwise)
def rows4_forward(y, x, w, b, x0, cr, r):
    """``row_forward`` for four rows at once, loading each column's w and b once for the four.

    y: (4, N) out, or None to write x (see ``_out``); x: (4, N); w, b: (N,) or None; x0, cr, r:
    4-tuples of the rows' statistics in x's dtype, cr = c * r. The same arithmetic as
    ``row_forward``, row by row.
    """
    yo = _out(y, x)
    for j in range(x.shape[1]):
        v0 = (x[0, j] - x0[0]) * r[0] - cr[0]
        v1 = (x[1, j] - x0[1]) * r[1] - cr[1]
        v2 = (x[2, j] - x0[2]) * r[2] - cr[2]
        v3 = (x[3, j] - x0[3]) * r[3] - cr[3]
        _col4_out(yo, w, b, j, v0, v1, v2, v3)


@njit(**_jit_reduce)
def rows4_forward_fused(y, x, w, b, x0, cr, r, x_next, k):
    """``rows4_forward`` fused with the shifted sums of the next four rows, so those rows stream
    in from memory while this block's output is written.

    y: (4, N) out, or None to write x (see ``_out``); x: (4, N); w, b: (N,) or None; x0, cr, r:
    4-tuples in x's dtype, cr = c * r; x_next: (4, N); k: 4-tuple of shifts. Returns (s1, s2),
    4-tuples of sum(x_next - k) and sum((x_next - k)^2). Compiled with reassociation (the sums
    need it), so the output is (x - x0) * r - c * r, which no regrouping can turn into
    x - (x0 + c).
    """
    t = x.dtype.type
    yo = _out(y, x)
    a0 = a1 = a2 = a3 = t(0)
    q0 = q1 = q2 = q3 = t(0)
    for j in range(x.shape[1]):
        v0 = (x[0, j] - x0[0]) * r[0] - cr[0]
        v1 = (x[1, j] - x0[1]) * r[1] - cr[1]
        v2 = (x[2, j] - x0[2]) * r[2] - cr[2]
        v3 = (x[3, j] - x0[3]) * r[3] - cr[3]
        _col4_out(yo, w, b, j, v0, v1, v2, v3)
        d0 = x_next[0, j] - k[0]
        d1 = x_next[1, j] - k[1]
        d2 = x_next[2, j] - k[2]
        d3 = x_next[3, j] - k[3]
        a0 += d0
        a1 += d1
        a2 += d2
        a3 += d3
        q0 += d0 * d0
        q1 += d1 * d1
        q2 += d2 * d2
        q3 += d3 * d3
    return (a0, a1, a2, a3), (q0, q1, q2, q3)


@njit(**_jit_reduce)
def row_backward_sums(dy, x, w, m):
    """First pass of the row backward: the row sums the second pass needs, each of single
    differences.

    dy, x: (N,); w: (N,) or None; m: the saved mean in x's dtype (0 for RMSNorm). Returns
    (sum(x - m), sum(gy), sum(gy * (x - m))) in x's dtype, with gy = dy * w.
    """
    n = x.shape[0]
    t = x.dtype.type
    s_e = t(0)
    s_g = t(0)
    s_ge = t(0)
    for j in range(n):
        e = x[j] - m
        g = dy[j]
        if w is not None:
            g = g * w[j]
        s_e += e
        s_g += g
        s_ge += g * e
    return s_e, s_g, s_ge


@njit(**_jit)
def row_backward_sums_long(dy, x, w, m):
    """``row_backward_sums`` of a long row (``LONG_ROW_MIN``), as float64: each block of
    ``LONG_BLOCK`` elements summed in x's dtype, the blocks' sums added in float64."""
    n = x.shape[0]
    s_e = 0.0
    s_g = 0.0
    s_ge = 0.0
    for j0 in range(0, n, LONG_BLOCK):
        j1 = min(j0 + LONG_BLOCK, n)
        a, g, ge = row_backward_sums(dy[j0:j1], x[j0:j1], _cols(w, j0, j1), m)
        s_e += a
        s_g += g
        s_ge += ge
    return s_e, s_g, s_ge


@njit(**_jit)
def backward_coefs(n, r, s_e, s_g, s_ge, center):
    """The constants of a row's second backward pass from its first pass's sums: (c, a, bb) as
    float64.

    n: the row's length; r: its rstd; s_e, s_g, s_ge: ``row_backward_sums``'s sums. The row's
    mean is m + c (m the saved mean in x's dtype, c its rounding, measured from the row: c =
    mean(x - m)), a = mean(gy) and bb = mean(gy * xhat) with gy = dy * w (c = a = 0 for RMSNorm).
    """
    c = 0.0
    a = 0.0
    if center:
        c = s_e / n  # mean(x) - m: the saved mean's rounding
        a = s_g / n
    # mean(gy * xhat) = r * mean(gy * (x - m - c))
    return c, a, r * (s_ge - c * s_g) / n


@njit(**_jit)
def row_backward_coefs(dy, x, w, mean, rstd, center):
    """The constants of one row's second backward pass: (m, cr, r, a, bb), all in x's dtype.

    dy, x: (N,); w: (N,) or None; mean, rstd: as saved by the forward pass (any float dtype;
    mean ignored for RMSNorm); m is the saved mean in x's dtype, cr = c * r, the rest as
    ``backward_coefs``.
    """
    t = x.dtype.type
    m = t(mean) if center else t(0)
    r = rstd * 1.0
    s_e, s_g, s_ge = row_backward_sums(dy, x, w, m)
    c, a, bb = backward_coefs(x.shape[0], r, s_e, s_g, s_ge, center)
    return m, t(c * r), t(r), t(a), t(bb)


@njit(**_jit_elementwise)
def row_backward(dx, dw_acc, db_acc, dy, x, w, m, cr, r, a, bb):
    """Second pass of the row backward: dx, with dw and db accumulated (``+=``).

    dx: (N,) out; dw_acc: (N,) accumulator of x's dtype; db_acc: (N,) accumulator or None (no
    bias gradient); dy, x: (N,); w: (N,) or None; m, cr, r, a, bb: as ``row_backward_coefs``
    returns.

    With xhat = (x - m - c) r, the backward pass of y = xhat * w + b is
        dx = r * (gy - mean(gy) - xhat * mean(gy * xhat)),  dw += dy * xhat,  db += dy
    (RMSNorm has no mean(gy) term: a = 0). xhat is taken as (x - m) * r - cr, as in the
    forward pass (``row_forward``), in every backward path (``store_lines_backward`` too).
    """
    for j in range(x.shape[0]):
        _col_grads(dx, dw_acc, db_acc, dy, w, j, (x[j] - m) * r - cr, r, a, bb)


@njit(inline="always")
def _col_grads(dx, dw_acc, db_acc, dy, w, j, xh, r, a, bb):
    """Column j of one row's second pass, given its xhat value xh: dx written, dw and db
    accumulated (arguments as ``row_backward``). Inlined into its callers' loops."""
    g = dy[j]
    dw_acc[j] += g * xh
    if db_acc is not None:
        db_acc[j] += g
    if w is not None:
        g = g * w[j]
    dx[j] = r * (g - a - xh * bb)


# ---------------------------------------------------------------------------------------------
# Drivers over rows. Serial and parallel drivers share the row routines above.
# ---------------------------------------------------------------------------------------------


@njit(inline="always", **_jit)
def row_ln(y, x, w, b, eps, center):
    """Layer norm (``center``) or RMSNorm of one row, the routine of the recurrent cells; the
    drivers below compute the same in their own loops (see ``row_stats_one_pass``).

    y: (N,) out; x: (N,); w, b: (N,) or None. Returns (mean, rstd) as float64 (mean 0 for RMSNorm).
    """
    t = x.dtype.type
    x0, c, r, ok = row_stats_one_pass(x, x[0] if center else t(0), eps, center)
    if not ok:
        x0, c, r = row_stats_retry(x, x0, eps, center)
    row_forward(y, x, w, b, x0, t(c * r), t(r))
    return x0 + c * 1.0, r


@njit(**_jit)
def row_ln_backward(dx, dw_acc, db_acc, dy, x, w, mean, rstd, center):
    """Backward of ``row_ln`` for one row: dx, with dw/db accumulated (``+=``).

    dx: (N,) out; dw_acc, db_acc: (N,) accumulators of x's dtype (db_acc None: no bias gradient);
    dy, x: (N,); w: (N,) or None; mean, rstd: as saved by the forward pass (in any float dtype;
    mean ignored for RMSNorm).
    """
    m, cr, r, a, bb = row_backward_coefs(dy, x, w, mean, rstd, center)
    row_backward(dx, dw_acc, db_acc, dy, x, w, m, cr, r, a, bb)


@njit(**_jit)
def _stats4(x, eps, center):
    """``row_stats_one_pass`` of four rows (x: (4, N)), with its fallback: the 4-tuples
    (x0, c, r)."""
    z = x.dtype.type(0)
    a0, c0, r0, k0 = row_stats_one_pass(x[0], x[0, 0] if center else z, eps, center)
    a1, c1, r1, k1 = row_stats_one_pass(x[1], x[1, 0] if center else z, eps, center)
    a2, c2, r2, k2 = row_stats_one_pass(x[2], x[2, 0] if center else z, eps, center)
    a3, c3, r3, k3 = row_stats_one_pass(x[3], x[3, 0] if center else z, eps, center)
    return _two_pass4(x, (a0, a1, a2, a3), (c0, c1, c2, c3), (r0, r1, r2, r3),
                      (k0, k1, k2, k3), eps, center)  # fmt: skip


@njit(**_jit)
def _two_pass4(x, x0, c, r, ok, eps, center):
    """Four rows' statistics (4-tuples x0, c, r of x: (4, N)) with those of the rows not ``ok``
    (a 4-tuple of bools) taken again by ``row_stats_retry``."""
    if ok[0] and ok[1] and ok[2] and ok[3]:
        return x0, c, r
    q0 = (x0[0], c[0], r[0]) if ok[0] else row_stats_retry(x[0], x0[0], eps, center)
    q1 = (x0[1], c[1], r[1]) if ok[1] else row_stats_retry(x[1], x0[1], eps, center)
    q2 = (x0[2], c[2], r[2]) if ok[2] else row_stats_retry(x[2], x0[2], eps, center)
    q3 = (x0[3], c[3], r[3]) if ok[3] else row_stats_retry(x[3], x0[3], eps, center)
    return (
        (q0[0], q1[0], q2[0], q3[0]),
        (q0[1], q1[1], q2[1], q3[1]),
        (q0[2], q1[2], q2[2], q3[2]),
    )


@njit(**_jit)
def _save_stats4(mean, rstd, i, x0, c, r):
    """mean[i:i+4] = x0 + c and rstd[i:i+4] = r for four rows' statistics (4-tuples as
    ``_stats4`` gives them); mean, rstd: (M,) or None."""
    if mean is not None:
        for q in range(4):
            mean[i + q] = x0[q] + c[q] * 1.0
    if rstd is not None:
        for q in range(4):
            rstd[i + q] = r[q]


@njit(**_jit)
def _forward_rows_fused(y, mean, rstd, x, w, b, eps, center, lo, hi):
    """Rows lo.. of the forward pass in blocks of four, each block's output pass fused with the
    statistics pass of the next (``rows4_forward_fused``). Returns the first row not done (lo
    when there are fewer than eight rows). Shapes as ``_forward_rows``."""
    t = x.dtype.type
    if hi - lo < 8:
        return lo
    i = lo
    x0, c, r = _stats4(x[i : i + 4], eps, center)
    while True:
        _save_stats4(mean, rstd, i, x0, c, r)
        rs = (t(r[0]), t(r[1]), t(r[2]), t(r[3]))
        crs = (t(c[0] * r[0]), t(c[1] * r[1]), t(c[2] * r[2]), t(c[3] * r[3]))
        if i + 8 > hi:
            break
        z = t(0)
        k = (
            x[i + 4, 0] if center else z,
            x[i + 5, 0] if center else z,
            x[i + 6, 0] if center else z,
            x[i + 7, 0] if center else z,
        )
        s1, s2 = rows4_forward_fused(
            _rows4(y, i), x[i : i + 4], w, b, x0, crs, rs, x[i + 4 : i + 8], k
        )  # fmt: skip
        n = x.shape[1]
        a0, c0, r0, q0 = stats_from_sums(t, n, k[0], s1[0], s2[0], eps, center)
        a1, c1, r1, q1 = stats_from_sums(t, n, k[1], s1[1], s2[1], eps, center)
        a2, c2, r2, q2 = stats_from_sums(t, n, k[2], s1[2], s2[2], eps, center)
        a3, c3, r3, q3 = stats_from_sums(t, n, k[3], s1[3], s2[3], eps, center)
        x0, c, r = _two_pass4(x[i + 4 : i + 8], (a0, a1, a2, a3), (c0, c1, c2, c3),
                              (r0, r1, r2, r3), (q0, q1, q2, q3), eps, center)  # fmt: skip
        i += 4
    # the last block, its statistics already taken
    rows4_forward(_rows4(y, i), x[i : i + 4], w, b, x0, crs, rs)
    return i + 4


@njit(**_jit)
def _row_lines(yf, n):
    """The whole cache lines of every row of yf (rows of n elements, flattened): (h, e) with
    columns h..e-1 of each row on line boundaries, or (-1, -1) where the rows do not all start
    at the same place within a line (n * itemsize not a multiple of ``LINE_BYTES``, or yf not
    aligned to its dtype) and so cannot be streamed."""
    h = line_head(yf, 0, n)
    if (n * yf.itemsize) % LINE_BYTES != 0 or h == n:  # h == n: not aligned to the dtype
        return -1, -1
    L = line_len(yf)
    return h, h + (n - h) // L * L


@njit(inline="always", **_jit)
def row_forward_range(y, x, w, b, x0, cr, r, j0, j1):
    """Columns j0..j1-1 of one row's output (``row_forward`` on those columns, see ``_cols``),
    as ``store_lines_normalized`` computes it but with ordinary stores. y: (N,) out; x: (N,);
    w, b: (N,) or None; x0, cr, r: scalars in x's dtype."""
    row_forward(y[j0:j1], x[j0:j1], _cols(w, j0, j1), _cols(b, j0, j1), x0, cr, r)


@njit(inline="always", **_jit)
def _save_stats(mean, rstd, i, x0, c, r):
    """mean[i] = x0 + c and rstd[i] = r for one row's statistics (as ``row_stats`` gives them);
    mean, rstd: (M,) or None."""
    if mean is not None:
        mean[i] = x0 + c * 1.0
    if rstd is not None:
        rstd[i] = r


@njit(**_jit)
def _seam_line(a, e, h, fill, like):
    """The values of a seam line's lanes, for the streamed passes' lines shared by two rows
    (``store_seam_normalized``, ``store_seam_backward``): a[e:] then a[:h] of a (N,) weight
    or bias, a new array of LINE_BYTES of the dtype of array ``like``; all ``fill`` for a None
    (1 for an absent weight, -0.0 for an absent bias: x + -0.0 is x, zeros' signs too)."""
    if a is None:
        return np.full(LINE_BYTES // like.itemsize, fill, like.dtype)
    return np.concatenate((a[e:], a[:h]))


def _seam_weights(w, e, h, like):
    """The backward's seam-line weights: ``_seam_line(w, e, h, 1.0, like)``, or None where w is
    None. A line of ones would change the backward's arithmetic (dy * 1, then two products to
    fuse where a = 0, as RMSNorm's is) against its unweighted lines; the forward's ones and
    -0.0 are exact. Resolved at compile time."""
    return None if w is None else _seam_line(w, e, h, 1.0, like)


@overload(_seam_weights, inline="always")
def _seam_weights_impl(w, e, h, like):
    if isinstance(w, types.NoneType):
        return lambda w, e, h, like: None
    return lambda w, e, h, like: _seam_line(w, e, h, 1.0, like)


@njit(**_jit)
def _forward_rows_stream(y, mean, rstd, x, w, b, eps, center, lo, hi):
    """Rows lo..hi-1 of the forward pass with the output written with non-temporal stores;
    returns the first row not done.

    Rows go one at a time: the row's statistics (``row_stats_one_pass``), then its output a
    cache line at a time, computed in vector registers and streamed, each line of x loaded
    before the line before it is stored (``store_lines_normalized``), while x
    ``STREAM_PREFETCH_BYTES`` ahead (at least the next row) is prefetched into L1 line by line:
    the memory system reads ahead while this row is written, and the statistics pass finds its
    row in the cache.

    Shapes as ``_forward_rows``. The rows must all start at the same place within a cache line
    (N * itemsize a multiple of ``LINE_BYTES``, y aligned to its dtype), else no row is done
    (returns lo). Where that place is not a line boundary, the line that holds one row's last
    columns and the next row's first goes after the next row's statistics, with both rows'
    (``store_seam_normalized``, as ``_backward_rows_stream``); only the first row's columns
    before its first line boundary and the last row's after its last take ordinary stores
    (``row_forward_range``). In place (y is x) each line is read before it is written, and a
    row's statistics before the line it shares with the row before.

    Tried and not kept: the next row's sums taken inside this row's output loop, a line of each
    row per step, so that the statistics pass overlaps the stores. For results that do not
    depend on where a row's lines begin, the sums had to take a fixed order (lane j mod L of a
    line's L lanes, then added by halving) in the fused loop and in every pass they must agree
    with; with the lanes of one line the loop kept its registers (two lines' spilled to the
    stack), but could not load each line of x before the line before it is stored, so it was
    taken only where y starts at x's place. Streamed loop alone, 2 cores, float32: 1.02-1.16x
    at 4096x1024, 1.06-1.08x at 8192x4096; through ``layer_norm(x, w, b, out=y)`` at 4096x1024,
    0.89-1.00x over five runs, and 0.83-1.02x with y 48 bytes past x's place.
    """
    N = x.shape[1]
    yf = y.reshape(-1)
    xf = x.reshape(-1)
    h, e = _row_lines(yf, N)
    if h < 0 or lo == hi:
        return lo
    L = line_len(x)
    ahead = max(1, STREAM_PREFETCH_BYTES // (N * x.itemsize)) * N  # elements
    end = hi * N  # prefetches stop at the thread's last row
    s = N - e  # the columns of a row in the line it shares with the next (0: none)
    seam_w = _seam_line(w, e, h, 1.0, x)  # the seam lines' weights and biases, by lane
    seam_b = _seam_line(b, e, h, -0.0, x)
    t = x.dtype.type
    x0, c, r, ok = row_stats_one_pass(x[lo], x[lo, 0] if center else t(0), eps, center)
    if not ok:  # the fallbacks here, not in an inlined helper: see row_stats_one_pass
        x0, c, r = row_stats_retry(x[lo], x0, eps, center)
    _save_stats(mean, rstd, lo, x0, c, r)
    rs, crs = t(r), t(c * r)
    row_forward_range(y[lo], x[lo], w, b, x0, crs, rs, 0, h)
    for i in range(lo, hi):
        if e > h:
            store_lines_normalized(yf, xf, w, b, i * N + h, h, (e - h) // L, x0, rs, crs, ahead,
                                   end)  # fmt: skip
        if i + 1 == hi:
            row_forward_range(y[i], x[i], w, b, x0, crs, rs, e, N)
            break
        x02, c, r, ok = row_stats_one_pass(x[i + 1], x[i + 1, 0] if center else t(0), eps, center)
        if not ok:
            x02, c, r = row_stats_retry(x[i + 1], x02, eps, center)
        _save_stats(mean, rstd, i + 1, x02, c, r)
        rs2, crs2 = t(r), t(c * r)
        if s > 0:
            k = i * N + e
            store_seam_normalized(yf, k, xf, k, seam_w, seam_b, 0, (x0, x02), (rs, rs2),
                                  (crs, crs2), s)  # fmt: skip
        x0, rs, crs = x02, rs2, crs2
    return hi


@njit(**_jit)
def _forward_rows_long(y, mean, rstd, x, w, b, eps, center, lo, hi):
    """Rows lo..hi-1 of the forward pass for long rows (``LONG_ROW_MIN``): statistics from
    sums in blocks (``row_stats_long``), then ``row_forward``'s output pass. Arguments as
    ``_forward_rows``. Against the passes for shorter rows (blocks of four, fused), side by
    side at 64x2^18 float32 on 2 cores: 1.23-1.36x faster (medians of 10 interleaved rounds,
    four runs)."""
    t = x.dtype.type
    yo = _out(y, x)
    for i in range(lo, hi):
        x0, c, r = row_stats_long(x[i], eps, center)
        row_forward(yo[i], x[i], w, b, x0, t(c * r), t(r))
        _save_stats(mean, rstd, i, x0, c, r)


@njit(**_jit)
def _forward_rows(y, mean, rstd, x, w, b, eps, center, block, stream, lo, hi):
    """Rows lo..hi-1 of the forward pass; with ``block``, the output pass takes four rows at
    a time (the statistics are still taken row by row), and for rows longer than
    ``FUSE_MIN_ROW_BYTES`` runs fused with the next four rows' statistics. ``stream`` writes
    the output with non-temporal stores instead where y's rows allow it
    (``_forward_rows_stream``), then fences them. The rest take ``row_ln``'s arithmetic
    (``row_stats_one_pass``, ``row_forward_cols``), two rows at a time for rows up to
    ``FORWARD_PAIRS_MAX_ROW_BYTES`` (``rows2_forward_at``), longer ones split at y's line
    boundaries where there are ``LINES_MIN_ROWS`` of them (``_forward_rows_lines``), with the
    next rows prefetched (``PREFETCH_MIN_BYTES``). Long rows (``LONG_ROW_MIN``) take
    ``_forward_rows_long``.

    y: (M, N) out, or None to write the output into x (in place; see ``_out``); mean, rstd:
    (M,) out or None; x: (M, N); w, b: (N,) or None.
    """
    if x.shape[1] >= LONG_ROW_MIN:
        _forward_rows_long(y, mean, rstd, x, w, b, eps, center, lo, hi)
        return
    t = x.dtype.type
    i = lo
    if stream:  # (intrinsics, which need no y None to vectorize in place)
        i = _forward_rows_stream(_out(y, x), mean, rstd, x, w, b, eps, center, lo, hi)
    if i == lo and block and x.shape[1] * x.itemsize > FUSE_MIN_ROW_BYTES:
        i = _forward_rows_fused(y, mean, rstd, x, w, b, eps, center, lo, hi)
    if block:
        while i + 4 <= hi:
            x0, c, r = _stats4(x[i : i + 4], eps, center)
            rows4_forward(
                _rows4(y, i), x[i : i + 4], w, b, x0,
                (t(c[0] * r[0]), t(c[1] * r[1]), t(c[2] * r[2]), t(c[3] * r[3])),
                (t(r[0]), t(r[1]), t(r[2]), t(r[3])),
            )  # fmt: skip
            _save_stats4(mean, rstd, i, x0, c, r)
            i += 4
    row = x.shape[1] * x.itemsize
    ahead = x.nbytes > PREFETCH_MIN_BYTES and row <= PREFETCH_MAX_ROW_BYTES
    N = x.shape[1]
    if row <= FORWARD_PAIRS_MAX_ROW_BYTES:
        if hi - i >= LINES_MIN_ROWS:  # this thread's copies of w and b (``_forward_pairs``)
            wl, bl = _line_copy(w, 0), _line_copy(b, 0)
            i = _forward_pairs(y, mean, rstd, x, wl, bl, eps, center, ahead, i, hi)
        else:
            i = _forward_pairs(y, mean, rstd, x, w, b, eps, center, ahead, i, hi)
    if hi - i >= LINES_MIN_ROWS:
        yf = _out(y, x).reshape(-1)
        h, e = _row_lines(yf, N)
        if h >= 0:  # w and b copied to y's place within a line: every vector load aligned
            off = np.intp(yf.ctypes.data) % LINE_BYTES
            wl, bl = _line_copy(w, off), _line_copy(b, off)
            i = _forward_rows_lines(y, mean, rstd, x, wl, bl, eps, center, ahead, h, e, i, hi)
    _forward_rows_lines(y, mean, rstd, x, w, b, eps, center, ahead, 0, 0, i, hi)  # the rest
    if stream:
        store_fence()


@njit(**_jit)
def _forward_pairs(y, mean, rstd, x, w, b, eps, center, ahead, lo, hi):
    """Rows lo.. of ``_forward_rows``'s row loop two at a time (rows of up to
    ``FORWARD_PAIRS_MAX_ROW_BYTES``, ``rows2_forward_at``), the next two prefetched where
    ``ahead``; returns the first row not done (hi, or hi - 1 for an odd count). Shapes as
    ``_forward_rows``.

    Where a thread has ``LINES_MIN_ROWS`` rows or more, its caller passes w and b copied by
    that thread (``_line_copy``, on a line boundary): two threads reading the same w and b ran
    slower than each reading its own copy. 8192x256 float32, 2 threads, in one process: 230-240
    us with w and b shared (where NumPy put them, or one copy on a line boundary, or far from
    both), 159-160 us with a copy each (one thread alone: 324 us); over several processes the
    shared arrays took 157-346 us, the copies 157-174; 4096x256 80-165 against 76-86 us,
    16384x128 203-507 against 195-221 us. Why sharing read-only lines costs this much here was
    not found (the machine's two cores may be one core's two hyperthreads).
    """
    t = x.dtype.type
    N = x.shape[1]
    xf = x.reshape(-1)
    L = line_len(x)
    i = lo
    while i + 2 <= hi:
        if ahead and i + 3 < hi:
            for q in range((2 * N + L - 1) // L):  # rows i + 2 and i + 3 into L1
                prefetch_l1(xf, (i + 2) * N + q * L)
        # the fallbacks in this loop, not in an inlined helper: see row_stats_one_pass
        sh, shn = (x[i, 0], x[i + 1, 0]) if center else (t(0), t(0))
        x0, c, r, ok = row_stats_one_pass(x[i], sh, eps, center)
        if not ok:
            x0, c, r = row_stats_retry(x[i], x0, eps, center)
        x0n, cn, rn, ok = row_stats_one_pass(x[i + 1], shn, eps, center)
        if not ok:
            x0n, cn, rn = row_stats_retry(x[i + 1], x0n, eps, center)
        rows2_forward_at(y, x, i, w, b, x0, t(c * r), t(r), x0n, t(cn * rn), t(rn))
        _save_stats(mean, rstd, i, x0, c, r)
        _save_stats(mean, rstd, i + 1, x0n, cn, rn)
        i += 2
    return i


@njit(**_jit)
def _forward_rows_lines(y, mean, rstd, x, wl, bl, eps, center, ahead, h, e, lo, hi):
    """Rows lo..hi-1 of ``_forward_rows``'s row loop with the output pass split at y's line
    boundaries: columns h..e-1 of every row are whole cache lines of y (``_row_lines``), and
    wl, bl (N,) are w and b placed so that wl[h] starts a line too (``_line_copy``), so no
    vector store of y, nor load of w or b, spans two lines (nor of x, where x starts at the
    same place within a line as y, as NumPy's large arrays all do). With h = e = 0, w and b
    as given, the plain row loop. The next row is prefetched where ``ahead`` (as
    ``_forward_pairs``). Returns hi. Shapes as ``_forward_rows``."""
    t = x.dtype.type
    N = x.shape[1]
    xf = x.reshape(-1)
    L = line_len(x)
    u = np.uint64
    for k in range(lo, hi):
        if ahead and k + 1 < hi:
            for q in range((N + L - 1) // L):  # row k + 1 into L1, a line at a time
                prefetch_l1(xf, (k + 1) * N + q * L)
        sh = x[k, 0] if center else t(0)
        x0, c, r, ok = row_stats_one_pass(x[k], sh, eps, center)
        if not ok:  # the fallback in this loop, not in an inlined helper: see row_stats_one_pass
            x0, c, r = row_stats_retry(x[k], x0, eps, center)
        cr, rt = t(c * r), t(r)
        row_forward_cols(y, x, u(k), wl, bl, x0, cr, rt, u(0), u(h))
        row_forward_cols(y, x, u(k), wl, bl, x0, cr, rt, u(h), u(e))
        row_forward_cols(y, x, u(k), wl, bl, x0, cr, rt, u(e), u(N))
        _save_stats(mean, rstd, k, x0, c, r)
    return hi


@njit(**_jit)
def forward_serial(y, mean, rstd, x, w, b, eps, center, block, stream, nt):
    """Forward pass over all rows on the calling thread (shapes as ``_forward_rows``; ``nt``
    is unused, for the same signature as ``forward_parallel``)."""
    _forward_rows(y, mean, rstd, x, w, b, eps, center, block, stream, 0, x.shape[0])


@njit(parallel=True, **_jit)
def forward_parallel(y, mean, rstd, x, w, b, eps, center, block, stream, nt):
    """Forward pass with the rows split into ``nt`` contiguous blocks, one per thread."""
    M = x.shape[0]
    nt = max(1, min(nt, M))
    for t in prange(nt):
        lo = t * M // nt
        hi = (t + 1) * M // nt
        _forward_rows(y, mean, rstd, x, w, b, eps, center, block, stream, lo, hi)


@njit(inline="always", **_jit)
def row_backward_range(dx, dw_acc, db_acc, dy, x, w, m, cr, r, a, bb, j0, j1):
    """Columns j0..j1-1 of one row's second backward pass (``row_backward`` on those columns,
    see ``_cols``), as ``store_lines_backward`` computes them but with ordinary stores.
    Arguments as ``row_backward``."""
    row_backward(dx[j0:j1], dw_acc[j0:j1], _cols(db_acc, j0, j1), dy[j0:j1], x[j0:j1],
                 _cols(w, j0, j1), m, cr, r, a, bb)  # fmt: skip


@njit(inline="always", **_jit)
def _row_line_coefs(dy, x, w, mean, rstd, i):
    """Row i's first backward pass and the constants of its second as the line routines take
    them (xhat = (x - m) * r - cr): (m, cr, r, a, bb) in x's dtype. dy, x: (M, N); w: (N,) or
    None; mean: (M,) or None (RMSNorm); rstd: (M,)."""
    t = x.dtype.type
    center = mean is not None
    m = t(mean[i]) if center else t(0)
    s_e, s_g, s_ge = row_backward_sums(dy[i], x[i], w, m)
    r = rstd[i] * 1.0
    c, a, bb = backward_coefs(x.shape[1], r, s_e, s_g, s_ge, center)
    return m, t(c * r), t(r), t(a), t(bb)


@njit(**_jit)
def _backward_rows_stream(dx, dw_acc, db_acc, dy, x, mean, rstd, w, lo, hi):
    """Rows lo..hi-1 of the backward pass with dx written with non-temporal stores; returns
    the first row not done.

    Rows go one at a time: the row's first pass (``_row_line_coefs``), then its second pass a
    cache line at a time, in vector registers (``store_lines_backward``), while x and dy
    ``STREAM_PREFETCH_BYTES`` ahead (in all; at least the next row) are prefetched into L1, past
    the end of this call's rows. Where the rows
    start part-way through a line (NumPy's large arrays start 16 bytes past one), the line
    holding one row's last columns and the next row's first goes after the next row's first
    pass, with both rows' constants (``store_seam_backward``), so every line from the first
    row's first line boundary to the last row's last one is streamed whole; its columns'
    accumulators sit in a line of their own meanwhile, so that every column's terms still add
    up in row order: dx, dw and db are the unstreamed pass's (``_backward_rows_lines``) bit for
    bit, wherever dx starts within a line.

    Arguments as ``_backward_rows``. As in ``_forward_rows_stream``, dx's rows must all start at
    the same place within a cache line, else no row is done (returns lo).

    Tried and not kept, 2 cores, 4096x1024 float32, rows at a page's start, against this loop
    (whose dw/db accumulation costs: without it, 1.18-1.22x faster): a row's dw/db terms added
    during the next row's first pass (its lines still in L1), 0.79x; two rows' terms added in
    the first row's second pass (one load and store of dw/db per two rows, the second row's
    pass then dx alone, the same bits), 0.97x.
    """
    n = x.shape[1]
    dxf = dx.reshape(-1)
    dyf = dy.reshape(-1)
    xf = x.reshape(-1)
    h, e = _row_lines(dxf, n)
    if h < 0 or lo == hi:
        return lo
    L = line_len(x)
    s = n - e  # the columns of a row in the line it shares with the next (0: none)
    # the seam lines' weights (columns e..n-1, then 0..h-1) and dw/db terms, lane for lane
    seam_w = _seam_weights(w, e, h, x)
    seam_dw = np.zeros(L, x.dtype)
    seam_db = np.zeros(L, x.dtype)  # also without a bias gradient: one type for all calls
    ahead = max(1, STREAM_PREFETCH_BYTES // (2 * n * x.itemsize)) * n  # elements, in each
    end = xf.shape[0]  # the next rows are usually the same thread's next chunk
    # Each seam column's dw/db terms add up in its seam lane (lane q: column e + q, or q - s of
    # the next row) in row order, after the column's incoming value, with each term fused
    # into the sum as on the unstreamed path (``_backward_rows_lines``), whose sums these then
    # equal bit for bit wherever dx starts within a line: the first row's columns 0..h-1 are
    # added to the columns' accumulators, which then move to the lanes, and move back before
    # the last row's e..n-1 are added.
    m, cr, rt, at, bt = _row_line_coefs(dy, x, w, mean, rstd, lo)
    if s > 0:  # columns 0..h-1 of the first row: the line from column 0, as the lines path
        line_backward_masked(
            dxf, dw_acc, db_acc, dyf, xf, w, lo * n, 0, (m,), (cr,), (rt,), (at,), (bt,), 0, h
        )
        _swap_seam(dw_acc, db_acc, seam_dw, seam_db, e, s)
    for i in range(lo, hi):
        for j in range(h, e, L):
            k = i * n + j
            store_lines_backward(
                dxf, dw_acc, db_acc, dyf, xf, w, k, j, (m,), (cr,), (rt,), (at,), (bt,)
            )
            if k + ahead < end:
                prefetch_l1(xf, k + ahead)
                prefetch_l1(dyf, k + ahead)
        if i + 1 == hi:
            break
        m2, cr2, rt2, at2, bt2 = _row_line_coefs(dy, x, w, mean, rstd, i + 1)
        if s > 0:
            store_seam_backward(dxf, seam_dw, seam_db, dyf, xf, seam_w, i * n + e, 0,
                                (m, m2), (cr, cr2), (rt, rt2), (at, at2), (bt, bt2), s)  # fmt: skip
        m, cr, rt, at, bt = m2, cr2, rt2, at2, bt2
    if s > 0:  # columns e..n-1 of the last row: the line ending at column n - 1
        _swap_seam(dw_acc, db_acc, seam_dw, seam_db, e, s)
        line_backward_masked(
            dxf, dw_acc, db_acc, dyf, xf, w, (hi - 1) * n + n - L, n - L,
            (m,), (cr,), (rt,), (at,), (bt,), L - s, L,
        )  # fmt: skip
    return hi


@njit(inline="always", **_jit)
def _swap_seam(dw_acc, db_acc, seam_dw, seam_db, e, s):
    """Swaps the seam columns' accumulators with their seam lanes (``_backward_rows_stream``):
    lane q holds column e + q for q < s, column q - s beyond. dw_acc, db_acc: (N,) (db_acc None:
    no bias gradient); seam_dw, seam_db: (L,)."""
    for q in range(seam_dw.shape[0]):
        c = e + q if q < s else q - s
        seam_dw[q], dw_acc[c] = dw_acc[c], seam_dw[q]
        if db_acc is not None:
            seam_db[q], db_acc[c] = db_acc[c], seam_db[q]


@njit(**_jit)
def _backward_rows_lines(dx, dw_acc, db_acc, dy, x, mean, rstd, w, lo, hi):
    """Rows lo..hi-1 of the backward pass one at a time, dx written with ordinary stores: each
    row's first pass (``row_backward_sums``), then its second pass a cache line at a time in
    vector registers (``lines_backward``). Arguments as ``_backward_rows``.

    The lines start at dx's first line boundary where all rows start at the same place within
    a line (``_row_lines``), else at column 0. NumPy's large arrays all start 16 bytes past a
    line boundary, so x and dy are then aligned there too, and the partial sums are made so
    (``_scratch_partials``): no vector load or store spans two lines. The columns before and
    after the whole lines are a whole line each, overlapping them (``line_backward_masked``);
    rows shorter than a line take ``row_backward_range``. Past ``PREFETCH_MIN_BYTES``, for rows
    up to ``PREFETCH_MAX_ROW_BYTES``, each line of the second pass asks for the same line of
    the next row's x and dy in L1 (2048x1024, 8192x256, 4096x512 float32, 2 threads:
    1.05-1.15x), and of dx, which its stores then find there. With the lines' step a constant
    (``line_len``) the loop issues faster: 2048 rows of 1024 float32 on one core ran 0.86-0.91x
    as fast as with the step read from the array where dx was not prefetched, 1.13-1.2x where
    it is; 64-512 rows (in L2) 1.27-1.3x.
    """
    n = x.shape[1]
    dxf = dx.reshape(-1)
    dyf = dy.reshape(-1)
    xf = x.reshape(-1)
    L = line_len(x)
    h, e = _row_lines(dxf, n)
    if h < 0:  # the rows start at different places within a line: lines from column 0
        h, e = 0, n - n % L
    ahead = x.nbytes > PREFETCH_MIN_BYTES and n * x.itemsize <= PREFETCH_MAX_ROW_BYTES
    for i in range(lo, hi):
        m, cr, rt, at, bt = _row_line_coefs(dy, x, w, mean, rstd, i)
        if n < L:
            row_backward_range(dx[i], dw_acc, db_acc, dy[i], x[i], w, m, cr, rt, at, bt, 0, n)
            continue
        k0 = i * n
        if h > 0:  # columns 0..h-1: the line from column 0
            line_backward_masked(
                dxf, dw_acc, db_acc, dyf, xf, w, k0, 0, (m,), (cr,), (rt,), (at,), (bt,), 0, h
            )
        for j in range(h, e, L):
            lines_backward(
                dxf, dw_acc, db_acc, dyf, xf, w, k0 + j, j, (m,), (cr,), (rt,), (at,), (bt,)
            )
            if ahead:  # the same line of the next row: x and dy to read, dx to write
                prefetch_l1(xf, k0 + n + j)
                prefetch_l1(dyf, k0 + n + j)
                prefetch_l1(dxf, k0 + n + j)
        if e < n:  # columns e..n-1: the line ending at column n - 1
            line_backward_masked(
                dxf, dw_acc, db_acc, dyf, xf, w, k0 + n - L, n - L,
                (m,), (cr,), (rt,), (at,), (bt,), e - (n - L), L,
            )  # fmt: skip


@njit(**_jit)
def _backward_rows(dx, dw_acc, db_acc, dy, x, mean, rstd, w, stream, lo, hi):
    """Rows lo..hi-1 of the backward pass, accumulating into dw_acc/db_acc (N,) of x's dtype
    (db_acc None: no bias gradient).

    dx: (M, N) out; dy, x: (M, N) C-contiguous; mean: (M,) or None (RMSNorm); rstd: (M,);
    w: (N,) or None. Rows go one at a time, each second pass a cache line at a time in vector
    registers (``_backward_rows_lines``). ``stream`` writes dx with non-temporal stores instead
    (``_backward_rows_stream``, where dx's rows allow it), then fences them. Long rows
    (``LONG_ROW_MIN``) take ``_backward_rows_long``.
    """
    if x.shape[1] >= LONG_ROW_MIN:
        _backward_rows_long(dx, dw_acc, db_acc, dy, x, mean, rstd, w, lo, hi)
        return
    if stream:
        lo = _backward_rows_stream(dx, dw_acc, db_acc, dy, x, mean, rstd, w, lo, hi)
    _backward_rows_lines(dx, dw_acc, db_acc, dy, x, mean, rstd, w, lo, hi)
    if stream:
        store_fence()


@njit(**_jit)
def _backward_rows_long(dx, dw_acc, db_acc, dy, x, mean, rstd, w, lo, hi):
    """Rows lo..hi-1 of the backward pass for long rows (``LONG_ROW_MIN``): the first pass's
    sums in blocks (``row_backward_sums_long``), then ``row_backward``. Arguments as
    ``_backward_rows``.

    Against the passes for shorter rows, side by side at 64x2^18 float32 on 2 cores: 0.93x
    (medians of 10 interleaved rounds; the forward's long-row passes ran 1.23-1.36x faster).
    The second pass of ``_backward_rows_lines``, a cache line at a time, made 0.97x here;
    shared with it as an inlined function, it slowed the backward at 8192x256 to 0.79-0.86x."""
    t = x.dtype.type
    center = mean is not None
    for i in range(lo, hi):
        m = t(mean[i]) if center else t(0)
        r = rstd[i] * 1.0
        s_e, s_g, s_ge = row_backward_sums_long(dy[i], x[i], w, m)
        c, a, bb = backward_coefs(x.shape[1], r, s_e, s_g, s_ge, center)
        row_backward(dx[i], dw_acc, db_acc, dy[i], x[i], w, m, t(c * r), t(r), t(a), t(bb))


def n_chunks(M):
    """Row chunks of the backward pass, each with its own dw/db partial sums. A function of M
    alone (not of the thread count), so the serial and parallel drivers add the same numbers in
    the same order: results are bit-identical and independent of the machine's core count."""
    return max(1, min(_MAX_CHUNKS, M // _CHUNK_ROWS))


@njit(**_jit)
def _sum_partials(dw, part):
    """dw[j] = sum over c of part[c, j], in chunk order, added in float64.

    dw: (N,) out; part: (C, N) partial sums of one chunk each. One chunk (inputs of fewer
    than 2 * ``_CHUNK_ROWS`` rows) is copied: its float64 sum would round back to itself."""
    if part.shape[0] == 1:
        for j in range(part.shape[1]):
            dw[j] = part[0, j]
        return
    acc = np.zeros(part.shape[1])
    for c in range(part.shape[0]):
        for j in range(part.shape[1]):
            acc[j] += part[c, j]
    for j in range(part.shape[1]):
        dw[j] = acc[j]


@njit(**_jit)
def _backward_chunk(dx, part_w, part_b, dy, x, mean, rstd, w, stream, c):
    """Chunk c of the backward pass. part_w, part_b: (C, N) partials; rest as
    ``backward_serial``."""
    M = x.shape[0]
    nc = part_w.shape[0]
    lo = c * M // nc
    hi = (c + 1) * M // nc
    part_w[c, :] = 0
    if part_b is None:  # RMSNorm: no bias gradient
        _backward_rows(dx, part_w[c], None, dy, x, mean, rstd, w, stream, lo, hi)
    else:
        part_b[c, :] = 0
        _backward_rows(dx, part_w[c], part_b[c], dy, x, mean, rstd, w, stream, lo, hi)


@njit(**_jit)
def backward_serial(dx, dw, db, part_w, part_b, dy, x, mean, rstd, w, stream):
    """Backward pass over all rows on the calling thread.

    dx: (M, N) out; dw: (N,) out; db: (N,) out, or None (RMSNorm: not computed); part_w, part_b:
    (n_chunks(M), N) scratch of x's dtype (any contents: each chunk zeroes its row; part_b None
    with db); dy, x: (M, N); mean: (M,) or None (RMSNorm); rstd: (M,); w: (N,) or None;
    stream: write dx with non-temporal stores (see ``_backward_rows``).
    """
    for c in range(part_w.shape[0]):
        _backward_chunk(dx, part_w, part_b, dy, x, mean, rstd, w, stream, c)
    _sum_partials(dw, part_w)
    if db is not None:
        _sum_partials(db, part_b)


@njit(parallel=True, **_jit)
def backward_parallel(dx, dw, db, part_w, part_b, dy, x, mean, rstd, w, stream):
    """``backward_serial`` with the chunks spread over threads (same sums, same order)."""
    for c in prange(part_w.shape[0]):
        _backward_chunk(dx, part_w, part_b, dy, x, mean, rstd, w, stream, c)
    _sum_partials(dw, part_w)
    if db is not None:
        _sum_partials(db, part_b)


# ---------------------------------------------------------------------------------------------
# Choosing a driver. Numba's ``workqueue`` threading layer aborts the process when parallel
# functions are entered from several threads at once, so at most one thread at a time runs a
# parallel kernel (these drivers, and the cells' ``matvec_pair``), holding ``parallel_lock``; a
# thread that finds it busy runs the serial driver (or BLAS) instead. Kernels release the GIL,
# so concurrent callers still run in parallel with each other.
# ---------------------------------------------------------------------------------------------

parallel_lock = threading.Lock()

# Numba's threading layers whose parallel launches are slow. ``workqueue``, Numba's fallback
# where neither TBB nor an OpenMP runtime is found (pip installs on macOS without libomp, for
# one), wakes its sleeping threads for every parallel call: about 100 us a call measured, against
# 2 us with OpenMP. Under it the drivers go parallel only from
# ``SLOW_LAUNCH_PARALLEL_MIN_ELEMENTS``, and the cells' batch-of-one step never splits its
# products (129 us split against 48 us through BLAS, LSTM I=H=256).
SLOW_LAUNCH_LAYERS = ("workqueue",)
_slow_launch = None


def slow_parallel_launch():
    """Whether Numba's threading layer is one of ``SLOW_LAUNCH_LAYERS``. Starts Numba's thread
    pool on the first call (which fixes the layer), as the first parallel call would."""
    global _slow_launch, _thread_count
    if _slow_launch is None:
        get_num_threads()  # starts the pool; the layer is known from then on
        _slow_launch = numba.threading_layer() in SLOW_LAUNCH_LAYERS
        # the pool's own getter, now that it is started (see ``num_threads``)
        _thread_count = getattr(_numba_parallel, "_get_num_threads", None)
    return _slow_launch


# ``numba.get_num_threads()`` takes two locks on every call (whether the pool has started):
# 1.0-1.8 us, against 0.2 us for the thread pool's own getter behind it, a tenth of a parallel
# forward call at 64x1024 float32. ``num_threads`` calls that getter once the pool has started
# (``slow_parallel_launch``, which every parallel path asks first), where Numba has it.
_thread_count = None


def num_threads():
    """``numba.get_num_threads()``: the calling thread's number of threads for parallel work
    (``numba.set_num_threads``), without its locks once the pool has started."""
    if _thread_count is not None:
        n = _thread_count()
        if n > 0:
            return n
    return get_num_threads()


def _streams(x, min_bytes):
    """Whether a pass over x (M, N) writes its output with non-temporal stores: from
    ``min_bytes`` (``STREAM_MIN_BYTES`` for the forward, ``BACKWARD_STREAM_MIN_BYTES`` for the
    backward), for rows of at most ``STREAM_MAX_ROW_BYTES``."""
    return x.nbytes >= min_bytes and x.shape[1] * x.itemsize <= STREAM_MAX_ROW_BYTES


def _parallel_pays(n):
    """Whether a driver's parallel call over n elements saves more than its launch costs:
    from ``PARALLEL_MIN_ELEMENTS``, or ``SLOW_LAUNCH_PARALLEL_MIN_ELEMENTS`` under a threading
    layer with slow launches."""
    if n < PARALLEL_MIN_ELEMENTS:
        return False
    return n >= SLOW_LAUNCH_PARALLEL_MIN_ELEMENTS or not slow_parallel_launch()


# OpenBLAS's worker threads keep spinning for about 0.1 s after a product big enough to use them.
# A parallel kernel started meanwhile competes with them for the cores and can wait out a
# scheduler time slice: on 2 cores, batch-of-one steps in the 0.1 s after a forward pass's input
# projection took 2-8 ms instead of 22 us now and then. The package's own BLAS products report
# themselves (``note_blas``); a parallel path that is only a speed-up (the cells' split step)
# is skipped while ``blas_recent()``. Products of one row (NumPy's gemv) measured harmless.
BLAS_SPIN_S = 0.1
# OpenBLAS runs a product on one thread below m * n * k = 65536 * 4 (its GEMM threshold).
BLAS_THREADED_MIN_FLOPS = 1 << 18
_clock = time.monotonic
_last_blas = -1e9


def note_blas(m, n, k):
    """Records that the package just ran an (m, k) @ (k, n) BLAS product, if it was big enough
    for BLAS to use its threads (m > 1 and m * n * k >= ``BLAS_THREADED_MIN_FLOPS``)."""
    global _last_blas
    if m > 1 and m * n * k >= BLAS_THREADED_MIN_FLOPS:
        _last_blas = _clock()


def blas_recent():
    """Whether a product recorded by ``note_blas`` ran less than ``BLAS_SPIN_S`` ago."""
    return _clock() - _last_blas < BLAS_SPIN_S


def entry_point(dispatcher, args, inputs=()):
    """The compiled function that ``dispatcher(*args)`` runs, callable without Numba's per-call
    type dispatch (a third of the cost of a batch-1 call). Compiles, or loads from the on-disk
    cache, on first use.

    The arrays at the indices ``inputs``, which the function only reads, are typed writeable,
    read-only or not: the entry point takes a read-only array where its type says writeable
    (Numba checks writeability in its dispatch, which entry points skip), so read-only inputs
    run the function writeable ones compiled. Compiled for read-only types instead, the
    forward's intrinsics would not take them, and the drivers' inner functions, which the
    tests also call with writeable arrays, compile twice: 1.5x the tests' time.
    ``test_read_only_inputs_take_every_path`` checks that read-only inputs are taken."""
    sig = [dispatcher.typeof_pyval(a) for a in args]
    for i in inputs:
        if isinstance(sig[i], types.Array):
            sig[i] = sig[i].copy(readonly=False)
    sig = tuple(sig)
    if sig not in dispatcher.overloads:
        dispatcher.compile(sig)
    return dispatcher.overloads[sig].entry_point


# Serial forward entry points by (dtype, y is None, mean is None, rstd is None, w is None,
# b is None): with every array C-contiguous of x's dtype (the callers' contract), that key fixes
# the signature, its inputs typed writeable (``entry_point``), so that read-only arrays take the
# same entries. ``lnnumba.norm`` calls the entries without statistics directly for small inputs.
forward_entries = {}
# The same for ``forward_parallel``: Numba's type dispatch of its 11 arguments costs about
# 0.7 us a call.
forward_parallel_entries = {}


def forward(y, mean, rstd, x, w, b, eps, center):
    """Layer norm (``center=True``) or RMSNorm forward over rows, serial or parallel by size.

    y: (M, N) out, x's own memory (in place) or memory that x does not share; mean, rstd: (M,)
    out or None; x: (M, N); w, b: (N,) or None; all C-contiguous float32 or float64 of one
    dtype; eps: float.
    """
    if y is x or np.may_share_memory(y, x):
        y = None  # in place: the kernels write x (see ``_out``)
    forward_unaliased(y, mean, rstd, x, w, b, eps, center)


def forward_unaliased(y, mean, rstd, x, w, b, eps, center):
    """``forward`` with y None for in place, or memory that x does not share: for callers that
    know which (an output they just allocated, or their own check), to whom the overlap test
    would cost about 0.2 us a call. Shapes and dtypes as ``forward``."""
    key = (x.dtype, y is None, mean is None, rstd is None, w is None, b is None)
    block = stream = False
    if x.size >= PARALLEL_MIN_ELEMENTS:
        block = x.nbytes > FORWARD_BLOCK_MIN_BYTES
        stream = _streams(x, STREAM_MIN_BYTES if y is not None else 2 * STREAM_MIN_BYTES)
        if x.shape[0] > 1 and _parallel_pays(x.size) and parallel_lock.acquire(False):
            try:
                f = forward_parallel_entries.get(key) or _forward_entry(
                    forward_parallel, forward_parallel_entries, key, y, mean, rstd, x, w, b
                )
                f(y, mean, rstd, x, w, b, eps, center, block, stream, num_threads())
            finally:
                parallel_lock.release()
            return
    f = forward_entries.get(key) or _forward_entry(
        forward_serial, forward_entries, key, y, mean, rstd, x, w, b
    )
    f(y, mean, rstd, x, w, b, eps, center, block, stream, 1)


def _forward_entry(driver, entries, key, y, mean, rstd, x, w, b):
    """The entry point of ``driver`` (``forward_serial`` or ``forward_parallel``) for these
    arrays, made and kept in ``entries`` under ``key`` (see ``forward_entries``)."""
    f = entries[key] = driver_entry(driver, (y, mean, rstd, x, w, b, 0.0, True, False, False, 1))
    return f


def driver_entry(driver, args):
    """The entry point (``entry_point``) of a driver (``forward_serial``, ``forward_parallel``,
    ``backward_serial``, ``backward_parallel``) for ``args``, its arguments, with the arrays it
    only reads typed writeable, read-only or not: x (unless the forward writes it in place:
    y None), w and b; dy, x, mean, rstd and w."""
    if driver is forward_serial or driver is forward_parallel:
        return entry_point(driver, args, (4, 5) if args[0] is None else (3, 4, 5))
    return entry_point(driver, args, (5, 6, 7, 8, 9))


_scratch = threading.local()


def _scratch_partials(nc, N, dtype, offset):
    """Two (nc, N) scratch arrays of ``dtype`` for the backward pass's partial sums, kept per
    thread and reused while the shape stays the same: fresh pages of a new allocation cost more
    to fault in than the partial sums cost to compute.

    ``offset``: dx's place within a 4 KB page (0 <= offset < ``PAGE``, a multiple of the
    itemsize). The partial sums for dw start ``PARTIALS_W_SHIFT`` bytes past it within a page,
    those for db ``PARTIALS_B_SHIFT`` past it:

    - both at dx's place within a cache line, so that the columns where dx's rows have their
      whole lines (``_backward_rows_lines``) are whole lines of the partial sums too.
      Accumulators spanning two lines cost the second pass more than x, dy and dx doing so:
      each line of them is loaded and stored once a row;
    - and away from dx's (and x's and dy's, which the streamed backward places it at) place
      within a page, and from each other's. A core's store-to-load check compares addresses
      first by their low 12 bits: each line of the accumulators is loaded right after dx's same
      line is stored, and dw's next line right after db's line is stored. Placed where they
      fell from the allocator (often 64 bytes apart, anywhere in the page), the streamed
      backward's time varied from process to process. One thread, x, dy and dx 16 bytes past a
      page, against the accumulators both at dx's place within a page, float32: 64x1024 (in
      the caches) 1.17-1.25x faster with dw 1024 and db 3072 bytes past it, 2048x1024
      1.27-1.30x, 1024x2048 1.25-1.27x. Through ``layer_norm_backward`` on 2 threads, side
      by side in one process: at 4096x1024 against both at dx's place 1.12-1.29x, against the
      allocator's places (64 bytes apart, elsewhere in the page) 0.97-1.16x, median 1.05x; the
      whole change against the former placement's package, 4096x1024 0.95-1.13x over six
      runs (the medians of 25 interleaved rounds' ratios in two more: 0.96x and 1.01x),
      2048x1024 1.05-1.08x, 8192x4096 0.99-1.03x, 8192x256 (not streamed) 0.98-1.0x. So no
      gain on average where the allocator happens to place them well; it removes the cases
      where it does not.

    The views at each offset are made once (a small output's offset changes from call to
    call)."""
    key = (nc, N, dtype)
    bufs = getattr(_scratch, "partials", None)
    if bufs is None or bufs[0] != key:
        size = nc * N + PAGE // np.dtype(dtype).itemsize
        bufs = (key, np.empty(size, dtype), np.empty(size, dtype), {})
        _scratch.partials = bufs
    views = bufs[3].get(offset)
    if views is None:
        views = bufs[3][offset] = (
            _view_at(bufs[1], nc, N, (offset + PARTIALS_W_SHIFT) % PAGE, PAGE),
            _view_at(bufs[2], nc, N, (offset + PARTIALS_B_SHIFT) % PAGE, PAGE),
        )
    return views


def _view_at(buf, nc, N, offset, align=LINE_BYTES):
    """The (nc, N) view of the flat array buf (of at least nc * N + ``align`` / itemsize
    elements) whose data start ``offset`` bytes past an ``align``-byte boundary."""
    k = (offset - buf.ctypes.data) % align // buf.itemsize
    return buf[k : k + nc * N].reshape(nc, N)


def forward_out_place(x):
    """Where a new y for ``forward(y, ..., x, ...)`` should start: (offset, align), y's data
    ``offset`` bytes past an ``align``-byte boundary (``_memory.empty``'s arguments). Where the
    forward streams (``_streams``), x's place within a 4 KB page, else a cache line boundary.
    x: (M, N), float32/float64.

    A core's store-to-load check compares addresses first by their low 12 bits, which a page
    offset fixes. Where y starts 16 or 48 bytes past x's place within a line (as a line-aligned
    y does, NumPy's large arrays starting 16 bytes past a line), or 64, each streamed line of y
    overlaps in those bits the next line of x, and a load of it issued after the store waits
    for the store. Measured side by side on 2 cores (AMD EPYC, Zen 3), float32, while each line
    of x was loaded after the store of the line before, the forward into y at x's place within a
    page against 48 bytes past it: 4096x1024 1.2-1.4x (RMSNorm 1.45x), 4096x1024 float64 1.1x,
    8192x4096 0.9-1.2x (alike within the noise); 64 past it 1.25x slower, 128 past it alike.
    Since each line of x is loaded before the line before it is stored
    (``store_lines_normalized``) the place measures alike (0.93-1.05x at 4096x1024); it still
    keeps y's stores clear of the lines of x loaded after them, wherever the pool's buffer
    falls. The passes with ordinary stores (2048x1024, 8192x256, 256x1024) ran alike wherever
    y was.
    """
    if not _streams(x, STREAM_MIN_BYTES):
        return 0, LINE_BYTES
    return x.ctypes.data % PAGE, PAGE


def backward_out_place(dy, x):
    """Where a new dx for ``backward(dx, ..., dy, x, ...)`` should start: (offset, align) as
    ``forward_out_place``. Where the backward streams (``_streams``), the place within a 4 KB
    page of whichever of x and dy the other starts less than half a page after (x's where both
    start at one place): neither then starts just before dx within a page, so no line of dx
    overlaps, in the low 12 address bits, a line of x or dy loaded after its store (see
    ``forward_out_place``). Else a cache line boundary. dy, x: (M, N), one float dtype.

    Measured side by side on 2 cores (AMD EPYC), float32, x and dy 16 bytes past a line, dx at
    x's place within a line against on a line boundary: 4096x1024 and 8192x1024 1.0-1.32x (five
    runs of six 1.17x or more), 2048x4096 1.0x. On a Zen 3, 4096x1024, dx 64 bytes past x's
    place within a page ran 1.15-1.3x slower than at it; 128, 1024, 2048 bytes past it, alike.
    With x 16 bytes past a page and dy 0, 48 or 64 (elsewhere within a line), dx at the place
    above against a line boundary 64 bytes past a page (where the pool's line-aligned buffer
    falls after NumPy's large arrays): 1.36-1.8x; with dy 64 bytes before x, 1.13-1.35x.
    The backward with ordinary stores (``_backward_rows_lines``) measured the other way, 0.63-0.81x
    at 8192x256 with dx at x's place within a line: each row's partial first and last lines are
    then extra lines of work, where misaligned loads of x and dy cost less."""
    if not _streams(x, BACKWARD_STREAM_MIN_BYTES):
        return 0, LINE_BYTES
    ox = x.ctypes.data % PAGE
    ody = dy.ctypes.data % PAGE
    offset = ox if (ody - ox) % PAGE < PAGE // 2 else ody  # the one the other follows
    if offset % x.itemsize:
        return 0, LINE_BYTES
    return offset, PAGE


def backward(dx, dw, db, dy, x, mean, rstd, w):
    """Backward of ``forward``: dx, and dw/db summed over rows.

    dx: (M, N) out; dw: (N,) out; db: (N,) out or None (not computed); dy, x: (M, N); mean:
    (M,) or None (RMSNorm); rstd: (M,); w: (N,) or None; all C-contiguous, one float dtype.
    """
    M, N = x.shape
    nc = n_chunks(M)
    offset = 0  # small inputs: the accumulators' place is not worth a look at dx's address
    if x.size >= PARALLEL_MIN_ELEMENTS:
        offset = dx.ctypes.data % PAGE
        if offset % dx.itemsize:  # dx not aligned to its dtype: no line-aligned columns anyway
            offset = 0
    part_w, part_b = _scratch_partials(nc, N, x.dtype, offset)  # (nc, N) per-chunk partial sums
    if db is None:
        part_b = None
    stream = _streams(x, BACKWARD_STREAM_MIN_BYTES)
    args = (dx, dw, db, part_w, part_b, dy, x, mean, rstd, w, stream)
    if nc > 1 and _parallel_pays(x.size) and parallel_lock.acquire(False):
        try:
            _backward_entry(backward_parallel, args)(*args)
        finally:
            parallel_lock.release()
    else:
        _backward_entry(backward_serial, args)(*args)


# The backward drivers' entry points by (driver, dtype, db is None, mean is None, w is None),
# which fixes their signature as ``forward_entries``' key fixes the forward's.
backward_entries = {}


def _backward_entry(driver, args):
    """The entry point of ``driver`` (``backward_serial`` or ``backward_parallel``) for
    ``args``, its arguments (see ``entry_point``)."""
    key = (driver, args[6].dtype, args[2] is None, args[7] is None, args[9] is None)
    f = backward_entries.get(key)
    if f is None:
        f = backward_entries[key] = driver_entry(driver, args)
    return f
