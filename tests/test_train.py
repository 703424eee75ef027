"""Layers (Linear, Embedding, BatchNorm), the loss, Adam, clipping and checkpoints."""

import os

import numpy as np
import pytest
from _helpers import fd_check

import lnnumba as L


def test_linear_finite_differences(rng):
    lin = L.Linear(4, 3, dtype=np.float64, seed=0)
    x = rng.standard_normal((2, 5, 4))
    G = rng.standard_normal((2, 5, 3))
    y, cache = lin.forward(x)
    np.testing.assert_allclose(y, x @ lin.params["W"] + lin.params["b"])
    dx, grads = lin.backward(G, cache)
    fd_check(
        lambda: np.sum(lin.forward(x)[0] * G),
        [(x, dx), (lin.params["W"], grads["W"]), (lin.params["b"], grads["b"])],
    )


def test_embedding_finite_differences(rng):
    emb = L.Embedding(6, 3, dtype=np.float64, seed=0)
    ids = np.array([[1, 5, 1], [0, 2, 1]])
    y, cache = emb.forward(ids)
    assert y.shape == (2, 3, 3)
    G = rng.standard_normal(y.shape)
    dx, grads = emb.backward(G, cache)
    assert dx is None
    fd_check(lambda: np.sum(emb.forward(ids)[0] * G), [(emb.params["W"], grads["W"])])
    with pytest.raises(ValueError, match="ids must lie in"):
        emb.forward(np.array([6]))
    with pytest.raises(TypeError, match="ids must be integers"):
        emb.forward(np.array([1.0]))


def test_batchnorm_training_and_eval(rng):
    bn = L.BatchNorm(3, dtype=np.float64)
    bn.params["weight"][...] = rng.standard_normal(3)
    bn.params["bias"][...] = rng.standard_normal(3)
    x = rng.standard_normal((6, 3)) * 2 + 1
    y, cache = bn.forward(x)
    xhat = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)
    np.testing.assert_allclose(y, xhat * bn.params["weight"] + bn.params["bias"], atol=1e-12)
    np.testing.assert_allclose(bn.buffers["running_mean"], 0.1 * x.mean(0), atol=1e-12)
    np.testing.assert_allclose(bn.buffers["running_var"], 0.9 + 0.1 * x.var(0, ddof=1), atol=1e-12)
    G = rng.standard_normal(y.shape)
    dx, grads = bn.backward(G, cache)
    rm, rv = bn.buffers["running_mean"].copy(), bn.buffers["running_var"].copy()

    def loss():
        out = np.sum(bn.forward(x)[0] * G)
        bn.buffers["running_mean"][...] = rm
        bn.buffers["running_var"][...] = rv
        return out

    fd_check(
        loss, [(x, dx), (bn.params["weight"], grads["weight"]), (bn.params["bias"], grads["bias"])]
    )
    bn.eval()
    y, cache = bn.forward(x[:1])  # batch of one works in eval mode
    want = (x[:1] - rm) / np.sqrt(rv + 1e-5) * bn.params["weight"] + bn.params["bias"]
    np.testing.assert_allclose(y, want, atol=1e-12)
    dx, grads = bn.backward(G[:1], cache)
    fd_check(lambda: np.sum(bn.forward(x[:1])[0] * G[:1]), [(bn.params["weight"], grads["weight"])])
    with pytest.raises(ValueError, match="at least 2"):
        bn.train().forward(x[:1])


def test_softmax_cross_entropy(rng):
    logits = rng.standard_normal((5, 7))
    t = rng.integers(0, 7, 5)
    loss, d = L.softmax_cross_entropy(logits, t)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert abs(loss - np.mean(-np.log(p[np.arange(5), t]))) < 1e-12
    fd_check(lambda: L.softmax_cross_entropy(logits, t)[0], [(logits, d)])
    big = np.array([[1000.0, 0.0, -1000.0]], np.float32)  # stable for large logits
    loss, d = L.softmax_cross_entropy(big, np.array([0]))
    assert loss == 0.0 and np.isfinite(d).all() and d.dtype == np.float32
    with pytest.raises(ValueError, match="targets must lie in"):
        L.softmax_cross_entropy(logits, np.array([0, 1, 2, 3, 7]))
    with pytest.raises(TypeError, match="targets must be integers"):
        L.softmax_cross_entropy(logits, t.astype(float))
    with pytest.raises(ValueError, match="targets has shape"):
        L.softmax_cross_entropy(logits, t[:3])


