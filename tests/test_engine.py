"""The engine's process-level set-up: the host heap keeps batch buffers between batches."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A scoring batch's allocation pattern in C: four 20 MB buffers alive at once, then all freed.
# Prints whether the tuning was applied and how many MB the heap grew by and still holds.
HEAP_PROBE = """
import ctypes, sys
from iqa_cli.engine import retain_freed_host_memory
applied = retain_freed_host_memory() if sys.argv[1] == "tuned" else None
class MallInfo2(ctypes.Structure):
    _fields_ = [(f, ctypes.c_size_t) for f in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.free.argtypes, libc.mallinfo2.restype = ctypes.c_void_p, [ctypes.c_void_p], MallInfo2
before = libc.mallinfo2().arena
blocks = [libc.malloc(20 * 2**20) for _ in range(4)]
for block in blocks:
    libc.free(block)
print(applied, (libc.mallinfo2().arena - before) // 2**20)
"""


def probe(mode: str, **env: str) -> tuple[str, int]:
    environment = {k: v for k, v in os.environ.items() if k != "IQA_MALLOC_DEFAULTS"} | env
    out = subprocess.run([sys.executable, "-c", HEAP_PROBE, mode], capture_output=True, text=True, check=True,
                         env=environment).stdout.split()
    return out[0], int(out[1])


# Fault counts on the real path (alex, 1,545 patches): ~45,000 minor page faults per run with
# glibc's defaults, a few hundred once tuned. Those counts vary run to run; the heap size does not.
@pytest.mark.skipif(not GLIBC, reason="the heap tuning is glibc's mallopt; other C libraries are left alone")
def test_freed_batch_buffers_stay_in_the_heap():
    applied, kept_mb = probe("tuned")
    assert applied == "True"
    assert kept_mb >= 80
    # glibc's own trim threshold is at most 64 MB: by default the 80 MB go back to the kernel.
    applied, kept_mb = probe("default")
    assert applied == "None"
    assert kept_mb < 80


@pytest.mark.skipif(not GLIBC, reason="the heap tuning is glibc's mallopt; other C libraries are left alone")
def test_malloc_defaults_env_leaves_the_heap_alone():
    applied, kept_mb = probe("tuned", IQA_MALLOC_DEFAULTS="1")
    assert applied == "False"
    assert kept_mb < 80
