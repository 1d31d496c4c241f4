"""The suite's quick-compile XLA options (tests/quick_compile.py) do not change results: the main
programs give the same arrays, to float32 rounding, under XLA's default options in a fresh process."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import load_script, subprocess_env
from quick_compile import QUICK_COMPILE_FLAGS

WORKER = Path(__file__).with_name("helpers") / "xla_options_worker.py"


def test_quick_compile_options_give_the_results_of_xla_defaults(tmp_path):
    flags = os.environ.get("XLA_FLAGS", "")
    if not any(f in flags for f in QUICK_COMPILE_FLAGS):
        pytest.skip("the suite runs with XLA's default options")
    default_flags = " ".join(f for f in flags.split() if f not in QUICK_COMPILE_FLAGS)
    env = subprocess_env(XLA_FLAGS=default_flags, JAX_PLATFORMS="cpu")
    out = tmp_path / "defaults.npz"
    # The reference process compiles while this one does (two cores).
    worker = subprocess.Popen([sys.executable, str(WORKER), str(out)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    quick = load_script(WORKER).outputs()
    _, stderr = worker.communicate(timeout=600)
    assert worker.returncode == 0, stderr[-4000:]
    with np.load(out) as stored:
        reference = dict(stored)
    assert set(quick) == set(reference)
    for name, value in quick.items():
        if value.dtype.kind in "iub":
            np.testing.assert_array_equal(value, reference[name], err_msg=name)
        else:
            # Float32 rounding only: a few ulps of the array's largest value.
            scale = float(np.abs(reference[name]).max())
            np.testing.assert_allclose(value, reference[name], rtol=1e-5, atol=4e-6 * scale, err_msg=name)
    generated = [quick[name] for name in quick if name.endswith("/generated")]
    assert generated and all((g >= 0).sum() >= 8 for g in generated)  # the runs really generated tokens
