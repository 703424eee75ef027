"""Start-up cost of a fresh process with a warm Numba cache: ``import lnnumba`` plus the first
``layer_norm`` call, the figure an inference server pays at every start.

    python benchmarks/startup.py [--runs 5]

The first run fills the on-disk cache (compiles); the following runs load from it and are the
figure to read. Each run is a new interpreter; ``python -c pass`` is timed too, for scale.

Two installs are timed, alternately: this environment as it is, and lnnumba's own runtime
dependencies only (NumPy and Numba). They differ where SciPy is installed (here it comes with
scikit-learn, in the ``examples`` extra): Numba imports ``scipy.linalg`` at its first compile or
cache load in a process, to look for BLAS, whether or not anything uses it. The second install is
simulated by hiding SciPy from the process (``sys.modules["scipy"] = None``), which Numba takes
as SciPy absent.

The processes write and read Python's bytecode caches (``__pycache__/*.pyc``) as an installed
package does, even where the environment sets ``PYTHONDONTWRITEBYTECODE``: without them every
start compiles lnnumba's Python source again (about 50 ms).
"""

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import time

PROBE = (
    "import time; t0 = time.perf_counter(); import numpy as np; import lnnumba; "
    "t1 = time.perf_counter(); lnnumba.layer_norm(np.ones((1, 1024), np.float32)); "
    "t2 = time.perf_counter(); print(t1 - t0, t2 - t1)"
)
HIDE_SCIPY = "import sys; sys.modules['scipy'] = None; "
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _probe(code):
    """(import s, first call s, whole process s) of one new interpreter running code."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=ENV
    ).stdout.split()
    return float(out[0]), float(out[1]), time.perf_counter() - t0


def _summary(samples):
    med = statistics.median
    imports, firsts, totals = zip(*samples, strict=True)
    return {
        "import_s": med(imports),
        "first_call_s": med(firsts),
        "import_plus_first_call_s": med(imports) + med(firsts),
        "process_s": med(totals),
    }


def run(runs=5):
    """{"runs", "cold_s", "scipy_installed", "bare_s", "import_s", "first_call_s",
    "import_plus_first_call_s", "process_s" (this environment), "plain": {the same four keys,
    NumPy and Numba only}}"""
    cold = _probe(PROBE)[2]
    installed, plain = [], []
    for _ in range(runs):  # alternately, so that both see the same machine
        installed.append(_probe(PROBE))
        plain.append(_probe(HIDE_SCIPY + PROBE))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True, env=ENV)
    bare = time.perf_counter() - t0
    return {
        "runs": runs,
        "cold_s": cold,
        "scipy_installed": importlib.util.find_spec("scipy") is not None,
        "bare_s": bare,
        **_summary(installed),
        "plain": _summary(plain),
    }


def _line(r):
    return (
        f"import lnnumba {r['import_s']:.3f} s, first layer_norm call {r['first_call_s']:.3f} s,"
        f" import + first call {r['import_plus_first_call_s']:.3f} s, whole process"
        f" {r['process_s']:.3f} s"
    )


def describe(r):
    text = (
        f"first process (may compile): {r['cold_s']:.3f} s\n"
        f"warm cache, median of {r['runs']} (bare interpreter {r['bare_s']:.3f} s):\n"
    )
    if not r["scipy_installed"]:
        return text + f"  NumPy and Numba only: {_line(r['plain'])}"
    return (
        text + f"  NumPy and Numba only (SciPy hidden): {_line(r['plain'])}\n"
        f"  with SciPy installed: {_line(r)}"
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    print(describe(run(args.runs)))


if __name__ == "__main__":
    main()
