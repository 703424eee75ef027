"""Model files and PyTorch weight import."""

import io
import json
import zipfile

import numpy as np
import pytest

import lnnumba as L


def models():
    bn = L.BatchNorm(5)
    bn.buffers["running_mean"][...] = 0.25
    return [
        L.LSTM(3, 4, seed=0),
        L.Stacked("gru", 3, 4, num_layers=2, bidirectional=True, seed=5),
        L.GRU(3, 4, layer_norm=False, seed=1, dtype=np.float64),
        L.RNN(3, 4, seed=2),
        L.LayerNorm((2, 5), bias=False),
        L.RMSNorm(5),
        L.Linear(5, 2, seed=3),
        L.Embedding(7, 3, seed=4),
        bn,
    ]


@pytest.mark.parametrize("model", models(), ids=lambda m: type(m).__name__)
def test_round_trip(tmp_path, model, rng):
    for v in model.params.values():
        v[...] = rng.standard_normal(v.shape)
    path = tmp_path / "m.npz"
    L.save_model(path, model)
    back = L.load_model(path)
    assert type(back) is type(model)
    for k, v in model.params.items():
        np.testing.assert_array_equal(back.params[k], v)
        assert back.params[k].dtype == v.dtype
    for k, v in getattr(model, "buffers", {}).items():
        np.testing.assert_array_equal(back.buffers[k], v)
    if isinstance(model, (L.LSTM, L.GRU, L.RNN, L.Stacked)):
        x = rng.standard_normal((4, 2, 3)).astype(model.dtype)
        np.testing.assert_array_equal(back.forward(x)[0], model.forward(x)[0])
        assert back.layer_norm == model.layer_norm
    with np.load(path, allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)


def _rewrite_header(path, change):
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    header = json.loads(bytes(data["__header__"]).decode())
    change(header)
    data["__header__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(path, **data)


def test_model_file_of_the_other_byte_order_loads(tmp_path, rng):
    """A model file whose arrays have the other byte order (as written on a big-endian machine)
    loads into the same model, its arrays in the machine's order."""
    model = L.LSTM(3, 4, seed=0)
    path = tmp_path / "m.npz"
    L.save_model(path, model)
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    swapped = {k: v.astype(v.dtype.newbyteorder("S")) for k, v in data.items()}
    assert not swapped["param/Wx"].dtype.isnative
    np.savez(path, **swapped)
    back = L.load_model(path)
    for k, v in model.params.items():
        assert back.params[k].dtype == v.dtype and back.params[k].dtype.isnative
        np.testing.assert_array_equal(back.params[k], v)
    x = rng.standard_normal((2, 1, 3)).astype(np.float32)
    np.testing.assert_array_equal(back.forward(x)[0], model.forward(x)[0])


def test_bad_model_files(tmp_path):
    path = tmp_path / "m.npz"
    L.save_model(path, L.LSTM(3, 4))
    raw = path.read_bytes()
    bad = tmp_path / "bad.npz"
    bad.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        L.load_model(bad)
    np.savez(bad, x=np.zeros(3))
    with pytest.raises(ValueError, match="not an lnnumba model file"):
        L.load_model(bad)
    _rewrite_header(path, lambda h: h.update(version=99))
    with pytest.raises(ValueError, match="format version 99"):
        L.load_model(path)
    L.save_model(path, L.LSTM(3, 4))
    _rewrite_header(path, lambda h: h["args"].update(hidden_size=5))
    with pytest.raises(ValueError, match="expected float32"):
        L.load_model(path)
    L.save_model(path, L.LSTM(3, 4))
    _rewrite_header(path, lambda h: h["args"].update(layer_norm=False))
    with pytest.raises(ValueError, match="do not match"):
        L.load_model(path)
    L.save_model(path, L.LSTM(3, 4))
    _rewrite_header(path, lambda h: h.update(kind="Transformer"))
    with pytest.raises(ValueError, match="unknown model kind"):
        L.load_model(path)
    with pytest.raises(TypeError, match="cannot save"):
        L.save_model(path, object())
    with pytest.raises(FileNotFoundError):
        L.load_model(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError, match="there is no directory .*nowhere"):
        L.save_model(tmp_path / "nowhere" / "m.npz", L.LSTM(3, 4))
    assert zipfile.is_zipfile(io.BytesIO(raw))


def test_torch_import_bad_dicts():
    sd = {
        "weight_ih_l0": np.zeros((16, 3)),
        "weight_hh_l0": np.zeros((16, 4)),
        "weight_ih_l1": np.zeros((16, 4)),
    }
    with pytest.raises(ValueError, match="no .weight_hh_l1."):
        L.lstm_from_torch(sd)
    with pytest.raises(ValueError, match="no 'weight'"):
        L.linear_from_torch({})
    with pytest.raises(TypeError, match="state dict"):
        L.layer_norm_from_torch([1, 2])
    with pytest.raises(ValueError, match="gate blocks"):
        L.gru_from_torch({"weight_ih_l0": np.zeros((16, 3)), "weight_hh_l0": np.zeros((16, 4))})


def test_torch_import_matches_pytorch(rng):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)

    def sd(m):
        return {k: v.detach().numpy() for k, v in m.state_dict().items()}

    x = torch.randn(4, 2, 6)
    mods = [
        (torch.nn.LayerNorm(6), L.layer_norm_from_torch, {}),
        (torch.nn.RMSNorm(6, eps=1e-6), L.rms_norm_from_torch, {"eps": 1e-6}),
        (torch.nn.Linear(6, 3), L.linear_from_torch, {}),
    ]
    for mod, imp, kw in mods:
        with torch.no_grad():
            for p in mod.parameters():
                p.copy_(torch.randn_like(p))
            want = mod(x).numpy()
        ours = imp(sd(mod), **kw)
        np.testing.assert_allclose(ours.forward(x.numpy())[0], want, rtol=1e-5, atol=1e-5)
    for cls, imp in ((torch.nn.LSTM, L.lstm_from_torch), (torch.nn.GRU, L.gru_from_torch)):
        for kw in ({}, {"num_layers": 2, "bidirectional": True}):
            mod = cls(6, 5, **kw)
            with torch.no_grad():
                want = mod(x)[0].numpy()
            net = imp(sd(mod))
            assert isinstance(net, L.Stacked) == bool(kw)
            np.testing.assert_allclose(net.forward(x.numpy())[0], want, rtol=1e-5, atol=1e-5)
