"""Linear, Embedding and BatchNorm layers with params/forward/backward, in the style of the
cells and LayerNorm: ``params`` is a dict of arrays that optimizers update in place,
``forward(x) -> (y, cache)``, ``backward(dy, cache) -> (dx, grads)`` with grads keyed like params.
"""

from typing import NamedTuple

import numpy as np

from .. import _args
from ..cpu.norm import note_blas
from ..norm import layer_norm_backward, layer_norm_forward


class LayerCache(NamedTuple):
    """What a layer's backward needs: the layer that made it and the arrays it saved."""

    owner: object
    saved: tuple


class _Layer:
    _name = ""

    def _check_cache(self, cache):
        if not isinstance(cache, LayerCache) or cache.owner is not self:
            raise ValueError(
                f"{self._name}.backward: cache does not come from this layer's forward(); pass "
                "the cache that forward() returned"
            )
        return cache.saved

    def _check_float(self, fn, name, a, last):
        a = _args.as_array(fn, name, a)
        if a.ndim < 1 or a.shape[-1] != last:
            raise ValueError(f"{fn}: {name} has shape {a.shape}, expected (..., {last})")
        if a.dtype != self.dtype:
            raise TypeError(f"{fn}: {name} has dtype {a.dtype}, expected {self.dtype}")
        return a


