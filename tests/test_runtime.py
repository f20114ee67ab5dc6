"""cellcls.runtime: the allocator setting `cellcls segment` applies on CPU."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cellcls import runtime


def _in_fresh_process(env_extra: dict[str, str]) -> str:
    code = "from cellcls.runtime import retain_freed_memory as r; print(r(), r())"
    env = {**os.environ, **env_extra}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_applies_on_linux_and_is_idempotent():
    assert _in_fresh_process({"CELLCLS_NO_MALLOC_TUNING": ""}) == "True True"


def test_opt_out_variable_leaves_the_allocator_alone():
    assert _in_fresh_process({"CELLCLS_NO_MALLOC_TUNING": "1"}) == "False False"


def test_mallopt_values_fit_a_c_int():
    # mallopt takes an int: a larger value would be truncated silently by ctypes.
    for value in (runtime._MMAP_THRESHOLD_BYTES, runtime._TRIM_THRESHOLD_BYTES, runtime._TOP_PAD_BYTES):
        assert 0 < value < 2**31
