"""Side-by-side speed of lnnumba's CPU layer norm / RMSNorm against its peers, in one process.

Same arrays, same thread count, the fastest of interleaved repeated rounds. Peers: plain NumPy,
PyTorch CPU (when installed) and a parallel copy of the same bytes (the memory roofline: forward
moves x in and y out, one copy; backward moves x and dy in and dx out, 1.5 copies). The backward's
bytes are also timed as a triad dx = x + dy, which has the backward's working set: where three
arrays no longer fit in the last-level cache but two do, 1.5 copies is faster than any backward
can be. Copy and triad are each timed twice, with ordinary and with non-temporal stores
(``lnnumba.cpu.stream``, which lnnumba uses for large outputs), and the faster counts.

The arrays start where NumPy's large arrays start in a fresh process, 16 bytes past a 4 KB page
(``placed``), whatever the allocator's state after the shapes before: how far apart within a
page an output and its input start changes the forward's time and the plain copy's (see
``lnnumba.cpu.norm.forward_out_place``), and glibc's placement of a large array depends on what
the process has freed before. The forward into an output 48 bytes further on is timed too, and
the backward of a dy 48 bytes further on (``lnnumba.cpu.norm.backward_out_place``).

    python benchmarks/compare.py [--quick] [--json results.json]

Prints a table; ``--json`` also writes the figures. Ratios (``speedup`` = peer time / lnnumba
time; ``of roofline`` = roofline time / lnnumba time) are what to compare across runs: this
machine is shared and absolute times move.
"""

import argparse
import json
import platform
import sys
import time

import numba
import numpy as np
from numba import njit, prange, types
from numba.core.extending import intrinsic

import lnnumba
from lnnumba._memory import PAGE, empty_at
from lnnumba.cpu import stream
from lnnumba.cpu.stream import store_fence, stream_copy

try:
    import torch
except ImportError:  # PyTorch is an optional peer
    torch = None

try:
    import onnxruntime as ort
    from onnx import TensorProto, helper
except ImportError:  # so is ONNX Runtime
    ort = None


def ort_layer_norm(M, N, dtype, threads):
    """An ONNX Runtime session running one LayerNormalization node (opset 17) on (M, N)."""
    et = TensorProto.FLOAT if np.dtype(dtype) == np.float32 else TensorProto.DOUBLE
    node = helper.make_node("LayerNormalization", ["X", "W", "B"], ["Y"], axis=-1, epsilon=1e-5)
    graph = helper.make_graph(
        [node],
        "ln",
        [
            helper.make_tensor_value_info("X", et, [M, N]),
            helper.make_tensor_value_info("W", et, [N]),
            helper.make_tensor_value_info("B", et, [N]),
        ],
        [helper.make_tensor_value_info("Y", et, [M, N])],
    )
    # IR version 8 (the first with opset 17): a newer onnx package would otherwise stamp a
    # version an older ONNX Runtime refuses to load
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # no busy-waiting between runs: spinning threads would steal the cores from whatever is
    # timed next in the interleaved rounds
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


@njit(parallel=True, nogil=True, cache=True)
def copy_parallel(dst, src):
    """dst[:] = src, rows split over threads: the roofline for moving the same bytes."""
    for i in prange(src.shape[0]):
        for j in range(src.shape[1]):
            dst[i, j] = src[i, j]


@njit(parallel=True, nogil=True, cache=True)
def copy_stream_parallel(dst, src, nt):
    """``copy_parallel`` with non-temporal stores: each of nt threads streams its rows' bytes."""
    d = dst.reshape(-1)
    s = src.reshape(-1)
    M, N = src.shape
    for t in prange(nt):
        lo = t * M // nt * N
        hi = (t + 1) * M // nt * N
        stream_copy(d, lo, s[lo:hi])
        store_fence()


@intrinsic
def _add_line(typingctx, dst, a, b, k):
    """dst[k:k+L] = a[k:k+L] + b[k:k+L] (L elements: one cache line) as one vector addition
    and one non-temporal store; &dst[k] must be line-aligned. dst, a, b: 1-d, one float dtype."""
    sig = types.void(dst, a, b, k)

    def codegen(context, builder, signature, args):
        st = signature.args
        vt, size = stream.line_type(context, st[0].dtype)

        def line(i):
            return stream.line_ptr(context, builder, st[i], args[i], st[3], args[3], vt)

        v = builder.fadd(builder.load(line(1), align=size), builder.load(line(2), align=size))
        stream.store_nontemporal(builder, v, line(0))
        return context.get_dummy_value()

    return sig, codegen


