"""Float64 NumPy reference of every operation: the executable form of the specification.

Plain, readable, slow; used by the tests (and as documentation), never on a fast path. Semantics
follow ONNX ``LayerNormalization`` / ``RMSNormalization``: normalize over the dimensions from
``axis`` to the last; ``weight``/``bias`` have shape ``x.shape[axis:]``; the saved ``mean`` and
``rstd`` have shape ``x.shape[:axis] + (1,) * k`` (the reduced dimensions kept as size 1).
Arguments are converted to float64; ``weight``/``bias`` ``None`` mean 1 and 0.
"""

import numpy as np


def _axes(x, axis):
    axis = axis % x.ndim
    return tuple(range(axis, x.ndim))


# --- layer norm -------------------------------------------------------------------------------


def layer_norm_forward(x, weight=None, bias=None, eps=1e-5, axis=-1):
    """Returns (y, mean, rstd), float64. x: (..., *S); weight, bias: S or None."""
    x = np.asarray(x, np.float64)
    red = _axes(x, axis)
    mean = x.mean(axis=red, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=red, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    y = (x - mean) * rstd
    if weight is not None:
        y = y * np.asarray(weight, np.float64)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return y, mean, rstd


def layer_norm_backward(dy, x, mean, rstd, weight=None, axis=-1):
    """Returns (dx, dweight, dbias), float64. dy, x: (..., *S); mean, rstd as saved."""
    dy = np.asarray(dy, np.float64)
    x = np.asarray(x, np.float64)
    red = _axes(x, axis)
    batch = tuple(range(0, red[0]))
    xhat = (x - mean) * rstd
    gy = dy if weight is None else dy * np.asarray(weight, np.float64)
    dx = rstd * (
        gy  # the direct term
        - gy.mean(axis=red, keepdims=True)  # through the mean
        - xhat * (gy * xhat).mean(axis=red, keepdims=True)  # through the variance
    )
    return dx, (dy * xhat).sum(axis=batch), dy.sum(axis=batch)


# --- RMSNorm ----------------------------------------------------------------------------------


def rms_norm_forward(x, weight=None, eps=1e-6, axis=-1):
    """Returns (y, rstd), float64. x: (..., *S); weight: S or None."""
    x = np.asarray(x, np.float64)
    red = _axes(x, axis)
    rstd = 1.0 / np.sqrt((x * x).mean(axis=red, keepdims=True) + eps)
    y = x * rstd
    if weight is not None:
        y = y * np.asarray(weight, np.float64)
    return y, rstd


def rms_norm_backward(dy, x, rstd, weight=None, axis=-1):
    """Returns (dx, dweight), float64. dy, x: (..., *S); rstd as saved."""
    dy = np.asarray(dy, np.float64)
    x = np.asarray(x, np.float64)
    red = _axes(x, axis)
    batch = tuple(range(0, red[0]))
    xhat = x * rstd
    gy = dy if weight is None else dy * np.asarray(weight, np.float64)
    dx = rstd * (gy - xhat * (gy * xhat).mean(axis=red, keepdims=True))
    return dx, (dy * xhat).sum(axis=batch)


# --- recurrent cells (PAPER.md §3) -----------------------------------------------------------


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _ln(a, g, b, eps):
    return layer_norm_forward(a, g, b, eps)[0]


def cell_forward(kind, params, x, state=None, lengths=None, layer_norm=True, eps=1e-5):
    """Reference forward of an RNN/LSTM/GRU cell over a sequence, float64, step by step.

    kind: "rnn", "lstm" or "gru"; params: dict of arrays named as PAPER.md §3; x: (T, B, I);
    state: tuple of (B, H) arrays ((h, c) for LSTM, (h,) otherwise) or None for zeros;
    lengths: (B,) ints or None. Returns (hs (T, B, H), last state tuple). For t >= lengths[b]
    sequence b's state is kept and its output row is zero.
    """
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    x = np.asarray(x, np.float64)
    T, B, _ = x.shape
    H = p["Wh"].shape[0]
    n_state = 2 if kind == "lstm" else 1
    st = (
        [np.zeros((B, H)) for _ in range(n_state)]
        if state is None
        else [np.array(s, np.float64) for s in state]
    )
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    hs = np.zeros((T, B, H))
    for t in range(T):
        h = st[0]
        xw = x[t] @ p["Wx"]
        hw = h @ p["Wh"]
        if kind == "rnn":
            a = xw + hw
            hn = np.tanh(_ln(a, p["ln_g"], p["ln_b"], eps) if layer_norm else a + p["b"])
            new = [hn]
        elif kind == "lstm":
            c = st[1]
            if layer_norm:
                a = (
                    _ln(xw, p["ln_x_g"], p["ln_x_b"], eps)
                    + _ln(hw, p["ln_h_g"], p["ln_h_b"], eps)
                    + p["b"]
                )
            else:
                a = xw + hw + p["b"]
            i, f, g, o = np.split(a, 4, axis=1)
            cn = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
            cc = _ln(cn, p["ln_c_g"], p["ln_c_b"], eps) if layer_norm else cn
            new = [_sigmoid(o) * np.tanh(cc), cn]
        else:  # gru
            H2 = 2 * H
            if layer_norm:
                rz = _ln(xw[:, :H2], p["ln_x_g"], p["ln_x_b"], eps) + _ln(
                    hw[:, :H2], p["ln_h_g"], p["ln_h_b"], eps
                )
                xn = _ln(xw[:, H2:], p["ln_xn_g"], p["ln_xn_b"], eps)
                hn_ = _ln(hw[:, H2:], p["ln_hn_g"], p["ln_hn_b"], eps)
            else:
                rz = xw[:, :H2] + p["bx"][:H2] + hw[:, :H2] + p["bh"][:H2]
                xn = xw[:, H2:] + p["bx"][H2:]
                hn_ = hw[:, H2:] + p["bh"][H2:]
            r, z = _sigmoid(rz[:, :H]), _sigmoid(rz[:, H:])
            n = np.tanh(xn + r * hn_)
            new = [z * h + (1 - z) * n]
        active = (t < lengths)[:, None]
        st = [np.where(active, a_new, a_old) for a_new, a_old in zip(new, st)]
        hs[t] = np.where(active, st[0], 0.0)
    return hs, tuple(st)
