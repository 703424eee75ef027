import numpy as np
import pytest

# tests/test_cuda_sim.py: the GPU tests under the CUDA simulator, in a background subprocess
SIMULATOR_TEST = "test_gpu_suite_under_the_cuda_simulator"


def pytest_collection_modifyitems(config, items):
    """The simulator suite's test goes last: its subprocess runs meanwhile (see below)."""
    items.sort(key=lambda item: item.name == SIMULATOR_TEST)  # stable: the rest keep their order


def pytest_collection_finish(session):
    """Starts the simulator suite in the background once it is known to run (after selection)."""
    if session.config.option.collectonly:
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