@njit(parallel=True, nogil=True, cache=True)
def triad_stream_parallel(dst, a, b, nt):
    """``triad_parallel`` with non-temporal stores, straight from the registers: each of nt
    threads adds and streams its rows' lines (ordinary stores before dst's first line boundary
    and after its last)."""
    d = dst.reshape(-1)
    af = a.reshape(-1)
    bf = b.reshape(-1)
    M, N = a.shape
    per_line = stream.line_len(d)
    for t in prange(nt):
        lo = t * M // nt * N
        hi = (t + 1) * M // nt * N
        k = lo + stream.line_head(d, lo, hi - lo)
        for j in range(lo, k):
            d[j] = af[j] + bf[j]
        while k + per_line <= hi:
            _add_line(d, af, bf, k)
            k += per_line
        for j in range(k, hi):
            d[j] = af[j] + bf[j]
        store_fence()


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


def _calls_for(f, min_time):
    """How many calls of f make one timing round of at least ``min_time`` seconds."""
    f()
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            f()
        if time.perf_counter() - t0 > min_time:
            return n
        n *= 4


def best_times(funcs, min_time=0.04, repeat=7, settle=0.0):
    """Seconds per call of each function in ``funcs`` (a dict name -> f): the fastest of
    ``repeat`` rounds, each the mean over enough calls to last ``min_time``.

    The functions are timed in interleaved rounds (each round times every function once), so
    that a slow spell of this shared machine falls on all of them alike. Other load on the
    machine only ever adds time, so the fastest round is the one it disturbed least: the best
    estimate of each function's own cost, and the most repeatable from run to run.

    ``settle``: seconds to wait before each function's calls in each round, for peers whose
    threads keep spinning after their last call (ONNX Runtime's default configuration spins for
    tens of milliseconds) and would otherwise take the cores from whatever is timed next.
    """
    counts = {k: _calls_for(f, min_time) for k, f in funcs.items()}
    rounds = {k: [] for k in funcs}
    for _ in range(repeat):
        for k, f in funcs.items():
            if settle:
                time.sleep(settle)
            n = counts[k]
            t0 = time.perf_counter()
            for _ in range(n):
                f()
            rounds[k].append((time.perf_counter() - t0) / n)
    return {k: min(v) for k, v in rounds.items()}


def placed(shape, dtype, offset=16):
    """An uninitialized C-ordered array whose data starts ``offset`` bytes past a 4 KB page
    boundary: by default where NumPy's large arrays start in a fresh process (glibc maps them
    anew, 16 bytes of its header past a page)."""
    return empty_at(shape, dtype, offset, PAGE)


