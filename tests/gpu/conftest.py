"""The GPU tests run on a real GPU, or under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``,
which ``tests/test_cuda_sim.py`` sets in a subprocess so that the CPU tests keep the real
compiler). Anywhere else they are skipped."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests/_helpers.py


def _gpu_available():
    try:
        from numba import cuda
    except ImportError:
        return False
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return True
    try:
        return cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _gpu_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU and the CUDA simulator is not enabled")
    for item in items:
        if "tests/gpu/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(skip)
