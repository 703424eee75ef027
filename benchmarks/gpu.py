"""GPU speed of lnnumba's CUDA layer norm, side by side with a device-to-device copy of the same
bytes and with torch.nn.functional.layer_norm on the same GPU (when PyTorch is installed).

    python benchmarks/gpu.py [--json results.json]
    NUMBA_ENABLE_CUDASIM=1 python benchmarks/gpu.py --tiny   # a smoke run without a GPU
    python benchmarks/gpu.py --set FWD_THREADS=256 --set BWD_MAX_K=4   # other launch shapes

Kernel times come from CUDA events after warm-up (median of repeats). Working sets are several
times the GPU's L2 cache, so memory is measured, not the cache. The copy roofline is the faster
of the driver's device-to-device copy (cuMemcpyDtoD) and a plain copy kernel over the same bytes
(and PyTorch's ``Tensor.copy_`` when installed). Bytes: forward reads x and writes
y (2 M N 4 bytes); backward reads x and dy and writes dx (3 M N 4 bytes), timed as its two
kernels into preallocated outputs (``bwd_call_ms``: the public call, allocations included).
The Python-side cost of one call is the wall time per call of a tiny layer_norm, launches
queued without synchronizing, in bursts taken in turn with PyTorch's.
"""

import argparse
import json
import statistics
import sys
import time

import numpy as np
from numba import cuda

import lnnumba
from lnnumba.gpu import norm as gpu_norm

SHAPES = [(65536, 1024), (16384, 4096), (4096, 16384)]


@cuda.jit
def _busy(n):
    """Keeps the GPU busy for about n microseconds (one thread sleeping)."""
    for _ in range(n):
        cuda.nanosleep(1000)


def _timed(f, record, sync, repeat):
    """Median milliseconds of f() between two events, after two warm-up calls.

    Before each start event the GPU is given about a millisecond of sleep, so that f's launches
    are queued before the GPU reaches them: the events then time the kernels, not the Python
    that launches them (that cost is measured apart, see call_costs_us).
    """
    f()
    f()
    sync()
    times = []
    for _ in range(repeat):
        if not gpu_norm._SIM:  # the simulator has no nanosleep (and runs launches at once)
            _busy[1, 1](1000)
        times.append(record(f))
    return statistics.median(times)


def _numba_record(f):
    start, end = cuda.event(), cuda.event()
    start.record()
    f()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def _torch_record(f):
    import torch

    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    f()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def event_time(f, repeat=20):
    """Kernel milliseconds of f() (Numba launches), median of ``repeat``."""
    return _timed(f, _numba_record, cuda.synchronize, repeat)


def torch_time(f, repeat=20):
    """Kernel milliseconds of f() (PyTorch launches), median of ``repeat``."""
    import torch

    return _timed(f, _torch_record, torch.cuda.synchronize, repeat)


@cuda.jit
def _copy_kernel(dst, src):
    """dst[i] = src[i], grid-stride (both 1-d, the same length)."""
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < src.shape[0]:
        dst[i] = src[i]
        i += step


def copy_time(src, dst, repeat):
    """Milliseconds of the fastest device-to-device copy of src into dst (see the docstring)."""
    s1, d1 = src.reshape(src.size), dst.reshape(dst.size)
    blocks = 2 if gpu_norm._SIM else 8 * cuda.get_current_device().MULTIPROCESSOR_COUNT
    return min(
        event_time(lambda: dst.copy_to_device(src), repeat),
        event_time(lambda: _copy_kernel[blocks, 32 if gpu_norm._SIM else 512](d1, s1), repeat),
    )


def bench(M, N, use_torch, repeat):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((M, N), dtype=np.float32)
    dy = rng.standard_normal((M, N), dtype=np.float32)
    w = (1 + 0.1 * rng.standard_normal(N)).astype(np.float32)
    b = (0.1 * rng.standard_normal(N)).astype(np.float32)
    dX, dDY, dW, dB = (cuda.to_device(a) for a in (x, dy, w, b))
    out = cuda.device_array_like(dX)
    copy_dst = cuda.device_array_like(dX)
    _, mean, rstd = lnnumba.layer_norm_forward(dX, dW, dB)
    r = {"shape": f"{M}x{N}"}
    r["fwd_ms"] = event_time(lambda: lnnumba.layer_norm(dX, dW, dB, out=out), repeat)
    # the backward's kernels into preallocated outputs (the public call also allocates dx, dw, db)
    dx, dw, db = cuda.device_array_like(dX), cuda.device_array_like(dW), cuda.device_array_like(dB)
    m1, r1 = mean.reshape(M), rstd.reshape(M)
    r["bwd_ms"] = event_time(
        lambda: gpu_norm._launch_backward(dx, dw, db, dDY, dX, m1, r1, dW, True), repeat
    )
    r["bwd_call_ms"] = event_time(
        lambda: lnnumba.layer_norm_backward(dDY, dX, mean, rstd, dW), repeat
    )
    r["copy_ms"] = copy_time(dX, copy_dst, repeat)
    nbytes = x.nbytes
    r["fwd_GBps"] = 2 * nbytes / r["fwd_ms"] / 1e6
    r["bwd_GBps"] = 3 * nbytes / r["bwd_ms"] / 1e6
    r["copy_GBps"] = 2 * nbytes / r["copy_ms"] / 1e6
    r["fwd_of_copy"] = r["fwd_GBps"] / r["copy_GBps"]
    r["bwd_of_copy"] = r["bwd_GBps"] / r["copy_GBps"]
    if use_torch:
        import torch
        import torch.nn.functional as F

        tx = torch.as_tensor(x, device="cuda")
        tw = torch.as_tensor(w, device="cuda")
        tb = torch.as_tensor(b, device="cuda")
        tdy = torch.as_tensor(dy, device="cuda")
        tdst = torch.empty_like(tx)
        r["copy_ms"] = min(r["copy_ms"], torch_time(lambda: tdst.copy_(tx), repeat))
        r["copy_GBps"] = 2 * nbytes / r["copy_ms"] / 1e6
        r["fwd_of_copy"] = r["fwd_GBps"] / r["copy_GBps"]
        r["bwd_of_copy"] = r["bwd_GBps"] / r["copy_GBps"]
        r["torch_fwd_ms"] = torch_time(lambda: F.layer_norm(tx, (N,), tw, tb), repeat)
        txg = tx.clone().requires_grad_(True)
        twg = tw.clone().requires_grad_(True)
        tbg = tb.clone().requires_grad_(True)
        ty = F.layer_norm(txg, (N,), twg, tbg)

        def torch_bwd():
            txg.grad = twg.grad = tbg.grad = None
            ty.backward(tdy, retain_graph=True)

        r["torch_bwd_ms"] = torch_time(torch_bwd, repeat)
        r["fwd_vs_torch"] = r["torch_fwd_ms"] / r["fwd_ms"]
        r["bwd_vs_torch"] = r["torch_bwd_ms"] / r["bwd_ms"]
    return r