def bench_shape(M, N, dtype, rows, quick):
    rng = np.random.default_rng(0)
    x, dy, y, z, dx = (placed((M, N), dtype) for _ in range(5))
    x[...] = rng.standard_normal((M, N))
    dy[...] = rng.standard_normal((M, N))
    w = (1 + 0.1 * rng.standard_normal(N)).astype(dtype)
    b = (0.1 * rng.standard_normal(N)).astype(dtype)
    z[...] = x  # normalized in place, again and again (it stays normalized)
    y48 = placed((M, N), dtype, 16 + 48)  # an output 48 bytes past x's place within a page
    dy48 = placed((M, N), dtype, 16 + 48)  # a gradient 48 bytes past x's place
    dy48[...] = dy
    nt = numba.get_num_threads()
    _, mean, rstd = lnnumba.layer_norm_forward(x, w, b)
    _, rrstd = lnnumba.rms_norm_forward(x, w)
    f = {
        "ln_fwd": lambda: lnnumba.layer_norm(x, w, b, out=y),
        "ln_fwd_y48": lambda: lnnumba.layer_norm(x, w, b, out=y48),
        "ln_fwd_alloc": lambda: lnnumba.layer_norm(x, w, b),
        "ln_fwd_inplace": lambda: lnnumba.layer_norm(z, w, b, out=z),
        "ln_bwd": lambda: lnnumba.layer_norm_backward(dy, x, mean, rstd, w),
        "ln_bwd_dy48": lambda: lnnumba.layer_norm_backward(dy48, x, mean, rstd, w),
        "rms_fwd": lambda: lnnumba.rms_norm(x, w, out=y),
        "rms_fwd_alloc": lambda: lnnumba.rms_norm(x, w),
        "rms_bwd": lambda: lnnumba.rms_norm_backward(dy, x, rrstd, w),
        "copy": lambda: copy_parallel(y, x),
        "copy_stream": lambda: copy_stream_parallel(y, x, nt),
        "triad": lambda: triad_parallel(dx, x, dy),
        "triad_stream": lambda: triad_stream_parallel(dx, x, dy, nt),
        "numpy_fwd": lambda: numpy_layer_norm(x, w, b),
    }
    if torch is not None:
        tx, tw, tb = (torch.from_numpy(a) for a in (x, w, b))
        F = torch.nn.functional
        txg = tx.clone().requires_grad_(True)
        twg = tw.clone().requires_grad_(True)
        tbg = tb.clone().requires_grad_(True)
        ty = F.layer_norm(txg, (N,), twg, tbg)
        tdy = torch.from_numpy(dy)

        def torch_bwd():
            txg.grad = twg.grad = tbg.grad = None
            ty.backward(tdy, retain_graph=True)

        f["torch_fwd"] = lambda: F.layer_norm(tx, (N,), tw, tb)
        f["torch_bwd"] = torch_bwd
        f["torch_rms_fwd"] = lambda: F.rms_norm(tx, (N,), tw, 1e-6)
    if ort is not None:
        try:
            sess = ort_layer_norm(M, N, dtype, numba.get_num_threads())
            feeds = {"X": x, "W": w, "B": b}
            sess.run(None, feeds)
            f["ort_fwd"] = lambda: sess.run(None, feeds)
        except Exception:  # a dtype this ONNX Runtime build does not implement
            pass
    t = best_times(f, 0.01 if quick else 0.04, 5 if quick else 9)
    nbytes = x.nbytes
    copy = min(t["copy"], t["copy_stream"])  # the roofline: the faster way to move the bytes
    triad = min(t["triad"], t["triad_stream"])
    r = {
        "shape": f"{M}x{N}",
        "dtype": np.dtype(dtype).name,
        "times_us": {k: v * 1e6 for k, v in t.items()},
        "fwd_GBps": 2 * nbytes / t["ln_fwd"] / 1e9,
        "bwd_GBps": 3 * nbytes / t["ln_bwd"] / 1e9,
        "copy_GBps": 2 * nbytes / copy / 1e9,
        "fwd_of_roofline": copy / t["ln_fwd"],
        "bwd_of_roofline": 1.5 * copy / t["ln_bwd"],
        "bwd_of_triad": triad / t["ln_bwd"],
        "rms_fwd_vs_ln": t["ln_fwd"] / t["rms_fwd"],
        "rms_bwd_vs_ln": t["ln_bwd"] / t["rms_bwd"],
        "fwd_vs_numpy": t["numpy_fwd"] / t["ln_fwd_alloc"],
        "in_place_vs_out": t["ln_fwd"] / t["ln_fwd_inplace"],
        "y48_vs_y": t["ln_fwd_y48"] / t["ln_fwd"],
        "dy48_vs_dy": t["ln_bwd_dy48"] / t["ln_bwd"],
    }
    if torch is not None:
        r["fwd_vs_torch"] = t["torch_fwd"] / t["ln_fwd_alloc"]
        r["bwd_vs_torch"] = t["torch_bwd"] / t["ln_bwd"]
        r["rms_fwd_vs_torch"] = t["torch_rms_fwd"] / t["rms_fwd_alloc"]
    if "ort_fwd" in t:
        r["fwd_vs_onnxruntime"] = t["ort_fwd"] / t["ln_fwd_alloc"]
    rows.append(r)
    return r


COLUMNS = [
    ("shape", "{}"),
    ("dtype", "{}"),
    ("fwd_of_roofline", "{:.2f}"),
    ("bwd_of_roofline", "{:.2f}"),
    ("bwd_of_triad", "{:.2f}"),
    ("fwd_vs_torch", "{:.2f}"),
    ("bwd_vs_torch", "{:.2f}"),
    ("fwd_vs_onnxruntime", "{:.2f}"),
    ("fwd_vs_numpy", "{:.2f}"),
    ("rms_fwd_vs_ln", "{:.2f}"),
    ("rms_bwd_vs_ln", "{:.2f}"),
    ("rms_fwd_vs_torch", "{:.2f}"),
    ("in_place_vs_out", "{:.2f}"),
]


def run(quick=False):
    """Every shape and dtype; returns {"info": ..., "results": [row, ...]}."""
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
        "onnxruntime": ort.__version__ if ort is not None else None,
    }
    rows = []
    for M, N in [(1, 1024), (1, 4096), (64, 1024), (8192, 256), (4096, 1024), (8192, 4096)]:
        for dt in (np.float32, np.float64):
            if dt is np.float64 and M * N > 4096 * 1024:
                continue
            bench_shape(M, N, dt, rows, quick)
    info["threading_layer"] = numba.threading_layer()
    return {"info": info, "results": rows}


def table(rows):
    """Markdown table of the ratio columns plus lnnumba's own times."""
    head = [c for c, _ in COLUMNS] + ["ln fwd µs", "ln bwd µs"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f.format(r[c]) if c in r else "n/a" for c, f in COLUMNS]
        cells += [f"{r['times_us']['ln_fwd_alloc']:.2f}", f"{r['times_us']['ln_bwd']:.2f}"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter timing rounds")
    ap.add_argument("--json", help="write the results to this file")
    args = ap.parse_args(argv)
    res = run(args.quick)
    print(" ".join(f"{k}={v}" for k, v in res["info"].items()))
    print(table(res["results"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
