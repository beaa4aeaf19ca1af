"""scratchlm.heap: glibc's heap set for training loops at import, unless the user chose otherwise."""

import os
import subprocess
import sys

import pytest

CHECK = "import scratchlm.heap as h, sys; sys.stdout.write(str(h.tune()))"


def run(**env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "SCRATCHLM_MALLOC"))}
    return subprocess.run([sys.executable, "-c", CHECK], env={**clean, **env}, capture_output=True, text=True).stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tune_sets_the_heap_on_glibc_and_leaves_the_users_choice_alone():
    import ctypes

    glibc = hasattr(ctypes.CDLL(None), "gnu_get_libc_version")
    assert run() == str(glibc)
    assert run(MALLOC_MMAP_THRESHOLD_="131072") == "False"
    assert run(MALLOC_TRIM_THRESHOLD_="0") == "False"
    assert run(SCRATCHLM_MALLOC="default") == "False"