def _burst_us(f, sync, n):
    """Wall microseconds per call of f over n calls, synchronized before and after."""
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        f()
    dt = time.perf_counter() - t0
    sync()
    return dt / n * 1e6


def call_costs_us(use_torch, n=400, rounds=25):
    """Wall microseconds per call of a tiny forward (1x1024 into ``out=``), and of
    torch.nn.functional.layer_norm on the same shape (it allocates its output) when
    ``use_torch``, else None.

    Launches are queued without synchronizing, in bursts of n calls (fewer than the GPU's launch
    queue holds, so the GPU never holds the launching thread back) taken in turn with PyTorch's,
    ``rounds`` times; medians. The host's speed drifts between processes and within one (the
    same call took 11 to 20 us in one hour on one machine): bursts in turn see the same drift.
    """
    x = cuda.to_device(np.ones((1, 1024), np.float32))
    w = cuda.to_device(np.ones(1024, np.float32))
    b = cuda.to_device(np.zeros(1024, np.float32))
    out = cuda.device_array_like(x)
    runs = [(lambda: lnnumba.layer_norm(x, w, b, out=out), cuda.synchronize)]
    if use_torch:
        import torch

        tx = torch.ones((1, 1024), device="cuda")
        tw = torch.ones(1024, device="cuda")
        tb = torch.zeros(1024, device="cuda")
        F = torch.nn.functional.layer_norm
        runs.append((lambda: F(tx, (1024,), tw, tb), torch.cuda.synchronize))
    times = [[] for _ in runs]
    for f, sync in runs:
        _burst_us(f, sync, min(n, 50))  # warm-up (the first call compiles)
    for _ in range(rounds):
        for t, (f, sync) in zip(times, runs):
            t.append(_burst_us(f, sync, n))
    med = [statistics.median(t) for t in times]
    return med[0], (med[1] if use_torch else None)


KEYS = [
    "fwd_GBps",
    "bwd_GBps",
    "copy_GBps",
    "fwd_of_copy",
    "bwd_of_copy",
    "fwd_vs_torch",
    "bwd_vs_torch",
]


def table(rows):
    """Markdown table of the results (one row per shape)."""
    out = ["| shape | " + " | ".join(KEYS) + " |", "|" + "---|" * (len(KEYS) + 1)]
    for r in rows:
        cells = [f"{r[k]:.2f}" if k in r else "n/a" for k in KEYS]
        out.append(f"| {r['shape']} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results to this file")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (for the CUDA simulator)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a launch-shape constant of lnnumba.gpu.kernels (e.g. FWD_THREADS=256)",
    )
    args = ap.parse_args(argv)
    from lnnumba.gpu import kernels

    for item in args.set:
        name, _, value = item.partition("=")
        if not name.isupper() or not isinstance(getattr(kernels, name, None), int):
            ap.error(f"--set {item}: expected NAME=INTEGER with NAME a constant of kernels")
        setattr(kernels, name, int(value))
    shapes = [(8, 64), (4, 257)] if args.tiny else SHAPES
    repeat = 2 if args.tiny else 20
    try:
        import torch

        use_torch = torch.cuda.is_available() and not args.tiny
    except ImportError:
        use_torch = False
    dev = cuda.get_current_device()
    info = {
        "date": time.strftime("%Y-%m-%d"),
        "gpu": str(getattr(dev, "name", "CUDA simulator")),
        "torch": use_torch,
        "set": " ".join(args.set),
    }
    rows = [bench(M, N, use_torch, repeat) for M, N in shapes]
    ours, theirs = call_costs_us(use_torch, *((20, 2) if args.tiny else (400, 25)))
    info["call_cost_us"] = ours
    if use_torch:
        info["torch_call_cost_us"] = theirs
    print(" ".join(f"{k}={v}" for k, v in info.items()))
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "results": rows}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
