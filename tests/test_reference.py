"""The float64 reference itself against finite differences: the spec must be right first."""

import numpy as np
import pytest

from lnnumba import reference as R


def numeric_grad(f, a, eps=1e-6):
    g = np.zeros_like(a)
    it = np.nditer(a, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = a[i]
        a[i] = old + eps
        fp = f()
        a[i] = old - eps
        fm = f()
        a[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


@pytest.mark.parametrize("shape,axis", [((3, 5), -1), ((2, 3, 4), 1), ((4, 3), 0)])
def test_layer_norm_reference_backward_matches_finite_differences(rng, shape, axis):
    x = rng.standard_normal(shape)
    w = rng.standard_normal(shape[axis:])
    b = rng.standard_normal(shape[axis:])
    g = rng.standard_normal(shape)  # loss = sum(y * g)

    def loss():
        return np.sum(R.layer_norm_forward(x, w, b, 1e-5, axis)[0] * g)

    _, mean, rstd = R.layer_norm_forward(x, w, b, 1e-5, axis)
    dx, dw, db = R.layer_norm_backward(g, x, mean, rstd, w, axis)
    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw, numeric_grad(loss, w), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(db, numeric_grad(loss, b), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape,axis", [((3, 5), -1), ((2, 3, 4), 1)])
def test_rms_norm_reference_backward_matches_finite_differences(rng, shape, axis):
    x = rng.standard_normal(shape)
    w = rng.standard_normal(shape[axis:])
    g = rng.standard_normal(shape)

    def loss():
        return np.sum(R.rms_norm_forward(x, w, 1e-6, axis)[0] * g)

    _, rstd = R.rms_norm_forward(x, w, 1e-6, axis)
    dx, dw = R.rms_norm_backward(g, x, rstd, w, axis)
    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw, numeric_grad(loss, w), rtol=1e-6, atol=1e-7)


def test_reference_normalizes(rng):
    x = rng.standard_normal((4, 7)) * 3 + 2
    y, mean, rstd = R.layer_norm_forward(x, eps=0.0)
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(-1), 1, rtol=1e-12)
    y, rstd = R.rms_norm_forward(x, eps=0.0)
    np.testing.assert_allclose((y * y).mean(-1), 1, rtol=1e-12)
