"""CUDA kernels for layer norm and RMSNorm (numba-cuda), forward and backward.

Work layout
-----------
A row (one example, N elements) is handled by a *group* of G threads (G a power of two, 32 to
1024 on a GPU); a block of T threads holds R = T // G groups, so small rows still fill the
machine with many rows per block. Thread ``lane`` of a group owns the elements
``j = lane + k * G`` for k < K: consecutive lanes touch consecutive addresses (coalesced), and
the K values stay in registers (a local array of compile-time size K, indexed only by unrolled
loops) between the passes, so each row is read from device memory once. Kernels are specialized
on (K, G, T, dtype) by factories and cached.

Reductions over a group
-----------------------
On a GPU: a butterfly of warp shuffles (``shfl_xor_sync``) inside each warp, then, for groups
wider than a warp, one round through shared memory (one barrier). Consecutive reductions use
different shared slots, so no second barrier is needed before the next one.

Under Numba's CUDA simulator, which does not implement the shuffles, the same kernels reduce
with a shared-memory tree instead: the factories take ``sim`` and choose the reduction, and
everything else in a kernel is the same code, tested in CI without a GPU. Every thread of a
block reaches every barrier: rows past the end are masked, never returned from early.

Numerics
--------
Arithmetic in the storage dtype (float32 accumulation for float32 data). The mean is kept as two
terms, the row's first element k0 plus the mean of x - k0, and values are centered as
(x - k0) - ms: both differences are exact or nearly (Sterbenz), so a row of 1e4 + N(0, 1) keeps
its digits (no E[x^2] - E[x]^2). CUDA kernels are compiled without fast-math, so the order holds.
dweight/dbias are summed per block in registers, then over the blocks' partial rows in a fixed
order by a second kernel: no atomics, the same bits on every run.

Bytes moved (the bandwidth floor)
---------------------------------
forward:  read x, write y: 2 * M * N * itemsize (+ 2 * M * itemsize for mean and rstd)
backward: read x and dy, write dx: 3 * M * N * itemsize, + the dweight/dbias partials
          (2 * P * N * itemsize written and read back, P = the backward's blocks, a few per
          multiprocessor: small against M)
"""

import functools
import math

from numba import cuda, float32, float64, uint32

MAX_THREADS = 1024
WARP = 32
FULL_MASK = 0xFFFFFFFF

# Launch shapes on a GPU (the simulator uses tiny ones, see the plans). Module constants, read at
# every launch.
# The values are the fastest of sweeps with benchmarks/gpu.py's shapes, float32, and its --set
# option. On an H200: forward max K 4/8/16 x 128-512 threads; backward max K 4/8 x 256-1024
# threads x 1-8 blocks per multiprocessor. Then on an H100: forward max K 8/16/32 x widest group
# 256/512/1024 x 128/256 threads; backward max K 4/8/16 x widest group 512/1024 x 256-1024
# threads x 1-4 blocks per multiprocessor. On the H100, against the H200's values:
#   backward (max K 16, groups of at most 512, one block per multiprocessor): about 1.4x at
#   65536x1024, 1.2x at 16384x4096 and at 4096x16384;
#   forward (groups of at most 512): 1.24x at 4096x16384, the same elsewhere.
# On an H200 (2026-11-27), forward max K 4/8/16 x 128-512 threads again: these values were the
# fastest at all three shapes. So was two reductions against one merged one (each thread's count,
# mean and squared deviations, merged pairwise as Chan et al.): the merge took 127 registers
# against 113 and ran at 0.71-0.83x.
# Rows of 16384 still spill the backward's registers (five values an element, 32 elements a
# thread); reading x and the weight again in its second pass instead of holding them: 0.83x.
# Nor did a forward that holds nothing between its passes pay (H200, 2026-11-28): each of its
# three passes read the row again, from the L2 cache, so that fewer registers would let more
# rows be resident. Over 47 launch shapes (K 8-64, groups 128-1024, blocks 256-1024, caps of
# 40 and 64 registers) it ran at 0.06-0.41 of the copy at 16384x4096 and 4096x16384, against
# this kernel's 0.64 and 0.53; slower with more elements a thread and under the lower cap, as
# register spills would make it.
FWD_MAX_K = 16  # forward: at most this many elements per thread before a group grows
FWD_MAX_GROUP = 512  # forward: the widest group; past it K grows (rows of 16384: K = 32)
FWD_THREADS = 128  # forward: threads per block (at least G)
# forward: registers per thread at most for the float32 kernel without mean/rstd outputs
# (layer_norm, rms_norm) at up to FWD_MAX_K elements a thread. It needs 113-124 otherwise, which
# leaves a quarter of a multiprocessor's threads resident; 80 holds it without spills. Measured
# on an H200 side by side with no cap, share of the copy: 65536x1024 0.726 against 0.679,
# 16384x4096 0.64 against 0.547; caps of 96/72/64 were no better. Rows of 16384 (32 elements a
# thread) spill even uncapped and ran slower at any cap. The kernel that also saves mean/rstd
# would spill 8-20 bytes at 80 (ptxas): not capped.
FWD_MAX_REGS = 80
BWD_MAX_K = 16  # backward: elements per thread (x, dy, weight and two sums each held)
BWD_MAX_GROUP = 512  # backward: the widest group; past it K grows (rows of 16384: K = 32)
BWD_THREADS = 512  # backward: threads per block (at least G)
BWD_BLOCKS_PER_SM = 1  # backward: resident blocks per multiprocessor (rows are strided over)
SUM_COLS, SUM_SLICES = 32, 16  # the partial-sum kernel's block: columns x slices of the rows


