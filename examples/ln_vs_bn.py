"""The paper's permutation-invariant MNIST experiment in miniature: an MLP with two hidden layers
on scikit-learn's bundled 8x8 digits, with no normalization, batch norm or layer norm on the
hidden layers (not on the softmax layer), trained with Adam at mini-batch 128 and 4.

    python examples/ln_vs_bn.py [--epochs 15] [--plot docs/ln_vs_bn.png]

Needs scikit-learn (the data) and matplotlib (the plot): pip install -e ".[examples]".
Prints the final train NLL and test error of each run and writes the learning curves.
"""

import argparse
import sys

import numpy as np

import lnnumba


class MLP:
    """64 -> H -> H -> 10; each hidden layer Linear -> (none | BatchNorm | LayerNorm) -> ReLU."""

    def __init__(self, norm, hidden=256, seed=0):
        self.layers = []
        sizes = [64, hidden, hidden]
        for i in range(2):
            self.layers.append(lnnumba.Linear(sizes[i], sizes[i + 1], seed=seed + i))
            if norm == "batch":
                self.layers.append(lnnumba.BatchNorm(hidden))
            elif norm == "layer":
                self.layers.append(lnnumba.LayerNorm(hidden))
            self.layers.append("relu")
        self.layers.append(lnnumba.Linear(hidden, 10, seed=seed + 9))
        self.params = {}
        for i, layer in enumerate(self.layers):
            if layer != "relu":
                self.params.update({f"{i}.{k}": v for k, v in layer.params.items()})

    def mode(self, training):
        for layer in self.layers:
            if isinstance(layer, lnnumba.BatchNorm):
                layer.train() if training else layer.eval()

    def forward(self, x):
        caches = []
        for layer in self.layers:
            if layer == "relu":
                caches.append(x > 0)
                x = x * caches[-1]
            else:
                x, c = layer.forward(x)
                caches.append(c)
        return x, caches

    def backward(self, d, caches):
        grads = {}
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            if layer == "relu":
                d = d * caches[i]
            else:
                d, g = layer.backward(d, caches[i])
                grads.update({f"{i}.{k}": v for k, v in g.items()})
        return grads


def run(norm, batch, data, epochs, seed=0):
    xtr, ytr, xte, yte = data
    model = MLP(norm, seed=seed)
    opt = lnnumba.Adam(model.params, lr=1e-3)
    rng = np.random.default_rng(seed)
    curve = []
    for epoch in range(1, epochs + 1):
        model.mode(True)
        order = rng.permutation(len(xtr))
        for s in range(0, len(order) - batch + 1, batch):
            idx = order[s : s + batch]
            logits, caches = model.forward(xtr[idx])
            _, d = lnnumba.softmax_cross_entropy(logits, ytr[idx])
            opt.step(model.backward(d, caches))
        model.mode(False)
        nll = lnnumba.softmax_cross_entropy(model.forward(xtr)[0], ytr)[0]
        err = float(np.mean(model.forward(xte)[0].argmax(1) != yte))
        curve.append((epoch, nll, err))
    return curve


def load_digits(seed=0):
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = (d.data / 16.0).astype(np.float32)  # pixel order is irrelevant to an MLP
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    n = int(0.8 * len(x))
    return x[:n], y[:n], x[n:], y[n:]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--plot", default="ln_vs_bn.png")
    args = ap.parse_args(argv)
    try:
        data = load_digits()
    except ImportError:
        print("scikit-learn is needed for the digits: pip install -e '.[examples]'")
        return 1
    results = {}
    for batch in (128, 4):
        for norm in ("none", "batch", "layer"):
            curve = run(norm, batch, data, args.epochs)
            results[(norm, batch)] = curve
            print(
                f"batch {batch:3d}  {norm:5s} norm: train NLL {curve[-1][1]:.4f}, "
                f"test error {100 * curve[-1][2]:.2f}%",
                flush=True,
            )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return 0
    fig, axes = plt.subplots(2, 2, figsize=(9, 6.5))
    for row, batch in enumerate((128, 4)):
        for norm, color in (("none", "gray"), ("batch", "tab:red"), ("layer", "tab:blue")):
            c = results[(norm, batch)]
            e = [p[0] for p in c]
            axes[row, 0].plot(e, [p[1] for p in c], color=color, label=f"{norm} norm")
            axes[row, 1].plot(e, [100 * p[2] for p in c], color=color, label=f"{norm} norm")
        axes[row, 0].set_yscale("log")
        axes[row, 0].set_title(f"train NLL, mini-batch {batch}")
        axes[row, 1].set_title(f"test error (%), mini-batch {batch}")
        axes[row, 1].set_ylim(0, 10)
        for ax in axes[row]:
            ax.set_xlabel("epoch")
            ax.legend()
    fig.tight_layout()
    fig.savefig(args.plot, dpi=90)
    print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
