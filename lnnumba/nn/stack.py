"""Stacked (multi-layer) and bidirectional recurrent networks built from the cells.

``Stacked(cell, input_size, hidden_size, *, num_layers=1, bidirectional=False,
layer_norm=True, dtype=np.float32, seed=None)`` with ``cell`` one of "lstm", "gru", "rnn".
Layer l (l >= 1) reads the outputs of layer l-1, both directions concatenated, as PyTorch's
``nn.LSTM(num_layers=..., bidirectional=...)`` does. The reverse direction reads each sequence
from its own last element (so variable ``lengths`` work as in PyTorch's packed sequences).

States are tuples of stacked arrays, as in PyTorch: ``(h, c)`` for the LSTM, ``(h,)`` otherwise,
each (num_layers * D, B, H) with D = 2 when bidirectional, index ``layer * D + direction``.
Parameters are one flat dict, ``"l{layer}.{fwd|bwd}.{name}"``.
"""

from typing import NamedTuple

import numpy as np

from .. import _args
from .cells import GRU, LSTM, RNN, check_lengths

_CELLS = {"lstm": LSTM, "gru": GRU, "rnn": RNN}


class StackCache(NamedTuple):
    owner: object
    lengths: np.ndarray  # (B,) the sequence lengths (T for all when none were given)
    caches: list  # per layer, per direction: the cell's cache
    rev: np.ndarray  # (T, B) time index of the reversed sequence (reverse direction)


def _reverse_index(T, lengths):
    """(T, B) indices that reverse each sequence within its length: t -> len - 1 - t, and t for
    the padding past the length (left in place; the cell masks it)."""
    t = np.arange(T)[:, None]
    L = lengths[None, :]
    return np.where(t < L, L - 1 - t, t)


def _take(a, idx):
    """a (T, B, ...) reindexed along time per row: out[t, b] = a[idx[t, b], b]."""
    return a[idx, np.arange(a.shape[1])[None, :]]


