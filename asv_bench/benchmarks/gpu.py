"""CUDA layer norm, synchronized before the clock stops; skipped where no GPU is present."""

import numpy as np

import lnnumba


def _cuda():
    try:
        from numba import cuda
    except ImportError:
        raise NotImplementedError("numba-cuda is not installed") from None
    try:
        if not cuda.is_available() or cuda.simulator_is_active():
            raise NotImplementedError("no CUDA GPU")
    except Exception as e:
        raise NotImplementedError(f"no CUDA GPU ({e})") from None
    return cuda


class GPULayerNorm:
    params = ["16384x4096", "65536x1024"]
    param_names = ["shape"]
    timeout = 120

    def setup(self, shape):
        self.cuda = _cuda()
        M, N = map(int, shape.split("x"))
        rng = np.random.default_rng(0)
        self.x = self.cuda.to_device(rng.standard_normal((M, N), dtype=np.float32))
        self.dy = self.cuda.to_device(rng.standard_normal((M, N), dtype=np.float32))
        self.w = self.cuda.to_device(np.ones(N, np.float32))
        self.out = self.cuda.device_array((M, N), np.float32)
        _, self.m, self.r = lnnumba.layer_norm_forward(self.x, self.w)
        lnnumba.layer_norm_backward(self.dy, self.x, self.m, self.r, self.w)
        self.cuda.synchronize()

    def time_forward(self, shape):
        lnnumba.layer_norm(self.x, self.w, out=self.out)
        self.cuda.synchronize()

    def time_backward(self, shape):
        lnnumba.layer_norm_backward(self.dy, self.x, self.m, self.r, self.w)
        self.cuda.synchronize()
