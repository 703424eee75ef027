"""Runs the GPU tests (tests/gpu) under Numba's CUDA simulator in a subprocess: the simulator is
chosen when numba is imported, and this process's CPU tests need the real compiler.

The simulator interprets every GPU thread in Python: the suite takes minutes on one core, while
the rest of the tests mostly keep one core busy too (compiling). So the subprocess starts in the
background as soon as pytest knows it will run this test (``start_suite``, from conftest.py),
and the test, which conftest.py moves to the end of the run, collects its result. Under
pytest-xdist the test goes first instead and starts the subprocess itself: the other workers
keep the cores busy meanwhile."""

import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

TIMEOUT_S = 1200
# Every GPU test but those about real launches and groups wider than a warp, which the simulator
# does not make, and float64 at the widths that take it longest (a quarter of the suite's time;
# float64 is tested at the smaller widths here, and at every width on a GPU).
SELECTION = (
    "not lean_launch and not wider_than_the_widest_group and not (float64 and (1025 or 4099))"
)
_run = None  # (Popen, stdout file, stderr file, start time) of the suite's subprocess


def _available():
    try:
        return importlib.util.find_spec("numba.cuda") is not None
    except ImportError:
        return False


def start_suite():
    """Starts the simulator suite in a subprocess, once; its output goes to temporary files."""
    global _run
    if _run is not None or not _available():
        return
    here = Path(__file__).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    env["NUMBA_ENABLE_CUDASIM"] = "1"
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    p = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(here / "gpu")]
        + ["-k", SELECTION],
        env=env,
        stdout=out,
        stderr=err,
        cwd=here.parent,
    )
    _run = (p, out, err, time.monotonic())


def stop_suite():
    """Ends the subprocess if it is still running (the session ended before the test ran)."""
    global _run
    if _run is None:
        return
    p, out, err, _ = _run
    if p.poll() is None:
        p.kill()
        p.wait()
    out.close()
    err.close()
    _run = None


def test_gpu_suite_under_the_cuda_simulator():
    if not _available():
        pytest.skip("numba.cuda is not installed")
    start_suite()  # already started, unless this test was run on its own
    p, out, err, t0 = _run
    try:
        p.wait(timeout=max(1.0, TIMEOUT_S - (time.monotonic() - t0)))
    except subprocess.TimeoutExpired:
        stop_suite()
        pytest.fail(f"the simulator suite took more than {TIMEOUT_S} s")
    out.seek(0)
    err.seek(0)
    text, errors = out.read(), err.read()
    stop_suite()
    tail = (text + errors)[-3000:]
    assert p.returncode == 0, tail
    last = text.strip().splitlines()[-1]
    assert " passed" in last and " skipped" not in last, tail
