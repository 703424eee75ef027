"""GPU speed of lnnumba's CUDA layer norm, side by side with a device-to-device copy of the same
bytes and with torch.nn.functional.layer_norm on the same GPU (when PyTorch is installed).

    python benchmarks/gpu.py [--json results.json]
    NUMBA_ENABLE_CUDASIM=1 python benchmarks/gpu.py --tiny   # a smoke run without a GPU

Kernel times come from CUDA events after warm-up (median of repeats). Working sets are several
times the GPU's L2 cache, so memory is measured, not the cache. Bytes: forward reads x and writes
y (2 M N 4 bytes); backward reads x and dy and writes dx (3 M N 4 bytes). The Python-side cost of
one call is the wall time per call of a tiny layer_norm, launches queued without synchronizing.
"""

import argparse
import json
import statistics
import sys
import time

import numpy as np
from numba import cuda

import lnnumba

SHAPES = [(65536, 1024), (16384, 4096), (4096, 16384)]


def event_time(f, repeat=20):
    """Median milliseconds of f() between CUDA events, after two warm-up calls."""
    f()
    f()
    cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = cuda.event(), cuda.event()
        start.record()
        f()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def torch_time(f, repeat=20):
    import torch

    f()
    f()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        f()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


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
    r["bwd_ms"] = event_time(lambda: lnnumba.layer_norm_backward(dDY, dX, mean, rstd, dW), repeat)
    r["copy_ms"] = event_time(lambda: copy_dst.copy_to_device(dX), repeat)
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


def call_cost_us(n=2000):
    """Wall microseconds per call of a tiny forward, launches queued without synchronizing."""
    x = cuda.to_device(np.ones((1, 1024), np.float32))
    w = cuda.to_device(np.ones(1024, np.float32))
    b = cuda.to_device(np.zeros(1024, np.float32))
    out = cuda.device_array_like(x)
    for _ in range(10):
        lnnumba.layer_norm(x, w, b, out=out)
    cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        lnnumba.layer_norm(x, w, b, out=out)
    dt = time.perf_counter() - t0
    cuda.synchronize()
    return dt / n * 1e6


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
    args = ap.parse_args(argv)
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
    }
    rows = [bench(M, N, use_torch, repeat) for M, N in shapes]
    info["call_cost_us"] = call_cost_us(20 if args.tiny else 2000)
    print(" ".join(f"{k}={v}" for k, v in info.items()))
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "results": rows}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
