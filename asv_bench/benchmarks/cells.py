"""RNN / LSTM / GRU with and without LN: one inference step at B=1, a sequence forward (with
and without a cache for the backward pass), and forward + backward."""

import numpy as np

import lnnumba

from .common import data

CELLS = {"RNN": lnnumba.RNN, "LSTM": lnnumba.LSTM, "GRU": lnnumba.GRU}


class Cells:
    params = (list(CELLS), [True, False])
    param_names = ["cell", "layer_norm"]
    timeout = 120

    def setup(self, cell, layer_norm):
        I, H, T, B = 64, 128, 50, 8
        self.cell = CELLS[cell](I, H, layer_norm=layer_norm, seed=0)
        self.x = data((T, B, I), np.float32)
        self.g = data((T, B, H), np.float32, 1)
        self.xt = data((1, I), np.float32, 2)
        self.state = self.cell.step(self.xt)  # warm the JIT
        _, _, cache = self.cell.forward(self.x)
        self.cell.backward(self.g, cache)

    def time_step_B1(self, cell, layer_norm):
        self.cell.step(self.xt, self.state)

    def time_forward(self, cell, layer_norm):
        self.cell.forward(self.x)

    def time_predict(self, cell, layer_norm):
        self.cell.predict(self.x)

    def time_forward_backward(self, cell, layer_norm):
        _, _, cache = self.cell.forward(self.x)
        self.cell.backward(self.g, cache)


class ServingStep:
    """The serving step of issue-sized models: LN-LSTM at B=1, I=H=256 (2 MB of float32 weights,
    its products split over the cores) and I=H=1024 (32 MB, through BLAS)."""

    params = [256, 1024]
    param_names = ["hidden"]

    def setup(self, hidden):
        self.cell = lnnumba.LSTM(hidden, hidden, seed=0)
        self.xt = data((1, hidden), np.float32, 3)
        self.state = self.cell.step(self.xt)

    def time_step(self, hidden):
        self.cell.step(self.xt, self.state)


class PaddedBatch:
    """An LN-LSTM's predict over a padded batch (T=100, I=64, H=128, float32) whose sequence
    lengths are spread over 1..T, sorted longest first: a small batch (B=8, the loop over time
    in one kernel call, where ended rows skip the recurrent product) and a large one (B=64,
    BLAS products per step over the rows still running)."""

    params = [8, 64]
    param_names = ["batch"]

    def setup(self, batch):
        T = 100
        self.cell = lnnumba.LSTM(64, 128, seed=0)
        self.x = data((T, batch, 64), np.float32)
        rng = np.random.default_rng(1)
        self.lengths = np.sort(rng.integers(1, T + 1, batch))[::-1].copy()
        self.cell.predict(self.x, None, self.lengths)

    def time_predict(self, batch):
        self.cell.predict(self.x, None, self.lengths)
