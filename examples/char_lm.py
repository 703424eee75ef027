"""Train a character-level language model (embedding -> LN-LSTM -> linear -> softmax) with
lnnumba alone, then sample text from it.

    python examples/char_lm.py                      # the Python standard library's own source
    python examples/char_lm.py --text book.txt      # any text file
    python examples/char_lm.py --resume             # continue from the last checkpoint
    python examples/char_lm.py --compare            # LN-LSTM vs plain LSTM, curves as a PNG

The default corpus is the standard library's .py files, read at run time (always present,
offline). Training is truncated backpropagation through time over B parallel streams of the text,
the LSTM state carried from one window of T characters to the next; Adam with gradient clipping.
A checkpoint (parameters, optimizer state, carried state, data position, RNG state, the learning
curve) is written every ``--eval-every`` steps; ``--resume`` continues exactly where it stopped.
A progress bar shows the loss and speed (tqdm when installed, plain lines otherwise).
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

import lnnumba


def stdlib_text(max_chars):
    """The first ``max_chars`` characters of the standard library's .py files, in sorted order."""
    root = Path(os.__file__).parent
    parts, n = [], 0
    for p in sorted(root.glob("*.py")):
        try:
            t = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(t)
        n += len(t)
        if n >= max_chars:
            break
    return "".join(parts)[:max_chars]


class CharLM:
    """Embedding (V, E) -> LSTM (E, H) -> Linear (H, V). ``params`` is one flat dict over the
    three parts ("emb.W", "cell.Wx", ..., "head.b"), the same arrays the parts use."""

    def __init__(self, vocab_size, hidden=128, embed=32, layer_norm=True, seed=0):
        self.emb = lnnumba.Embedding(vocab_size, embed, seed=seed)
        self.cell = lnnumba.LSTM(embed, hidden, layer_norm=layer_norm, seed=seed + 1)
        self.head = lnnumba.Linear(hidden, vocab_size, seed=seed + 2)
        self.parts = {"emb": self.emb, "cell": self.cell, "head": self.head}
        self.params = {f"{n}.{k}": v for n, m in self.parts.items() for k, v in m.params.items()}

    def loss_and_grads(self, xs, ys, state):
        """xs, ys: (T, B) ids (inputs and next characters); state: LSTM state or None.
        Returns (mean loss, grads keyed like params, the state after the window)."""
        e, ce = self.emb.forward(xs)
        hs, last, cc = self.cell.forward(e, state)
        logits, ch = self.head.forward(hs)
        T, B, V = logits.shape
        loss, dlogits = lnnumba.softmax_cross_entropy(logits.reshape(T * B, V), ys.reshape(-1))
        dhs, g_head = self.head.backward(dlogits.reshape(T, B, V), ch)
        de, g_cell, _ = self.cell.backward(dhs, cc)
        _, g_emb = self.emb.backward(de, ce)
        grads = {}
        for name, g in (("emb", g_emb), ("cell", g_cell), ("head", g_head)):
            grads.update({f"{name}.{k}": v for k, v in g.items()})
        return loss, grads, last

    def loss(self, xs, ys, state):
        e, _ = self.emb.forward(xs)
        hs, last = self.cell.predict(e, state)
        logits, _ = self.head.forward(hs)
        T, B, V = logits.shape
        return lnnumba.softmax_cross_entropy(logits.reshape(T * B, V), ys.reshape(-1))[0], last

    def sample(self, first_id, n, rng, temperature=0.8):
        ids = [first_id]
        state = None
        for _ in range(n):
            e, _ = self.emb.forward(np.array([ids[-1]]))
            state = self.cell.step(e, state)
            logits = self.head.forward(state[0])[0][0].astype(np.float64) / temperature
            p = np.exp(logits - logits.max())
            ids.append(int(rng.choice(len(p), p=p / p.sum())))
        return ids


def streams(data, B):
    """The text as B parallel streams: (L, B) ids, stream b being the b-th contiguous slice."""
    L = len(data) // B
    return data[: L * B].reshape(B, L).T.copy()


