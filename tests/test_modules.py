"""LayerNorm / RMSNorm modules: params, forward/backward, in-place parameter updates."""

import numpy as np
import pytest

import lnnumba as L
from lnnumba import reference as R


def test_layer_norm_module_forward_backward(rng):
    ln = L.LayerNorm((3, 4), dtype=np.float64)
    assert set(ln.params) == {"weight", "bias"}
    np.testing.assert_array_equal(ln.params["weight"], 1)
    np.testing.assert_array_equal(ln.params["bias"], 0)
    ln.params["weight"][...] = rng.standard_normal((3, 4))  # updated in place, as optimizers do
    ln.params["bias"] += 0.5
    x = rng.standard_normal((2, 5, 3, 4))
    y, cache = ln.forward(x)
    yr, m, r = R.layer_norm_forward(x, ln.params["weight"], ln.params["bias"], 1e-5, 2)
    np.testing.assert_allclose(y, yr, rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(x.shape)
    dx, grads = ln.backward(dy, cache)
    dxr, dwr, dbr = R.layer_norm_backward(dy, x, m, r, ln.params["weight"], 2)
    np.testing.assert_allclose(dx, dxr, rtol=1e-10, atol=1e-12)
    assert set(grads) == {"weight", "bias"}
    np.testing.assert_allclose(grads["weight"], dwr, rtol=1e-10)
    np.testing.assert_allclose(grads["bias"], dbr, rtol=1e-10)


def test_layer_norm_module_variants(rng):
    x = rng.standard_normal((4, 6)).astype(np.float32)
    assert L.LayerNorm(6, elementwise_affine=False).params == {}
    nb = L.LayerNorm(6, bias=False)
    assert set(nb.params) == {"weight"}
    y, cache = nb.forward(x)
    dx, grads = nb.backward(np.ones_like(x), cache)
    assert set(grads) == {"weight"} and dx.shape == x.shape


def test_rms_norm_module(rng):
    rn = L.RMSNorm(6)
    assert set(rn.params) == {"weight"} and rn.params["weight"].dtype == np.float32
    x = rng.standard_normal((4, 6)).astype(np.float32)
    y, cache = rn.forward(x)
    np.testing.assert_allclose(y, R.rms_norm_forward(x, eps=1e-6)[0], rtol=1e-5, atol=1e-6)
    dx, grads = rn.backward(np.ones_like(x), cache)
    assert set(grads) == {"weight"}
    plain = L.RMSNorm(6, elementwise_affine=False)
    dx, grads = plain.backward(np.ones_like(x), plain.forward(x)[1])
    assert grads == {} and dx.shape == x.shape


def test_module_errors(rng):
    with pytest.raises(TypeError, match="normalized_shape"):
        L.LayerNorm("abc")
    with pytest.raises(ValueError, match="normalized_shape"):
        L.LayerNorm((3, 0))
    with pytest.raises(TypeError, match="dtype"):
        L.LayerNorm(3, dtype=np.int32)
    with pytest.raises(ValueError, match="eps"):
        L.RMSNorm(3, eps=-1.0)
    ln = L.LayerNorm(4)
    with pytest.raises(ValueError, match="trailing dimensions"):
        ln.forward(np.ones((2, 5), np.float32))
    with pytest.raises(TypeError, match="dtype float64, expected float32"):
        ln.forward(np.ones((2, 4)))
    _, cache = L.LayerNorm(4).forward(np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="cache does not come from this module"):
        ln.backward(np.ones((2, 4), np.float32), cache)
    with pytest.raises(ValueError, match="cache"):
        ln.backward(np.ones((2, 4), np.float32), (1, 2, 3))
