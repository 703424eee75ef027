"""Stateful layer norm and RMSNorm: parameters plus forward/backward, for models and training.

Each holds ``params``, a dict of arrays that optimizers update in place (the module always uses
their current values), and offers ``forward(x) -> (y, cache)`` and
``backward(dy, cache) -> (dx, grads)`` with ``grads`` keyed like ``params``.
"""

from typing import NamedTuple

import numpy as np

from .. import _args
from ..norm import layer_norm_backward, layer_norm_forward, rms_norm_backward, rms_norm_forward


def _normalized_shape(cls, normalized_shape):
    if isinstance(normalized_shape, (int, np.integer)) and not isinstance(normalized_shape, bool):
        normalized_shape = (normalized_shape,)
    try:
        dims = tuple(normalized_shape)
    except TypeError:
        dims = None
    if dims is None or not all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in dims
    ):
        raise TypeError(
            f"{cls}: normalized_shape must be an int or a tuple of ints, got {normalized_shape!r}"
        )
    shape = tuple(int(s) for s in dims)
    if not shape or min(shape) < 1:
        raise ValueError(
            f"{cls}: normalized_shape must be non-empty with every dimension >= 1, got {shape}"
        )
    return shape


class LayerNormCache(NamedTuple):
    """What ``LayerNorm.backward`` needs from the forward pass.

    x: (*B, *S); mean, rstd: B + (1,) * len(S)."""

    owner: object
    x: np.ndarray
    mean: np.ndarray
    rstd: np.ndarray


class RMSNormCache(NamedTuple):
    """What ``RMSNorm.backward`` needs from the forward pass. x: (*B, *S); rstd: B + (1,)*k."""

    owner: object
    x: np.ndarray
    rstd: np.ndarray


class _Norm:
    def _check_x(self, x):
        x = _args.as_array(self._name, "x", x)
        k = len(self.normalized_shape)
        if x.ndim < k or x.shape[x.ndim - k :] != self.normalized_shape:
            raise ValueError(
                f"{self._name}: x has shape {x.shape}, expected trailing dimensions "
                f"{self.normalized_shape} (the normalized_shape)"
            )
        if x.dtype != self.dtype:
            raise TypeError(f"{self._name}: x has dtype {x.dtype}, expected {self.dtype}")
        return x

    def _check_cache(self, cache, kind):
        if not isinstance(cache, kind) or cache.owner is not self:
            raise ValueError(
                f"{self._name}.backward: cache does not come from this module's forward(); pass "
                "the cache that forward() returned"
            )

    def __repr__(self):
        return (
            f"{self._name}({self.normalized_shape}, eps={self.eps}, "
            f"params={sorted(self.params)}, dtype={self.dtype})"
        )


class LayerNorm(_Norm):
    """Layer normalization over the trailing ``normalized_shape`` dimensions.

    Parameters
    ----------
    normalized_shape : int or tuple of ints, the trailing shape S that is normalized
    eps : float >= 0
    elementwise_affine : bool, whether to learn ``weight`` (init 1) and ``bias`` (init 0)
    bias : bool, whether to learn ``bias`` (only with ``elementwise_affine``)
    dtype : float16, float32 (default) or float64; inputs must have this dtype

    ``params`` holds ``"weight"`` and ``"bias"`` of shape S where present. ``forward(x)`` with x
    of shape (*B, *S) returns ``(y, cache)``; ``backward(dy, cache)`` returns ``(dx, grads)``
    with ``grads`` keyed like ``params``. Raises TypeError/ValueError for bad arguments and for
    inputs whose shape or dtype does not match the module.
    """

    _name = "LayerNorm"

    def __init__(
        self, normalized_shape, *, eps=1e-5, elementwise_affine=True, bias=True, dtype=np.float32
    ):
        self.normalized_shape = _normalized_shape(self._name, normalized_shape)
        self.eps = _args.check_eps(self._name, eps)
        self.dtype = _args.float_dtype(self._name, dtype, _args.ALL_FLOATS)
        self.params = {}
        if elementwise_affine:
            self.params["weight"] = np.ones(self.normalized_shape, self.dtype)
            if bias:
                self.params["bias"] = np.zeros(self.normalized_shape, self.dtype)

    def forward(self, x):
        """y = LN(x); returns (y, cache). x: (*B, *S) of the module's dtype."""
        x = self._check_x(x)
        axis = x.ndim - len(self.normalized_shape)
        y, mean, rstd = layer_norm_forward(
            x, self.params.get("weight"), self.params.get("bias"), eps=self.eps, axis=axis
        )
        return y, LayerNormCache(self, x, mean, rstd)

    def backward(self, dy, cache):
        """Returns (dx, grads): dx like x, grads keyed like ``params``."""
        self._check_cache(cache, LayerNormCache)
        axis = cache.x.ndim - len(self.normalized_shape)
        dx, dw, db = layer_norm_backward(
            dy, cache.x, cache.mean, cache.rstd, self.params.get("weight"), axis=axis
        )
        grads = {}
        if "weight" in self.params:
            grads["weight"] = dw
        if "bias" in self.params:
            grads["bias"] = db
        return dx, grads


class RMSNorm(_Norm):
    """RMS normalization over the trailing ``normalized_shape`` dimensions.

    As ``LayerNorm`` without centering and without a bias: ``params`` holds ``"weight"`` (init 1)
    when ``elementwise_affine``.
    """

    _name = "RMSNorm"

    def __init__(self, normalized_shape, *, eps=1e-6, elementwise_affine=True, dtype=np.float32):
        self.normalized_shape = _normalized_shape(self._name, normalized_shape)
        self.eps = _args.check_eps(self._name, eps)
        self.dtype = _args.float_dtype(self._name, dtype, _args.ALL_FLOATS)
        self.params = {}
        if elementwise_affine:
            self.params["weight"] = np.ones(self.normalized_shape, self.dtype)

    def forward(self, x):
        """y = RMSNorm(x); returns (y, cache). x: (*B, *S) of the module's dtype."""
        x = self._check_x(x)
        axis = x.ndim - len(self.normalized_shape)
        y, rstd = rms_norm_forward(x, self.params.get("weight"), eps=self.eps, axis=axis)
        return y, RMSNormCache(self, x, rstd)

    def backward(self, dy, cache):
        """Returns (dx, grads): dx like x, grads keyed like ``params``."""
        self._check_cache(cache, RMSNormCache)
        axis = cache.x.ndim - len(self.normalized_shape)
        dx, dw = rms_norm_backward(dy, cache.x, cache.rstd, self.params.get("weight"), axis=axis)
        return dx, ({"weight": dw} if "weight" in self.params else {})
