"""The kernels release the GIL: the same total work on 1 thread and spread over N threads (calls
small enough to take the serial path, so any speed-up comes from threads running together).
Results go to preallocated ``out=`` arrays: fresh large allocations fault their pages in under the
process's memory-map lock, which serializes threads whatever the kernels do."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np

import lnnumba

from .common import data

N_THREADS = 2
CALLS = 400


class GIL:
    timeout = 120

    def setup(self):
        self.xs = [data((60, 1024), np.float32, i) for i in range(N_THREADS)]
        self.outs = [np.empty_like(x) for x in self.xs]
        self.pool = ThreadPoolExecutor(N_THREADS)
        lnnumba.layer_norm(self.xs[0])

    def teardown(self):
        self.pool.shutdown()

    def _work(self, i):
        for _ in range(CALLS):
            lnnumba.layer_norm(self.xs[i], out=self.outs[i])

    def time_one_thread(self):
        for i in range(N_THREADS):
            self._work(i)

    def time_threads(self):
        list(self.pool.map(self._work, range(N_THREADS)))