def test_adam_matches_pytorch(rng):
    torch = pytest.importorskip("torch")
    p = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(4)}
    tp = [torch.tensor(p["a"], requires_grad=True), torch.tensor(p["b"], requires_grad=True)]
    opt = L.Adam(p, lr=0.01, weight_decay=0.1)
    topt = torch.optim.Adam(tp, lr=0.01, weight_decay=0.1)
    for _ in range(5):
        g = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(4)}
        opt.step(g)
        tp[0].grad, tp[1].grad = torch.tensor(g["a"]), torch.tensor(g["b"])
        topt.step()
    np.testing.assert_allclose(p["a"], tp[0].detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(p["b"], tp[1].detach().numpy(), rtol=1e-12, atol=1e-12)


def test_adam_moves_downhill_and_checks_names():
    p = {"w": np.array([3.0, -2.0])}
    opt = L.Adam(p, lr=0.1)
    for _ in range(200):
        opt.step({"w": 2 * p["w"]})
    assert np.abs(p["w"]).max() < 0.1
    with pytest.raises(ValueError, match="no parameter"):
        opt.step({"x": np.zeros(2)})
    with pytest.raises(ValueError, match="shape"):
        opt.step({"w": np.zeros(3)})


def test_clip_grad_norm():
    g = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}
    total = L.clip_grad_norm(g, 1.0)
    assert total == 5.0
    assert abs(np.sqrt(np.sum(g["a"] ** 2) + np.sum(g["b"] ** 2)) - 1.0) < 1e-6
    g2 = {"a": np.array([0.3, 0.4])}
    assert L.clip_grad_norm(g2, 1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(g2["a"], [0.3, 0.4])  # below the limit: untouched
    with pytest.raises(ValueError, match="max_norm"):
        L.clip_grad_norm(g, 0)


def test_checkpoint_round_trip_and_errors(tmp_path, rng):
    p = {"cell.Wx": rng.standard_normal((3, 4)).astype(np.float32), "head.b": np.zeros(2)}
    opt = L.Adam(p)
    opt.step({k: np.ones_like(v) for k, v in p.items()})
    path = tmp_path / "ck.npz"
    L.save_checkpoint(path, p, opt, {"step": 7, "rng": {"state": [1, 2]}})
    q, ost, meta = L.load_checkpoint(path, like=p)
    for k in p:
        np.testing.assert_array_equal(q[k], p[k])
        assert q[k].dtype == p[k].dtype
    assert meta == {"step": 7, "rng": {"state": [1, 2]}} and ost["t"] == 1
    opt2 = L.Adam({k: v.copy() for k, v in p.items()})
    opt2.load_state_dict(ost)
    np.testing.assert_array_equal(opt2.m["cell.Wx"], opt.m["cell.Wx"])
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp")] == []
    # truncated / corrupted
    raw = path.read_bytes()
    bad = tmp_path / "bad.npz"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        L.load_checkpoint(bad)
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="truncated or corrupted"):
        L.load_checkpoint(bad)
    np.savez(bad, x=np.zeros(2))  # a valid npz, not a checkpoint
    with pytest.raises(ValueError, match="not an lnnumba checkpoint"):
        L.load_checkpoint(bad)
    with pytest.raises(ValueError, match="different model"):
        L.load_checkpoint(
            path, like={"cell.Wx": np.zeros((3, 5), np.float32), "head.b": np.zeros(2)}
        )
    with pytest.raises(ValueError, match="different model"):
        L.load_checkpoint(path, like={"other": np.zeros(2)})
    with pytest.raises(TypeError, match="JSON"):
        L.save_checkpoint(path, p, meta={"x": object()})
    q, _, _ = L.load_checkpoint(path)  # the failed save left the previous checkpoint whole
    np.testing.assert_array_equal(q["cell.Wx"], p["cell.Wx"])
    with np.load(path, allow_pickle=False) as z:  # nothing in the file needs pickle
        assert all(z[k].dtype != object for k in z.files)
