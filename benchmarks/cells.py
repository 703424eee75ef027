"""Speed of lnnumba's LN-LSTM against the same LN-LSTM in eager PyTorch, side by side.

    python benchmarks/cells.py [--quick]

- inference: T=100, B=1, I=128, H=256, forward only (lnnumba's ``predict``, PyTorch under
  no_grad);
- training: T=100, B=32, I=256, H=512, forward + backward (PyTorch autograd);
- step latency at B=1, H=256 and 1024 (I=H), next to the time of its two matrix-vector
  products alone on the same weights (x Wx and h Wh, the faster of NumPy's BLAS and lnnumba's
  ``matvec_pair`` split over the cores: the floor of a step, which
  is weight-bandwidth bound).
torch.nn.LSTM (no LN, fused) is timed too, for context; and every plain cell (RNN, LSTM, GRU with
layer_norm=False) against the torch.nn cell that computes the same thing. Figures are the fastest
of interleaved rounds.
"""

import argparse
import sys
import time
from pathlib import Path

import numba
import numpy as np

import lnnumba

sys.path.insert(0, str(Path(__file__).parent))
from compare import best_times  # noqa: E402

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None


def torch_ln_lstm(params, H):
    """The same LN-LSTM in eager PyTorch (F.layer_norm + matmuls), autograd for the backward."""
    P = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}

    def run(x, h, c):
        xw = x @ P["Wx"]
        hs = []
        for t in range(x.shape[0]):
            a = (
                F.layer_norm(xw[t], (4 * H,), P["ln_x_g"], P["ln_x_b"])
                + F.layer_norm(h @ P["Wh"], (4 * H,), P["ln_h_g"], P["ln_h_b"])
                + P["b"]
            )
            i, f, g, o = a.chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(F.layer_norm(c, (H,), P["ln_c_g"], P["ln_c_b"]))
            hs.append(h)
        return torch.stack(hs)

    return P, run


def _time_cell(case, cell, T, B, train, peers, rng, mt, rep):
    """Times ``cell`` (forward, + backward when ``train``) on seeded data of (T, B, I) side by
    side with ``peers`` (name -> function (x, G) -> callable, given the same data as torch
    tensors). Returns (result dict, seconds per name)."""
    I, H = cell.input_size, cell.hidden_size
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    G = rng.standard_normal((T, B, H)).astype(np.float32)

    def ours():
        if train:
            hs, last, cache = cell.forward(x)
            cell.backward(G, cache)
        else:
            cell.predict(x)  # inference: nothing kept for a backward pass

    f = {"lnnumba": ours}
    if torch is not None:
        tx, tG = torch.from_numpy(x), torch.from_numpy(G)
        f.update({name: make(tx, tG) for name, make in peers.items()})
    t = best_times(f, mt, rep)
    r = {"case": case, "T": T, "B": B, "I": I, "H": H, "ms": {k: v * 1e3 for k, v in t.items()}}
    return r, t


def _torch_pass(forward, tG, train, params=(), module=None):
    """A callable running ``forward()`` under no_grad, or with autograd's backward of tG."""

    def go():
        if not train:
            with torch.no_grad():
                forward()
            return
        if module is not None:
            module.zero_grad()
        for p in params:
            p.grad = None
        forward().backward(tG)

    return go


def bench_sequence(label, T, B, I, H, train, rng, mt, rep):
    """The LN-LSTM against the same cell in eager PyTorch, and torch.nn.LSTM (no LN)."""
    cell = lnnumba.LSTM(I, H, seed=0)
    peers = {}
    if torch is not None:
        P, run_eager = torch_ln_lstm(cell.params, H)
        lstm = torch.nn.LSTM(I, H)
        z = torch.zeros(B, H)
        peers["torch_eager_ln"] = lambda tx, tG: _torch_pass(
            lambda: run_eager(tx, z, z), tG, train, P.values()
        )
        peers["torch_nn_lstm_no_ln"] = lambda tx, tG: _torch_pass(
            lambda: lstm(tx)[0], tG, train, module=lstm
        )
    r, t = _time_cell(label, cell, T, B, train, peers, rng, mt, rep)
    if torch is not None:
        r["vs_torch_eager"] = t["torch_eager_ln"] / t["lnnumba"]
    return r


