"""LN vs no LN as sequences grow, with small mini-batches: the 8x8 digits read by an LSTM a few
pixels per step (16 steps) or one pixel per step (64 steps), classified from the last state.

    python examples/long_sequences.py [--epochs 10] [--batch 8] [--plot docs/long_sequences.png]

The paper's claim (PAPER.md §4): layer normalization helps recurrent networks most for long
sequences and small mini-batches. Needs scikit-learn (the data); matplotlib for the plot.
Prints the final test error of each run and writes the learning curves.
"""

import argparse
import sys

import numpy as np

import lnnumba


def run(pixels_per_step, layer_norm, data, epochs, batch, hidden=64, seed=0):
    xtr, ytr, xte, yte = data
    T = 64 // pixels_per_step

    def seq(x):  # (N, 64) -> (T, N, pixels_per_step), time-major
        return np.ascontiguousarray(x.reshape(len(x), T, pixels_per_step).transpose(1, 0, 2))

    cell = lnnumba.LSTM(pixels_per_step, hidden, layer_norm=layer_norm, seed=seed, forget_bias=1.0)
    head = lnnumba.Linear(hidden, 10, seed=seed + 1)
    params = {
        **{f"cell.{k}": v for k, v in cell.params.items()},
        **{f"head.{k}": v for k, v in head.params.items()},
    }
    opt = lnnumba.Adam(params, lr=3e-3)
    rng = np.random.default_rng(seed)
    curve = []
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(xtr))
        for s in range(0, len(order) - batch + 1, batch):
            idx = order[s : s + batch]
            hs, last, cc = cell.forward(seq(xtr[idx]))
            logits, ch = head.forward(last[0])
            _, d = lnnumba.softmax_cross_entropy(logits, ytr[idx])
            dh, gh = head.backward(d, ch)
            _, gc, _ = cell.backward(np.zeros_like(hs), cc, (dh, np.zeros_like(dh)))
            grads = {
                **{f"cell.{k}": v for k, v in gc.items()},
                **{f"head.{k}": v for k, v in gh.items()},
            }
            lnnumba.clip_grad_norm(grads, 5.0)
            opt.step(grads)
        _, last = cell.predict(seq(xte))
        err = float(np.mean(head.forward(last[0])[0].argmax(1) != yte))
        curve.append((epoch, err))
    return curve


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--plot", default="long_sequences.png")
    args = ap.parse_args(argv)
    try:
        from ln_vs_bn import load_digits
    except ImportError:
        sys.path.insert(0, __import__("os").path.dirname(__file__))
        from ln_vs_bn import load_digits
    try:
        data = load_digits()
    except ImportError:
        print("scikit-learn is needed for the digits: pip install -e '.[examples]'")
        return 1
    results = {}
    for pps in (4, 1):
        for ln in (True, False):
            curve = run(pps, ln, data, args.epochs, args.batch)
            results[(pps, ln)] = curve
            name = "LN-LSTM" if ln else "LSTM   "
            print(
                f"{64 // pps:2d} steps, {name}: test error {100 * curve[-1][1]:.2f}% "
                f"(best {100 * min(c[1] for c in curve):.2f}%)",
                flush=True,
            )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return 0
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, pps in zip(axes, (4, 1)):
        for ln, color in ((True, "tab:blue"), (False, "gray")):
            c = results[(pps, ln)]
            ax.plot(
                [p[0] for p in c],
                [100 * p[1] for p in c],
                color=color,
                label="LN-LSTM" if ln else "LSTM",
            )
        ax.set_title(f"{64 // pps} steps per digit, mini-batch {args.batch}")
        ax.set_xlabel("epoch")
        ax.legend()
    axes[0].set_ylabel("test error (%)")
    fig.tight_layout()
    fig.savefig(args.plot, dpi=90)
    print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