def group_shape(N, max_k, max_group, sim):
    """(G, K): threads per row and elements per thread for rows of N elements.

    G grows from one warp until each thread holds at most ``max_k`` elements (up to
    ``max_group`` threads, at most 1024, then K grows). Under the simulator (one OS thread per
    CUDA thread) G stays at most 32 and no larger than needed.
    """
    G = WARP
    while G < min(max_group, MAX_THREADS) and G * max_k < N:
        G *= 2
    if sim:
        G = min(G, WARP)
        while G > 1 and G // 2 >= N:
            G //= 2
    return G, -(-N // G)


def forward_plan(M, N, sim):
    """(G, K, T, blocks) for the forward kernel: one row per group, R = T // G rows a block."""
    G, K = group_shape(N, FWD_MAX_K, FWD_MAX_GROUP, sim)
    T = max(G, 64 if sim else FWD_THREADS)
    return G, K, T, max(1, math.ceil(M / (T // G)))


def forward_max_regs(K, is64, stats):
    """The register cap of the forward kernel (``FWD_MAX_REGS`` where it was measured: float32,
    no mean/rstd outputs, at most ``FWD_MAX_K`` elements a thread), else 255 (no cap)."""
    return FWD_MAX_REGS if not (is64 or stats or K > FWD_MAX_K) else 255


def backward_plan(M, N, sim, multiprocessors):
    """(G, K, T, blocks) for the backward kernel: groups stride over the rows, and the grid is
    at most a few blocks per multiprocessor (each block writes one row of partial sums)."""
    G, K = group_shape(N, BWD_MAX_K, BWD_MAX_GROUP, sim)
    if sim:  # several groups a block only for short rows: the final per-block sums cost K barriers
        T = max(G, 64) if K <= 4 else G
    else:
        T = max(G, BWD_THREADS)
    cap = 2 if sim else BWD_BLOCKS_PER_SM * multiprocessors
    return G, K, T, max(1, min(math.ceil(M / (T // G)), cap))


def _jit(T, sim, max_regs=255):
    """The kernel decorator for blocks of T threads: on a GPU the registers per thread are capped
    so that a block of T fits on one multiprocessor (65536 registers; ptxas spills past it),
    and at ``max_regs``."""
    if sim:
        return cuda.jit  # the simulator takes no register cap
    return cuda.jit(max_registers=min(255, 65536 // T, max_regs))


def _reducers(G, T, sim):
    """(slots, red, red3) for groups of G threads in blocks of T.

    red(sh, s, v, tid, lane) -> the sum of v over the group, using shared slot s;
    red3(sh, s, a, b, c, tid, lane) -> three sums at once, using slots s, s + 1, s + 2.
    ``sh`` is a shared array of shape (n_slots, slots); every thread of the block must call.
    """
    if sim:
        # shared-memory tree over the G slots of the group (a trailing barrier protects the
        # slot before its next use)
        @cuda.jit(device=True)
        def red(sh, s, v, tid, lane):
            sh[s, tid] = v
            cuda.syncthreads()
            h = G // 2
            while h > 0:
                if lane < h:
                    sh[s, tid] += sh[s, tid + h]
                cuda.syncthreads()
                h //= 2
            total = sh[s, tid - lane]
            cuda.syncthreads()
            return total

        @cuda.jit(device=True)
        def red3(sh, s, a, b, c, tid, lane):
            return (
                red(sh, s, a, tid, lane),
                red(sh, s + 1, b, tid, lane),
                red(sh, s + 2, c, tid, lane),
            )

        return T, red, red3

    W = min(G, WARP)  # lanes of a warp that belong to one group
    NW = G // WARP  # warps per group (0 when a group is inside one warp)

    @cuda.jit(device=True, inline=True)
    def warp_sum(v):
        if W >= 32:
            v += cuda.shfl_xor_sync(FULL_MASK, v, 16)
        if W >= 16:
            v += cuda.shfl_xor_sync(FULL_MASK, v, 8)
        if W >= 8:
            v += cuda.shfl_xor_sync(FULL_MASK, v, 4)
        if W >= 4:
            v += cuda.shfl_xor_sync(FULL_MASK, v, 2)
        if W >= 2:
            v += cuda.shfl_xor_sync(FULL_MASK, v, 1)
        return v

    @cuda.jit(device=True, inline=True)
    def red(sh, s, v, tid, lane):
        v = warp_sum(v)
        if NW > 1:
            if tid % WARP == 0:
                sh[s, tid // WARP] = v
            cuda.syncthreads()
            first = (tid - lane) // WARP
            v = sh[s, first]
            for i in range(1, NW):
                v += sh[s, first + i]
        return v

    @cuda.jit(device=True, inline=True)
    def red3(sh, s, a, b, c, tid, lane):
        a = warp_sum(a)
        b = warp_sum(b)
        c = warp_sum(c)
        if NW > 1:
            if tid % WARP == 0:
                w = tid // WARP
                sh[s, w] = a
                sh[s + 1, w] = b
                sh[s + 2, w] = c
            cuda.syncthreads()
            first = (tid - lane) // WARP
            a = sh[s, first]
            b = sh[s + 1, first]
            c = sh[s + 2, first]
            for i in range(1, NW):
                a += sh[s, first + i]
                b += sh[s + 1, first + i]
                c += sh[s + 2, first + i]
        return a, b, c

    return max(1, T // WARP), red, red3


@functools.cache
def forward_kernel(K, G, T, is64, sim, stats=True, max_regs=255):
    """Forward kernel: K elements per thread, groups of G threads, blocks of T threads; float64
    when ``is64`` else float32; ``sim`` selects the simulator's reduction.

    kernel(y, mean, rstd, x, w, b, eps, center, has_w, has_b, save)
    y, x: (M, N); mean, rstd: (M,) (written when ``save``, mean only when ``center``);
    w, b: (N,) (read when has_w/has_b, else any 1-element array); eps: float; center: LN (True)
    or RMSNorm (False). Launch with blocks = ceil(M / (T // G)) and T threads.
    ``stats=False``: kernel(y, x, w, b, eps, center, has_w, has_b), the same without mean and
    rstd (14 fewer launch parameters: a small call's launch costs about 0.07 us a parameter).
    """
    dt = float64 if is64 else float32
    R = T // G
    slots, red, _ = _reducers(G, T, sim)

    @cuda.jit(device=True, inline=True)
    def body(y, mean, rstd, x, w, b, eps, center, has_w, has_b, save):
        sh = cuda.shared.array((2, slots), dt)
        vals = cuda.local.array(K, dt)  # this thread's elements of the row (registers)
        tid = cuda.threadIdx.x
        lane = tid % G
        row = cuda.blockIdx.x * R + tid // G
        M = x.shape[0]
        N = x.shape[1]
        nf = dt(N)
        active = row < M
        # Loads are unconditional, from clamped indices, and masked afterwards: a load behind a
        # branch waits for the previous one, while straight-line loads are all in flight at once.
        # Columns are unsigned offsets into row views: no negative-index wraparound and no
        # stride multiplications in the address arithmetic, which otherwise limits the kernel.
        rr = min(row, M - 1)
        xr = x[rr]
        ul = uint32(lane)
        last = uint32(N - 1)
        k0 = cuda.selp(center, xr[0], dt(0))
        s = dt(0)
        for k in range(K):
            uj = ul + uint32(k * G)
            v = cuda.selp(active & (uj <= last), xr[min(uj, last)] - k0, dt(0))
            vals[k] = v
            s += v
        ms = dt(0)
        if center:
            ms = red(sh, 0, s, tid, lane) / nf
        q = dt(0)
        for k in range(K):
            uj = ul + uint32(k * G)
            d = cuda.selp(active & (uj <= last), vals[k] - ms, dt(0))
            vals[k] = d
            q += d * d
        var = red(sh, 1, q, tid, lane) / nf
        r = dt(1) / math.sqrt(var + dt(eps))
        # weight and bias for this thread's columns, all loads first (a 1-element stand-in
        # when absent, clamped to index 0 and not used)
        w_last = uint32(w.shape[0] - 1)
        b_last = uint32(b.shape[0] - 1)
        for k in range(K):
            uj = ul + uint32(k * G)
            wk = w[min(uj, w_last)]
            bk = b[min(uj, b_last)]
            v = vals[k] * r
            if has_w:
                v *= wk
            if has_b:
                v += bk
            vals[k] = v
        if active:
            yr = y[rr]
            for k in range(K):
                uj = ul + uint32(k * G)
                if uj <= last:
                    yr[uj] = vals[k]
            if save and lane == 0:
                if center:
                    mean[row] = k0 + ms
                rstd[row] = r

    if stats:

        @_jit(T, sim, max_regs)
        def kernel(y, mean, rstd, x, w, b, eps, center, has_w, has_b, save):
            body(y, mean, rstd, x, w, b, eps, center, has_w, has_b, save)

    else:

        @_jit(T, sim, max_regs)
        def kernel(y, x, w, b, eps, center, has_w, has_b):
            body(y, w, w, x, w, b, eps, center, has_w, has_b, False)  # w: never-written stats

    return kernel


@functools.cache
def backward_kernel(K, G, T, is64, sim):
    """Backward kernel: K elements per thread, groups of G threads, blocks of T threads.

    kernel(dx, part_w, part_b, dy, x, mean, rstd, w, center, has_w)
    dx, dy, x: (M, N); part_w, part_b: (P, N) partial sums of dweight/dbias, row p written by
    block p alone (P = the grid's blocks); mean, rstd: (M,) (mean read when ``center``);
    w: (N,) read when ``has_w``. The groups of the grid stride over the rows; each thread keeps
    its columns' weight and partial sums in registers across rows.
    """
    dt = float64 if is64 else float32
    R = T // G
    slots, _, red3 = _reducers(G, T, sim)

    @cuda.jit(device=True, inline=True)
    def block_row(part, p, j, ok, v, shb, tid, lane, grp):
        """part[p, j] = the sum of v over the block's R groups, in group order (where ok);
        every thread of the block calls."""
        if R == 1:
            if ok:
                part[p, j] = v
        else:
            shb[tid] = v
            cuda.syncthreads()
            if grp == 0 and ok:
                t = shb[lane]
                for i in range(1, R):
                    t += shb[i * G + lane]
                part[p, j] = t
            cuda.syncthreads()

    @_jit(T, sim)
    def kernel(dx, part_w, part_b, dy, x, mean, rstd, w, center, has_w):
        sh = cuda.shared.array((6, slots), dt)  # two sets of three slots, used in turn
        shb = cuda.shared.array(T, dt)  # the block's sums over its groups, at the end
        e = cuda.local.array(K, dt)  # x - mean for this thread's columns
        d = cuda.local.array(K, dt)  # dy
        wv = cuda.local.array(K, dt)  # weight (1 without one)
        acc_w = cuda.local.array(K, dt)  # sum over this group's rows of dy * xhat
        acc_b = cuda.local.array(K, dt)  # sum over this group's rows of dy
        tid = cuda.threadIdx.x
        lane = tid % G
        grp = tid // G
        stride = cuda.gridDim.x * R
        M = x.shape[0]
        N = x.shape[1]
        nf = dt(N)
        ul = uint32(lane)
        last = uint32(N - 1)
        w_last = uint32(w.shape[0] - 1)
        for k in range(K):
            uj = ul + uint32(k * G)
            # clamped index (a 1-element stand-in when absent)
            wv[k] = cuda.selp(has_w & (uj <= last), w[min(uj, w_last)], dt(1))
            acc_w[k] = 0
            acc_b[k] = 0
        n_iter = (M + stride - 1) // stride  # the same for every thread: barriers stay uniform
        for it in range(n_iter):
            row = cuda.blockIdx.x * R + grp + it * stride
            active = row < M
            # unconditional loads from clamped indices, masked afterwards (see the forward)
            rr = min(row, M - 1)
            r = cuda.selp(active, rstd[rr], dt(0))
            m = cuda.selp(center, mean[min(rr, mean.shape[0] - 1)], dt(0))
            s_e = dt(0)
            s_g = dt(0)
            s_ge = dt(0)
            xr = x[rr]  # row views, unsigned columns (see the forward)
            dyr = dy[rr]
            for k in range(K):
                uj = ul + uint32(k * G)
                jj = min(uj, last)
                ok = active & (uj <= last)
                ev = cuda.selp(ok, xr[jj] - m, dt(0))
                dv = cuda.selp(ok, dyr[jj], dt(0))
                e[k] = ev
                d[k] = dv
                gv = dv * wv[k]
                s_e += ev
                s_g += gv
                s_ge += gv * ev
            tot_e, tot_g, tot_ge = red3(sh, 3 * (it % 2), s_e, s_g, s_ge, tid, lane)
            c = dt(0)
            mean_gy = dt(0)
            if center:
                c = tot_e / nf  # the saved mean's rounding
                mean_gy = tot_g / nf
            mean_gyxh = r * (tot_ge - c * tot_g) / nf
            dxr = dx[rr]
            for k in range(K):
                uj = ul + uint32(k * G)
                xh = (e[k] - c) * r
                acc_w[k] += d[k] * xh  # d is 0 past the row's end and on inactive rows
                acc_b[k] += d[k]
                if active and uj <= last:
                    dxr[uj] = r * (d[k] * wv[k] - mean_gy - xh * mean_gyxh)
        # the block's partial row: its groups' sums added in group order (deterministic)
        p = cuda.blockIdx.x
        for k in range(K):
            j = lane + k * G
            block_row(part_w, p, j, j < N, acc_w[k], shb, tid, lane, grp)
            block_row(part_b, p, j, j < N, acc_b[k], shb, tid, lane, grp)

    return kernel


@functools.cache
def sum_partials_kernel(is64, CX, SL, sim):
    """dw[j] = sum over p of part_w[p, j] (same for db), in a fixed order: deterministic.

    kernel(dw, db, part_w, part_b); dw, db: (N,) out; part_w, part_b: (P, N). Blocks of
    (CX, SL) threads: CX consecutive columns (coalesced reads) times SL slices of the P rows;
    slice s sums rows s, s + SL, ... and the slices are then added in order. Launch with
    ceil(N / CX) blocks.
    """
    dt = float64 if is64 else float32

    @_jit(CX * SL, sim)
    def kernel(dw, db, part_w, part_b):
        sw_ = cuda.shared.array((SL, CX), dt)
        sb_ = cuda.shared.array((SL, CX), dt)
        cx = cuda.threadIdx.x
        sl = cuda.threadIdx.y
        j = cuda.blockIdx.x * CX + cx
        N = dw.shape[0]
        sw = dt(0)
        sb = dt(0)
        if j < N:
            for p in range(sl, part_w.shape[0], SL):
                sw += part_w[p, j]
                sb += part_b[p, j]
        sw_[sl, cx] = sw
        sb_[sl, cx] = sb
        cuda.syncthreads()
        if sl == 0 and j < N:
            for i in range(1, SL):
                sw += sw_[i, cx]
                sb += sb_[i, cx]
            dw[j] = sw
            db[j] = sb

    return kernel
