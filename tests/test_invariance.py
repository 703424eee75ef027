"""The layer-norm row of the paper's invariance table (PAPER.md §2), as properties of
LN(x W) for the summed inputs a = x W of a layer."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import lnnumba as L


def ln_of_layer(x, W):
    return L.layer_norm(x @ W, eps=0.0)


@st.composite
def layer(draw):
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    B, I, H = draw(st.integers(1, 5)), draw(st.integers(2, 6)), draw(st.integers(3, 8))
    return rng, rng.standard_normal((B, I)), rng.standard_normal((I, H))


CLOSE = dict(rtol=1e-9, atol=1e-9)
s_values = st.floats(0.1, 10.0)


@settings(max_examples=40, deadline=None)
@given(layer(), s_values)
def test_invariant_to_weight_matrix_rescaling(case, s):
    rng, x, W = case
    np.testing.assert_allclose(ln_of_layer(x, s * W), ln_of_layer(x, W), **CLOSE)


@settings(max_examples=40, deadline=None)
@given(layer())
def test_invariant_to_weight_matrix_recentering(case):
    rng, x, W = case
    v = rng.standard_normal((W.shape[0], 1))  # the same vector added to every unit's weights
    np.testing.assert_allclose(ln_of_layer(x, W + v), ln_of_layer(x, W), **CLOSE)


@settings(max_examples=40, deadline=None)
@given(layer(), s_values)
def test_invariant_to_dataset_rescaling(case, s):
    rng, x, W = case
    np.testing.assert_allclose(ln_of_layer(s * x, W), ln_of_layer(x, W), **CLOSE)


@settings(max_examples=40, deadline=None)
@given(layer())
def test_invariant_to_single_training_case_rescaling(case):
    rng, x, W = case
    s = rng.uniform(0.1, 10.0, (x.shape[0], 1))  # one scale per example
    np.testing.assert_allclose(ln_of_layer(s * x, W), ln_of_layer(x, W), **CLOSE)


def test_not_invariant_to_weight_vector_rescaling(rng):
    x, W = rng.standard_normal((4, 5)), rng.standard_normal((5, 6))
    W2 = W.copy()
    W2[:, 2] *= 3.0  # one unit's incoming weights
    assert not np.allclose(ln_of_layer(x, W2), ln_of_layer(x, W), atol=1e-3)


def test_not_invariant_to_dataset_recentering(rng):
    x, W = rng.standard_normal((4, 5)), rng.standard_normal((5, 6))
    v = rng.standard_normal(5)  # the same vector added to every example
    assert not np.allclose(ln_of_layer(x + v, W), ln_of_layer(x, W), atol=1e-3)


def test_statistics_are_per_example_not_per_batch(rng):
    x = rng.standard_normal((6, 10))
    alone = np.concatenate([L.layer_norm(x[i : i + 1]) for i in range(6)])
    np.testing.assert_array_equal(L.layer_norm(x), alone)