def describe(r):
    """One line of text for a result of bench_sequence or bench_step."""
    ms = r["ms"]
    if "peak_mb" in r:
        pk = r["peak_mb"]
        return (
            f"{r['case']} T={r['T']} B={r['B']} I={r['I']} H={r['H']} (float32, outputs "
            f"{r['outputs_mb']:.0f} MB): peak memory {pk['forward']:.0f} MB against "
            f"{pk['predict']:.0f} MB, time {ms['forward']:.1f} ms against {ms['predict']:.1f} ms "
            f"({r['predict_speedup']:.2f}x)"
        )
    head = f"{r['case']} T={r.get('T')} B={r.get('B')} I={r.get('I')} H={r['H']}: lnnumba "
    if r["case"].startswith(("LN-", "plain")):
        line = head + f"{ms['lnnumba']:.2f} ms"
        if "vs_torch_eager" in r:
            line += f", eager PyTorch {ms['torch_eager_ln']:.2f} ms ({r['vs_torch_eager']:.2f}x)"
        if "vs_torch_nn" in r:
            line += f", torch.nn {ms['torch_nn']:.2f} ms ({r['vs_torch_nn']:.2f}x)"
        return line
    if r["case"] == "step":
        line = (
            f"step B=1 H={r['H']}: {ms['step'] * 1e3:.1f} us, its two matrix-vector products "
            f"alone {ms['matvecs'] * 1e3:.1f} us ({r['of_floor']:.2f}x the floor)"
        )
        if "matvecs_split" in ms:
            line += (
                f"; the products through BLAS {ms['matvecs_blas'] * 1e3:.1f} us, split over the"
                f" cores (matvec_pair) {ms['matvecs_split'] * 1e3:.1f} us"
            )
        return line
    line = head + f"{ms['lnnumba']:.2f} ms"
    if "vs_torch_eager" in r:
        line += (
            f", eager PyTorch LN-LSTM {ms['torch_eager_ln']:.2f} ms "
            f"({r['vs_torch_eager']:.2f}x), torch.nn.LSTM without LN "
            f"{ms['torch_nn_lstm_no_ln']:.2f} ms"
        )
    return line


def bench_step(H, rng, mt, rep):
    from lnnumba.cpu.cells import matvec_pair

    cell = lnnumba.LSTM(H, H, seed=0)
    xt = rng.standard_normal((1, H)).astype(np.float32)
    state = cell.step(xt)
    Wx, Wh = cell.params["Wx"], cell.params["Wh"]
    h = state[0]
    xw, hw = np.empty(4 * H, np.float32), np.empty(4 * H, np.float32)
    # the tasks the step itself splits the products into (at least one per thread)
    nt = max(cell._split_tasks(Wx, Wh), numba.get_num_threads())
    t = best_times({"matvecs_blas": lambda: (xt @ Wx, h @ Wh)}, mt, rep)
    # the parallel kernels timed apart from BLAS: interleaved with BLAS products that woke
    # BLAS's threads (the gemv at H=1024 does), they compete with them while they spin (see
    # README)
    time.sleep(0.2)

    def split():
        matvec_pair(xw, hw, xt[0], h[0], Wx, Wh, nt)

    t.update(best_times({"step": lambda: cell.step(xt, state), "matvecs_split": split}, mt, rep))
    t["matvecs"] = min(t["matvecs_blas"], t["matvecs_split"])
    return {
        "case": "step",
        "H": H,
        "ms": {k: v * 1e3 for k, v in t.items()},
        "of_floor": t["step"] / t["matvecs"],
    }


def torch_ln_gru(params, H):
    """The same LN-GRU in eager PyTorch (PAPER.md §3), autograd for the backward."""
    P = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    H2 = 2 * H

    def run(x, h):
        xw = x @ P["Wx"]
        hs = []
        for t in range(x.shape[0]):
            hw = h @ P["Wh"]
            rz = F.layer_norm(xw[t][:, :H2], (H2,), P["ln_x_g"], P["ln_x_b"]) + F.layer_norm(
                hw[:, :H2], (H2,), P["ln_h_g"], P["ln_h_b"]
            )
            r, z = torch.sigmoid(rz[:, :H]), torch.sigmoid(rz[:, H:])
            n = torch.tanh(
                F.layer_norm(xw[t][:, H2:], (H,), P["ln_xn_g"], P["ln_xn_b"])
                + r * F.layer_norm(hw[:, H2:], (H,), P["ln_hn_g"], P["ln_hn_b"])
            )
            h = z * h + (1 - z) * n
            hs.append(h)
        return torch.stack(hs)

    return P, run


def torch_ln_rnn(params, H):
    """The same LN-RNN in eager PyTorch (PAPER.md §3, eq. 4), autograd for the backward."""
    P = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}

    def run(x, h):
        xw = x @ P["Wx"]
        hs = []
        for t in range(x.shape[0]):
            h = torch.tanh(F.layer_norm(xw[t] + h @ P["Wh"], (H,), P["ln_g"], P["ln_b"]))
            hs.append(h)
        return torch.stack(hs)

    return P, run


