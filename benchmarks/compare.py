"""Side-by-side speed of lnnumba's CPU layer norm / RMSNorm against its peers, in one process.

Same arrays, same thread count, median of repeated runs. Peers: plain NumPy, PyTorch CPU (when
installed) and a parallel copy of the same bytes (the memory roofline: forward moves x in and y out,
one copy; backward moves x and dy in and dx out, 1.5 copies, and the same bytes are also timed
as a triad dx = x + dy, which has the backward's working set: at sizes where three arrays no
longer fit in the last-level cache but two do, 1.5 copies is faster than any backward can be).

    python benchmarks/compare.py [--quick] [--json results.json]

Prints a table; ``--json`` also writes the figures. Ratios (``speedup`` = peer time / lnnumba
time; ``of roofline`` = roofline time / lnnumba time) are what to compare across runs: this
machine is shared and absolute times move.
"""

import argparse
import json
import platform
import statistics
import sys
import time

import numba
import numpy as np
from numba import njit, prange

import lnnumba

try:
    import torch
except ImportError:  # PyTorch is an optional peer
    torch = None


@njit(parallel=True, nogil=True, cache=True)
def copy_parallel(dst, src):
    """dst[:] = src, rows split over threads: the roofline for moving the same bytes."""
    for i in prange(src.shape[0]):
        for j in range(src.shape[1]):
            dst[i, j] = src[i, j]


@njit(parallel=True, nogil=True, cache=True)
def triad_parallel(dst, a, b):
    """dst = a + b, rows split over threads: exactly the bytes a backward pass moves (two arrays
    in, one out), a roofline that, unlike 1.5 copies, has the backward's working set."""
    for i in prange(a.shape[0]):
        for j in range(a.shape[1]):
            dst[i, j] = a[i, j] + b[i, j]


