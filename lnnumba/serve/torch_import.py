"""Import weights from PyTorch modules without depending on PyTorch: each function takes a state
dict of NumPy arrays, ``{k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}``,
and returns the equivalent lnnumba model (float32 unless ``dtype`` says otherwise).

``nn.LSTM`` / ``nn.GRU`` with one layer and direction give an ``LSTM`` / ``GRU`` cell; with
several layers or ``bidirectional=True`` a ``Stacked`` network. PyTorch's cells compute exactly
what lnnumba's plain cells compute (weights transposed; the LSTM's two bias vectors summed).
"""

import numpy as np

from ..nn.cells import GRU, LSTM
from ..nn.layers import Linear
from ..nn.norm import LayerNorm, RMSNorm
from ..nn.stack import Stacked


def _get(fn, sd, key):
    if not isinstance(sd, dict):
        raise TypeError(
            f"{fn}: expected a state dict (dict of NumPy arrays), got {type(sd).__name__}"
        )
    if key not in sd:
        raise ValueError(f"{fn}: the state dict has no {key!r} (keys: {sorted(sd)})")
    return np.asarray(sd[key])


def layer_norm_from_torch(state_dict, *, eps=1e-5, dtype=np.float32):
    """``torch.nn.LayerNorm`` -> ``lnnumba.LayerNorm`` (weight, and bias when present)."""
    fn = "layer_norm_from_torch"
    w = _get(fn, state_dict, "weight")
    ln = LayerNorm(w.shape, eps=eps, bias="bias" in state_dict, dtype=dtype)
    ln.params["weight"][...] = w
    if "bias" in state_dict:
        ln.params["bias"][...] = _get(fn, state_dict, "bias")
    return ln


def rms_norm_from_torch(state_dict, *, eps=1e-6, dtype=np.float32):
    """``torch.nn.RMSNorm`` -> ``lnnumba.RMSNorm``. Pass the module's eps (PyTorch's default
    None means the dtype's machine epsilon)."""
    w = _get("rms_norm_from_torch", state_dict, "weight")
    rn = RMSNorm(w.shape, eps=eps, dtype=dtype)
    rn.params["weight"][...] = w
    return rn


def linear_from_torch(state_dict, *, dtype=np.float32):
    """``torch.nn.Linear`` (weight (out, in), bias (out,)) -> ``lnnumba.Linear`` (W = weight.T).
    A Linear without bias gets a zero b."""
    fn = "linear_from_torch"
    w = _get(fn, state_dict, "weight")
    if w.ndim != 2:
        raise ValueError(f"{fn}: weight has shape {w.shape}, expected (out, in)")
    lin = Linear(w.shape[1], w.shape[0], dtype=dtype)
    lin.params["W"][...] = w.T
    lin.params["b"][...] = _get(fn, state_dict, "bias") if "bias" in state_dict else 0
    return lin


def _rnn_weights(fn, sd, gates, sfx):
    """(Wx, Wh, b_ih, b_hh) of one layer and direction, checked; sfx e.g. "_l0", "_l1_reverse"."""
    wih = _get(fn, sd, "weight_ih" + sfx)
    whh = _get(fn, sd, "weight_hh" + sfx)
    H = whh.shape[1]
    if wih.ndim != 2 or wih.shape[0] != gates * H or whh.shape != (gates * H, H):
        raise ValueError(
            f"{fn}: weight shapes {wih.shape}, {whh.shape} do not match a cell with "
            f"{gates} gate blocks"
        )
    zeros = np.zeros(gates * H)
    bih = _get(fn, sd, "bias_ih" + sfx) if "bias_ih" + sfx in sd else zeros
    bhh = _get(fn, sd, "bias_hh" + sfx) if "bias_hh" + sfx in sd else zeros
    return wih, whh, bih, bhh


def _load_cell(cell, kind, wih, whh, bih, bhh):
    cell.params["Wx"][...] = wih.T
    cell.params["Wh"][...] = whh.T
    if kind == "gru":
        cell.params["bx"][...] = bih
        cell.params["bh"][...] = bhh
    else:
        cell.params["b"][...] = bih + bhh


def _from_torch(fn, sd, kind, dtype):
    gates = 4 if kind == "lstm" else 3
    wih, whh, bih, bhh = _rnn_weights(fn, sd, gates, "_l0")
    I, H = wih.shape[1], whh.shape[1]
    layers = 1
    while f"weight_ih_l{layers}" in sd:
        layers += 1
    bidirectional = "weight_ih_l0_reverse" in sd
    if layers == 1 and not bidirectional:
        cell = (LSTM if kind == "lstm" else GRU)(I, H, layer_norm=False, dtype=dtype)
        _load_cell(cell, kind, wih, whh, bih, bhh)
        return cell
    net = Stacked(
        kind, I, H, num_layers=layers, bidirectional=bidirectional, layer_norm=False, dtype=dtype
    )
    for layer in range(layers):
        for d in range(net.D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            _load_cell(net.layers[layer][d], kind, *_rnn_weights(fn, sd, gates, sfx))
    return net


def lstm_from_torch(state_dict, *, dtype=np.float32):
    """``torch.nn.LSTM`` -> ``lnnumba.LSTM(layer_norm=False)``, or a ``Stacked("lstm", ...)``
    when the module has several layers or is bidirectional."""
    return _from_torch("lstm_from_torch", state_dict, "lstm", dtype)


def gru_from_torch(state_dict, *, dtype=np.float32):
    """``torch.nn.GRU`` -> ``lnnumba.GRU(layer_norm=False)``, or a ``Stacked("gru", ...)``
    when the module has several layers or is bidirectional."""
    return _from_torch("gru_from_torch", state_dict, "gru", dtype)