class Progress:
    """tqdm when installed, else a line every ``every`` steps."""

    def __init__(self, total, initial, every=50):
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
        except ImportError:
            self.bar = None
        self.every = every

    def update(self, step, loss, cps):
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.3f}", chars_per_s=f"{cps:,.0f}")
            self.bar.update(1)
        elif step % self.every == 0:
            print(f"step {step}  loss {loss:.3f}  {cps:,.0f} chars/s", flush=True)

    def write(self, msg):
        (self.bar.write if self.bar is not None else print)(msg)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def train(args, layer_norm=True, checkpoint=None, log=print):
    """Trains one model; returns (model, curve, chars per second). curve: [(step, train, val)]."""
    text = Path(args.text).read_text(encoding="utf-8") if args.text else stdlib_text(args.chars)
    vocab = "".join(sorted(set(text)))
    index = {ch: i for i, ch in enumerate(vocab)}
    data = np.fromiter((index[ch] for ch in text), np.int64, len(text))
    split = int(len(data) * 0.9)
    train_s, val_s = streams(data[:split], args.batch), streams(data[split:], args.batch)
    model = CharLM(len(vocab), args.hidden, args.embed, layer_norm, args.seed)
    opt = lnnumba.Adam(model.params, lr=args.lr)
    rng = np.random.default_rng(args.seed)
    step, pos, curve, state = 0, 0, [], None
    if checkpoint and args.resume and os.path.exists(checkpoint):
        saved, ost, meta = lnnumba.load_checkpoint(checkpoint)
        if meta.get("vocab") != vocab or meta.get("layer_norm") != layer_norm:
            raise SystemExit(f"{checkpoint} was written for another text or model; not resuming")
        for k, v in model.params.items():
            v[...] = saved[k]
        opt.load_state_dict(ost)
        step, pos, curve = meta["step"], meta["pos"], [tuple(c) for c in meta["curve"]]
        rng.bit_generator.state = meta["rng"]
        if "state.h" in saved:
            state = (saved["state.h"], saved["state.c"])
        log(f"resumed from {checkpoint} at step {step}")
    T = args.seq
    progress = Progress(args.steps, step)
    t0, chars = time.perf_counter(), 0
    while step < args.steps:
        if pos + T + 1 > len(train_s):
            pos, state = 0, None  # an epoch is over: back to the start of every stream
        xs, ys = train_s[pos : pos + T], train_s[pos + 1 : pos + T + 1]
        loss, grads, state = model.loss_and_grads(xs, ys, state)
        lnnumba.clip_grad_norm(grads, 5.0)
        opt.step(grads)
        pos += T
        step += 1
        chars += xs.size
        progress.update(step, loss, chars / (time.perf_counter() - t0))
        if step % args.eval_every == 0 or step == args.steps:
            vl, vs, n = 0.0, None, 0
            for p in range(0, len(val_s) - T - 1, T):
                lv, vs = model.loss(val_s[p : p + T], val_s[p + 1 : p + T + 1], vs)
                vl, n = vl + lv, n + 1
            curve.append((step, loss, vl / max(n, 1)))
            progress.write(
                f"step {step}: train loss {loss:.3f}, held-out loss {vl / max(n, 1):.3f}"
            )
            if checkpoint:
                arrays = dict(model.params)
                if state is not None:
                    arrays["state.h"], arrays["state.c"] = state
                meta = {
                    "step": step,
                    "pos": pos,
                    "curve": curve,
                    "vocab": vocab,
                    "layer_norm": layer_norm,
                    "rng": rng.bit_generator.state,
                }
                lnnumba.save_checkpoint(checkpoint, arrays, opt, meta)
    progress.close()
    cps = chars / max(time.perf_counter() - t0, 1e-9)
    model.vocab = vocab
    return model, curve, cps, rng


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text", help="a UTF-8 text file (default: the standard library's source)")
    ap.add_argument("--chars", type=int, default=1_000_000, help="default corpus size")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=100, help="characters per window (T)")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--embed", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--checkpoint", default="char_lm.npz")
    ap.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    ap.add_argument("--compare", action="store_true", help="also train a plain LSTM; plot both")
    ap.add_argument("--plot", default="char_lm_curves.png")
    ap.add_argument("--sample", type=int, default=300, help="characters to sample at the end")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    model, curve, cps, rng = train(args, True, args.checkpoint)
    print(f"LN-LSTM: held-out loss {curve[-1][2]:.3f} nats/char, {cps:,.0f} chars/s")
    if args.sample:
        ids = model.sample(model.vocab.index("\n") if "\n" in model.vocab else 0, args.sample, rng)
        print("---- sample ----\n" + "".join(model.vocab[i] for i in ids) + "\n----------------")
    if args.compare:
        base = args.checkpoint.replace(".npz", "") + "_plain.npz"
        _, curve_plain, _, _ = train(args, False, base)
        print(f"plain LSTM: held-out loss {curve_plain[-1][2]:.3f} nats/char")
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed (pip install 'lnnumba[examples]'): no plot")
            return 0
        fig, ax = plt.subplots(figsize=(6, 4))
        for c, label in [(curve, "LN-LSTM"), (curve_plain, "LSTM")]:
            s = [p[0] for p in c]
            ax.plot(s, [p[2] for p in c], label=f"{label}, held-out")
            ax.plot(s, [p[1] for p in c], "--", label=f"{label}, train")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/char)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
