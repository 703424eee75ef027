"""CUDA kernels for layer norm and RMSNorm (numba-cuda), forward and backward.

Work layout
-----------
A row (one example, N elements) is handled by a *group* of G threads (G a power of two, 32 to
1024); a block of T threads holds T // G groups, so small rows still fill the machine with many
rows per block. Thread ``lane`` of a group owns the elements ``j = lane + k * G`` for
k < K: consecutive lanes touch consecutive addresses (coalesced), and the K values stay in
registers (a local array of compile-time size K) between the passes, so each row is read from
device memory once. Kernels are specialized on (K, dtype) by a factory and cached.

Reductions over a group go through shared memory (a tree over G slots), not warp shuffles: the
shuffle intrinsics do not run under Numba's CUDA simulator, and this way every kernel is tested
without a GPU. Every thread of a block reaches every barrier: rows past the end are masked, never
returned from early.

Numerics
--------
Arithmetic in the storage dtype (float32 accumulation for float32 data). The mean is kept as two
terms, the row's first element k0 plus the mean of x - k0, and values are centered as
(x - k0) - ms: both differences are exact or nearly (Sterbenz), so a row of 1e4 + N(0, 1) keeps
its digits (no E[x^2] - E[x]^2). CUDA kernels are compiled without fast-math, so the order holds.

Bytes moved (the bandwidth floor)
---------------------------------
forward:  read x, write y: 2 * M * N * itemsize (+ 2 * M * itemsize for mean and rstd)
backward: read x and dy, write dx: 3 * M * N * itemsize, + the dweight/dbias partials
          (2 * P * N * 4 bytes, P = the number of row groups, small against M)
"""

import functools
import math

from numba import cuda, float32, float64

MAX_THREADS = 1024


def plan(M, N, simulator):
    """(G, K, T, blocks): threads per row, elements per thread, threads per block, blocks.

    G grows until each thread holds at most 8 elements (up to 1024 threads, then K grows);
    under the simulator (one OS thread per CUDA thread) blocks stay tiny.
    """
    G = 32
    while G < MAX_THREADS and N > 8 * G:
        G *= 2
    if simulator:
        G = min(G, 32)
        while G > 1 and G // 2 >= N:
            G //= 2
    K = 1
    while K * G < N:
        K *= 2
    T = max(G, 64 if simulator else 256)
    rows_per_block = T // G
    blocks = max(1, math.ceil(M / rows_per_block))
    return G, K, T, blocks


def _group_sum(sh, v, tid, lane, G):
    """Sum of v over the G threads of a group (shared-memory tree; all threads must call)."""
    sh[tid] = v
    cuda.syncthreads()
    s = G // 2
    while s > 0:
        if lane < s:
            sh[tid] += sh[tid + s]
        cuda.syncthreads()
        s //= 2
    total = sh[tid - lane]
    cuda.syncthreads()
    return total


_group_sum_dev = cuda.jit(device=True)(_group_sum)