class Stacked:
    """Multi-layer, optionally bidirectional RNN / LSTM / GRU (see the module docstring).

    forward(x, state=None, lengths=None) -> (hs (T, B, D*H), last, cache);
    predict(x, state=None, lengths=None) -> (hs, last), without a cache (inference);
    backward(dhs, cache, dlast=None) -> (dx, grads, dstate); step(x_t, state) -> state
    (unidirectional only: a reverse direction needs the whole sequence).
    """

    def __init__(
        self,
        cell,
        input_size,
        hidden_size,
        *,
        num_layers=1,
        bidirectional=False,
        layer_norm=True,
        dtype=np.float32,
        seed=None,
    ):
        fn = "Stacked"
        if cell not in _CELLS:
            raise ValueError(f"{fn}: cell must be one of {sorted(_CELLS)}, got {cell!r}")
        self.cell = cell
        self.input_size = _args.positive_int(fn, "input_size", input_size)
        self.hidden_size = _args.positive_int(fn, "hidden_size", hidden_size)
        self.num_layers = _args.positive_int(fn, "num_layers", num_layers)
        self.bidirectional = bool(bidirectional)
        self.D = 2 if self.bidirectional else 1
        self.layer_norm = bool(layer_norm)
        self.dtype = _args.float_dtype(fn, dtype)
        cls = _CELLS[cell]
        self.n_state = cls.n_state
        rng = _args.rng(fn, seed)
        self.layers = []
        self.params = {}
        for layer in range(self.num_layers):
            I = self.input_size if layer == 0 else self.D * self.hidden_size
            cells = []
            for name in ["fwd", "bwd"][: self.D]:
                c = cls(
                    I,
                    self.hidden_size,
                    layer_norm=layer_norm,
                    dtype=dtype,
                    seed=int(rng.integers(2**31)),
                )
                cells.append(c)
                self.params.update({f"l{layer}.{name}.{k}": v for k, v in c.params.items()})
            self.layers.append(cells)

    def _states(self, state, B, what, name="state"):
        """Per (layer, direction) state tuples from the stacked arrays (None: zeros)."""
        fn = f"Stacked.{what}"
        n = self.num_layers * self.D
        if state is None:
            return [[None] * self.D for _ in range(self.num_layers)]
        if not isinstance(state, (tuple, list)) or len(state) != self.n_state:
            raise ValueError(
                f"{fn}: {name} must be a tuple of {self.n_state} arrays of shape "
                f"(num_layers * D, B, H) = {(n, B, self.hidden_size)}"
            )
        arrs = []
        for i, s in enumerate(state):
            s = _args.as_array(fn, f"{name}[{i}]", s)
            if s.shape != (n, B, self.hidden_size):
                raise ValueError(
                    f"{fn}: {name}[{i}] has shape {s.shape}, expected {(n, B, self.hidden_size)}"
                )
            arrs.append(s)
        return [
            [tuple(a[layer * self.D + d] for a in arrs) for d in range(self.D)]
            for layer in range(self.num_layers)
        ]

    @staticmethod
    def _lengths(lengths, T, B, what):
        """The (B,) sequence lengths, checked (T for all when None)."""
        if lengths is None:
            return np.full(B, T)
        return check_lengths(f"Stacked.{what}", lengths, T, B)

    def _stack(self, per):
        """Stacked state arrays from per (layer, direction) state tuples."""
        return tuple(
            np.stack([per[layer][d][k] for layer in range(self.num_layers) for d in range(self.D)])
            for k in range(self.n_state)
        )

    def forward(self, x, state=None, lengths=None):
        return self._run("forward", x, state, lengths)

    def predict(self, x, state=None, lengths=None):
        """``forward`` without a cache (each cell's ``predict``): returns (hs, last)."""
        hs, last, _ = self._run("predict", x, state, lengths)
        return hs, last

    def _run(self, what, x, state, lengths):
        """``forward`` (what "forward": the cells' forward, their caches kept in a StackCache)
        or ``predict`` (the cells' predict; no cache, None)."""
        fn = f"Stacked.{what}"
        x = _args.as_array(fn, "x", x)
        if x.ndim != 3:
            raise ValueError(f"{fn}: x has {x.ndim} dimensions, expected 3: (T, B, I)")
        T, B = x.shape[:2]
        st = self._states(state, B, what)
        lens = self._lengths(lengths, T, B, what)
        rev = _reverse_index(T, lens) if self.bidirectional else None
        keep = what == "forward"
        caches, last, inp = [], [], x
        for layer, cells in enumerate(self.layers):
            outs, lc, ll = [], [], []
            for d, cell in enumerate(cells):
                xin = inp if d == 0 else _take(inp, rev)
                if keep:
                    hs, fin, cache = cell.forward(xin, st[layer][d], lengths)
                    lc.append(cache)
                else:
                    hs, fin = cell.predict(xin, st[layer][d], lengths)
                outs.append(hs if d == 0 else _take(hs, rev))
                ll.append(fin)
            caches.append(lc)
            last.append(ll)
            inp = outs[0] if self.D == 1 else np.concatenate(outs, axis=2)
        return inp, self._stack(last), StackCache(self, lens, caches, rev) if keep else None

    def backward(self, dhs, cache, dlast=None):
        if not isinstance(cache, StackCache) or cache.owner is not self:
            raise ValueError("Stacked.backward: cache does not come from this network's forward()")
        dhs = _args.as_array("Stacked.backward", "dhs", dhs)
        T, B = dhs.shape[:2]
        dst = self._states(dlast, B, "backward", "dlast")
        grads, dstate = {}, [[None] * self.D for _ in range(self.num_layers)]
        H = self.hidden_size
        dout = dhs
        for layer in range(self.num_layers - 1, -1, -1):
            dinp = None
            for d, cell in enumerate(self.layers[layer]):
                g = np.ascontiguousarray(dout[:, :, d * H : (d + 1) * H])
                if d == 1:
                    g = _take(g, cache.rev)
                dx, gr, ds = cell.backward(g, cache.caches[layer][d], dst[layer][d])
                if d == 1:
                    dx = _take(dx, cache.rev)
                dinp = dx if dinp is None else dinp + dx
                name = ["fwd", "bwd"][d]
                grads.update({f"l{layer}.{name}.{k}": v for k, v in gr.items()})
                dstate[layer][d] = ds
            dout = dinp
        return dout, grads, self._stack(dstate)

    def step(self, x_t, state=None):
        if self.bidirectional:
            raise ValueError(
                "Stacked.step: a bidirectional network has no step-by-step form "
                "(its reverse direction needs the whole sequence); use forward()"
            )
        x_t = _args.as_array("Stacked.step", "x_t", x_t)
        st = self._states(state, x_t.shape[0], "step")
        new, inp = [], x_t
        for layer, (cell,) in enumerate(self.layers):
            s = cell.step(inp, st[layer][0])
            new.append([s])
            inp = s[0]
        return self._stack(new)
