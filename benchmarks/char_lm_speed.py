"""Training throughput of examples/char_lm.py's model (LN-LSTM, B=8, T=100, H=128) in lnnumba,
side by side with the same model in eager PyTorch + autograd + Adam, in one process.

    python benchmarks/char_lm_speed.py

One training step = forward, backward, gradient clipping and an Adam update on a window of
B*T characters; reported as characters per second (fastest of interleaved rounds).
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from compare import best_times  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("char_lm", ROOT / "examples" / "char_lm.py")
char_lm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(char_lm)

import lnnumba  # noqa: E402

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None

B, T, H, E, V = 8, 100, 128, 32, 96


def torch_model(model):
    P = {k: torch.tensor(v, requires_grad=True) for k, v in model.params.items()}
    opt = torch.optim.Adam(P.values(), lr=3e-3)

    def step(xs, ys):
        opt.zero_grad()
        e = P["emb.W"][xs]
        h = torch.zeros(B, H)
        c = torch.zeros(B, H)
        xw = e @ P["cell.Wx"]
        hs = []
        for t in range(T):
            a = (
                F.layer_norm(xw[t], (4 * H,), P["cell.ln_x_g"], P["cell.ln_x_b"])
                + F.layer_norm(h @ P["cell.Wh"], (4 * H,), P["cell.ln_h_g"], P["cell.ln_h_b"])
                + P["cell.b"]
            )
            i, f, g, o = a.chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(
                F.layer_norm(c, (H,), P["cell.ln_c_g"], P["cell.ln_c_b"])
            )
            hs.append(h)
        logits = torch.stack(hs) @ P["head.W"] + P["head.b"]
        loss = F.cross_entropy(logits.reshape(-1, V), ys.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(P.values(), 5.0)
        opt.step()

    return step


def run():
    """{"chars_per_s": {"lnnumba": ..., "torch": ...}, "vs_torch": ...}"""
    rng = np.random.default_rng(0)
    xs = rng.integers(0, V, (T, B))
    ys = rng.integers(0, V, (T, B))
    model = char_lm.CharLM(V, H, E, True, 0)
    opt = lnnumba.Adam(model.params, lr=3e-3)

    def ours():
        loss, grads, _ = model.loss_and_grads(xs, ys, None)
        lnnumba.clip_grad_norm(grads, 5.0)
        opt.step(grads)

    f = {"lnnumba": ours}
    if torch is not None:
        torch.set_num_threads(__import__("numba").get_num_threads())
        tstep = torch_model(char_lm.CharLM(V, H, E, True, 0))
        txs, tys = torch.from_numpy(xs), torch.from_numpy(ys)
        f["torch"] = lambda: tstep(txs, tys)
    t = best_times(f, 0.2, 7)
    r = {"B": B, "T": T, "H": H, "chars_per_s": {k: B * T / v for k, v in t.items()}}
    if torch is not None:
        r["vs_torch"] = t["torch"] / t["lnnumba"]
    return r


def describe(r):
    cps = r["chars_per_s"]
    line = (
        f"char-LM training step, B={r['B']} T={r['T']} H={r['H']}: lnnumba "
        f"{cps['lnnumba']:,.0f} chars/s"
    )
    if "vs_torch" in r:
        line += (
            f", PyTorch eager + autograd + Adam {cps['torch']:,.0f} chars/s ({r['vs_torch']:.2f}x)"
        )
    return line


def main():
    print(describe(run()))


if __name__ == "__main__":
    main()
