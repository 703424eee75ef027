"""Import weights from PyTorch modules without depending on PyTorch: each function takes a state
dict of NumPy arrays, ``{k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}``,
and returns the equivalent lnnumba model (float32 unless ``dtype`` says otherwise).

Single-layer, unidirectional ``nn.LSTM`` / ``nn.GRU`` only (multi-layer and bidirectional
state dicts are refused with a ValueError). PyTorch's cells compute exactly what lnnumba's plain
cells compute (weights transposed; the LSTM's two bias vectors summed).
"""

import numpy as np

from ..nn.cells import GRU, LSTM
from ..nn.layers import Linear
from ..nn.norm import LayerNorm, RMSNorm


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


def _rnn_common(fn, sd, gates):
    extra = [k for k in sd if k.endswith(("_l1", "_reverse")) or "_l1_" in k]
    if extra:
        raise ValueError(
            f"{fn}: multi-layer and bidirectional modules are not supported yet "
            f"(found {sorted(extra)[:3]}); import one layer and direction at a time"
        )
    wih = _get(fn, sd, "weight_ih_l0")
    whh = _get(fn, sd, "weight_hh_l0")
    H = whh.shape[1]
    if wih.shape[0] != gates * H or whh.shape != (gates * H, H):
        raise ValueError(
            f"{fn}: weight shapes {wih.shape}, {whh.shape} do not match a cell with "
            f"{gates} gate blocks"
        )
    zeros = np.zeros(gates * H)
    bih = _get(fn, sd, "bias_ih_l0") if "bias_ih_l0" in sd else zeros
    bhh = _get(fn, sd, "bias_hh_l0") if "bias_hh_l0" in sd else zeros
    return wih, whh, bih, bhh, wih.shape[1], H


def lstm_from_torch(state_dict, *, dtype=np.float32):
    """``torch.nn.LSTM`` (one layer, one direction) -> ``lnnumba.LSTM(layer_norm=False)``."""
    wih, whh, bih, bhh, I, H = _rnn_common("lstm_from_torch", state_dict, 4)
    cell = LSTM(I, H, layer_norm=False, dtype=dtype)
    cell.params["Wx"][...] = wih.T
    cell.params["Wh"][...] = whh.T
    cell.params["b"][...] = bih + bhh
    return cell


def gru_from_torch(state_dict, *, dtype=np.float32):
    """``torch.nn.GRU`` (one layer, one direction) -> ``lnnumba.GRU(layer_norm=False)``."""
    wih, whh, bih, bhh, I, H = _rnn_common("gru_from_torch", state_dict, 3)
    cell = GRU(I, H, layer_norm=False, dtype=dtype)
    cell.params["Wx"][...] = wih.T
    cell.params["Wh"][...] = whh.T
    cell.params["bx"][...] = bih
    cell.params["bh"][...] = bhh
    return cell
