import os
import platform
import subprocess
import sys

import pytest

from fdn import runtime

glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="the malloc tuning is for glibc",
)

# Allocates, fills and frees a 64 MB block 20 times with malloc, as PyTorch does with each
# feature map, and prints the minor page faults that took. glibc's adaptive threshold reuses
# blocks up to 32 MB on its own; above that (FDN's 131-channel features at 512x512 are 34 MB)
# it maps and unmaps every time.
_FAULTS = """
import ctypes, resource, sys
from fdn.runtime import tune_allocator
applied = tune_allocator() if sys.argv[1] == "tune" else False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 64 << 20
def use_block():
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
use_block()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    use_block()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str, **env: str) -> tuple[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", _FAULTS, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )
    applied, faults = done.stdout.split()
    return applied, int(faults)


@pytest.mark.slow
@glibc_only
def test_tuned_malloc_reuses_big_blocks_instead_of_faulting_in_new_pages():
    applied, faults = _faults("tune")
    _, untuned = _faults("leave")
    assert applied == "True"
    # 20 x 64 MB is 327,680 pages of 4 KB: untuned glibc faults in each (fewer with huge pages).
    assert untuned > 5_000
    assert faults < 100


@glibc_only
def test_tuning_can_be_switched_off():
    applied, faults = _faults("tune", FDN_TUNE_MALLOC="0")
    assert applied == "False" and faults > 5_000


def test_tuning_is_reported_and_repeatable():
    first = runtime.tune_allocator()
    assert runtime.tune_allocator() == first == runtime.allocator_tuned()


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_command_line_makes_openmp_wait_passively_unless_told(given, expected):
    # Spinning OpenMP threads made the default thread count 2-5x slower than one thread on a
    # busy machine (benchmarks/threads.py). The policy must be in the environment before
    # torch is first imported, which is when its OpenMP runtime reads it.
    script = (
        "import os, sys\n"
        "from fdn.cli import main\n"
        "assert 'torch' not in sys.modules\n"
        "main(['info', '--json'])\n"
        "print('policy', os.environ['OMP_WAIT_POLICY'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == f"policy {expected}"
