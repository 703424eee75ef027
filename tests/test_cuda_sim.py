"""Runs the GPU tests (tests/gpu) under Numba's CUDA simulator in a subprocess: the simulator is
chosen when numba is imported, and this process's CPU tests need the real compiler."""

import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_gpu_suite_under_the_cuda_simulator():
    pytest.importorskip("numba.cuda")
    here = Path(__file__).parent
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    p = subprocess.run(
        # every test but those about real launches and groups wider than a warp, which the
        # simulator does not make
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(here / "gpu")]
        + ["-k", "not lean_launch and not wider_than_the_widest_group"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=here.parent,
    )
    tail = (p.stdout + p.stderr)[-3000:]
    assert p.returncode == 0, tail
    assert " passed" in p.stdout and " skipped" not in p.stdout.splitlines()[-1], tail
