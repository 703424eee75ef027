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


def run(runs=5):
    """{"cold_s", "import_s", "first_call_s", "import_plus_first_call_s", "process_s", "bare_s"}"""
    cold = None
    imports, firsts, totals = [], [], []
    for i in range(runs + 1):
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
    med = statistics.median
    return {
        "runs": runs,
        "cold_s": cold,
        "import_s": med(imports),
        "first_call_s": med(firsts),
        "import_plus_first_call_s": med(imports) + med(firsts),
        "process_s": med(totals),
        "bare_s": bare,
    }


def describe(r):
    return (
        f"first process (may compile): {r['cold_s']:.3f} s\n"
        f"warm cache, median of {r['runs']}: import lnnumba {r['import_s']:.3f} s, first "
        f"layer_norm call {r['first_call_s']:.3f} s, import + first call "
        f"{r['import_plus_first_call_s']:.3f} s, whole process {r['process_s']:.3f} s "
        f"(bare interpreter {r['bare_s']:.3f} s)"
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    print(describe(run(args.runs)))


if __name__ == "__main__":
    main()