class Linear(_Layer):
    """y = x W + b. ``Linear(in_features, out_features, *, dtype=np.float32, seed=None)``.

    params: W (in, out) and b (out,), both uniform(-1/sqrt(in), 1/sqrt(in)) as in PyTorch.
    forward(x): x (..., in) -> y (..., out); backward(dy, cache) -> (dx, {"W", "b"}).
    """

    _name = "Linear"

    def __init__(self, in_features, out_features, *, dtype=np.float32, seed=None):
        self.in_features = _args.positive_int(self._name, "in_features", in_features)
        self.out_features = _args.positive_int(self._name, "out_features", out_features)
        self.dtype = _args.float_dtype(self._name, dtype)
        rng = _args.rng(self._name, seed)
        k = 1.0 / np.sqrt(self.in_features)
        self.params = {
            "W": rng.uniform(-k, k, (self.in_features, self.out_features)).astype(self.dtype),
            "b": rng.uniform(-k, k, self.out_features).astype(self.dtype),
        }

    def forward(self, x):
        x = self._check_float("Linear.forward", "x", x, self.in_features)
        y = x @ self.params["W"] + self.params["b"]
        note_blas(x.size // self.in_features, self.out_features, self.in_features)
        return y, LayerCache(self, (x,))

    def backward(self, dy, cache):
        (x,) = self._check_cache(cache)
        dy = self._check_float("Linear.backward", "dy", dy, self.out_features)
        if dy.shape[:-1] != x.shape[:-1]:
            want = x.shape[:-1] + (self.out_features,)
            raise ValueError(f"Linear.backward: dy has shape {dy.shape}, expected {want}")
        x2 = x.reshape(-1, self.in_features)
        dy2 = dy.reshape(-1, self.out_features)
        grads = {"W": x2.T @ dy2, "b": dy2.sum(axis=0)}
        dx = dy @ self.params["W"].T
        note_blas(x2.shape[0], self.in_features, self.out_features)
        return dx, grads


class Embedding(_Layer):
    """Rows of W picked by integer ids. ``Embedding(num_embeddings, dim, *, dtype, seed)``.

    params: W (num_embeddings, dim), standard normal as in PyTorch. forward(ids): ids of any
    shape, integers in [0, num_embeddings) -> y (*ids.shape, dim). backward(dy, cache) returns
    (None, {"W": dW}): ids have no gradient.
    """

    _name = "Embedding"

    def __init__(self, num_embeddings, dim, *, dtype=np.float32, seed=None):
        self.num_embeddings = _args.positive_int(self._name, "num_embeddings", num_embeddings)
        self.dim = _args.positive_int(self._name, "dim", dim)
        self.dtype = _args.float_dtype(self._name, dtype)
        rng = _args.rng(self._name, seed)
        self.params = {"W": rng.standard_normal((self.num_embeddings, self.dim)).astype(self.dtype)}

    def forward(self, ids):
        fn = "Embedding.forward"
        ids = _args.as_array(fn, "ids", ids) if not isinstance(ids, np.ndarray) else ids
        if ids.dtype.kind not in "iu":
            raise TypeError(f"{fn}: ids must be integers, got dtype {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_embeddings):
            raise ValueError(
                f"{fn}: ids must lie in [0, {self.num_embeddings}), got {ids.min()}..{ids.max()}"
            )
        return self.params["W"][ids], LayerCache(self, (ids.copy(),))

    def backward(self, dy, cache):
        (ids,) = self._check_cache(cache)
        dy = self._check_float("Embedding.backward", "dy", dy, self.dim)
        if dy.shape != ids.shape + (self.dim,):
            raise ValueError(
                f"Embedding.backward: dy has shape {dy.shape}, expected {ids.shape + (self.dim,)}"
            )
        dW = np.zeros_like(self.params["W"])
        np.add.at(dW, ids.reshape(-1), dy.reshape(-1, self.dim))
        return None, {"W": dW}


class BatchNorm(_Layer):
    """Batch normalization over the batch (the paper's comparison). ``BatchNorm(num_features, *,
    eps=1e-5, momentum=0.1, dtype=np.float32)``; x is (N, C).

    In training mode (the default) it normalizes with the batch's statistics and updates
    ``buffers["running_mean"]`` / ``buffers["running_var"]`` (unbiased variance, as PyTorch);
    after ``eval()`` it uses the running ones; ``train()`` switches back. params: weight (C,),
    bias (C,). The statistics per feature are a layer norm of x.T, so the training pass runs on
    the library's layer-norm kernels.
    """

    _name = "BatchNorm"

    def __init__(self, num_features, *, eps=1e-5, momentum=0.1, dtype=np.float32):
        self.num_features = _args.positive_int(self._name, "num_features", num_features)
        self.eps = _args.check_eps(self._name, eps)
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"BatchNorm: momentum must lie in [0, 1], got {momentum}")
        self.momentum = float(momentum)
        self.dtype = _args.float_dtype(self._name, dtype)
        C = self.num_features
        self.params = {"weight": np.ones(C, self.dtype), "bias": np.zeros(C, self.dtype)}
        self.buffers = {
            "running_mean": np.zeros(C, self.dtype),
            "running_var": np.ones(C, self.dtype),
        }
        self.training = True

    def train(self):
        self.training = True
        return self

    def eval(self):
        self.training = False
        return self

    def forward(self, x):
        fn = "BatchNorm.forward"
        x = self._check_float(fn, "x", x, self.num_features)
        if x.ndim != 2:
            raise ValueError(f"{fn}: x has shape {x.shape}, expected (N, {self.num_features})")
        w, b = self.params["weight"], self.params["bias"]
        if not self.training:
            rstd = (1.0 / np.sqrt(self.buffers["running_var"] + self.eps)).astype(self.dtype)
            xhat = (x - self.buffers["running_mean"]) * rstd
            return xhat * w + b, LayerCache(self, (False, x, rstd, None))
        N = x.shape[0]
        if N < 2:
            raise ValueError(f"{fn}: training mode needs a batch of at least 2 examples, got {N}")
        xt = np.ascontiguousarray(x.T)  # (C, N): each feature's batch as one row
        xhat_t, mean, rstd = layer_norm_forward(xt, eps=self.eps)
        m = self.momentum
        var = 1.0 / rstd[:, 0].astype(np.float64) ** 2 - self.eps
        rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
        rm[...] = (1 - m) * rm + m * mean[:, 0]
        rv[...] = (1 - m) * rv + m * var * N / (N - 1)
        xhat = xhat_t.T
        return xhat * w + b, LayerCache(self, (True, xt, mean, rstd))

    def backward(self, dy, cache):
        training, x, a, rstd = self._check_cache(cache)
        dy = self._check_float("BatchNorm.backward", "dy", dy, self.num_features)
        w = self.params["weight"]
        if not training:  # x: (N, C), a: rstd (C,)
            xhat = (x - self.buffers["running_mean"]) * a
            return dy * (w * a), {"weight": (dy * xhat).sum(0), "bias": dy.sum(0)}
        if dy.shape != x.T.shape:
            raise ValueError(f"BatchNorm.backward: dy has shape {dy.shape}, expected {x.T.shape}")
        gy_t = np.ascontiguousarray((dy * w).T)
        dx_t, _, _ = layer_norm_backward(gy_t, x, a, rstd)
        xhat = (x - a) * rstd  # (C, N)
        return dx_t.T, {"weight": (dy.T * xhat).sum(1), "bias": dy.sum(0)}
