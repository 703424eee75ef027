"""Every bad input gets a ValueError or TypeError that says what was wrong and what was expected,
and nothing is written when a call fails."""

import numpy as np
import pytest

import lnnumba as L

x = np.ones((2, 3), np.float32)
w3 = np.ones(3, np.float32)


def fwd_stats():
    return L.layer_norm_forward(np.arange(6, dtype=np.float32).reshape(2, 3))


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (
            lambda: L.layer_norm(x, np.ones(4, np.float32)),
            ValueError,
            r"weight has shape \(4,\), expected \(3,\)",
        ),
        (lambda: L.layer_norm(x, w3, np.ones((1, 3), np.float32)), ValueError, "bias has shape"),
        (
            lambda: L.layer_norm(x, np.ones(3)),
            TypeError,
            "weight has dtype float64, expected float32",
        ),
        (lambda: L.layer_norm(x, None, np.ones(3, np.int64)), TypeError, "bias has dtype int64"),
        (lambda: L.layer_norm(x, axis=2), ValueError, r"axis 2 is out of range .* -2 <= axis < 2"),
        (lambda: L.layer_norm(x, axis=-3), ValueError, "out of range"),
        (lambda: L.layer_norm(x, axis=1.0), TypeError, "axis must be an int"),
        (lambda: L.layer_norm(x, axis=True), TypeError, "axis must be an int"),
        (lambda: L.layer_norm(x, axis=np.array([-1, -1])), TypeError, "axis must be an int"),
        (lambda: L.layer_norm(x, eps=-1e-5), ValueError, "eps must be finite and >= 0"),
        (lambda: L.layer_norm(x, eps=float("nan")), ValueError, "eps must be finite"),
        (lambda: L.layer_norm(x, eps=float("inf")), ValueError, "eps must be finite"),
        (lambda: L.layer_norm(x, eps="0.1"), TypeError, "eps must be a real number"),
        (lambda: L.layer_norm(x, eps=1j), TypeError, "eps must be a real number"),
        (lambda: L.layer_norm(x, eps=np.ones(2)), TypeError, "eps must be a real number"),
        (lambda: L.rms_norm(x, eps=np.ones(2)), TypeError, "eps must be a real number"),
        (lambda: L.layer_norm(np.ones((2, 0))), ValueError, "contain a zero"),
        (lambda: L.layer_norm(np.ones((2, 0, 3)), axis=1), ValueError, "contain a zero"),
        (
            lambda: L.layer_norm(np.ones(3, np.complex64)),
            TypeError,
            "complex64, which is not supported",
        ),
        (lambda: L.layer_norm(np.array([1, "a"], dtype=object)), TypeError, "object"),
        (lambda: L.layer_norm(np.array(["a", "b"])), TypeError, "not supported"),
        (lambda: L.layer_norm("abc"), TypeError, "must be a NumPy array of floats"),
        (
            lambda: L.layer_norm(np.ma.array(x, mask=[[0, 1, 0], [0, 0, 0]])),
            TypeError,
            "x is a masked array with masked elements",
        ),
        (
            lambda: L.layer_norm(x, np.ma.array(w3, mask=[1, 0, 0])),
            TypeError,
            "weight is a masked array",
        ),
        (lambda: L.LayerNorm(3).forward(np.ma.masked_invalid([[1, np.nan, 2]])), TypeError, "mask"),
        (lambda: L.layer_norm(np.ones(3, ">c8")), TypeError, ">c8, which is not supported"),
        (lambda: L.layer_norm(x, out=np.empty((2, 3), ">f8")), TypeError, "out has dtype >f8"),
        (lambda: L.layer_norm(np.float32(3.0)), ValueError, "0-d"),
        (lambda: L.layer_norm(np.array(3.0)), ValueError, "0-d"),
        (lambda: L.layer_norm(x, out=np.empty((3, 2), np.float32)), ValueError, "out has shape"),
        (lambda: L.layer_norm(x, out=np.empty((2, 3))), TypeError, "out has dtype float64"),
        (lambda: L.layer_norm(x, out=[0.0] * 6), TypeError, "out must be a numpy.ndarray"),
        (lambda: L.rms_norm(x, np.ones(2, np.float32)), ValueError, "weight has shape"),
        (lambda: L.rms_norm(x, eps=-1.0), ValueError, "eps"),
        (lambda: L.rms_norm_forward(np.ones(3, np.complex128)), TypeError, "not supported"),
        (
            lambda: L.layer_norm_backward(np.ones((2, 2), np.float32), x, *fwd_stats()[1:]),
            ValueError,
            "dy has shape",
        ),
        (
            lambda: L.layer_norm_backward(np.ones((2, 3)), x, *fwd_stats()[1:]),
            TypeError,
            "dy has dtype float64",
        ),
        (
            lambda: L.layer_norm_backward(x, x, np.ones(2, np.float32), fwd_stats()[2]),
            ValueError,
            r"mean has shape \(2,\), expected \(2, 1\)",
        ),
        (
            lambda: L.layer_norm_backward(x, x, fwd_stats()[1], np.ones((2, 1))),
            TypeError,
            "rstd has dtype float64",
        ),
        (
            lambda: L.layer_norm_backward(x, x, *fwd_stats()[1:], np.ones(2, np.float32)),
            ValueError,
            "weight has shape",
        ),
        (
            lambda: L.rms_norm_backward(x, x, np.ones((3, 1), np.float32)),
            ValueError,
            "rstd has shape",
        ),
        (lambda: L.layer_norm_backward(x, x, *fwd_stats()[1:], axis=5), ValueError, "axis"),
    ],
)
def test_bad_input_raises_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_read_only_out_is_rejected():
    out = np.empty((2, 3), np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        L.layer_norm(x, out=out)


def test_failed_call_writes_nothing():
    out = np.full((2, 3), 7.0, np.float32)
    with pytest.raises(ValueError):
        L.layer_norm(x, np.ones(4, np.float32), out=out)
    with pytest.raises(ValueError):
        L.layer_norm(x, eps=-1.0, out=out)
    np.testing.assert_array_equal(out, 7.0)


def test_gpu_like_objects_are_refused_with_a_hint():
    class FakeDeviceArray:
        __cuda_array_interface__ = {"shape": (2, 3)}

    with pytest.raises(TypeError, match="weight is a GPU array .* but x is a host array"):
        L.layer_norm(np.ones((2, 3)), FakeDeviceArray())