def numpy_layer_norm(x, w, b, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    xc = x - mean
    var = (xc * xc).mean(-1, keepdims=True)
    return xc / np.sqrt(var + eps) * w + b


def median_time(f, min_time=0.2, repeat=7):
    """Median over ``repeat`` rounds of the mean time per call, each round >= min_time / repeat."""
    f()
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            f()
        dt = time.perf_counter() - t0
        if dt > min_time / repeat:
            break
        n *= 4
    rounds = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            f()
        rounds.append((time.perf_counter() - t0) / n)
    return statistics.median(rounds)


def bench_shape(M, N, dtype, rows, quick):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((M, N)).astype(dtype)
    dy = rng.standard_normal((M, N)).astype(dtype)
    w = (1 + 0.1 * rng.standard_normal(N)).astype(dtype)
    b = (0.1 * rng.standard_normal(N)).astype(dtype)
    y = np.empty_like(x)
    mt = 0.05 if quick else 0.3
    t = {}
    t["ln_fwd"] = median_time(lambda: lnnumba.layer_norm(x, w, b, out=y), mt)
    t["ln_fwd_alloc"] = median_time(lambda: lnnumba.layer_norm(x, w, b), mt)
    _, mean, rstd = lnnumba.layer_norm_forward(x, w, b)
    t["ln_bwd"] = median_time(lambda: lnnumba.layer_norm_backward(dy, x, mean, rstd, w), mt)
    t["rms_fwd"] = median_time(lambda: lnnumba.rms_norm(x, w, out=y), mt)
    _, rrstd = lnnumba.rms_norm_forward(x, w)
    t["rms_bwd"] = median_time(lambda: lnnumba.rms_norm_backward(dy, x, rrstd, w), mt)
    t["copy"] = median_time(lambda: copy_parallel(y, x), mt)
    dx = np.empty_like(x)
    t["triad"] = median_time(lambda: triad_parallel(dx, x, dy), mt)
    t["numpy_fwd"] = median_time(lambda: numpy_layer_norm(x, w, b), mt)
    if torch is not None:
        tx, tw, tb = (torch.from_numpy(a) for a in (x, w, b))
        F = torch.nn.functional
        t["torch_fwd"] = median_time(lambda: F.layer_norm(tx, (N,), tw, tb), mt)
        txg = tx.clone().requires_grad_(True)
        twg = tw.clone().requires_grad_(True)
        tbg = tb.clone().requires_grad_(True)
        ty = F.layer_norm(txg, (N,), twg, tbg)
        tdy = torch.from_numpy(dy)

        def torch_bwd():
            txg.grad = twg.grad = tbg.grad = None
            ty.backward(tdy, retain_graph=True)

        t["torch_bwd"] = median_time(torch_bwd, mt)
        t["torch_rms_fwd"] = median_time(lambda: F.rms_norm(tx, (N,), tw, 1e-6), mt)
    nbytes = x.nbytes
    r = {
        "shape": f"{M}x{N}",
        "dtype": np.dtype(dtype).name,
        "times_us": {k: v * 1e6 for k, v in t.items()},
        "fwd_GBps": 2 * nbytes / t["ln_fwd"] / 1e9,
        "bwd_GBps": 3 * nbytes / t["ln_bwd"] / 1e9,
        "copy_GBps": 2 * nbytes / t["copy"] / 1e9,
        "fwd_of_roofline": t["copy"] / t["ln_fwd"],
        "bwd_of_roofline": 1.5 * t["copy"] / t["ln_bwd"],
        "bwd_of_triad": t["triad"] / t["ln_bwd"],
        "rms_fwd_vs_ln": t["ln_fwd"] / t["rms_fwd"],
        "rms_bwd_vs_ln": t["ln_bwd"] / t["rms_bwd"],
        "fwd_vs_numpy": t["numpy_fwd"] / t["ln_fwd_alloc"],
    }
    if torch is not None:
        r["fwd_vs_torch"] = t["torch_fwd"] / t["ln_fwd_alloc"]
        r["bwd_vs_torch"] = t["torch_bwd"] / t["ln_bwd"]
        r["rms_fwd_vs_torch"] = t["torch_rms_fwd"] / median_time(lambda: lnnumba.rms_norm(x, w), mt)
    rows.append(r)
    return r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter timing rounds")
    ap.add_argument("--json", help="write the results to this file")
    args = ap.parse_args(argv)
    nt = numba.get_num_threads()
    if torch is not None:
        torch.set_num_threads(nt)
    info = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {nt} threads, {platform.system()}",
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "numba": numba.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "threading_layer": None,
    }
    rows = []
    shapes = [(1, 1024), (1, 4096), (64, 1024), (4096, 1024), (8192, 4096)]
    for M, N in shapes:
        for dt in (np.float32, np.float64):
            if dt is np.float64 and M * N > 4096 * 1024:
                continue
            bench_shape(M, N, dt, rows, args.quick)
    info["threading_layer"] = numba.threading_layer()
    cols = [
        ("shape", "{}"),
        ("dtype", "{}"),
        ("fwd_of_roofline", "{:.2f}"),
        ("bwd_of_roofline", "{:.2f}"),
        ("fwd_vs_torch", "{:.2f}"),
        ("bwd_vs_torch", "{:.2f}"),
        ("fwd_vs_numpy", "{:.2f}"),
        ("rms_fwd_vs_ln", "{:.2f}"),
        ("rms_bwd_vs_ln", "{:.2f}"),
        ("rms_fwd_vs_torch", "{:.2f}"),
    ]
    print(" ".join(f"{k}={v}" for k, v in info.items()))
    print("| " + " | ".join(c for c, _ in cols) + " | ln fwd µs | ln bwd µs |")
    print("|" + "---|" * (len(cols) + 2))
    for r in rows:
        cells = [f.format(r[c]) if c in r else "n/a" for c, f in cols]
        cells += [f"{r['times_us']['ln_fwd_alloc']:.2f}", f"{r['times_us']['ln_bwd']:.2f}"]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
