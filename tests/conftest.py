import os

import numpy as np
import pytest

# tests/test_cuda_sim.py: the GPU tests under the CUDA simulator, in a background subprocess
SIMULATOR_TEST = "test_gpu_suite_under_the_cuda_simulator"
# Under pytest-xdist (``-n``) every worker collects every test, but only one runs a given test:
# the simulator's test then goes first and starts its own subprocess, which runs while that
# worker waits and the others go on.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")


def pytest_collection_modifyitems(config, items):
    """The simulator suite's test goes last, its subprocess running meanwhile (see below); first
    under xdist."""
    last = XDIST_WORKER is None
    items.sort(key=lambda item: (item.name == SIMULATOR_TEST) == last)  # stable sort


def pytest_collection_finish(session):
    """Starts the simulator suite in the background once it is known to run (after selection),
    unless under xdist."""
    if session.config.option.collectonly or XDIST_WORKER is not None:
        return
    for item in session.items:
        if item.name == SIMULATOR_TEST:
            item.module.start_suite()


def pytest_sessionfinish(session):
    """Ends the simulator subprocess if the session ends before its test (-x, interrupted)."""
    for item in session.items:
        if item.name == SIMULATOR_TEST:
            item.module.stop_suite()


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