def bench_ln_cell(kind, T, B, I, H, train, rng, mt, rep):
    """lnnumba's LN-GRU / LN-RNN against the same cell in eager PyTorch."""
    cell = {"GRU": lnnumba.GRU, "RNN": lnnumba.RNN}[kind](I, H, seed=0)
    peers = {}
    if torch is not None:
        P, run_eager = (torch_ln_gru if kind == "GRU" else torch_ln_rnn)(cell.params, H)
        z = torch.zeros(B, H)
        peers["torch_eager_ln"] = lambda tx, tG: _torch_pass(
            lambda: run_eager(tx, z), tG, train, P.values()
        )
    case = f"LN-{kind} {'training' if train else 'inference'}"
    r, t = _time_cell(case, cell, T, B, train, peers, rng, mt, rep)
    if torch is not None:
        r["vs_torch_eager"] = t["torch_eager_ln"] / t["lnnumba"]
    return r


def bench_plain(kind, T, B, I, H, train, rng, mt, rep):
    """A plain (no LN) cell against the torch.nn cell computing the same thing."""
    cell = {"RNN": lnnumba.RNN, "LSTM": lnnumba.LSTM, "GRU": lnnumba.GRU}[kind](
        I, H, layer_norm=False, seed=0
    )
    peers = {}
    if torch is not None:
        mod = getattr(torch.nn, kind)(I, H)
        peers["torch_nn"] = lambda tx, tG: _torch_pass(lambda: mod(tx)[0], tG, train, module=mod)
    case = f"plain {kind} {'training' if train else 'inference'}"
    r, t = _time_cell(case, cell, T, B, train, peers, rng, mt, rep)
    if torch is not None:
        r["vs_torch_nn"] = t["torch_nn"] / t["lnnumba"]
    return r


def bench_predict(kind, T, B, I, H, rng, mt, rep):
    """A cell's ``forward`` (which keeps what ``backward`` needs) against its ``predict`` (which
    keeps nothing): peak memory the call allocates (tracemalloc, which sees NumPy's arrays; free
    buffers of the pool released first) and time, side by side."""
    import tracemalloc

    cell = {"RNN": lnnumba.RNN, "LSTM": lnnumba.LSTM, "GRU": lnnumba.GRU}[kind](I, H, seed=0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    f = {"forward": lambda: cell.forward(x), "predict": lambda: cell.predict(x)}
    peak = {}
    for name, call in f.items():
        lnnumba.release_memory()
        tracemalloc.start()
        try:
            out = call()
            peak[name] = tracemalloc.get_traced_memory()[1] / 2**20
        finally:
            tracemalloc.stop()
        del out
    t = best_times(f, mt, rep)
    return {
        "case": f"LN-{kind} forward vs predict",
        "T": T, "B": B, "I": I, "H": H,
        "ms": {k: v * 1e3 for k, v in t.items()},
        "peak_mb": peak,
        "outputs_mb": T * B * H * 4 / 2**20,
        "predict_speedup": t["forward"] / t["predict"],
    }  # fmt: skip


def run(quick=False):
    mt, rep = (0.02, 3) if quick else (0.1, 7)
    rng = np.random.default_rng(0)
    if torch is not None:
        torch.set_num_threads(numba.get_num_threads())
    return (
        [
            bench_sequence("inference", 100, 1, 128, 256, False, rng, mt, rep),
            bench_sequence("training", 100, 32, 256, 512, True, rng, mt, rep),
            bench_step(256, rng, mt, rep),
            bench_step(1024, rng, mt, rep),
        ]
        + [
            bench_ln_cell(kind, 100, B, 128, 256, train, rng, mt, rep)
            for kind in ("GRU", "RNN")
            for B, train in ((1, False), (32, True))
        ]
        + [
            bench_plain(kind, 100, B, 128, 256, train, rng, mt, rep)
            for kind in ("RNN", "LSTM", "GRU")
            for B, train in ((1, False), (32, True))
        ]
        + [bench_predict(kind, 100, 256, 128, 256, rng, mt, rep) for kind in ("LSTM", "GRU")]
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    print(
        time.strftime("%Y-%m-%d"),
        f"numpy {np.__version__}",
        f"torch {torch.__version__ if torch else None}",
        f"threads {numba.get_num_threads()}",
    )
    for r in run(args.quick):
        print(describe(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
