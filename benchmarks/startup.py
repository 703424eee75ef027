"""Start-up cost of a fresh process with a warm Numba cache: ``import lnnumba`` plus the first
``layer_norm`` call, the figure an inference server pays at every start.

    python benchmarks/startup.py [--runs 5]

The first run fills the on-disk cache (compiles); the following runs load from it and are the
figure to read. Each run is a new interpreter; ``python -c pass`` is timed too, for scale.
"""

import argparse
import statistics
import subprocess
import sys
import time

PROBE = (
    "import time; t0 = time.perf_counter(); import numpy as np; import lnnumba; "
    "t1 = time.perf_counter(); lnnumba.layer_norm(np.ones((1, 1024), np.float32)); "
    "t2 = time.perf_counter(); print(t1 - t0, t2 - t1)"
)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    cold = None
    imports, firsts, totals = [], [], []
    for i in range(args.runs + 1):
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
        ).stdout.split()
        total = time.perf_counter() - t0
        if i == 0:
            cold = total
            continue
        imports.append(float(out[0]))
        firsts.append(float(out[1]))
        totals.append(total)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    bare = time.perf_counter() - t0
    print(f"first process (may compile): {cold:.3f} s")
    print(
        f"warm cache, median of {args.runs}: import lnnumba {statistics.median(imports):.3f} s, "
        f"first layer_norm call {statistics.median(firsts):.3f} s, "
        f"import + first call {statistics.median(imports) + statistics.median(firsts):.3f} s, "
        f"whole process {statistics.median(totals):.3f} s (bare interpreter {bare:.3f} s)"
    )


if __name__ == "__main__":
    main()