@functools.cache
def forward_kernel(K, is64):
    """Forward kernel holding K elements per thread; float64 when ``is64`` else float32.

    kernel(y, mean, rstd, x, w, b, eps, center, has_w, has_b, save, G)
    y, x: (M, N); mean, rstd: (M,) (written when ``save``, mean only when ``center``);
    w, b: (N,) (read when has_w/has_b, else any 1-element array); eps: float; center: LN (True)
    or RMSNorm (False); G: threads per row.
    """
    dt = float64 if is64 else float32

    @cuda.jit
    def kernel(y, mean, rstd, x, w, b, eps, center, has_w, has_b, save, G):
        sh = cuda.shared.array(MAX_THREADS, dt)
        vals = cuda.local.array(K, dt)
        tid = cuda.threadIdx.x
        lane = tid % G
        row = cuda.blockIdx.x * (cuda.blockDim.x // G) + tid // G
        M = x.shape[0]
        N = x.shape[1]
        nf = dt(N)
        active = row < M
        k0 = dt(0)
        if active and center:
            k0 = x[row, 0]
        s = dt(0)
        for k in range(K):
            j = lane + k * G
            v = dt(0)
            if active and j < N:
                v = x[row, j] - k0
            vals[k] = v
            s += v
        ms = dt(0)
        if center:
            ms = _group_sum_dev(sh, s, tid, lane, G) / nf
        q = dt(0)
        for k in range(K):
            j = lane + k * G
            if j < N:
                d = vals[k] - ms
                vals[k] = d
                q += d * d
        var = _group_sum_dev(sh, q, tid, lane, G) / nf
        r = dt(1) / math.sqrt(var + dt(eps))
        if active:
            for k in range(K):
                j = lane + k * G
                if j < N:
                    v = vals[k] * r
                    if has_w:
                        v *= w[j]
                    if has_b:
                        v += b[j]
                    y[row, j] = v
            if save and lane == 0:
                if center:
                    mean[row] = k0 + ms
                rstd[row] = r

    return kernel


@functools.cache
def backward_kernel(K, is64):
    """Backward kernel holding K elements per thread.

    kernel(dx, part_w, part_b, dy, x, mean, rstd, w, center, has_w, G)
    dx, dy, x: (M, N); part_w, part_b: (P, N) float32/64 partial sums, one row per group of the
    grid (P = blocks * groups per block), each written by its group alone; mean, rstd: (M,)
    (mean read when ``center``); w: (N,) read when ``has_w``. Groups stride over the rows.
    """
    dt = float64 if is64 else float32

    @cuda.jit
    def kernel(dx, part_w, part_b, dy, x, mean, rstd, w, center, has_w, G):
        sh = cuda.shared.array(MAX_THREADS, dt)
        e = cuda.local.array(K, dt)
        g = cuda.local.array(K, dt)
        acc_w = cuda.local.array(K, dt)
        acc_b = cuda.local.array(K, dt)
        tid = cuda.threadIdx.x
        lane = tid % G
        groups = cuda.blockDim.x // G
        p = cuda.blockIdx.x * groups + tid // G  # this group's partial row
        stride = cuda.gridDim.x * groups
        M = x.shape[0]
        N = x.shape[1]
        nf = dt(N)
        for k in range(K):
            acc_w[k] = 0
            acc_b[k] = 0
        n_iter = (M + stride - 1) // stride  # the same for every thread: barriers stay uniform
        for it in range(n_iter):
            row = p + it * stride
            active = row < M
            m = dt(0)
            r = dt(0)
            if active:
                r = rstd[row]
                if center:
                    m = mean[row]
            s_e = dt(0)
            s_g = dt(0)
            s_ge = dt(0)
            for k in range(K):
                j = lane + k * G
                ev = dt(0)
                gv = dt(0)
                if active and j < N:
                    ev = x[row, j] - m
                    d = dy[row, j]
                    acc_b[k] += d
                    gv = d
                    if has_w:
                        gv = d * w[j]
                e[k] = ev
                g[k] = gv
                s_e += ev
                s_g += gv
                s_ge += gv * ev
            c = dt(0)
            mean_gy = dt(0)
            tot_g = _group_sum_dev(sh, s_g, tid, lane, G)
            tot_ge = _group_sum_dev(sh, s_ge, tid, lane, G)
            if center:
                c = _group_sum_dev(sh, s_e, tid, lane, G) / nf  # the saved mean's rounding
                mean_gy = tot_g / nf
            mean_gyxh = r * (tot_ge - c * tot_g) / nf
            if active:
                for k in range(K):
                    j = lane + k * G
                    if j < N:
                        xh = (e[k] - c) * r
                        acc_w[k] += dy[row, j] * xh
                        dx[row, j] = r * (g[k] - mean_gy - xh * mean_gyxh)
        for k in range(K):
            j = lane + k * G
            if j < N:
                part_w[p, j] = acc_w[k]
                part_b[p, j] = acc_b[k]

    return kernel


@cuda.jit
def sum_partials_kernel(dw, db, part_w, part_b):
    """dw[j] = sum over p of part_w[p, j] (same for db), in order p = 0, 1, ...: deterministic.

    dw, db: (N,) out; part_w, part_b: (P, N). One thread per column; consecutive threads read
    consecutive columns (coalesced).
    """
    j = cuda.grid(1)
    if j < dw.shape[0]:
        sw = part_w[0, j]
        sb = part_b[0, j]
        for p in range(1, part_w.shape[0]):
            sw += part_w[p, j]
            sb += part_b[p, j]
        dw[j] = sw
        db[j] = sb
