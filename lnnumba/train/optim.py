"""Optimizers and gradient clipping over flat dicts of arrays (``"cell.Wx"``, ``"head.W"``...)."""

import math

import numpy as np


def _check_grads(fn, params, grads):
    if not isinstance(grads, dict):
        raise TypeError(f"{fn}: grads must be a dict name -> array, got {type(grads).__name__}")
    for k, g in grads.items():
        if k not in params:
            raise ValueError(f"{fn}: gradient {k!r} has no parameter of that name")
        if not isinstance(g, np.ndarray) or g.shape != params[k].shape:
            shape = getattr(g, "shape", None)
            raise ValueError(f"{fn}: gradient {k!r} has shape {shape}, expected {params[k].shape}")


class Adam:
    """Adam (Kingma & Ba), the update of ``torch.optim.Adam``; ``weight_decay`` adds
    ``weight_decay * p`` to each gradient (L2, as PyTorch's Adam).

    ``Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)``: params is the flat
    dict of arrays to train, updated in place by ``step(grads)``. ``state_dict()`` and
    ``load_state_dict()`` save and restore the moments and step count (for checkpoints).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        if not isinstance(params, dict) or not all(
            isinstance(v, np.ndarray) for v in params.values()
        ):
            raise TypeError("Adam: params must be a dict name -> numpy array")
        for name, v in [("lr", lr), ("eps", eps), ("weight_decay", weight_decay)]:
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"Adam: {name} must be a finite number >= 0, got {v!r}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Adam: betas must be two numbers in [0, 1), got {betas!r}")
        self.params = params
        self.lr, self.betas, self.eps, self.weight_decay = (
            float(lr),
            tuple(betas),
            eps,
            weight_decay,
        )
        self.t = 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, grads):
        """Updates the parameters named in ``grads`` in place (others are left alone)."""
        _check_grads("Adam.step", self.params, grads)
        self.t += 1
        b1, b2 = self.betas
        c1 = 1 - b1**self.t
        c2 = 1 - b2**self.t
        for k, g in grads.items():
            p, m, v = self.params[k], self.m[k], self.v[k]
            if self.weight_decay:
                g = g + self.weight_decay * p
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * (g * g)
            denom = np.sqrt(v) / math.sqrt(c2) + self.eps
            p -= (self.lr / c1) * m / denom

    def state_dict(self):
        """{"t": int, "m": {name: array}, "v": {name: array}}: copies."""
        return {
            "t": self.t,
            "m": {k: a.copy() for k, a in self.m.items()},
            "v": {k: a.copy() for k, a in self.v.items()},
        }

    def load_state_dict(self, state):
        """Restores ``state_dict()``'s output; ValueError if it does not fit these params."""
        if not isinstance(state, dict) or set(state) != {"t", "m", "v"}:
            raise ValueError("Adam.load_state_dict: expected a dict with keys 't', 'm', 'v'")
        for part in ("m", "v"):
            if set(state[part]) != set(self.params):
                raise ValueError(
                    f"Adam.load_state_dict: the state's {part!r} names "
                    f"{sorted(set(state[part]) ^ set(self.params))} do not match the parameters"
                )
            for k, a in state[part].items():
                if a.shape != self.params[k].shape:
                    raise ValueError(
                        f"Adam.load_state_dict: {part}[{k!r}] has shape {a.shape}, expected "
                        f"{self.params[k].shape}"
                    )
        self.t = int(state["t"])
        for k in self.params:
            self.m[k][...] = state["m"][k]
            self.v[k][...] = state["v"][k]


def clip_grad_norm(grads, max_norm):
    """Scales all gradients in place so that their joint L2 norm is at most ``max_norm``.

    grads: dict name -> array. Returns the norm before clipping (float, computed in float64).
    Like ``torch.nn.utils.clip_grad_norm_``: the scale is max_norm / (norm + 1e-6) when below 1.
    """
    if not isinstance(grads, dict):
        raise TypeError(f"clip_grad_norm: grads must be a dict, got {type(grads).__name__}")
    if not (isinstance(max_norm, (int, float)) and max_norm > 0 and math.isfinite(max_norm)):
        raise ValueError(f"clip_grad_norm: max_norm must be a finite number > 0, got {max_norm!r}")
    total = math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values()))
    scale = max_norm / (total + 1e-6)
    if scale < 1.0:
        for g in grads.values():
            g *= g.dtype.type(scale)
    return total
