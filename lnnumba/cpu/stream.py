"""Non-temporal ("streaming") stores and prefetches, for outputs too large to stay in the caches.

An ordinary store first reads its cache line from memory (to own it), then writes it back when
the line is evicted: an output written with ordinary stores costs two memory transfers per byte.
A non-temporal store writes whole lines straight to memory, without the read and without
evicting the inputs from the caches. Measured on 2 cores (a parallel copy of float32 arrays):

    ======  ==========  ==============  ========
    array   plain copy  streaming copy  speed-up
    ======  ==========  ==============  ========
    16 MB   603 us      602 us          1.00x
    32 MB   1368 us     1184 us         1.16x
    64 MB   4362 us     2396 us         1.82x
    128 MB  10040 us    7449 us         1.35x
    ======  ==========  ==============  ========

For outputs that fit the last-level cache they gain nothing, and the next reader of the output
would find it in memory rather than in the cache; the kernels stream only large outputs.

Numba has no non-temporal store, so these are intrinsics: LLVM IR for one 64-byte vector store
with ``!nontemporal`` metadata, which LLVM lowers to the target's instruction (``vmovntps`` and
the like on x86, ``stnp`` on AArch64) or to an ordinary store where there is none. The value
stored must come straight from vector registers: written to a buffer first and loaded back, it
runs at a fraction of the speed (a line loaded from narrower stores still in flight waits for
them), and streaming a whole computed block from a buffer in the cache measured 1.3x slower
than computing each line in registers (``store_lines_normalized``, ``store_lines_backward``).

Non-temporal stores are weakly ordered: a thread that streams calls ``store_fence`` before
another thread may read what it wrote (the kernels do so at the end of their share of the rows,
before the parallel region joins).
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.extending import intrinsic, overload

# Bytes of one non-temporal vector store: a cache line. Its destination must be aligned to it.
LINE_BYTES = 64


def line_type(context, dtype):
    """The LLVM vector type of one cache line of ``dtype`` elements, and the element size."""
    et = context.get_value_type(dtype)
    size = context.get_abi_sizeof(et)
    return ir.VectorType(et, LINE_BYTES // size), size


def line_ptr(context, builder, aty, a, kty, k, vt):
    """Pointer to the line vector (vt) at a[k] (a: a 1-d array of type aty, k of type kty)."""
    data = context.make_array(aty)(context, builder, a).data
    k = context.cast(builder, k, kty, types.intp)
    return builder.bitcast(builder.gep(data, [k]), vt.as_pointer())


def splat(context, builder, v, vty, dtype, vt):
    """The vector (vt) with every element v (of type vty) converted to ``dtype``."""
    v = context.cast(builder, v, vty, dtype)
    u = ir.Constant(vt, ir.Undefined)
    for e in range(vt.count):
        u = builder.insert_element(u, v, ir.IntType(32)(e))
    return u


def lane_mask(context, builder, vt, q0, q0ty, q1, q1ty):
    """The i1 vector (one per lane of vt) true for lanes q0..q1-1 (q0, q1 of types q0ty,
    q1ty)."""
    it = ir.IntType(64)
    iv = ir.VectorType(it, vt.count)
    idx = ir.Constant(iv, [it(e) for e in range(vt.count)])
    lo = splat(context, builder, q0, q0ty, types.int64, iv)
    hi = splat(context, builder, q1, q1ty, types.int64, iv)
    return builder.and_(builder.icmp_signed(">=", idx, lo), builder.icmp_signed("<", idx, hi))


def store_line_vector(builder, v, ptr, align, nontemporal):
    """A store of the line vector v to ptr: non-temporal (``store_nontemporal``; ptr
    LINE_BYTES-aligned) or ordinary (ptr aligned to ``align``, the element size)."""
    if nontemporal:
        store_nontemporal(builder, v, ptr)
    else:
        builder.store(v, ptr, align=align)


def _named_intrinsic(typer, name, doc):
    """``intrinsic(typer)`` under ``name`` with docstring ``doc``: the intrinsics the factories
    below make in several variants each."""
    typer.__name__ = typer.__qualname__ = name
    typer.__doc__ = doc
    return intrinsic(typer)


def store_nontemporal(builder, v, ptr):
    """A non-temporal store of the line vector v to ptr (LINE_BYTES-aligned)."""
    store = builder.store(v, ptr, align=LINE_BYTES)
    store.set_metadata("nontemporal", builder.module.add_metadata([ir.IntType(32)(1)]))


@intrinsic
def _store_line(typingctx, dst, k, src, j):
    """dst[k:k+L] = src[j:j+L], L = LINE_BYTES / itemsize, as one non-temporal store.

    dst, src: 1-d C-contiguous arrays of one float dtype; k, j: indices. The caller guarantees
    that the L elements exist in both and that &dst[k] is LINE_BYTES-aligned (src needs no
    alignment beyond its dtype's)."""
    if not (
        isinstance(dst, types.Array)
        and isinstance(src, types.Array)
        and dst.dtype == src.dtype
        and isinstance(dst.dtype, types.Float)
    ):
        return None
    sig = types.void(dst, k, src, j)

    def codegen(context, builder, signature, args):
        st = signature.args
        vt, size = line_type(context, st[0].dtype)
        v = builder.load(line_ptr(context, builder, st[2], args[2], st[3], args[3], vt), align=size)
        store_nontemporal(
            builder, v, line_ptr(context, builder, st[0], args[0], st[1], args[1], vt)
        )
        return context.get_dummy_value()

    return sig, codegen


def _normalize(builder, v, x0, r, cr, wl, bl):
    """((v - x0) * r - cr) * wl + bl on line vectors (wl, bl None: 1 and 0), with only the
    contractions to fused multiply-adds that the kernels' other element-wise loops also allow
    (``contract``, ``nsz``)."""
    flags = ("contract", "nsz")
    v = builder.fsub(builder.fmul(builder.fsub(v, x0, flags=flags), r, flags=flags), cr,
                     flags=flags)  # fmt: skip
    if wl is not None:
        v = builder.fmul(v, wl, flags=flags)
    if bl is not None:
        v = builder.fadd(v, bl, flags=flags)
    return v


def _prefetch(builder, p):
    """Asks for the line holding p (an element pointer) in L1: ``llvm.prefetch``, read, high
    locality, data (``prefetcht0`` on x86)."""
    i8p = ir.IntType(8).as_pointer()
    i32 = ir.IntType(32)
    fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
    fn = builder.module.declare_intrinsic("llvm.prefetch", [i8p], fnty)
    builder.call(fn, [builder.bitcast(p, i8p), i32(0), i32(3), i32(1)])


def _normalized_types(y, x, w, b):
    """Whether the normalized-line intrinsics take these array types: y and x one float array
    type, w and b arrays of its dtype or None."""
    if not (isinstance(y, types.Array) and isinstance(y.dtype, types.Float) and x == y):
        return False
    return all(a == types.none or (isinstance(a, types.Array) and a.dtype == y.dtype)
               for a in (w, b))  # fmt: skip


@intrinsic
def store_lines_normalized(typingctx, y, x, w, b, k, j, n, x0, r, cr, ahead, end):
    """n >= 1 cache lines of one row of the forward pass, from the line at flat index k (column
    j): for each, y[k:k+L] = ((x[k:k+L] - x0) * r - cr) * w[j:j+L] + b[j:j+L], L elements,
    computed in vector registers and written with one non-temporal store, then x[k + ahead]
    asked for in L1 (``prefetch_l1``) while k + ahead < end.

    Each line of x is loaded before the line before it is stored. A core's store-to-load check
    compares addresses first by their low 12 bits: where y starts 16 or 48 bytes past x's place
    within a 4 KB page, each line of y overlaps in those bits part of the next line of x, and a
    load issued after that store waits for it. Measured side by side on 2 cores (AMD EPYC, Zen
    3), float32, against a line loaded after the store of the line before: 4096x1024 with y 16
    or 48 bytes past x's place 1.2-1.3x, at x's place 1.01-1.07x; 8192x4096 1.07x and 1.02x.

    With both w and b the streamed forward (``cpu.norm._forward_rows_stream``, 2 cores,
    4096x1024 float32, while a copy ran at 450-480 us) took 1.10-1.20x as long as with either
    alone or neither, which measured alike; in a busier state (copy about 800 us) all ran
    alike. Not changed by where w and b sit within a page (also both one array), by a prefetch
    distance of 8 KB instead of 16, by loading w's and b's next lines before this line's store,
    nor by adding b without contraction: not found. Inlined into ``_forward_rows_stream``, the
    loop reloads two pointers and a bound from the stack at each line; made a function of its
    own (not inlined, every value in a register), it measured 0.89-1.09x over six runs through
    ``layer_norm(x, w, b, out=y)`` at 4096x1024 and 8192x4096: not kept.

    y, x: 1-d C-contiguous arrays of one float dtype (the same array in place: each line is
    still read before it is written); w, b: 1-d of that dtype, or None (1 and 0); x0, r, cr:
    scalars, converted to the dtype; k, j, n, ahead, end: integers. &y[k] must be
    LINE_BYTES-aligned. The arithmetic is ``store_seam_normalized``'s.
    """
    if not _normalized_types(y, x, w, b):
        return None
    sig = types.void(y, x, w, b, k, j, n, x0, r, cr, ahead, end)

    def codegen(context, builder, signature, args):
        st = signature.args
        ft = st[0].dtype
        vt, size = line_type(context, ft)
        intp = context.get_value_type(types.intp)
        k0, j0, nv, aheadv, endv = (
            context.cast(builder, args[i], st[i], types.intp) for i in (4, 5, 6, 10, 11)
        )
        x0, rv, crv = (splat(context, builder, args[i], st[i], ft, vt) for i in (7, 8, 9))

        def data_of(i):
            if st[i] == types.none:
                return None
            return context.make_array(st[i])(context, builder, args[i]).data

        data = [data_of(i) for i in range(4)]  # y, x, w, b

        def line(i, idx):
            return builder.bitcast(builder.gep(data[i], [idx]), vt.as_pointer())

        def out(xl, q):  # line q (from 0) of the range, x's line xl already loaded
            jq = builder.add(j0, q)
            kq = builder.add(k0, q)
            wl = None if data[2] is None else builder.load(line(2, jq), align=size)
            bl = None if data[3] is None else builder.load(line(3, jq), align=size)
            store_nontemporal(builder, _normalize(builder, xl, x0, rv, crv, wl, bl), line(0, kq))
            kp = builder.add(kq, aheadv)
            with cgutils.if_likely(builder, builder.icmp_signed("<", kp, endv)):
                _prefetch(builder, builder.gep(data[1], [kp]))

        L = ir.Constant(intp, vt.count)
        one = ir.Constant(intp, 1)
        cur = cgutils.alloca_once(builder, vt)  # the line loaded ahead of its store
        builder.store(builder.load(line(1, k0), align=size), cur)
        with cgutils.for_range(builder, builder.sub(nv, one)) as loop:
            q = builder.mul(loop.index, L)
            ahead_line = builder.load(line(1, builder.add(builder.add(k0, q), L)), align=size)
            out(builder.load(cur), q)
            builder.store(ahead_line, cur)
        out(builder.load(cur), builder.mul(builder.sub(nv, one), L))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def store_seam_normalized(typingctx, y, yk, x, xk, w, b, wk, x0, r, cr, s):
    """The forward pass's line where one row ends and the next begins, at y[yk:yk+L] from
    x[xk:xk+L] (one cache line, L elements): lanes 0..s-1 are the first row's last columns,
    lanes s..L-1 the second row's first, each computed with its own row's statistics (2-tuples
    x0, r, cr: the first row's, then the second's) with ``store_lines_normalized``'s arithmetic,
    and written with one non-temporal store. w and b hold the weights and biases of the line's
    lanes' columns, from wk (see ``store_seam_backward``), or None. &y[yk] must be
    LINE_BYTES-aligned."""
    if not _normalized_types(y, x, w, b):
        return None
    if not (
        all(isinstance(t, types.UniTuple) and t.count == 2 for t in (x0, r, cr))
        and isinstance(s, types.Integer)
    ):
        return None
    sig = types.void(y, yk, x, xk, w, b, wk, x0, r, cr, s)

    def codegen(context, builder, signature, args):
        yv, ykv, xv, xkv, wv, bv, wkv = args[:7]
        st = signature.args
        ft = st[0].dtype
        vt, size = line_type(context, ft)
        end = context.get_constant(types.intp, vt.count)
        second = lane_mask(context, builder, vt, args[10], st[10], end, types.intp)

        def const(i):  # argument i in every lane, the second row's from lane s
            v0, v1 = (splat(context, builder, builder.extract_value(args[i], q),
                            st[i].dtype, ft, vt) for q in range(2))  # fmt: skip
            return builder.select(second, v1, v0)

        def load(i, a, ki):
            return builder.load(line_ptr(context, builder, st[i], a, st[ki], args[ki], vt),
                                align=size)  # fmt: skip

        wl = load(4, wv, 6) if st[4] != types.none else None
        bl = load(5, bv, 6) if st[5] != types.none else None
        v = _normalize(builder, load(2, xv, 3), const(7), const(8), const(9), wl, bl)
        store_nontemporal(builder, v, line_ptr(context, builder, st[0], yv, st[1], ykv, vt))
        return context.get_dummy_value()

    return sig, codegen


def _lines_backward(name, nontemporal, masked, doc, seam=False):
    """The intrinsic ``store_lines_backward`` (``nontemporal``), ``lines_backward``,
    ``line_backward_masked`` (``masked``: two more arguments, the lanes whose dw/db terms
    count) or ``store_seam_backward`` (``seam``: one line of two rows, one more argument, the
    lane where the second row starts). The rows' constants come as 1-tuples (2-tuples for a
    seam line)."""

    def typer(dx, dw_acc, db_acc, dy, x, w, k, j, m, cr, r, a, bb, lanes):
        if not all(isinstance(t, types.Integer) for t in lanes):
            return None
        if not (isinstance(dx, types.Array) and isinstance(dx.dtype, types.Float)):
            return None
        ft = dx.dtype
        if not all(isinstance(t, types.Array) and t.dtype == ft for t in (dw_acc, dy, x)):
            return None
        if not all(t == types.none or (isinstance(t, types.Array) and t.dtype == ft)
                   for t in (db_acc, w)):  # fmt: skip
            return None
        count = 2 if seam else 1  # a seam line's lanes take their constants from two rows
        if not all(isinstance(t, types.UniTuple) and t.count == count for t in (m, cr, r, a, bb)):
            return None
        sig = types.void(dx, dw_acc, db_acc, dy, x, w, k, j, m, cr, r, a, bb, *lanes)

        def codegen(context, builder, signature, args):
            st = signature.args
            vt, size = line_type(context, ft)
            flags = ("contract", "nsz")
            keep = None  # the lanes whose dw/db terms count (masked), as an i1 vector
            if masked:
                keep = lane_mask(context, builder, vt, args[13], st[13], args[14], st[14])
            dxv, dwv, dbv, dyv, xv, wv, kv, jv = args[:8]
            k = context.cast(builder, kv, st[6], types.intp)

            second = None  # seam: the lanes of the second row, as an i1 vector
            if seam:
                end = context.get_constant(types.intp, vt.count)
                second = lane_mask(context, builder, vt, args[13], st[13], end, types.intp)

            def splat_q(tup, tty, q):  # element q of a tuple, in every lane
                v = splat(context, builder, builder.extract_value(tup, q), tty.dtype, ft, vt)
                if second is not None:  # the second row's from lane s on
                    v2 = builder.extract_value(tup, 1)
                    v = builder.select(second, splat(context, builder, v2, tty.dtype, ft, vt), v)
                return v

            def line(i, idx):
                return line_ptr(context, builder, st[i], args[i], types.intp, idx, vt)

            wl = None
            if st[5] != types.none:
                wl = builder.load(line_ptr(context, builder, st[5], wv, st[7], jv, vt), align=size)
            m_, cr_, r_, a_, bb_ = (splat_q(args[8 + t], st[8 + t], 0) for t in range(5))
            xl = builder.load(line(4, k), align=size)
            g = builder.load(line(3, k), align=size)
            h = builder.fsub(builder.fmul(builder.fsub(xl, m_, flags=flags), r_, flags=flags),
                             cr_, flags=flags)  # fmt: skip
            gw = builder.fmul(g, wl, flags=flags) if wl is not None else g
            d = builder.fsub(builder.fsub(gw, a_, flags=flags),
                             builder.fmul(h, bb_, flags=flags), flags=flags)  # fmt: skip
            out = builder.fmul(r_, d, flags=flags)
            store_line_vector(builder, out, line(0, k), size, nontemporal)

            def accumulate(acc_ty, acc, term):
                # acc + term, contracted to a fused multiply-add where term is a product; the
                # lanes outside ``keep`` keep acc. Selecting after the sum, not the term before
                # it, keeps the contraction where the target has no masked fused multiply-add
                # (AVX2), so every lane's sum rounds as the unmasked lines' do
                p = line_ptr(context, builder, acc_ty, acc, st[7], jv, vt)
                old = builder.load(p, align=size)
                new = builder.fadd(old, term, flags=flags)
                if keep is not None:
                    new = builder.select(keep, new, old)
                builder.store(new, p, align=size)

            accumulate(st[1], dwv, builder.fmul(g, h, flags=flags))
            if st[2] != types.none:
                accumulate(st[2], dbv, g)
            return context.get_dummy_value()

        return sig, codegen

    if masked:

        def lines(typingctx, dx, dw_acc, db_acc, dy, x, w, k, j, m, cr, r, a, bb, q0, q1):
            return typer(dx, dw_acc, db_acc, dy, x, w, k, j, m, cr, r, a, bb, (q0, q1))

    elif seam:

        def lines(typingctx, dx, dw_acc, db_acc, dy, x, w, k, j, m, cr, r, a, bb, s):
            return typer(dx, dw_acc, db_acc, dy, x, w, k, j, m, cr, r, a, bb, (s,))

    else:

        def lines(typingctx, dx, dw_acc, db_acc, dy, x, w, k, j, m, cr, r, a, bb):
            return typer(dx, dw_acc, db_acc, dy, x, w, k, j, m, cr, r, a, bb, ())

    return _named_intrinsic(lines, name, doc)


store_lines_backward = _lines_backward(
    "store_lines_backward",
    True,
    False,
    """One cache line of one row's second backward pass, in vector registers: with
h = (x - m) * r - cr and gw = dy * w, for the line at k of the flattened arrays,

    dx = r * (gw - a - h * bb)                      (non-temporal stores)
    dw_acc[j:j+L] += dy * h,  db_acc[j:j+L] += dy

dx, dy, x: 1-d C-contiguous, one float dtype; dw_acc: (N,) of it; db_acc, w: (N,) of it or
None; k, j: the flat index of the line, its column; m, cr, r, a, bb: 1-tuples of the dtype.
&dx[k] must be LINE_BYTES-aligned. Contracts to fused multiply-adds only (``contract``,
``nsz``), like the kernels' element-wise loops: dw_acc's sum is one, dy * h + dw_acc.
""",
)

lines_backward = _lines_backward(
    "lines_backward",
    False,
    False,
    """``store_lines_backward`` with ordinary stores, for outputs that stay in the caches: the
same arithmetic, and no alignment needed beyond the dtype's.""",
)

line_backward_masked = _lines_backward(
    "line_backward_masked",
    False,
    True,
    """``lines_backward`` for a line whose dw/db terms count only in lanes q0..q1-1 (two more
arguments, q0 and q1): dx is written in every lane, and the other lanes' accumulators keep
their values. For a row's first and last partial lines, taken as whole lines that overlap the
row's aligned lines (``cpu.norm._backward_rows_lines``, and the streamed passes): the
overlapping lanes' dx is written twice, the same value, and their dw/db terms are added once;
every column then gets the aligned lines' arithmetic, wherever the rows start within a line.
Elements of a row before its line boundary are otherwise a scalar loop's work or a function
call each, which cost a row of 256 float32 more than its aligned lines saved.""",
)


store_seam_backward = _lines_backward(
    "store_seam_backward",
    True,
    False,
    """``store_lines_backward`` for the line where one row ends and the next begins: lanes
0..s-1 are the first row's last columns, lanes s..L-1 the second row's first, each computed
with its own row's constants (2-tuples m, cr, r, a, bb: the first row's, then the second's; one
more argument, s). w and the accumulators are the line's own: w (L,) holds the weights of its
lanes' columns, and the dw/db terms are added to dw_acc[j:j+L] and db_acc[j:j+L], lane for lane
(``cpu.norm._backward_rows_stream`` folds them into the columns'). &dx[k] must be
LINE_BYTES-aligned. Rows that start part-way through a line are so streamed in whole lines,
where the part-lines at each row's ends took ordinary stores and short loops: the backward of
65536x64 float32 ran twice as fast without them.""",
    seam=True,
)


@intrinsic
def prefetch_l1(typingctx, a, k):
    """Asks the cache for the line holding a[k] (a: a 1-d array; k: an index, which need not
    be in range: a prefetch never faults), to be read soon, into L1 (LLVM's ``llvm.prefetch``,
    high locality; ``prefetcht0`` on x86)."""
    if not isinstance(a, types.Array):
        return None
    sig = types.void(a, k)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        k = context.cast(builder, args[1], signature.args[1], types.intp)
        _prefetch(builder, builder.gep(data, [k]))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def store_fence(typingctx):
    """A full memory fence (``mfence`` on x86): orders this thread's non-temporal stores
    before everything it does after, so that other threads see them once they see that."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return sig, codegen


def line_len(a):
    """Elements of a's dtype in a cache line: ``LINE_BYTES // a.itemsize``, a constant in
    compiled code (an overload of the dtype), where ``a.itemsize`` is read from the array at
    run time. A loop over range(h, e, L) or stepping by such an L computes its addresses
    afresh each step: the backward's line loop (64 rows of 1024 float32, in L2, one core) took
    147-157 ns a row with the constant, 173-176 with ``itemsize``."""
    return LINE_BYTES // a.itemsize


@overload(line_len, inline="always")
def _line_len_impl(a):
    size = LINE_BYTES // (a.dtype.bitwidth // 8)
    return lambda a: size


@njit(nogil=True, cache=True)
def line_head(a, k, n):
    """How many of the n elements from a[k] (a: 1-d, C-contiguous) come before the first cache
    line boundary: at most n, and n where a is not aligned to its dtype (never so from NumPy's
    allocator; then no element starts a line)."""
    size = a.itemsize
    addr = np.intp(a.ctypes.data) + k * size  # signed: unsigned mixed with int is float
    if addr % size != 0:
        return n
    return min(n, (LINE_BYTES - addr % LINE_BYTES) % LINE_BYTES // size)


@njit(nogil=True, cache=True)
def stream_copy(dst, k, src):
    """dst[k:k+n] = src (n = src.size), with non-temporal stores for the whole cache lines (a
    streaming copy: the benchmarks' roofline for moving bytes).

    dst, src: 1-d C-contiguous arrays of one float dtype, k + n <= dst.size. The elements
    before dst's first line boundary and after its last one take ordinary stores. The caller
    calls ``store_fence`` before other threads read dst.
    """
    n = src.shape[0]
    per_line = line_len(dst)
    head = line_head(dst, k, n)
    for j in range(head):
        dst[k + j] = src[j]
    j = head
    while j + per_line <= n:
        _store_line(dst, k + j, src, j)
        j += per_line
    for q in range(j, n):
        dst[k + q] = src[q]
