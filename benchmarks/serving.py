"""Inference latency of one LN-LSTM step (I = H), side by side: lnnumba's ``step``, the same step
in eager PyTorch, and in ONNX Runtime (a graph of the step built with onnx.helper); plus a batched
step for B=64 independent streams against 64 single steps.

    python benchmarks/serving.py
"""

import sys
from pathlib import Path

import numba
import numpy as np
from numba import njit, prange

import lnnumba

sys.path.insert(0, str(Path(__file__).parent))
from compare import best_times  # noqa: E402

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None
try:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
except ImportError:
    ort = None


def onnx_step(cell, threads=None):
    """An ONNX Runtime session computing one step of ``cell`` (an LN-LSTM): (x, h, c) -> (h, c).
    threads: None for ONNX Runtime's default (one intra-op thread per core, spinning between
    calls), or that many intra-op threads, not spinning."""
    p = {k: v.astype(np.float32) for k, v in cell.params.items()}
    H = cell.hidden_size
    inits = [numpy_helper.from_array(v, name=k) for k, v in p.items()]
    inits.append(numpy_helper.from_array(np.array([H] * 4, np.int64), name="split4"))
    eps = cell.eps
    n = helper.make_node
    nodes = [
        n("MatMul", ["x", "Wx"], ["xw"]),
        n("MatMul", ["h", "Wh"], ["hw"]),
        n("LayerNormalization", ["xw", "ln_x_g", "ln_x_b"], ["lx"], axis=-1, epsilon=eps),
        n("LayerNormalization", ["hw", "ln_h_g", "ln_h_b"], ["lh"], axis=-1, epsilon=eps),
        n("Add", ["lx", "lh"], ["a0"]),
        n("Add", ["a0", "b"], ["a"]),
        n("Split", ["a", "split4"], ["i", "f", "g", "o"], axis=1),
        n("Sigmoid", ["i"], ["si"]),
        n("Sigmoid", ["f"], ["sf"]),
        n("Tanh", ["g"], ["tg"]),
        n("Sigmoid", ["o"], ["so"]),
        n("Mul", ["sf", "c"], ["fc"]),
        n("Mul", ["si", "tg"], ["ig"]),
        n("Add", ["fc", "ig"], ["c_out"]),
        n("LayerNormalization", ["c_out", "ln_c_g", "ln_c_b"], ["lc"], axis=-1, epsilon=eps),
        n("Tanh", ["lc"], ["tc"]),
        n("Mul", ["so", "tc"], ["h_out"]),
    ]
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "ln_lstm_step",
        [
            helper.make_tensor_value_info("x", f32, ["B", cell.input_size]),
            helper.make_tensor_value_info("h", f32, ["B", H]),
            helper.make_tensor_value_info("c", f32, ["B", H]),
        ],
        [
            helper.make_tensor_value_info("h_out", f32, ["B", H]),
            helper.make_tensor_value_info("c_out", f32, ["B", H]),
        ],
        inits,
    )
    # IR version 8 (the first with opset 17): a newer onnx package would otherwise stamp a
    # version an older ONNX Runtime refuses to load
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def torch_step(cell):
    P = {k: torch.from_numpy(v) for k, v in cell.params.items()}
    H = cell.hidden_size

    def step(x, h, c):
        with torch.no_grad():
            a = (
                F.layer_norm(x @ P["Wx"], (4 * H,), P["ln_x_g"], P["ln_x_b"])
                + F.layer_norm(h @ P["Wh"], (4 * H,), P["ln_h_g"], P["ln_h_b"])
                + P["b"]
            )
            i, f, g, o = a.chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            return torch.sigmoid(o) * torch.tanh(F.layer_norm(c, (H,), P["ln_c_g"], P["ln_c_b"])), c

    return step


# Seconds between one peer's calls and the next's (see ``compare.best_times``).
SETTLE_S = 0.1


