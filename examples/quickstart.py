"""lnnumba in one page: layer norm forward and backward, checked against the float64 reference,
a LayerNorm module trained by plain gradient descent, and a quick speed comparison with NumPy.

    python examples/quickstart.py
"""

import time

import numpy as np

import lnnumba
from lnnumba import reference


def main():
    rng = np.random.default_rng(0)

    # 1. A batch of 64 examples with 512 features, float32, far from zero mean and unit variance.
    x = (3.0 + 5.0 * rng.standard_normal((64, 512))).astype(np.float32)
    y, mean, rstd = lnnumba.layer_norm_forward(x)
    print(
        f"per-example mean after LN: {np.abs(y.mean(-1)).max():.1e}, "
        f"std: {y.std(-1).min():.4f}..{y.std(-1).max():.4f}"
    )
    err = np.linalg.norm(y - reference.layer_norm_forward(x)[0]) / np.linalg.norm(y)
    print(f"float32 kernel vs float64 reference: relative error {err:.1e}")

    # 2. Backward pass: gradients of sum(y * g) for x, weight and bias.
    g = rng.standard_normal(x.shape).astype(np.float32)
    dx, dweight, dbias = lnnumba.layer_norm_backward(g, x, mean, rstd)
    print(f"dx {dx.shape}, dweight {dweight.shape}, dbias {dbias.shape}")

    # 3. A LayerNorm module learning a target gain and shift by gradient descent.
    ln = lnnumba.LayerNorm(512)
    target_w = rng.uniform(0.5, 2.0, 512).astype(np.float32)
    target_b = rng.uniform(-1, 1, 512).astype(np.float32)
    target = lnnumba.layer_norm(x, target_w, target_b)
    for step in range(201):
        out, cache = ln.forward(x)
        diff = out - target
        loss = float(np.mean(diff * diff))
        _, grads = ln.backward(2 * diff / diff.size, cache)
        for name, grad in grads.items():
            ln.params[name] -= 50.0 * grad  # in place: the module always uses current values
        if step % 50 == 0:
            print(f"step {step:3d}  mse {loss:.2e}")

    # 4. Speed against a plain NumPy layer norm on the same data.
    big = rng.standard_normal((4096, 1024)).astype(np.float32)
    out = np.empty_like(big)
    lnnumba.layer_norm(big, out=out)  # compile (or load from Numba's on-disk cache)

    def numpy_ln(a):
        c = a - a.mean(-1, keepdims=True)
        return c / np.sqrt((c * c).mean(-1, keepdims=True) + 1e-5)

    def best(f, n=5):
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
        return min(ts)

    t_ln = best(lambda: lnnumba.layer_norm(big, out=out))
    t_np = best(lambda: numpy_ln(big))
    print(
        f"4096x1024 float32: lnnumba {t_ln * 1e3:.2f} ms, NumPy {t_np * 1e3:.2f} ms "
        f"({t_np / t_ln:.1f}x)"
    )


if __name__ == "__main__":
    main()
