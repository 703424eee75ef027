"""One training step of examples/char_lm.py's model (LN-LSTM, B=8, T=100, H=128): forward,
backward, clipping, Adam. Time and peak memory."""

import importlib.util
from pathlib import Path

import numpy as np

import lnnumba


def _char_lm():
    # the benchmarks run from an installed lnnumba; the example lives in the repository
    here = Path(__file__).resolve()
    for root in [here.parents[2], *here.parents]:
        p = root / "examples" / "char_lm.py"
        if p.exists():
            spec = importlib.util.spec_from_file_location("char_lm", p)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            return mod
    raise NotImplementedError("examples/char_lm.py not found")


class CharLMStep:
    timeout = 120

    def setup(self):
        lm = _char_lm()
        rng = np.random.default_rng(0)
        self.xs = rng.integers(0, 96, (100, 8))
        self.ys = rng.integers(0, 96, (100, 8))
        self.model = lm.CharLM(96, 128, 32, True, 0)
        self.opt = lnnumba.Adam(self.model.params, lr=3e-3)
        self.step()

    def step(self):
        _, grads, _ = self.model.loss_and_grads(self.xs, self.ys, None)
        lnnumba.clip_grad_norm(grads, 5.0)
        self.opt.step(grads)

    def time_train_step(self):
        self.step()

    def peakmem_train_step(self):
        self.step()