@njit(parallel=True, nogil=True, cache=True, fastmath=True)
def read_weights(Wx, Wh, nt):
    """The sum of every element of Wx (I, G) and Wh (H, G), the rows of [Wx; Wh] split into nt
    contiguous blocks, one task each, as a batch-of-one ``step`` splits its two products
    (``lnnumba.cpu.cells.matvec_pair``): the time to read a step's weights once from the caches
    they stay in between calls, and so the least time a step can take at I=H=256 (2 MB). Not
    for weights that come from memory: at I=H=1024 (32 MB) the step's products, eight rows of
    the weights at a time, read them faster than this loop's one row at a time."""
    I = Wx.shape[0]
    K = I + Wh.shape[0]
    part = np.zeros(nt)
    for k in prange(nt):
        s = Wx.dtype.type(0)
        for i in range(k * K // nt, (k + 1) * K // nt):
            row = Wx[i] if i < I else Wh[i - I]
            for j in range(row.shape[0]):
                s += row[j]
        part[k] = s
    return part.sum()


def run():
    rng = np.random.default_rng(0)
    out = []
    for H in (256, 1024):
        cell = lnnumba.LSTM(H, H, seed=0)
        x = rng.standard_normal((1, H)).astype(np.float32)
        st = cell.step(x)
        f = {"lnnumba": lambda cell=cell, x=x, st=st: cell.step(x, st)}
        if torch is not None:
            ts = torch_step(cell)
            tx, th, tc = (torch.from_numpy(a) for a in (x, *st))
            f["torch_eager"] = lambda ts=ts, tx=tx, th=th, tc=tc: ts(tx, th, tc)
        if ort is not None:
            feeds = {"x": x, "h": st[0], "c": st[1]}
            for name, threads in (("onnxruntime", None), ("onnxruntime_1thread", 1)):
                sess = onnx_step(cell, threads)
                got = sess.run(None, feeds)
                np.testing.assert_allclose(got[0], cell.step(x, st)[0], rtol=1e-4, atol=1e-5)
                f[name] = lambda sess=sess, feeds=feeds: sess.run(None, feeds)
        Wx, Wh = cell.params["Wx"], cell.params["Wh"]
        # the tasks the step itself splits its products into (at least one per thread)
        nt = max(cell._split_tasks(Wx, Wh), numba.get_num_threads())
        if H == 256:
            f["read_weights"] = lambda Wx=Wx, Wh=Wh, nt=nt: read_weights(Wx, Wh, nt)
            f["read_weights_1thread"] = lambda Wx=Wx, Wh=Wh: read_weights(Wx, Wh, 1)
        # ONNX Runtime's default threads spin for tens of milliseconds after a run: timed right
        # after it, lnnumba's step took 1.3-2x as long (2 cores); each peer's calls start after
        # a pause, as they would in a server that runs only that peer
        t = best_times(f, 0.1, 7, settle=SETTLE_S)
        r = {"H": H, "weights_MB": (Wx.nbytes + Wh.nbytes) / 2**20, "tasks": nt}
        r["us"] = {k: v * 1e6 for k, v in t.items()}
        for k in t:
            if k != "lnnumba" and not k.startswith("read_weights"):
                r[f"vs_{k}"] = t[k] / t["lnnumba"]
        out.append(r)
    # many independent streams: one batched step against 64 single steps
    cell = lnnumba.LSTM(256, 256, seed=0)
    xs = rng.standard_normal((64, 256)).astype(np.float32)
    sts = cell.step(xs)
    singles = [(xs[i : i + 1], (sts[0][i : i + 1], sts[1][i : i + 1])) for i in range(64)]
    t = best_times(
        {
            "batched": lambda: cell.step(xs, sts),
            "singles": lambda: [cell.step(a, s) for a, s in singles],
        },
        0.1,
        7,
    )
    out.append(
        {
            "H": 256,
            "B": 64,
            "us": {k: v * 1e6 for k, v in t.items()},
            "batched_vs_singles": t["singles"] / t["batched"],
        }
    )
    return out


def describe(r):
    if "B" in r:
        return (
            f"B=64 streams, H=256: one batched step {r['us']['batched']:.0f} us, 64 single "
            f"steps {r['us']['singles']:.0f} us ({r['batched_vs_singles']:.1f}x)"
        )
    us = r["us"]
    line = f"LN-LSTM step B=1 I=H={r['H']}: lnnumba {us['lnnumba']:.1f} us"
    for k, name in (
        ("torch_eager", "eager PyTorch"),
        ("onnxruntime", "ONNX Runtime"),
        ("onnxruntime_1thread", "ONNX Runtime on one thread"),
    ):
        if k in us:
            line += f", {name} {us[k]:.1f} us ({r['vs_' + k]:.2f}x)"
    if "read_weights" in us:
        line += (
            f"; reading its {r['weights_MB']:.0f} MB of weights alone {us['read_weights']:.1f} us"
            f" (split as its products, {r['tasks']} tasks), on one thread"
            f" {us['read_weights_1thread']:.1f} us"
        )
    return line


if __name__ == "__main__":
    for r in run():
        print(describe(r))
