"""Layer norm and RMSNorm on the CPU: time per call, and the efficiency (GB/s, fraction of the
copy roofline) as tracked figures."""

import numpy as np

import lnnumba
from lnnumba._memory import PAGE, empty_at

from .common import best_seconds, copy_parallel, data

SHAPES = ["1x256", "1x1024", "64x1024", "8192x256", "4096x1024", "8192x4096"]
DTYPES = ["float32", "float64"]


def _setup(shape, dtype):
    if shape == "8192x4096" and dtype == "float64":
        raise NotImplementedError  # 256 MB per array: float32 covers the memory-bound case
    M, N = map(int, shape.split("x"))
    x, dy = data((M, N), dtype), data((M, N), dtype, 1)
    w, b = data(N, dtype, 2), data(N, dtype, 3)
    return x, dy, w, b


class LayerNorm:
    params = (SHAPES, DTYPES)
    param_names = ["shape", "dtype"]
    timeout = 120

    def setup(self, shape, dtype):
        self.x, self.dy, self.w, self.b = _setup(shape, dtype)
        self.y = np.empty_like(self.x)
        _, self.mean, self.rstd = lnnumba.layer_norm_forward(self.x, self.w, self.b)  # warm JIT
        lnnumba.layer_norm_backward(self.dy, self.x, self.mean, self.rstd, self.w)
        lnnumba.layer_norm(self.x, self.w, self.b, out=self.y)
        self.z = self.x.copy()  # normalized in place, again and again (it stays normalized)
        lnnumba.layer_norm(self.z, self.w, self.b, out=self.z)
        copy_parallel(self.y, self.x)
        # the same gradient 48 bytes past x's place within a page (see backward_out_place)
        self.dy48 = empty_at(self.x.shape, dtype, (self.x.ctypes.data + 48) % PAGE, PAGE)
        self.dy48[...] = self.dy
        lnnumba.layer_norm_backward(self.dy48, self.x, self.mean, self.rstd, self.w)

    def time_forward(self, shape, dtype):
        lnnumba.layer_norm(self.x, self.w, self.b, out=self.y)

    def time_forward_in_place(self, shape, dtype):
        lnnumba.layer_norm(self.z, self.w, self.b, out=self.z)

    def time_forward_new_output(self, shape, dtype):
        # without out=: the serving call, whose Python side dominates at batch 1
        lnnumba.layer_norm(self.x, self.w, self.b)

    def time_forward_with_stats(self, shape, dtype):
        lnnumba.layer_norm_forward(self.x, self.w, self.b)

    def time_backward(self, shape, dtype):
        lnnumba.layer_norm_backward(self.dy, self.x, self.mean, self.rstd, self.w)

    def time_backward_dy_elsewhere(self, shape, dtype):
        lnnumba.layer_norm_backward(self.dy48, self.x, self.mean, self.rstd, self.w)

    def track_forward_GBps(self, shape, dtype):
        t = best_seconds(lambda: lnnumba.layer_norm(self.x, self.w, self.b, out=self.y))
        return 2 * self.x.nbytes / t / 1e9

    track_forward_GBps.unit = "GB/s"

    def track_forward_fraction_of_copy(self, shape, dtype):
        t = best_seconds(lambda: lnnumba.layer_norm(self.x, self.w, self.b, out=self.y))
        return best_seconds(lambda: copy_parallel(self.y, self.x)) / t

    track_forward_fraction_of_copy.unit = "fraction"

    def track_backward_fraction_of_copy(self, shape, dtype):
        t = best_seconds(
            lambda: lnnumba.layer_norm_backward(self.dy, self.x, self.mean, self.rstd, self.w)
        )
        return 1.5 * best_seconds(lambda: copy_parallel(self.y, self.x)) / t

    track_backward_fraction_of_copy.unit = "fraction"


class RMSNorm:
    params = (SHAPES, DTYPES)
    param_names = ["shape", "dtype"]
    timeout = 120

    def setup(self, shape, dtype):
        self.x, self.dy, self.w, _ = _setup(shape, dtype)
        self.y = np.empty_like(self.x)
        _, self.rstd = lnnumba.rms_norm_forward(self.x, self.w)
        lnnumba.rms_norm_backward(self.dy, self.x, self.rstd, self.w)
        lnnumba.rms_norm(self.x, self.w, out=self.y)

    def time_forward(self, shape, dtype):
        lnnumba.rms_norm(self.x, self.w, out=self.y)

    def time_backward(self, shape, dtype):
        lnnumba.rms_norm_backward(self.dy, self.x, self.rstd, self.w)


class LayerStackStep:
    """A training step's pattern: k layer norms forward, each output the next input, then
    backward through all of them, outputs allocated per call (float32). Several large outputs
    alive at once and freed together: what ``lnnumba._memory``'s pool is for (without it,
    thousands of page faults a step)."""

    params = (["512x1024x6", "2048x1024x4", "4096x1024x2"],)
    param_names = ["shape_x_layers"]
    timeout = 120

    def setup(self, shape_x_layers):
        M, N, k = map(int, shape_x_layers.split("x"))
        self.x, self.w, self.k = data((M, N), "float32"), data(N, "float32", 2), k
        self.step()

    def step(self):
        h, saved = self.x, []
        for _ in range(self.k):
            y, mean, rstd = lnnumba.layer_norm_forward(h, self.w)
            saved.append((h, mean, rstd))
            h = y
        g = h
        for hk, mean, rstd in reversed(saved):
            g = lnnumba.layer_norm_backward(g, hk, mean, rstd, self.w)[0]

    def time_step(self, shape_x_layers):
        self.step()
