"""Stacked and bidirectional networks: against PyTorch, finite differences, step, lengths."""

import numpy as np
import pytest
from _helpers import fd_check

import lnnumba as L


def load_torch_weights(net, mod):
    sd = {k: v.detach().numpy().astype(np.float64) for k, v in mod.state_dict().items()}
    for layer in range(net.num_layers):
        for d in range(net.D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            p = net.layers[layer][d].params
            p["Wx"][...] = sd["weight_ih" + sfx].T
            p["Wh"][...] = sd["weight_hh" + sfx].T
            if net.cell == "gru":
                p["bx"][...] = sd["bias_ih" + sfx]
                p["bh"][...] = sd["bias_hh" + sfx]
            else:
                p["b"][...] = sd["bias_ih" + sfx] + sd["bias_hh" + sfx]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_matches_pytorch(cell, bidirectional, rng):
    torch = pytest.importorskip("torch")
    I, H, T, B, layers = 3, 4, 5, 3, 2
    mod = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(
        I, H, num_layers=layers, bidirectional=bidirectional
    ).double()
    net = L.Stacked(
        cell,
        I,
        H,
        num_layers=layers,
        bidirectional=bidirectional,
        layer_norm=False,
        dtype=np.float64,
    )
    load_torch_weights(net, mod)
    x = rng.standard_normal((T, B, I))
    D = 2 if bidirectional else 1
    h0 = rng.standard_normal((layers * D, B, H))
    c0 = rng.standard_normal((layers * D, B, H))
    if cell == "lstm":
        out, (hT, cT) = mod(torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(c0)))
        hs, last, _ = net.forward(x, (h0, c0))
        np.testing.assert_allclose(last[1], cT.detach().numpy(), atol=1e-12)
    else:
        out, hT = mod(torch.from_numpy(x), torch.from_numpy(h0))
        hs, last, _ = net.forward(x, (h0,))
    np.testing.assert_allclose(hs, out.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(last[0], hT.detach().numpy(), atol=1e-12)
    # variable lengths, as PyTorch's packed sequences
    lengths = np.array([5, 2, 4])
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        torch.from_numpy(x), torch.tensor(lengths), enforce_sorted=False
    )
    st = (torch.from_numpy(h0), torch.from_numpy(c0)) if cell == "lstm" else torch.from_numpy(h0)
    out_p, _ = mod(packed, st)
    out_p, _ = torch.nn.utils.rnn.pad_packed_sequence(out_p, total_length=T)
    hs, _, _ = net.forward(x, (h0, c0) if cell == "lstm" else (h0,), lengths)
    np.testing.assert_allclose(hs, out_p.detach().numpy(), atol=1e-12)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("ln", [True, False])
def test_backward_finite_differences(cell, ln, rng):
    net = L.Stacked(
        cell, 2, 3, num_layers=2, bidirectional=True, layer_norm=ln, dtype=np.float64, seed=0
    )
    x = rng.standard_normal((4, 2, 2))
    lengths = np.array([4, 3])
    G = rng.standard_normal((4, 2, 6))
    n = net.n_state
    st = tuple(rng.standard_normal((4, 2, 3)) for _ in range(n))
    Gl = tuple(rng.standard_normal((4, 2, 3)) for _ in range(n))

    def loss():
        hs, last, _ = net.forward(x, st, lengths)
        return np.sum(hs * G) + sum(np.sum(a * g) for a, g in zip(last, Gl))

    _, _, cache = net.forward(x, st, lengths)
    dx, grads, dst = net.backward(G, cache, Gl)
    assert set(grads) == set(net.params)
    some = ["l0.fwd.Wx", "l1.bwd.Wh", "l1.fwd.Wx"]
    fd_check(loss, [(x, dx)] + [(net.params[k], grads[k]) for k in some] + list(zip(st, dst)))


def test_step_equals_forward_and_bidirectional_step_refused(rng):
    net = L.Stacked("lstm", 3, 4, num_layers=3, dtype=np.float64, seed=0)
    x = rng.standard_normal((5, 2, 3))
    hs, last, _ = net.forward(x)
    s = None
    for t in range(5):
        s = net.step(x[t], s)
        np.testing.assert_allclose(s[0][-1], hs[t], atol=1e-12)
    for a, b in zip(s, last):
        np.testing.assert_allclose(a, b, atol=1e-12)
    with pytest.raises(ValueError, match="no step-by-step form"):
        L.Stacked("gru", 3, 4, bidirectional=True).step(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="cell must be one of"):
        L.Stacked("transformer", 3, 4)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_predict_equals_forward(cell, bidirectional, rng):
    net = L.Stacked(cell, 3, 4, num_layers=2, bidirectional=bidirectional, dtype=np.float64, seed=0)
    T, B = 6, 3
    x = rng.standard_normal((T, B, 3))
    st = tuple(rng.standard_normal((2 * net.D, B, 4)) for _ in range(net.n_state))
    for lengths in (None, np.array([6, 2, 0])):
        hs, last, _ = net.forward(x, st, lengths)
        hp, lp = net.predict(x, st, lengths)
        assert hp.shape == hs.shape == (T, B, 4 * net.D)
        np.testing.assert_allclose(hp, hs, rtol=1e-12, atol=1e-12)
        for a, b in zip(lp, last):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("what", ["forward", "predict"])
def test_bad_lengths_are_reported_by_the_network(bidirectional, what):
    net = L.Stacked("gru", 3, 4, bidirectional=bidirectional)
    run = getattr(net, what)
    x = np.zeros((3, 2, 3), np.float32)
    with pytest.raises(ValueError, match=rf"Stacked\.{what}: lengths must lie in \[0, T=3\]"):
        run(x, lengths=np.array([5, 1]))
    with pytest.raises(ValueError, match=rf"Stacked\.{what}: lengths has shape"):
        run(x, lengths=np.array([1, 1, 1]))
    with pytest.raises(TypeError, match=rf"Stacked\.{what}: lengths must be integers"):
        run(x, lengths=np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match=rf"Stacked\.{what}: x has 2 dimensions"):
        run(x[0])
