"""Compile cost in a fresh process: cold (an empty Numba cache: every kernel the first call needs
is compiled) and warm (loaded from the on-disk cache), for import + a first layer_norm call."""

import os
import subprocess
import sys
import tempfile

PROBE = (
    "import numpy as np, lnnumba; x = np.ones((4, 64), np.float32); "
    "y, m, r = lnnumba.layer_norm_forward(x); lnnumba.layer_norm_backward(x, x, m, r)"
)


def _run(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    subprocess.run([sys.executable, "-c", PROBE], env=env, check=True)


class Compile:
    timeout = 300
    number = 1
    repeat = 3
    warmup_time = 0

    def setup(self):
        self.warm = tempfile.mkdtemp()
        _run(self.warm)  # fill a cache for the warm case

    def time_cold_compile(self):
        _run(tempfile.mkdtemp())

    def time_warm_cache_load(self):
        _run(self.warm)
